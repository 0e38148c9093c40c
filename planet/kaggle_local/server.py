"""A local HTTP server that speaks enough of Kaggle's API for the real `kaggle` client.

The client (kaggle 2.x / kagglesdk) POSTs JSON to `{endpoint}/api/v1/{service}/{method}`
with HTTP basic auth (username, key) or a Bearer access token. This server answers:

* `competitions.CompetitionApiService/ListDataFiles`: the files of `<root>/<slug>/` (paged).
* `.../DownloadDataFile`: 302 to a signed blob URL on this server; the blob GET sends
  Content-Length, a content-based ETag, Last-Modified and Accept-Ranges, and honours Range
  (206) and If-Range, so the client's resume works.
* `.../StartSubmissionUpload` (an upload URL + token), the PUT of the file to that URL,
  `.../CreateSubmission` (graded against `<root>/<slug>/_private/solution.csv`),
  `.../ListSubmissions`, `.../GetSubmission`, `.../GetSubmissionLimits`, `.../ListCompetitions`.
* `security.OAuthService/IntrospectToken`, so the client can sign in with an access token.

`<root>/<slug>/_private/` is never listed or served; submissions are remembered there in
`submissions.json` (plus the uploaded files), so a restarted server knows them. Nothing is
written outside `root`. Errors are JSON `{"code": N, "message": "..."}` like Kaggle's.

Modules: protocol (URL layout, ApiError, dates), store (competitions, files, rules, uploads,
submissions), api (the API methods), http_handler (the request handler and URL dispatch), and
this one: LocalKaggleServer wires them together, and `serve_forever`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import logging
import os
import re
import secrets
import shlex
import socket
import sys
import threading
from collections.abc import Callable, Mapping
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from planet.kaggle_local.api import CompetitionApi
from planet.kaggle_local.faults import Faults
from planet.kaggle_local.grader import check_solution
from planet.kaggle_local.http_handler import RequestHandler, RequestRecord
from planet.kaggle_local.protocol import SLUG_RE
from planet.kaggle_local.store import PRIVATE_DIR, SOLUTION_FILE, CompetitionStore

log = logging.getLogger(__name__)

LOG_SETTLE_S = 2.0
MADE_UP_USER = "planet-local"


class ServerBindError(OSError):
    """The server cannot listen on its address (the port is taken, or not ours to use)."""


def check_solutions(root: Path) -> list[str]:
    """Check every `<root>/<slug>/_private/solution.csv` of a known competition against its
    sample submission (planet.kaggle_local.grader.check_solution); the warnings. Raises
    SolutionError naming the file that cannot be graded against."""
    from planet.competitions import resolve

    warnings: list[str] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and SLUG_RE.match(p.name)):
        solution = folder / PRIVATE_DIR / SOLUTION_FILE
        try:
            comp = resolve(folder.name)
        except ValueError:
            continue  # served, never graded
        if not solution.is_file():
            continue  # grading says so per submission
        sample = next((folder / f.name for f in comp.files if f.kind == "sample_submission"), None)
        warnings += check_solution(
            folder.name, solution, sample if sample and sample.is_file() else None
        )
    return warnings


class LocalKaggleServer:
    """Serve `<root>/<slug>/<files>` to the real kaggle client on a background thread.

    >>> with LocalKaggleServer(root, credentials={"me": "my-key"}) as server:
    ...     server.url  # 'http://127.0.0.1:<free port>'

    credentials: username -> key accepted as HTTP basic auth. access_tokens: token ->
    username accepted as Bearer tokens. daily_submission_limit: submissions per user per
    competition per UTC day (None: unlimited). grading_delay_s: how long a new submission
    reports "pending" before its scores show.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        host: str = "127.0.0.1",
        port: int = 0,
        credentials: Mapping[str, str] | None = None,
        *,
        access_tokens: Mapping[str, str] | None = None,
        daily_submission_limit: int | None = 5,
        grading_delay_s: float = 0.0,
    ) -> None:
        self.root = Path(root).expanduser().resolve()
        if not self.root.is_dir():
            raise ValueError(
                f"Kaggle root {self.root} is not a folder: lay it out as "
                "<root>/<competition-slug>/<Kaggle files>"
            )
        self._credentials = {str(u): str(k) for u, k in (credentials or {}).items()}
        self._tokens = {str(t): str(u) for t, u in (access_tokens or {}).items()}
        if not self._credentials and not self._tokens:
            raise ValueError(
                "LocalKaggleServer needs credentials={username: key} and/or "
                "access_tokens={token: username} to accept"
            )
        if any(not u or not k for u, k in self._credentials.items()):
            raise ValueError("LocalKaggleServer credentials need a non-empty username and key")
        if daily_submission_limit is not None and daily_submission_limit < 0:
            raise ValueError(
                f"daily_submission_limit must be >= 0 or None, got {daily_submission_limit}"
            )
        self.host = host
        self._port = port
        self.warnings = check_solutions(self.root)  # before serving: a bad solution stops here
        for warning in self.warnings:  # on stderr at `planet kaggle-local` (logging's last resort)
            log.warning("%s", warning)
        self.faults = Faults()
        self.store = CompetitionStore(self.root, self.faults)
        self.api = CompetitionApi(
            self.store,
            self.authenticate,
            daily_submission_limit=daily_submission_limit,
            grading_delay_s=grading_delay_s,
        )
        self._lock = self.store.lock
        self._log: list[RequestRecord] = []
        self._idle = threading.Condition(self._lock)
        self._inflight = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()

    @property
    def daily_submission_limit(self) -> int | None:
        return self.api.daily_submission_limit

    @daily_submission_limit.setter
    def daily_submission_limit(self, value: int | None) -> None:
        self.api.daily_submission_limit = value

    @property
    def grading_delay_s(self) -> float:
        return self.api.grading_delay_s

    @grading_delay_s.setter
    def grading_delay_s(self, value: float) -> None:
        self.api.grading_delay_s = value

    # ----- lifecycle -------------------------------------------------------------------

    def start(self) -> LocalKaggleServer:
        """Bind and serve on a daemon thread; returns self."""
        if self._httpd is not None:
            return self
        try:
            httpd = ThreadingHTTPServer((self.host, self._port), RequestHandler)
        except OSError as exc:
            error = ServerBindError(
                f"cannot serve on {self.host}:{self._port}: {exc.strerror or exc}; choose another "
                "--port (0 picks a free one) or stop what is listening there"
            )
            error.errno = exc.errno
            raise error from None
        httpd.daemon_threads = True
        httpd.app = self  # type: ignore[attr-defined]
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"kaggle-local:{self.port}",
            daemon=True,
        )
        self._thread.start()
        log.info("local Kaggle server for %s at %s", self.root, self.url)
        return self

    def stop(self) -> None:
        """Stop serving, drop open connections and free the port."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> LocalKaggleServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the server is not running: call start() or use it in a with block")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """Base URL to give the client, e.g. http://127.0.0.1:54321."""
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"http://{host}:{self.port}"

    def __repr__(self) -> str:
        running = self.url if self._httpd is not None else "stopped"
        return f"LocalKaggleServer(root={str(self.root)!r}, {running})"

    # ----- test helpers ----------------------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        """A copy of the request log (method, path, status, Range, body bytes).

        A request is logged once its handler is done, which can be just after the client got
        the answer; so this waits (up to LOG_SETTLE_S) for requests in progress to finish.
        """
        with self._idle:
            self._idle.wait_for(lambda: self._inflight == 0, timeout=LOG_SETTLE_S)
            return list(self._log)

    def clear_log(self) -> None:
        """Empty the request log (after requests in progress have finished, like `requests`)."""
        with self._idle:
            self._idle.wait_for(lambda: self._inflight == 0, timeout=LOG_SETTLE_S)
            self._log.clear()

    def count(
        self, path: str | None = None, *, method: str | None = None, status: int | None = None
    ) -> int:
        """How many logged requests match (path: a regex searched in the path)."""
        pat = re.compile(path) if path else None
        return sum(
            1
            for r in self.requests
            if (pat is None or pat.search(r.path))
            and (method is None or r.method == method.upper())
            and (status is None or r.status == status)
        )

    def decline_rules(self, slug: str, username: str | None = None) -> None:
        """Mark the competition's rules as not accepted (for one user, or everyone): 403."""
        self.store.decline_rules(slug, username)

    def accept_rules(self, slug: str, username: str | None = None) -> None:
        """Undo decline_rules (username None: for everyone)."""
        self.store.accept_rules(slug, username)

    def submissions(self, slug: str) -> list[dict[str, Any]]:
        """The stored submissions of a competition (copies), oldest first."""
        return self.store.submissions(slug)

    def data_file(self, slug: str, name: str) -> Path:
        """The path of a served data file (ApiError 404 when there is none)."""
        return self.store.data_file(slug, name)

    def blob_signature(self, slug: str, name: str) -> str:
        """The `sig` of the file's signed download link."""
        return self.store.blob_signature(slug, name)

    # ----- auth --------------------------------------------------------------------------

    def authenticate(self, header: str | None) -> str | None:
        """The username an Authorization header proves, or None."""
        if not header:
            return None
        scheme, _, value = header.strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "basic":
            try:
                user, sep, key = base64.b64decode(value, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return None
            expected = self._credentials.get(user)
            if (
                sep
                and expected is not None
                and hmac.compare_digest(expected.encode(), key.encode())
            ):
                return user
        elif scheme.lower() == "bearer":
            for token, user in self._tokens.items():
                if hmac.compare_digest(token.encode(), value.encode()):
                    return user
        return None

    # ----- the request log and connections (called by the handler) ---------------------

    def begin_request(self) -> None:
        with self._idle:
            self._inflight += 1

    def record(self, rec: RequestRecord) -> None:
        """Log a finished request (and mark it no longer in progress)."""
        with self._idle:
            self._log.append(rec)
            self._inflight -= 1
            self._idle.notify_all()

    def track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)


def client_env_lines(url: str, made_up: tuple[str, str] | None = None) -> list[str]:
    """Shell lines that point the real `kaggle` CLI (kaggle 2.x) at the server at `url`, with
    the `made_up` (username, key) the server accepts (else the CLI finds the caller's own).

    kagglesdk knows two local endpoints, chosen by KAGGLE_API_ENVIRONMENT: LOCALHOST is
    http://localhost (port 80) and TEST is http://localhost:7777. Any other port gets a shell
    function `kaggle` that runs the same CLI with that endpoint put into kagglesdk's table."""
    port = url.rsplit(":", 1)[-1]
    lines = []
    if made_up:
        user, key = map(shlex.quote, made_up)
        lines.append(f"export KAGGLE_USERNAME={user} KAGGLE_KEY={key}")
    if port == "7777":
        return [*lines, "export KAGGLE_API_ENVIRONMENT=TEST"]
    lines.append("export KAGGLE_API_ENVIRONMENT=LOCALHOST")
    if port == "80":
        return lines
    code = (
        "import sys, kagglesdk.kaggle_env as e; "
        "e._env_to_endpoint[e.KaggleEnv.LOCAL] = sys.argv.pop(1); "
        "from kaggle.cli import main; sys.argv[0] = 'kaggle'; sys.exit(main())"
    )
    python = shlex.quote(sys.executable)
    return [*lines, f'kaggle() {{ {python} -c {shlex.quote(code)} {shlex.quote(url)} "$@"; }}']


