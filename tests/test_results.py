"""planet.results: the pipeline's results as DataFrames, and the README's notebook example."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from planet import results
from planet.competitions import DOGS_VS_CATS, PLANET
from planet.infer import ensemble
from planet.infer.predict import write_probs
from planet.infer.runs import VALID, fit_decision, scored_splits, valid_names, write_run_submission
from planet.infer.thresholds import CLIP_CANDIDATES, clip_report, write_thresholds
from planet.learn.members import ensemble_name, members
from planet.learn.metrics import fbeta_samples
from planet.learn.recipe import Recipe, TrainStage
from planet.learn.stages import selection
from planet.workspace import Workspace
from tests.toy import LEARNED, make_toy_planet

KW = {"classes": PLANET.classes, "task": "multi_label", "settings": {"made": "by the test"}}
README = Path(__file__).resolve().parents[1] / "README.md"
RUN = "toy-run"
TINY = Recipe(
    name="tiny",
    arch="resnet18",
    pretrained=False,
    stages=[TrainStage(size=32, frozen=False, epochs=1, lr="1e-3", batch_size=16)],
)


def _probs_like(truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Probabilities that rank the true tags above the others, with noise."""
    return np.clip(0.6 * truth + 0.5 * rng.random(truth.shape), 0, 1)


def make_results(data_dir: Path, run: str = RUN) -> Workspace:
    """A toy Planet workspace with what the predict, thresholds and submission stages write
    for one run: validation and test probabilities, thresholds.json, the submission CSV."""
    ws = make_toy_planet(data_dir, n=60, tests=6)
    rng = np.random.default_rng(0)
    names = valid_names(ws, 32)
    all_names, labels = ws.sized(32, "train").labels()
    truth = labels[[all_names.index(n) for n in names]]
    folder = ws.predictions(run, VALID).folder
    write_probs(folder, names, _probs_like(truth, rng), **KW)
    keys = []
    for split in scored_splits(ws):
        test_names = ws.sized(32, split).labels()[0]
        keys += test_names
        probs = rng.random((len(test_names), len(PLANET.classes)))
        write_probs(ws.predictions(run, split).folder, test_names, probs, **KW)
    ws.tables_dir.mkdir(parents=True, exist_ok=True)
    sample = "image_name,tags\n" + "".join(f"{k},primary\n" for k in keys)
    (ws.tables_dir / "sample_submission_v2.csv").write_text(sample)
    fit_decision(ws, run, 32)
    write_run_submission(ws, run)
    return ws


@pytest.fixture
def toy_results(tmp_path: Path) -> Workspace:
    return make_results(tmp_path / "data")


def test_runs_predictions_labels_thresholds_and_the_submission(toy_results):
    ws = toy_results
    runs = results.runs(ws.root.parent, "planet")
    assert runs.index.tolist() == [RUN]
    row = runs.loc[RUN]
    assert row["kind"] == "model" and row["splits"] == "test,test-additional,valid"
    assert bool(row["submission"]) and row["val_metric_tuned"] >= row["val_metric_default"]

    probs = results.predictions(ws.root.parent, PLANET.slug, run=RUN, split="valid")
    names, values, classes = ws.predictions(RUN, VALID).read()
    assert probs.index.name == "image_name" and probs.index.tolist() == names
    assert probs.columns.tolist() == list(classes) and np.array_equal(probs.to_numpy(), values)

    labels = results.labels(ws.root.parent, "planet")
    all_names, truth = ws.sized(32, "train").labels()
    assert labels.index.tolist() == all_names and labels.columns.tolist() == list(PLANET.classes)
    assert np.array_equal(labels.to_numpy(), truth)
    assert set(labels.columns[labels.sum() > 0]) == set(LEARNED)

    fitted = results.thresholds(ws.root.parent, "planet", RUN)
    report = ws.thresholds(RUN).read()
    assert fitted.index.tolist() == list(PLANET.classes)
    assert fitted["threshold"].to_dict() == report["per_class"]["thresholds"]
    assert fitted["support"].to_dict() == report["support"]
    truth_valid = labels.loc[probs.index].to_numpy()
    assert report["fixed"]["f2"] == pytest.approx(fbeta_samples(truth_valid, probs > 0.2))

    sub = results.submission(ws.root.parent, "planet", RUN)
    lines = ws.submission(RUN).path.read_text().splitlines()
    assert sub.index.name == "image_name" and sub.columns.tolist() == ["tags"]
    assert [f"{k},{t}" for k, t in sub["tags"].items()] == lines[1:]
    assert results.submit_record(ws.root.parent, "planet", RUN).empty  # never submitted


