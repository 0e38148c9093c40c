"""The Prefect task over planet.infer.drop_folder: predict a drop folder's new images.

Caching: none (cache_policy=NO_CACHE). What is new is only known by reading the folder, and the
seen index beside the CSV (content sha256 -> result) already skips every image seen before.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from planet.infer.drop_folder import update_drop_folder
from tasks.progress import artifact_key

MAX_LOGGED_BAD = 20  # bad files logged one by one; the artifact lists them all


@task(
    name="predict new images", task_run_name="predict new images of {source}", cache_policy=NO_CACHE
)
def predict_drop_folder(
    source: str,
    model: str,
    out: str,
    probabilities: bool = False,
    thresholds: str | None = None,
    device: str = "auto",
    batch_size: int = 64,
) -> dict[str, Any]:
    """Predict the images of `source` not seen before (by content) into the CSV `out`; bad
    files are logged and listed in a table artifact, never fail the run."""
    logger = get_run_logger()
    result = update_drop_folder(
        source,
        model,
        out,
        probabilities=probabilities,
        thresholds=thresholds,
        device=device,
        batch_size=batch_size,
    )
    logger.info(
        "%s: %d new image(s) predicted, %d copies of images seen before, %d unchanged; %d bad; "
        "%d rows in %s",
        source,
        result["predicted"],
        result["copies"],
        result["unchanged"],
        len(result["bad"]),
        result["rows"],
        out,
    )
    for bad in result["bad"][:MAX_LOGGED_BAD]:
        logger.warning("left out %s: %s", bad["file"], bad["reason"])
    if result["bad"]:
        create_table_artifact(
            key=artifact_key("predict-images", "bad-files"),
            table=result["bad"],
            description=f"files of {source} that could not be predicted (retried next run)",
        )
    return result
