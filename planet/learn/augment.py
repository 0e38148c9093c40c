"""Batched, per-sample augmentation on the batch's device (`Augment`, `to_model_input`).

fast.ai's `get_transforms(flip_vert=True, max_lighting=0.1, max_zoom=1.05, max_warp=0.)` of the
Planet lesson, every parameter drawn per sample:

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
symmetries and, up to uint8 rounding, with the zoom). This is faster than float ops and
`F.grid_sample`; CPU output memory comes from numpy (`_empty`), which avoids the page faults of
a fresh `torch.empty` batch. Measurements: bench/README.md.

Why plain torch ops and not `torchvision.transforms.v2`: v2 transforms accept a batch
(`[..., C, H, W]`) but draw their random parameters once per call, for the whole batch
(checked with torchvision 0.29.1: `RandomHorizontalFlip` flipped all 64 images of a batch or
none, on every call; `ColorJitter` gave all 64 the same brightness factor). Per-sample draws
with v2 need a Python loop over samples, one kernel launch per image on a GPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from planet.constants import IMAGENET_MEAN, IMAGENET_STD

LOGIT_EPS = 1e-6  # pixels are clamped to [eps, 1 - eps] before the logit


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
        # computed in float64: on the CPU for devices without float64 (mps), then moved
        table_dev = dev if dev.type in ("cpu", "cuda") else torch.device("cpu")
        table = lighting_table(draw.change, draw.contrast, mean, std, table_dev).to(dev).view(-1)
        out = _empty((n, c, h, w), torch.float32, dev)
        torch.index_select(table, 0, index.view(-1), out=out.view(-1))
    if channels_last:  # same shape, NHWC memory
        out = _empty((n, h, w, c), torch.float32, dev).permute(0, 3, 1, 2).copy_(out)
    return out
