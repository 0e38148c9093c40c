"""One shard: decode + resize every image of an original-image shard into a sized shard
(`resize_shard`), and the sized shard's schema and labels.

One output shard per input shard, same `part-NNNNN.parquet` name, rows in the source order
(minus train images that failed to decode), in the format `planet.store.sized` describes and
reads. No compression: pixels are read every epoch, and a codec saves little disk on them for
much slower writes and reads (measurements: bench/README.md).

Row groups of ~16 MB of pixels (`ROW_GROUP_BYTES`: 341 images at 128 px, 50 at 332 px): the
shard is decoded into one small reused buffer and written group by group, so a task holds
~16 MB of pixels instead of a whole shard (661 MB at 332 px).

Each shard's parquet key-value metadata (`planet.resize`) records the source shard's sha256,
size, method, resampling, format version, the labels' digest and the images left out: a
rerun compares it and skips a shard that is already done (`resize_shard`).
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from planet import hooks
from planet.fileio import CHUNK, atomic_path, sha256_file
from planet.resize.image import (
    RESAMPLE,
    BadImageError,
    Method,
    check_method,
    check_size,
    resize_jpeg_unchecked,
)
from planet.store import shards
from planet.store.labels import LabelError, LabelTable
from planet.store.sized import CHANNELS, FORMAT, FORMAT_VERSION

COMPRESSION = "none"
ROW_GROUP_BYTES = 16 << 20  # pixels per row group: one reused buffer, not a whole shard
METADATA_KEY = b"planet.resize"


# --------------------------------------------------------------------------------------------
# labels


def labels_digest(table: LabelTable | None) -> str | None:
    """A fingerprint of a label table (kind, classes, every name with its label), independent
    of row order; None for no labels."""
    if table is None:
        return None
    order = sorted(range(len(table.names)), key=table.names.__getitem__)
    h = hashlib.sha256()
    h.update(json.dumps([table.kind, list(table.classes)]).encode())
    for i in order:
        h.update(table.names[i].encode() + b"\0")
    values = np.ascontiguousarray(np.asarray(table.values)[order])
    h.update(values.astype(np.int64).tobytes())
    return h.hexdigest()


def _label_type(table: LabelTable) -> pa.DataType:
    if table.kind == "multi_hot":
        return pa.list_(pa.uint8(), len(table.classes))
    if table.kind == "class_index":
        return pa.int16()
    raise ValueError(f"unknown label kind {table.kind!r}")


def _label_array(table: LabelTable | None, n: int) -> pa.Array:
    if table is None:
        return pa.nulls(n)
    values = np.asarray(table.values)
    if table.kind == "multi_hot":
        k = len(table.classes)
        if values.shape != (n, k):
            raise ValueError(f"multi-hot labels of shape {values.shape}, expected {(n, k)}")
        flat = pa.array(np.ascontiguousarray(values, dtype=np.uint8).ravel(), pa.uint8())
        return pa.FixedSizeListArray.from_arrays(flat, k)
    if values.shape != (n,) or (n and not (values.min() >= 0 and values.max() < 2**15)):
        raise ValueError(f"class indices of shape {values.shape}, expected ({n},) in int16 range")
    return pa.array(values.astype(np.int16), pa.int16())


def shard_schema(size: int, table: LabelTable | None) -> pa.Schema:
    return pa.schema(
        [
            pa.field("image_name", pa.string(), nullable=False),
            pa.field("label", pa.null() if table is None else _label_type(table)),
            pa.field("pixels", pa.binary(size * size * CHANNELS), nullable=False),
        ]
    )


# --------------------------------------------------------------------------------------------
# one shard


def _shard_config(
    size: int, method: str, is_test: bool, src_sha256: str, labels_sha256: str | None
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "size": size,
        "method": method,
        "resample": RESAMPLE,
        "is_test": is_test,
        "source_sha256": src_sha256,
        "labels_sha256": labels_sha256,
    }


def _shard_metadata(path: Path) -> dict[str, Any] | None:
    """The `planet.resize` record in a shard's parquet footer, or None."""
    try:
        meta = pq.read_metadata(path).metadata or {}
        return json.loads(meta[METADATA_KEY])
    except (OSError, KeyError, ValueError, pa.ArrowException):
        return None


