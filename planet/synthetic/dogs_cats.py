"""Synthetic Dogs vs Cats photos: RGB images of varying size (150..500 px a side) showing one
cartoon animal on a random background.

What tells them apart, none of it alone: ear shape (cats: upright triangles; dogs: floppy ears
hanging beside the head), the muzzle (dogs: a long light snout with a big nose), the eyes
(cats: green/yellow almonds with slit pupils; dogs: round and dark), the coat (cats: often
tabby-striped; dogs: sometimes large patches) and the palette, which overlaps between the two.
Pose, size, position, background, colours and noise are random.
"""

from __future__ import annotations

import numpy as np

from planet.synthetic.draw import (
    TextureBank,
    blend,
    color,
    ellipse_into,
    fill_ellipse,
    fill_polygon,
    polygon_into,
    to_jpeg,
)

MIN_SIDE, MAX_SIDE = 150, 500

# (colour, weight): the two palettes overlap (black, white, greys, browns)
Coats = tuple[tuple[tuple[int, int, int], float], ...]
CAT_COATS: Coats = (
    ((205, 130, 60), 0.25),  # ginger
    ((125, 125, 130), 0.25),  # grey
    ((35, 35, 38), 0.15),  # black
    ((215, 195, 160), 0.1),  # cream
    ((232, 230, 225), 0.1),  # white
    ((135, 105, 75), 0.15),  # brown tabby
)
DOG_COATS: Coats = (
    ((205, 160, 90), 0.25),  # golden
    ((115, 75, 45), 0.25),  # brown
    ((30, 28, 28), 0.15),  # black
    ((230, 226, 215), 0.1),  # white
    ((185, 140, 95), 0.15),  # tan
    ((140, 135, 130), 0.1),  # grey
)


def make_texture_bank(rng: np.random.Generator) -> TextureBank:
    """The noise tiles every photo of a generation run crops from."""
    return TextureBank.make(rng, tile=2 * MAX_SIDE + 24)


def image_size(rng: np.random.Generator) -> tuple[int, int]:
    """(height, width) like the real photos: the long side 250..500 (exactly 500 for 40%),
    the short side 150..500; landscape about two times in three."""
    long_side = MAX_SIDE if rng.random() < 0.4 else int(rng.integers(250, MAX_SIDE + 1))
    short_side = max(MIN_SIDE, round(long_side * rng.uniform(0.55, 1.0)))
    return (short_side, long_side) if rng.random() < 0.65 else (long_side, short_side)


def _coat(rng: np.random.Generator, coats: Coats) -> np.ndarray:
    weights = np.array([w for _, w in coats])
    k = int(rng.choice(len(coats), p=weights / weights.sum()))
    return color(rng, coats[k][0], 18)


def _background(rng: np.random.Generator, bank: TextureBank, h: int, w: int) -> np.ndarray:
    top = color(rng, (130, 130, 130), 90)
    bottom = color(rng, (130, 130, 130), 90)
    t = np.linspace(0.0, 1.0, h, dtype=np.float32).reshape(1, h, 1)
    img = top + t * (bottom - top)
    img = img * (1.0 + np.float32(rng.uniform(0.05, 0.3)) * bank.tex(rng, h, w))
    # a couple of out-of-focus objects, same for both classes
    for _ in range(int(rng.integers(0, 3))):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(20, h / 2), rng.uniform(20, w / 2)
        col = color(rng, (128, 128, 128), 100)
        fill_ellipse(img, cy, cx, ry, rx, col, alpha=rng.uniform(0.3, 0.9))
    return img


