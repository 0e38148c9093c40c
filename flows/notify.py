"""Failure notifications: every flow's on_failure / on_crashed hook posts one short JSON message
to a webhook, when one is configured.

The webhook's URL comes from PLANET_WEBHOOK_URL, else from the Prefect Secret block named by
PLANET_WEBHOOK_SECRET_BLOCK (default `planet-webhook-url`; `none` turns it off); with neither,
nothing is posted. A URL may carry a token, so it is never a flow parameter and never logged.

The message: {"flow", "stage", "state", "error", "flow_run", "run_url", "machine", "source"}:
the outermost flow run of this process (the pipeline, or a stage run alone or by a worker), the
stage flows that failed inside it ("prepare/fetch"; the flow itself when it failed in its own
code), Failed or Crashed, the state's message on one line (truncated, Kaggle key scrubbed), the
run's name and UI address (when Prefect knows its UI URL), this machine's name and "hook".
A stage running inside the pipeline only records itself, so one failure posts one message.
Posting never raises: a webhook that is down or answers an error is one warning on the run.

flows/automations.py defines the server-side twin (a Prefect automation calling a Webhook
block), which also covers runs whose process died before a hook could run.
"""

from __future__ import annotations

import os
import socket
import threading
from collections import deque
from typing import Any

import requests
from prefect.logging.loggers import flow_run_logger
from prefect.utilities.urls import url_for

from tasks.credentials import OFF, known_secrets, read_secret_block

WEBHOOK_ENV = "PLANET_WEBHOOK_URL"
WEBHOOK_BLOCK_ENV = "PLANET_WEBHOOK_SECRET_BLOCK"
DEFAULT_WEBHOOK_BLOCK = "planet-webhook-url"
TIMEOUT_S = 5.0
MAX_ERROR_CHARS = 300

# (state message, flow name) of stage flows that failed inside an outer flow of this process.
_failed_stages: deque[tuple[str, str]] = deque(maxlen=64)
_lock = threading.Lock()


def webhook_block_name() -> str | None:
    """The Secret block holding the webhook URL (PLANET_WEBHOOK_SECRET_BLOCK); None when off."""
    name = os.environ.get(WEBHOOK_BLOCK_ENV, DEFAULT_WEBHOOK_BLOCK).strip()
    return None if name.lower() in OFF else name


def webhook_url() -> tuple[str, str] | None:
    """(URL, where it came from) of the webhook, or None when none is configured."""
    url = os.environ.get(WEBHOOK_ENV, "").strip()
    if url:
        return url, WEBHOOK_ENV
    name = webhook_block_name()
    value = read_secret_block(name) if name else None
    if value is None or not str(value).strip():
        return None
    return str(value).strip(), f"the Prefect Secret block {name!r}"


def error_line(message: str | None, secrets: set[str]) -> str:
    """The state's message on one line, without any of `secrets`, at most MAX_ERROR_CHARS."""
    line = " ".join((message or "").split())
    for secret in sorted(secrets, key=len, reverse=True):
        line = line.replace(secret, "***")
    return line if len(line) <= MAX_ERROR_CHARS else line[: MAX_ERROR_CHARS - 1] + "…"


def _runs_inside_another_flow(flow_run: Any) -> bool:
    """A subflow run in this process (a deployment run is the outermost flow of its process,
    even when another flow started it with run_deployment)."""
    return flow_run.parent_task_run_id is not None and flow_run.deployment_id is None


def _stages_of(message: str | None) -> list[str]:
    """The recorded stage flows that failed with this message, outermost first; forgets them."""
    with _lock:
        matched = [entry for entry in _failed_stages if entry[0] == message]
        for entry in matched:
            _failed_stages.remove(entry)
    return [name for _, name in reversed(matched)]


def failure_message(flow: Any, flow_run: Any, state: Any, secrets: set[str]) -> dict[str, Any]:
    """The message for the outermost flow run of this process entering a failed state."""
    stages = _stages_of(state.message)
    return {
        "flow": flow.name,
        "stage": "/".join(stages) or flow.name,
        "state": state.name,
        "error": error_line(state.message, secrets),
        "flow_run": flow_run.name,
        "run_url": url_for(flow_run),
        "machine": socket.gethostname(),
        "source": "hook",
    }


def post_message(message: dict[str, Any], url: str, where: str, logger: Any) -> bool:
    """POST the message to the webhook at `url` (`where` names its source in warnings); True when
    it accepted it. Never raises; the URL never reaches a log line."""
    try:
        response = requests.post(url, json=message, timeout=TIMEOUT_S)
    except requests.RequestException as exc:  # its text holds the URL: only the type is shown
        logger.warning(
            "could not post the failure message to the webhook from %s (%s)",
            where,
            type(exc).__name__,
        )
        return False
    if response.status_code >= 400:
        logger.warning(
            "the webhook from %s answered HTTP %d to the failure message",
            where,
            response.status_code,
        )
        return False
    return True


def notify_failure(flow: Any, flow_run: Any, state: Any) -> None:
    """on_failure / on_crashed hook of every flow (see the module doc). Never raises."""
    if _runs_inside_another_flow(flow_run):
        with _lock:
            _failed_stages.append((state.message, flow.name))
        return
    logger = flow_run_logger(flow_run, flow)
    try:
        found = webhook_url()
    except Exception as exc:
        logger.warning(
            "no failure message sent: could not read the webhook's Secret block %r (%s)",
            webhook_block_name(),
            type(exc).__name__,
        )
        return
    if found is None:
        _stages_of(state.message)  # forget what the stages recorded
        return
    url, where = found
    try:
        message = failure_message(flow, flow_run, state, known_secrets() | {url})
    except Exception as exc:
        logger.warning("no failure message sent: could not write it (%s)", type(exc).__name__)
        return
    post_message(message, url, where, logger)


HOOKS: dict[str, Any] = {"on_failure": [notify_failure], "on_crashed": [notify_failure]}
"""`@flow(..., **HOOKS)`: the failure hooks every flow of the pipeline carries."""
