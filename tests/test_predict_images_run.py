"""`planet predict-images` on a competition's own test images gives the submission's rows.

A tiny run is made with the library's stage functions (no Prefect): a synthetic competition is
extracted, resized, trained one epoch, predicted with TTA (and a beta), thresholded and written
as a submission. Predicting the test archives again as new imagery, with nothing but the run's
export.pt, must give every image the submission's tags (Planet) or label (Dogs vs Cats).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest

from flows.cli import main
from planet import synthetic
from planet.competitions import DOGS_VS_CATS, PLANET, Competition
from planet.extract.images import extract_images
from planet.extract.tables import extract_table
from planet.fileio import sha256_file
from planet.infer.runs import VALID, fit_decision, predict_run_split, write_run_submission
from planet.learn import stages
from planet.learn.recipe import Recipe, TrainStage
from planet.resize import resize_split
from planet.store.split import random_split
from planet.workspace import Workspace

pytestmark = pytest.mark.slow  # trains two tiny models (about a minute each on a busy CPU)

TINY = Recipe(
    name="tiny-new-images",
    arch="resnet18",
    pretrained=False,
    stages=[TrainStage(size=32, frozen=False, epochs=1, lr="1e-3", batch_size=16)],
)
BETA = 0.4  # the run predicts with fast.ai's TTA mix: predict-images must use it too
METHODS = {PLANET.slug: "squish", DOGS_VS_CATS.slug: "crop"}  # crop: not the default


def make_run(root: Path, comp: Competition) -> dict[str, Any]:
    """A trained run with its submission, made stage by stage; where everything is."""
    sizes = (
        {"train": 40, "test": 12, "additional": 4} if comp is PLANET else {"train": 24, "test": 8}
    )
    kaggle = synthetic.generate(comp.slug, root / "kaggle", seed=5, **sizes)
    ws = Workspace.of(root / "data", comp)
    for f in comp.table_files:
        extract_table(kaggle / f.name, f, ws.tables_dir)
    size, method = TINY.stages[0].size, METHODS[comp.slug]
    for f in comp.image_files:
        extract_images(kaggle / f.name, f, ws.original(f.split).folder, shard_size=16)
        is_test = f.split != "train"
        labels = None if is_test else ws.train_labels()
        resize_split(
            ws.original(f.split).folder,
            ws.sized(size, f.split).folder,
            size,
            labels,
            method=method,  # type: ignore[arg-type]
            is_test=is_test,
        )
    ws.split.write(random_split(ws.original("train").names(), 0.25, seed=42))
    stages.run_stage(ws, TINY, 0, device="cpu", workers=1)
    stages.export(ws, TINY, 0)
    run = stages.model_run(ws, TINY)
    bundle = ws.relative(run.export)
    for split in [VALID, *(f.split for f in comp.image_files if f.split != "train")]:
        predict_run_split(
            ws, run.name, split, bundle, sha256_file(run.export), beta=BETA, device="cpu"
        )
    fit_decision(ws, run.name, size)
    submission = write_run_submission(ws, run.name)
    return {"ws": ws, "kaggle": kaggle, "run": run, "submission": ws.path(submission["path"])}


@pytest.fixture(scope="module", params=[PLANET, DOGS_VS_CATS], ids=["planet", "dogs"])
def trained(request, tmp_path_factory) -> dict[str, Any]:
    return make_run(tmp_path_factory.mktemp("run"), request.param)


def _rows(path: Path) -> tuple[list[str], dict[str, list[str]]]:
    with open(path, newline="") as fh:
        header, *rows = list(csv.reader(fh))
    return header, {r[0]: r for r in rows}


def test_the_competitions_test_images_get_the_submissions_rows(trained, tmp_path, capsys):
    ws, run = trained["ws"], trained["run"]
    comp = ws.competition
    header, expected = _rows(trained["submission"])
    got: dict[str, list[str]] = {}
    for f in comp.image_files:
        if f.split == "train":
            continue
        out = tmp_path / f"{f.split}.csv"
        archive = trained["kaggle"] / f.name  # the Kaggle archive itself: .tar.7z or .zip
        assert (
            main(["predict-images", str(archive), "--model", str(run.export), "--out", str(out)])
            == 0
        )
        assert "skipped 0 bad file(s)" in capsys.readouterr().out
        h, rows = _rows(out)
        assert h == header == list(comp.submission_columns)
        assert not set(rows) & set(got)
        got.update(rows)
    assert got == expected  # every image, the same tags (or label), nothing else
    if comp is PLANET:
        assert len({r[1] for r in got.values()}) > 1, "the answers differ between images"


def test_the_runs_settings_are_found_beside_export_pt(trained):
    from planet.infer.new_images import Predictor

    ws, run = trained["ws"], trained["run"]
    predictor = Predictor(run.export, device="cpu")
    described = predictor.describe()
    assert described["from"] == {"thresholds": "run", "tta": "run", "beta": "run", "method": "run"}
    assert described["run"] == run.name and described["beta"] == BETA and described["tta"] is True
    assert described["method"] == METHODS[ws.slug]
    assert Path(described["thresholds"]) == ws.thresholds(run.name).path
    assert described["size"] == TINY.stages[0].size


def test_the_original_shards_and_a_copied_model_give_the_same_rows(trained, tmp_path):
    """Standalone: export.pt copied out of the workspace, with --thresholds and the run's TTA
    and method given as options, on the extract stage's shards of the first test split."""
    ws, run = trained["ws"], trained["run"]
    comp = ws.competition
    split = next(f.split for f in comp.image_files if f.split != "train")
    model = tmp_path / "export.pt"
    model.write_bytes(run.export.read_bytes())
    out = tmp_path / "shards.csv"
    argv = [
        "predict-images",
        str(ws.original(split).folder),
        "--model",
        str(model),
        "--out",
        str(out),
        "--thresholds",
        str(ws.thresholds(run.name).path),
        "--beta",
        str(BETA),
        "--method",
        METHODS[ws.slug],
    ]
    assert main(argv) == 0
    _, rows = _rows(out)
    _, expected = _rows(trained["submission"])
    names = ws.original(split).names()
    assert sorted(rows) == sorted(names)
    assert {n: rows[n] for n in names} == {n: expected[n] for n in names}
    # without the run's beta the probabilities are others: the settings matter
    other = tmp_path / "no-beta.csv"
    assert main([*argv[:5], str(other), *argv[6:8], "--probabilities"]) == 0
    _, plain = _rows(other)
    probs = tmp_path / "beta.csv"
    assert main([*argv[:5], str(probs), *argv[6:], "--probabilities"]) == 0
    _, mixed = _rows(probs)
    assert any(plain[n][2:] != mixed[n][2:] for n in names)


def test_a_model_without_fitted_thresholds_is_refused_in_one_line(trained, tmp_path, capsys):
    ws, run = trained["ws"], trained["run"]
    model = tmp_path / "export.pt"
    model.write_bytes(run.export.read_bytes())
    source = str(ws.original("train").folder)
    assert (
        main(["predict-images", source, "--model", str(model), "--out", str(tmp_path / "x.csv")])
        == 1
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--thresholds FILE" in err
    assert not (tmp_path / "x.csv").exists()
