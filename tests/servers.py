"""A real Prefect server for tests: `planet server` on a free loopback port, with its own home."""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, auth: str | None = None, timeout: float = 5.0) -> int:
    """The HTTP status of GET url (with basic auth `user:password`); 0 when nothing answers."""
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return 0  # not listening (yet)


@contextlib.contextmanager
def planet_server(home: Path, auth: str | None = None) -> Iterator[str]:
    """Run `planet server --home HOME` on a free port until the block ends; yields its URL."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    if auth:
        env["PREFECT_SERVER_API_AUTH_STRING"] = auth
    log = (home.parent / f"server-{port}.log").open("w")
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("planet")),
            "server",
            "--home",
            str(home),
            "--port",
            str(port),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while get(f"{url}/api/health") != 200:
            assert proc.poll() is None, (home.parent / f"server-{port}.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the server did not come up in 240 s"
            time.sleep(1)
        yield url
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
        log.close()


class WebhookReceiver:
    """What a webhook receiver on 127.0.0.1 got: each POST's path and JSON body, in order."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.posts: list[tuple[str, dict]] = []
        self._got = threading.Condition()

    def record(self, path: str, body: dict) -> None:
        with self._got:
            self.posts.append((path, body))
            self._got.notify_all()

    def wait_for(self, n: int, timeout: float = 60.0) -> list[dict]:
        """The bodies once `n` POSTs arrived (fewer when `timeout` passes first)."""
        with self._got:
            self._got.wait_for(lambda: len(self.posts) >= n, timeout=timeout)
            return [body for _, body in self.posts]


@contextlib.contextmanager
def webhook_receiver(status: int = 204) -> Iterator[WebhookReceiver]:
    """An HTTP server on a free 127.0.0.1 port recording every POST (answering `status`)."""
    import http.server
    import json

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            length = int(self.headers.get("Content-Length") or 0)
            receiver.record(self.path, json.loads(self.rfile.read(length) or b"null"))
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver = WebhookReceiver(f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
