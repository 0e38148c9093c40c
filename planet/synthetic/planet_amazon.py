"""Synthetic Planet chips: tag sets sampled like train_v2.csv's, and 256x256 RGB images in
which every tag leaves a visual trace (mixed with texture, noise and random placement).

Tag model. Exactly one weather tag per chip, drawn with the real weather frequencies; a
`cloudy` chip has no other tag. Every other tag is drawn only for the non-cloudy chips, with a
conditional probability scaled up by 1 / P(not cloudy), so its marginal frequency equals
`PLANET_TAG_COUNTS[tag] / PLANET_TRAIN_SIZE`. A few tags lean on a parent tag, as in the real
data (road and cultivation mostly with agriculture, habitation mostly with road): a share
`f` of the tag's chips carry the parent, and the two conditional probabilities are solved so
the marginal is unchanged.
"""

from __future__ import annotations

import numpy as np

from planet.competitions import PLANET, PLANET_TAG_COUNTS, PLANET_TRAIN_SIZE, PLANET_WEATHER_TAGS
from planet.synthetic.draw import TextureBank, blend, color, ellipse, grey, line_mask, to_jpeg

SIZE = 256
CLASSES: tuple[str, ...] = PLANET.classes  # alphabetical, the order of label matrix columns
CLASS_INDEX = {t: i for i, t in enumerate(CLASSES)}
LAND_TAGS: tuple[str, ...] = tuple(t for t in CLASSES if t not in PLANET_WEATHER_TAGS)

# tag -> (parent tag, share of the tag's (non-cloudy) chips that also carry the parent).
# Shares are close to the real train_v2 co-occurrence counts.
PARENTS: dict[str, tuple[str, float]] = {
    "road": ("agriculture", 0.75),
    "cultivation": ("agriculture", 0.74),
    "habitation": ("road", 0.76),
}


def expected_frequencies() -> dict[str, float]:
    """The marginal frequency of each tag the sampler aims at (the real train_v2 ones)."""
    return {t: PLANET_TAG_COUNTS[t] / PLANET_TRAIN_SIZE for t in CLASSES}


def _weather_probs() -> np.ndarray:
    counts = np.array([PLANET_TAG_COUNTS[t] for t in PLANET_WEATHER_TAGS], dtype=np.float64)
    return counts / counts.sum()


def _land_conditionals() -> dict[str, float | tuple[float, float]]:
    """P(tag | not cloudy), or (P(tag | parent, not cloudy), P(tag | no parent, not cloudy))."""
    p_cloudy = _weather_probs()[PLANET_WEATHER_TAGS.index("cloudy")]
    q = {t: PLANET_TAG_COUNTS[t] / PLANET_TRAIN_SIZE / (1.0 - p_cloudy) for t in LAND_TAGS}
    out: dict[str, float | tuple[float, float]] = {}
    for t in LAND_TAGS:
        if t in PARENTS:
            parent, share = PARENTS[t]
            qp = q[parent]
            with_parent = share * q[t] / qp
            without_parent = (1.0 - share) * q[t] / (1.0 - qp)
            assert 0.0 <= with_parent <= 1.0 and 0.0 <= without_parent <= 1.0, t
            out[t] = (with_parent, without_parent)
        else:
            out[t] = q[t]
    return out


_LAND_ORDER: tuple[str, ...] = tuple(
    sorted(LAND_TAGS, key=lambda t: (t in PARENTS, PARENTS.get(t, ("", 0))[0] in PARENTS))
)


