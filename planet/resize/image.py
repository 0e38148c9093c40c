"""One image: decode a JPEG and resize it to a `size x size` uint8 RGB array (`resize_jpeg`).

libjpeg-turbo (through `simplejpeg`) decodes straight to a smaller image by scaling in the DCT
domain (factors n/8): `decode_jpeg(min_height=, min_width=)` picks the smallest factor whose
output is at least the wanted size, so most of the reduction costs less than a full decode and
averages the source pixels. When that output is not exactly `size x size` (83, 166, 332 from
Planet's 256 px, any size from Dogs vs Cats' ragged images, any upscale), one antialiased
Pillow BILINEAR resize finishes the job, with the exact source rectangle as its `box`: libjpeg
rounds scaled sizes up (`ceil(299 * 2/8) = 75` pixels cover 74.75), and ignoring that
stretches the image by up to a pixel (measurements: bench/README.md).

BILINEAR, not LANCZOS: half the cost, and nearly the same pixels: DCT scaling has already done
the large reduction and the finishing step covers a ratio below 2 (below 8/7 for square
images). Pillow's integer arithmetic gives the same bytes on every CPU, so shards are
byte-identical whichever worker made them. `reducing_gap` is not used: after DCT scaling the
remaining ratio is below 3, where it changes nothing. Torch's uint8 antialias kernel is not
used: it has no sub-pixel `box` (the exact geometry above), costs every worker a torch import,
and is slower than Pillow on CPUs without AVX2 (e.g. ARM). Measurements: bench/README.md.

Non-square images (Dogs vs Cats, e.g. 300x450): `method="squish"` (the default) scales the
whole image to `size x size`, changing its aspect ratio like fast.ai's `ResizeMethod.SQUISH`,
so nothing (an ear, a tail) is cut off before augmentation; `method="crop"` keeps the aspect
ratio and takes the centred square (fast.ai v0.7's `data.resize` + centre crop). Planet's
images are square, where both give the same pixels.

JPEGs libjpeg-turbo refuses (strict mode treats recoverable warnings as errors, e.g.
"extraneous bytes before marker") are decoded by Pillow with `draft` (the same DCT scaling);
when neither can decode the data (truncated, not a JPEG), `BadImageError` says why.
"""

from __future__ import annotations

import io
import math
from typing import Literal

import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

Method = Literal["squish", "crop"]
METHODS: tuple[str, ...] = ("squish", "crop")
RESAMPLE = "bilinear"  # Pillow's antialiased BILINEAR for the finishing step
MAX_SIZE = 4096
MAX_PIXELS = 1 << 28  # larger images are refused (decompression bombs)


class BadImageError(ValueError):
    """An image that cannot be decoded (truncated, damaged, not a JPEG)."""


def check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, int | np.integer):
        raise ValueError(f"size must be an integer number of pixels, got {size!r}")
    if not 1 <= size <= MAX_SIZE:
        raise ValueError(f"size must be between 1 and {MAX_SIZE} pixels, got {size}")
    return int(size)


def check_method(method: str) -> str:
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
    docstring; measurements: bench/README.md). `method="squish"` scales the whole image to a
    square; `"crop"` takes the centred square. Raises `BadImageError` when the data cannot be decoded.
    """
    return resize_jpeg_unchecked(data, check_size(size), check_method(method))


def _lands_exactly(h: int, w: int, size: int) -> bool:
    """Whether DCT scaling alone turns an `h x w` image into the `size x size` output, for
    either method: a square image whose side times n/8 is exactly `size` (n <= 8: Planet's
    256 px at 128, 64, 32), at least 8 px so that no smaller n rounds up to the same size."""
    return h == w >= 8 and (size * 8) % h == 0 and 1 <= size * 8 // h <= 8


def resize_jpeg_unchecked(
    data: bytes | memoryview, size: int, method: str, out: np.ndarray | None = None
) -> np.ndarray:
    """`resize_jpeg` without the argument checks (called once per image).

    With `out` (a C-contiguous `size x size x 3` uint8 array) the result is written there and
    `out` returned; where DCT scaling lands exactly on the size, libjpeg-turbo decodes straight
    into it (no second copy of the pixels)."""
    why = _not_jpeg(data)
    if why is not None:
        raise BadImageError(why)
    buffer = None
    try:
        h, w, _, _ = simplejpeg.decode_jpeg_header(data)
        if w * h > MAX_PIXELS:
            raise BadImageError(f"{w}x{h} pixels is too large (more than {MAX_PIXELS:,})")
        wh, ww = _wanted(h, w, size, method)
        if out is not None and _lands_exactly(h, w, size):
            buffer = out
        arr = simplejpeg.decode_jpeg(
            data, colorspace="RGB", min_height=wh, min_width=ww, buffer=buffer
        )
        im = None
    except ValueError as first:
        if isinstance(first, BadImageError):
            raise
        if buffer is not None:  # e.g. the decoder chose another scale: decode as usual
            out[...] = resize_jpeg_unchecked(data, size, method)
            return out
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
    if buffer is not None and arr.shape == out.shape:
        return out  # decoded in place; a square scaled by n/8 needs no finishing box
    sh, sw = (arr.shape[0], arr.shape[1]) if arr is not None else (im.height, im.width)
    box = _box(h, w, sh, sw, method)
    if arr is not None and (sh, sw) == (size, size) and box == (0.0, 0.0, size, size):
        if out is None:
            return arr
        if buffer is None:
            out[...] = arr
        return out
    if im is None:
        im = Image.fromarray(arr if buffer is None else arr.copy())  # arr may lie in `out`
    resized = np.asarray(im.resize((size, size), Image.Resampling.BILINEAR, box=box))
    if out is None:
        return resized
    out[...] = resized
    return out


def resize_decoded(im: Image.Image, size: int, method: Method = "squish") -> np.ndarray:
    """A decoded RGB image (a PNG, a TIFF) as a `size x size x 3` uint8 array, the way
    `resize_jpeg` finishes a JPEG: one antialiased BILINEAR resize of the method's source
    rectangle (no DCT scaling: the image is already decoded at full size); none when it is
    already `size x size`."""
    size, method = check_size(size), check_method(method)
    if im.mode != "RGB":
        raise ValueError(f"resize_decoded needs an RGB image, got mode {im.mode}")
    w, h = im.size
    if w * h > MAX_PIXELS:
        raise BadImageError(f"{w}x{h} pixels is too large (more than {MAX_PIXELS:,})")
    box = _box(h, w, h, w, method)
    if (h, w) == (size, size) and box == (0.0, 0.0, size, size):
        return np.asarray(im)
    return np.asarray(im.resize((size, size), Image.Resampling.BILINEAR, box=box))
