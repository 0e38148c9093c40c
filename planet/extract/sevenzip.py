"""Decoding a `.tar.7z`: the tar inside is streamed into `TarStream` by the 7-Zip program or by
py7zr, never written to disk.

A `.tar.7z` is decoded by the 7-Zip program when one is on PATH (`7z`, `7zz` or `7za`; run
as `7z x -so`, its output piped into this process) or else by py7zr (liblzma) in a helper
thread; `decoder=` forces one. Either way the tar and the small files never touch the disk.
Both give byte-identical shards; the archive header is always read by py7zr.

One `.tar.7z` is one LZMA2 stream, decoded on one core: decoding is the limit and cannot be
split, so parallelism is across archives (measurements: bench/README.md).
"""

from __future__ import annotations

import contextlib
import queue
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import py7zr
from py7zr.io import Py7zIO, WriterFactory

from planet.extract.members import REDOWNLOAD, ArchiveError, corrupt, safe_parts
from planet.extract.shard_builder import ShardBuilder
from planet.extract.tar_stream import TarStream
from planet.fileio import CHUNK


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


SEVEN_ZIP_NAMES = ("7z", "7zz", "7za")
Decoder = Literal["auto", "py7zr", "7z"]


def find_7z() -> str | None:
    """The path of a 7-Zip command-line program (`7z`, `7zz` or `7za`) on PATH, if any."""
    for name in SEVEN_ZIP_NAMES:
        if exe := shutil.which(name):
            return exe
    return None


def _decode_with_7z(exe: str, archive: Path, stream: TarStream, expected: int) -> None:
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
                f"or truncated: {REDOWNLOAD}"
            )
    if stream.size() != expected:
        raise ArchiveError(
            f"{archive}: decoded {stream.size():,} bytes of a {expected:,}-byte tar; the file "
            f"is corrupt or truncated: {REDOWNLOAD}"
        )


def stream_tar_7z(archive: Path, builder: ShardBuilder, exe: str | None) -> None:
    """Decode the tar inside `archive` with py7zr (in this thread), or with the 7-Zip program
    `exe` (a child process), feeding `TarStream`."""
    with open(archive, "rb") as fh:  # a file object: py7zr does not start its own threads
        try:
            z = py7zr.SevenZipFile(fh, mode="r")
            infos = z.list()
            encrypted = z.password_protected
        except (OSError, MemoryError):
            raise
        except Exception as exc:  # py7zr raises many types for a damaged header
            raise corrupt(archive, exc, "7z") from exc
        with z:
            for info in infos:
                safe_parts(archive, info.filename)
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
            stream = TarStream(archive, builder, tar.uncompressed)
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
                    raise corrupt(archive, cause or err, "7z") from cause
    if exe is not None:
        _decode_with_7z(exe, archive, stream, tar.uncompressed)
    stream.finish()
