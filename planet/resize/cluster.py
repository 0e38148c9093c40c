"""The Dask cluster the resize stage runs on (`dask_client`, `dashboard_link`).

`dask_client()` starts a `LocalCluster` (one single-threaded worker process per core, dashboard
on 127.0.0.1:8787 when bokeh is installed) for the block and closes it after;
`dask_client(address)` connects to a running cluster and closes only the client. Workers of
another machine need this project installed and the data directory at the same path. A script
that starts a LocalCluster needs an `if __name__ == "__main__":` guard (workers are spawned).
Measurements: bench/README.md.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import signal
import threading
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import distributed

DASHBOARD_ADDRESS = "127.0.0.1:8787"  # Dask's usual port; another free one if it is taken


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _client_of_this_process(address: str) -> distributed.Client | None:
    """This process's running default client when it is connected to `address`."""
    from distributed import default_client

    try:
        client = default_client()
    except ValueError:  # no client in this process
        return None
    if client.status == "running" and client.scheduler.address == address:
        return client
    return None


# distributed's nannies set these to 1 in *this* process's environment before spawning the
# workers (`distributed.nanny.pre-spawn-environ`) and leave them set: torch imported later in
# the same process then ran training on one thread (measured: 357 s instead of 302 s for the
# demo, and other numbers). `dask_client` puts them back once the workers are up.
THREAD_ENV = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MALLOC_TRIM_THRESHOLD_",
)


@contextlib.contextmanager
def _restored_env(saved: dict[str, str | None]) -> Iterator[None]:
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def dask_client(
    address: str | None = None, n_workers: int | None = None
) -> Iterator[distributed.Client]:
    """A Dask client for the duration of the block.

    With `address` (e.g. `tcp://10.0.0.5:8786`), connect to that running cluster (closing only
    the client afterwards; its workers need this project installed). Without, start a
    `LocalCluster` of `n_workers` (default: one per core) single-threaded worker processes on
    127.0.0.1, with the dashboard on 127.0.0.1:8787 (another port if taken) when bokeh is
    installed; closed afterwards. `dashboard_link(client)` gives the dashboard's URL or None.
    """
    from distributed import Client, LocalCluster

    if address:
        shared = _client_of_this_process(address)
        if shared is not None:
            # Threads of one process share one client: several clients made concurrently in
            # one process once left `as_completed` waiting on finished tasks (seen in the demo).
            yield shared
            return
        client = Client(address, timeout="30s")
        try:
            yield client
        finally:
            client.close()
        return
    has_bokeh = importlib.util.find_spec("bokeh") is not None
    saved_env = {k: os.environ.get(k) for k in THREAD_ENV}
    with (
        _restored_env(saved_env),
        _workers_ignore_ctrl_c(),
        warnings.catch_warnings(),  # "Port 8787 is already in use ... on port N instead"
    ):
        warnings.filterwarnings("ignore", message=".*already in use", category=UserWarning)
        cluster = LocalCluster(
            n_workers=n_workers or _cores(),
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            # without bokeh the HTTP server only serves /health and /metrics: any free port
            dashboard_address=DASHBOARD_ADDRESS if has_bokeh else "127.0.0.1:0",
            silence_logs=logging.ERROR,
        )
    try:
        client = Client(cluster)
        try:
            client.register_plugin(quiet_closing_heartbeat(), name="quiet-closing-heartbeat")
            yield client
        finally:
            client.close()
    finally:
        cluster.close()


class _ClosingHeartbeatFilter(logging.Filter):
    """Drops distributed's "Failed to communicate with scheduler during heartbeat" record
    (with its traceback) while its worker is closing: the heartbeat then races the worker's
    own connection pool closing (CommClosedError "ConnectionPool closing"), a harmless shutdown
    race that printed a traceback after every Ctrl-C mid-resize. Any other time it stays."""

    def __init__(self, worker: distributed.Worker) -> None:
        super().__init__()
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        from distributed.core import Status

        closing = self.worker.status in (Status.closing, Status.closed, Status.failed)
        return not (closing and str(record.msg).startswith("Failed to communicate with"))


def quiet_closing_heartbeat() -> distributed.WorkerPlugin:
    """A Dask worker plugin installing `_ClosingHeartbeatFilter` in each worker process
    (defined here: importing distributed is left to the clusters that need it)."""
    from distributed import WorkerPlugin

    class QuietClosingHeartbeat(WorkerPlugin):
        def setup(self, worker: distributed.Worker) -> None:
            logging.getLogger("distributed.worker").addFilter(_ClosingHeartbeatFilter(worker))

    return QuietClosingHeartbeat()


@contextlib.contextmanager
def _workers_ignore_ctrl_c() -> Iterator[None]:
    """Worker processes started in the block ignore SIGINT (an ignored signal stays ignored in
    a child, and Python then installs no KeyboardInterrupt handler): a terminal's Ctrl-C
    reaches the whole process group, and workers dying of it on their own meant tracebacks from
    each and a nanny waiting 4 s to kill them. The interrupted process closes the cluster,
    which stops them. Only from the main thread (signals can be set nowhere else)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def dashboard_link(client: distributed.Client, timeout: float = 5.0) -> str | None:
    """The URL of the cluster's dashboard when one answers (bokeh installed where the
    scheduler runs), else None: `client.dashboard_link` gives a URL even when nothing serves
    it. Asks the dashboard's light `/individual-plots.json` route, never through a proxy."""
    link = client.dashboard_link
    if not link:
        return None
    parts = urllib.parse.urlsplit(link)
    probe = f"{parts.scheme}://{parts.netloc}/individual-plots.json"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(probe, timeout=timeout) as resp:
            return link if resp.status == 200 else None
    except (OSError, ValueError):
        return None
