"""The local Kaggle server's API methods: a request's JSON body -> the JSON answer.

The client (kaggle 2.x / kagglesdk) POSTs JSON to `{endpoint}/api/v1/{service}/{method}`;
planet.kaggle_local.http_handler routes each method to one of CompetitionApi's, over the
server's CompetitionStore. Lists are paged like Kaggle's (pageToken or page, pageSize).
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from planet.competitions import resolve
from planet.kaggle_local.grader import grade_file
from planet.kaggle_local.protocol import (
    BLOB_PREFIX,
    MAX_UPLOAD_BYTES,
    SLUG_RE,
    UPLOAD_PREFIX,
    ApiError,
    iso,
)
from planet.kaggle_local.store import PRIVATE_DIR, SOLUTION_FILE, CompetitionStore, Upload

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 200


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


class CompetitionApi:
    """Kaggle's competition API over a CompetitionStore; `user` is the authenticated username.

    authenticate: the server's check of an Authorization header (for IntrospectToken).
    daily_submission_limit: submissions per user per competition per UTC day (None:
    unlimited). grading_delay_s: how long a new submission reports "pending" before its
    scores show.
    """

    def __init__(
        self,
        store: CompetitionStore,
        authenticate: Callable[[str | None], str | None],
        *,
        daily_submission_limit: int | None,
        grading_delay_s: float,
    ) -> None:
        self.store = store
        self.authenticate = authenticate
        self.daily_submission_limit = daily_submission_limit
        self.grading_delay_s = grading_delay_s

    def list_data_files(self, body: dict[str, Any], user: str) -> dict[str, Any]:
        slug = body.get("competitionName", "")
        files = []
        for p in self.store.data_files(slug):
            st = p.stat()
            files.append(
                {
                    "ref": p.name,
                    "name": p.name,
                    "totalBytes": st.st_size,
                    "creationDate": iso(st.st_mtime),
                }
            )
        page, next_token = _page(files, body)
        out: dict[str, Any] = {"files": page}
        if next_token:
            out["nextPageToken"] = next_token
        return out

    def download_data_file(self, body: dict[str, Any], user: str, base_url: str) -> str:
        slug, name = body.get("competitionName", ""), body.get("fileName", "")
        self.store.data_file(slug, name)
        self.store.check_rules(slug, user)
        sig = self.store.blob_signature(slug, name)
        return f"{base_url}{BLOB_PREFIX}{quote(slug)}/{quote(name)}?sig={sig}"

    def start_submission_upload(
        self, body: dict[str, Any], user: str, base_url: str
    ) -> dict[str, Any]:
        slug = body.get("competitionName") or ""
        self.store.competition_dir(slug)
        self.store.check_rules(slug, user)
        file_name = os.path.basename(str(body.get("fileName") or "")) or "submission.csv"
        length = body.get("contentLength") or 0
        if not isinstance(length, int) or length < 0 or length > MAX_UPLOAD_BYTES:
            raise ApiError(400, f"invalid contentLength {length!r}")
        token = secrets.token_urlsafe(24)
        path = self.store.private_dir(slug) / "uploads" / token
        with self.store.lock:
            self.store.uploads[token] = Upload(token, slug, user, file_name, length, path)
        return {"token": token, "createUrl": f"{base_url}{UPLOAD_PREFIX}{token}"}

    def create_submission(self, body: dict[str, Any], user: str) -> dict[str, Any]:
        slug = body.get("competitionName", "")
        cdir = self.store.competition_dir(slug)
        self.store.check_rules(slug, user)
        token = body.get("blobFileTokens") or ""
        with self.store.lock:
            up = self.store.uploads.get(token)
            if up is None or up.slug != slug or up.user != user or not up.done:
                raise ApiError(
                    400, f"blobFileTokens {token!r} is not a completed upload for '{slug}'"
                )
            today, _ = self.store.today_count(slug, user)
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
            del self.store.uploads[token]
            ref = self.store.next_ref
            self.store.next_ref += 1
        result = grade_file(slug, up.path, cdir / PRIVATE_DIR / SOLUTION_FILE)
        stored = self.store.private_dir(slug) / "submissions" / f"{ref}.csv"
        stored.parent.mkdir(parents=True, exist_ok=True)
        os.replace(up.path, stored)
        now = time.time()
        sub = {
            "ref": ref,
            "user": user,
            "date": iso(now),
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
        with self.store.lock:
            self.store.load_subs(slug).append(sub)
            self.store.save_subs(slug)
        title = self._title(slug)
        return {"message": f"Successfully submitted to {title}", "ref": ref}

    def list_submissions(self, body: dict[str, Any], user: str) -> dict[str, Any]:
        slug = body.get("competitionName", "")
        self.store.competition_dir(slug)
        with self.store.lock:
            mine = [s for s in self.store.load_subs(slug) if s["user"] == user]
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

    def get_submission(self, body: dict[str, Any], user: str) -> dict[str, Any]:
        ref = body.get("ref")
        for cdir in sorted(self.store.root.iterdir()):
            if not (SLUG_RE.match(cdir.name) and cdir.is_dir()):
                continue
            with self.store.lock:
                for sub in self.store.load_subs(cdir.name):
                    if sub["ref"] == ref and sub["user"] == user:
                        return self._submission_json(sub)
        raise ApiError(404, f"Submission {ref} not found")

    def get_submission_limits(self, body: dict[str, Any], user: str) -> dict[str, Any]:
        slug = body.get("competitionName", "")
        self.store.competition_dir(slug)
        with self.store.lock:
            today, total = self.store.today_count(slug, user)
        limit = self.daily_submission_limit
        allowed = 1_000_000 if limit is None else max(0, limit - today)
        return {"numToday": today, "numTotal": total, "numAllowedNow": allowed}

    def list_competitions(self, body: dict[str, Any], user: str) -> dict[str, Any]:
        comps = []
        for cdir in sorted(self.store.root.iterdir()):
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

    def introspect_token(self, body: dict[str, Any]) -> dict[str, Any]:
        user = self.authenticate(f"Bearer {body.get('token') or ''}")
        return {"active": True, "username": user} if user else {"active": False}

    @staticmethod
    def _title(slug: str) -> str:
        try:
            return resolve(slug).title
        except ValueError:
            return slug

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