def test_a_missing_result_names_the_stage_to_run(toy_results):
    data = toy_results.root.parent
    with pytest.raises(FileNotFoundError, match="run the predict stage first"):
        results.predictions(data, "planet", run="nothing", split="valid")
    with pytest.raises(FileNotFoundError, match="run the thresholds stage first"):
        results.thresholds(data, "planet", "nothing")
    with pytest.raises(FileNotFoundError, match="run the train stage first"):
        results.metrics(data, "planet", RUN)  # predictions, but no model trained here
    with pytest.raises(ValueError, match="no out-of-fold predictions"):
        results.oof(data, "planet", RUN)


def test_out_of_fold_predictions_of_a_k_fold_ensemble(tmp_path):
    ws = make_toy_planet(tmp_path / "data", n=40, folds=2)
    group = members([TINY], None, 2)
    rng = np.random.default_rng(0)
    split = ws.split.read()
    for member in group:
        held = selection(split, member.fold)[1]
        probs = rng.random((len(held), len(PLANET.classes)))
        folder = ws.predictions(member.run_name, VALID).folder
        write_probs(folder, held, probs, **KW)
        for name in scored_splits(ws):
            folder = ws.predictions(member.run_name, name).folder
            test_names = [f"{name}_{i}" for i in range(3)]
            write_probs(folder, test_names, rng.random((3, len(PLANET.classes))), **KW)
    name = ensemble_name(group)
    ensemble.combine(ws, group, name, "mean", 32)
    by_ensemble = results.oof(ws.root.parent, "planet", name)
    by_run = results.oof(ws.root.parent, "planet", TINY.run_name)
    pd.testing.assert_frame_equal(by_ensemble, by_run)
    assert sorted(by_ensemble.index) == sorted(split.names)  # every train image once
    for member in group:
        held = selection(split, member.fold)[1]
        rows = by_ensemble[by_ensemble["member"] == member.run_name]
        assert rows.index.tolist() == held and set(rows["fold"]) == {member.fold.index + 1}
    member_valid = ws.predictions(group[0].run_name, VALID).frame()
    first = by_ensemble[by_ensemble["member"] == group[0].run_name]
    assert np.array_equal(first[list(PLANET.classes)].to_numpy(), member_valid.to_numpy())
    runs = results.runs(ws.root.parent, "planet")
    assert runs.loc[name, "kind"] == "ensemble"
    assert set(runs.index) == {name, *(m.run_name for m in group)}


def readme_example() -> str:
    """The python block under README's "Use the results in a notebook" heading."""
    text = README.read_text()
    section = text.split("## Use the results in a notebook", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_notebook_example_runs(tmp_path, monkeypatch):
    code = readme_example()
    work = [line for line in code.splitlines() if line.strip() and "import " not in line]
    assert len(work) <= 6  # the run's name, then five lines: probabilities, labels, F2, plot
    make_results(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    scope: dict[str, object] = {}
    exec(compile(code, str(README), "exec"), scope)
    probs, truth = scope["probs"], scope["truth"]
    assert probs.index.equals(truth.index) and probs.shape == truth.shape
    assert scope["f2"] == pytest.approx(fbeta_samples(truth.to_numpy(), probs.to_numpy() > 0.2))
    ax = scope["fig"].axes[0]
    assert len(ax.patches) == len(PLANET.classes)  # one bar per class
    per_class = [bar.get_width() for bar in ax.patches]
    assert all(f > 0 for f, c in zip(per_class, PLANET.classes, strict=True) if c in LEARNED)
    assert all(f == 0 for f, c in zip(per_class, PLANET.classes, strict=True) if c not in LEARNED)


def test_a_single_label_runs_clip_per_candidate(tmp_path):
    rng = np.random.default_rng(0)
    p = np.clip(rng.random(300) * 1.3 - 0.15, 0, 1)  # overconfident: some exact 0s and 1s
    y = rng.random(300) < 0.5
    report = {"kind": "clip", **clip_report(p, y)}
    ws = Workspace.of(tmp_path, DOGS_VS_CATS)
    write_thresholds(ws.thresholds("r").path, report)
    frame = results.thresholds(tmp_path, "dogs-vs-cats", "r")
    assert frame.index.name == "clip" and frame.index.tolist() == sorted(CLIP_CANDIDATES)
    assert frame.loc[frame["chosen"]].index.tolist() == [report["clip"]]
    assert frame["log_loss"].min() == pytest.approx(report["log_loss_clipped"])
    assert frame.loc[0.0, "log_loss"] == pytest.approx(report["log_loss_raw"])
