"""Submit the submission file to Kaggle (or the local server) and bring the score back.

Off unless `submit` is true: on kaggle.com a submission spends one of the competition's daily
submissions, and the submit task says so just before it makes one. A retried submit never submits twice: the
submission's ref is recorded beside the file the moment Kaggle accepts it, and a rerun with the
same file only polls that ref (and says so; the task warns about the daily submission only when
it really submits); `resubmit` submits the same file again (after a scoring error).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from prefect.logging import get_run_logger

from flows.config import SubmitConfig
from flows.notify import HOOKS
from planet.kaggle.submit_record import git_commit, submission_message
from tasks.submit import submit_predictions

DEFAULT_CONFIG = SubmitConfig()
REPO = Path(__file__).resolve().parents[1]


@flow(name="submit", flow_run_name="submit {config.competition} {config.recipe.name}", **HOOKS)
def submit(config: SubmitConfig = DEFAULT_CONFIG) -> dict[str, Any]:
    """Submit submissions/<run>.csv and wait for its score (only with `submit` on)."""
    logger = get_run_logger()
    ws, recipe, options = config.workspace, config.recipe, config.submit
    path = ws.submission(config.run_name).path
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run the submission stage first")
    if not options.submit:
        logger.info(
            "not submitting %s: the submit setting is off (turning it on spends one of "
            "today's Kaggle submissions)",
            path,
        )
        return {"submitted": False, "path": str(path)}
    members = config.members()
    described = [s.describe() for s in recipe.stages]
    if len(members) > 1:
        described.append(f"{len(members)} members ({config.ensemble.combine})")
    message = submission_message(config.run_name, described, git_commit(REPO))
    result = submit_predictions(
        ws.slug,
        str(path),
        message,
        config.kaggle_endpoint,
        timeout_s=options.score_timeout_s,
        interval_s=options.poll_interval_s,
        force_new=options.resubmit,
    )
    return {"submitted": True, "path": str(path), **result}
