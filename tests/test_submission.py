"""Submission CSVs: keys from the sample submission, tags/labels, validation, atomic writes."""

from __future__ import annotations

import numpy as np
import pytest

from planet.competitions import DOGS_VS_CATS, PLANET
from planet.infer.submission import (
    SubmissionError,
    dogs_rows,
    expected_keys,
    make_submission,
    planet_rows,
    read_submission,
    validate,
    write_submission,
)
from planet.synthetic.archives import write_csv

PLANET_KEYS = ["test_0", "test_1", "test_2", "file_0", "file_1"]
DOGS_KEYS = [str(i) for i in range(1, 13)]


@pytest.fixture
def tables(tmp_path):
    """A tables/ folder as the prepare stage leaves it (sample submissions only)."""
    d = tmp_path / "tables"
    write_csv(
        d / "sample_submission_v2.csv",
        PLANET.submission_columns,
        [(k, "primary clear agriculture road water") for k in PLANET_KEYS],
    )
    write_csv(
        d / "sample_submission.csv", DOGS_VS_CATS.submission_columns, [(k, 0.5) for k in DOGS_KEYS]
    )
    return d


@pytest.fixture
def out(tmp_path):
    d = tmp_path / "submissions"
    d.mkdir()
    return d


def test_expected_keys(tables):
    assert expected_keys(PLANET, tables) == PLANET_KEYS
    assert expected_keys(DOGS_VS_CATS, tables) == DOGS_KEYS


def test_expected_keys_accepts_bom_and_crlf(tmp_path):
    (tmp_path / "sample_submission.csv").write_bytes(b"\xef\xbb\xbfid,label\r\n1,0.5\r\n2,0.5\r\n")
    assert expected_keys(DOGS_VS_CATS, tmp_path) == ["1", "2"]


def test_expected_keys_missing_table(tmp_path):
    with pytest.raises(SubmissionError, match=r"sample_submission_v2\.csv.*run the prepare stage"):
        expected_keys(PLANET, tmp_path)


def test_planet_thresholds_per_class_and_jpg_stripped():
    classes = ("a", "b", "c")
    probs = np.array([[0.5, 0.15, 0.05], [0.1, 0.1, 0.1], [0.3, 0.3, 0.3]])
    names = ["test_0.jpg", "test_1", "file_0.JPG"]
    assert planet_rows(names, probs, classes, 0.2) == [
        ("test_0", "a"),
        ("test_1", ""),  # nothing above threshold: an empty tags cell
        ("file_0", "a b c"),
    ]
    assert planet_rows(names, probs, classes, [0.6, 0.12, 0.04]) == [
        ("test_0", "b c"),
        ("test_1", "c"),
        ("file_0", "b c"),
    ]


def test_planet_round_trip_in_sample_order(tables, out):
    rng = np.random.default_rng(0)
    names = ["file_1", "test_2", "test_0.jpg", "file_0", "test_1"]  # shard order, not sample's
    probs = rng.random((5, 17))
    t = np.full(17, 0.5)
    info = make_submission(PLANET, tables, out / "sub.csv", names, probs, thresholds=t)
    header, rows = read_submission(out / "sub.csv")
    assert header == ["image_name", "tags"]
    assert [r[0] for r in rows] == PLANET_KEYS
    by_name = dict(planet_rows(names, probs, PLANET.classes, t))
    assert all(r[1] == by_name[r[0]] for r in rows)
    assert info["rows"] == 5 and len(info["sha256"]) == 64
    assert info["preview"][0] == "image_name,tags" and len(info["preview"]) == 5
    data = (out / "sub.csv").read_bytes()
    assert b"\r" not in data and data.endswith(b"\n")
    assert [p.name for p in out.iterdir()] == ["sub.csv"]


