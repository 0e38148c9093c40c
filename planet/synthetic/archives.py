"""Reproducible archive writers shaped like Kaggle's downloads.

Every writer pins the metadata an archive would otherwise take from the clock or the user
(tar mtime/uid/gid/uname, zip member dates, the 7z header's last-write times), so the same
members always give byte-identical files, and writes through `planet.fileio.atomic_path`, so an
interrupted write never leaves a complete-looking file.
"""

from __future__ import annotations

import csv
import io
import lzma
import os
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import py7zr
from py7zr.helpers import ArchiveTimestamp

from planet.fileio import atomic_path

# 2017-04-20 00:00:00 UTC: around when the Planet competition opened. Every member of every
# archive gets this modification time.
FIXED_MTIME = 1492646400
FIXED_ZIP_DATE = (2017, 4, 20, 0, 0, 0)

# LZMA2 preset 0 for the 7z archives: it compresses 2-3x faster than 7-Zip's default and the
# decoder does the same literal-by-literal work whatever preset wrote the stream, so reading
# behaves like the real archive's (JPEG is already entropy-coded; measurements: bench/README.md).
DEFAULT_LZMA2_PRESET = 0

Member = tuple[str, bytes]


def _tar_info(name: str, size: int = 0, *, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mtime = FIXED_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if directory:
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
    else:
        info.mode = 0o644
        info.size = size
    return info


def write_tar(fileobj: io.IOBase, inner_dir: str, members: Iterable[Member]) -> int:
    """Write a tar to the open binary `fileobj`: a directory member `inner_dir/` first, then
    each `(name, data)` as `inner_dir/name` (the layout of Kaggle's Planet tars). Returns the
    number of file members."""
    inner_dir = inner_dir.strip("/")
    n = 0
    with tarfile.open(fileobj=fileobj, mode="w", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(_tar_info(inner_dir, directory=True))
        for name, data in members:
            tar.addfile(_tar_info(f"{inner_dir}/{name}", len(data)), io.BytesIO(data))
            n += 1
    return n


def write_7z_single(
    dest: str | os.PathLike[str],
    src: io.BufferedIOBase,
    arcname: str,
    *,
    preset: int = DEFAULT_LZMA2_PRESET,
) -> Path:
    """Write a 7z archive (LZMA2 at `preset`) holding one file `arcname` whose bytes are read
    from the open binary file `src` (from its current position to its end)."""
    dest = Path(dest)
    filters = [{"id": lzma.FILTER_LZMA2, "preset": preset}]
    with atomic_path(dest) as tmp, py7zr.SevenZipFile(tmp, "w", filters=filters) as archive:
        archive.writef(src, arcname)
        # py7zr stamps in-memory members with the current time; pin it.
        for info in archive.header.files_info.files:
            info["lastwritetime"] = ArchiveTimestamp.from_datetime(FIXED_MTIME)
            info["creationtime"] = info["lastaccesstime"] = info["lastwritetime"]
    return dest


def write_tar_7z(
    dest: str | os.PathLike[str],
    inner_dir: str,
    members: Iterable[Member],
    *,
    tar_name: str | None = None,
    preset: int = DEFAULT_LZMA2_PRESET,
) -> Path:
    """Write `dest` (e.g. `train-jpg.tar.7z`): a 7z archive holding one tar (by default named
    `dest`'s name less `.7z`) whose members are `inner_dir/` then `inner_dir/<name>` for each
    `(name, data)` of `members`. `members` may be a generator: the tar is spooled to an
    anonymous temporary file beside `dest`, so memory use stays small."""
    dest = Path(dest)
    if tar_name is None:
        tar_name = dest.name.removesuffix(".7z")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=dest.parent) as spool:
        write_tar(spool, inner_dir, members)
        spool.seek(0)
        return write_7z_single(dest, spool, tar_name, preset=preset)


def _zip_info(name: str, compress_type: int, *, directory: bool = False) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=FIXED_ZIP_DATE)
    info.create_system = 3  # unix, whatever the host
    if directory:
        info.external_attr = (0o40755 << 16) | 0x10
        info.compress_type = zipfile.ZIP_STORED
    else:
        info.external_attr = 0o100644 << 16
        info.compress_type = compress_type
    return info


def write_zip(
    dest: str | os.PathLike[str],
    members: Iterable[Member],
    *,
    inner_dir: str | None = None,
    compression: int = zipfile.ZIP_DEFLATED,
    compresslevel: int | None = None,
) -> Path:
    """Write the zip `dest` with each `(name, data)` of `members`; with `inner_dir`, a
    directory entry `inner_dir/` comes first and members are stored as `inner_dir/<name>`
    (the layout of Kaggle's `train.zip`)."""
    dest = Path(dest)
    prefix = f"{inner_dir.strip('/')}/" if inner_dir else ""
    with (
        atomic_path(dest) as tmp,
        zipfile.ZipFile(tmp, "w", compression=compression, compresslevel=compresslevel) as zf,
    ):
        if prefix:
            zf.writestr(_zip_info(prefix, compression, directory=True), b"")
        for name, data in members:
            zf.writestr(_zip_info(prefix + name, compression), data, compresslevel=compresslevel)
    return dest


def csv_bytes(header: Sequence[str], rows: Iterable[Sequence[object]]) -> bytes:
    """A CSV file's bytes, `\\n` line endings, like Kaggle's CSVs."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8")


def write_csv(
    dest: str | os.PathLike[str], header: Sequence[str], rows: Iterable[Sequence[object]]
) -> Path:
    """Write a plain CSV atomically."""
    dest = Path(dest)
    with atomic_path(dest) as tmp:
        tmp.write_bytes(csv_bytes(header, rows))
    return dest


def write_csv_zip(
    dest: str | os.PathLike[str],
    header: Sequence[str],
    rows: Iterable[Sequence[object]],
    *,
    table_name: str | None = None,
) -> Path:
    """Write `dest` (e.g. `train_v2.csv.zip`): a zip holding one CSV, by default named `dest`'s
    name less `.zip`."""
    dest = Path(dest)
    name = table_name or dest.name.removesuffix(".zip")
    return write_zip(dest, [(name, csv_bytes(header, rows))])
