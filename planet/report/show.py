"""Pictures of a batch: a grid of images, each with its tags written under it, as PNG.

`show_batch` writes the PNG atomically and returns its path; `batch_png` returns the bytes (for
a Prefect markdown artifact as a `data:` URI, `png_data_uri`); `render_batch` gives the Pillow
image. Images are uint8 `(n, H, W, 3)` arrays or tensors, or a loader `Batch` (normalised float
NCHW, turned back into pixels with the same mean and std). Labels are multi-hot rows (Planet:
the names of the classes set), class indices (Dogs vs Cats: `cat`/`dog`) or None.

Pillow, not matplotlib: a grid of tiles with a caption is a paste and a `text` call per tile,
Pillow is already a dependency (matplotlib is not), and it needs no backend or figure state
(safe in worker threads). The caption font is Pillow's bundled one (`load_default(size)`), so
the output does not depend on the fonts installed.
"""

from __future__ import annotations

import base64
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from planet.constants import IMAGENET_MEAN, IMAGENET_STD
from planet.fileio import atomic_path

PAD = 6  # pixels between tiles and around the grid
MIN_TILE = 128  # smaller images are enlarged (nearest neighbour) so captions fit
FONT_SIZE = 12
BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, on any device
        return x.detach().to("cpu").numpy()
    return np.asarray(x)


def to_pixels(
    images: Any,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> np.ndarray:
    """uint8 (n, H, W, 3) pixels from uint8 (n, H, W, 3) images or a normalised float
    (n, 3, H, W) batch (undoing `(x / 255 - mean) / std`)."""
    arr = _numpy(images)
    if arr.ndim != 4:
        raise ValueError(f"expected a batch of images (4 dims), got shape {arr.shape}")
    if arr.dtype == np.uint8:
        if arr.shape[-1] != 3:
            raise ValueError(f"uint8 images must be (n, H, W, 3), got {arr.shape}")
        return arr
    if arr.shape[1] != 3:
        raise ValueError(f"float images must be normalised (n, 3, H, W), got {arr.shape}")
    m = np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1)
    pix = np.clip(np.rint((arr.astype(np.float32) * s + m) * 255), 0, 255).astype(np.uint8)
    return pix.transpose(0, 2, 3, 1)


