"""The synthetic competition generator: Kaggle layouts, readable archives, realistic labels,
determinism, atomic writes and learnable images."""

from __future__ import annotations

import csv
import hashlib
import io
import math
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import py7zr
import pytest
from PIL import Image

from planet.competitions import (
    DOGS_VS_CATS,
    PLANET,
    PLANET_TAG_COUNTS,
    PLANET_TRAIN_SIZE,
    PLANET_WEATHER_TAGS,
)
from planet.synthetic import (
    FIXED_MTIME,
    PLANET_SAMPLE_TAGS,
    PRIVATE_DIR,
    PUBLIC_FRACTION,
    SOLUTION_CSV,
    dogs_cats,
    generate,
    planet_amazon,
    sample_planet_labels,
    tag_string,
    write_tar_7z,
    write_zip,
)
from planet.synthetic.archives import FIXED_ZIP_DATE

SEVEN_Z = shutil.which("7z")
PLANET_SIZES = {"train": 12, "test": 6, "test-additional": 3}
DOGS_SIZES = {"train": 7, "test": 5}


@pytest.fixture(scope="module")
def planet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    return generate(
        "planet",
        root,
        train=PLANET_SIZES["train"],
        test=PLANET_SIZES["test"],
        additional=PLANET_SIZES["test-additional"],
        seed=0,
    )


@pytest.fixture(scope="module")
def dogs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    return generate("dogs-vs-cats", root, train=DOGS_SIZES["train"], test=DOGS_SIZES["test"])


