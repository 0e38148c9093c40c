"""Streaming extraction: Kaggle image archives into parquet shards, zipped CSVs into tables/.

Images
------
`extract_images` decodes a `.tar.7z` (a 7z holding one tar whose members are
`<inner_dir>/<name>.jpg`, usually after a directory member `<inner_dir>/`) or a `.zip`
(`train/cat.0.jpg`, ...) and streams the image members straight into parquet shards
(`planet.shards`) without writing the tar or the small files to disk: the decoder (7-Zip or
py7zr, see below) produces the tar's bytes in ~1 MB chunks, `_TarStream`, a small incremental
tar parser, cuts them into members and `_ShardBuilder` checks each member and fills shards.

Member rules (every member is checked, whatever its name):

- unsafe members fail with `ArchiveError` naming the archive and the member: absolute paths,
  `..` components, symbolic links, hard links, devices, FIFOs, sockets and other special
  types, sparse files, encrypted zip members;
- images are regular files named `<inner_dir>/<stem>.jpg` (or `.jpeg`, any case); the image
  name is the stem. A `.jpg` anywhere else (a sub-folder, another top folder) fails: the
  archive is not laid out like Kaggle's, so it is probably the wrong file. With a
  `name_prefix` (Planet), every stem must start with it. The bytes are stored as they are,
  even when they do not start with the JPEG marker (`FF D8`): one bad image is not a bad
  archive. The resize stage, which decodes every image, leaves a train image it cannot decode
  out and reports it, and fails naming a test one (`planet.resize`). Extraction counts such
  images in the manifest (`not_jpeg`, with the first 20 image names) as an early warning;
- skipped and counted in the manifest (`skipped`, with the first 20 names): directories, files that are not `.jpg`
  (`.DS_Store`, `Thumbs.db`, a README), hidden files (names starting with `.`, including
  macOS `._*` resource forks) and anything under `__MACOSX/`;
- an archive with no image, or with two images of the same name, fails.

A corrupt or truncated archive fails with `ArchiveError` naming the file and saying to
re-download it. On any `ArchiveError` the output folder is emptied (no shard, no manifest);
on any other failure (a crash, Ctrl-C, a full disk) the complete shards and the progress file
stay, so the next run resumes.

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

Decoding and speed
------------------
A `.tar.7z` is decoded by the 7-Zip program when one is on PATH (`7z`, `7zz` or `7za`; run
as `7z x -so`, its output piped into this process) or else by py7zr (liblzma) in a helper
thread; `decoder=` forces one. Either way the tar and the small files never touch the disk.
Both give byte-identical shards; the archive header is always read by py7zr.

Measured on the project's 2-core machine (shared with other jobs: best of 3-5 runs), with
4,000 Planet-like 256x256 JPEGs (55.8 MB of JPEG, a 53 MB `.tar.7z`, `bench/extract.py`):

- LZMA2 decoding is the limit and cannot be split: one `.tar.7z` is one LZMA2 stream, decoded
  on one core. 7-Zip decodes it in ~3.1 s, liblzma (py7zr) in ~3.9 s.
- this module: 3.5 s with 7-Zip (~1,130 images/s, 15.7 MB/s of JPEG), 4.0 s with py7zr
  (tar parsing, parquet writing and hashing the archive overlap the decoding on the second
  core; in one thread py7zr took 4.8 s);
- `7z x -so | tar x` took 3.4 s when creating small files was cheap (then the ratio is
  ~0.95-1.07: both wait on the same decoder), and 6-10 s when the file system was busy (tar
  spent 3.5-4.9 s of kernel time on 4,000 files; ratio 1.6-2.5).
- at Planet's size (40,000 images, 553 MB of JPEG, a 525 MB `.tar.7z`): this module 35.4 s
  with 7-Zip (1,131 images/s), 38.7 s with py7zr; `7z x -so | tar x` 41.2 s (ratio 1.16).

Parallelism is across archives. Two archives, 2 cores, py7zr decoder: sequential 7.7 s, two
threads 4.3 s (1.8x), two processes 4.1 s (1.9x); 7-Zip decoder: 6.3 s, 3.6 s (1.8x),
3.8 s. liblzma releases the GIL while it decodes (and 7-Zip runs in its own process), so
threads scale like processes: the orchestration layer can run one `extract_images` per
archive in threads (Prefect's default task runner); no process pool is needed.
`extract_many` runs a list of jobs in a thread pool for callers outside Prefect.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import lzma
import os
import queue
import re
import shutil
import stat
import subprocess
import tarfile
import tempfile
import threading
import zipfile
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import py7zr
from py7zr.io import Py7zIO, WriterFactory

from planet import hooks
from planet.competitions import DataFile
from planet.fileio import (
    CHUNK,
    TMP_PREFIX,
    atomic_path,
    folder_lock,
    read_json,
    remove_stale_temps,
    sha256_file,
    write_json_atomic,
)
from planet.layout import MANIFEST
from planet.store.shards import (
    COMPRESSION,
    FORMAT,
    FORMAT_VERSION,
    IMAGE_COLUMNS,
    image_table,
    shard_files,
    shard_name,
    write_manifest,
    write_shard,
)

__all__ = [
    "FORMAT_VERSION",
    "ArchiveError",
    "ExtractJob",
    "extract_images",
    "extract_many",
    "extract_table",
    "images_complete",
    "table_complete",
    "table_record",
]

Progress = Callable[[int, int | None], None]

PROGRESS_FILE = ".progress.json"
DEFAULT_SHARD_SIZE = 2000
MAX_SHARD_SIZE = 100_000
MAX_IMAGE_BYTES = 64 << 20  # one image member larger than this is refused (zip/tar bombs)
MAX_META_BYTES = 1 << 20  # GNU long names and pax headers
MAX_TABLE_BYTES = 2 << 30  # a CSV larger than this is refused
IMAGE_EXTENSIONS = (".jpg", ".jpeg")
JPEG_MAGIC = b"\xff\xd8"
TABLES_FORMAT = "planet-tables"
_BLOCK = 512
_ZERO_BLOCK = bytes(_BLOCK)
_REDOWNLOAD = "re-download it"


class ArchiveError(Exception):
    """An archive is corrupt, truncated, unsafe or not laid out as expected."""


# --------------------------------------------------------------------------------------------
# member rules


def _member_error(archive: Path, member: str, what: str) -> ArchiveError:
    return ArchiveError(f"{archive}: member {member!r} {what}")


def _safe_parts(archive: Path, member: str) -> list[str]:
    """The path components of `member`, refusing absolute and `..` paths."""
    if not member or "\x00" in member:
        raise _member_error(archive, member, "has an empty or invalid name; " + _REDOWNLOAD)
    norm = member.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        raise _member_error(
            archive,
            member,
            "has an absolute path; refusing to extract an unsafe archive: " + _REDOWNLOAD,
        )
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _member_error(
            archive,
            member,
            "has a '..' path component; refusing to extract an unsafe archive: " + _REDOWNLOAD,
        )
    return parts


_KIND_WORDS = {
    "symlink": "is a symbolic link",
    "hardlink": "is a hard link",
    "device": "is a device file",
    "fifo": "is a FIFO",
    "socket": "is a socket",
    "sparse": "is a sparse file",
    "other": "is a special tar member",
}


def _classify(archive: Path, data_file: DataFile, member: str, kind: str) -> str | None:
    """The image name of `member`, None for a member to skip; `ArchiveError` if it is unsafe
    or a misplaced image. `kind`: file, dir, symlink, hardlink, device, fifo, socket, ..."""
    parts = _safe_parts(archive, member)
    if kind != "file" and kind != "dir":
        raise _member_error(
            archive,
            member,
            f"{_KIND_WORDS.get(kind, 'is not a regular file')}; image archives hold only "
            "regular files, so this one is unsafe or not Kaggle's original: refusing to extract "
            "it; " + _REDOWNLOAD,
        )
    if kind == "dir" or not parts:
        return None
    base = parts[-1]
    if parts[0] == "__MACOSX" or base.startswith("."):
        return None
    stem, ext = os.path.splitext(base)
    if ext.lower() not in IMAGE_EXTENSIONS:
        return None
    expected = data_file.inner_dir.strip("/").split("/") if data_file.inner_dir else []
    where = f"{'/'.join(expected)}/" if expected else "the top of the archive"
    if parts[:-1] != expected:
        raise _member_error(
            archive,
            member,
            f"is an image outside {where}: {data_file.name} should hold its images as "
            f"{'/'.join([*expected, '<name>.jpg'])}; is this the right file?",
        )
    if data_file.name_prefix and not stem.startswith(data_file.name_prefix):
        raise _member_error(
            archive,
            member,
            f"does not start with {data_file.name_prefix!r} like every image of "
            f"{data_file.name}; is this the right file?",
        )
    return stem


# --------------------------------------------------------------------------------------------
# shard builder: images in archive order -> shards


class _ShardBuilder:
    """Receives members in archive order, groups images into shards and writes the shards
    not already complete from an earlier run."""

    def __init__(
        self,
        archive: Path,
        data_file: DataFile,
        out_dir: Path,
        shard_size: int,
        state: dict[str, Any],
        files_tmp: Path | None,
        progress: Progress | None,
    ) -> None:
        self.archive = archive
        self.data_file = data_file
        self.out_dir = out_dir
        self.shard_size = shard_size
        self.state = state  # the progress file's content; state["shards"] = reusable records
        self.reusable: list[dict[str, Any]] = list(state["shards"])
        self.files_tmp = files_tmp
        self.progress = progress
        self.estimate_total: Callable[[int], int | None] = lambda count: None
        self.seen: set[str] = set()
        self.count = 0
        self.image_bytes = 0
        self.skipped = 0
        self.skipped_examples: list[str] = []  # the first 20
        self.not_jpeg = 0  # images whose bytes do not start with FF D8 (stored all the same)
        self.not_jpeg_examples: list[str] = []  # the first 20 names
        self.shards: list[dict[str, Any]] = []
        self._names: list[str] = []
        self._jpegs: list[bytes] = []
        self._stem: str | None = None

    def begin(self, member: str, kind: str, size: int) -> bool:
        """A member's header; True if its bytes are wanted (then `end(data)` follows)."""
        stem = _classify(self.archive, self.data_file, member, kind)
        if stem is None:
            if kind == "file":
                self.skipped += 1
                if len(self.skipped_examples) < 20:
                    self.skipped_examples.append(member)
            return False
        if size > MAX_IMAGE_BYTES:
            raise _member_error(
                self.archive, member, f"is {size:,} bytes, too large for an image; refusing it"
            )
        if stem in self.seen:
            raise _member_error(
                self.archive,
                member,
                f"repeats the image name {stem!r}: two images of the same name; " + _REDOWNLOAD,
            )
        self.seen.add(stem)
        self._stem = stem
        return True

    def end(self, data: bytes) -> None:
        """The bytes of the member announced by the last `begin`, stored as they are: one
        that is not a JPEG is only counted (the resize stage decides what becomes of it)."""
        assert self._stem is not None
        if not data.startswith(JPEG_MAGIC):
            self.not_jpeg += 1
            if len(self.not_jpeg_examples) < 20:
                self.not_jpeg_examples.append(self._stem)
        if self.files_tmp is not None:
            with open(self.files_tmp / f"{self._stem}.jpg", "wb") as fh:
                fh.write(data)
        self._names.append(self._stem)
        self._jpegs.append(data)
        self.count += 1
        self.image_bytes += len(data)
        self._stem = None
        if len(self._names) >= self.shard_size:
            self._flush()

    def _flush(self) -> None:
        index = len(self.shards)
        names, jpegs = self._names, self._jpegs
        self._names, self._jpegs = [], []
        path = self.out_dir / shard_name(index)
        old = self.reusable[index] if index < len(self.reusable) else None
        if (
            old is not None
            and old["name"] == path.name
            and old["rows"] == len(names)
            and old.get("first") == names[0]
            and old.get("last") == names[-1]
            and path.is_file()
            and path.stat().st_size == old["bytes"]
        ):
            self.shards.append(old)  # complete from an earlier run: not rewritten
        else:
            del self.reusable[index:]  # a mismatch: nothing from here on can be reused
            self.shards.append(write_shard(path, image_table(names, jpegs)))
            self.state["shards"] = list(self.shards)
            write_json_atomic(self.out_dir / PROGRESS_FILE, self.state)
            hooks.emit("extract.shard", split=self.data_file.split, index=index, name=path.name)
        if self.progress is not None:
            self.progress(self.count, self.estimate_total(self.count))

    def finish(self) -> list[dict[str, Any]]:
        """Write the last shard; check there was at least one image."""
        if self._names:
            self._flush()
        if self.count == 0:
            expected = self.data_file.inner_dir or "its top level"
            raise ArchiveError(
                f"{self.archive}: no images found (expected .jpg files under {expected}/); "
                f"the archive is empty or not {self.data_file.name}: " + _REDOWNLOAD
            )
        keep = {s["name"] for s in self.shards}
        for path in shard_files(self.out_dir):
            if path.name not in keep:
                path.unlink()
        return self.shards


