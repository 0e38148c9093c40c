"""Pre-resize: decode every original JPEG once into square uint8 pixel shards (fast.ai's
`data.resize(...)`, done on any Dask cluster and read back at memory speed).

    shards/original/<split>/part-NNNNN.parquet  ->  shards/<size>/<split>/part-NNNNN.parquet

Decoding and resizing (`resize_jpeg`)
-------------------------------------
libjpeg-turbo (through `simplejpeg`) decodes straight to a smaller image by scaling in the DCT
domain (factors n/8): `decode_jpeg(min_height=, min_width=)` picks the smallest factor whose
output is at least the wanted size, so most of the reduction costs less than a full decode and
averages the source pixels. When that output is not exactly `size x size` (83, 166, 332 from
Planet's 256 px, any size from Dogs vs Cats' ragged images, any upscale), one antialiased
Pillow BILINEAR resize finishes the job, with the exact source rectangle as its `box`: libjpeg
rounds scaled sizes up (`ceil(299 * 2/8) = 75` pixels cover 74.75), and ignoring that
stretches the image by up to a pixel (Dogs vs Cats against a LANCZOS resize of the full
decode: 39-45 dB PSNR with the box, 37-43 dB without; worst image 31 dB instead of 27).

Measured on one core of the 2-core development machine (AMD EPYC VM), synthetic 256 px Planet
JPEGs (~14 KB), images/s: naive PIL open+convert+resize ~700; PIL `draft` + resize 1,450-2,400;
simplejpeg scaled decode alone 4,100 (64 px), 3,600 (83 px: decodes at 96), 3,700 (128 px),
2,400 (166 px: decodes at 192). The finishing resize of one image costs (µs):

    96 -> 83:   PIL bilinear 143, lanczos 307, box 113; torch antialias 113 (44 batched)
    192 -> 166: PIL bilinear 462, lanczos 1,127;        torch antialias 274 (141 batched)

(a hand-written numpy separable resampler was 3-20x slower than Pillow). BILINEAR, not
LANCZOS: half the cost, and against a LANCZOS resize of the full decode the result is 45-46 dB
PSNR on Planet images (LANCZOS 48 dB): DCT scaling has already done the large reduction and
the finishing step covers a ratio below 2 (below 8/7 for square images). Pillow's integer
arithmetic gives the same bytes on every CPU, so shards are byte-identical whichever worker
made them. `reducing_gap` is not used: after DCT scaling the remaining ratio is below 3, where
it changes nothing.

`bench/resize.py` (one core, 2,000 images, whole `resize_shard` incl. reading the source shard
and writing, hashing and fsyncing the sized one; measured while other jobs shared the VM),
images/s, project / naive PIL loop / decode-only limit: 64 px 3,340 / 527 / 4,636 (0.72 of
the limit); 128 px 2,259 / 596 / 3,705 (0.61); 83 px 1,797 / 698 / 3,899 (0.46); 166 px
590 / 462 / 1,741 (0.34); 332 px (an upscale) 239 / 354 / 2,689 (0.09). Where DCT scaling
lands exactly on the size, writing the pixels is the rest of the cost; otherwise Pillow's
finishing resize dominates, and at 332 px the 330 KB of raw pixels per image cost more to
write, hash and fsync on this VM (~0.4 GB/s into fresh page cache) than the naive loop's
30 KB JPEGs. Torch's uint8 antialias kernel (AVX2) would cut the finishing step 2-3x (its
output was identical with ATEN_CPU_CAPABILITY=default, only 13x slower there); it is not used
because it has no sub-pixel `box` (the exact geometry above), costs every worker a torch
import (~2.7 s, ~300 MB), and runs 4x slower than Pillow on CPUs without AVX2 (e.g. ARM).

Non-square images (Dogs vs Cats, e.g. 300x450): `method="squish"` (the default) scales the
whole image to `size x size`, changing its aspect ratio like fast.ai's `ResizeMethod.SQUISH`,
so nothing (an ear, a tail) is cut off before augmentation; `method="crop"` keeps the aspect
ratio and takes the centred square (fast.ai v0.7's `data.resize` + centre crop). Planet's
images are square, where both give the same pixels.

JPEGs libjpeg-turbo refuses (strict mode treats recoverable warnings as errors, e.g.
"extraneous bytes before marker") are decoded by Pillow with `draft` (the same DCT scaling);
when neither can decode the data (truncated, not a JPEG), `BadImageError` says why.

Sized shard format (FORMAT, FORMAT_VERSION)
-------------------------------------------
One output shard per input shard, same `part-NNNNN.parquet` name, rows in the source order
(minus train images that failed to decode), columns:

- `image_name` (string);
- `label`: Planet `fixed_size_list<uint8>[17]` multi-hot in `PLANET.classes` order; Dogs vs
  Cats `int16` class index (0 cat, 1 dog); a column of type null for test splits;
- `pixels`: `fixed_size_binary(size*size*3)`, raw uint8 RGB in HWC order, so each chunk's data
  buffer *is* an `(n, size, size, 3)` array: `np.frombuffer(chunk.buffers()[1], ...)`, no
  per-image Python object (`read_sized`, `read_sized_shard`, `iter_sized`).

No compression. Measured with 2,000 images (write / read into an ndarray / read mmapped):

    64 px  none 24.7 MB  0.97 / 1.76 / 3.19 GB/s    lz4 21.0 MB (86%) 0.25 / 1.18 / 1.38 GB/s
    128 px none 98.5 MB  0.96 / 1.83 / 2.80 GB/s    lz4 80.2 MB (82%) 0.25 / 1.02 / 1.48 GB/s

(zstd: 70-80%, 0.5 GB/s read; snappy 80-84%, 0.4 GB/s). LZ4 saves under a fifth of the disk
(less on real photographs than on these smooth synthetic ones) for half the read speed and a
quarter of the write speed; pixels are read every epoch, so they stay uncompressed.

Row groups of ~16 MB of pixels (`ROW_GROUP_BYTES`: 341 images at 128 px, 50 at 332 px): the
shard is decoded into one small reused buffer and written group by group, so a task holds
~16 MB of pixels instead of a whole shard (661 MB at 332 px), and this VM, where touching fresh
memory costs ~1-2 ms/MB, wrote a 2,000-image 128 px shard in 1.0 s instead of 1.45 s. Reading
back costs one copy into the caller's array: `read_sized` ~2.2-2.4 GB/s (45,000 images/s at
128 px, 12x the decoder) with either layout.

Each shard's parquet key-value metadata (`planet.resize`) records the source shard's sha256,
size, method, resampling, format version, the labels' digest and the images left out: a
rerun compares it and skips a shard that is already done (`resize_shard`). `manifest.json`
is written last (format, size, method, pixel layout, classes, label kind, count, the source
manifest's sha256 and count, bad images, shards with rows/bytes/sha256, config); its presence
means the folder is complete (`sized_complete`).

Running it (`resize_split`)
---------------------------
`resize_shard` is a pure function of file paths and small picklable values, so it runs
anywhere: in this process (`client=None`) or mapped over a Dask cluster (`client.map`, one
task per shard, progress reported per finished shard with `as_completed`). The caller passes
one `LabelTable` for the split; `resize_split` reads each source shard's names and hands each
task only its own shard's labels (~60 KB), so nothing large is scattered and a task can be
re-run anywhere. Dask retries a task whose worker died (`allowed-failures`, default 3); a
killed stage keeps its finished shards, and a rerun redoes only what is missing.
A TRAIN image that fails to decode is left out and listed in the manifest; a TEST image that
fails raises `BadImageError` (a submission must cover every test image), leaving no manifest.
Shards already finished stay: they are reused when the re-extracted source has them unchanged.

`dask_client()` starts a `LocalCluster` (one single-threaded worker process per core, dashboard
on 127.0.0.1:8787 when bokeh is installed) for the block and closes it after;
`dask_client(address)` connects to a running cluster and closes only the client. Workers of
another machine need this project installed and the data directory at the same path. A script
that starts a LocalCluster needs an `if __name__ == "__main__":` guard (workers are spawned).
Measured on this 2-core VM while other jobs held the cores, 8,000 images at 128 px: 1,745
images/s in process, 1,564 on a 2-worker LocalCluster (start-up 3 s): no speed-up could be
measured here; the per-core rate is `bench/resize.py`'s.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import logging
import math
import os
import urllib.parse
import urllib.request
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import simplejpeg
from PIL import Image, UnidentifiedImageError

from planet import hooks
from planet.constants import MANIFEST
from planet.fileio import (
    atomic_path,
    folder_lock,
    read_json,
    remove_stale_temps,
    sha256_file,
    sha256_json,
    write_json_atomic,
)
from planet.store import shards
from planet.store.labels import LabelError, LabelTable

if TYPE_CHECKING:
    import distributed

FORMAT = "planet-sized-shards"
FORMAT_VERSION = 1
Method = Literal["squish", "crop"]
METHODS: tuple[str, ...] = ("squish", "crop")
RESAMPLE = "bilinear"  # Pillow's antialiased BILINEAR for the finishing step
MAX_SIZE = 4096
MAX_PIXELS = 1 << 28  # larger images are refused (decompression bombs)
CHANNELS = 3
COMPRESSION = "none"
ROW_GROUP_BYTES = 16 << 20  # pixels per row group: one reused buffer, not a whole shard
METADATA_KEY = b"planet.resize"
DASHBOARD_ADDRESS = "127.0.0.1:8787"  # Dask's usual port; another free one if it is taken

Progress = Callable[[int, int], None]


class BadImageError(ValueError):
    """An image that cannot be decoded (truncated, damaged, not a JPEG)."""


# --------------------------------------------------------------------------------------------
# one image


def _check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, int | np.integer):
        raise ValueError(f"size must be an integer number of pixels, got {size!r}")
    if not 1 <= size <= MAX_SIZE:
        raise ValueError(f"size must be between 1 and {MAX_SIZE} pixels, got {size}")
    return int(size)


def _check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    return method


def _wanted(h: int, w: int, size: int, method: str) -> tuple[int, int]:
    """The smallest (height, width) the decoder may scale to for this method."""
    if method == "squish":
        return size, size
    short = min(h, w)  # crop: the short side must reach `size`
    return math.ceil(size * h / short), math.ceil(size * w / short)


def _scales(h: int, w: int, sh: int, sw: int) -> tuple[float, float]:
    """The (y, x) factors the decoder used: the smallest n/8 whose rounded-up sizes are
    (sh, sw), as libjpeg and Pillow's `draft` pick; else the plain ratios."""
    for n in range(1, 17):
        if -(-h * n // 8) == sh and -(-w * n // 8) == sw:
            return n / 8, n / 8
    return sh / h, sw / w


def _box(h: int, w: int, sh: int, sw: int, method: str) -> tuple[float, float, float, float]:
    """The source rectangle, in the scaled image's pixels, that becomes the output square."""
    fy, fx = _scales(h, w, sh, sw)
    if method == "squish":
        return 0.0, 0.0, w * fx, h * fy
    side = min(h, w)
    x0, y0 = (w - side) / 2, (h - side) / 2
    return x0 * fx, y0 * fy, (x0 + side) * fx, (y0 + side) * fy


_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG", "PNG"),
    (b"GIF8", "GIF"),
    (b"BM", "BMP"),
    (b"RIFF", "RIFF/WebP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


def _not_jpeg(data: bytes | memoryview) -> str | None:
    """Why `data` is plainly not a JPEG (no FF D8 start-of-image marker), else None."""
    head = bytes(data[:4])
    if head[:2] == b"\xff\xd8":
        return None
    if not head:
        return "empty (0 bytes)"
    kind = next((name for magic, name in _MAGIC if head.startswith(magic)), None)
    what = f"{kind} data" if kind else f"starts with {head.hex(' ')}"
    return f"not a JPEG: no FF D8 start marker ({what})"


def _decode_pil(data: bytes | memoryview, size: int, method: str) -> tuple[Image.Image, int, int]:
    """Pillow's decode (DCT-scaled with `draft`) for JPEGs libjpeg-turbo refuses."""
    with Image.open(io.BytesIO(data)) as im:
        if im.format != "JPEG":
            raise BadImageError(f"not a JPEG (Pillow reads it as {im.format})")
        w, h = im.size
        if w * h > MAX_PIXELS:
            raise BadImageError(f"{w}x{h} pixels is too large (more than {MAX_PIXELS:,})")
        wh, ww = _wanted(h, w, size, method)
        im.draft("RGB", (ww, wh))
        return im.convert("RGB"), h, w


def resize_jpeg(data: bytes, size: int, method: Method = "squish") -> np.ndarray:
    """Decode JPEG `data` into a `size x size x 3` uint8 RGB array (HWC).

    libjpeg-turbo's DCT scaling does most of the reduction while decoding; an antialiased
    BILINEAR resize of the exact source rectangle finishes when needed (see the module
    docstring for the measurements). `method="squish"` scales the whole image to a square;
    `"crop"` takes the centred square. Raises `BadImageError` when the data cannot be decoded.
    """
    return _resize(data, _check_size(size), _check_method(method))


def _resize(data: bytes | memoryview, size: int, method: str) -> np.ndarray:
    """`resize_jpeg` without the argument checks (called once per image)."""
    why = _not_jpeg(data)
    if why is not None:
        raise BadImageError(why)
    try:
        h, w, _, _ = simplejpeg.decode_jpeg_header(data)
        if w * h > MAX_PIXELS:
            raise BadImageError(f"{w}x{h} pixels is too large (more than {MAX_PIXELS:,})")
        wh, ww = _wanted(h, w, size, method)
        arr = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=wh, min_width=ww)
        im = None
    except ValueError as first:
        if isinstance(first, BadImageError):
            raise
        try:
            im, h, w = _decode_pil(data, size, method)
        except BadImageError as exc:
            raise BadImageError(f"{exc}; libjpeg-turbo: {first}") from first
        except UnidentifiedImageError as exc:
            raise BadImageError(
                f"cannot be decoded (libjpeg-turbo: {first}; Pillow cannot identify it)"
            ) from exc
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise BadImageError(
                f"cannot be decoded (libjpeg-turbo: {first}; Pillow: {exc})"
            ) from exc
        arr = None
    sh, sw = (arr.shape[0], arr.shape[1]) if arr is not None else (im.height, im.width)
    box = _box(h, w, sh, sw, method)
    if arr is not None and (sh, sw) == (size, size) and box == (0.0, 0.0, size, size):
        return arr
    if im is None:
        im = Image.fromarray(arr)
    return np.asarray(im.resize((size, size), Image.Resampling.BILINEAR, box=box))


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


def _schema(size: int, table: LabelTable | None) -> pa.Schema:
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


class _HashingWriter:
    """A write-only file object that hashes what it writes (for `pa.PythonFile`)."""

    def __init__(self, fh: Any) -> None:
        self.fh = fh
        self.sha = hashlib.sha256()
        self.closed = False

    def write(self, data: Any) -> int:
        self.sha.update(data)
        return self.fh.write(data)

    def flush(self) -> None:
        self.fh.flush()

    def close(self) -> None:
        self.closed = True


def _read_names(src: Path) -> list[str]:
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
    size = _check_size(size)
    _check_method(method)
    if is_test and labels is not None:
        raise ValueError("test images have no labels: pass labels=None with is_test=True")
    if not is_test and labels is None:
        raise ValueError(f"{src}: train images need labels (a LabelTable)")
    if not src.is_file():
        raise FileNotFoundError(f"{src} does not exist; run the extract stage again")
    src_sha256 = src_sha256 or sha256_file(src)
    names = _read_names(src)
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
    schema = _schema(size, shard_labels)
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

    with atomic_path(dest) as tmp, open(tmp, "wb") as fh:
        hashing = _HashingWriter(fh)
        with pq.ParquetWriter(
            pa.PythonFile(hashing, mode="w"),
            schema,
            compression=COMPRESSION,
            use_dictionary=False,
            write_statistics=["image_name"],
        ) as writer:
            for name, data in zip(names, jpegs, strict=True):
                try:
                    batch[len(batch_names)] = _resize(data, size, method)
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
    hooks.emit("resize.shard", size=size, split=dest.parent.name, name=dest.name)
    return {
        "name": dest.name,
        "rows": n,
        "bytes": dest.stat().st_size,
        "sha256": hashing.sha.hexdigest(),
        "source": source,
        "bad_images": bad,
        "reused": False,
    }


# --------------------------------------------------------------------------------------------
# a split


def _source_record(source_manifest: dict[str, Any]) -> dict[str, Any]:
    return {
        "sha256": sha256_json(source_manifest),
        "count": source_manifest["count"],
        "shards": len(source_manifest["shards"]),
    }


def _split_config(size: int, method: str, is_test: bool) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "size": size,
        "method": method,
        "resample": RESAMPLE,
        "is_test": is_test,
        "compression": COMPRESSION,
    }


