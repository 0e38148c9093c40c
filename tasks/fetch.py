"""Prefect tasks over planet.kaggle: list a competition's files, download one file.

Retries: only transient errors (429, 5xx, dropped connections) are retried, with exponential
backoff and jitter; a 429's Retry-After is honoured. 401/403/404 fail at once with the
library's message (check credentials / accept the rules / the name is wrong).

Credentials come from tasks/credentials.py inside each task (environment, kaggle.json, else
the Prefect Secret block), never from a parameter.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import Task, task
from prefect.client.schemas.objects import TaskRun
from prefect.logging import get_run_logger
from prefect.states import State
from prefect.tasks import exponential_backoff

from planet import kaggle
from planet.workspace import Workspace
from tasks.caching import key_from, stage_task
from tasks.credentials import kaggle_credentials
from tasks.progress import Progress

DOWNLOAD_CODE_VERSION = "1"
RETRIES = 4
RETRY_BACKOFF_S = 2.0


def retry_transient(_task: Task[..., Any], _run: TaskRun, state: State[Any]) -> bool:
    """Retry only transient Kaggle errors; wait out a 429's Retry-After beyond the backoff."""
    try:
        state.result()
    except Exception as exc:
        if not kaggle.is_transient(exc):
            return False
        retry_after = getattr(exc, "retry_after", None)
        if retry_after:
            time.sleep(min(float(retry_after), 120.0))
        return True
    return False


RETRY_OPTIONS: dict[str, Any] = dict(
    retries=RETRIES,
    retry_delay_seconds=exponential_backoff(backoff_factor=RETRY_BACKOFF_S),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_transient,
)


@task(name="list Kaggle files", **RETRY_OPTIONS)
def list_remote_files(slug: str, endpoint: str | None = None) -> list[dict[str, Any]]:
    """The competition's files as Kaggle lists them (name, size, version identity)."""
    creds = kaggle_credentials()
    files = kaggle.list_files(slug, endpoint=endpoint, credentials=creds)
    get_run_logger().info(
        "%s lists %d files (Kaggle credentials from %s)", slug, len(files), creds.source
    )
    return [f.to_dict() for f in files]


@stage_task(
    name="download",
    task_run_name="download {remote[name]}",
    cache_key_fn=key_from("download", DOWNLOAD_CODE_VERSION, ["ws", "remote"]),
    done=lambda ws, remote, **_: ws.raw(remote["name"]).complete(remote),
    **RETRY_OPTIONS,
)
def fetch_file(
    ws: Workspace, remote: dict[str, Any], endpoint: str | None = None
) -> dict[str, Any]:
    """Download one file into raw/ (resuming a partial one); returns its record (name, size,
    sha256, path relative to the competition folder): what extraction keys its cache on."""
    raw = ws.raw(remote["name"])
    progress = Progress(f"download {raw.name}", unit="bytes")
    record = kaggle.download_file(
        ws.slug,
        raw.name,
        raw.folder,
        endpoint=endpoint,
        credentials=kaggle_credentials(),
        progress=progress,
        remote=remote,
    )
    progress.done()
    get_run_logger().info("%s: %s bytes, sha256 %s", raw.name, f"{record.size:,}", record.sha256)
    return {
        "name": record.name,
        "size": record.size,
        "sha256": record.sha256,
        "path": ws.relative(raw.path),
    }
