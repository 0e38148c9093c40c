"""New imagery to predict, read one file at a time from a folder, an archive or shards.

    a folder of images        every .jpg/.jpeg/.png/.tif/.tiff under it (sub-folders too), in
                              sorted path order
    an archive                .zip, .tar or .tar.7z, member by member in archive order, with
                              the extract stage's readers (`planet.extract`: `open_zip`,
                              `TarStream`, `stream_tar_7z`): nothing is written to disk and at
                              most a few members are held in memory
    original-image shards     a folder the extract stage wrote (`manifest.json` +
                              `part-NNNNN.parquet`), e.g. `shards/original/test`

`read_source` yields `SourceImage(name, where, data)` for each image, where `name` is the file
stem (`test_0.jpg` -> `test_0`, the submission's key) and `where` the file or member (for
messages), and `BadFile(where, reason)` for a file that cannot be one: an unsafe or unreadable
archive member, a name already used by an earlier image (names are the CSV's keys), a file
over `MAX_IMAGE_BYTES`. Hidden files, `__MACOSX/` and files of other types (a README) are
passed over and counted in `ImageSource.ignored`. Whether the bytes decode is the predictor's
business (`planet.infer.new_images`). A damaged archive ends its images with one `BadFile`
naming it; the images read before stay good.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from planet.constants import MANIFEST
from planet.extract.members import KIND_WORDS, MAX_IMAGE_BYTES, ArchiveError, safe_parts
from planet.fileio import CHUNK

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
SourceKind = Literal["folder", "zip", "tar", "tar.7z", "shards"]
QUEUE_DEPTH = 16  # members a .tar.7z's decoding thread may get ahead of the predictor
SHARD_BATCH = 256


class SourceError(ValueError):
    """A source that cannot be read at all (missing, of an unknown type)."""


@dataclass(frozen=True)
class SourceImage:
    """One image's bytes: `name` is its file stem (the CSV key), `where` the file or member."""

    name: str
    where: str
    data: bytes


@dataclass(frozen=True)
class BadFile:
    """A file left out, and why."""

    where: str
    reason: str


Item = SourceImage | BadFile


def source_kind(path: str | os.PathLike[str]) -> SourceKind:
    """What `path` is: a folder of images or of shards, or an archive (by its suffix)."""
    path = Path(path)
    if path.is_dir():
        return "shards" if _is_shard_folder(path) else "folder"
    if not path.exists():
        raise SourceError(f"{path} does not exist: give a folder of images or an archive")
    name = path.name.lower()
    for suffix, kind in ((".tar.7z", "tar.7z"), (".zip", "zip"), (".tar", "tar")):
        if name.endswith(suffix):
            return kind  # type: ignore[return-value]
    raise SourceError(
        f"{path}: unknown source type; give a folder of images (JPEG, PNG, TIFF), a .zip, .tar "
        "or .tar.7z archive, or a folder of original-image shards"
    )


def _is_shard_folder(path: Path) -> bool:
    from planet.fileio import read_json
    from planet.store.shards import FORMAT

    try:
        return read_json(path / MANIFEST).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


class _Names:
    """The stems given out so far: which member is an image, and under what name."""

    def __init__(self) -> None:
        self.first: dict[str, str] = {}
        self.ignored = 0

    def check(self, where: str, member: str, size: int) -> str | BadFile | None:
        """The image name of `member`, a BadFile, or None for a file that is not an image."""
        base = member.replace("\\", "/").rsplit("/", 1)[-1]
        stem, ext = os.path.splitext(base)
        if (
            base.startswith(".")
            or member.startswith("__MACOSX/")
            or ext.lower() not in IMAGE_SUFFIXES
        ):
            self.ignored += 1
            return None
        if size > MAX_IMAGE_BYTES:
            return BadFile(where, f"{size:,} bytes is too large for an image")
        if stem in self.first:
            return BadFile(where, f"repeats the image name {stem!r} of {self.first[stem]}")
        self.first[stem] = where
        return stem


