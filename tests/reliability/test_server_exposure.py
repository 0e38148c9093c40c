"""Server exposure: the documented `planet server` (and the local Kaggle server) listen on
127.0.0.1 only unless told otherwise; with an auth string set, an API call without it gets 401,
and a flow run without it is refused."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from flows import cli
from tests.reliability.harness import Services
from tests.servers import get

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def _listening(port: int) -> set[str]:
    """Local addresses with a socket listening on `port`, from /proc/net/tcp{,6}."""
    out: set[str] = set()
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        table = Path("/proc/net") / name
        if not table.is_file():
            continue
        for line in table.read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if int(hex_port, 16) != port or fields[3] != "0A":  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)
            # /proc prints each 32-bit word in host (little-endian) order
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            out.add(socket.inet_ntop(family, words))
    return out


def _non_loopback_ip() -> str | None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))
            ip = s.getsockname()[0]
    except OSError:
        return None
    return None if ip.startswith("127.") else ip


def _port(url: str) -> int:
    return int(url.rstrip("/").rsplit(":", 1)[1])


def test_the_servers_default_to_loopback() -> None:
    def host(argv: list[str]) -> str:
        _, bound, _ = cli.app.parse_args(argv)
        bound.apply_defaults()
        return bound.arguments["host"]

    assert host(["server"]) == "127.0.0.1"
    assert host(["kaggle-local", "--root", "x"]) == "127.0.0.1"


@pytest.mark.skipif(not Path("/proc/net/tcp").is_file(), reason="needs Linux /proc/net/tcp")
def test_the_running_servers_listen_on_loopback_only(services: Services) -> None:
    for url in (services.prefect_url, services.kaggle_url):
        addresses = _listening(_port(url))
        assert addresses and addresses <= LOOPBACK, (url, addresses)
    ip = _non_loopback_ip()
    if ip:  # from another interface's address nothing answers
        for url in (services.prefect_url, services.kaggle_url):
            with pytest.raises(OSError), socket.create_connection((ip, _port(url)), timeout=3):
                pass


def test_an_api_call_without_the_auth_string_gets_401(services: Services) -> None:
    url, auth = services.prefect_url, services.prefect_auth
    assert get(f"{url}/api/admin/version") == 401
    assert get(f"{url}/api/admin/version", auth.split(":")[0] + ":wrong") == 401
    assert get(f"{url}/api/admin/version", auth) == 200
    assert (services.root / "prefect-server" / "prefect.db").is_file()  # under its --home


def test_a_flow_run_without_the_auth_string_is_refused(services: Services) -> None:
    code = "from prefect import flow\n@flow\ndef hello():\n    return 42\nprint(hello())\n"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {
        "PREFECT_API_URL": f"{services.prefect_url}/api",
        "PREFECT_HOME": str(services.root / "exposure-client"),
    }
    refused = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert refused.returncode != 0 and "401" in refused.stderr, refused.stderr[-2000:]
    env["PREFECT_API_AUTH_STRING"] = services.prefect_auth
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("42"), done.stderr[-2000:]
