"""A local Prefect server for this project, in one command (`planet server`).

    planet server [--home .prefect] [--host 127.0.0.1] [--port 4200]

It runs `prefect server start` (through flows.prefect_server: SQLite transactions that wait
for the lock instead of answering 503) with:
- `PREFECT_HOME` under the project (default `./.prefect`), so the default SQLite database
  (`<home>/prefect.db`), logs and results live with the project, not in `~/.prefect`;
- the API and UI bound to 127.0.0.1 unless `--host` says otherwise (reachable from this machine
  only);
- analytics off;
- a long startup timeout for clients that start an ephemeral server (the first start on a fresh
  home runs the database migrations: 20-30 s here);
- basic auth when `PREFECT_SERVER_API_AUTH_STRING` (`user:password`) is set in the environment:
  every API call then needs `PREFECT_API_AUTH_STRING` set to the same value on the client (the
  secret is read from the environment, never from the command line, where `ps` would show it).

Other shells (the demo, workers, `prefect deploy`) use it with `export
PREFECT_API_URL=http://127.0.0.1:4200/api`. For a team, point the server at PostgreSQL with
`PREFECT_API_DATABASE_CONNECTION_URL=postgresql+asyncpg://user:password@host:5432/prefect`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from flows.processes import own_session, wait_forwarding_signals

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4200


def server_env(
    home: Path, host: str, port: int, base: dict[str, str] | None = None
) -> dict[str, str]:
    """The environment `prefect server start` runs with (see the module doc)."""
    env = dict(os.environ if base is None else base)
    env["PREFECT_HOME"] = str(home)
    env["PREFECT_SERVER_API_HOST"] = host
    env["PREFECT_SERVER_API_PORT"] = str(port)
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    env.pop("PREFECT_API_URL", None)  # the server is not a client of another server
    return env


def server_command(host: str, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "flows.prefect_server",  # `prefect` with SQLite transactions that wait (see there)
        "server",
        "start",
        "--host",
        host,
        "--port",
        str(port),
        "--analytics-off",
    ]


def api_url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{shown}:{port}/api"


def run_server(home: Path, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> int:
    """Run the server in the foreground until interrupted; its exit code."""
    home = home.expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    env = server_env(home, host, port)
    url = api_url(host, port)
    auth = (
        "on (PREFECT_SERVER_API_AUTH_STRING)"
        if env.get("PREFECT_SERVER_API_AUTH_STRING")
        else "off"
    )
    print(f"Prefect server: UI {url.removesuffix('/api')}  home {home}  auth {auth}", flush=True)
    print(f"in other shells: export PREFECT_API_URL={url}", flush=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: bound to {host}: reachable from other machines", flush=True)
    # Its own session: Ctrl-C and SIGTERM reach this process, which passes them on once and
    # waits (a SIGTERM that ended only this process left the server holding the port).
    child = subprocess.Popen(server_command(host, port), env=env, preexec_fn=own_session)  # noqa: PLW1509
    return wait_forwarding_signals(child)


def flow_run_url(flow_run_id: str) -> str | None:
    """The flow run's page in the UI of the server this process talks to (None: ephemeral)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL

    api = PREFECT_API_URL.value()
    if not api or not flow_run_id:
        return None
    ui = PREFECT_UI_URL.value() or api.removesuffix("/").removesuffix("/api")
    return f"{ui.rstrip('/')}/runs/flow-run/{flow_run_id}"