# --------------------------------------------------------------------------------------------
# .tar.7z: py7zr pushes decoded tar bytes into an incremental tar parser


_TAR_KINDS: dict[bytes, str] = {
    tarfile.REGTYPE: "file",
    tarfile.AREGTYPE: "file",
    tarfile.CONTTYPE: "file",
    tarfile.DIRTYPE: "dir",
    tarfile.SYMTYPE: "symlink",
    tarfile.LNKTYPE: "hardlink",
    tarfile.CHRTYPE: "device",
    tarfile.BLKTYPE: "device",
    tarfile.FIFOTYPE: "fifo",
    tarfile.GNUTYPE_SPARSE: "sparse",
}


def _number(field: bytes) -> int:
    """A tar number field: octal text, or GNU base-256 (first byte 0x80 or 0xff)."""
    if field[0] in (0x80, 0xFF):
        n = int.from_bytes(field[1:], "big")
        return n - 256 ** (len(field) - 1) if field[0] == 0xFF else n
    text = field.split(b"\x00", 1)[0].strip()
    return int(text, 8) if text else 0


def _text(field: bytes) -> str:
    return field.split(b"\x00", 1)[0].decode("utf-8", "surrogateescape")


def _parse_header(block: bytes) -> tuple[str, int, bytes]:
    """(name, size, type) of a 512-byte tar header, checksum verified; `ValueError` if it is
    not a valid header. The same rules as `tarfile.TarInfo.frombuf`, about 10x faster."""
    stored = _number(block[148:156])
    unsigned = 256 + sum(block[:148]) + sum(block[156:])
    # (old Sun/NeXT tars summed signed chars: tarfile.calc_chksums gives both variants)
    if stored != unsigned and stored not in tarfile.calc_chksums(block):
        raise ValueError("bad checksum")
    name = _text(block[0:100])
    size = _number(block[124:136])
    typ = block[156:157]
    if typ == tarfile.AREGTYPE and name.endswith("/"):
        typ = tarfile.DIRTYPE
    if typ == tarfile.DIRTYPE:
        name = name.rstrip("/")
    prefix = _text(block[345:500])
    if prefix and typ not in tarfile.GNU_TYPES:
        name = f"{prefix}/{name}"
    return name, size, typ