class ImageSource:
    """The images of one source (see the module doc); iterate it once."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.kind = source_kind(self.path)
        self._names = _Names()

    @property
    def ignored(self) -> int:
        """Files passed over as not images (hidden files, other types)."""
        return self._names.ignored

    def __iter__(self) -> Iterator[Item]:
        readers: dict[str, Callable[[], Iterator[Item]]] = {
            "folder": self._folder,
            "zip": self._zip,
            "tar": self._tar,
            "tar.7z": self._tar_7z,
            "shards": self._shards,
        }
        try:
            yield from readers[self.kind]()
        except ArchiveError as exc:
            yield BadFile(str(self.path), f"damaged archive, its other images are left out: {exc}")

    # a folder
    def _folder(self) -> Iterator[Item]:
        for dirpath, dirnames, filenames in os.walk(self.path):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for filename in sorted(filenames):
                path = Path(dirpath) / filename
                rel = path.relative_to(self.path).as_posix()
                try:
                    size = path.stat().st_size
                except OSError as exc:
                    yield BadFile(str(path), f"cannot be read ({exc.strerror or exc})")
                    continue
                name = self._names.check(str(path), rel, size)
                if isinstance(name, str):
                    try:
                        yield SourceImage(name, str(path), path.read_bytes())
                    except OSError as exc:
                        yield BadFile(str(path), f"cannot be read ({exc.strerror or exc})")
                elif name is not None:
                    yield name

    # a zip
    def _zip(self) -> Iterator[Item]:
        from planet.extract.zip_stream import ZIP_READ_ERRORS, open_zip, zip_kind

        with open_zip(self.path) as zf:
            for info in zf.infolist():
                kind, where = zip_kind(info), f"{self.path}:{info.filename}"
                item = self._member(where, info.filename, kind, info.file_size)
                if not isinstance(item, str):
                    if item is not None:
                        yield item
                    continue
                if info.flag_bits & 0x1:
                    yield BadFile(where, "is encrypted")
                    continue
                try:
                    yield SourceImage(item, where, zf.read(info))
                except (NotImplementedError, *ZIP_READ_ERRORS) as exc:
                    yield BadFile(where, f"cannot be read from the archive ({exc})")

    def _member(self, where: str, member: str, kind: str, size: int) -> str | BadFile | None:
        """An archive member's image name, a BadFile, or None (a folder, not an image)."""
        if kind == "dir":
            return None
        try:
            parts = safe_parts(self.path, member)
        except ArchiveError:
            return BadFile(where, "has an absolute or '..' path; left out")
        if kind != "file":
            return BadFile(where, f"{KIND_WORDS.get(kind, 'is not a regular file')}; left out")
        return self._names.check(where, "/".join(parts), size)

    # a tar, and the tar inside a .tar.7z
    def _tar(self) -> Iterator[Item]:
        from planet.extract.tar_stream import TarStream

        out: list[Item] = []
        sink = _MemberSink(self, out.append)
        stream = TarStream(self.path, sink, self.path.stat().st_size)  # type: ignore[arg-type]
        with open(self.path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                stream.write(chunk)
                yield from out
                out.clear()
        stream.finish()

    def _tar_7z(self) -> Iterator[Item]:
        """The .tar.7z is decoded in a thread (`stream_tar_7z`: 7-Zip or py7zr) that hands
        members over a small queue, so the predictor pulls them one at a time."""
        from planet.extract.sevenzip import find_7z, stream_tar_7z

        q: queue.Queue[object] = queue.Queue(maxsize=QUEUE_DEPTH)
        cancel = threading.Event()
        end = object()

        def put(item: object) -> None:
            while True:
                if cancel.is_set():
                    raise _Stopped
                try:
                    q.put(item, timeout=0.1)
                    return
                except queue.Full:
                    continue

        def decode() -> None:
            try:
                stream_tar_7z(self.path, _MemberSink(self, put), find_7z())  # type: ignore[arg-type]
                put(end)
            except _Stopped:
                pass
            except BaseException as exc:
                with contextlib.suppress(_Stopped):
                    put(exc)

        thread = threading.Thread(target=decode, name=f"decode {self.path.name}", daemon=True)
        thread.start()
        try:
            while (item := q.get()) is not end:
                if isinstance(item, BaseException):
                    raise item
                yield item  # type: ignore[misc]
        finally:
            cancel.set()
            while not q.empty():
                q.get_nowait()
            thread.join()

    # original-image shards
    def _shards(self) -> Iterator[Item]:
        from planet.store import shards

        try:
            batches = shards.iter_batches(self.path, batch_rows=SHARD_BATCH)
            for names, jpegs in batches:
                for name, data in zip(names, jpegs, strict=True):
                    where = f"{self.path}:{name}"
                    checked = self._names.check(where, f"{name}.jpg", len(data))
                    if isinstance(checked, str):
                        yield SourceImage(checked, where, data)
                    elif checked is not None:
                        yield checked
        except shards.ShardError as exc:
            raise SourceError(str(exc)) from None


class _Stopped(Exception):
    """The consumer of a .tar.7z's members has gone: stop decoding."""


class _MemberSink:
    """What `TarStream` feeds (the shard builder's `begin`/`end`): each image member's bytes
    go to `emit` as a SourceImage, each bad member as a BadFile."""

    def __init__(self, source: ImageSource, emit: Callable[[Item], None]) -> None:
        self.source = source
        self.emit = emit
        self.estimate_total: Callable[[int], int | None] = lambda count: None
        self._pending: tuple[str, str] | None = None

    def begin(self, member: str, kind: str, size: int) -> bool:
        where = f"{self.source.path}:{member}"
        item = self.source._member(where, member, kind, size)
        if isinstance(item, str):
            self._pending = (item, where)
            return True
        if item is not None:
            self.emit(item)
        return False

    def end(self, data: bytes) -> None:
        assert self._pending is not None
        name, where = self._pending
        self._pending = None
        self.emit(SourceImage(name, where, data))


def read_source(path: str | os.PathLike[str]) -> ImageSource:
    """The images of `path` (a folder, an archive, or shards): `SourceError` when it cannot be
    read at all; iterate the result for SourceImage and BadFile items."""
    return ImageSource(path)
