"""HTTP plumbing of the local Kaggle server: the request handler and its URL dispatch.

Routes: POST `/api/v1/{service}/{method}` (JSON, HTTP basic auth or a Bearer token) to
CompetitionApi; GET/HEAD `/blobs/<slug>/<name>?sig=...`, the signed download link
DownloadDataFile redirects to (Content-Length, a content-based ETag, Last-Modified,
Accept-Ranges; Range (206) and If-Range are honoured, so the client's resume works); PUT
`/uploads/<token>`, a submission's file. Errors go out as Kaggle's JSON error body. Every
request is logged as a RequestRecord, never with its headers (they carry the credentials).
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import re
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from planet.kaggle_local.protocol import (
    API_PREFIX,
    BLOB_PREFIX,
    COMPETITION_SERVICE,
    MAX_UPLOAD_BYTES,
    OAUTH_SERVICE,
    UPLOAD_PREFIX,
    ApiError,
)

if TYPE_CHECKING:
    from planet.kaggle_local.server import LocalKaggleServer

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
MAX_JSON_BODY = 1 << 20
SOCKET_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class RequestRecord:
    """One request as the server saw it: never headers (they carry the credentials)."""

    method: str
    path: str  # without the query string (blob signatures stay out of the log)
    status: int
    range: str | None = None  # the Range header of a blob request, e.g. "bytes=100-"
    bytes_sent: int = 0  # body bytes actually written


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


class RequestHandler(BaseHTTPRequestHandler):
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
            self._send_json(200, app.api.introspect_token(body))
            return
        handlers: dict[str, Callable[..., Any]] = {
            "ListDataFiles": app.api.list_data_files,
            "CreateSubmission": app.api.create_submission,
            "ListSubmissions": app.api.list_submissions,
            "GetSubmission": app.api.get_submission,
            "GetSubmissionLimits": app.api.get_submission_limits,
            "ListCompetitions": app.api.list_competitions,
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
            location = app.api.download_data_file(body, user, self._base_url())
            self._send(302, {"Location": location, "Content-Length": "0"})
        elif method == "StartSubmissionUpload":
            self._send_json(200, app.api.start_submission_upload(body, user, self._base_url()))
        else:
            self._send_json(200, handlers[method](body, user))

    def _blob(self, raw_path: str, query: dict[str, list[str]], head: bool) -> None:
        slug_q, _, name_q = raw_path.partition("/")
        slug, name = unquote(slug_q), unquote(name_q)
        app = self.app
        sig = (query.get("sig") or [""])[0]
        if not hmac.compare_digest(sig.encode(), app.store.blob_signature(slug, name).encode()):
            raise ApiError(403, "invalid or expired download link: ask DownloadDataFile again")
        path = app.store.data_file(slug, name)
        st = path.stat()
        size = st.st_size
        etag = app.store.etag(path)
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
            done = self.app.store.upload_done(token)
            for _ in self._read_body(MAX_JSON_BODY):
                pass
            self._send(200 if done else 308, {"Content-Length": "0"})
            return
        self.app.store.store_upload(token, self._read_body(MAX_UPLOAD_BYTES), content_range)
        self._send_json(200, {})
