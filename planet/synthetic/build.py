"""`generate`: write a synthetic competition download laid out exactly like Kaggle's.

Everything is drawn from `numpy` generators seeded by (seed, competition, split, purpose), so
the same arguments give byte-identical files, and one split's images and labels do not depend on
the other splits' sizes. The hidden ground truth goes to `<slug>/_private/solution.csv`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from planet.competitions import DOGS_VS_CATS, PLANET, Competition, DataFile, resolve
from planet.fileio import remove_stale_temps, write_json_atomic
from planet.synthetic import dogs_cats, planet_amazon
from planet.synthetic.archives import (
    DEFAULT_LZMA2_PRESET,
    write_7z_single,
    write_csv,
    write_csv_zip,
    write_tar,
    write_zip,
)

PRIVATE_DIR = "_private"
SOLUTION_CSV = "solution.csv"
SETTINGS_JSON = "synthetic.json"
GENERATOR_VERSION = 1

# Share of the test rows (test + additional for Planet) scored on the public leaderboard; the
# rest are "Private". An exact count (rounded), chosen by a seeded permutation.
PUBLIC_FRACTION = 1 / 3

# Every row of Kaggle's Planet sample_submission_v2.csv carries these tags.
PLANET_SAMPLE_TAGS = "primary clear agriculture road water"

DEFAULT_SIZES: dict[str, dict[str, int]] = {
    PLANET.slug: {"train": 1200, "test": 300, "test-additional": 100},
    DOGS_VS_CATS.slug: {"train": 800, "test": 200},
}

_COMP_KEY = {PLANET.slug: 1, DOGS_VS_CATS.slug: 2}
_SPLIT_KEY = {"train": 0, "test": 1, "test-additional": 2}
_LABELS, _IMAGES, _USAGE, _TEXTURES = 0, 1, 2, 3


def _rng(seed: int, slug: str, split: str | None, purpose: int) -> np.random.Generator:
    split_key = _SPLIT_KEY[split] if split is not None else 9
    ss = np.random.SeedSequence(seed, spawn_key=(_COMP_KEY[slug], split_key, purpose))
    return np.random.Generator(np.random.PCG64(ss))


def _check_size(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def resolve_sizes(
    comp: Competition,
    train: int | None = None,
    test: int | None = None,
    additional: int | None = None,
) -> dict[str, int]:
    """The split sizes `generate` will use: the defaults overridden by the given ones.

    Raises `ValueError` for a non-integer size, train or test below 1, additional below 0, or
    `additional` for a competition without an additional test set."""
    sizes = dict(DEFAULT_SIZES[comp.slug])
    if train is not None:
        sizes["train"] = _check_size("train", train, 1)
    if test is not None:
        sizes["test"] = _check_size("test", test, 1)
    if additional is not None:
        if "test-additional" not in sizes:
            raise ValueError(f"{comp.slug} has no additional test set: leave `additional` unset")
        sizes["test-additional"] = _check_size("additional", additional, 0)
    return sizes


def _usage(n: int, rng: np.random.Generator) -> list[str]:
    public = np.zeros(n, dtype=bool)
    public[rng.permutation(n)[: round(n * PUBLIC_FRACTION)]] = True
    return ["Public" if p else "Private" for p in public]


def generate(
    competition: str,
    root: str | Path,
    *,
    train: int | None = None,
    test: int | None = None,
    additional: int | None = None,
    seed: int = 0,
    background_compression: bool = True,
) -> Path:
    """Write a synthetic `competition` (slug or alias) download under `root/<slug>/` and
    return that folder.

    Sizes default to `DEFAULT_SIZES` (`additional` is Planet's test-jpg-additional). With
    `background_compression`, Planet's 7z compression of one split runs in a thread while the
    next split is drawn (liblzma releases the GIL); the files are the same either way.
    """
    comp = resolve(competition)
    sizes = resolve_sizes(comp, train, test, additional)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    out = Path(root) / comp.slug
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    remove_stale_temps(out / PRIVATE_DIR)
    if comp.slug == PLANET.slug:
        _generate_planet(out, sizes, int(seed), background_compression)
    else:
        _generate_dogs_vs_cats(out, sizes, int(seed))
    write_json_atomic(
        out / PRIVATE_DIR / SETTINGS_JSON,
        {
            "competition": comp.slug,
            "generator_version": GENERATOR_VERSION,
            "seed": int(seed),
            "sizes": sizes,
        },
    )
    return out


# ---------------------------------------------------------------------------------------------
# Planet


def _planet_image_file(split: str) -> DataFile:
    return next(f for f in PLANET.image_files if f.split == split)


def _planet_names(split: str, n: int) -> list[str]:
    prefix = _planet_image_file(split).name_prefix
    return [f"{prefix}{i}" for i in range(n)]


def _compress_spool(dest: Path, spool, tar_name: str) -> Path:
    try:
        spool.seek(0)
        return write_7z_single(dest, spool, tar_name, preset=DEFAULT_LZMA2_PRESET)
    finally:
        spool.close()


def _generate_planet(out: Path, sizes: dict[str, int], seed: int, background: bool) -> None:
    slug = PLANET.slug
    labels = {
        split: planet_amazon.sample_labels(n, _rng(seed, slug, split, _LABELS))
        for split, n in sizes.items()
    }
    names = {split: _planet_names(split, n) for split, n in sizes.items()}

    train_rows = [
        (name, planet_amazon.tag_string(row))
        for name, row in zip(names["train"], labels["train"], strict=True)
    ]
    header = PLANET.submission_columns
    write_csv_zip(out / "train_v2.csv.zip", header, train_rows)
    test_names = names["test"] + names["test-additional"]
    write_csv_zip(
        out / "sample_submission_v2.csv.zip",
        header,
        [(name, PLANET_SAMPLE_TAGS) for name in test_names],
    )
    test_labels = np.concatenate([labels["test"], labels["test-additional"]])
    usage = _usage(len(test_names), _rng(seed, slug, None, _USAGE))
    write_csv(
        out / PRIVATE_DIR / SOLUTION_CSV,
        (*header, "Usage"),
        [
            (name, planet_amazon.tag_string(row), u)
            for name, row, u in zip(test_names, test_labels, usage, strict=True)
        ],
    )

    bank = planet_amazon.make_texture_bank(_rng(seed, slug, None, _TEXTURES))
    pending: list[Future[Path]] = []
    with ThreadPoolExecutor(max_workers=1) as pool:
        for split in ("train", "test", "test-additional"):
            spec = _planet_image_file(split)
            rng = _rng(seed, slug, split, _IMAGES)
            members = (
                (f"{name}.jpg", planet_amazon.render_jpeg(row, rng, bank))
                for name, row in zip(names[split], labels[split], strict=True)
            )
            dest = out / spec.name
            spool = tempfile.TemporaryFile(dir=out)  # noqa: SIM115 (closed by _compress_spool)
            try:
                write_tar(spool, spec.inner_dir, members)
            except BaseException:
                spool.close()
                raise
            tar_name = spec.name.removesuffix(".7z")
            if background:
                pending.append(pool.submit(_compress_spool, dest, spool, tar_name))
            else:
                _compress_spool(dest, spool, tar_name)
        for fut in pending:
            fut.result()


# ---------------------------------------------------------------------------------------------
# Dogs vs Cats


def _dogs_vs_cats_train(n: int) -> Iterator[tuple[str, bool]]:
    """(file name, is_dog) of the train images, cats and dogs interleaved; cats get the odd
    one out."""
    n_cat, n_dog = (n + 1) // 2, n // 2
    for i in range(n_cat):
        yield f"cat.{i}.jpg", False
        if i < n_dog:
            yield f"dog.{i}.jpg", True


def _generate_dogs_vs_cats(out: Path, sizes: dict[str, int], seed: int) -> None:
    slug = DOGS_VS_CATS.slug
    n_test = sizes["test"]
    test_is_dog = _rng(seed, slug, "test", _LABELS).random(n_test) < 0.5
    ids = list(range(1, n_test + 1))
    header = DOGS_VS_CATS.submission_columns
    write_csv(out / "sample_submission.csv", header, [(i, 0.5) for i in ids])
    usage = _usage(n_test, _rng(seed, slug, None, _USAGE))
    write_csv(
        out / PRIVATE_DIR / SOLUTION_CSV,
        (*header, "Usage"),
        [(i, int(d), u) for i, d, u in zip(ids, test_is_dog, usage, strict=True)],
    )

    bank = dogs_cats.make_texture_bank(_rng(seed, slug, None, _TEXTURES))
    rng = _rng(seed, slug, "train", _IMAGES)
    train_members = (
        (name, dogs_cats.render_jpeg(is_dog, rng, bank))
        for name, is_dog in _dogs_vs_cats_train(sizes["train"])
    )
    write_zip(out / "train.zip", train_members, inner_dir="train")
    rng = _rng(seed, slug, "test", _IMAGES)
    test_members = (
        (f"{i}.jpg", dogs_cats.render_jpeg(bool(d), rng, bank))
        for i, d in zip(ids, test_is_dog, strict=True)
    )
    write_zip(out / "test.zip", test_members, inner_dir="test")
