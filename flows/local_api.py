"""The Prefect API a `planet` command talks to, made sure of before anything runs.

- `PREFECT_API_URL` set: `check_api` asks the server's `/health` (a few seconds at most), so a
  stale URL is one line ("cannot reach the Prefect API at ...") instead of a client that
  retries for minutes.
- not set: `start_temporary_server` starts Prefect's temporary server (the one Prefect would
  start on the first API call, same command and settings) now, in a session of its own. A
  terminal's Ctrl-C sends SIGINT to the whole foreground process group: in the group, the
  server died first and the interrupted flow runs could neither be marked Crashed nor end
  (the client retried for minutes and left them Running). Outside it, the server outlives
  the interrupt, Prefect's flow engine marks the runs Crashed ("aborted by an interrupt
  signal"), and the server is stopped at exit as before. On Linux the server also gets
  SIGTERM when this process dies (PR_SET_PDEATHSIG), so a killed `planet` leaves no server
  behind.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from typing import Any

from flows.processes import own_session

HEALTH_TIMEOUT_S = 3.0


class PrefectApiUnreachable(ConnectionError):
    """`PREFECT_API_URL` names a server that does not answer (or refuses this client)."""


def check_api(url: str, auth_string: str | None = None, timeout: float = HEALTH_TIMEOUT_S) -> None:
    """Raise PrefectApiUnreachable unless the Prefect API at `url` answers its health check."""
    import httpx

    headers = {}
    if auth_string:
        import base64

        headers["Authorization"] = "Basic " + base64.b64encode(auth_string.encode()).decode()
    fix = "start `planet server` or unset PREFECT_API_URL"
    try:
        response = httpx.get(f"{url.rstrip('/')}/health", headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise PrefectApiUnreachable(
            f"cannot reach the Prefect API at {url} (PREFECT_API_URL: {reason}): {fix}"
        ) from None
    if response.status_code == 401:
        raise PrefectApiUnreachable(
            f"the Prefect API at {url} refused this client (401): set PREFECT_API_AUTH_STRING "
            "to the server's PREFECT_SERVER_API_AUTH_STRING"
        )
    if response.status_code != 200:
        raise PrefectApiUnreachable(
            f"the Prefect API at {url} answered its health check with HTTP "
            f"{response.status_code}: is PREFECT_API_URL a Prefect server's /api URL? {fix}"
        )


class _SubprocessInOwnSession:
    """`subprocess` as prefect.server.api.server sees it while it starts the server: Popen in
    a session of its own (see flows.processes.own_session), everything else the real module."""

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)

    @staticmethod
    def Popen(*args: Any, **kwargs: Any) -> subprocess.Popen[Any]:  # noqa: N802 (subprocess's name)
        return subprocess.Popen(*args, preexec_fn=own_session, **kwargs)  # noqa: PLW1509


@contextlib.contextmanager
def _popen_in_own_session(module: Any) -> Iterator[None]:
    real = module.subprocess
    module.subprocess = _SubprocessInOwnSession()
    try:
        yield
    finally:
        module.subprocess = real


def temporary_server_class() -> type:
    """Prefect's SubprocessASGIServer, starting its process in a session of its own."""
    from prefect.server.api import server as server_module

    class TemporaryServerInOwnSession(server_module.SubprocessASGIServer):
        def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
            with _popen_in_own_session(server_module):
                return super()._run_uvicorn_command()

    return TemporaryServerInOwnSession


def start_temporary_server() -> Any:
    """Start Prefect's temporary server now, from this (the main) thread, in a session of its
    own, as the instance every Prefect client of this process uses (SubprocessASGIServer keeps
    one per port; None is the temporary server's key, as in prefect.testing). Returns it; it
    stops at exit (Prefect registers that)."""
    from prefect.server.api.server import SubprocessASGIServer

    existing = SubprocessASGIServer._instances.get(None)
    if existing is None or not existing.running:
        SubprocessASGIServer._instances.pop(None, None)
        existing = temporary_server_class()()
        existing.start()
    return existing


def ensure_api() -> None:
    """Before a command runs flows: check `PREFECT_API_URL`'s server, or start the temporary
    one (see the module doc)."""
    from prefect.settings import (
        PREFECT_API_AUTH_STRING,
        PREFECT_API_URL,
        PREFECT_SERVER_EPHEMERAL_ENABLED,
    )

    url = PREFECT_API_URL.value()
    if url:
        auth = PREFECT_API_AUTH_STRING.value()
        check_api(url, auth.get_secret_value() if hasattr(auth, "get_secret_value") else auth)
    elif PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        start_temporary_server()
    # else: Prefect's own "No Prefect API URL provided" on the first call