def render(is_dog: bool, rng: np.random.Generator, bank: TextureBank) -> np.ndarray:
    """A planar float32 (3, H, W) photo of a dog (`is_dog`) or a cat."""
    h, w = image_size(rng)
    img = _background(rng, bank, h, w)
    s = float(rng.uniform(0.16, 0.28) * min(h, w))  # head radius
    cy = float(rng.uniform(0.25 * h, 0.55 * h))
    cx = float(rng.uniform(0.25 * w, 0.75 * w))
    tilt = float(rng.normal(0.0, 0.15))
    coat = _coat(rng, DOG_COATS if is_dog else CAT_COATS)

    # silhouette: body, head (and a cat's ears)
    sil = np.zeros((h, w), dtype=np.float32)
    ellipse_into(
        sil,
        cy + s * rng.uniform(1.3, 1.8),
        cx + s * rng.uniform(-0.8, 0.8),
        s * rng.uniform(0.9, 1.3),
        s * rng.uniform(1.3, 2.0),
        angle=float(rng.normal(0, 0.3)),
    )
    hry, hrx = (s * 0.92, s * 0.78) if is_dog else (s * 0.85, s * 0.9)
    ellipse_into(sil, cy, cx, hry, hrx, angle=tilt)
    rot = np.array([[np.cos(tilt), np.sin(tilt)], [-np.sin(tilt), np.cos(tilt)]])

    def at(dy: float, dx: float) -> np.ndarray:  # head-relative offset (in s) -> (y, x)
        return np.array([cy, cx]) + rot @ np.array([dy * s, dx * s])

    if not is_dog:
        for side in (-1.0, 1.0):
            ear = np.array([at(-0.45, side * 0.25), at(-1.45, side * 0.6), at(-0.35, side * 0.9)])
            polygon_into(sil, ear)

    fur = coat * (1.0 + np.float32(0.18) * bank.tex(rng, h, w))
    if not is_dog and rng.random() < 0.6:  # tabby stripes
        period = np.float32(rng.uniform(0.18, 0.3) * s)
        xs = np.arange(w, dtype=np.float32)[None, :]
        wob = bank.tex(rng, h, w) * np.float32(0.6 * period)
        stripes = np.sin((xs + wob) * np.float32(2 * np.pi) / period) > 0.2
        fur = fur * (1.0 - np.float32(rng.uniform(0.3, 0.5)) * stripes)
    elif is_dog and rng.random() < 0.35:  # large patches of a second colour
        patches = np.clip((bank.tex(rng, h, w) - 0.1) * 6.0, 0.0, 1.0)
        fur = fur + patches * (_coat(rng, DOG_COATS) - fur)
    blend(img, sil, fur)

    if is_dog:
        ear_col = coat * np.float32(rng.uniform(0.55, 0.9))
        for side in (-1.0, 1.0):  # floppy ears hanging beside the head
            y, x = at(0.15, side * 0.85)
            fill_ellipse(img, y, x, s * 0.65, s * 0.28, ear_col, angle=tilt - side * 0.35)
        y, x = at(0.5, 0.0)  # light snout
        fill_ellipse(
            img, y, x, s * 0.42, s * 0.38, np.minimum(coat * 1.25 + 25.0, 250.0), angle=tilt
        )
        y, x = at(0.3, 0.0)  # big dark nose
        fill_ellipse(img, y, x, s * 0.13, s * 0.18, color(rng, (25, 22, 22), 8), angle=tilt)
        eye_col, slit = color(rng, (60, 38, 25), 12), False
        eye_ry, eye_rx = s * 0.1, s * 0.1
    else:
        for side in (-1.0, 1.0):  # pink inner ears
            ear = np.array([at(-0.6, side * 0.35), at(-1.25, side * 0.58), at(-0.55, side * 0.75)])
            fill_polygon(img, ear, color(rng, (215, 150, 150), 15), alpha=0.8)
        nose = np.array([at(0.22, -0.1), at(0.22, 0.1), at(0.36, 0.0)])
        fill_polygon(img, nose, color(rng, (220, 140, 140), 12))
        whisker_col = color(rng, (235, 235, 230), 10)
        for side in (-1.0, 1.0):
            for k in range(3):
                a, b = at(0.35 + 0.06 * k, side * 0.2), at(0.25 + 0.12 * k, side * 1.2)
                poly = np.array([a, b, b + np.array([1.2, 0.0]), a + np.array([1.2, 0.0])])
                fill_polygon(img, poly, whisker_col, alpha=0.7)
        if rng.random() < 0.5:
            eye_col = color(rng, (150, 190, 60), 30)
        else:
            eye_col = color(rng, (210, 180, 50), 25)
        slit = True
        eye_ry, eye_rx = s * 0.13, s * 0.17
    for side in (-1.0, 1.0):  # eyes
        y, x = at(-0.12, side * 0.38)
        fill_ellipse(img, y, x, eye_ry, eye_rx, eye_col, angle=tilt)
        if slit:  # a cat's vertical pupil
            pupil = color(rng, (15, 15, 15), 5)
            fill_ellipse(img, y, x, eye_ry * 0.9, max(1.0, eye_rx * 0.22), pupil, angle=tilt)

    img += bank.noise(rng, h, w) * np.float32(rng.uniform(2.0, 8.0))
    img *= np.float32(rng.uniform(0.8, 1.15))
    return img


def render_jpeg(is_dog: bool, rng: np.random.Generator, bank: TextureBank) -> bytes:
    """JPEG bytes of `render(is_dog, ...)`."""
    return to_jpeg(render(is_dog, rng, bank))
