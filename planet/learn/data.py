"""Training data in memory and batches on the device: the sized-shard reader, the batch loader and
batched, per-sample augmentation.

Reading. A sized shard folder (`shards/<size>/<split>/`, written by `planet.resize`) holds
parquet shards with `image_name`, `label` and `pixels` (raw uint8 HWC, `fixed_size_binary`) and a
`manifest.json`. `read_images` memory-maps them and views the `pixels` data buffer as one
`(n, H, W, 3)` uint8 array (no copy for a one-shard folder, otherwise one copy into a single
array, shard by shard): no per-image Python object but the names. Labels become float32
multi-hot `(n, C)` (Planet) or int64 class indices `(n,)` (Dogs vs Cats); None for test splits.
A subset (the split's train or valid images) is a list of names, a boolean mask or positions,
given to the `Loader`, which then reads from the same array: no copy per subset.

Batches. `Loader` plans each epoch's batches (a seeded shuffle per epoch, or the selection's
order), gathers a batch with one `np.take` into a reused uint8 buffer (pinned on CUDA), moves it
to the device (`non_blocking` on CUDA) and turns it there into a normalised float32 NCHW batch,
augmented for training. `workers` threads do all of that ahead of the consumer, each keeping up
to `prefetch` finished batches (numpy and torch release the GIL in copies and kernels); batches
come out in order whatever the number of workers. A batch's augmentation is drawn from a
`torch.Generator` seeded with (seed, epoch, batch number), so (seed, epoch) gives the same
batches bit for bit. Within an augmented batch the transposed samples come last (the set of
images is `batch_indices(epoch)[b]`; the targets follow their images).

Augmentation: fast.ai's `get_transforms(flip_vert=True, max_lighting=0.1, max_zoom=1.05,
max_warp=0.)` of the Planet lesson, every parameter drawn per sample, batched on the batch's
device (`Augment`, `to_model_input`):

- dihedral: one of the 8 symmetries of the square (`dihedral(x, k)`, also usable for TTA);
- zoom: with probability `p_zoom` (fast.ai's `p_affine`, 0.75) a scale uniform in
  [1, max_zoom] and a random position, as a crop of side `round(L / scale)` resized back to L
  bilinearly (`crop_boxes`). The crop is whole pixels (fast.ai's affine grid samples at
  fractional positions; at 128 px the difference is under half a pixel of crop);
- lighting: with probability `p_lighting` each, fast.ai's brightness and contrast in logit
  space: `sigmoid(scale * (logit(x) + logit(change)))`, change uniform in
  [0.5 (1 - max_lighting), 0.5 (1 + max_lighting)] and scale log-uniform in
  [1 - max_lighting, 1 / (1 - max_lighting)] (brightness first, then contrast, as fast.ai
  composes them). Not the linear form: this is what fast.ai trains with, and it keeps pixels in
  [0, 1] without clipping;
- then ImageNet normalisation. Validation and test batches are only normalised.

How it runs (`to_model_input`): everything stays uint8 until the last step. Flips and zoom
are gathers of crop rows from an overlapping "window" view of the pixel buffer (one
`index_select` per crop side, reversed row order for flips) and one `F.interpolate` per crop
side (torch's uint8 bilinear kernel); transposes happen in the strided copy that widens the
pixels to int32 lookup indices; one `index_select` into a per-sample (3 x 256) table then applies
lighting and normalisation at once (lighting is pointwise, so it commutes exactly with the
symmetries and, up to uint8 rounding, with the zoom). Measured on one core of the 2-core
development machine (best of 40 batches of 64 images at 128 px; the machine was shared):
~21 ms with float ops (one `F.grid_sample` for symmetry and zoom 12 ms, its grid built by
broadcasting since `F.affine_grid` took another 20 ms; logit/sigmoid lighting 10 ms), ~12 ms
like this; normalising alone ~4 ms. CPU output memory comes from numpy (`_empty`): a fresh
12 MB batch from `torch.empty` took ~2,500 page faults (~8 ms), one from `np.empty` none.

Why plain torch ops and not `torchvision.transforms.v2`: v2 transforms accept a batch
(`[..., C, H, W]`) but draw their random parameters once per call, for the whole batch
(checked with torchvision 0.29.1: `RandomHorizontalFlip` flipped all 64 images of a batch or
none, on every call; `ColorJitter` gave all 64 the same brightness factor). Per-sample draws
with v2 need a Python loop over samples, one kernel launch per image on a GPU.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from planet.constants import IMAGENET_MEAN, IMAGENET_STD, MANIFEST
from planet.resize import read_sized_manifest

LabelKind = Literal["multi_hot", "class_index"]
LOGIT_EPS = 1e-6  # pixels are clamped to [eps, 1 - eps] before the logit


class DataError(Exception):
    """A sized shard folder that cannot be read as images."""


# ---------------------------------------------------------------------------------------------
# Reading sized shards


@dataclass(frozen=True, eq=False)
class ImageData:
    """A split's images in memory: `images[i]` is `names[i]`, labelled `labels[i]`."""

    names: list[str]
    images: np.ndarray  # (n, H, W, 3) uint8
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


