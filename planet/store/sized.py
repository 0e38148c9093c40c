"""Sized shards read back: the one reader of `shards/<size>/<split>/` (written by
`planet.resize`), for training, prediction, scoring and pictures.

Format (FORMAT, FORMAT_VERSION): `part-NNNNN.parquet` shards and `manifest.json` (written last:
its presence means the folder is complete). Each shard has the columns

- `image_name` (string);
- `label`: Planet `fixed_size_list<uint8>[17]` multi-hot in `PLANET.classes` order; Dogs vs
  Cats `int16` class index (0 cat, 1 dog); a column of type null for test splits;
- `pixels`: `fixed_size_binary(size*size*3)`, raw uint8 RGB in HWC order, so each chunk's data
  buffer *is* an `(n, size, size, 3)` array: `np.frombuffer(chunk.buffers()[1], ...)`, no
  per-image Python object but the names.

Every reader below goes through the same steps: open a shard memory-mapped and check its
columns (`_open_shard`), view its pixels (`_shard_pixels`: the pages in the file itself,
`planet.store.mapped`) and decode its labels as stored (`_stored_labels`); a whole folder is
read by `_read_folder`, which checks each shard against the manifest. What callers see:

- `read_images` -> `ImageData` (training, prediction, pictures): the pixels are
  `MappedPixels`, every shard's pixel pages viewed in place through `np.memmap` (no copy of the
  folder, whatever its number of shards; a batch is gathered with `np.take`, which reads only
  its images from the files with `os.preadv`, so the shards' pages stay the page cache's and
  out of the process's RSS). Labels become float32 multi-hot `(n, C)` or int64 class indices
  `(n,)`; None for test splits. A subset (the split's train or valid images) is a list of names, a boolean mask
  or positions, given to the `Loader`, which then reads from the same maps.
- `read_sized` / `read_sized_shard` / `iter_sized` -> `SizedImages` (names, labels, pixels) with
  the labels as stored: uint8 multi-hot, the stored class-index dtype (int16); `read_sized`
  copies every pixel into one array (tests and small folders only), `iter_sized` one shard at a
  time.
- `read_labels` (names and labels, no pixels), `read_sized_names` (names only) and
  `read_sized_pixels` (the pixels of a few named images, reading only their shards).

Memory that grows with the folder besides: the names (a Python list), the labels and the
images' index (12 bytes an image): ~8 MB for Planet's 40,479 train images.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from planet.constants import MANIFEST
from planet.fileio import read_json
from planet.store.labels import LabelKind
from planet.store.mapped import MappedPixels, map_pixels
from planet.store.shards import ShardError

FORMAT = "planet-sized-shards"
FORMAT_VERSION = 1
CHANNELS = 3

log = logging.getLogger(__name__)


class DataError(ShardError):
    """A sized shard folder that cannot be read as images (a `ShardError`, so callers of any of
    the readers catch it as they caught the readers' errors before there was one reader)."""


class SizedImages(NamedTuple):
    """Sized shards read back: names, labels ((n, k) uint8 multi-hot, (n,) int16 class index,
    or None for a test split) and pixels ((n, size, size, 3) uint8, HWC)."""

    names: list[str]
    labels: np.ndarray | None
    pixels: np.ndarray


@dataclass(frozen=True, eq=False)
class ImageData:
    """A split's images: `images[i]` is `names[i]`, labelled `labels[i]` (`images`: memory-mapped
    `MappedPixels` from `read_images`, or any (n, H, W, 3) uint8 array)."""

    names: list[str]
    images: MappedPixels | np.ndarray  # (n, H, W, 3) uint8, gathered with `np.take`
    labels: np.ndarray | None  # float32 (n, C) multi-hot, int64 (n,) class index, or None
    classes: tuple[str, ...]
    label_kind: LabelKind | None

    def __len__(self) -> int:
        return len(self.names)

    @property
    def size(self) -> int:
        """Side of the (square) images in pixels."""
        return int(self.images.shape[1])

    def indices(self, select: Sequence[str] | np.ndarray | None = None) -> np.ndarray:
        """Positions (int64) of a subset: image names, a boolean mask over all images, or
        integer positions; `None` for all images. Names keep their given order."""
        n = len(self)
        if select is None:
            return np.arange(n, dtype=np.int64)
        if isinstance(select, np.ndarray) and select.dtype == np.bool_:
            if select.shape != (n,):
                raise ValueError(
                    f"a mask over {n} images must have shape ({n},), not {select.shape}"
                )
            return np.flatnonzero(select).astype(np.int64)
        if isinstance(select, np.ndarray) and np.issubdtype(select.dtype, np.integer):
            idx = select.astype(np.int64).reshape(-1)
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise IndexError(f"positions must lie in [0, {n}), got {idx.min()}..{idx.max()}")
            return idx
        pos = {name: i for i, name in enumerate(self.names)}
        missing = [s for s in select if s not in pos]
        if missing:
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise KeyError(f"{len(missing)} image(s) not in this split: {missing[:5]}{more}")
        return np.fromiter((pos[s] for s in select), dtype=np.int64, count=len(select))

    def subset(self, select: Sequence[str] | np.ndarray) -> ImageData:
        """A copy holding only the selected images (see `indices`). A `Loader` takes
        `indices` directly and needs no copy."""
        idx = self.indices(select)
        return ImageData(
            names=[self.names[i] for i in idx],
            images=np.take(self.images, idx, axis=0),
            labels=None if self.labels is None else np.take(self.labels, idx, axis=0),
            classes=self.classes,
            label_kind=self.label_kind,
        )


# ---------------------------------------------------------------------------------------------
# one shard: open and check, view the pixels, decode the labels


def _check_pixels(path: Path, pix_type: pa.DataType, size: int | None) -> None:
    if not pa.types.is_fixed_size_binary(pix_type) or (
        size is not None and pix_type.byte_width != size * size * CHANNELS
    ):
        wanted = f"{size}x{size}x3 bytes" if size is not None else "fixed-size binary"
        raise DataError(f"{path}: pixels are {pix_type}, expected {wanted}")


def _open_shard(
    path: Path, size: int | None = None, columns: Sequence[str] | None = None
) -> pa.Table:
    """A shard memory-mapped (all columns, or `columns`), its `image_name` and `pixels` columns
    checked (`pixels` unless `columns` leaves it out; `size` x `size` x 3 bytes when given)."""
    table = pq.read_table(path, columns=None if columns is None else list(columns), memory_map=True)
    required = {"image_name", "pixels"} if columns is None else {"image_name"} & set(columns)
    missing = required - set(table.column_names)
    if missing:
        raise DataError(f"{path} has no column(s) {sorted(missing)}")
    if "pixels" in table.column_names:
        _check_pixels(path, table.schema.field("pixels").type, size)
    return table


def _pixels_view(chunk: pa.Array, row_bytes: int) -> np.ndarray:
    """The raw bytes of a `fixed_size_binary` chunk as an (rows, row_bytes) uint8 view."""
    if chunk.null_count:
        raise DataError(f"{chunk.null_count} image(s) have no pixels")
    buf = chunk.buffers()[1]
    flat = np.frombuffer(
        buf, dtype=np.uint8, count=len(chunk) * row_bytes, offset=chunk.offset * row_bytes
    )
    return flat.reshape(len(chunk), row_bytes)


def _pixel_rows(table: pa.Table) -> list[np.ndarray]:
    """Each non-empty chunk of the `pixels` column as an (rows, row_bytes) view (no copy)."""
    row_bytes = table.schema.field("pixels").type.byte_width
    return [_pixels_view(c, row_bytes) for c in table.column("pixels").chunks if len(c)]


def _label_kind(manifest: dict[str, Any], label_type: pa.DataType | None) -> LabelKind | None:
    kind = manifest.get("label_kind")
    if kind in ("multi_hot", "class_index"):
        return kind
    if label_type is None or pa.types.is_null(label_type):
        return None
    if pa.types.is_fixed_size_list(label_type):
        return "multi_hot"
    if pa.types.is_integer(label_type):
        return "class_index"
    raise DataError(f"unexpected label column type {label_type}")


def _stored_labels(column: pa.ChunkedArray, kind: LabelKind | None) -> np.ndarray | None:
    """(n, C) multi-hot or (n,) class indices in the stored dtypes (uint8, int16), or None (no or
    all-null labels)."""
    if kind is None or pa.types.is_null(column.type) or column.null_count == len(column):
        return None
    if column.null_count:
        raise DataError(f"{column.null_count} of {len(column)} labels are missing")
    if kind == "multi_hot":
        width = column.type.list_size
        parts = [np.asarray(c.flatten()).reshape(len(c), width) for c in column.chunks]
        return np.concatenate(parts)
    return column.to_numpy()


def _as_read(labels: np.ndarray | None, kind: LabelKind | None) -> np.ndarray | None:
    """Labels as `SizedImages` holds them: multi-hot as uint8, class indices as stored."""
    if labels is not None and kind == "multi_hot":
        return labels.astype(np.uint8, copy=False)
    return labels


def _labels_of(
    table: pa.Table, manifest: dict[str, Any]
) -> tuple[np.ndarray | None, LabelKind | None]:
    """A shard's stored labels and their kind; (None, None) without a `label` column."""
    if "label" not in table.column_names:
        return None, None
    column = table.column("label")
    kind = _label_kind(manifest, column.type)
    return _stored_labels(column, kind), kind


# ---------------------------------------------------------------------------------------------
# a folder


def read_sized_manifest(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a complete sized folder; `ShardError` if there is none."""
    path = Path(folder) / MANIFEST
    try:
        manifest = read_json(path)
    except (OSError, ValueError) as exc:
        raise ShardError(
            f"{folder} has no readable {MANIFEST} ({exc}): its images were never resized or the "
            "resize did not finish; run the resize stage"
        ) from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ShardError(f"{path} is not a {FORMAT} manifest; run the resize stage again")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ShardError(
            f"{path} has format version {manifest.get('format_version')}, this code reads "
            f"version {FORMAT_VERSION}; run the resize stage again"
        )
    return manifest


def _shard_pixels(path: Path, size: int) -> tuple[list[np.ndarray], bool]:
    """A shard's pixels as (rows, size, size, 3) pieces and whether they are views of the file
    (`planet.store.mapped`); otherwise (compressed or dictionary-encoded pages) decoded by
    pyarrow into memory."""
    shape = (size, size, CHANNELS)
    pieces = map_pixels(path, "pixels", shape)
    if pieces is not None:
        return pieces, True
    table = pq.read_table(path, columns=["pixels"], memory_map=True)
    return [rows.reshape(len(rows), *shape) for rows in _pixel_rows(table)], False


def _read_folder(
    folder: Path, manifest: dict[str, Any]
) -> tuple[SizedImages, LabelKind | None, MappedPixels]:
    """Every shard of `folder` in manifest order, each checked against its record: names and
    labels as stored (in `SizedImages`, with empty pixels), their kind, and the pixels as
    `MappedPixels` (each shard viewed in its file, never copied; one decoded into memory when
    its pages cannot be viewed, logged)."""
    size = int(manifest["size"])
    count = int(manifest["count"])
    names: list[str] = []
    labels: list[np.ndarray] = []
    kind: LabelKind | None = None
    pieces: list[np.ndarray] = []
    decoded: list[str] = []
    for rec in manifest["shards"]:
        path = folder / rec["name"]
        try:
            schema = pq.read_schema(path)
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"{path} is not a readable sized shard ({exc})") from exc
        if "pixels" not in schema.names:
            raise DataError(f"{path} has no column(s) ['pixels']")
        _check_pixels(path, schema.field("pixels").type, size)
        columns = ["image_name", "label"] if "label" in schema.names else ["image_name"]
        table = _open_shard(path, size, columns)
        if table.num_rows != rec["rows"]:
            raise DataError(
                f"{path} has {table.num_rows} rows, the manifest says {rec['rows']}; run the "
                "resize stage again"
            )
        if len(names) + table.num_rows > count:
            raise DataError(f"{folder}: the shards hold more than the {count} images listed")
        shard_pieces, mapped = _shard_pixels(path, size)
        if sum(len(p) for p in shard_pieces) != table.num_rows:
            raise DataError(f"{path}: its pixel column does not hold {table.num_rows} images")
        if not mapped:
            decoded.append(rec["name"])
        pieces += shard_pieces
        names.extend(table.column("image_name").to_pylist())
        lab, shard_kind = _labels_of(table, manifest)
        if "label" in table.column_names:
            kind = shard_kind
        if lab is not None:
            labels.append(lab)
    if len(names) != count:
        raise DataError(f"{folder}: the shards hold {len(names)} images, the manifest says {count}")
    if decoded:
        log.info(
            "%s: %d shard(s) (%s) have compressed or encoded pixels, read into memory instead "
            "of memory-mapped; the resize stage writes shards that map",
            folder,
            len(decoded),
            ", ".join(decoded[:3]) + (", ..." if len(decoded) > 3 else ""),
        )
    label_array = np.concatenate(labels) if labels else None
    if label_array is not None and len(label_array) != count:
        raise DataError(f"{folder}: {len(label_array)} labels for {count} images")
    pixels = MappedPixels(pieces, (size, size, CHANNELS))
    empty = np.empty((0, size, size, CHANNELS), dtype=np.uint8)
    return SizedImages(names, label_array, empty), kind, pixels


def read_images(folder: str | os.PathLike[str]) -> ImageData:
    """Every image of a complete sized shard folder, in shard order (see the module doc).

    The pixels are `MappedPixels`: each shard's pages viewed in its file (`np.memmap`), never
    copied as a whole; a `Loader` gathers its batches from them. Memory that stays: the names,
    the labels and a 12-byte index per image."""
    folder = Path(folder)
    manifest = read_sized_manifest(folder)
    if not manifest["shards"]:
        raise DataError(f"{folder / MANIFEST} lists no shards")
    read, kind, pixels = _read_folder(folder, manifest)
    labels = read.labels
    if labels is not None:
        labels = labels.astype(np.float32 if kind == "multi_hot" else np.int64)
    return ImageData(
        names=read.names,
        images=pixels,
        labels=labels,
        classes=tuple(manifest.get("classes") or ()),
        label_kind=kind if labels is not None else None,
    )


def read_sized(folder: str | os.PathLike[str]) -> SizedImages:
    """A whole complete sized folder in memory: names, labels, pixels `(n, size, size, 3)`
    uint8 (one copy of every pixel into one array: memory grows with the folder, so it is for
    tests and small folders; training, prediction and pictures use `read_images`)."""
    folder = Path(folder)
    read, kind, pixels = _read_folder(folder, read_sized_manifest(folder))
    return SizedImages(read.names, _as_read(read.labels, kind), np.asarray(pixels))


def read_sized_shard(path: str | os.PathLike[str]) -> SizedImages:
    """One sized shard: names, labels and its pixels `(n, size, size, 3)` (read-only: a view
    of parquet's read when the shard is one row group, else one concatenation)."""
    table = _open_shard(Path(path))
    width = table.schema.field("pixels").type.byte_width
    size = math.isqrt(width // CHANNELS)
    chunks = _pixel_rows(table)
    if len(chunks) == 1:
        pixels = chunks[0]
    elif chunks:
        pixels = np.concatenate(chunks)
    else:
        pixels = np.empty((0, width), np.uint8)
    labels, kind = _labels_of(table, {})
    return SizedImages(
        table.column("image_name").to_pylist(),
        _as_read(labels, kind),
        pixels.reshape(len(pixels), size, size, CHANNELS),
    )


def iter_sized(folder: str | os.PathLike[str]) -> Iterator[SizedImages]:
    """The shards of a complete sized folder, one `SizedImages` at a time, in order."""
    folder = Path(folder)
    manifest = read_sized_manifest(folder)
    for rec in manifest["shards"]:
        yield read_sized_shard(folder / rec["name"])


def read_labels(folder: str | os.PathLike[str]) -> tuple[list[str], np.ndarray | None]:
    """The names and labels of a complete sized folder without its pixels (for scoring):
    uint8 multi-hot (n, C), class indices (n,), or None for a test split."""
    folder = Path(folder)
    manifest = read_sized_manifest(folder)
    names: list[str] = []
    labels: list[np.ndarray] = []
    for rec in manifest["shards"]:
        table = _open_shard(folder / rec["name"], columns=["image_name", "label"])
        names.extend(table.column("image_name").to_pylist())
        lab, kind = _labels_of(table, manifest)
        if lab is not None:
            labels.append(_as_read(lab, kind))
    return names, (np.concatenate(labels) if labels else None)


def read_sized_names(
    folder: str | os.PathLike[str], manifest: dict[str, Any] | None = None
) -> list[str]:
    """Every image name of a complete sized folder, in shard order (the names column only);
    `manifest`, when the caller has read it already, is not read again."""
    folder = Path(folder)
    if manifest is None:
        manifest = read_sized_manifest(folder)
    names: list[str] = []
    for rec in manifest["shards"]:
        names += _open_shard(folder / rec["name"], columns=["image_name"]).column(0).to_pylist()
    return names


def read_sized_pixels(folder: str | os.PathLike[str], names: Sequence[str]) -> np.ndarray:
    """The pixels `(len(names), size, size, 3)` of the named images of a complete sized folder,
    in the given order (for pictures of a few images): read from the shard files, so only their
    pages are read; KeyError naming the images the folder does not hold."""
    data = read_images(folder)
    try:
        idx = data.indices(list(names))
    except KeyError as exc:
        raise KeyError(f"{folder}: {exc.args[0]}") from None
    return np.take(data.images, idx, axis=0)