def read_csv(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8"))))


def read_zipped_csv(path: Path) -> list[list[str]]:
    with zipfile.ZipFile(path) as zf:
        assert zf.namelist() == [path.name.removesuffix(".zip")]
        return read_csv(zf.read(zf.namelist()[0]))


def tar_from_7z(path: Path, tmp: Path) -> tarfile.TarFile:
    with py7zr.SevenZipFile(path) as archive:
        names = archive.getnames()
        assert names == [path.name.removesuffix(".7z")]
        archive.extractall(path=tmp)
    return tarfile.open(tmp / names[0])


def expected_planet_names(split: str) -> list[str]:
    spec = next(f for f in PLANET.image_files if f.split == split)
    return [f"{spec.name_prefix}{i}" for i in range(PLANET_SIZES[split])]


def sha256_tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# --- Planet layout -------------------------------------------------------------------------


def test_planet_files_are_kaggles(planet_dir: Path) -> None:
    assert planet_dir.name == PLANET.slug
    top = {p.name for p in planet_dir.iterdir()}
    assert top == {f.name for f in PLANET.files} | {PRIVATE_DIR}
    assert (planet_dir / PRIVATE_DIR / SOLUTION_CSV).is_file()


@pytest.mark.parametrize("split", ["train", "test", "test-additional"])
def test_planet_tar_7z_read_by_py7zr(planet_dir: Path, tmp_path: Path, split: str) -> None:
    spec = next(f for f in PLANET.image_files if f.split == split)
    with tar_from_7z(planet_dir / spec.name, tmp_path) as tar:
        members = tar.getmembers()
        assert members[0].isdir() and members[0].name == spec.inner_dir
        files = members[1:]
        assert [m.name for m in files] == [
            f"{spec.inner_dir}/{n}.jpg" for n in expected_planet_names(split)
        ]
        for m in members:
            assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (FIXED_MTIME, 0, 0, "", "")
        for m in files:
            img = Image.open(io.BytesIO(tar.extractfile(m).read()))
            assert img.format == "JPEG" and img.mode == "RGB" and img.size == (256, 256)
            img.load()


@pytest.mark.skipif(SEVEN_Z is None, reason="the 7z program is not installed")
def test_planet_tar_7z_read_by_7z_program(planet_dir: Path) -> None:
    spec = PLANET.file("train-jpg.tar.7z")
    path = planet_dir / spec.name
    listing = subprocess.run(
        [SEVEN_Z, "l", "-slt", str(path)], capture_output=True, text=True, check=True
    ).stdout
    assert "Method = LZMA2" in listing
    assert [ln for ln in listing.splitlines() if ln.startswith("Path = ")][1:] == [
        "Path = train-jpg.tar"
    ]
    tar_bytes = subprocess.run(
        [SEVEN_Z, "e", "-so", str(path)], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        names = tar.getnames()
        assert names == ["train-jpg"] + [
            f"train-jpg/{n}.jpg" for n in expected_planet_names("train")
        ]
        img = Image.open(tar.extractfile(names[-1]))
        assert img.mode == "RGB" and img.size == (256, 256)
    # and 7z's own integrity test passes
    subprocess.run([SEVEN_Z, "t", str(path)], capture_output=True, check=True)


def test_planet_csvs(planet_dir: Path) -> None:
    train = read_zipped_csv(planet_dir / "train_v2.csv.zip")
    assert train[0] == ["image_name", "tags"]
    assert [r[0] for r in train[1:]] == expected_planet_names("train")
    for _, tags in train[1:]:
        t = tags.split(" ")
        assert set(t) <= set(PLANET.classes) and t == sorted(t)

    sample = read_zipped_csv(planet_dir / "sample_submission_v2.csv.zip")
    assert sample[0] == ["image_name", "tags"]
    test_names = expected_planet_names("test") + expected_planet_names("test-additional")
    assert [r[0] for r in sample[1:]] == test_names
    assert {r[1] for r in sample[1:]} == {PLANET_SAMPLE_TAGS}

    solution = read_csv((planet_dir / PRIVATE_DIR / SOLUTION_CSV).read_bytes())
    assert solution[0] == ["image_name", "tags", "Usage"]
    assert [r[0] for r in solution[1:]] == test_names
    usage = [r[2] for r in solution[1:]]
    assert set(usage) <= {"Public", "Private"}
    assert usage.count("Public") == round(len(test_names) * PUBLIC_FRACTION)


def test_planet_tag_rules_in_generated_csvs(planet_dir: Path) -> None:
    rows = read_zipped_csv(planet_dir / "train_v2.csv.zip")[1:]
    rows += [r[:2] for r in read_csv((planet_dir / PRIVATE_DIR / SOLUTION_CSV).read_bytes())[1:]]
    for _, tags in rows:
        t = set(tags.split(" "))
        assert len(t & set(PLANET_WEATHER_TAGS)) == 1
        assert "cloudy" not in t or t == {"cloudy"}


# --- Planet labels -------------------------------------------------------------------------


def test_planet_label_rules_and_marginals() -> None:
    n = PLANET_TRAIN_SIZE
    y = sample_planet_labels(n, np.random.default_rng(123))
    assert y.shape == (n, 17) and y.dtype == bool
    idx = {t: i for i, t in enumerate(PLANET.classes)}
    weather = y[:, [idx[t] for t in PLANET_WEATHER_TAGS]]
    assert (weather.sum(axis=1) == 1).all()
    cloudy = y[:, idx["cloudy"]]
    assert (y[cloudy].sum(axis=1) == 1).all()
    for tag, count in PLANET_TAG_COUNTS.items():
        p = count / PLANET_TRAIN_SIZE
        sd = math.sqrt(n * p * (1 - p))
        got = int(y[:, idx[tag]].sum())
        assert abs(got - n * p) <= 4 * sd, (tag, got, n * p, sd)
    # realistic co-occurrence: roads mostly with agriculture, habitation mostly with roads
    agri, road, hab = y[:, idx["agriculture"]], y[:, idx["road"]], y[:, idx["habitation"]]
    assert road[agri].mean() > 2 * road[~agri].mean()
    assert hab[road].mean() > 2 * hab[~road].mean()
    assert tag_string(y[0]) == " ".join(t for t in PLANET.classes if y[0, idx[t]])


# --- Dogs vs Cats ---------------------------------------------------------------------------


def test_dogs_vs_cats_files(dogs_dir: Path) -> None:
    assert dogs_dir.name == DOGS_VS_CATS.slug
    top = {p.name for p in dogs_dir.iterdir()}
    assert top == {f.name for f in DOGS_VS_CATS.files} | {PRIVATE_DIR}

    with zipfile.ZipFile(dogs_dir / "train.zip") as zf:
        infos = zf.infolist()
        assert infos[0].filename == "train/" and infos[0].is_dir()
        names = [i.filename for i in infos[1:]]
        assert sorted(names) == sorted(
            [f"train/cat.{i}.jpg" for i in range(4)] + [f"train/dog.{i}.jpg" for i in range(3)]
        )
        assert all(i.date_time == FIXED_ZIP_DATE for i in infos)
        for name in names:
            img = Image.open(io.BytesIO(zf.read(name)))
            assert img.format == "JPEG" and img.mode == "RGB"
            assert all(150 <= s <= 500 for s in img.size)
    with zipfile.ZipFile(dogs_dir / "test.zip") as zf:
        names = zf.namelist()
        assert names == ["test/"] + [f"test/{i}.jpg" for i in range(1, 6)]

    sample = read_csv((dogs_dir / "sample_submission.csv").read_bytes())
    assert sample == [["id", "label"]] + [[str(i), "0.5"] for i in range(1, 6)]
    solution = read_csv((dogs_dir / PRIVATE_DIR / SOLUTION_CSV).read_bytes())
    assert solution[0] == ["id", "label", "Usage"]
    assert [r[0] for r in solution[1:]] == [str(i) for i in range(1, 6)]
    assert {r[1] for r in solution[1:]} <= {"0", "1"}
    assert {r[2] for r in solution[1:]} <= {"Public", "Private"}


# --- Determinism, validation, atomicity ----------------------------------------------------


@pytest.mark.parametrize(
    ("competition", "sizes"),
    [
        ("planet", {"train": 3, "test": 2, "additional": 1}),
        ("dogs-vs-cats", {"train": 2, "test": 2}),
    ],
)
def test_same_seed_same_bytes_other_seed_other_bytes(
    tmp_path: Path, competition: str, sizes: dict[str, int]
) -> None:
    a = sha256_tree(generate(competition, tmp_path / "a", seed=7, **sizes))
    b = sha256_tree(generate(competition, tmp_path / "b", seed=7, **sizes))
    c = sha256_tree(generate(competition, tmp_path / "c", seed=8, **sizes))
    assert a == b
    images = [f.name for f in (PLANET if competition == "planet" else DOGS_VS_CATS).image_files]
    assert all(a[name] != c[name] for name in images)


def test_planet_bytes_independent_of_threading_and_other_splits(tmp_path: Path) -> None:
    a = sha256_tree(generate("planet", tmp_path / "a", train=3, test=2, additional=1))
    b = sha256_tree(
        generate(
            "planet", tmp_path / "b", train=3, test=2, additional=1, background_compression=False
        )
    )
    c = sha256_tree(generate("planet", tmp_path / "c", train=3, test=4, additional=0))
    assert a == b
    assert a["train-jpg.tar.7z"] == c["train-jpg.tar.7z"]
    assert a["train_v2.csv.zip"] == c["train_v2.csv.zip"]


@pytest.mark.parametrize(
    ("competition", "kwargs", "match"),
    [
        ("planet", {"train": 0}, "train"),
        ("planet", {"train": -5}, "train"),
        ("planet", {"test": 0}, "test"),
        ("planet", {"additional": -1}, "additional"),
        ("planet", {"train": 2.5}, "integer"),
        ("planet", {"train": True}, "integer"),
        ("planet", {"seed": -1}, "seed"),
        ("dogs-vs-cats", {"additional": 3}, "additional"),
        ("mnist", {}, "unknown competition"),
    ],
)
def test_bad_arguments(tmp_path: Path, competition: str, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        generate(competition, tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())  # nothing written


def test_archive_writers_reusable_and_atomic(tmp_path: Path) -> None:
    dest = tmp_path / "x.tar.7z"
    write_tar_7z(dest, "x", [("a.bin", b"hello"), ("b.bin", b"world")])
    with tar_from_7z(dest, tmp_path / "out") as tar:
        assert tar.getnames() == ["x", "x/a.bin", "x/b.bin"]
        assert tar.extractfile("x/b.bin").read() == b"world"

    def failing():
        yield "a.bin", b"hello"
        raise RuntimeError("interrupted")

    for path, write in [
        (tmp_path / "y.tar.7z", lambda p: write_tar_7z(p, "y", failing())),
        (tmp_path / "y.zip", lambda p: write_zip(p, failing(), inner_dir="y")),
    ]:
        with pytest.raises(RuntimeError):
            write(path)
        assert not path.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "x.tar.7z"]


# --- Learnability (cheap statistics, held-out halves) --------------------------------------


def threshold_accuracy(feature: np.ndarray, label: np.ndarray) -> float:
    """Fit a midpoint threshold on the first half, return balanced accuracy on the second."""
    n = len(feature) // 2
    f_tr, y_tr, f_te, y_te = feature[:n], label[:n], feature[n:], label[n:]
    mu1, mu0 = f_tr[y_tr].mean(), f_tr[~y_tr].mean()
    pred = (f_te > (mu0 + mu1) / 2) if mu1 > mu0 else (f_te < (mu0 + mu1) / 2)
    return 0.5 * (pred[y_te].mean() + (~pred[~y_te]).mean())


def test_planet_images_learnable() -> None:
    rng = np.random.default_rng(11)
    bank = planet_amazon.make_texture_bank(rng)
    idx = {t: i for i, t in enumerate(PLANET.classes)}
    pool = sample_planet_labels(3000, rng)
    # cloudy vs clear chips (tags sampled by the model, then 60 of each kept): mean brightness
    cloudy_rows = pool[pool[:, idx["cloudy"]]][:60]
    clear_rows = pool[pool[:, idx["clear"]]][:60]
    rows = np.concatenate([cloudy_rows, clear_rows])[rng.permutation(120)]
    brightness = np.array([planet_amazon.render(r, rng, bank).mean() for r in rows])
    assert threshold_accuracy(brightness, rows[:, idx["cloudy"]]) > 0.95
    # water vs no water on 200 chips as sampled: the share of clearly blue pixels
    rows = pool[:200]
    blue = []
    for row in rows:
        r, g, b = np.clip(planet_amazon.render(row, rng, bank), 0, 255)
        blue.append(((b > g) & (b > r + 20)).mean())
    assert threshold_accuracy(np.array(blue), rows[:, idx["water"]]) > 0.75


def test_dogs_vs_cats_images_learnable() -> None:
    # gradient anisotropy (a cat's tabby stripes are vertical); over seeds this statistic
    # scores ~0.76 +- 0.024 balanced accuracy on 120 held-out photos
    rng = np.random.default_rng(0)
    bank = dogs_cats.make_texture_bank(rng)
    is_dog = np.arange(240) % 2 == 1
    anisotropy = []
    for d in is_dog:
        g = np.clip(dogs_cats.render(bool(d), rng, bank), 0, 255).mean(axis=0)
        gx, gy = np.abs(np.diff(g, axis=1)).mean(), np.abs(np.diff(g, axis=0)).mean()
        anisotropy.append(gx / gy)
    assert threshold_accuracy(np.array(anisotropy), is_dog) > 0.65