def sample_labels(n: int, rng: np.random.Generator | int = 0) -> np.ndarray:
    """`n` Planet tag sets as a boolean (n, 17) matrix, columns in `CLASSES` order; `rng` is a
    generator or a seed."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    y = np.zeros((n, len(CLASSES)), dtype=bool)
    weather = rng.choice(len(PLANET_WEATHER_TAGS), size=n, p=_weather_probs())
    for k, tag in enumerate(PLANET_WEATHER_TAGS):
        y[:, CLASS_INDEX[tag]] = weather == k
    not_cloudy = ~y[:, CLASS_INDEX["cloudy"]]
    cond = _land_conditionals()
    for tag in _LAND_ORDER:
        u = rng.random(n)
        c = cond[tag]
        if isinstance(c, tuple):
            parent = y[:, CLASS_INDEX[PARENTS[tag][0]]]
            p = np.where(parent, c[0], c[1])
        else:
            p = np.full(n, c)
        y[:, CLASS_INDEX[tag]] = (u < p) & not_cloudy
    return y


def tag_string(row: np.ndarray) -> str:
    """A label row as train_v2.csv writes it: tags alphabetical, space-separated."""
    return " ".join(CLASSES[i] for i in np.flatnonzero(row))


# ---------------------------------------------------------------------------------------------
# Rendering: every tag leaves a trace; placement, sizes, colours and texture are random.


def make_texture_bank(rng: np.random.Generator) -> TextureBank:
    """The noise tiles every chip of a generation run crops from."""
    return TextureBank.make(rng, tile=2 * SIZE)


def _rect_fields(
    img: np.ndarray,
    rng: np.random.Generator,
    bank: TextureBank,
    n: int,
    lo: int,
    hi: int,
    base: tuple[float, float, float],
    jitter: float,
    tex_amp: float,
) -> None:
    """`n` axis-aligned fields (sides `lo`..`hi`) of colour `base`, lightly textured."""
    for _ in range(n):
        h, w = (int(v) for v in rng.integers(lo, hi, 2))
        y0, x0 = (int(v) for v in rng.integers(-20, SIZE - 20, 2))
        ys, xs, ye, xe = max(0, y0), max(0, x0), min(SIZE, y0 + h), min(SIZE, x0 + w)
        if ye <= ys or xe <= xs:
            continue
        t = bank.tex(rng, ye - ys, xe - xs)
        img[:, ys:ye, xs:xe] = color(rng, base, jitter) * (1.0 + tex_amp * t)


def _center(rng: np.random.Generator, margin: float) -> tuple[float, float]:
    y, x = rng.uniform(margin, SIZE - margin, 2)
    return float(y), float(x)


def render(row: np.ndarray, rng: np.random.Generator, bank: TextureBank) -> np.ndarray:
    """A planar float32 (3, 256, 256) image for the tag row `row` (bool, `CLASSES` order)."""
    has = {CLASSES[i] for i in np.flatnonzero(row)}
    tex = bank.tex(rng, SIZE, SIZE)
    if "primary" in has:  # dark green, strongly textured canopy
        base = color(rng, (38, 78, 36), 8)
        img = base * (1.0 + 0.35 * tex)
    else:  # dull olive/tan ground
        base = color(rng, (122, 112, 84), 15)
        img = base * (1.0 + 0.15 * tex)
    for _ in range(int(rng.integers(0, 3))):  # untagged distractors: shadows, lighter stands
        cy, cx = _center(rng, 0)
        ry, rx = rng.uniform(10, 50, 2)
        shade = base * np.float32(rng.uniform(0.7, 1.3))
        ellipse(img, rng, bank, cy, cx, ry, rx, shade, rough=0.6, soft=0.8, alpha=0.7)

    if "agriculture" in has:  # lighter rectangular fields
        _rect_fields(img, rng, bank, int(rng.integers(1, 5)), 40, 150, (140, 160, 95), 20, 0.12)
    if "cultivation" in has:  # patchy brownish small fields
        for _ in range(int(rng.integers(2, 6))):
            h, w = (int(v) for v in rng.integers(20, 60, 2))
            y0, x0 = (int(v) for v in rng.integers(0, SIZE - 20, 2))
            m = np.clip((bank.tex(rng, h, w) + 0.1) * 4.0, 0.0, 0.85)
            blend(img, m, color(rng, (145, 112, 78), 12), y0, x0)
    if "bare_ground" in has:  # brown patches
        for _ in range(int(rng.integers(1, 4))):
            cy, cx = _center(rng, 0)
            ry, rx = rng.uniform(10, 40, 2)
            ellipse(img, rng, bank, cy, cx, ry, rx, color(rng, (168, 125, 85), 12))
    if "water" in has:  # dark blue river or lake
        col = color(rng, (35, 58, 98), 10)
        if rng.random() < 0.6:
            amp, k, ph = rng.uniform(10, 40), rng.uniform(0.01, 0.04), rng.uniform(0, 6.3)
            along = np.arange(SIZE, dtype=np.float32)
            centre = rng.uniform(40, SIZE - 40) + amp * np.sin(k * along + ph)
            d = np.abs(along[:, None] - centre[None, :].astype(np.float32))  # d[across, along]
            m = np.clip(rng.uniform(3, 10) - d, 0.0, 1.0)
            blend(img, m if rng.random() < 0.5 else np.ascontiguousarray(m.T), col)
        else:
            cy, cx = _center(rng, 20)
            ry, rx = rng.uniform(12, 45, 2)
            ellipse(img, rng, bank, cy, cx, ry, rx, col, rough=0.2)
    if "road" in has:  # thin straight pale lines
        for _ in range(int(rng.integers(1, 3))):
            m = line_mask(SIZE, SIZE, rng, rng.uniform(1.2, 2.8))
            blend(img, m, color(rng, (178, 158, 128), 12))
    if "selective_logging" in has:  # thin meandering brown trails
        for _ in range(int(rng.integers(2, 5))):
            m = line_mask(SIZE, SIZE, rng, rng.uniform(0.6, 1.1), wiggle=rng.uniform(4, 12))
            blend(img, m * 0.8, color(rng, (125, 92, 62), 10))
    if "habitation" in has:  # clustered small bright roofs
        cy, cx = _center(rng, 30)
        spread = rng.uniform(10, 25)
        for _ in range(int(rng.integers(8, 25))):
            y, x = (int(v) for v in rng.normal((cy, cx), spread))
            s = int(rng.integers(3, 8))
            if 0 <= y < SIZE - s and 0 <= x < SIZE - s:
                img[:, y : y + s, x : x + s] = color(rng, (215, 212, 205), 20)
    if "artisinal_mine" in has:  # small orange pits, some with turquoise pools
        cy, cx = _center(rng, 20)
        for _ in range(int(rng.integers(2, 6))):
            py, px = rng.normal((cy, cx), 12)
            r = rng.uniform(3, 7)
            ellipse(img, rng, bank, py, px, r, r, color(rng, (205, 128, 62), 15), soft=0.3)
            if rng.random() < 0.5:
                ellipse(img, rng, bank, py, px, r / 2, r / 2, color(rng, (90, 150, 140), 10))
    if "conventional_mine" in has:  # one large grey pit with a darker floor
        cy, cx = _center(rng, 30)
        r = rng.uniform(18, 35)
        ellipse(
            img, rng, bank, cy, cx, r, r * rng.uniform(0.7, 1.3), color(rng, (158, 152, 146), 10)
        )
        ellipse(
            img, rng, bank, cy, cx, r * 0.55, r * 0.5, color(rng, (110, 108, 105), 10), soft=0.4
        )
    if "slash_burn" in has:  # dark burnt spot
        cy, cx = _center(rng, 15)
        ry, rx = rng.uniform(8, 20, 2)
        ellipse(img, rng, bank, cy, cx, ry, rx, color(rng, (45, 35, 30), 6), rough=0.5)
    if "blooming" in has:  # yellowish specks
        cy, cx = _center(rng, 40)
        n = int(rng.integers(80, 250))
        ys = np.clip(rng.normal(cy, rng.uniform(15, 35), n), 0, SIZE - 2).astype(np.intp)
        xs = np.clip(rng.normal(cx, rng.uniform(15, 35), n), 0, SIZE - 2).astype(np.intp)
        col = color(rng, (228, 208, 72), 15).reshape(3, 1)
        img[:, ys, xs] = col
        img[:, ys + 1, xs] = col
    if "blow_down" in has:  # a patch of diagonal streaks
        h, w = (int(v) for v in rng.integers(50, 120, 2))
        y0, x0 = (int(v) for v in rng.integers(0, SIZE - 50, 2))
        period = rng.uniform(4, 8)
        sign = 1.0 if rng.random() < 0.5 else -1.0
        diag = (
            np.arange(w, dtype=np.float32)[None, :] + sign * np.arange(h, dtype=np.float32)[:, None]
        )
        stripes = 0.35 + 0.35 * np.sin(diag * np.float32(2 * np.pi / period))
        blend(img, stripes, color(rng, (98, 138, 62), 10), y0, x0)

    if "haze" in has:  # whitish veil, lower contrast
        a = np.float32(rng.uniform(0.35, 0.6))
        veil = grey(rng, 202, 10) * (1.0 + 0.05 * bank.tex(rng, SIZE, SIZE))
        img += a * (veil - img)
    elif "partly_cloudy" in has:  # a few white cloud blobs
        for _ in range(int(rng.integers(1, 5))):
            cy, cx = _center(rng, 0)
            ry, rx = rng.uniform(20, 70, 2)
            ellipse(img, rng, bank, cy, cx, ry, rx, grey(rng, 236, 8), rough=0.6, soft=0.6)
    elif "cloudy" in has:  # mostly white/grey
        a = np.float32(rng.uniform(0.85, 0.97))
        cloud = grey(rng, 222, 18) * (1.0 + 0.12 * bank.tex(rng, SIZE, SIZE))
        img += a * (cloud - img)
    else:  # clear: full contrast, a little extra
        mid = np.float32(90.0)
        img -= mid
        img *= np.float32(rng.uniform(1.0, 1.15))
        img += mid

    img += bank.noise(rng, SIZE, SIZE) * np.float32(rng.uniform(3.0, 7.0))
    img *= np.float32(rng.uniform(0.92, 1.08)) * rng.uniform(0.97, 1.03, 3).astype(
        np.float32
    ).reshape(3, 1, 1)
    return img


def render_jpeg(row: np.ndarray, rng: np.random.Generator, bank: TextureBank) -> bytes:
    """JPEG bytes of `render(row, ...)`."""
    return to_jpeg(render(row, rng, bank))
