"""Extraction of a Kaggle image archive into parquet shards.

`extract_images` decodes a `.tar.7z` (a 7z holding one tar whose members are
`<inner_dir>/<name>.jpg`, usually after a directory member `<inner_dir>/`) or a `.zip`
(`train/cat.0.jpg`, ...) and streams the image members straight into parquet shards
(`planet.store.shards`) without writing the tar or the small files to disk: the decoder
(7-Zip or py7zr, `planet.extract.sevenzip`) produces the tar's bytes in ~1 MB chunks,
`TarStream`, a small incremental tar parser, cuts them into members and `ShardBuilder` checks
each member (the rules: `planet.extract.members`) and fills shards.

On any `ArchiveError` the output folder is emptied (no shard, no manifest); on any other
failure (a crash, Ctrl-C, a full disk) the complete shards and the progress file stay, so the
next run resumes.

Atomic, resumable, idempotent
-----------------------------
Each shard is written to a temporary name and renamed. After each shard, `.progress.json`
records the source (name, sha256, size), the config and the shards written so far. A rerun
decodes the stream from the start (LZMA cannot seek) but does not rewrite a shard already
recorded with the same rows, first/last image names and file size; shards from another
archive or config are deleted. `manifest.json` is written last; when it matches the archive's
sha256 and config and every shard file has its recorded size, `extract_images` returns it
without decoding anything (`images_complete` does that check alone). With `files_dir`, the
plain files are written to a hidden temporary folder beside it that is renamed to `files_dir`
just before the manifest is written, so `files_dir` never looks complete when it is not.

Parallelism is across archives. liblzma releases the GIL while it decodes (and 7-Zip runs in
its own process), so threads scale like processes: the orchestration layer can run one
`extract_images` per archive in threads (Prefect's default task runner); no process pool is
needed (measurements: bench/README.md). `extract_many` runs a list of jobs in a thread pool
for callers outside Prefect.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from planet.competitions import DataFile
from planet.constants import MANIFEST
from planet.extract.members import ArchiveError
from planet.extract.sevenzip import Decoder, find_7z, stream_tar_7z
from planet.extract.shard_builder import PROGRESS_FILE, Progress, ShardBuilder
from planet.extract.zip_stream import stream_zip
from planet.fileio import (
    TMP_PREFIX,
    files_intact,
    folder_lock,
    manifest_of,
    read_json,
    remove_stale_temps,
    sha256_file,
    write_json_atomic,
)
from planet.store.shards import (
    COMPRESSION,
    FORMAT,
    FORMAT_VERSION,
    IMAGE_COLUMNS,
    shard_files,
    shard_name,
    write_manifest,
)

__all__ = ["ExtractJob", "extract_images", "extract_many", "images_complete"]

DEFAULT_SHARD_SIZE = 2000
MAX_SHARD_SIZE = 100_000


# --------------------------------------------------------------------------------------------
# extract_images


def _config(shard_size: int) -> dict[str, Any]:
    return {"format_version": FORMAT_VERSION, "shard_size": shard_size}


def _files_complete(files_dir: Path, count: int) -> bool:
    if not files_dir.is_dir():
        return False
    with os.scandir(files_dir) as it:
        return sum(1 for e in it if e.name.endswith(".jpg")) == count


def images_complete(
    out_dir: str | os.PathLike[str],
    archive_sha256: str,
    *,
    shard_size: int = DEFAULT_SHARD_SIZE,
    files_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any] | None:
    """The manifest of `out_dir` if extraction from the archive with this sha256 and config is
    complete (manifest present and matching, every shard file of its recorded size, and, with
    `files_dir`, that folder holding `count` .jpg files); else None. Reads no shard."""
    out_dir = Path(out_dir)
    manifest = manifest_of(out_dir, FORMAT, FORMAT_VERSION)
    try:
        if (
            manifest is None
            or manifest.get("config") != _config(shard_size)
            or manifest["source"]["sha256"] != archive_sha256
            or not files_intact(out_dir, manifest["shards"])
        ):
            return None
        if files_dir is not None and not _files_complete(Path(files_dir), manifest["count"]):
            return None
    except (AttributeError, KeyError, TypeError):  # not a manifest of ours
        return None
    return manifest


def _resume_state(
    out_dir: Path, source: dict[str, Any], config: dict[str, Any], complete: dict[str, Any] | None
) -> dict[str, Any]:
    """What an earlier run left that can be reused; deletes everything else."""
    reusable: list[dict[str, Any]] = []
    if complete is not None:
        reusable = list(complete["shards"])
    else:
        (out_dir / MANIFEST).unlink(missing_ok=True)
        try:
            old = read_json(out_dir / PROGRESS_FILE)
        except (OSError, ValueError):
            old = None
        try:
            if old["source"]["sha256"] == source["sha256"] and old["config"] == config:
                for i, rec in enumerate(old["shards"]):
                    p = out_dir / shard_name(i)
                    if rec["name"] != p.name or not p.is_file() or p.stat().st_size != rec["bytes"]:
                        break
                    reusable.append(rec)
        except (KeyError, TypeError):  # no progress file, or not one of ours: start over
            reusable = []
    keep = {r["name"] for r in reusable}
    for p in shard_files(out_dir):
        if p.name not in keep:
            p.unlink()
    remove_stale_temps(out_dir)
    state = {"source": source, "config": config, "shards": reusable}
    write_json_atomic(out_dir / PROGRESS_FILE, state)
    return state


def _wipe(out_dir: Path) -> None:
    """Remove every output of an extraction (after a damaged or unsafe archive)."""
    (out_dir / MANIFEST).unlink(missing_ok=True)
    (out_dir / PROGRESS_FILE).unlink(missing_ok=True)
    for p in shard_files(out_dir):
        p.unlink(missing_ok=True)
    remove_stale_temps(out_dir)


def _start_files(files_dir: Path) -> Path:
    """A fresh hidden temporary folder beside `files_dir` (stale ones are removed)."""
    parent = files_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    for stale in parent.glob(f"{TMP_PREFIX}{files_dir.name}.*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{files_dir.name}.", dir=parent))


def _commit_files(tmp: Path, files_dir: Path) -> None:
    if files_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{files_dir.name}.", dir=files_dir.parent))
        files_dir.rename(old / "old")
        tmp.rename(files_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(files_dir)


def extract_images(
    archive: str | os.PathLike[str],
    data_file: DataFile,
    out_dir: str | os.PathLike[str],
    *,
    shard_size: int = DEFAULT_SHARD_SIZE,
    files_dir: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
    archive_sha256: str | None = None,
    decoder: Decoder = "auto",
) -> dict[str, Any]:
    """Stream the images of `archive` (a `.tar.7z` or `.zip` described by `data_file`) into
    parquet shards of `shard_size` images in `out_dir`, then write `manifest.json` and return
    it. With `files_dir`, also write `files_dir/<name>.jpg`. `progress(done, total)` is called
    after each shard (for a tar, `total` is an estimate from the bytes decoded so far).
    `archive_sha256`, when the caller already knows it, saves hashing the archive.
    `decoder` (for .tar.7z): "py7zr" decodes with liblzma in a helper thread; "7z" pipes the
    7-Zip program (its decoder is ~25% faster); "auto" uses 7-Zip when it is on PATH.

    Resumes an interrupted run; returns at once if the split is already complete. Raises
    `ArchiveError` for a damaged, unsafe or unexpected archive (leaving no output); an image
    whose bytes are not a JPEG is stored all the same and counted in `not_jpeg`."""
    archive = Path(archive)
    out_dir = Path(out_dir)
    if data_file.kind != "images" or data_file.format not in ("tar.7z", "zip"):
        raise ValueError(f"{data_file.name} is not an image archive (.tar.7z or .zip)")
    if not 1 <= shard_size <= MAX_SHARD_SIZE:
        raise ValueError(f"shard_size must be between 1 and {MAX_SHARD_SIZE}, got {shard_size}")
    if not archive.is_file():
        raise FileNotFoundError(f"{archive} does not exist; download {data_file.name} first")
    source = {
        "name": archive.name,
        "sha256": archive_sha256 or sha256_file(archive),
        "bytes": archive.stat().st_size,
    }
    config = _config(shard_size)
    files_path = Path(files_dir) if files_dir is not None else None
    exe = None if decoder == "py7zr" else find_7z()
    if decoder == "7z" and exe is None:
        raise ValueError("decoder='7z' needs 7-Zip (7z, 7zz or 7za) on PATH; install p7zip")
    if decoder not in ("auto", "py7zr", "7z"):
        raise ValueError(f"decoder must be 'auto', 'py7zr' or '7z', not {decoder!r}")
    with folder_lock(out_dir):
        complete = images_complete(out_dir, source["sha256"], shard_size=shard_size)
        if complete is not None and (
            files_path is None or _files_complete(files_path, complete["count"])
        ):
            if progress is not None:
                progress(complete["count"], complete["count"])
            return complete
        state = _resume_state(out_dir, source, config, complete)
        files_tmp = _start_files(files_path) if files_path is not None else None
        builder = ShardBuilder(archive, data_file, out_dir, shard_size, state, files_tmp, progress)
        try:
            if data_file.format == "tar.7z":
                stream_tar_7z(archive, builder, exe)
            else:
                stream_zip(archive, data_file, builder)
            shards = builder.finish()
            manifest = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "split": data_file.split,
                "source": {**source, "format": data_file.format},
                "config": config,
                "columns": IMAGE_COLUMNS,
                "compression": COMPRESSION,
                "count": builder.count,
                "image_bytes": builder.image_bytes,
                "shards": shards,
                "skipped": {"count": builder.skipped, "examples": builder.skipped_examples},
                "not_jpeg": {"count": builder.not_jpeg, "examples": builder.not_jpeg_examples},
            }
            if files_tmp is not None and files_path is not None:
                _commit_files(files_tmp, files_path)
                files_tmp = None
            write_manifest(out_dir, manifest)
        except ArchiveError:
            _wipe(out_dir)
            raise
        finally:
            if files_tmp is not None:
                shutil.rmtree(files_tmp, ignore_errors=True)
        (out_dir / PROGRESS_FILE).unlink(missing_ok=True)
    if progress is not None:
        progress(builder.count, builder.count)
    return manifest


# --------------------------------------------------------------------------------------------
# several archives at once


@dataclass(frozen=True)
class ExtractJob:
    """The arguments of one `extract_images` call."""

    archive: Path
    data_file: DataFile
    out_dir: Path
    shard_size: int = DEFAULT_SHARD_SIZE
    files_dir: Path | None = None
    archive_sha256: str | None = None
    decoder: Decoder = "auto"


def _run_job(job: ExtractJob) -> dict[str, Any]:
    return extract_images(
        job.archive,
        job.data_file,
        job.out_dir,
        shard_size=job.shard_size,
        files_dir=job.files_dir,
        archive_sha256=job.archive_sha256,
        decoder=job.decoder,
    )


def extract_many(jobs: Iterable[ExtractJob], workers: int = 2) -> list[dict[str, Any]]:
    """Run several extractions at once in a thread pool (threads scale like processes here:
    see the module docstring); returns their manifests in job order."""
    jobs = list(jobs)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(_run_job, jobs))