def test_dogs_clip_and_ids():
    rows = dogs_rows(["12.jpg", "3", "7.jpg"], np.array([1.0, 0.0, 0.4]), clip=0.02)
    assert rows == [("12", "0.980000"), ("3", "0.020000"), ("7", "0.400000")]
    tiny = dogs_rows(["1"], np.array([1e-9]), clip=0.0)
    assert float(tiny[0][1]) == 1e-9  # not rounded to 0


def test_dogs_round_trip_in_sample_order(tables, out):
    names = [f"{i}.jpg" for i in (12, 3, 1, 10, 2, 4, 5, 6, 7, 8, 9, 11)]
    p_dog = np.linspace(0, 1, 12)
    info = make_submission(DOGS_VS_CATS, tables, out / "sub.csv", names, p_dog, clip=0.01)
    header, rows = read_submission(out / "sub.csv")
    assert header == ["id", "label"]
    assert [r[0] for r in rows] == DOGS_KEYS  # numeric order of the sample, not "1, 10, 11"
    got = {r[0]: float(r[1]) for r in rows}
    for name, p in zip(names, p_dog, strict=True):
        assert got[name.removesuffix(".jpg")] == pytest.approx(np.clip(p, 0.01, 0.99), abs=1e-6)
    assert min(got.values()) == 0.01 and max(got.values()) == 0.99
    assert info["rows"] == 12


def test_dogs_two_column_probabilities(tables, out):
    p = np.linspace(0.1, 0.9, 12)
    probs = np.stack([1 - p, p], axis=1)  # (cat, dog)
    make_submission(DOGS_VS_CATS, tables, out / "a.csv", DOGS_KEYS, probs)
    make_submission(DOGS_VS_CATS, tables, out / "b.csv", DOGS_KEYS, p)
    assert (out / "a.csv").read_bytes() == (out / "b.csv").read_bytes()


@pytest.mark.parametrize(
    "keys, words",
    [
        (PLANET_KEYS[:-1], ["1 missing", "file_1"]),
        ([*PLANET_KEYS, "test_99"], ["1 extra", "test_99"]),
        ([*PLANET_KEYS, "test_1"], ["1 duplicate", "test_1"]),
        (
            ["test_0", "test_0", "test_1", "test_2", "file_0", "bogus"],
            ["missing", "file_1", "extra", "bogus", "duplicate", "test_0"],
        ),
    ],
)
def test_bad_keys_raise_and_leave_nothing(tables, out, keys, words):
    rows = [(k, "primary") for k in keys]
    with pytest.raises(SubmissionError) as exc:
        write_submission(
            out / "sub.csv", PLANET.submission_columns, rows, expected_keys(PLANET, tables)
        )
    for w in words:
        assert w in str(exc.value)
    assert "image_name" in str(exc.value) and "Predict every test image" in str(exc.value)
    assert list(out.iterdir()) == []


def test_validation_error_lists_at_most_ten(out):
    expected = [f"test_{i}" for i in range(25)]
    with pytest.raises(
        SubmissionError, match=r"25 missing image_name\(s\): test_0, .*test_9 and 15 more"
    ):
        validate([], expected, "image_name")
    validate(list(reversed(expected)), expected)  # order does not matter


def test_bad_planet_names_via_make_submission(tables, out):
    probs = np.full((4, 17), 0.9)
    with pytest.raises(SubmissionError, match="file_1"):
        make_submission(PLANET, tables, out / "sub.csv", PLANET_KEYS[:4], probs)
    assert list(out.iterdir()) == []


def test_bad_values_rejected():
    with pytest.raises(SubmissionError, match="outside"):
        dogs_rows(["1", "2"], np.array([0.5, np.nan]))
    with pytest.raises(SubmissionError, match="NaN"):
        planet_rows(["test_0"], np.array([[np.nan, 0.1]]), ("a", "b"))
    with pytest.raises(SubmissionError, match="image names"):
        planet_rows(["test_0"], np.zeros((2, 2)), ("a", "b"))
    with pytest.raises(SubmissionError, match="threshold"):
        planet_rows(["test_0"], np.zeros((1, 2)), ("a", "b"), [0.1, 0.2, 0.3])
