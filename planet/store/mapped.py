"""A folder's images read in place: `MappedPixels`, an (n, H, W, 3) uint8 array-like kept in
pieces (each parquet page of pixels viewed in its shard file through `np.memmap`), gathered a
batch at a time.

Nothing the size of the folder is ever copied: `take` (and `np.take`, fancy indexing) copies
the selected images only, read from the shard files with `os.preadv` into the batch (one call
per run of consecutive rows); what stays resident is the batches being made plus what the OS
page cache keeps of the files, which it drops under memory pressure. It reads rather than
copies from the maps because mapped pages count in the process's RSS for as long as they stay
mapped (measurements: bench/README.md). Views (`self[i]`, iteration) still come from the maps.
The index from image to (piece, row) is 12 bytes an image.

A shard whose pixels cannot be viewed in the file (compressed or dictionary-encoded pages,
written by something other than `planet.resize`) is decoded by pyarrow instead, and its pieces
are then arrays in memory (`mapped` is false): the reader logs it.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from planet.store.pages import value_runs


def map_pixels(
    path: str | os.PathLike[str], column: str, image_shape: tuple[int, ...]
) -> list[np.ndarray] | None:
    """The `fixed_size_binary` column `column` of the parquet file `path` as read-only views of
    the file, one `(rows, *image_shape)` uint8 array per page, in row order; None when its
    pages cannot be viewed (see `planet.store.pages.value_runs`)."""
    width = int(np.prod(image_shape))
    runs = value_runs(path, column, width)
    if not runs:
        return runs  # None (cannot be mapped) or [] (no rows)
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    return [
        mm[offset : offset + rows * width].view(np.ndarray).reshape(rows, *image_shape)
        for offset, rows in runs
    ]


class MappedPixels:
    """(n, *image_shape) uint8 images held in `pieces` (arrays of shape (rows, *image_shape),
    memory-mapped views of the shard files or decoded arrays), image i in piece order; `take`
    reads the mapped ones from their files (`read_files=False`: copies from the maps).

    Array API for what callers of `read_images` use: `shape`, `dtype`, `ndim`, `nbytes`,
    `len`, iteration (one image view at a time), `take(indices, axis=0, out=None, mode=...)`
    (so `np.take` works too: a copy of the selected images only), `self[i]` (one image, a view),
    `self[indices | mask | slice]` (a copy of those images) and `np.asarray(self)` (a copy of
    everything: for small folders and tests)."""

    def __init__(
        self, pieces: Sequence[np.ndarray], image_shape: tuple[int, ...], read_files: bool = True
    ) -> None:
        self.pieces = [p for p in pieces if len(p)]
        for p in self.pieces:
            if p.dtype != np.uint8 or p.shape[1:] != tuple(image_shape):
                raise ValueError(
                    f"a piece of {p.dtype} {p.shape[1:]}, expected uint8 {image_shape}"
                )
        counts = np.array([len(p) for p in self.pieces], dtype=np.int64)
        n = int(counts.sum())
        self.shape: tuple[int, ...] = (n, *image_shape)
        self.dtype = np.dtype(np.uint8)
        self._piece = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
        starts = np.cumsum(counts) - counts
        self._row = np.arange(n, dtype=np.int64) - np.repeat(starts, counts)
        self._width = int(np.prod(image_shape))
        spans = [file_span(p) if read_files else None for p in self.pieces]
        paths = sorted({span[0] for span in spans if span is not None})
        self._fds = [os.open(path, os.O_RDONLY) for path in paths]
        weakref.finalize(self, _close_all, list(self._fds))
        fd_of = dict(zip(paths, self._fds, strict=True))
        # per piece: (fd, file offset of its first row, path) or None (an array in memory)
        self._files = [None if s is None else (fd_of[s[0]], s[1], s[0]) for s in spans]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape))

    @property
    def mapped(self) -> bool:
        """Whether every piece is a view of a file (none was decoded into memory)."""
        return all(file_span(p) is not None for p in self.pieces)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        kind = "memory-mapped" if self.mapped else "partly in memory"
        return f"MappedPixels(shape={self.shape}, {len(self.pieces)} pieces, {kind})"

    def __iter__(self) -> Iterator[np.ndarray]:
        for piece in self.pieces:
            yield from piece

    def _positions(self, indices: Any, mode: str) -> np.ndarray:
        n = len(self)
        idx = np.asarray(indices)
        if not np.issubdtype(idx.dtype, np.integer) and idx.size:
            raise IndexError(f"image positions must be integers, not {idx.dtype}")
        idx = idx.astype(np.int64, copy=False).reshape(-1)
        if mode == "clip":
            return np.clip(idx, 0, n - 1)
        if mode == "wrap":
            return idx % n
        if mode != "raise":
            raise ValueError(f"mode must be 'raise', 'wrap' or 'clip', not {mode!r}")
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(
                f"image positions must lie in [-{n}, {n}), got {idx.min()}..{idx.max()}"
            )
        return np.where(idx < 0, idx + n, idx)

    def take(
        self, indices: Any, axis: int | None = 0, out: np.ndarray | None = None, mode: str = "raise"
    ) -> np.ndarray:
        """The images at `indices` (any shape of integers, numpy's `mode`) as one new
        (k, *image_shape) array, or written into `out`; only along axis 0."""
        if axis != 0:
            raise ValueError("MappedPixels.take gathers whole images: axis must be 0")
        scalar = np.ndim(indices) == 0
        idx = self._positions(indices, mode)
        shape = (*np.shape(indices), *self.shape[1:])
        if out is None:
            out = np.empty(shape, dtype=np.uint8)
        elif out.shape != shape or out.dtype != np.uint8 or not out.flags.c_contiguous:
            raise ValueError(f"out is {out.dtype} {out.shape}, expected C-contiguous uint8 {shape}")
        flat = out.reshape(len(idx), *self.shape[1:])  # a view: `out` is written
        if len(idx):
            self._gather(self._piece[idx], self._row[idx], flat)
        return out[()] if scalar else out

    def _gather(self, piece: np.ndarray, row: np.ndarray, flat: np.ndarray) -> None:
        """Rows `row` of pieces `piece` into `flat`, a run of consecutive rows of one piece at
        a time: read from its file, or copied from its array."""
        cut = np.flatnonzero((piece[1:] != piece[:-1]) | (row[1:] != row[:-1] + 1)) + 1
        bounds = [0, *cut.tolist(), len(piece)]
        buffer = memoryview(flat.reshape(-1))
        for start, end in zip(bounds[:-1], bounds[1:], strict=True):
            p, r = int(piece[start]), int(row[start])
            file = self._files[p]
            if file is None:
                flat[start:end] = self.pieces[p][r : r + end - start]
                continue
            fd, offset, path = file
            rows = buffer[start * self._width : end * self._width]
            _read_exactly(fd, rows, offset + r * self._width, path)

    def __getitem__(self, key: Any) -> np.ndarray:
        rest: tuple[Any, ...] = ()
        if isinstance(key, tuple):
            key, rest = (key[0], key[1:]) if key else (slice(None), ())
        if isinstance(key, (int, np.integer)):
            (i,) = self._positions(key, "raise")
            image = self.pieces[self._piece[i]][self._row[i]]
            return image[rest] if rest else image
        if isinstance(key, slice):
            idx = np.arange(len(self))[key]
        else:
            idx = np.asarray(key)
            if idx.dtype == np.bool_:
                if idx.shape != (len(self),):
                    raise IndexError(f"a mask over {len(self)} images, not of shape {idx.shape}")
                idx = np.flatnonzero(idx)
        images = self.take(idx)
        return images[(slice(None), *rest)] if rest else images

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        if copy is False:
            raise ValueError("MappedPixels cannot be viewed as one array without a copy")
        images = self.take(np.arange(len(self)))
        return images if dtype is None else images.astype(dtype, copy=False)


def file_span(array: np.ndarray) -> tuple[str, int] | None:
    """(file name, byte offset) where the C-contiguous `array`, a view of an `np.memmap`,
    starts in its file; None for an array in memory."""
    base: Any = array
    mapped = None
    while isinstance(base, np.ndarray):
        if isinstance(base, np.memmap):
            mapped = base  # the last one down the chain: the memmap the file was opened as
        base = base.base
    if mapped is None or mapped.filename is None or not array.flags.c_contiguous:
        return None
    start = int(mapped.offset) + array.ctypes.data - mapped.ctypes.data
    return str(mapped.filename), start


_PREADV = hasattr(os, "preadv")


def _read_exactly(fd: int, buffer: memoryview, offset: int, path: str) -> None:
    """Fill `buffer` from `fd` at `offset` (pread may return less than asked)."""
    while len(buffer):
        if _PREADV:
            got = os.preadv(fd, [buffer], offset)
        else:  # (no preadv on this OS: one more copy)
            chunk = os.pread(fd, len(buffer), offset)
            got = len(chunk)
            buffer[:got] = chunk
        if got <= 0:
            raise OSError(
                f"{path} ended {len(buffer):,} bytes early: the shard changed after it was "
                "opened; run the resize stage again"
            )
        buffer, offset = buffer[got:], offset + got


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)
