"""The whole pipeline flow on a tiny synthetic Planet, against the local Kaggle server."""

from __future__ import annotations

import csv
import json
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from planet.competitions import PLANET
from planet.kaggle_local.grader import grade_texts
from planet.learn.recipe import Recipe, TrainStage
from tests.fault_hooks import hook_env

pytestmark = pytest.mark.slow

TINY = Recipe(
    name="tiny",
    arch="resnet18",
    pretrained=False,
    stages=[
        TrainStage(size=32, frozen=False, epochs=2, lr="auto", batch_size=16),
        TrainStage(size=64, frozen=False, epochs=2, lr="slice(1e-4, 3e-3)", batch_size=16),
    ],
    lr_find_iterations=20,
)


def constant_submission(kaggle_dir: Path) -> str:
    """The best constant answer: every tag more frequent than 0.2 in train, for every image."""
    with (kaggle_dir / "_private" / "solution.csv").open() as f:
        names = [row["image_name"] for row in csv.DictReader(f)]
    import io
    import zipfile

    with zipfile.ZipFile(kaggle_dir / "train_v2.csv.zip") as z:
        rows = list(csv.DictReader(io.TextIOWrapper(z.open("train_v2.csv"))))
    counts = {c: 0 for c in PLANET.classes}
    for row in rows:
        for tag in row["tags"].split():
            counts[tag] += 1
    tags = " ".join(c for c in PLANET.classes if counts[c] / len(rows) > 0.2)
    return "image_name,tags\n" + "".join(f"{n},{tags}\n" for n in names)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, prefect_api):
    from flows.demo import run_demo

    workdir = tmp_path_factory.mktemp("pipeline")
    first = run_demo("planet", workdir, train=200, test=60, additional=20, seed=3, recipe=TINY)
    return workdir, first


def test_the_pipeline_ends_with_a_graded_score_better_than_a_constant(demo_run):
    workdir, summary = demo_run
    kaggle_dir = workdir / "kaggle" / PLANET.slug
    constant, _ = grade_texts(
        PLANET, constant_submission(kaggle_dir), (kaggle_dir / "_private/solution.csv").read_text()
    )
    for key in ("competition", "score", "val_metric_default", "val_metric_tuned", "submission"):
        assert summary[key] is not None, key
    assert summary["flow_run_id"]
    assert summary["submitted"] is True
    assert summary["score"] > constant, (summary["score"], constant)
    assert summary["val_metric_tuned"] >= summary["val_metric_default"]
    sub = Path(summary["submission"])
    assert sub.is_file() and sub.read_text().startswith("image_name,tags\n")
    assert len(sub.read_text().splitlines()) == 1 + 60 + 20
    epochs = summary["train"]["epochs"]
    assert [(e["stage"], e["epoch"]) for e in epochs] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert all(np.isfinite(e["f2"]) for e in epochs)
    with Path(summary["per_tag_csv"]).open() as f:
        per_tag = list(csv.DictReader(f))
    assert [r["class"] for r in per_tag] == list(PLANET.classes)
    n_valid = summary["predicted"]["valid"]
    assert all(sum(int(r[k]) for k in ("tp", "fp", "fn", "tn")) == n_valid for r in per_tag)
    top = Path(summary["top_losses_png"])
    assert top.name == "top_losses.png" and top.read_bytes()[:4] == b"\x89PNG"
    assert (top.parent / "results.png").is_file() and (top.parent / "interpretation.json").is_file()


def test_the_results_api_reads_the_demos_outputs(demo_run):
    from planet import results
    from planet.learn.metrics import fbeta_samples

    workdir, summary = demo_run
    data, run = workdir / "data", summary["recipe"]
    row = results.runs(data, "planet").loc[run]
    assert row["kind"] == "model" and (row["stages"], row["epochs"]) == (2, 4)
    assert row["splits"] == "test,test-additional,valid" and bool(row["submission"])
    assert row["val_metric_tuned"] == summary["val_metric_tuned"]
    assert row["public_score"] == summary["score"]
    history = results.metrics(data, PLANET.slug, run)
    assert list(zip(history["stage"], history["epoch"], strict=True)) == [
        (e["stage"], e["epoch"]) for e in summary["train"]["epochs"]
    ]
    assert {"train_loss", "valid_loss", "f2", "seconds"} <= set(history.columns)
    assert history["f2"].tolist() == [e["f2"] for e in summary["train"]["epochs"]]
    probs = results.predictions(data, "planet", run=run, split="valid")
    truth = results.labels(data, "planet").loc[probs.index, probs.columns]  # from train_v2.csv
    assert len(probs) == summary["predicted"]["valid"]
    assert fbeta_samples(truth.to_numpy(), probs.to_numpy() > 0.2) == pytest.approx(
        summary["val_metric_default"]
    )
    assert len(results.predictions(data, "planet", run=run, split="test")) == 60
    fitted = results.thresholds(data, "planet", run)
    assert fitted["threshold"].to_dict() == summary["thresholds"]
    sub = results.submission(data, "planet", run)
    assert len(sub) == 60 + 20 and sub.index.name == "image_name"
    record = results.submit_record(data, "planet", run)
    assert len(record) == 1 and record.loc[0, "public_score"] == summary["score"]


