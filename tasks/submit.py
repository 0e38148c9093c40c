"""Prefect task over planet.kaggle.submit_record: submit a predictions CSV once, wait for its score.

Retries: only transient errors (429, 5xx, dropped connections, still pending at the timeout)
are retried, with exponential backoff and jitter, and a 429's Retry-After is honoured (the
retry condition of tasks/fetch.py). 401/403 (rules not accepted)/404, a used-up daily
allowance and a file Kaggle could not score fail at once with a message saying what to do.

A retry never submits again: the submission record (beside the CSV, or in `record_dir`) got
the ref as soon as Kaggle accepted the file, so a retry after a failure while polling only
polls that ref. Calling the task again with the same file (same content) does the same and
reports `submitted: False`; `force_new=True` submits it once more, deliberately.

Caching: none (cache_policy=NO_CACHE). A submission is a side effect, and whether this file
was already submitted is the record's business, not a Prefect cache's: a cache record could
outlive or miss the record (another Prefect home, a cleared cache) and would hand back a score
without asking Kaggle. Re-running is cheap anyway: a recorded submission costs one status
request, never a submission.

Credentials come from tasks/credentials.py inside the task (environment, kaggle.json, else the
Prefect Secret block), never from a parameter, and never reach a log line, artifact or result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.logging import get_run_logger
from prefect.tasks import exponential_backoff

from planet import kaggle
from planet.kaggle import submit_record
from tasks.credentials import kaggle_credentials
from tasks.fetch import retry_transient
from tasks.progress import artifact_key

RETRIES = 3
RETRY_BACKOFF_S = 2.0


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.5f}"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def submission_markdown(result: dict[str, Any]) -> str:
    """The artifact: competition, file, message, ref, status and scores as a table."""
    if result["resubmitted"]:
        how = "new submission of a file submitted before (force_new)"
    elif result["submitted"]:
        how = "new submission"
    else:
        how = f"submitted earlier ({result['submitted_at']}); not submitted again"
    rows = [
        ("competition", result["slug"]),
        ("endpoint", result["endpoint"]),
        ("file", f"`{result['file']}` (sha256 `{result['csv_sha256'][:16]}…`)"),
        ("message", result["message"]),
        ("ref", result["ref"]),
        ("status", result["status"]),
        ("public score", _score(result["public_score"])),
    ]
    if result["private_score"] is not None:
        rows.append(("private score", _score(result["private_score"])))
    if result["error"]:
        rows.append(("error", result["error"]))
    rows.append(("submission", how))
    table = "\n".join(f"| {k} | {_cell(v)} |" for k, v in rows)
    return f"# Kaggle submission to {result['slug']}\n\n| | |\n|---|---|\n{table}\n"


@task(
    name="submit to Kaggle",
    task_run_name="submit to {slug}",
    cache_policy=NO_CACHE,
    retries=RETRIES,
    retry_delay_seconds=exponential_backoff(backoff_factor=RETRY_BACKOFF_S),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_transient,
)
def submit_predictions(
    slug: str,
    csv_path: str,
    message: str,
    endpoint: str | None = None,
    timeout_s: float = 600.0,
    interval_s: float = 5.0,
    force_new: bool = False,
    record_dir: str | None = None,
) -> dict[str, Any]:
    """Submit the CSV to the competition (unless this file was already submitted there), wait
    until it is scored and return {ref, status, public_score, private_score, message,
    csv_sha256, submitted, resubmitted, ...}; a markdown artifact shows the same.

    endpoint: None for kaggle.com, or a Kaggle-compatible server's base URL (the offline
    demo's local server). record_dir: where the submission record lives (default: the CSV's
    folder).
    """
    logger = get_run_logger()
    creds = kaggle_credentials()
    csv = Path(csv_path)
    host = submit_record.endpoint_host(endpoint)
    ctx = TaskRunContext.get()
    run_id = str(ctx.task_run.id) if ctx is not None else None
    submitting: list[bool] = []

    def announce() -> None:
        submitting.append(True)
        try:
            left = kaggle.submission_limits(slug, endpoint, creds)["allowed_now"]
            spends = f"this uses one of the {left} submissions left today"
        except Exception as exc:  # the count is a courtesy: never fail the submission for it
            logger.debug("could not read the submission limits: %s", exc)
            spends = "this uses one of today's submissions"
        log = logger.warning if endpoint is None else logger.info
        log("submitting %s to %s on %s (%s)", csv.name, slug, host, spends)

    result = submit_record.submit_and_wait(
        slug,
        csv,
        message,
        endpoint=endpoint,
        credentials=creds,
        record_dir=record_dir,
        timeout_s=timeout_s,
        interval_s=interval_s,
        force_new=force_new,
        run_id=run_id,
        on_submit=announce,
    )
    if result["submitted"] and not submitting:
        logger.info(
            "submission %s was made by an earlier attempt of this task run: polled, not made again",
            result["ref"],
        )
    elif not result["submitted"]:
        logger.info(
            "%s was already submitted to %s on %s as %s (%s): not submitted again",
            csv.name,
            slug,
            host,
            result["ref"],
            result["record"],
        )
    logger.info(
        "submission %s to %s: %s, public score %s, private score %s",
        result["ref"],
        slug,
        result["status"],
        _score(result["public_score"]),
        _score(result["private_score"]),
    )
    create_markdown_artifact(
        key=artifact_key(slug, "submission"),
        markdown=submission_markdown(result),
        description=f"Kaggle submission {result['ref']} of {csv.name} to {slug}",
    )
    return submit_record.raise_for_scoring(result)
