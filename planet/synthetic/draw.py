"""Fast vectorised drawing on channel-planar float32 images (shape (3, H, W), values 0..255).

Planar layout keeps every per-pixel operation on contiguous rows; only `to_jpeg` interleaves
the channels, once, for the encoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import simplejpeg
from PIL import Image

JPEG_QUALITY = 90


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth noise in [-1, 1]: a `cells` x `cells` random grid upsampled bicubically."""
    grid = rng.standard_normal((cells, cells)).astype(np.float32)
    img = Image.fromarray(grid, mode="F").resize((size, size), Image.Resampling.BICUBIC)
    a = np.asarray(img, dtype=np.float32)
    return a / (np.abs(a).max() + 1e-6)


@dataclass
class TextureBank:
    """Precomputed noise tiles; each image crops them at random offsets (views, no copies)."""

    smooth: list[np.ndarray]  # (T, T) float32 in [-1, 1], three scales mixed
    grain: np.ndarray  # (3, T, T) float32 ~ N(0, 1)

    @classmethod
    def make(cls, rng: np.random.Generator, tile: int = 512, n_smooth: int = 4) -> TextureBank:
        tiles = []
        for _ in range(n_smooth):
            t = (
                0.5 * smooth_noise(rng, tile, tile // 64)
                + 0.3 * smooth_noise(rng, tile, tile // 16)
                + 0.2 * smooth_noise(rng, tile, tile // 5)
            )
            tiles.append((t / np.abs(t).max()).astype(np.float32))
        grain = rng.standard_normal((3, tile, tile)).astype(np.float32)
        return cls(tiles, grain)

    @property
    def tile(self) -> int:
        return self.smooth[0].shape[0]

    def tex(self, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
        """An (h, w) crop of a random smooth tile (h, w <= tile size)."""
        t = self.smooth[int(rng.integers(len(self.smooth)))]
        y = int(rng.integers(0, self.tile - h + 1))
        x = int(rng.integers(0, self.tile - w + 1))
        return t[y : y + h, x : x + w]

    def noise(self, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
        """A (3, h, w) crop of the per-pixel Gaussian grain."""
        y = int(rng.integers(0, self.tile - h + 1))
        x = int(rng.integers(0, self.tile - w + 1))
        return self.grain[:, y : y + h, x : x + w]


def color(rng: np.random.Generator, base: tuple[float, float, float], jitter: float) -> np.ndarray:
    """`base` RGB jittered uniformly by +-`jitter` per channel, shaped (3, 1, 1)."""
    c = np.asarray(base, dtype=np.float32) + rng.uniform(-jitter, jitter, 3).astype(np.float32)
    return c.reshape(3, 1, 1)


def grey(rng: np.random.Generator, level: float, jitter: float, tint: float = 3.0) -> np.ndarray:
    """A grey `level` +-`jitter` (shared by the channels) +-`tint` per channel, shaped (3, 1, 1)."""
    g = level + rng.uniform(-jitter, jitter)
    return color(rng, (g, g, g), tint)


def blend(img: np.ndarray, mask: np.ndarray, col: np.ndarray, y0: int = 0, x0: int = 0) -> None:
    """In place: the window of `img` at (y0, x0) moves towards `col` by `mask` (0..1); the
    parts of `mask` outside `img` are ignored."""
    _, H, W = img.shape
    h, w = mask.shape
    ys, xs = max(0, y0), max(0, x0)
    ye, xe = min(H, y0 + h), min(W, x0 + w)
    if ye <= ys or xe <= xs:
        return
    m = mask[ys - y0 : ye - y0, xs - x0 : xe - x0]
    sub = img[:, ys:ye, xs:xe]
    sub += m * (col - sub)


def ellipse(
    img: np.ndarray,
    rng: np.random.Generator,
    bank: TextureBank,
    cy: float,
    cx: float,
    ry: float,
    rx: float,
    col: np.ndarray,
    *,
    alpha: float = 1.0,
    rough: float = 0.35,
    soft: float = 0.15,
    angle: float = 0.0,
) -> None:
    """A (rotated) ellipse with an edge roughened by texture, blended in at `alpha`."""
    _, H, W = img.shape
    r = max(ry, rx) * (1.0 + rough) + 2.0
    y0, y1 = max(0, int(cy - r)), min(H, int(cy + r) + 1)
    x0, x1 = max(0, int(cx - r)), min(W, int(cx + r) + 1)
    if y1 <= y0 or x1 <= x0:
        return
    yy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(cy)
    xx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(cx)
    if angle:
        c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
        yy, xx = c * yy - s * xx, s * yy + c * xx
    d = (yy / np.float32(ry)) ** 2 + (xx / np.float32(rx)) ** 2
    if rough:
        d = d + np.float32(rough) * bank.tex(rng, y1 - y0, x1 - x0)
    m = np.clip((1.0 - d) * np.float32(1.0 / soft), 0.0, alpha)
    blend(img, m, col, y0, x0)


def _ellipse_window(
    H: int, W: int, cy: float, cx: float, ry: float, rx: float, angle: float
) -> tuple[int, int, np.ndarray] | None:
    """(y0, x0, mask) of a soft-edged (rotated) ellipse, clipped to an (H, W) image."""
    r = max(ry, rx) + 2.0
    y0, y1 = max(0, int(cy - r)), min(H, int(cy + r) + 1)
    x0, x1 = max(0, int(cx - r)), min(W, int(cx + r) + 1)
    if y1 <= y0 or x1 <= x0:
        return None
    yy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(cy)
    xx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(cx)
    if angle:
        c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
        yy, xx = c * yy - s * xx, s * yy + c * xx
    # (1 - d) * min radius / 2 approximates the distance inside the boundary in pixels
    d = (yy / np.float32(ry)) ** 2 + (xx / np.float32(rx)) ** 2
    return y0, x0, np.clip((1.0 - d) * np.float32(min(ry, rx) / 2.0) + 0.5, 0.0, 1.0)


def _polygon_window(H: int, W: int, pts: np.ndarray) -> tuple[int, int, np.ndarray] | None:
    """(y0, x0, mask) of a soft-edged convex polygon, clipped to an (H, W) image."""
    y0, y1 = max(0, int(pts[:, 0].min())), min(H, int(pts[:, 0].max()) + 2)
    x0, x1 = max(0, int(pts[:, 1].min())), min(W, int(pts[:, 1].max()) + 2)
    if y1 <= y0 or x1 <= x0:
        return None
    return y0, x0, polygon_mask(y1 - y0, x1 - x0, pts - np.array([y0, x0], dtype=np.float64))


def _max_into(mask: np.ndarray, win: tuple[int, int, np.ndarray] | None, value: float) -> None:
    if win is None:
        return
    y0, x0, m = win
    sub = mask[y0 : y0 + m.shape[0], x0 : x0 + m.shape[1]]
    np.maximum(sub, np.minimum(m, np.float32(value)), out=sub)


def ellipse_into(
    mask: np.ndarray,
    cy: float,
    cx: float,
    ry: float,
    rx: float,
    *,
    angle: float = 0.0,
    value: float = 1.0,
) -> None:
    """In place: `mask` = max(`mask`, a soft-edged (rotated) ellipse of height `value`)."""
    _max_into(mask, _ellipse_window(*mask.shape, cy, cx, ry, rx, angle), value)


def polygon_into(mask: np.ndarray, pts: np.ndarray, *, value: float = 1.0) -> None:
    """In place: `mask` = max(`mask`, the convex polygon `pts` ((k, 2) array of (y, x)) with a
    one-pixel soft edge, of height `value`)."""
    _max_into(mask, _polygon_window(*mask.shape, pts), value)


def fill_ellipse(
    img: np.ndarray,
    cy: float,
    cx: float,
    ry: float,
    rx: float,
    col: np.ndarray,
    *,
    angle: float = 0.0,
    alpha: float = 1.0,
) -> None:
    """In place: blend a soft-edged (rotated) ellipse of colour `col` into `img`."""
    win = _ellipse_window(img.shape[1], img.shape[2], cy, cx, ry, rx, angle)
    if win is not None:
        blend(img, win[2] * np.float32(alpha), col, win[0], win[1])


def fill_polygon(img: np.ndarray, pts: np.ndarray, col: np.ndarray, *, alpha: float = 1.0) -> None:
    """In place: blend a soft-edged convex polygon of colour `col` into `img`."""
    win = _polygon_window(img.shape[1], img.shape[2], pts)
    if win is not None:
        blend(img, win[2] * np.float32(alpha), col, win[0], win[1])


def polygon_mask(h: int, w: int, pts: np.ndarray) -> np.ndarray:
    """A float32 (h, w) mask of the convex polygon `pts` ((k, 2) array of (y, x), either
    winding), with a one-pixel soft edge."""
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    sign = 1.0 if _area2(pts) < 0 else -1.0
    m = np.ones((h, w), dtype=np.float32)
    for (ay, ax), (by, bx) in zip(pts, np.roll(pts, -1, axis=0), strict=True):
        ey, ex = by - ay, bx - ax
        norm = np.hypot(ey, ex) or 1.0
        # signed distance to the edge's line, positive inside
        dist = sign * ((xx - ax) * ey - (yy - ay) * ex) / norm
        np.minimum(m, np.clip(dist + 0.5, 0.0, 1.0), out=m)
    return m


def _area2(pts: np.ndarray) -> float:
    y, x = pts[:, 0], pts[:, 1]
    return float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))


def line_mask(
    h: int,
    w: int,
    rng: np.random.Generator,
    width: float,
    *,
    wiggle: float = 0.0,
    margin: float = 30.0,
) -> np.ndarray:
    """An anti-aliased line of half-width `width` across an (h, w) image at a random angle
    through a random point; with `wiggle`, it meanders sinusoidally by that many pixels."""
    theta = rng.uniform(0.0, np.pi)
    py, px = rng.uniform(margin, h - margin), rng.uniform(margin, w - margin)
    nx, ny = np.float32(np.cos(theta)), np.float32(np.sin(theta))
    yy = np.arange(h, dtype=np.float32)[:, None] - np.float32(py)
    xx = np.arange(w, dtype=np.float32)[None, :] - np.float32(px)
    d = nx * xx + ny * yy
    if wiggle:
        along = nx * yy - ny * xx
        d += np.float32(wiggle) * np.sin(
            along * np.float32(rng.uniform(0.03, 0.08)) + rng.uniform(0, 6.3)
        )
    np.abs(d, out=d)
    np.subtract(np.float32(width), d, out=d)
    return np.clip(d, 0.0, 1.0, out=d)


def to_jpeg(img: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """Encode a planar float32 (3, H, W) image as an RGB JPEG (4:2:0)."""
    _, h, w = img.shape
    np.clip(img, 0.0, 255.0, out=img)
    out = np.empty((h, w, 3), dtype=np.uint8)
    for k in range(3):
        out[..., k] = img[k]
    return simplejpeg.encode_jpeg(out, quality=quality, colorspace="RGB", colorsubsampling="420")