def _parse_pax(data: bytes) -> dict[str, str]:
    """The records of a pax extended header: `<len> <key>=<value>\\n` ..."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        space = data.find(b" ", pos)
        if space < 0:
            raise ValueError("pax record without a length")
        length = int(data[pos:space])
        record = data[space + 1 : pos + length]
        if length <= 0 or not record.endswith(b"\n") or b"=" not in record:
            raise ValueError("malformed pax record")
        key, _, value = record[:-1].partition(b"=")
        out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


class _TarStream:
    """An incremental tar parser fed by `write()`: announces each member to `builder.begin`
    and delivers wanted member bytes to `builder.end`, holding at most one member in memory.
    Understands ustar, GNU long names/links and pax headers."""

    def __init__(self, archive: Path, builder: _ShardBuilder, tar_size: int) -> None:
        self.archive = archive
        self.builder = builder
        self.tar_size = tar_size
        self._buf = bytearray()
        self._pos = 0  # parse position in _buf
        self._base = 0  # tar offset of _buf[0]
        self._written = 0
        self._skip = 0  # bytes still to discard (data not wanted, padding)
        self._want: tuple[int, Callable[[bytes], None]] | None = None
        self._ended = False
        self._long_name: str | None = None
        self._pax: dict[str, str] = {}

    def write(self, s: bytes | bytearray) -> int:
        """Feed the next decoded bytes of the tar."""
        self._written += len(s)
        if self._ended:
            return len(s)
        if self._pos:
            del self._buf[: self._pos]
            self._base += self._pos
            self._pos = 0
        self._buf += s
        self._parse()
        return len(s)

    def size(self) -> int:
        """Bytes fed so far."""
        return self._written

    # parsing
    @property
    def offset(self) -> int:
        """Bytes of the tar parsed so far."""
        return self._base + self._pos

    def _parse(self) -> None:
        buf = self._buf
        while not self._ended:
            avail = len(buf) - self._pos
            if self._skip:
                step = min(self._skip, avail)
                self._pos += step
                self._skip -= step
                if self._skip:
                    return
                continue
            if self._want is not None:
                size, handler = self._want
                if avail < size:
                    return
                data = bytes(buf[self._pos : self._pos + size])
                self._pos += size
                self._skip = -size % _BLOCK
                self._want = None
                handler(data)
                continue
            if avail < _BLOCK:
                return
            block = bytes(buf[self._pos : self._pos + _BLOCK])
            self._pos += _BLOCK
            self._header(block)

    def _damaged(self, what: str) -> ArchiveError:
        return ArchiveError(
            f"{self.archive}: the tar inside is damaged ({what}); the download is corrupt or "
            "truncated: " + _REDOWNLOAD
        )

    def _header(self, block: bytes) -> None:
        start = self.offset - _BLOCK
        if block == _ZERO_BLOCK:
            self._ended = True  # end-of-archive marker; the rest is padding
            return
        try:
            header_name, size, typ = _parse_header(block)
        except ValueError as exc:
            raise self._damaged(f"bad member header at byte {start:,}: {exc}") from exc
        padded_skip = -size % _BLOCK
        if typ in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK):
            self._expect_meta(size, self._long_name_data if typ == b"L" else _ignore)
            return
        if typ in (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE):
            self._expect_meta(size, self._pax_data)
            return
        if typ == tarfile.XGLTYPE:  # global pax header: nothing we use
            self._expect_meta(size, _ignore)
            return
        name = self._pax.get("path") or self._long_name or header_name
        if "size" in self._pax:
            try:
                size = int(self._pax["size"])
            except ValueError as exc:
                raise self._damaged(f"bad pax size for {name!r}") from exc
            padded_skip = -size % _BLOCK
        self._long_name, self._pax = None, {}
        if size < 0:
            raise self._damaged(f"negative size for {name!r}")
        kind = _TAR_KINDS.get(typ, "other")
        if self.builder.begin(name, kind, size):
            self._want = (size, self.builder.end)
        else:
            self._skip = size + padded_skip

    def _expect_meta(self, size: int, handler: Callable[[bytes], None]) -> None:
        if size > MAX_META_BYTES:
            raise self._damaged(f"a {size:,}-byte extended header")
        self._want = (size, handler)

    def _long_name_data(self, data: bytes) -> None:
        self._long_name = data.split(b"\x00", 1)[0].decode("utf-8", "surrogateescape")

    def _pax_data(self, data: bytes) -> None:
        try:
            self._pax = _parse_pax(data)
        except ValueError as exc:
            raise self._damaged(f"bad pax header: {exc}") from exc

    def finish(self) -> None:
        """The stream ended: check it did not stop inside a member."""
        if self._ended:
            return
        leftover = len(self._buf) - self._pos
        if self._want is not None or self._skip or leftover:
            raise self._damaged(f"it ends inside a member at byte {self.offset + leftover:,}")


def _ignore(data: bytes) -> None:
    return None


class _CallbackIO(Py7zIO):
    """A py7zr output that hands every decoded chunk to `put`."""

    def __init__(self, put: Callable[[bytes | bytearray], None]) -> None:
        self.put = put
        self._size = 0

    def write(self, s: bytes | bytearray) -> int:
        self._size += len(s)
        self.put(s)
        return len(s)

    def read(self, size: int | None = None) -> bytes:
        return b""

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0

    def flush(self) -> None:
        return None

    def size(self) -> int:
        return self._size


class _CallbackFactory(WriterFactory):
    def __init__(self, put: Callable[[bytes | bytearray], None]) -> None:
        self.put = put

    def create(self, filename: str) -> Py7zIO:
        return _CallbackIO(self.put)


class _Cancelled(Exception):
    """Stops a producer thread whose consumer has gone."""


class _ProducerError(Exception):
    """The producer of `_pump` failed; the original exception is `__cause__`."""


def _pump(
    produce: Callable[[Callable[[bytes | bytearray], None]], None],
    consume: Callable[[bytes | bytearray], object],
    name: str,
    depth: int = 8,
) -> None:
    """Run `produce(put)` in a thread while this thread `consume`s each chunk it puts, through
    a queue of `depth` chunks. The producer's exception is raised here as `_ProducerError`
    (from it); the consumer's as is, after the producer is stopped (at its next `put`)."""
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    cancel = threading.Event()

    def put(item: Any) -> None:
        while True:
            if cancel.is_set():
                raise _Cancelled
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def run() -> None:
        try:
            produce(put)
            put((None,))
        except _Cancelled:
            pass
        except BaseException as exc:
            with contextlib.suppress(_Cancelled):
                put((exc,))

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if isinstance(item, tuple):  # the end: (None,) or (exception,)
                if item[0] is not None:
                    raise _ProducerError(str(item[0])) from item[0]
                return
            consume(item)
    finally:
        cancel.set()
        thread.join()