def _pixels_view(chunk: pa.Array, row_bytes: int) -> np.ndarray:
    """The raw bytes of a `fixed_size_binary` chunk as an (rows, row_bytes) uint8 view."""
    if chunk.null_count:
        raise DataError(f"{chunk.null_count} image(s) have no pixels")
    buf = chunk.buffers()[1]
    flat = np.frombuffer(
        buf, dtype=np.uint8, count=len(chunk) * row_bytes, offset=chunk.offset * row_bytes
    )
    return flat.reshape(len(chunk), row_bytes)


def _labels_array(column: pa.ChunkedArray, kind: LabelKind | None) -> np.ndarray | None:
    """float32 (n, C) multi-hot, int64 (n,) class indices, or None (no or all-null labels)."""
    if kind is None or pa.types.is_null(column.type) or column.null_count == len(column):
        return None
    if column.null_count:
        raise DataError(f"{column.null_count} of {len(column)} labels are missing")
    if kind == "multi_hot":
        width = column.type.list_size
        parts = [np.asarray(c.flatten()).reshape(len(c), width) for c in column.chunks]
        return np.concatenate(parts).astype(np.float32)
    return column.to_numpy().astype(np.int64)


def read_images(folder: str | Path) -> ImageData:
    """Every image of a complete sized shard folder, in shard order (see the module doc).

    Shards are memory-mapped; a folder of one single-chunk shard is viewed without a copy,
    otherwise each shard's pixels are copied into one preallocated array as it is read (peak
    memory: the images plus one shard)."""
    folder = Path(folder)
    manifest = read_sized_manifest(folder)
    records = manifest["shards"]
    if not records:
        raise DataError(f"{folder / MANIFEST} lists no shards")
    size = int(manifest["size"])
    row_bytes = size * size * 3
    count = int(manifest["count"])
    names: list[str] = []
    labels: list[np.ndarray] = []
    kind: LabelKind | None = None
    images: np.ndarray | None = None
    for rec in records:
        path = folder / rec["name"]
        table = pq.read_table(path, memory_map=True)
        missing = {"image_name", "pixels"} - set(table.column_names)
        if missing:
            raise DataError(f"{path} has no column(s) {sorted(missing)}")
        pix_type = table.schema.field("pixels").type
        if not pa.types.is_fixed_size_binary(pix_type) or pix_type.byte_width != row_bytes:
            raise DataError(f"{path}: pixels are {pix_type}, expected {size}x{size}x3 bytes")
        chunks = [c for c in table.column("pixels").chunks if len(c)]
        if len(records) == 1 and len(chunks) == 1 and len(chunks[0]) == count:
            images = _pixels_view(chunks[0], row_bytes)  # zero-copy: views Arrow's buffer
        else:
            if images is None:
                images = np.empty((count, row_bytes), dtype=np.uint8)
            pos = len(names)
            if pos + table.num_rows > count:
                raise DataError(f"{folder}: the shards hold more than the {count} images listed")
            for chunk in chunks:
                images[pos : pos + len(chunk)] = _pixels_view(chunk, row_bytes)
                pos += len(chunk)
        names.extend(table.column("image_name").to_pylist())
        if "label" in table.column_names:
            col = table.column("label")
            kind = _label_kind(manifest, col.type)
            lab = _labels_array(col, kind)
            if lab is not None:
                labels.append(lab)
    if len(names) != count or images is None:
        raise DataError(f"{folder}: the shards hold {len(names)} images, the manifest says {count}")
    label_array = np.concatenate(labels) if labels else None
    if label_array is not None and len(label_array) != count:
        raise DataError(f"{folder}: {len(label_array)} labels for {count} images")
    return ImageData(
        names=names,
        images=images.reshape(count, size, size, 3),
        labels=label_array,
        classes=tuple(manifest.get("classes") or ()),
        label_kind=kind if label_array is not None else None,
    )