def _shard_done(dest: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """The metadata of `dest` when it is a finished shard made with exactly `config`."""
    if not dest.is_file():
        return None
    meta = _shard_metadata(dest)
    if meta is None or meta.get("config") != config:
        return None
    return meta


def open_sink(path: Path) -> pa.NativeFile:
    """The native file a sized shard is written through (a seam for the full-disk tests)."""
    return pa.OSFile(str(path), mode="w")


class _ShardFile:
    """The sized shard being written, with its sha256 and its sync to disk.

    pyarrow writes it through a native file (no copy of each page into a Python bytes
    object); after each row group, what has been written is hashed by reading it back from
    the page cache into one reused 1 MB buffer, and synced to disk in a background thread
    (the GIL is released in fsync) while the next row group decodes, so the final fsync
    (`atomic_path`) waits for the last row group only (measurements: bench/README.md)."""

    def __init__(self, path: Path) -> None:
        self.sink = open_sink(path)
        try:
            self.reader = open(path, "rb", buffering=0)  # noqa: SIM115 (closed in __exit__)
        except BaseException:
            self.sink.close()
            raise
        self.sha = hashlib.sha256()
        self.hashed = 0
        self.chunk = memoryview(bytearray(CHUNK))
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="resize-fsync")
        self.pending: Future[None] | None = None

    def __enter__(self) -> _ShardFile:
        return self

    def written(self, end: int | None = None) -> None:
        """Hash what was written since the last call (up to `end`, default: all); start
        syncing it unless a sync is still running."""
        end = self.sink.tell() if end is None else end
        while self.hashed < end:
            got = self.reader.readinto(self.chunk[: end - self.hashed])
            if not got:
                raise OSError(f"{self.reader.name} ended at {self.hashed} bytes, not {end}")
            self.sha.update(self.chunk[:got])
            self.hashed += got
        if self.pending is not None:
            if not self.pending.done():
                return
            self.pending.result()  # a failed sync (EIO, ENOSPC) raises here
        self.pending = self.pool.submit(_SYNC, self.reader.fileno())

    def finish(self) -> str:
        """Close the file (written completely); its sha256."""
        end = self.sink.tell()
        self.sink.close()
        self.written(end)
        return self.sha.hexdigest()

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self.pool.shutdown(wait=True)  # the file stays open until the sync is over
        try:
            if not self.sink.closed:
                self.sink.close()
        finally:
            self.reader.close()
        if exc_type is None and self.pending is not None:
            self.pending.result()


_SYNC = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync


def read_names(src: Path) -> list[str]:
    try:
        return pq.read_table(src, columns=["image_name"]).column(0).to_pylist()
    except (OSError, pa.ArrowException) as exc:
        raise shards.ShardError(
            f"{src} is not a readable image shard ({exc}); run the extract stage again"
        ) from exc