def captions(labels: Any, classes: Sequence[str], n: int) -> list[str]:
    """One caption per image: the names of the set classes of multi-hot rows (in class
    order), the class of an index, or '' without labels."""
    if labels is None:
        return [""] * n
    lab = _numpy(labels)
    if len(lab) != n:
        raise ValueError(f"{len(lab)} labels for {n} images")

    def name(i: int) -> str:
        return classes[i] if 0 <= i < len(classes) else str(i)

    if lab.ndim == 2:
        return [" ".join(name(int(j)) for j in np.flatnonzero(row > 0.5)) for row in lab]
    return [name(int(v)) for v in lab]


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> list[str]:
    """Greedy word wrap of `text` to lines at most `width` pixels wide (each line of `text`
    wrapped on its own)."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        start = len(lines)
        for word in paragraph.split():
            if len(lines) > start and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
                lines[-1] = f"{lines[-1]} {word}"
            else:
                lines.append(word)
    return lines


def render_batch(
    images: Any,
    labels: Any = None,
    classes: Sequence[str] = (),
    *,
    ncols: int = 8,
    title: str | None = None,
    max_images: int | None = None,
    tile: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    texts: Sequence[str] | None = None,
    colors: Sequence[tuple[int, int, int]] | None = None,
) -> Image.Image:
    """The grid as a Pillow RGB image: `ncols` tiles per row (fewer when there are fewer
    images), each image with its caption under it, an optional title on top. Tiles are `tile`
    pixels wide (default: the image size, enlarged to at least `MIN_TILE`); `max_images`
    shows the first ones only. A loader `Batch` may be passed as `images` (its targets are
    the labels unless `labels` is given). `texts`, one per image, are the captions instead of
    the labels' (a newline starts a line); `colors` are the captions' RGB colours."""
    if hasattr(images, "images") and hasattr(images, "targets"):
        labels = images.targets if labels is None else labels
        images = images.images
    pix = to_pixels(images, mean, std)
    labels_arr = None if labels is None else _numpy(labels)
    n_given = len(pix)
    if max_images is not None:
        pix = pix[:max_images]
        labels_arr = None if labels_arr is None else labels_arr[:max_images]
    n, h, w, _ = pix.shape
    if n == 0:
        raise ValueError("no images to show")
    if texts is None:
        texts = captions(labels_arr, classes, n)
    elif len(texts) != n_given:
        raise ValueError(f"{len(texts)} captions for {n_given} images")
    else:
        texts = list(texts)[:n]
    if colors is not None and len(colors) < n:
        raise ValueError(f"{len(colors)} caption colours for {n} images")
    if tile is None:
        zoom = max(1, math.ceil(MIN_TILE / max(h, w)))
        tw, th = w * zoom, h * zoom
    else:
        if tile < 1:
            raise ValueError(f"tile must be >= 1 pixel, got {tile}")
        tw, th = tile, max(1, round(h * tile / w))
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)

    font = ImageFont.load_default(size=FONT_SIZE)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = FONT_SIZE + 3
    wrapped = [_wrap(probe, t, font, tw) for t in texts]
    caption_h = line_h * max(1, max(len(lines) for lines in wrapped))
    title_h = line_h + PAD if title else 0

    width = PAD + ncols * (tw + PAD)
    height = PAD + title_h + nrows * (th + caption_h + PAD)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((PAD, PAD), title, fill=TEXT, font=font)
    for i in range(n):
        row, col = divmod(i, ncols)
        x = PAD + col * (tw + PAD)
        y = PAD + title_h + row * (th + caption_h + PAD)
        im = Image.fromarray(pix[i])
        if (tw, th) != (w, h):  # enlarge with nearest (crisp pixels), reduce with bilinear
            resample = Image.Resampling.NEAREST if tw > w else Image.Resampling.BILINEAR
            im = im.resize((tw, th), resample)
        canvas.paste(im, (x, y))
        for j, line in enumerate(wrapped[i]):
            fill = TEXT if colors is None else tuple(colors[i])
            draw.text((x, y + th + j * line_h), line, fill=fill, font=font)
    return canvas


def batch_png(images: Any, labels: Any = None, classes: Sequence[str] = (), **kwargs: Any) -> bytes:
    """The PNG bytes of `render_batch(images, labels, classes, **kwargs)`."""
    buf = io.BytesIO()
    render_batch(images, labels, classes, **kwargs).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def png_data_uri(png: bytes) -> str:
    """A `data:image/png;base64,...` URI, e.g. for a markdown artifact's `![batch](...)`."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def show_batch(
    images: Any,
    labels: Any,
    classes: Sequence[str],
    path: str | os.PathLike[str],
    **kwargs: Any,
) -> Path:
    """Write the grid of `render_batch` as a PNG at `path` (atomically) and return the path."""
    data = batch_png(images, labels, classes, **kwargs)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def show_random_batch(
    images: Any,
    labels: Any,
    classes: Sequence[str],
    path: str | os.PathLike[str],
    *,
    n: int = 16,
    seed: int = 0,
    title: str = "",
) -> tuple[Path, int]:
    """`show_batch` of `n` images drawn without replacement (seeded, in their order) from
    `images`/`labels` (all of a split); the path and how many it shows."""
    rng = np.random.default_rng(seed)
    # `images[pick]` gathers only the shown images (`read_images` maps the shards: no copy)
    pick = np.sort(rng.choice(len(images), size=min(n, len(images)), replace=False))
    path = show_batch(
        images[pick],
        None if labels is None else labels[pick],
        classes,
        path,
        ncols=4,
        title=title.format(n=len(pick)),
    )
    return path, len(pick)