# ---------------------------------------------------------------------------------------------
# Augmentation: per-sample draws, batched tensor ops


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """Symmetry `k` (0..7) of the square applied to the last two dims (H, W) of `x`.

    Bit 2 transposes first, then bit 0 flips left-right and bit 1 flips top-bottom: 0 identity,
    1 flip left-right, 2 flip top-bottom, 3 rotate 180, 4 transpose, 5 rotate 90 clockwise,
    6 rotate 90 counter-clockwise, 7 anti-transpose. `dihedral(dihedral(x, k),
    dihedral_inverse(k))` is `x`. Usable on any NCHW batch, e.g. for test-time augmentation.
    """
    if not 0 <= k < 8:
        raise ValueError(f"k must be in 0..7, got {k}")
    if k & 4:
        x = x.transpose(-1, -2)
    dims = [d for d, bit in ((-1, 1), (-2, 2)) if k & bit]
    return x.flip(dims) if dims else x


def dihedral_inverse(k: int) -> int:
    """The symmetry undoing `k` (the two quarter turns swap, the others are involutions)."""
    return {5: 6, 6: 5}.get(k, k)


_NUMPY_DTYPES = {torch.uint8: np.uint8, torch.int32: np.int32, torch.float32: np.float32}


def _empty(shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised tensor. On the CPU its memory comes from numpy, which asks the kernel
    for transparent huge pages for large arrays (`torch.empty` does not, unless
    `THP_MEM_ALLOC_ENABLE=1`): measured on the development VM in a loop like the loader's,
    filling a fresh 12 MB batch took ~2,500 page faults and ~8 ms more with `torch.empty` than
    with `np.empty` (no page faults)."""
    if device.type == "cpu" and dtype in _NUMPY_DTYPES:
        return torch.from_numpy(np.empty(tuple(shape), dtype=_NUMPY_DTYPES[dtype]))
    return torch.empty(tuple(shape), dtype=dtype, device=device)


def _scratch(
    workspace: dict[str, torch.Tensor] | None,
    name: str,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    """A buffer of `shape` reused across calls through `workspace` (fresh when None)."""
    numel = math.prod(shape)
    if workspace is None:
        return _empty(shape, dtype, device)
    buf = workspace.get(name)
    if buf is None or buf.numel() < numel or buf.dtype != dtype or buf.device != device:
        buf = workspace[name] = _empty((numel,), dtype, device)
    return buf[:numel].view(shape)


def lighting(x: torch.Tensor, change: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """fast.ai brightness, then contrast, in logit space on `x` (N, C, H, W) in [0, 1]:
    `sigmoid(scale * (logit(x) + logit(change)))` per sample; change 0.5 and scale 1 leave
    pixels as they are (up to the clamp of `x` to [LOGIT_EPS, 1 - LOGIT_EPS]). Returns a new
    tensor. The loader applies the same function through a lookup table (`lighting_table`)."""
    shape = (-1, 1, 1, 1)
    b = torch.logit(change.to(x.device, x.dtype)).view(shape)
    s = scale.to(x.device, x.dtype).view(shape)
    return torch.sigmoid(s * (torch.logit(x.clamp(LOGIT_EPS, 1 - LOGIT_EPS)) + b))


def lighting_table(
    change: torch.Tensor,
    scale: torch.Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """(N, 3, 256) float32: uint8 value v of channel c of sample i -> normalised
    `lighting(v / 255)`; samples with change 0.5 and scale 1 map to plain `(v / 255 - mean) /
    std`. Computed in float64 (N x 768 values), applied with one `index_select`."""
    dev = torch.device(device)
    p = torch.arange(256, dtype=torch.float64, device=dev) / 255
    change = change.to(dev, torch.float64)
    scale = scale.to(dev, torch.float64)
    lit = torch.sigmoid(
        scale[:, None]
        * (torch.logit(p.clamp(LOGIT_EPS, 1 - LOGIT_EPS))[None] + torch.logit(change)[:, None])
    )
    neutral = ((change == 0.5) & (scale == 1.0))[:, None]
    values = torch.where(neutral, p[None], lit)  # (N, 256)
    m = torch.tensor(mean, dtype=torch.float64, device=dev).view(1, 3, 1)
    s = torch.tensor(std, dtype=torch.float64, device=dev).view(1, 3, 1)
    return ((values[:, None, :] - m) / s).to(torch.float32)


class AugmentDraw(NamedTuple):
    """One batch's random augmentation parameters (CPU tensors, one row per sample)."""

    k: torch.Tensor  # int64 (n,) dihedral symmetry
    scale: torch.Tensor  # float32 (n,) zoom scale, 1 = not zoomed
    centre: torch.Tensor  # float32 (n, 2) crop centre (x, y) in [0, 1]
    change: torch.Tensor  # float32 (n,) brightness, 0.5 = unchanged
    contrast: torch.Tensor  # float32 (n,) contrast scale, 1 = unchanged

    def take(self, order: torch.Tensor) -> AugmentDraw:
        """The draws of the samples `order` (positions), in that order."""
        return AugmentDraw(*(t[order] for t in self))


@dataclass(frozen=True)
class Augment:
    """fast.ai's training augmentation for satellite chips (see the module doc). `dihedral=False`,
    `max_lighting=0` and `max_zoom=1` turn the parts off."""

    dihedral: bool = True
    max_lighting: float = 0.1
    p_lighting: float = 0.75
    max_zoom: float = 1.05
    p_zoom: float = 0.75

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_lighting < 1.0:
            raise ValueError(f"max_lighting must be in [0, 1), got {self.max_lighting}")
        if self.max_zoom < 1.0:
            raise ValueError(f"max_zoom must be >= 1, got {self.max_zoom}")
        for p in (self.p_lighting, self.p_zoom):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"probabilities must be in [0, 1], got {p}")

    def draw(self, n: int, generator: torch.Generator) -> AugmentDraw:
        """Per-sample parameters for `n` images, drawn in a fixed order from `generator`;
        a part turned off leaves its neutral value."""

        def uniform(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, generator=generator)

        k = torch.randint(0, 8, (n,), generator=generator)
        scale = torch.where(uniform(n) < self.p_zoom, 1.0 + uniform(n) * (self.max_zoom - 1.0), 1.0)
        centre = uniform(n, 2)
        lo = 0.5 * (1 - self.max_lighting)
        change = torch.where(uniform(n) < self.p_lighting, lo + uniform(n) * self.max_lighting, 0.5)
        log_lo = math.log(1 - self.max_lighting)
        contrast = torch.where(
            uniform(n) < self.p_lighting, torch.exp(log_lo - 2 * log_lo * uniform(n)), 1.0
        )
        if not self.dihedral:
            k.zero_()
        if self.max_lighting == 0:
            change.fill_(0.5)
            contrast.fill_(1.0)
        return AugmentDraw(k, scale, centre, change, contrast)


