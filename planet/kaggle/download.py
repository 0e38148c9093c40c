"""Verified, resumable downloads of competition files into a raw/ folder: download_file.

The bytes go to `<dest>/.partial/<name>` through the client's own resumable download_file
(Range requests); the file gets its final name once its size matches Kaggle's listing, and its
sha256 goes to the folder's manifest (planet.kaggle.raw_manifest).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from planet.constants import MANIFEST
from planet.fileio import file_lock, sha256_file
from planet.kaggle import client
from planet.kaggle.credentials import Credentials
from planet.kaggle.errors import KaggleTransientError
from planet.kaggle.listing import RemoteFile, as_remote, find_remote
from planet.kaggle.raw_manifest import (
    PARTIAL_DIR,
    entry_complete,
    read_manifest,
    update_manifest,
)

log = logging.getLogger(__name__)

RESUME_MARKER_SUFFIX = ".kaggle-partial"  # the client's marker beside a partial file
PROGRESS_INTERVAL_S = 0.5
DEFAULT_CLIENT_RETRIES = 3


@dataclass(frozen=True)
class FileRecord:
    """A complete, verified download."""

    name: str
    path: Path
    size: int
    sha256: str
    remote: str  # RemoteFile.identity it was downloaded as
    downloaded: bool  # False when an existing complete copy was kept

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path),
            "size": self.size,
            "sha256": self.sha256,
            "remote": self.remote,
            "downloaded": self.downloaded,
        }


def _check_name(name: str) -> None:
    if (
        not name
        or name in (".", "..", MANIFEST)
        or name.startswith(".")
        or "/" in name
        or "\\" in name
        or "\x00" in name
    ):
        raise ValueError(
            f"{name!r} is not a plain Kaggle file name (no folders, not hidden, not {MANIFEST})"
        )


class _ProgressPoller:
    """Report a growing partial file's size to progress(done, total) from a thread."""

    def __init__(self, path: Path, total: int, progress: Callable[[int, int], Any]) -> None:
        self.path, self.total, self.progress = path, total, progress
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kaggle-progress", daemon=True)

    def __enter__(self) -> _ProgressPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def _run(self) -> None:
        last = -1
        while not self._stop.wait(PROGRESS_INTERVAL_S):
            try:
                done = self.path.stat().st_size
            except OSError:
                continue
            if done != last:
                last = done
                _report(self.progress, done, self.total)


def _report(progress: Callable[[int, int], Any] | None, done: int, total: int) -> None:
    """Call progress(done, total); a failing progress sink never breaks a download."""
    if progress is None:
        return
    try:
        progress(done, total)
    except Exception as exc:
        log.debug("progress callback failed: %s", exc)


def _discard_partial(partial: Path) -> None:
    partial.unlink(missing_ok=True)
    Path(str(partial) + RESUME_MARKER_SUFFIX).unlink(missing_ok=True)


def _will_resume(api: Any, response: Any, partial: Path) -> bool:
    """Will the client's download_file resume `partial` (same test as the client uses)?"""
    headers = response.headers
    length = headers.get("Content-Length")
    try:
        return bool(
            api._can_resume_partial(
                str(partial),
                True,
                headers.get("Accept-Ranges") == "bytes",
                headers.get("ETag") or headers.get("Last-Modified"),
                int(length) if length else None,
            )
        )
    except Exception:  # a client without this helper: let it stream, nothing is lost
        return False