def _corrupt(archive: Path, exc: BaseException, kind: str) -> ArchiveError:
    detail = str(exc) or type(exc).__name__
    return ArchiveError(
        f"{archive}: not a readable {kind} archive ({type(exc).__name__}: {detail}); "
        f"the file is corrupt or truncated: {_REDOWNLOAD}"
    )


SEVEN_ZIP_NAMES = ("7z", "7zz", "7za")
Decoder = Literal["auto", "py7zr", "7z"]


def find_7z() -> str | None:
    """The path of a 7-Zip command-line program (`7z`, `7zz` or `7za`) on PATH, if any."""
    for name in SEVEN_ZIP_NAMES:
        if exe := shutil.which(name):
            return exe
    return None


def _decode_with_7z(exe: str, archive: Path, stream: _TarStream, expected: int) -> None:
    """Pipe `7z x -so archive` (which holds exactly one file: the tar) into `stream`."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [exe, "x", "-so", "-bd", "-y", "--", str(archive)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
        )
        assert proc.stdout is not None
        try:
            while chunk := proc.stdout.read(CHUNK):
                stream.write(chunk)
        except BaseException:
            proc.kill()
            raise
        finally:
            proc.stdout.close()
            rc = proc.wait()
        # exit 1 is a warning (e.g. data after the end of the archive): the tar itself was
        # decoded with its CRC checked, so accept it when every byte came out; 2+ is an error
        if rc != 0 and not (rc == 1 and stream.size() == expected):
            err.seek(0)
            lines = err.read().decode("utf-8", "replace").split("\n")
            detail = " / ".join(ln.strip() for ln in lines if ln.strip())[-300:]
            raise ArchiveError(
                f"{archive}: 7z could not decode it (exit {rc}: {detail}); the file is corrupt "
                f"or truncated: {_REDOWNLOAD}"
            )
    if stream.size() != expected:
        raise ArchiveError(
            f"{archive}: decoded {stream.size():,} bytes of a {expected:,}-byte tar; the file "
            f"is corrupt or truncated: {_REDOWNLOAD}"
        )


def _stream_tar_7z(archive: Path, builder: _ShardBuilder, exe: str | None) -> None:
    """Decode the tar inside `archive` with py7zr (in this thread), or with the 7-Zip program
    `exe` (a child process), feeding `_TarStream`."""
    with open(archive, "rb") as fh:  # a file object: py7zr does not start its own threads
        try:
            z = py7zr.SevenZipFile(fh, mode="r")
            infos = z.list()
            encrypted = z.password_protected
        except (OSError, MemoryError):
            raise
        except Exception as exc:  # py7zr raises many types for a damaged header
            raise _corrupt(archive, exc, "7z") from exc
        with z:
            for info in infos:
                _safe_parts(archive, info.filename)
            files = [i for i in infos if not i.is_directory]
            tars = [i for i in files if i.filename.lower().endswith(".tar")]
            if len(files) != 1 or len(tars) != 1:
                listed = ", ".join(repr(i.filename) for i in files[:5]) or "nothing"
                raise ArchiveError(
                    f"{archive}: expected a 7z holding exactly one .tar, found {listed}; "
                    "is this the right file?"
                )
            tar = tars[0]
            if encrypted:
                raise ArchiveError(f"{archive}: is encrypted; Kaggle's archives are not")
            stream = _TarStream(archive, builder, tar.uncompressed)
            if tar.uncompressed:
                builder.estimate_total = lambda count: max(
                    count, round(count * stream.tar_size / max(stream.offset, 1))
                )
            if exe is None:
                # py7zr decodes in a thread (liblzma releases the GIL) while this thread
                # parses the tar and writes shards: ~20% faster with a free second core.
                try:
                    _pump(
                        lambda put: z.extract(
                            targets=[tar.filename], factory=_CallbackFactory(put)
                        ),
                        stream.write,
                        name=f"py7zr {archive.name}",
                    )
                except _ProducerError as err:
                    cause = err.__cause__
                    if isinstance(cause, (OSError, MemoryError, ArchiveError)):
                        raise cause from None
                    raise _corrupt(archive, cause or err, "7z") from cause
    if exe is not None:
        _decode_with_7z(exe, archive, stream, tar.uncompressed)
    stream.finish()


# --------------------------------------------------------------------------------------------
# .zip


def _zip_kind(info: zipfile.ZipInfo) -> str:
    if info.is_dir():
        return "dir"
    mode = info.external_attr >> 16
    if info.create_system == 3 and mode:  # unix permissions recorded
        if stat.S_ISLNK(mode):
            return "symlink"
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            return "device"
        if stat.S_ISFIFO(mode):
            return "fifo"
        if stat.S_ISSOCK(mode):
            return "socket"
    return "file"


_ZIP_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, lzma.LZMAError, ValueError)


def _open_zip(archive: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(archive)
    except _ZIP_READ_ERRORS as exc:
        raise _corrupt(archive, exc, "zip") from exc


def _stream_zip(archive: Path, data_file: DataFile, builder: _ShardBuilder) -> None:
    with _open_zip(archive) as zf:
        infos = zf.infolist()
        total = 0
        for info in infos:  # check every member before writing anything
            if _classify(archive, data_file, info.filename, _zip_kind(info)) is not None:
                total += 1
        builder.estimate_total = lambda count: total
        for info in infos:
            if not builder.begin(info.filename, _zip_kind(info), info.file_size):
                continue
            if info.flag_bits & 0x1:
                raise _member_error(archive, info.filename, "is encrypted; refusing it")
            try:
                data = zf.read(info)
            except NotImplementedError as exc:
                raise _member_error(archive, info.filename, f"cannot be read: {exc}") from exc
            except _ZIP_READ_ERRORS as exc:
                raise ArchiveError(
                    f"{archive}: member {info.filename!r} is damaged ({exc}); the file is "
                    f"corrupt or truncated: {_REDOWNLOAD}"
                ) from exc
            builder.end(data)


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
    path = out_dir / MANIFEST
    try:
        manifest = read_json(path)
    except (OSError, ValueError):
        return None
    try:
        if (
            manifest.get("format") != FORMAT
            or manifest.get("format_version") != FORMAT_VERSION
            or manifest.get("config") != _config(shard_size)
            or manifest["source"]["sha256"] != archive_sha256
        ):
            return None
        for rec in manifest["shards"]:
            p = out_dir / rec["name"]
            if not p.is_file() or p.stat().st_size != rec["bytes"]:
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
        builder = _ShardBuilder(archive, data_file, out_dir, shard_size, state, files_tmp, progress)
        try:
            if data_file.format == "tar.7z":
                _stream_tar_7z(archive, builder, exe)
            else:
                _stream_zip(archive, data_file, builder)
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


# --------------------------------------------------------------------------------------------
# tables


def _count_rows(path: Path, label: str) -> int:
    """Data rows of a CSV (records after the header; blank lines not counted)."""
    try:
        with open(path, encoding="utf-8-sig", errors="replace", newline="") as fh:
            n = sum(1 for row in csv.reader(fh) if row)
    except csv.Error as exc:
        raise ArchiveError(f"{label} is not a readable CSV ({exc}); {_REDOWNLOAD}") from exc
    return max(n - 1, 0)


def _copy_into(src: Any, tmp: Path, limit: int, what: str) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    with open(tmp, "wb") as out:
        while chunk := src.read(1 << 20):
            n += len(chunk)
            if n > limit:
                raise ArchiveError(f"{what} is larger than {limit:,} bytes; refusing it")
            h.update(chunk)
            out.write(chunk)
    return h.hexdigest(), n


def _csv_member(archive: Path, data_file: DataFile, zf: zipfile.ZipFile) -> zipfile.ZipInfo:
    candidates = []
    for info in zf.infolist():
        parts = _safe_parts(archive, info.filename)
        kind = _zip_kind(info)
        if kind == "dir" or not parts or parts[0] == "__MACOSX" or parts[-1].startswith("."):
            continue
        if kind != "file":
            raise _member_error(archive, info.filename, _KIND_WORDS.get(kind, "is special"))
        if len(parts) > 1:
            raise _member_error(
                archive,
                info.filename,
                "has a folder path; expected one CSV at the top of the zip: refusing it",
            )
        candidates.append(info)
    exact = [i for i in candidates if i.filename == data_file.table_name]
    csvs = [i for i in candidates if i.filename.lower().endswith(".csv")]
    if exact:
        return exact[0]
    if len(csvs) == 1:
        return csvs[0]
    found = ", ".join(repr(i.filename) for i in candidates[:5]) or "nothing"
    raise ArchiveError(
        f"{archive}: expected one CSV ({data_file.table_name}) inside, found {found}; "
        "is this the right file?"
    )


def extract_table(
    source: str | os.PathLike[str],
    data_file: DataFile,
    out_dir: str | os.PathLike[str],
    *,
    source_sha256: str | None = None,
) -> dict[str, Any]:
    """Unzip a `.csv.zip` (or copy a `.csv`) into `out_dir/<table_name>` atomically, bytes
    unchanged (BOM and CRLF kept). Records it in `out_dir/manifest.json` and returns the
    record: name, sha256 and bytes of the CSV, rows (data rows after the header), source."""
    source = Path(source)
    out_dir = Path(out_dir)
    name = data_file.table_name
    if name is None:
        raise ValueError(f"{data_file.name} is not a CSV file (.csv or .csv.zip)")
    if not source.is_file():
        raise FileNotFoundError(f"{source} does not exist; download {data_file.name} first")
    src_record = {
        "name": source.name,
        "sha256": source_sha256 or sha256_file(source),
        "bytes": source.stat().st_size,
    }
    dest = out_dir / name
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as tmp:
        if data_file.format == "csv":
            with open(source, "rb") as fh:
                digest, size = _copy_into(fh, tmp, MAX_TABLE_BYTES, str(source))
        else:
            with _open_zip(source) as zf:
                info = _csv_member(source, data_file, zf)
                label = f"{source}: member {info.filename!r}"
                if info.flag_bits & 0x1:
                    raise ArchiveError(f"{label} is encrypted; refusing it")
                if info.file_size > MAX_TABLE_BYTES:
                    raise ArchiveError(f"{label} would unpack to {info.file_size:,} bytes")
                try:
                    with zf.open(info) as member:
                        digest, size = _copy_into(member, tmp, MAX_TABLE_BYTES, label)
                except _ZIP_READ_ERRORS as exc:
                    raise ArchiveError(
                        f"{label} is damaged ({exc}); the file is corrupt or truncated: "
                        + _REDOWNLOAD
                    ) from exc
        if size == 0:
            raise ArchiveError(f"{source}: the CSV {name} is empty; " + _REDOWNLOAD)
        rows = _count_rows(tmp, f"{source}: {name}")
    record = {"name": name, "sha256": digest, "bytes": size, "rows": rows, "source": src_record}
    with folder_lock(out_dir, wait=True):
        manifest = _read_tables_manifest(out_dir)
        manifest["tables"][name] = record
        write_json_atomic(out_dir / MANIFEST, manifest)
    return record


def _read_tables_manifest(folder: Path) -> dict[str, Any]:
    try:
        manifest = read_json(folder / MANIFEST)
    except (OSError, ValueError):
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("format") != TABLES_FORMAT:
        manifest = {"format": TABLES_FORMAT, "format_version": FORMAT_VERSION, "tables": {}}
    return manifest


def table_record(
    out_dir: str | os.PathLike[str], data_file: DataFile, source_sha256: str
) -> dict[str, Any] | None:
    """The record of `data_file`'s CSV in `out_dir` if it was extracted from the source with
    this sha256 and the file is still there with its recorded size; else None."""
    out_dir = Path(out_dir)
    record = _read_tables_manifest(out_dir)["tables"].get(data_file.table_name or "")
    if not record or record["source"]["sha256"] != source_sha256:
        return None
    path = out_dir / record["name"]
    if not path.is_file() or path.stat().st_size != record["bytes"]:
        return None
    return record


def table_complete(
    out_dir: str | os.PathLike[str], data_file: DataFile, source_sha256: str
) -> bool:
    """Whether `table_record` finds a complete extraction."""
    return table_record(out_dir, data_file, source_sha256) is not None