def _runs(flags: Sequence[bool]) -> list[tuple[int, int, bool]]:
    """Maximal runs [start, stop) of equal flags, with the flag."""
    runs: list[tuple[int, int, bool]] = []
    start = 0
    for i in range(1, len(flags) + 1):
        if i == len(flags) or flags[i] != flags[start]:
            runs.append((start, i, bool(flags[start])))
            start = i
    return runs


def crop_boxes(
    scale: torch.Tensor, centre: torch.Tensor, size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Integer crops for zoom `scale` (>= 1) placed by `centre` (x, y in [0, 1]): side
    `round(size / scale)` and top-left (y0, x0) `round(centre * (size - side))`, inside the
    image. int64 CPU tensors (side, y0, x0)."""
    side = torch.round(size / scale.double()).clamp(1, size).long()
    room = (size - side).double()
    x0 = torch.round(centre[:, 0].double() * room).long()
    y0 = torch.round(centre[:, 1].double() * room).long()
    return side, y0, x0


def _upsize(crop: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (n, c, c, 3) -> uint8 (n, size, size, 3), bilinear (align_corners=False). On the
    CPU torch's uint8 kernel (AVX2; ~2 ms for 64 crops to 128 px, a float path ~8-13 ms);
    elsewhere through float32 and rounding."""
    x = crop.permute(0, 3, 1, 2)
    if crop.device.type == "cpu":
        y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    else:
        y = F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False)
        y = y.round_().clamp_(0, 255).to(torch.uint8)
    return y.permute(0, 2, 3, 1)


