"""Fault injection for the local Kaggle server: failed requests, rate limits, broken bodies.

Rules are armed at runtime (`server.faults.fail_next(...)`) and consumed by the requests they
match, so a test can say "the next two DownloadDataFile calls fail with 500" and then check
that the caller recovers.
"""

from __future__ import annotations

import re
import secrets
import threading
from dataclasses import dataclass
from typing import Literal

BodyFault = Literal["cut", "truncate"]


@dataclass
class FailRule:
    """Answer `remaining` matching requests with `status` (JSON error body)."""

    remaining: int
    status: int
    pattern: re.Pattern[str] | None
    method: str | None
    retry_after: float | None
    message: str

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method != method:
            return False
        return self.pattern is None or self.pattern.search(path) is not None


@dataclass
class BodyRule:
    """Break the body of `remaining` matching blob responses after `nbytes` bytes.

    `cut`: the headers announce the whole body, then the connection is closed (a dropped
    connection). `truncate`: the headers announce only `nbytes` and the response ends cleanly
    (a short but well-formed response, which only a size check against the listing catches).
    """

    remaining: int
    nbytes: int
    kind: BodyFault
    pattern: re.Pattern[str] | None

    def matches(self, path: str) -> bool:
        return self.pattern is None or self.pattern.search(path) is not None


class Faults:
    """Thread-safe set of armed faults; every method may be called while the server runs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fail: list[FailRule] = []
        self._body: list[BodyRule] = []
        self._etag_salt = ""

    def fail_next(
        self,
        n: int = 1,
        *,
        status: int = 500,
        path: str | None = None,
        method: str | None = None,
        retry_after: float | None = None,
        message: str | None = None,
    ) -> None:
        """Fail the next `n` requests whose path matches the regex `path` (any path if None)."""
        if n < 1:
            raise ValueError(f"fail_next needs n >= 1, got {n}")
        if not 400 <= status <= 599:
            raise ValueError(f"fail_next needs an HTTP error status (400-599), got {status}")
        rule = FailRule(
            remaining=n,
            status=status,
            pattern=re.compile(path) if path else None,
            method=method.upper() if method else None,
            retry_after=retry_after,
            message=message or f"injected fault: HTTP {status}",
        )
        with self._lock:
            self._fail.append(rule)

    def rate_limit_next(
        self, n: int = 1, *, retry_after: float = 1, path: str | None = None
    ) -> None:
        """Answer the next `n` matching requests with 429 Too Many Requests + Retry-After."""
        self.fail_next(
            n, status=429, path=path, retry_after=retry_after, message="Too many requests"
        )

    def cut_next_body(self, after_bytes: int, n: int = 1, *, path: str | None = None) -> None:
        """Drop the connection after `after_bytes` body bytes of the next `n` blob downloads."""
        self._add_body(after_bytes, n, "cut", path)

    def truncate_next_body(self, nbytes: int, n: int = 1, *, path: str | None = None) -> None:
        """Serve only the first `nbytes` (with a matching Content-Length) of the next `n` blobs."""
        self._add_body(nbytes, n, "truncate", path)

    def change_etag(self) -> None:
        """Make every file's ETag differ from before, as if the remote files had been replaced."""
        with self._lock:
            self._etag_salt = secrets.token_hex(4)

    @property
    def etag_salt(self) -> str:
        with self._lock:
            return self._etag_salt

    def clear(self) -> None:
        """Disarm everything (the ETag salt included)."""
        with self._lock:
            self._fail.clear()
            self._body.clear()
            self._etag_salt = ""

    @property
    def pending(self) -> int:
        """How many injected failures are still armed (requests, not rules)."""
        with self._lock:
            return sum(r.remaining for r in self._fail) + sum(r.remaining for r in self._body)

    def take_failure(self, method: str, path: str) -> FailRule | None:
        """Consume and return the first failure rule matching this request, if any."""
        return self._take(self._fail, lambda r: r.matches(method, path))

    def take_body_fault(self, path: str) -> BodyRule | None:
        """Consume and return the first body rule matching this blob path, if any."""
        return self._take(self._body, lambda r: r.matches(path))

    def _add_body(self, nbytes: int, n: int, kind: BodyFault, path: str | None) -> None:
        if nbytes < 0 or n < 1:
            raise ValueError(f"body faults need nbytes >= 0 and n >= 1, got {nbytes} and {n}")
        rule = BodyRule(n, nbytes, kind, re.compile(path) if path else None)
        with self._lock:
            self._body.append(rule)

    def _take(self, rules: list, pred) -> FailRule | BodyRule | None:  # type: ignore[type-arg]
        with self._lock:
            for rule in rules:
                if pred(rule):
                    rule.remaining -= 1
                    if rule.remaining <= 0:
                        rules.remove(rule)
                    return rule
        return None
