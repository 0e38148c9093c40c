"""What `planet demo` / `planet run` show and where their runs are kept: Prefect's defaults
before it is imported (the runs in ./.prefect without a server), the lines that say how to open
a run in the UI, the console filter (own lines and warnings; the libraries' INFO lines with
--verbose) with live bars on a terminal, and Ctrl-C noted for that filter."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

DEFAULT_HOME = ".prefect"  # where runs are kept without a server, and what `planet server` opens


def prefect_defaults(verbose: bool = True) -> None:
    """Defaults set before Prefect (and Dask) are imported: without a server (`PREFECT_API_URL`)
    runs are kept in `./.prefect` (`PREFECT_HOME`), the home `planet server` opens by default,
    so the demo's runs are there to see afterwards; Prefect's ephemeral mode gets time for the
    database migrations of a fresh home (20-30 s here); unless `verbose`, Dask logs warnings
    only (its scheduler and nannies log INFO lines by the dozen, in every process)."""
    if not verbose:
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    if not os.environ.get("PREFECT_API_URL") and not os.environ.get("PREFECT_HOME"):
        os.environ["PREFECT_HOME"] = str(Path(DEFAULT_HOME).resolve())
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def how_to_open(flow_run_id: str) -> list[str]:
    """The lines that tell how to open this run's page in the UI."""
    from flows.server import DEFAULT_PORT, flow_run_url

    url = flow_run_url(flow_run_id)
    if url:
        return [f"flow run: {url}"]
    home = os.environ.get("PREFECT_HOME", DEFAULT_HOME)
    return [
        f"flow run: {flow_run_id} (kept in {home}); to see it in the UI:",
        f"  planet server --home {home}",
        f"  then open http://127.0.0.1:{DEFAULT_PORT}/runs/flow-run/{flow_run_id}",
    ]


class OwnLines(logging.Filter):
    """The pipeline's own lines (Prefect's flow and task run loggers) and every warning: the
    libraries' INFO lines (Dask's scheduler and nannies, Prefect's server) stay out."""

    OWN = ("prefect.flow_runs", "prefect.task_runs")

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name.startswith(self.OWN)


@contextlib.contextmanager
def console(command: str, verbose: bool) -> Iterator[None]:
    """What `planet demo`/`planet run` print: their own lines and warnings (everything with
    --verbose), and one live bar per running stage when stderr is a terminal."""
    if command not in ("demo", "run"):
        yield
        return
    import prefect.main  # noqa: F401  (sets up Prefect's console handler)

    from flows.user_errors import QuietExpectedErrors
    from tasks.progress import live_bars

    handlers = logging.getLogger().handlers
    filters: list[logging.Filter] = [] if verbose else [OwnLines(), QuietExpectedErrors()]
    for handler in handlers:
        for one in filters:
            handler.addFilter(one)
    bars = live_bars() if sys.stderr.isatty() and not verbose else contextlib.nullcontext()
    try:
        with bars, _ctrl_c_noted():
            yield
    finally:
        for handler in handlers:
            for one in filters:
                handler.removeFilter(one)


@contextlib.contextmanager
def _ctrl_c_noted() -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt as ever, and tells the console filter first."""
    from flows.user_errors import QuietExpectedErrors

    def interrupt(_signum: int, _frame: object) -> None:
        QuietExpectedErrors.interrupted = True
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def cli_flow_settings(command: str) -> Iterator[None]:
    """Flow runs started by `planet demo`/`planet run` send no heartbeats: Prefect 3.8 spends
    up to a second ending each flow run joining its heartbeat thread (measurements:
    bench/README.md). Heartbeats serve the server's crashed-run detection for runs whose
    process is gone; a CLI run's process reports its own failures, and deployment runs started
    by workers keep Prefect's default."""
    if command not in ("demo", "run"):
        yield
        return
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield
