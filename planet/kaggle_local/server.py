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
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from planet.competitions import resolve
from planet.fileio import read_json, sha256_file, write_json_atomic
from planet.kaggle_local.faults import Faults
from planet.kaggle_local.grader import grade_file

log = logging.getLogger(__name__)

PRIVATE_DIR = "_private"
SOLUTION_FILE = "solution.csv"
SUBMISSIONS_FILE = "submissions.json"
COMPETITION_SERVICE = "competitions.CompetitionApiService"
OAUTH_SERVICE = "security.OAuthService"
API_PREFIX = "/api/v1/"
BLOB_PREFIX = "/blobs/"
UPLOAD_PREFIX = "/uploads/"
SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,99}$")
CHUNK = 64 * 1024
MAX_JSON_BODY = 1 << 20
MAX_UPLOAD_BYTES = 1 << 30
DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 200
SOCKET_TIMEOUT_S = 60.0
LOG_SETTLE_S = 2.0

RULES_MESSAGE = (
    "You must accept this competition's rules before you'll be able to download files or "
    "submit: visit https://www.kaggle.com/c/{slug}/rules"
)


class ApiError(Exception):
    """An HTTP error answer: status, message (sent as Kaggle's JSON error body), headers."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


@dataclass(frozen=True)
class RequestRecord:
    """One request as the server saw it: never headers (they carry the credentials)."""

    method: str
    path: str  # without the query string (blob signatures stay out of the log)
    status: int
    range: str | None = None  # the Range header of a blob request, e.g. "bytes=100-"
    bytes_sent: int = 0  # body bytes actually written


@dataclass
class _Upload:
    token: str
    slug: str
    user: str
    file_name: str
    content_length: int
    path: Path
    done: bool = False


def _iso(ts: float | datetime) -> str:
    """Kaggle's JSON date format: ISO 8601, milliseconds, UTC, trailing Z."""
    dt = ts if isinstance(ts, datetime) else datetime.fromtimestamp(ts, tz=UTC)
    return dt.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def _parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.rstrip("Z")).replace(tzinfo=UTC)


def _encode_token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode().rstrip("=")


def _decode_token(token: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        kind, _, value = raw.partition(":")
        if kind != "offset" or not value.isdigit():
            raise ValueError(token)
        return int(value)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ApiError(400, f"invalid pageToken {token!r}") from None


def _page(items: list[Any], body: Mapping[str, Any]) -> tuple[list[Any], str]:
    """Slice one page out of items from pageToken (or 1-based page) and pageSize."""
    size = body.get("pageSize") or DEFAULT_PAGE_SIZE
    if not isinstance(size, int) or size < 1:
        raise ApiError(400, f"invalid pageSize {size!r}: expected a positive integer")
    size = min(size, MAX_PAGE_SIZE)
    token = body.get("pageToken") or ""
    if token:
        start = _decode_token(str(token))
    else:
        page = body.get("page") or 1
        if not isinstance(page, int) or page < 1:
            raise ApiError(400, f"invalid page {page!r}: expected a positive integer")
        start = (page - 1) * size
    chunk = items[start : start + size]
    next_token = _encode_token(start + size) if start + size < len(items) else ""
    return chunk, next_token


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """(first, last) byte of a single `bytes=` range; None to ignore it; raises 416."""
    m = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if not m or (not m.group(1) and not m.group(2)):
        return None  # malformed or multi-range: serve the whole file (allowed by RFC 9110)
    first_s, last_s = m.groups()
    if first_s:
        first = int(first_s)
        last = min(int(last_s), size - 1) if last_s else size - 1
        if last_s and int(last_s) < first:
            return None
    else:
        suffix = int(last_s)
        if suffix == 0:
            first, last = size, size - 1
        else:
            first, last = max(0, size - suffix), size - 1
    if first >= size:
        raise ApiError(
            416,
            f"range {header.strip()} is outside the file ({size} bytes)",
            {"Content-Range": f"bytes */{size}"},
        )
    return first, last


def _valid_file_name(name: str) -> bool:
    """A plain data-file name: no folders, no hidden or private names, no traversal."""
    return bool(
        name
        and name not in (".", "..")
        and not name.startswith((".", "_"))
        and "/" not in name
        and "\\" not in name
        and "\x00" not in name
    )


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
        self.daily_submission_limit = daily_submission_limit
        self.grading_delay_s = grading_delay_s
        self.faults = Faults()
        self._signing_key = secrets.token_bytes(32)
        self._lock = threading.RLock()
        self._log: list[RequestRecord] = []
        self._idle = threading.Condition(self._lock)
        self._inflight = 0
        self._declined: dict[str, set[str | None]] = {}
        self._uploads: dict[str, _Upload] = {}
        self._subs: dict[str, list[dict[str, Any]]] = {}
        self._etags: dict[tuple[str, int, int], str] = {}
        self._next_ref = self._max_stored_ref() + 1
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()

    # ----- lifecycle -------------------------------------------------------------------

    def start(self) -> LocalKaggleServer:
        """Bind and serve on a daemon thread; returns self."""
        if self._httpd is not None:
            return self
        httpd = ThreadingHTTPServer((self.host, self._port), _Handler)
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
        with self._lock:
            self._declined.setdefault(slug, set()).add(username)

    def accept_rules(self, slug: str, username: str | None = None) -> None:
        """Undo decline_rules (username None: for everyone)."""
        with self._lock:
            if username is None:
                self._declined.pop(slug, None)
            else:
                self._declined.get(slug, set()).discard(username)

    def submissions(self, slug: str) -> list[dict[str, Any]]:
        """The stored submissions of a competition (copies), oldest first."""
        with self._lock:
            return [dict(s) for s in self._load_subs(slug)]

    # ----- competitions and files -------------------------------------------------------

    def competition_dir(self, slug: str) -> Path:
        if not isinstance(slug, str) or not SLUG_RE.match(slug) or not (self.root / slug).is_dir():
            raise ApiError(404, f"Competition '{slug}' not found")
        return self.root / slug

    def data_files(self, slug: str) -> list[Path]:
        cdir = self.competition_dir(slug)
        return sorted(p for p in cdir.iterdir() if _valid_file_name(p.name) and p.is_file())

    def data_file(self, slug: str, name: str) -> Path:
        cdir = self.competition_dir(slug)
        if not isinstance(name, str) or not _valid_file_name(name) or not (cdir / name).is_file():
            raise ApiError(404, f"File '{name}' not found in competition '{slug}'")
        return cdir / name

    def _private_dir(self, slug: str) -> Path:
        return self.competition_dir(slug) / PRIVATE_DIR

    def etag(self, path: Path) -> str:
        """Strong, content-based ETag (sha256 prefix), cached per (path, size, mtime)."""
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        with self._lock:
            digest = self._etags.get(key)
        if digest is None:
            digest = sha256_file(path)[:32]
            with self._lock:
                self._etags[key] = digest
        salt = self.faults.etag_salt
        return f'"{digest}-{salt}"' if salt else f'"{digest}"'

    def blob_signature(self, slug: str, name: str) -> str:
        msg = f"{slug}/{name}".encode()
        return hmac.new(self._signing_key, msg, hashlib.sha256).hexdigest()[:40]

    def _check_rules(self, slug: str, user: str) -> None:
        with self._lock:
            declined = self._declined.get(slug, set())
            if None in declined or user in declined:
                raise ApiError(403, RULES_MESSAGE.format(slug=slug))

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

    # ----- submissions -----------------------------------------------------------------

    def _max_stored_ref(self) -> int:
        best = 0
        for path in self.root.glob(f"*/{PRIVATE_DIR}/{SUBMISSIONS_FILE}"):
            try:
                best = max([best, *(int(s["ref"]) for s in read_json(path))])
            except (OSError, ValueError, TypeError, KeyError) as exc:
                log.warning("ignoring unreadable %s: %s", path, exc)
        return best

    def _load_subs(self, slug: str) -> list[dict[str, Any]]:
        with self._lock:
            if slug not in self._subs:
                path = self._private_dir(slug) / SUBMISSIONS_FILE
                subs: list[dict[str, Any]] = []
                if path.exists():
                    try:
                        subs = list(read_json(path))
                    except (OSError, ValueError, TypeError) as exc:
                        raise ApiError(500, f"submission store of '{slug}' is unreadable") from exc
                self._subs[slug] = subs
            return self._subs[slug]

    def _save_subs(self, slug: str) -> None:
        with self._lock:
            write_json_atomic(self._private_dir(slug) / SUBMISSIONS_FILE, self._subs[slug])

    def _submission_json(self, sub: dict[str, Any]) -> dict[str, Any]:
        pending = time.time() < sub.get("ready_at", 0)
        status = "PENDING" if pending else sub["status"]
        out: dict[str, Any] = {
            "ref": sub["ref"],
            "totalBytes": sub["total_bytes"],
            "date": sub["date"],
            "description": sub.get("description") or "",
            "fileName": sub["file_name"],
            "status": status,
            "submittedBy": sub["user"],
            "submittedByRef": sub["user"],
            "teamName": sub["user"],
            "url": f"/submissions/{sub['ref']}/{quote(sub['file_name'])}",
        }
        if status == "ERROR":
            out["errorDescription"] = sub.get("error") or "submission scoring error"
        if status == "COMPLETE":
            for src, dst in (("public_score", "publicScore"), ("private_score", "privateScore")):
                if sub.get(src) is not None:
                    out[dst] = f"{sub[src]:.5f}"
        return out

    def _today_count(self, slug: str, user: str) -> tuple[int, int]:
        today = datetime.now(UTC).date()
        mine = [s for s in self._load_subs(slug) if s["user"] == user]
        return sum(1 for s in mine if _parse_iso(s["date"]).date() == today), len(mine)

    # ----- API methods (body -> JSON answer); `user` is the authenticated username ------

    def api_list_data_files(self, body: dict[str, Any], user: str) -> dict[str, Any]:
        slug = body.get("competitionName", "")
        files = []
        for p in self.data_files(slug):
            st = p.stat()
            files.append(
                {
                    "ref": p.name,
                    "name": p.name,
                    "totalBytes": st.st_size,
                    "creationDate": _iso(st.st_mtime),
                }
            )
        page, next_token = _page(files, body)
        out: dict[str, Any] = {"files": page}
        if next_token:
            out["nextPageToken"] = next_token
        return out

    def api_download_data_file(self, body: dict[str, Any], user: str, base_url: str) -> str:
        slug, name = body.get("competitionName", ""), body.get("fileName", "")
        self.data_file(slug, name)
        self._check_rules(slug, user)
        sig = self.blob_signature(slug, name)
        return f"{base_url}{BLOB_PREFIX}{quote(slug)}/{quote(name)}?sig={sig}"

    def api_start_submission_upload(
        self, body: dict[str, Any], user: str, base_url: str
    ) -> dict[str, Any]:
        slug = body.get("competitionName") or ""
        self.competition_dir(slug)
        self._check_rules(slug, user)
        file_name = os.path.basename(str(body.get("fileName") or "")) or "submission.csv"
        length = body.get("contentLength") or 0
        if not isinstance(length, int) or length < 0 or length > MAX_UPLOAD_BYTES:
            raise ApiError(400, f"invalid contentLength {length!r}")
        token = secrets.token_urlsafe(24)
        path = self._private_dir(slug) / "uploads" / token
        with self._lock:
            self._uploads[token] = _Upload(token, slug, user, file_name, length, path)
        return {"token": token, "createUrl": f"{base_url}{UPLOAD_PREFIX}{token}"}

    def api_create_submission(self, body: dict[str, Any], user: str) -> dict[str, Any]:
        slug = body.get("competitionName", "")
        cdir = self.competition_dir(slug)
        self._check_rules(slug, user)
        token = body.get("blobFileTokens") or ""
        with self._lock:
            up = self._uploads.get(token)
            if up is None or up.slug != slug or up.user != user or not up.done:
                raise ApiError(
                    400, f"blobFileTokens {token!r} is not a completed upload for '{slug}'"
                )
            today, _ = self._today_count(slug, user)
            limit = self.daily_submission_limit
            if limit is not None and today >= limit:
                now = datetime.now(UTC)
                tomorrow = datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)
                hours = (tomorrow - now).total_seconds() / 3600
                raise ApiError(
                    400,
                    f"Submission not allowed: Your team has used its daily Submission allowance "
                    f"({limit}) today, please try again tomorrow UTC ({hours:.1f} hours from now).",
                )
            del self._uploads[token]
            ref = self._next_ref
            self._next_ref += 1
        result = grade_file(slug, up.path, cdir / PRIVATE_DIR / SOLUTION_FILE)
        stored = self._private_dir(slug) / "submissions" / f"{ref}.csv"
        stored.parent.mkdir(parents=True, exist_ok=True)
        os.replace(up.path, stored)
        now = time.time()
        sub = {
            "ref": ref,
            "user": user,
            "date": _iso(now),
            "description": body.get("submissionDescription") or "",
            "file_name": up.file_name,
            "total_bytes": stored.stat().st_size,
            "status": "COMPLETE" if result.ok else "ERROR",
            "public_score": result.public_score,
            "private_score": result.private_score,
            "error": result.error,
            "stored": str(stored.relative_to(cdir)),
            "ready_at": now + self.grading_delay_s,
        }
        with self._lock:
            self._load_subs(slug).append(sub)
            self._save_subs(slug)
        title = self._title(slug)
        return {"message": f"Successfully submitted to {title}", "ref": ref}

    def api_list_submissions(self, body: dict[str, Any], user: str) -> dict[str, Any]:
        slug = body.get("competitionName", "")
        self.competition_dir(slug)
        with self._lock:
            mine = [s for s in self._load_subs(slug) if s["user"] == user]
        if body.get("group") == "SUBMISSION_GROUP_SUCCESSFUL":
            mine = [s for s in mine if s["status"] == "COMPLETE"]
        elif body.get("group") == "SUBMISSION_GROUP_SELECTED":
            mine = []
        mine.sort(key=lambda s: (s["date"], s["ref"]), reverse=True)
        page, next_token = _page(mine, body)
        return {
            "submissions": [self._submission_json(s) for s in page],
            "nextPageToken": next_token,
        }

    def api_get_submission(self, body: dict[str, Any], user: str) -> dict[str, Any]:
        ref = body.get("ref")
        for cdir in sorted(self.root.iterdir()):
            if not (SLUG_RE.match(cdir.name) and cdir.is_dir()):
                continue
            with self._lock:
                for sub in self._load_subs(cdir.name):
                    if sub["ref"] == ref and sub["user"] == user:
                        return self._submission_json(sub)
        raise ApiError(404, f"Submission {ref} not found")

    def api_get_submission_limits(self, body: dict[str, Any], user: str) -> dict[str, Any]:
        slug = body.get("competitionName", "")
        self.competition_dir(slug)
        with self._lock:
            today, total = self._today_count(slug, user)
        limit = self.daily_submission_limit
        allowed = 1_000_000 if limit is None else max(0, limit - today)
        return {"numToday": today, "numTotal": total, "numAllowedNow": allowed}

    def api_list_competitions(self, body: dict[str, Any], user: str) -> dict[str, Any]:
        comps = []
        for cdir in sorted(self.root.iterdir()):
            if SLUG_RE.match(cdir.name) and cdir.is_dir():
                comps.append(
                    {
                        "ref": cdir.name,
                        "title": self._title(cdir.name),
                        "url": f"https://www.kaggle.com/c/{cdir.name}",
                        "category": "Local",
                        "reward": "Knowledge",
                        "deadline": "2099-01-01T00:00:00.000Z",
                        "userHasEntered": True,
                        "maxDailySubmissions": self.daily_submission_limit or 0,
                    }
                )
        search = (body.get("search") or "").lower()
        comps = [c for c in comps if search in c["ref"] or search in c["title"].lower()]
        page, next_token = _page(comps, body)
        return {"competitions": page, "nextPageToken": next_token}

    def api_introspect_token(self, body: dict[str, Any]) -> dict[str, Any]:
        user = self.authenticate(f"Bearer {body.get('token') or ''}")
        return {"active": True, "username": user} if user else {"active": False}

    @staticmethod
    def _title(slug: str) -> str:
        try:
            return resolve(slug).title
        except ValueError:
            return slug

    # ----- uploads and logging (called by the handler) ---------------------------------

    def store_upload(self, token: str, chunks: Iterator[bytes], content_range: str | None) -> None:
        with self._lock:
            up = self._uploads.get(token)
        if up is None:
            raise ApiError(404, "upload not found or expired: start the submission again")
        if content_range and not content_range.strip().startswith(("bytes 0-", "bytes */")):
            raise ApiError(400, "the local server does not support resuming a partial upload")
        up.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = up.path.with_name(up.path.name + ".part")
        n = 0
        with open(tmp, "wb") as fh:
            for chunk in chunks:
                n += len(chunk)
                if n > MAX_UPLOAD_BYTES:
                    raise ApiError(413, f"upload larger than {MAX_UPLOAD_BYTES} bytes")
                fh.write(chunk)
        if up.content_length and n != up.content_length:
            tmp.unlink(missing_ok=True)
            raise ApiError(
                400, f"upload has {n} bytes but StartSubmissionUpload declared {up.content_length}"
            )
        os.replace(tmp, up.path)
        up.done = True

    def upload_done(self, token: str) -> bool:
        with self._lock:
            up = self._uploads.get(token)
            if up is None:
                raise ApiError(404, "upload not found or expired: start the submission again")
            return up.done

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


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # one request per connection: nothing lingers after stop()
    server_version = "LocalKaggle/1.0"
    timeout = SOCKET_TIMEOUT_S

    @property
    def app(self) -> LocalKaggleServer:
        return self.server.app  # type: ignore[attr-defined]

    def setup(self) -> None:
        super().setup()
        self.app.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.app.track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # the request log (RequestRecord) replaces stderr logging; it never has headers

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    # ----- plumbing --------------------------------------------------------------------

    def _dispatch(self, method: str) -> None:
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        self._status, self._sent, self._range = 0, 0, None
        self.app.begin_request()
        try:
            rule = self.app.faults.take_failure(method, path)
            if rule is not None:
                headers = {}
                if rule.retry_after is not None:
                    headers["Retry-After"] = f"{rule.retry_after:g}"
                raise ApiError(rule.status, rule.message, headers)
            if path.startswith(API_PREFIX) and method == "POST":
                self._api(path[len(API_PREFIX) :])
            elif path.startswith(BLOB_PREFIX) and method in ("GET", "HEAD"):
                self._blob(parts.path[len(BLOB_PREFIX) :], parse_qs(parts.query), method == "HEAD")
            elif path.startswith(UPLOAD_PREFIX) and method == "PUT":
                self._upload(path[len(UPLOAD_PREFIX) :])
            else:
                raise ApiError(404, f"no such endpoint: {method} {path}")
        except ApiError as exc:
            self._send_error(exc)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # a bug here must not kill the server thread
            log.exception("local Kaggle server failed on %s %s", method, path)
            self._send_error(ApiError(500, f"internal server error ({type(exc).__name__})"))
        finally:
            self.app.record(RequestRecord(method, path, self._status, self._range, self._sent))

    def _send(self, status: int, headers: Mapping[str, str], body: bytes = b"") -> None:
        self._status = status
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)
            self._sent += len(body)

    def _send_json(self, status: int, obj: Any, headers: Mapping[str, str] | None = None) -> None:
        body = json.dumps(obj).encode()
        hdrs = {"Content-Type": "application/json; charset=utf-8", "Content-Length": str(len(body))}
        hdrs.update(headers or {})
        self._send(status, hdrs, body)

    def _send_error(self, exc: ApiError) -> None:
        try:
            self._send_json(exc.status, {"code": exc.status, "message": exc.message}, exc.headers)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _read_body(self, limit: int) -> Iterator[bytes]:
        """The request body in chunks (Content-Length or chunked transfer encoding)."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            total = 0
            while True:
                size_line = self.rfile.readline(1024)
                try:
                    size = int(size_line.split(b";")[0].strip() or b"0", 16)
                except ValueError:
                    raise ApiError(400, "malformed chunked request body") from None
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    return
                total += size
                if total > limit:
                    raise ApiError(413, f"request body larger than {limit} bytes")
                yield self.rfile.read(size)
                self.rfile.readline(1024)
        length = int(self.headers.get("Content-Length") or 0)
        if length > limit:
            raise ApiError(413, f"request body larger than {limit} bytes")
        while length > 0:
            chunk = self.rfile.read(min(CHUNK, length))
            if not chunk:
                raise ApiError(400, "request body ended early")
            length -= len(chunk)
            yield chunk

    def _base_url(self) -> str:
        host = self.headers.get("Host")
        return f"http://{host}" if host else self.app.url

    # ----- routes ------------------------------------------------------------------------

    def _api(self, route: str) -> None:
        service, _, method = route.partition("/")
        raw = b"".join(self._read_body(MAX_JSON_BODY))
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            raise ApiError(400, "request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, "request body must be a JSON object")
        app = self.app
        if (service, method) == (OAUTH_SERVICE, "IntrospectToken"):
            self._send_json(200, app.api_introspect_token(body))
            return
        handlers: dict[str, Callable[..., Any]] = {
            "ListDataFiles": app.api_list_data_files,
            "CreateSubmission": app.api_create_submission,
            "ListSubmissions": app.api_list_submissions,
            "GetSubmission": app.api_get_submission,
            "GetSubmissionLimits": app.api_get_submission_limits,
            "ListCompetitions": app.api_list_competitions,
        }
        known = service == COMPETITION_SERVICE and (
            method in handlers or method in ("DownloadDataFile", "StartSubmissionUpload")
        )
        if not known:
            raise ApiError(404, f"the local Kaggle server does not implement {service}/{method}")
        user = app.authenticate(self.headers.get("Authorization"))
        if user is None:
            raise ApiError(401, "Unauthenticated: missing or invalid Kaggle credentials")
        if method == "DownloadDataFile":
            location = app.api_download_data_file(body, user, self._base_url())
            self._send(302, {"Location": location, "Content-Length": "0"})
        elif method == "StartSubmissionUpload":
            self._send_json(200, app.api_start_submission_upload(body, user, self._base_url()))
        else:
            self._send_json(200, handlers[method](body, user))

    def _blob(self, raw_path: str, query: dict[str, list[str]], head: bool) -> None:
        slug_q, _, name_q = raw_path.partition("/")
        slug, name = unquote(slug_q), unquote(name_q)
        app = self.app
        sig = (query.get("sig") or [""])[0]
        if not hmac.compare_digest(sig.encode(), app.blob_signature(slug, name).encode()):
            raise ApiError(403, "invalid or expired download link: ask DownloadDataFile again")
        path = app.data_file(slug, name)
        st = path.stat()
        size = st.st_size
        etag = app.etag(path)
        last_modified = formatdate(st.st_mtime, usegmt=True)
        first, last, status = 0, size - 1, 200
        rng = self.headers.get("Range")
        self._range = rng
        if_range = self.headers.get("If-Range")
        if rng and (if_range is None or if_range.strip() in (etag, last_modified)):
            parsed = _parse_range(rng, size)
            if parsed is not None:
                (first, last), status = parsed, 206
        length = max(0, last - first + 1)
        announced = send = length
        fault = None if head else app.faults.take_body_fault(f"{BLOB_PREFIX}{slug}/{name}")
        if fault is not None:
            send = min(fault.nbytes, length)
            if fault.kind == "truncate":
                announced = send
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Length": str(announced),
            "ETag": etag,
            "Last-Modified": last_modified,
            "Accept-Ranges": "bytes",
            "Content-Disposition": f"attachment; filename*=UTF-8''{quote(name)}",
        }
        if status == 206:
            headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        self._send(status, headers)
        if head:
            return
        with open(path, "rb") as fh:
            fh.seek(first)
            left = send
            while left > 0:
                chunk = fh.read(min(CHUNK, left))
                if not chunk:
                    break
                self.wfile.write(chunk)
                self._sent += len(chunk)
                left -= len(chunk)
        if fault is not None and fault.kind == "cut":
            self.wfile.flush()
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

    def _upload(self, token: str) -> None:
        content_range = self.headers.get("Content-Range")
        if content_range and content_range.strip().startswith("bytes */"):
            # resumable-upload status probe: 200 when complete, 308 (nothing stored) otherwise
            done = self.app.upload_done(token)
            for _ in self._read_body(MAX_JSON_BODY):
                pass
            self._send(200 if done else 308, {"Content-Length": "0"})
            return
        self.app.store_upload(token, self._read_body(MAX_UPLOAD_BYTES), content_range)
        self._send_json(200, {})


def serve_forever(
    root: str | os.PathLike[str],
    host: str = "127.0.0.1",
    port: int = 0,
    credentials: Mapping[str, str] | None = None,
    *,
    access_tokens: Mapping[str, str] | None = None,
    daily_submission_limit: int | None = 5,
    out: Callable[[str], Any] = print,
) -> None:
    """Serve root until Ctrl-C, printing the URL to give the client.

    Without credentials/access_tokens the server accepts the caller's own Kaggle credentials
    (planet.kaggle.load_credentials: environment or kaggle.json), so the client works
    unchanged; the key itself is never printed.
    """
    source = "the given credentials"
    if credentials is None and not access_tokens:
        from planet.kaggle import load_credentials  # local import: keeps the server standalone

        creds = load_credentials()
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
        stop = threading.Event()
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        out("stopping the local Kaggle server")
    finally:
        server.stop()
