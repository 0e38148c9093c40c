"""What the local server's store, API handlers and HTTP handler share about Kaggle's API.

Its URL layout, its error answer (ApiError: sent as Kaggle's JSON `{"code": N, "message":
"..."}`), its date format, the competition-slug rule and the upload size limit.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime

COMPETITION_SERVICE = "competitions.CompetitionApiService"
OAUTH_SERVICE = "security.OAuthService"
API_PREFIX = "/api/v1/"
BLOB_PREFIX = "/blobs/"
UPLOAD_PREFIX = "/uploads/"
SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,99}$")
MAX_UPLOAD_BYTES = 1 << 30


class ApiError(Exception):
    """An HTTP error answer: status, message (sent as Kaggle's JSON error body), headers."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def iso(ts: float | datetime) -> str:
    """Kaggle's JSON date format: ISO 8601, milliseconds, UTC, trailing Z."""
    dt = ts if isinstance(ts, datetime) else datetime.fromtimestamp(ts, tz=UTC)
    return dt.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.rstrip("Z")).replace(tzinfo=UTC)