def _windows(flat: torch.Tensor, width: int) -> torch.Tensor:
    """Every run of `width` pixels of a flat uint8 RGB buffer, as rows of a (starts, 3 width)
    view (overlapping, no copy): `index_select` on it copies whole crop rows with memcpy."""
    starts = flat.numel() // 3 - width + 1
    return flat.as_strided((starts, 3 * width), (3, 1), flat.storage_offset())


def _flips_zoom(
    pixels: torch.Tensor,
    draw: AugmentDraw,
    workspace: dict[str, torch.Tensor] | None,
) -> torch.Tensor:
    """uint8 (N, L, L, 3) -> the flipped, zoomed uint8 batch, same layout; the transposes of
    `draw.k` are left to `_transpose_into`. Flips are conjugated by the transpose applied after
    them (T F_lr = F_tb T), so the result followed by the transposes is `dihedral(zoom(x), k)`.

    Samples are grouped by crop side (at most L - L/max_zoom + 1 sides, 7 at 128 px) and by
    left-right flip. A group's crops are one `index_select` of crop rows from an overlapping
    window view of the pixel buffer (top-bottom flips reverse the row order); left-right flipped
    samples read from a flipped copy of themselves; zoomed groups are then resized back with one
    bilinear `F.interpolate` each. (`torch.gather` of crop bytes took ~9x the time of the
    window `index_select`; `index_copy_` of uint8 images ~40x an `index_select` of whole
    images, so groups are stacked, then gathered back into sample order.)"""
    n, size = pixels.shape[0], pixels.shape[1]
    dev = pixels.device
    # index bookkeeping in numpy: tens of tiny operations, ~1 us each there, ~10 us in torch
    k = draw.k.to("cpu").numpy()
    swap = (k & 4) != 0
    flip_lr = np.where(swap, (k >> 1) & 1, k & 1).astype(bool)
    flip_tb = np.where(swap, k & 1, (k >> 1) & 1).astype(bool)
    side, y0, x0 = (t.numpy() for t in crop_boxes(draw.scale.cpu(), draw.centre.cpu(), size))
    if not (flip_lr.any() or flip_tb.any() or (side != size).any()):
        return pixels
    pixels = pixels.contiguous()
    sources = {False: pixels.view(-1)}
    rank = np.arange(n)  # each sample's position in the buffer it is read from
    if flip_lr.any():
        lr = np.flatnonzero(flip_lr)
        chosen = _scratch(workspace, "chosen", (len(lr), size, size, 3), torch.uint8, dev)
        torch.index_select(pixels, 0, torch.from_numpy(lr).to(dev), out=chosen)
        sources[True] = chosen.flip(2).reshape(-1)
        rank[lr] = np.arange(len(lr))
        x0 = np.where(flip_lr, size - x0 - side, x0)  # the same crop, seen in the flip
    stacked = _scratch(workspace, "stacked", (n, size, size, 3), torch.uint8, dev)
    order: list[np.ndarray] = []
    pos = 0
    for c in np.unique(side).tolist():
        for is_lr in (False, True):
            sel = np.flatnonzero((side == c) & (flip_lr == is_lr))
            m = len(sel)
            if not m:
                continue
            r = np.arange(c)
            rows = np.where(flip_tb[sel, None], c - 1 - r, r) + y0[sel, None]
            starts = torch.from_numpy((rank[sel, None] * size + rows) * size + x0[sel, None])
            windows = _windows(sources[is_lr], c)
            if c == size:
                dest = stacked[pos : pos + m].view(m * c, c * 3)
                torch.index_select(windows, 0, starts.view(-1).to(dev), out=dest)
            else:
                crop = _scratch(workspace, "crop", (m * c, c * 3), torch.uint8, dev)
                torch.index_select(windows, 0, starts.view(-1).to(dev), out=crop)
                stacked[pos : pos + m].copy_(_upsize(crop.view(m, c, c, 3), size))
            order.append(sel)
            pos += m
    perm = np.concatenate(order)
    if (perm == np.arange(n)).all():
        return stacked
    inverse = np.empty(n, dtype=np.int64)
    inverse[perm] = np.arange(n)
    out = _scratch(workspace, "zoomed", (n, size, size, 3), torch.uint8, dev)
    torch.index_select(
        stacked.view(n, -1), 0, torch.from_numpy(inverse).to(dev), out=out.view(n, -1)
    )
    return out


