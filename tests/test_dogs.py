"""Dogs vs. Cats Redux end to end through the same flows as Planet (single-label, log loss)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from flows.config import PipelineConfig
from planet.competitions import DOGS_VS_CATS, PLANET, resolve
from planet.learn.recipe import Recipe, TrainStage
from planet.store.labels import load_labels

pytestmark = pytest.mark.slow

TINY = Recipe(
    name="tiny-dogs",
    arch="resnet18",
    pretrained=False,
    lr_find_iterations=20,
    stages=[
        TrainStage(size=32, frozen=False, epochs=2, lr="auto", batch_size=16),
        TrainStage(size=64, frozen=False, epochs=3, lr="slice(1e-4, 2e-3)", batch_size=16),
    ],
)


def test_each_competition_brings_its_own_defaults():
    assert PipelineConfig(competition="dogs-vs-cats").recipe.arch == "vgg16"
    assert PipelineConfig(competition="planet").recipe.arch == "resnet50"
    assert resolve("dogs-vs-cats").labels == "file_names"
    assert PLANET.labels == "csv_tags" and PLANET.positive_class is None
    table = load_labels(DOGS_VS_CATS, "unused", ["cat.1", "dog.7"])
    assert table.values.tolist() == [0, 1] and table.kind == "class_index"


def test_dogs_vs_cats_pipeline_beats_the_constant_half(tmp_path, prefect_api):
    from flows.demo import run_demo

    summary = run_demo("dogs-vs-cats", tmp_path, train=240, test=60, seed=4, recipe=TINY)
    assert summary["competition"] == DOGS_VS_CATS.slug
    assert summary["metric"] == "log_loss" and summary["submitted"] is True
    assert summary["score"] < 0.693, summary  # a constant 0.5 scores log(2) = 0.693
    assert summary["val_metric_tuned"] <= summary["val_metric_default"]
    assert 0.0 <= summary["clip"] < 0.5
    epochs = summary["train"]["epochs"]
    assert {"accuracy", "log_loss", "valid_loss"} <= set(epochs[-1])
    with Path(summary["submission"]).open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 60 and list(rows[0]) == ["id", "label"]
    assert [r["id"] for r in rows] == [str(i) for i in range(1, 61)]
    assert all(0.0 <= float(r["label"]) <= 1.0 for r in rows)
    # the error analysis: the most confident mistakes, the per-class table, the confusion matrix
    mistakes = Path(summary["top_losses_png"])
    assert mistakes.name == "confident_mistakes.png" and mistakes.read_bytes()[:4] == b"\x89PNG"
    assert (mistakes.parent / "confusion.png").is_file()
    with Path(summary["per_tag_csv"]).open() as f:
        per_class = list(csv.DictReader(f))
    assert [r["class"] for r in per_class] == ["cat", "dog"]
    cat, dog = per_class
    assert int(dog["tp"]) == int(cat["tn"]) and int(dog["fn"]) == int(cat["fp"])
    counts = sum(int(dog[k]) for k in ("tp", "fp", "fn", "tn"))
    assert counts == summary["predicted"]["valid"]
