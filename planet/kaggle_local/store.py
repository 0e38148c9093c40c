"""The local Kaggle server's state and storage: competitions, files, rules, uploads, submissions.

`<root>/<slug>/_private/` is never listed or served; submissions are remembered there in
`submissions.json` (plus the uploaded files), so a restarted server knows them. Nothing is
written outside `root`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from planet.fileio import read_json, sha256_file, write_json_atomic
from planet.kaggle_local.faults import Faults
from planet.kaggle_local.protocol import MAX_UPLOAD_BYTES, SLUG_RE, ApiError, parse_iso

log = logging.getLogger(__name__)

PRIVATE_DIR = "_private"
SOLUTION_FILE = "solution.csv"
SUBMISSIONS_FILE = "submissions.json"

RULES_MESSAGE = (
    "You must accept this competition's rules before you'll be able to download files or "
    "submit: visit https://www.kaggle.com/c/{slug}/rules"
)


@dataclass
class Upload:
    token: str
    slug: str
    user: str
    file_name: str
    content_length: int
    path: Path
    done: bool = False


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


class CompetitionStore:
    """The competitions under `root` and what the server remembers about them.

    `lock` guards the state (the server's request log shares it); `faults` is the server's
    fault plan (its ETag salt changes every ETag).
    """

    def __init__(self, root: Path, faults: Faults) -> None:
        self.root = root
        self.faults = faults
        self._signing_key = secrets.token_bytes(32)
        self.lock = threading.RLock()
        self._declined: dict[str, set[str | None]] = {}
        self.uploads: dict[str, Upload] = {}
        self._subs: dict[str, list[dict[str, Any]]] = {}
        self._etags: dict[tuple[str, int, int], str] = {}
        self.next_ref = self._max_stored_ref() + 1

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

    def private_dir(self, slug: str) -> Path:
        return self.competition_dir(slug) / PRIVATE_DIR

    def etag(self, path: Path) -> str:
        """Strong, content-based ETag (sha256 prefix), cached per (path, size, mtime)."""
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        with self.lock:
            digest = self._etags.get(key)
        if digest is None:
            digest = sha256_file(path)[:32]
            with self.lock:
                self._etags[key] = digest
        salt = self.faults.etag_salt
        return f'"{digest}-{salt}"' if salt else f'"{digest}"'

    def blob_signature(self, slug: str, name: str) -> str:
        msg = f"{slug}/{name}".encode()
        return hmac.new(self._signing_key, msg, hashlib.sha256).hexdigest()[:40]

    # ----- rules ------------------------------------------------------------------------

    def check_rules(self, slug: str, user: str) -> None:
        with self.lock:
            declined = self._declined.get(slug, set())
            if None in declined or user in declined:
                raise ApiError(403, RULES_MESSAGE.format(slug=slug))

    def decline_rules(self, slug: str, username: str | None = None) -> None:
        """Mark the competition's rules as not accepted (for one user, or everyone): 403."""
        with self.lock:
            self._declined.setdefault(slug, set()).add(username)

    def accept_rules(self, slug: str, username: str | None = None) -> None:
        """Undo decline_rules (username None: for everyone)."""
        with self.lock:
            if username is None:
                self._declined.pop(slug, None)
            else:
                self._declined.get(slug, set()).discard(username)

    # ----- submissions -----------------------------------------------------------------

    def submissions(self, slug: str) -> list[dict[str, Any]]:
        """The stored submissions of a competition (copies), oldest first."""
        with self.lock:
            return [dict(s) for s in self.load_subs(slug)]

    def _max_stored_ref(self) -> int:
        best = 0
        for path in self.root.glob(f"*/{PRIVATE_DIR}/{SUBMISSIONS_FILE}"):
            try:
                best = max([best, *(int(s["ref"]) for s in read_json(path))])
            except (OSError, ValueError, TypeError, KeyError) as exc:
                log.warning("ignoring unreadable %s: %s", path, exc)
        return best

    def load_subs(self, slug: str) -> list[dict[str, Any]]:
        with self.lock:
            if slug not in self._subs:
                path = self.private_dir(slug) / SUBMISSIONS_FILE
                subs: list[dict[str, Any]] = []
                if path.exists():
                    try:
                        subs = list(read_json(path))
                    except (OSError, ValueError, TypeError) as exc:
                        raise ApiError(500, f"submission store of '{slug}' is unreadable") from exc
                self._subs[slug] = subs
            return self._subs[slug]

    def save_subs(self, slug: str) -> None:
        with self.lock:
            write_json_atomic(self.private_dir(slug) / SUBMISSIONS_FILE, self._subs[slug])

    def today_count(self, slug: str, user: str) -> tuple[int, int]:
        today = datetime.now(UTC).date()
        mine = [s for s in self.load_subs(slug) if s["user"] == user]
        return sum(1 for s in mine if parse_iso(s["date"]).date() == today), len(mine)

    # ----- uploads (called by the HTTP handler) ----------------------------------------

    def store_upload(self, token: str, chunks: Iterator[bytes], content_range: str | None) -> None:
        with self.lock:
            up = self.uploads.get(token)
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
        with self.lock:
            up = self.uploads.get(token)
            if up is None:
                raise ApiError(404, "upload not found or expired: start the submission again")
            return up.done
