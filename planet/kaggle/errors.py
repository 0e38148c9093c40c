"""The errors of planet.kaggle: Kaggle's HTTP failures mapped to a few exception classes.

Every message says what to do; `is_transient` tells the orchestration's retry condition which
ones are worth retrying.
"""

from __future__ import annotations

from typing import Any


class KaggleError(Exception):
    """A Kaggle call failed; the message says what to do. `status` is the HTTP status, if any."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        slug: str | None = None,
        file_name: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.slug = slug
        self.file_name = file_name


class KaggleAuthError(KaggleError):
    """401: Kaggle rejected the credentials."""


class KaggleCredentialsError(KaggleAuthError):
    """No usable credentials were found (or kaggle.json is malformed)."""


class KaggleRulesError(KaggleError):
    """403: typically the competition's rules have not been accepted on kaggle.com."""


class KaggleNotFoundError(KaggleError):
    """404: no such competition or file."""


class KaggleSubmissionLimitError(KaggleError):
    """The daily submission allowance is used up (retrying today won't help)."""


class KaggleTransientError(KaggleError):
    """429, 5xx, a dropped connection or an incomplete download: worth retrying later.

    `retry_after`: seconds the server asked to wait (Retry-After), if it said.
    """

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class InsecureCredentialsWarning(UserWarning):
    """kaggle.json can be read by other users."""


def is_transient(exc: BaseException) -> bool:
    """Is this error worth retrying (with backoff)? For the orchestration's retry condition."""
    if isinstance(exc, KaggleTransientError):
        return True
    if isinstance(exc, KaggleError):
        return False
    try:
        import requests
    except ImportError:  # pragma: no cover - requests is a dependency
        return False
    return isinstance(
        exc,
        requests.ConnectionError | requests.Timeout | requests.exceptions.ChunkedEncodingError,
    )