def _transpose_into(dst: torch.Tensor, src: torch.Tensor, swap: Sequence[bool]) -> torch.Tensor:
    """dst (N, 3, L, L) <- src (N, L, L, 3) as NCHW, transposing the samples flagged in `swap`
    (one strided copy per run of equal flags, converting dtype on the way)."""
    view = src.permute(0, 3, 1, 2)
    for a, b, t in _runs(swap):
        dst[a:b].copy_(view[a:b].transpose(2, 3) if t else view[a:b])
    return dst


def augment_geometry(
    pixels: torch.Tensor, draw: AugmentDraw, workspace: dict[str, torch.Tensor] | None = None
) -> torch.Tensor:
    """The zoom and dihedral symmetry of `draw` on a uint8 (N, L, L, 3) batch -> a new uint8
    (N, 3, L, L) batch: sample i is `dihedral(zoom_i(x[i]), draw.k[i])`, where zoom_i crops
    `crop_boxes(...)` and resizes it back bilinearly. With scale 1 it is exactly `dihedral`.
    (`to_model_input` runs the same steps, ending in its lookup table instead of uint8.)"""
    n, h, w, _ = pixels.shape
    if h != w:
        raise ValueError(f"augmentation needs square images, got {h}x{w}")
    z = _flips_zoom(pixels, draw, workspace)
    out = _empty((n, 3, h, w), torch.uint8, pixels.device)
    return _transpose_into(out, z, ((draw.k.to("cpu") & 4) != 0).tolist())


