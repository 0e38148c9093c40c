"""Labels (Planet CSV, Dogs vs Cats names) and the seeded validation split."""

from __future__ import annotations

import numpy as np
import pytest

from planet.competitions import DOGS_VS_CATS, PLANET
from planet.store.labels import LabelError, labels_from_names, load_labels, parse_tags_csv
from planet.store.split import random_split, read_split, write_split

CLASSES = PLANET.classes


def _write(tmp_path, text: str, *, bom=False, crlf=False):
    if crlf:
        text = text.replace("\n", "\r\n")
    data = text.encode()
    if bom:
        data = b"\xef\xbb\xbf" + data
    path = tmp_path / "train_v2.csv"
    path.write_bytes(data)
    return path


GOOD = "image_name,tags\ntrain_0,haze primary\ntrain_1,agriculture clear primary water\ntrain_2,cloudy\n"


@pytest.mark.parametrize("bom, crlf", [(False, False), (True, False), (False, True), (True, True)])
def test_planet_csv_to_multi_hot(tmp_path, bom, crlf):
    table = parse_tags_csv(_write(tmp_path, GOOD, bom=bom, crlf=crlf), CLASSES)
    assert table.names == ["train_0", "train_1", "train_2"]
    assert table.values.shape == (3, 17) and table.values.dtype == np.uint8
    assert table.tags(0) == ["haze", "primary"]
    assert table.tags(1) == ["agriculture", "clear", "primary", "water"]
    assert table.values[2].sum() == 1 and table.values[2, CLASSES.index("cloudy")] == 1


@pytest.mark.parametrize(
    "text, words",
    [
        ("image_name,tags\ntrain_0,haze primery\n", ["line 2", "train_0", "primery"]),
        ("image_name,tags\ntrain_0,haze\ntrain_1,\n", ["line 3", "train_1", "empty tags"]),
        ("image_name,tags\ntrain_0,haze\ntrain_0,clear\n", ["duplicate", "train_0"]),
        ("name,labels\ntrain_0,haze\n", ["header", "image_name"]),
        ("", ["empty"]),
    ],
)
def test_planet_csv_errors_name_the_problem(tmp_path, text, words):
    path = _write(tmp_path, text)
    with pytest.raises(LabelError) as exc_info:
        parse_tags_csv(path, CLASSES)
    message = str(exc_info.value)
    assert str(path) in message or "line" in message
    for word in words:
        assert word in message


def test_load_labels_checks_images_against_rows(tmp_path):
    tables = tmp_path
    _write(tables, GOOD)
    table = load_labels(PLANET, tables, ["train_2", "train_0", "train_1"])
    assert table.names == ["train_0", "train_1", "train_2"]  # the CSV's order
    aligned = table.take(["train_2", "train_0"])
    assert aligned.names == ["train_2", "train_0"] and aligned.tags(0) == ["cloudy"]
    assert aligned.tags(1) == ["haze", "primary"]
    with pytest.raises(LabelError, match="train_7"):
        table.take(["train_7"])
    with pytest.raises(LabelError, match="no row.*train_9"):
        load_labels(PLANET, tables, ["train_0", "train_1", "train_2", "train_9"])
    with pytest.raises(LabelError, match="missing from the train archive.*train_2"):
        load_labels(PLANET, tables, ["train_0", "train_1"])
    with pytest.raises(LabelError, match="prepare"):
        load_labels(PLANET, tmp_path / "nowhere", ["train_0"])


def test_dogs_vs_cats_labels_from_names():
    table = load_labels(DOGS_VS_CATS, "unused", ["cat.0", "dog.0", "dog.12", "cat.3"])
    assert table.kind == "class_index"
    assert table.values.tolist() == [0, 1, 1, 0]
    with pytest.raises(LabelError, match="horse.1"):
        labels_from_names(["cat.1", "horse.1"], DOGS_VS_CATS.classes)


def test_split_matches_fastai_split_by_rand_pct():
    names = [f"train_{i}" for i in range(1000)]
    split = random_split(names, valid_pct=0.2, seed=42)
    # fast.ai: np.random.seed(42); rand_idx = np.random.permutation(n); valid = rand_idx[:cut]
    np.random.seed(42)
    expected = set(np.random.permutation(1000)[:200].tolist())
    assert set(np.flatnonzero(split.is_valid).tolist()) == expected
    assert len(split.valid_names) == 200 and len(split.train_names) == 800
    assert set(split.valid_names).isdisjoint(split.train_names)


def test_split_is_deterministic_and_seed_dependent():
    names = [f"x{i}" for i in range(300)]
    a, b = random_split(names, seed=7), random_split(names, seed=7)
    c = random_split(names, seed=8)
    assert a.valid_names == b.valid_names
    assert a.valid_names != c.valid_names


def test_folds_partition_the_images(tmp_path):
    names = [f"x{i}" for i in range(103)]
    split = random_split(names, valid_pct=0.2, seed=1, n_folds=5)
    sizes = [len(split.fold_names(k)) for k in range(5)]
    assert sum(sizes) == 103 and max(sizes) - min(sizes) <= 1
    assert sorted(n for k in range(5) for n in split.fold_names(k)) == sorted(names)
    back = read_split(write_split(tmp_path / "split.parquet", split))
    assert back.names == split.names and back.settings == split.settings
    assert np.array_equal(back.is_valid, split.is_valid) and np.array_equal(back.fold, split.fold)
    with pytest.raises(ValueError, match="fold 5"):
        split.fold_names(5)


@pytest.mark.parametrize("kwargs", [{"valid_pct": 1.0}, {"valid_pct": -0.1}, {"n_folds": 1}])
def test_split_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError):
        random_split(["a", "b", "c"], **kwargs)