def _jpeg_views(col: pa.ChunkedArray) -> list[memoryview]:
    """Each value of a binary column as a memoryview into the column's buffer (no copy)."""
    views: list[memoryview] = []
    for chunk in col.chunks:
        if len(chunk) == 0:
            continue
        kind = np.int64 if pa.types.is_large_binary(chunk.type) else np.int32
        offsets = np.frombuffer(chunk.buffers()[1], kind)[
            chunk.offset : chunk.offset + len(chunk) + 1
        ]
        data = memoryview(chunk.buffers()[2]).cast("B")
        bounds = offsets.tolist()
        views += [data[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return views


def _shard_labels(table: LabelTable | None, names: list[str], src: Path) -> LabelTable | None:
    if table is None:
        return None
    if table.names == names:
        return table
    try:
        return table.take(names)
    except LabelError as exc:
        raise LabelError(f"{src}: {exc}") from exc


def resize_shard(
    src: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    size: int,
    labels: LabelTable | None,
    *,
    method: Method = "squish",
    is_test: bool = False,
    src_sha256: str | None = None,
) -> dict[str, Any]:
    """Decode + resize every image of the original-image shard `src` into the sized shard
    `dest` (written atomically); return its record: name, rows, bytes, sha256, source (name,
    sha256, rows), bad_images (name, reason), reused.

    `labels` holds at least this shard's images (looked up by name); None for test splits.
    `src_sha256` (from the source manifest) saves hashing `src`. When `dest` is already a
    finished shard made from the same source bytes with the same settings and labels, it is
    not rewritten. A train image that cannot be decoded is left out and reported; a test image
    raises `BadImageError` naming it and the shard (nothing is written)."""
    src, dest = Path(src), Path(dest)
    size = check_size(size)
    check_method(method)
    if is_test and labels is not None:
        raise ValueError("test images have no labels: pass labels=None with is_test=True")
    if not is_test and labels is None:
        raise ValueError(f"{src}: train images need labels (a LabelTable)")
    if not src.is_file():
        raise FileNotFoundError(f"{src} does not exist; run the extract stage again")
    src_sha256 = src_sha256 or sha256_file(src)
    names = read_names(src)
    shard_labels = _shard_labels(labels, names, src)
    config = _shard_config(size, method, is_test, src_sha256, labels_digest(shard_labels))
    source = {"name": src.name, "sha256": src_sha256, "rows": len(names)}
    done = _shard_done(dest, config)
    if done is not None:
        return {
            "name": dest.name,
            "rows": pq.read_metadata(dest).num_rows,
            "bytes": dest.stat().st_size,
            "sha256": sha256_file(dest),
            "source": source,
            "bad_images": done.get("bad_images", []),
            "reused": True,
        }

    jpegs = _jpeg_views(pq.read_table(src, columns=["jpeg"]).column(0))
    schema = shard_schema(size, shard_labels)
    group = max(1, ROW_GROUP_BYTES // (size * size * CHANNELS))
    batch = np.empty((min(group, max(1, len(names))), size, size, CHANNELS), dtype=np.uint8)
    batch_names: list[str] = []
    bad: list[dict[str, str]] = []
    n = 0

    def flush(writer: pq.ParquetWriter) -> None:
        k = len(batch_names)
        table = pa.Table.from_arrays(
            [
                pa.array(batch_names, pa.string()),
                _label_array(None if shard_labels is None else shard_labels.take(batch_names), k),
                pa.FixedSizeBinaryArray.from_buffers(
                    schema.field("pixels").type, k, [None, pa.py_buffer(batch[:k])]
                ),
            ],
            schema=schema,
        )
        writer.write_table(table, row_group_size=k)  # encodes (copies) `batch` now
        batch_names.clear()
        shard_file.written()

    with atomic_path(dest) as tmp, _ShardFile(tmp) as shard_file:
        with pq.ParquetWriter(
            shard_file.sink,
            schema,
            compression=COMPRESSION,
            use_dictionary=False,
            write_statistics=["image_name"],
        ) as writer:
            for name, data in zip(names, jpegs, strict=True):
                try:
                    resize_jpeg_unchecked(data, size, method, out=batch[len(batch_names)])
                except BadImageError as exc:
                    if is_test:
                        raise BadImageError(
                            f"test image {name} in {src}: {exc}; a submission must cover every "
                            "test image: re-download the archive and run the extract stage again"
                        ) from exc
                    bad.append({"name": name, "reason": str(exc)})
                    continue
                batch_names.append(name)
                n += 1
                if len(batch_names) == len(batch):
                    flush(writer)
            if batch_names:
                flush(writer)
            meta = {"config": config, "bad_images": bad}
            writer.add_key_value_metadata({METADATA_KEY: json.dumps(meta, sort_keys=True)})
        sha256 = shard_file.finish()
    hooks.emit("resize.shard", size=size, split=dest.parent.name, name=dest.name)
    return {
        "name": dest.name,
        "rows": n,
        "bytes": dest.stat().st_size,
        "sha256": sha256,
        "source": source,
        "bad_images": bad,
        "reused": False,
    }
