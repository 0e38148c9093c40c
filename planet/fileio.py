"""Atomic file writes, content hashes and JSON manifests shared by every stage.

Every stage writes to a temporary name in the destination folder and renames when complete,
so an interrupted run never leaves a file that looks complete.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from planet.constants import MANIFEST

CHUNK = 1 << 20
TMP_PREFIX = ".tmp-"
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates 0600 files; completed outputs get the usual permissions (0666 & ~umask).
FILE_MODE = 0o666 & ~_current_umask()


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; rename it to `dest` only if the block succeeds.

    On any exception (including KeyboardInterrupt) the temporary file is removed. A full disk
    (ENOSPC, EDQUOT) raises an OSError of the same errno naming `dest` and what to do (a
    write's own OSError names no file).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{dest.name}.", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, FILE_MODE)
        os.replace(tmp_path, dest)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        if exc.errno in _DISK_FULL and exc.filename is None:
            raise OSError(
                exc.errno,
                f"{exc.strerror or os.strerror(exc.errno)}: free some space on that disk and run "
                "the stage again",
                str(dest),
            ) from exc
        raise
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_bytes_atomic(dest: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
    return Path(dest)


def write_json_atomic(dest: str | os.PathLike[str], obj: Any) -> Path:
    data = (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()
    return write_bytes_atomic(dest, data)


def read_json(path: str | os.PathLike[str]) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_json(obj: Any) -> str:
    """A stable hash of a JSON-serialisable object (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def manifest_of(folder: str | os.PathLike[str], fmt: str, version: int) -> dict[str, Any] | None:
    """`folder`'s manifest.json when it is a `fmt` manifest of format `version`; None when it is
    missing, unreadable or another format's (the first step of every stage's complete())."""
    try:
        manifest = read_json(Path(folder) / MANIFEST)
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict):
        return None
    if manifest.get("format") != fmt or manifest.get("format_version") != version:
        return None
    return manifest


def files_intact(folder: str | os.PathLike[str], records: Any) -> bool:
    """Every record's file (`name`) is in `folder` with its recorded size (`bytes`)."""
    for rec in records:
        path = Path(folder) / rec["name"]
        if not path.is_file() or path.stat().st_size != rec["bytes"]:
            return False
    return True


def remove_stale_temps(folder: str | os.PathLike[str]) -> int:
    """Delete leftovers of interrupted atomic writes in `folder`; returns how many."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    n = 0
    for p in folder.glob(f"{TMP_PREFIX}*"):
        if p.is_file():
            p.unlink(missing_ok=True)
            n += 1
    return n


LOCK_FILE = ".lock"
_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()


@contextlib.contextmanager
def file_lock(
    lock_file: str | os.PathLike[str], *, wait: bool = True, busy: str | None = None
) -> Iterator[None]:
    """An exclusive lock held through `lock_file` for the duration of the block: `flock` keeps
    other processes out, a lock per path other threads of this one.

    With `wait`, block until it is free; without, fail at once with a RuntimeError saying
    `busy` (or naming the file) when someone holds it."""
    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    key = str(lock_file.resolve())
    with _thread_locks_guard:
        in_process = _thread_locks.setdefault(key, threading.Lock())
    message = busy or f"{lock_file} is held by another writer; wait for it to finish"
    if not in_process.acquire(blocking=wait):
        raise RuntimeError(message)
    try:
        with open(lock_file, "a+b") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError as exc:
                raise RuntimeError(message) from exc
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    finally:
        in_process.release()


def folder_lock(
    folder: str | os.PathLike[str], *, wait: bool = False
) -> contextlib.AbstractContextManager[None]:
    """An exclusive lock on `folder` (a `.lock` file in it): without `wait`, fail at once with
    a RuntimeError naming the folder if another writer holds it (two writers of one output);
    with `wait`, block until it is free (short read-modify-write sections such as a shared
    manifest)."""
    folder = Path(folder)
    return file_lock(
        folder / LOCK_FILE,
        wait=wait,
        busy=f"another process is writing to {folder}; wait for it to finish",
    )
