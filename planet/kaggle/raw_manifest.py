"""The raw/ folder's manifest.json: what download_file recorded of each complete download.

File name -> size, sha256, Kaggle's identity of the file, mtime; `local_file_complete` and
`read_raw_records` answer from it, so a complete file is neither downloaded nor hashed again.
Writers take `planet.fileio.file_lock` (other threads and processes sharing the folder wait).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from planet.constants import MANIFEST
from planet.fileio import file_lock, read_json, sha256_file, write_json_atomic
from planet.kaggle.listing import RemoteFile, as_remote

PARTIAL_DIR = ".partial"  # in dest_dir: downloads in progress (+ the client's resume markers)


def read_manifest(dest_dir: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """dest_dir/manifest.json: file name -> size, sha256, remote identity, ... ({} if none)."""
    path = Path(dest_dir) / MANIFEST
    if not path.exists():
        return {}
    try:
        data = read_json(path)
    except ValueError:
        raise ValueError(
            f"{path} is not valid JSON: delete it to re-verify the downloads"
        ) from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} should map file names to records: delete it to re-verify")
    return data


def update_manifest(dest_dir: Path, name: str, entry: dict[str, Any]) -> None:
    with file_lock(dest_dir / PARTIAL_DIR / "manifest.lock"):
        manifest = read_manifest(dest_dir)
        manifest[name] = entry
        write_json_atomic(dest_dir / MANIFEST, manifest)


def entry_complete(
    path: Path, entry: Mapping[str, Any] | None, remote: RemoteFile, verify: bool
) -> bool:
    if not entry or entry.get("size") != remote.size or entry.get("remote") != remote.identity:
        return False
    try:
        st = path.stat()
    except OSError:
        return False
    if st.st_size != entry["size"]:
        return False
    if not verify and st.st_mtime_ns == entry.get("mtime_ns"):
        return True
    return sha256_file(path) == entry.get("sha256")


def local_file_complete(
    dest_dir: str | os.PathLike[str],
    remote: RemoteFile | Mapping[str, Any],
    *,
    verify: bool = False,
) -> bool:
    """Is `remote` already in dest_dir, complete, as recorded in the manifest?

    Checks size, Kaggle's identity of the file and the file's mtime; re-hashes (sha256) when
    the mtime changed or verify=True.
    """
    remote = as_remote(remote)
    dest = Path(dest_dir)
    entry = read_manifest(dest).get(remote.name)
    return entry_complete(dest / remote.name, entry, remote, verify)


def read_raw_records(
    dest_dir: str | os.PathLike[str], names: Iterable[str]
) -> dict[str, dict[str, Any]]:
    """name -> {name, size, sha256, path} for downloaded files (path relative to the
    competition folder, e.g. "raw/train.zip"), as `download_file` recorded them."""
    dest = Path(dest_dir)
    manifest = read_manifest(dest)
    out = {}
    for name in names:
        entry = manifest.get(name)
        path = dest / name
        if not entry or not path.is_file() or path.stat().st_size != entry.get("size"):
            raise FileNotFoundError(
                f"{path} has not been downloaded completely (no matching record in "
                f"{dest / MANIFEST}): run the fetch step first"
            )
        out[name] = {
            "name": name,
            "size": entry["size"],
            "sha256": entry["sha256"],
            "path": f"{dest.name}/{name}",
        }
    return out