def sized_complete(
    folder: str | os.PathLike[str],
    source_manifest: dict[str, Any],
    size: int,
    method: str = "squish",
    labels: LabelTable | None = None,
) -> dict[str, Any] | None:
    """The manifest of `folder` when it holds the sized shards of exactly this source
    (original-image manifest), size and method, every shard file present with its recorded
    size; else None. With `labels`, they must also be the labels it was made with. Cheap: reads
    the manifest and stats the shard files."""
    folder = Path(folder)
    try:
        manifest = read_json(folder / MANIFEST)
    except (OSError, ValueError):
        return None
    try:
        if (
            manifest.get("format") != FORMAT
            or manifest.get("format_version") != FORMAT_VERSION
            or manifest["size"] != size
            or manifest["method"] != method
            or manifest["source"]["sha256"] != sha256_json(source_manifest)
        ):
            return None
        if labels is not None and manifest["labels_sha256"] != labels_digest(labels):
            return None
        for rec in manifest["shards"]:
            p = folder / rec["name"]
            if not p.is_file() or p.stat().st_size != rec["bytes"]:
                return None
    except (AttributeError, KeyError, TypeError):  # not a manifest of ours
        return None
    return manifest


def _jobs(
    src_dir: Path, dest_dir: Path, source: dict[str, Any], labels: LabelTable | None
) -> list[dict[str, Any]]:
    """One `resize_shard` call's arguments per source shard, each with only its own labels
    (a missing label fails here, before any work)."""
    jobs = []
    missing: list[str] = []
    for rec in source["shards"]:
        src = src_dir / rec["name"]
        shard_labels = None
        if labels is not None:
            names = _read_names(src)
            missing += [n for n in names if n not in labels.index]
            if not missing:
                shard_labels = labels.take(names)
        jobs.append(
            {
                "src": src,
                "dest": dest_dir / rec["name"],
                "labels": shard_labels,
                "src_sha256": rec["sha256"],
            }
        )
    if missing:
        shown = ", ".join(missing[:10]) + (
            f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        )
        raise LabelError(
            f"{len(missing)} image(s) of {src_dir} have no label: {shown}; check the labels file"
        )
    return jobs


