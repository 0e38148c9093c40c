"""Submissions: submit a file, read a submission's status and scores, wait for them, limits.

One submission per call and no memory of it: planet.kaggle.submit_record makes a retry never
submit the same file twice.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from planet.kaggle import client
from planet.kaggle.credentials import Credentials, load_credentials
from planet.kaggle.errors import KaggleError, KaggleNotFoundError, KaggleTransientError
from planet.kaggle.listing import iso

SUBMISSION_PAGE_SIZE = 20
SUBMISSION_MAX_PAGES = 20


@dataclass(frozen=True)
class SubmissionRef:
    """A submission Kaggle accepted for scoring."""

    slug: str
    ref: int
    message: str  # Kaggle's answer, e.g. "Successfully submitted to ..."
    description: str


@dataclass(frozen=True)
class SubmissionStatus:
    ref: int
    status: str  # "pending" | "complete" | "error"
    public_score: float | None
    private_score: float | None
    error: str | None
    description: str | None
    date: str | None

    @property
    def done(self) -> bool:
        return self.status != "pending"


def _score(value: Any) -> float | None:
    if value in (None, ""):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _status_of(sub: Any) -> SubmissionStatus:
    status = getattr(sub.status, "name", str(sub.status)).lower()
    return SubmissionStatus(
        ref=int(sub.ref),
        status=status,
        public_score=_score(sub.public_score),
        private_score=_score(sub.private_score),
        error=sub.error_description or None,
        description=sub.description,
        date=iso(sub.date),
    )


def _submissions(api: Any, creds: Credentials, slug: str) -> Iterator[Any]:
    for page in range(1, SUBMISSION_MAX_PAGES + 1):
        subs = client.call(
            lambda p=page: api.competition_submissions(
                slug, page_number=p, page_size=SUBMISSION_PAGE_SIZE
            ),
            creds,
            slug,
        )
        if not subs:
            return
        yield from (s for s in subs if s is not None)
        if len(subs) < SUBMISSION_PAGE_SIZE:
            return


def submit(
    slug: str,
    csv_path: str | os.PathLike[str],
    message: str,
    endpoint: str | None = None,
    credentials: Credentials | None = None,
) -> SubmissionRef:
    """Upload a submission file and create the submission; returns its reference."""
    path = Path(csv_path)
    if not path.is_file():
        raise FileNotFoundError(f"submission file {path} does not exist")
    creds, endpoint = client.resolve(credentials, endpoint)
    api = client.api(creds, endpoint)
    resp = client.call(
        lambda: api.competition_submit(str(path), message, slug, quiet=True), creds, slug
    )
    if resp.message == api.COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE:
        raise KaggleTransientError(
            f"uploading {path.name} to competition {slug!r} failed; retry", slug=slug
        )
    ref = int(resp.ref or 0)
    if not ref:  # older servers answer without a ref: take the newest with this message
        ref = next(
            (int(s.ref) for s in _submissions(api, creds, slug) if s.description == message), 0
        )
    if not ref:
        raise KaggleError(
            f"Kaggle did not confirm the submission to {slug!r}: {resp.message}", slug=slug
        )
    return SubmissionRef(slug, ref, client.scrub(resp.message or "", creds), message)


def submission_status(
    slug: str,
    ref: int | SubmissionRef,
    endpoint: str | None = None,
    credentials: Credentials | None = None,
) -> SubmissionStatus:
    """Status and scores of one of your submissions to the competition."""
    ref_id = ref.ref if isinstance(ref, SubmissionRef) else int(ref)
    creds, endpoint = client.resolve(credentials, endpoint)
    api = client.api(creds, endpoint)
    for sub in _submissions(api, creds, slug):
        if int(sub.ref) == ref_id:
            return _status_of(sub)
    raise KaggleNotFoundError(
        f"competition {slug!r} lists no submission {ref_id} of yours", slug=slug
    )


def wait_for_submission(
    slug: str,
    ref: int | SubmissionRef,
    *,
    timeout_s: float = 600.0,
    interval_s: float = 5.0,
    endpoint: str | None = None,
    credentials: Credentials | None = None,
) -> SubmissionStatus:
    """Poll submission_status until scored (or errored); KaggleTransientError on timeout."""
    creds = credentials or load_credentials()
    deadline = time.monotonic() + timeout_s
    while True:
        st = submission_status(slug, ref, endpoint, creds)
        if st.done:
            return st
        if time.monotonic() >= deadline:
            raise KaggleTransientError(
                f"submission {st.ref} to {slug!r} is still pending after {timeout_s:g} s", slug=slug
            )
        time.sleep(interval_s)


def submission_limits(
    slug: str, endpoint: str | None = None, credentials: Credentials | None = None
) -> dict[str, int]:
    """{"today", "total", "allowed_now"}: your team's submission counts for the competition."""
    creds, endpoint = client.resolve(credentials, endpoint)
    api = client.api(creds, endpoint)
    lim = client.call(lambda: api.competition_get_submission_limits(slug), creds, slug)
    return {"today": lim.num_today, "total": lim.num_total, "allowed_now": lim.num_allowed_now}