def _fetch(
    api: Any,
    creds: Credentials,
    slug: str,
    name: str,
    partial: Path,
    total: int,
    progress: Callable[[int, int], Any] | None,
    client_retries: int,
) -> None:
    """Download into `partial` with the client's own resumable download_file."""
    from kagglesdk.competitions.types.competition_api_service import ApiDownloadDataFileRequest

    request = ApiDownloadDataFileRequest()
    request.competition_name = slug
    request.file_name = name
    poller = _ProgressPoller(partial, total, progress) if progress else contextlib.nullcontext()
    with api.build_kaggle_client() as kaggle:
        response = client.call(
            lambda: kaggle.competitions.competition_api_client.download_data_file(request),
            creds,
            slug,
            name,
        )
        try:
            if _will_resume(api, response, partial):
                # The client is about to ask for the rest with a Range request and never read
                # this (whole-file) response: close it now rather than let it stream.
                response.close()
            with poller:
                client.call(
                    lambda: api.download_file(
                        response,
                        str(partial),
                        kaggle.http_client(),
                        quiet=True,
                        resume=True,
                        max_retries=client_retries,
                    ),
                    creds,
                    slug,
                    name,
                )
        except ValueError as exc:  # the client's size check: the body didn't match its header
            detail = str(exc)
        else:
            detail = None
        finally:
            response.close()
    if detail is not None:
        _discard_partial(partial)
        raise KaggleTransientError(
            f"download of {name!r} ({slug}) was incomplete ({detail}); discarded, retry",
            slug=slug,
            file_name=name,
        )


def download_file(
    slug: str,
    name: str,
    dest_dir: str | os.PathLike[str],
    *,
    endpoint: str | None = None,
    credentials: Credentials | None = None,
    progress: Callable[[int, int], Any] | None = None,
    remote: RemoteFile | Mapping[str, Any] | None = None,
    verify: bool = False,
    client_retries: int = DEFAULT_CLIENT_RETRIES,
) -> FileRecord:
    """Download one competition file into dest_dir, resuming a partial one; verified.

    The bytes go to dest_dir/.partial/<name> through the client's resumable download (an
    interrupted download resumes with a Range request, here or on a later call); the file
    gets its final name only once its size matches Kaggle's listing, and its sha256 is
    recorded in dest_dir/manifest.json. A file already recorded there complete (same size,
    same remote identity) is not downloaded again. `remote`: the listing entry, if the caller
    has it (saves a listing call). `progress(done, total)` is called with byte counts.
    `client_retries`: the client's own retries of a dropped connection (with a few seconds'
    sleep each) before a KaggleTransientError is raised.
    """
    _check_name(name)
    creds, endpoint = client.resolve(credentials, endpoint)
    dest = Path(dest_dir).expanduser()
    dest.mkdir(parents=True, exist_ok=True)
    partial_dir = dest / PARTIAL_DIR
    partial_dir.mkdir(exist_ok=True)
    with file_lock(partial_dir / f"{name}.lock"):
        rem = as_remote(remote) if remote is not None else find_remote(slug, name, endpoint, creds)
        if rem.name != name:
            raise ValueError(f"remote record is for {rem.name!r}, not {name!r}")
        final = dest / name
        entry = read_manifest(dest).get(name)
        if entry_complete(final, entry, rem, verify):
            assert entry is not None
            if final.stat().st_mtime_ns != entry.get("mtime_ns"):  # re-hashed fine: remember
                update_manifest(dest, name, {**entry, "mtime_ns": final.stat().st_mtime_ns})
            _report(progress, rem.size, rem.size)
            return FileRecord(name, final, rem.size, entry["sha256"], rem.identity, False)

        partial = partial_dir / name
        _fetch(
            client.api(creds, endpoint),
            creds,
            slug,
            name,
            partial,
            rem.size,
            progress,
            client_retries,
        )
        size = partial.stat().st_size
        if size != rem.size:
            _discard_partial(partial)
            raise KaggleTransientError(
                f"downloaded {name!r} ({slug}) has {size} bytes but Kaggle lists {rem.size}; "
                "the partial download was discarded, retry",
                slug=slug,
                file_name=name,
            )
        digest = sha256_file(partial)
        with open(partial, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(partial, final)
        Path(str(partial) + RESUME_MARKER_SUFFIX).unlink(missing_ok=True)
        update_manifest(
            dest,
            name,
            {
                "size": size,
                "sha256": digest,
                "remote": rem.identity,
                "creation_date": rem.creation_date,
                "mtime_ns": final.stat().st_mtime_ns,
                "downloaded_at": datetime.now(UTC).isoformat(timespec="seconds"),
            },
        )
        _report(progress, size, rem.size)
        log.info("downloaded %s/%s: %d bytes, sha256 %s", slug, name, size, digest)
        return FileRecord(name, final, size, digest, rem.identity, True)