def resize_split(
    src_dir: str | os.PathLike[str],
    dest_dir: str | os.PathLike[str],
    size: int,
    labels: LabelTable | None,
    *,
    method: Method = "squish",
    is_test: bool = False,
    client: distributed.Client | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Resize every shard of the complete original-image folder `src_dir` into `dest_dir`
    (one task per shard on the Dask `client`, or one after another in this process when it is
    None), then write `manifest.json` last and return it. `progress(done, total)` is called in
    shards, as each finishes.

    Idempotent and resumable: a complete split returns at once; otherwise finished shards made
    from the same sources and settings are kept and only the rest is done. Raises
    `BadImageError` for an undecodable test image, `LabelError` for a train image without a
    label, `ShardError` when `src_dir` is not a complete extraction."""
    src_dir, dest_dir = Path(src_dir), Path(dest_dir)
    size = _check_size(size)
    _check_method(method)
    if is_test and labels is not None:
        raise ValueError("test splits have no labels: pass labels=None with is_test=True")
    if not is_test and labels is None:
        raise ValueError(f"{src_dir}: the train split needs its labels (a LabelTable)")
    source = shards.verify(src_dir)
    total = len(source["shards"])
    with folder_lock(dest_dir):
        complete = sized_complete(dest_dir, source, size, method, labels)
        if complete is not None:
            if progress is not None:
                progress(total, total)
            return complete
        (dest_dir / MANIFEST).unlink(missing_ok=True)
        remove_stale_temps(dest_dir)
        wanted = {rec["name"] for rec in source["shards"]}
        for stray in shards.shard_files(dest_dir):
            if stray.name not in wanted:
                stray.unlink()
        jobs = _jobs(src_dir, dest_dir, source, labels)
        records = _run(jobs, size, method, is_test, client, progress)
        bad = [{**b, "shard": r["name"]} for r in records for b in r["bad_images"]]
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "split": source.get("split"),
            "size": size,
            "method": method,
            "pixels": {
                "column": "pixels",
                "layout": "HWC",
                "dtype": "uint8",
                "channels": CHANNELS,
                "height": size,
                "width": size,
                "bytes_per_image": size * size * CHANNELS,
            },
            "label_kind": None if labels is None else labels.kind,
            "classes": None if labels is None else list(labels.classes),
            "labels_sha256": labels_digest(labels),
            "columns": {f.name: str(f.type) for f in _schema(size, labels)},
            "compression": COMPRESSION,
            "count": sum(r["rows"] for r in records),
            "source": _source_record(source),
            "bad_images": bad,
            "shards": [
                {k: r[k] for k in ("name", "rows", "bytes", "sha256")}
                | {"source_sha256": r["source"]["sha256"]}
                for r in records
            ],
            "config": _split_config(size, method, is_test),
        }
        write_json_atomic(dest_dir / MANIFEST, manifest)
    return manifest


def _shard_task(
    src: Path,
    dest: Path,
    labels: LabelTable | None,
    src_sha256: str,
    *,
    size: int,
    method: Method,
    is_test: bool,
) -> dict[str, Any]:
    """`resize_shard` with the per-shard values positional (for `client.map`)."""
    return resize_shard(
        src, dest, size, labels, method=method, is_test=is_test, src_sha256=src_sha256
    )


def _run(
    jobs: list[dict[str, Any]],
    size: int,
    method: str,
    is_test: bool,
    client: distributed.Client | None,
    progress: Progress | None,
) -> list[dict[str, Any]]:
    """Every job's record, in job order; in this process or on Dask."""
    total = len(jobs)
    records: list[dict[str, Any] | None] = [None] * total
    if progress is not None:
        progress(0, total)
    if client is None:
        for i, job in enumerate(jobs):
            records[i] = resize_shard(
                job["src"],
                job["dest"],
                size,
                job["labels"],
                method=method,  # type: ignore[arg-type]
                is_test=is_test,
                src_sha256=job["src_sha256"],
            )
            if progress is not None:
                progress(i + 1, total)
        return records  # type: ignore[return-value]

    from distributed import as_completed

    token = uuid.uuid4().hex[:8]
    futures = client.map(
        _shard_task,
        [j["src"] for j in jobs],
        [j["dest"] for j in jobs],
        [j["labels"] for j in jobs],
        [j["src_sha256"] for j in jobs],
        size=size,
        method=method,
        is_test=is_test,
        key=[f"resize_shard-{size}-{j['dest'].parent.name}-{j['dest'].stem}-{token}" for j in jobs],
    )
    index = {f.key: i for i, f in enumerate(futures)}
    done = 0
    try:
        for future in as_completed(futures):
            records[index[future.key]] = future.result()
            done += 1
            if progress is not None:
                progress(done, total)
    except BaseException:
        client.cancel(futures)
        raise
    return records  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# reading


class SizedImages(NamedTuple):
    """Sized shards read back: names, labels ((n, k) uint8 multi-hot, (n,) int16 class index,
    or None for a test split) and pixels ((n, size, size, 3) uint8, HWC)."""

    names: list[str]
    labels: np.ndarray | None
    pixels: np.ndarray


def _pixel_chunks(col: pa.ChunkedArray, size: int) -> Iterator[np.ndarray]:
    width = size * size * CHANNELS
    for chunk in col.chunks:
        if len(chunk) == 0:
            continue
        buf = chunk.buffers()[1]
        arr = np.frombuffer(buf, np.uint8, count=len(chunk) * width, offset=chunk.offset * width)
        yield arr.reshape(len(chunk), size, size, CHANNELS)


def _labels_np(col: pa.ChunkedArray) -> np.ndarray | None:
    if pa.types.is_null(col.type):
        return None
    if pa.types.is_fixed_size_list(col.type):
        k = col.type.list_size
        flat = pa.concat_arrays([c.flatten() for c in col.chunks]) if col.num_chunks else []
        return np.asarray(flat, dtype=np.uint8).reshape(-1, k)
    return col.to_numpy()


def read_labels(folder: str | os.PathLike[str]) -> tuple[list[str], np.ndarray | None]:
    """The names and labels of a complete sized folder without its pixels (for scoring):
    uint8 multi-hot (n, C), class indices (n,), or None for a test split."""
    folder = Path(folder)
    names: list[str] = []
    labels: list[np.ndarray] = []
    for rec in read_sized_manifest(folder)["shards"]:
        table = pq.read_table(folder / rec["name"], columns=["image_name", "label"])
        names.extend(table.column("image_name").to_pylist())
        lab = _labels_np(table.column("label"))
        if lab is not None:
            labels.append(lab)
    return names, (np.concatenate(labels) if labels else None)


def read_sized_shard(path: str | os.PathLike[str]) -> SizedImages:
    """One sized shard: names, labels and its pixels `(n, size, size, 3)` (read-only: a view
    of parquet's read when the shard is one row group, else one concatenation)."""
    table = pq.read_table(path, memory_map=True)
    width = table.schema.field("pixels").type.byte_width
    size = math.isqrt(width // CHANNELS)
    chunks = list(_pixel_chunks(table.column("pixels"), size))
    if len(chunks) == 1:
        pixels = chunks[0]
    elif chunks:
        pixels = np.concatenate(chunks)
    else:
        pixels = np.empty((0, size, size, CHANNELS), np.uint8)
    return SizedImages(
        table.column("image_name").to_pylist(), _labels_np(table.column("label")), pixels
    )


def iter_sized(folder: str | os.PathLike[str]) -> Iterator[SizedImages]:
    """The shards of a complete sized folder, one `SizedImages` at a time, in order."""
    folder = Path(folder)
    manifest = read_sized_manifest(folder)
    for rec in manifest["shards"]:
        yield read_sized_shard(folder / rec["name"])


def read_sized_manifest(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a complete sized folder; `ShardError` if there is none."""
    path = Path(folder) / MANIFEST
    try:
        manifest = read_json(path)
    except (OSError, ValueError) as exc:
        raise shards.ShardError(
            f"{folder} has no readable {MANIFEST} ({exc}): its images were never resized or the "
            "resize did not finish; run the resize stage"
        ) from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise shards.ShardError(f"{path} is not a {FORMAT} manifest; run the resize stage again")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise shards.ShardError(
            f"{path} has format version {manifest.get('format_version')}, this code reads "
            f"version {FORMAT_VERSION}; run the resize stage again"
        )
    return manifest


def read_sized(folder: str | os.PathLike[str]) -> SizedImages:
    """A whole complete sized folder in memory: names, labels, pixels `(n, size, size, 3)`
    uint8 (one copy of the pixel bytes into one array)."""
    folder = Path(folder)
    manifest = read_sized_manifest(folder)
    size, n = manifest["size"], manifest["count"]
    pixels = np.empty((n, size, size, CHANNELS), np.uint8)
    names: list[str] = []
    labels: list[np.ndarray] = []
    pos = 0
    for rec in manifest["shards"]:
        table = pq.read_table(folder / rec["name"], memory_map=True)
        if table.num_rows != rec["rows"]:
            raise shards.ShardError(
                f"{folder / rec['name']} has {table.num_rows} rows, the manifest says "
                f"{rec['rows']}; run the resize stage again"
            )
        for chunk in _pixel_chunks(table.column("pixels"), size):
            pixels[pos : pos + len(chunk)] = chunk
            pos += len(chunk)
        names += table.column("image_name").to_pylist()
        lab = _labels_np(table.column("label"))
        if lab is not None:
            labels.append(lab)
    if pos != n:
        raise shards.ShardError(f"{folder}: shards hold {pos} images, the manifest says {n}")
    label_arr = np.concatenate(labels) if labels else None
    return SizedImages(names, label_arr, pixels)


# --------------------------------------------------------------------------------------------
# Dask


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _client_of_this_process(address: str) -> distributed.Client | None:
    """This process's running default client when it is connected to `address`."""
    from distributed import default_client

    try:
        client = default_client()
    except ValueError:  # no client in this process
        return None
    if client.status == "running" and client.scheduler.address == address:
        return client
    return None


# distributed's nannies set these to 1 in *this* process's environment before spawning the
# workers (`distributed.nanny.pre-spawn-environ`) and leave them set: torch imported later in
# the same process then ran training on one thread (measured: 357 s instead of 302 s for the
# demo, and other numbers). `dask_client` puts them back once the workers are up.
THREAD_ENV = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MALLOC_TRIM_THRESHOLD_",
)


@contextlib.contextmanager
def _restored_env(saved: dict[str, str | None]) -> Iterator[None]:
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def dask_client(
    address: str | None = None, n_workers: int | None = None
) -> Iterator[distributed.Client]:
    """A Dask client for the duration of the block.

    With `address` (e.g. `tcp://10.0.0.5:8786`), connect to that running cluster (closing only
    the client afterwards; its workers need this project installed). Without, start a
    `LocalCluster` of `n_workers` (default: one per core) single-threaded worker processes on
    127.0.0.1, with the dashboard on 127.0.0.1:8787 (another port if taken) when bokeh is
    installed; closed afterwards. `dashboard_link(client)` gives the dashboard's URL or None.
    """
    from distributed import Client, LocalCluster

    if address:
        shared = _client_of_this_process(address)
        if shared is not None:
            # Threads of one process share one client: several clients made concurrently in
            # one process once left `as_completed` waiting on finished tasks (seen in the demo).
            yield shared
            return
        client = Client(address, timeout="30s")
        try:
            yield client
        finally:
            client.close()
        return
    has_bokeh = importlib.util.find_spec("bokeh") is not None
    saved_env = {k: os.environ.get(k) for k in THREAD_ENV}
    with (
        _restored_env(saved_env),
        warnings.catch_warnings(),  # "Port 8787 is already in use ... on port N instead"
    ):
        warnings.filterwarnings("ignore", message=".*already in use", category=UserWarning)
        cluster = LocalCluster(
            n_workers=n_workers or _cores(),
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            # without bokeh the HTTP server only serves /health and /metrics: any free port
            dashboard_address=DASHBOARD_ADDRESS if has_bokeh else "127.0.0.1:0",
            silence_logs=logging.ERROR,
        )
    try:
        client = Client(cluster)
        try:
            yield client
        finally:
            client.close()
    finally:
        cluster.close()


def dashboard_link(client: distributed.Client, timeout: float = 5.0) -> str | None:
    """The URL of the cluster's dashboard when one answers (bokeh installed where the
    scheduler runs), else None: `client.dashboard_link` gives a URL even when nothing serves
    it. Asks the dashboard's light `/individual-plots.json` route, never through a proxy."""
    link = client.dashboard_link
    if not link:
        return None
    parts = urllib.parse.urlsplit(link)
    probe = f"{parts.scheme}://{parts.netloc}/individual-plots.json"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(probe, timeout=timeout) as resp:
            return link if resp.status == 200 else None
    except (OSError, ValueError):
        return None


__all__: Sequence[str] = (
    "FORMAT",
    "FORMAT_VERSION",
    "BadImageError",
    "SizedImages",
    "dashboard_link",
    "dask_client",
    "iter_sized",
    "labels_digest",
    "read_sized",
    "read_sized_manifest",
    "read_sized_shard",
    "resize_jpeg",
    "resize_shard",
    "resize_split",
    "sized_complete",
)
