"""Submit the submission file to Kaggle (or the local server) and bring the score back.

Off unless `submit` is true: on kaggle.com a submission spends one of the competition's daily
submissions, and the flow says so before it does. A retried submit never submits twice: the
submission's ref is recorded beside the file the moment Kaggle accepts it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from prefect.logging import get_run_logger

from flows.config import SubmitConfig
from planet.kaggle.submit_record import git_commit, submission_message
from planet.layout import CompetitionDirs
from tasks import submit as submit_tasks

DEFAULT_CONFIG = SubmitConfig()
REPO = Path(__file__).resolve().parents[1]


@flow(name="submit", flow_run_name="submit {config.competition} {config.recipe.name}")
def submit(config: SubmitConfig = DEFAULT_CONFIG) -> dict[str, Any]:
    """Submit submissions/<run>.csv and wait for its score (only with `submit` on)."""
    logger = get_run_logger()
    slug, recipe = config.competition, config.recipe
    path = CompetitionDirs.of(config.data_path, slug).submissions / f"{recipe.run_name}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run the submission stage first")
    if not config.submit:
        logger.info(
            "not submitting %s: the submit setting is off (turning it on spends one of "
            "today's Kaggle submissions)",
            path,
        )
        return {"submitted": False, "path": str(path)}
    where = config.kaggle_endpoint or "kaggle.com"
    logger.warning(
        "submitting %s to %s on %s: this uses one daily submission", path.name, slug, where
    )
    message = submission_message(
        recipe.run_name, [s.describe() for s in recipe.stages], git_commit(REPO)
    )
    result = submit_tasks.submit_predictions(
        slug,
        str(path),
        message,
        config.kaggle_endpoint,
        timeout_s=config.timeout_s,
        interval_s=config.poll_interval_s,
    )
    return {"submitted": True, "path": str(path), **result}