def test_a_second_run_is_cached_and_does_not_submit_again(demo_run):
    from flows.demo import run_demo

    workdir, first = demo_run
    since = datetime.now(UTC)
    again = run_demo("planet", workdir, train=200, test=60, additional=20, seed=3, recipe=TINY)
    assert again["score"] == first["score"]
    assert again["submission"] == first["submission"]
    assert again["train"]["epochs"] == first["train"]["epochs"]
    records = list((workdir / "data" / PLANET.slug / "submissions").glob("*.json"))
    assert records, "the submission's ref is recorded beside the file"
    stored = json.loads(
        (workdir / "kaggle" / PLANET.slug / "_private/submissions.json").read_text()
    )
    assert len(stored) == 1  # the local server saw one submission over both runs

    states = _task_states_since(since)
    cached = ("train stage", "predict", "fit thresholds", "interpret", "write submission", "resize")
    for name in cached:
        assert states.get(name) and set(states[name]) == {"Cached"}, (name, states)


def _task_states_since(since, by=None) -> dict[str, list[str]]:
    """Task run states since `since`, by task (`by`: how a run's name gives its key)."""
    from prefect import get_client
    from prefect.client.schemas.sorting import TaskRunSort

    deadline = time.monotonic() + 30  # task run states arrive as events, a moment late
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(sort=TaskRunSort.EXPECTED_START_TIME_DESC, limit=200)
            if all(r.state is not None for r in runs) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    out: dict[str, list[str]] = {}
    for r in runs:
        if r.expected_start_time and r.expected_start_time >= since:
            out.setdefault((by or _task_name)(r.name), []).append(r.state.name)
    return out


def _task_name(run_name: str) -> str:
    """The task's name from a task run's name ("train stage" from "stage 1: 32px ...")."""
    for prefix, name in (
        ("stage ", "train stage"),
        ("predict ", "predict"),
        ("resize ", "resize"),
        ("fit thresholds", "fit thresholds"),
        ("interpret", "interpret"),
        ("validation split", "validation split"),
        ("write submission", "write submission"),
    ):
        if run_name.startswith(prefix):
            return name
    return run_name


def test_a_failed_train_stage_reruns_alone_and_resumes(demo_run, monkeypatch, tmp_path):
    from flows.demo import run_demo
    from planet.learn import stages
    from planet.workspace import Workspace

    workdir, _ = demo_run
    recipe = TINY.model_copy(update={"name": "tiny-fault"})
    for name, value in hook_env(
        PLANET_FAULT="train-epoch-1=raise", PLANET_FAULT_ONCE=str(tmp_path / "fired")
    ).items():
        monkeypatch.setenv(name, value)
    failed_at = datetime.now(UTC)
    with pytest.raises(Exception, match="fault injected at train-epoch-1"):
        run_demo("planet", workdir, train=200, test=60, additional=20, seed=3, recipe=recipe)
    failed = _task_states_since(failed_at)
    assert failed["train stage"] == ["Failed"]
    assert "predict" not in failed  # the pipeline stopped at the failed stage

    since = datetime.now(UTC)
    done = run_demo("planet", workdir, train=200, test=60, additional=20, seed=3, recipe=recipe)
    states = _task_states_since(since)
    for name in ("resize", "validation split"):
        assert set(states[name]) == {"Cached"}, (name, states)
    assert states["train stage"] == ["Completed", "Completed"]  # stage 1 resumed, stage 2 new
    out = stages.model_run(Workspace.of(workdir / "data", PLANET), recipe).folder
    record = json.loads((out / "stage-1.json").read_text())
    assert record["resumed_from_epoch"] == 1 and record["epochs_run"] == 1
    assert done["score"] is not None and done["recipe"] == recipe.run_name