def to_model_input(
    pixels: torch.Tensor,
    draw: AugmentDraw | None = None,
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    channels_last: bool = False,
    workspace: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """A uint8 (N, H, W, 3) batch -> a new normalised float32 (N, 3, H, W) batch on the same
    device, augmented by `draw` when given. `workspace` (any dict kept between calls) holds
    scratch buffers so repeated calls do not allocate them again.

    Augmented, everything but the last step stays uint8: flips and zoom (`_flips_zoom`), then
    the transposes while widening to int32 lookup indices (`_transpose_into`), then one
    `index_select` into a per-sample table that applies lighting and normalisation at once
    (`lighting_table`; lighting is pointwise, so applying it last commutes exactly with the
    symmetries and up to uint8 rounding with the zoom).
    """
    x = pixels.permute(0, 3, 1, 2)  # NCHW view of the NHWC bytes
    n, c, h, w = x.shape
    dev = x.device
    if draw is None:
        out = _empty((n, c, h, w), torch.float32, dev)
        out.copy_(x)
        s = torch.tensor(std, dtype=torch.float32, device=dev).view(1, 3, 1, 1)
        m = torch.tensor(mean, dtype=torch.float32, device=dev).view(1, 3, 1, 1)
        out.mul_(1 / (255 * s)).sub_(m / s)
    else:
        if h != w:
            raise ValueError(f"augmentation needs square images, got {h}x{w}")
        z = _flips_zoom(pixels, draw, workspace)
        index = _scratch(workspace, "index", (n, c, h, w), torch.int32, dev)
        _transpose_into(index, z, ((draw.k.to("cpu") & 4) != 0).tolist())
        index.add_(torch.arange(n * c, dtype=torch.int32, device=dev).view(n, c, 1, 1) * 256)
        table = lighting_table(draw.change, draw.contrast, mean, std, dev).view(-1)
        out = _empty((n, c, h, w), torch.float32, dev)
        torch.index_select(table, 0, index.view(-1), out=out.view(-1))
    if channels_last:  # same shape, NHWC memory
        out = _empty((n, h, w, c), torch.float32, dev).permute(0, 3, 1, 2).copy_(out)
    return out


# ---------------------------------------------------------------------------------------------
# The loader


class Batch(NamedTuple):
    """A batch on the device: normalised float32 (N, 3, H, W) images and their targets (float32
    (N, C) multi-hot or int64 (N,) class indices; None for unlabelled images)."""

    images: torch.Tensor
    targets: torch.Tensor | None


def batch_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (e.g. seed, epoch, batch number)."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))


class _WorkerState:
    """What one worker thread reuses from batch to batch."""

    def __init__(self, shape: tuple[int, ...], device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.pixels = torch.empty(shape, dtype=torch.uint8, pin_memory=self.cuda)
        self.pixels_np = self.pixels.numpy()
        self.stream = torch.cuda.Stream(device) if self.cuda else None
        self.copied = torch.cuda.Event() if self.cuda else None
        self.workspace: dict[str, torch.Tensor] = {}


class Loader:
    """Batches of `data` (all of it, or the images `indices` selects: names, a boolean mask or
    positions; see `ImageData.indices`) on `device`, as `Batch(images, targets)`.

    Each `iter(loader)` is one epoch (`loader.epoch` counts them; `set_epoch` or `iter_epoch(e)`
    picks one). `shuffle` draws a new order per epoch from (seed, epoch); without it the order is
    the selection's. `drop_last` drops a last, smaller batch. `augment` (training) is applied per
    sample on the device, drawn from (seed, epoch, batch number). `workers` threads prepare
    batches ahead, each keeping up to `prefetch` finished ones. On CUDA the gather buffer is
    pinned, copies are non-blocking and each worker has its own stream; `channels_last` gives
    the images that memory format (on any device).

        data = read_images(dirs.sized_shards(128, "train"))
        train = Loader(data, split.train_names, shuffle=True, drop_last=True,
                       augment=Augment(), device="cuda", channels_last=True)
        valid = Loader(data, split.valid_names, batch_size=128, device="cuda")
        for epoch in range(epochs):
            for images, targets in train: ...
    """

    def __init__(
        self,
        data: ImageData,
        indices: Sequence[str] | np.ndarray | None = None,
        *,
        batch_size: int = 64,
        shuffle: bool = False,
        drop_last: bool = False,
        augment: Augment | None = None,
        device: str | torch.device = "cpu",
        seed: int = 0,
        workers: int = 1,
        prefetch: int = 2,
        channels_last: bool = False,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        if batch_size < 1 or workers < 1 or prefetch < 1:
            raise ValueError("batch_size, workers and prefetch must be >= 1")
        self.data = data
        self.indices = data.indices(indices)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.augment = augment
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {self.device} asked for, but CUDA is not available")
        self.seed = seed
        self.workers = workers
        self.prefetch = prefetch
        self.channels_last = channels_last
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.epoch = 0

    def __len__(self) -> int:
        n = len(self.indices)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next `iter(loader)` runs."""
        self.epoch = epoch

    def batch_indices(self, epoch: int) -> list[np.ndarray]:
        """The positions (into `data`) of each batch of `epoch`, in order."""
        order = self.indices
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(order)
        bs = self.batch_size
        batches = [order[i : i + bs] for i in range(0, len(order), bs)]
        if self.drop_last and batches and len(batches[-1]) < bs:
            batches.pop()
        return batches

    def __iter__(self) -> Iterator[Batch]:
        epoch = self.epoch
        self.epoch += 1
        return self.iter_epoch(epoch)

    def iter_epoch(self, epoch: int) -> Iterator[Batch]:
        """The batches of `epoch` (reproducible: same seed and epoch, same batches)."""
        plan = self.batch_indices(epoch)
        if not plan:
            return
        n_workers = min(self.workers, len(plan))
        stop = threading.Event()
        queues: list[queue.Queue[Any]] = [queue.Queue(self.prefetch) for _ in range(n_workers)]
        threads = [
            threading.Thread(
                target=self._work,
                args=(plan, epoch, j, n_workers, queues[j], stop),
                name=f"planet-loader-{j}",
                daemon=True,
            )
            for j in range(n_workers)
        ]
        for t in threads:
            t.start()
        try:
            for b in range(len(plan)):
                item = self._next(queues[b % n_workers], threads[b % n_workers])
                if isinstance(item, BaseException):
                    raise item
                yield self._ready(*item)
        finally:
            stop.set()
            for q in queues:  # unblock a worker waiting to put
                while not q.empty():
                    q.get_nowait()
            for t in threads:
                t.join()

    @staticmethod
    def _next(q: queue.Queue[Any], thread: threading.Thread) -> Any:
        while True:
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                if not thread.is_alive() and q.empty():
                    raise RuntimeError(f"loader thread {thread.name} ended early") from None

    def _ready(self, images: torch.Tensor, targets: torch.Tensor | None, done: Any) -> Batch:
        if done is not None:  # CUDA: the consumer's stream waits for the worker's stream
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(done)
            images.record_stream(stream)
            if targets is not None:
                targets.record_stream(stream)
        return Batch(images, targets)

    def _work(
        self,
        plan: list[np.ndarray],
        epoch: int,
        first: int,
        step: int,
        out: queue.Queue[Any],
        stop: threading.Event,
    ) -> None:
        def put(item: Any) -> None:
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.05)
                    return
                except queue.Full:
                    continue

        try:
            shape = (self.batch_size, *self.data.images.shape[1:])
            state = _WorkerState(shape, self.device)
            for b in range(first, len(plan), step):
                if stop.is_set():
                    return
                put(self._make(plan[b], epoch, b, state))
        except BaseException as exc:  # handed to the consumer, raised there
            put(exc)

    def _make(
        self, idx: np.ndarray, epoch: int, b: int, state: _WorkerState
    ) -> tuple[torch.Tensor, torch.Tensor | None, Any]:
        n = len(idx)
        draw = None
        if self.augment is not None:
            gen = torch.Generator().manual_seed(batch_seed(self.seed, epoch, b))
            draw = self.augment.draw(n, gen)
            # transposed samples last: one strided copy for each kind instead of one per run
            order = np.argsort(((draw.k & 4) != 0).numpy(), kind="stable")
            idx, draw = idx[order], draw.take(torch.from_numpy(order))
        labels = self.data.labels
        targets = None if labels is None else torch.from_numpy(np.take(labels, idx, axis=0))
        if state.copied is not None:
            state.copied.synchronize()  # the previous batch's copy out of the buffer is done
        np.take(self.data.images, idx, axis=0, out=state.pixels_np[:n], mode="clip")
        kwargs = {
            "mean": self.mean,
            "std": self.std,
            "channels_last": self.channels_last,
            "workspace": state.workspace,
        }
        if state.stream is None:
            return to_model_input(state.pixels[:n], draw, **kwargs), targets, None
        with torch.cuda.stream(state.stream):
            pixels = state.pixels[:n].to(self.device, non_blocking=True)
            state.copied.record(state.stream)
            if targets is not None:
                targets = targets.to(self.device, non_blocking=True)
            images = to_model_input(pixels, draw, **kwargs)
            done = torch.cuda.Event()
            done.record(state.stream)
        return images, targets, done