def serve_forever(
    root: str | os.PathLike[str],
    host: str = "127.0.0.1",
    port: int = 0,
    credentials: Mapping[str, str] | None = None,
    *,
    access_tokens: Mapping[str, str] | None = None,
    daily_submission_limit: int | None = 5,
    out: Callable[[str], Any] = print,
    print_env: bool = False,
) -> None:
    """Serve root until Ctrl-C, printing the URL to give the client.

    Without credentials/access_tokens the server accepts the caller's own Kaggle credentials
    (planet.kaggle.load_credentials: environment or kaggle.json), so the client works
    unchanged; the key itself is never printed. Without any (the server is offline: nothing
    needs a real key) it makes up a username and key and prints them. print_env: print the
    shell lines that point the real kaggle CLI here (`client_env_lines`; a made-up key only).
    """
    source = "the given credentials"
    made_up: tuple[str, str] | None = None
    if credentials is None and not access_tokens:
        from planet.kaggle.credentials import (  # local import: keeps the server standalone
            KaggleCredentialsError,
            load_credentials,
        )

        try:
            creds = load_credentials()
        except KaggleCredentialsError:
            made_up = (MADE_UP_USER, secrets.token_hex(16))
            credentials = dict([made_up])
            source = "made-up credentials (none were found; this server is offline)"
        else:
            source = creds.source
            if creds.token:
                access_tokens = {creds.token: creds.username or "local-user"}
            else:
                credentials = {str(creds.username): str(creds.key)}
    server = LocalKaggleServer(
        root,
        host,
        port,
        credentials,
        access_tokens=access_tokens,
        daily_submission_limit=daily_submission_limit,
    )
    comps = sorted(p.name for p in server.root.iterdir() if p.is_dir() and SLUG_RE.match(p.name))
    if not comps:
        log.warning("%s has no <competition-slug>/ folders to serve", server.root)
    server.start()
    try:
        out(f"Local Kaggle server at {server.url} serving {server.root}")
        out(f"  competitions: {', '.join(comps) or '(none)'}")
        out(f"  accepting credentials from {source}; stop with Ctrl-C")
        if made_up and not print_env:
            out(f"  use them: KAGGLE_USERNAME={made_up[0]} KAGGLE_KEY={made_up[1]}")
        if print_env:
            out("  the real kaggle CLI reaches this server after these lines (bash/zsh):")
            for line in client_env_lines(server.url, made_up):
                out(line)
        stop = threading.Event()
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        out("stopping the local Kaggle server")
    finally:
        server.stop()
