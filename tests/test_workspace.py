"""The catalog (planet.workspace): every dataset's path, and complete() as the one answer."""

from __future__ import annotations

import numpy as np
import pytest

from planet.competitions import DOGS_VS_CATS, PLANET
from planet.fileio import write_json_atomic
from planet.store.shards import ShardError
from planet.store.split import random_split
from planet.workspace import Workspace


def test_the_layout_the_readme_documents(tmp_path):
    ws = Workspace.of(tmp_path, "planet")
    root = tmp_path.resolve() / PLANET.slug
    assert ws.root == root and ws.slug == PLANET.slug
    assert ws.raw("train-jpg.tar.7z").path == root / "raw" / "train-jpg.tar.7z"
    assert ws.table("train_v2.csv.zip").path == root / "tables" / "train_v2.csv"
    assert ws.original("test").folder == root / "shards" / "original" / "test"
    assert ws.original("test").files_folder == root / "images" / "test"
    assert ws.split.path == root / "shards" / "split.parquet"
    assert ws.sized(64, "train").folder == root / "shards" / "64" / "train"
    assert ws.sized(64, "train").batch_picture == root / "shards" / "64" / "train" / "batch.png"
    run = ws.model_run("r-1")
    assert run.folder == root / "models" / "r-1" and run.export == run.folder / "export.pt"
    assert run.stage_weights(0).name == "stage-1.pt" and run.checkpoints(1).name == "stage-2.ckpt"
    assert ws.predictions("r-1", "valid").folder == root / "predictions" / "r-1" / "valid"
    assert ws.thresholds("r-1").path == root / "predictions" / "r-1" / "thresholds.json"
    assert ws.submission("r-1").path == root / "submissions" / "r-1.csv"
    assert ws.path(ws.relative(run.export)) == run.export
    assert ws.relative(run.export) == "models/r-1/export.pt"


def test_datasets_are_named_by_the_competitions_files(tmp_path):
    ws = Workspace.of(tmp_path, PLANET)
    with pytest.raises(KeyError, match="train_v2.csv.zip"):
        ws.raw("train.zip")
    assert ws.labels_table().data_file.name == "train_v2.csv.zip"
    assert ws.sample_submission().path.name == "sample_submission_v2.csv"
    dogs = Workspace.of(tmp_path, DOGS_VS_CATS)
    assert dogs.labels_table() is None and dogs.labels_record() is None
    assert dogs.sample_submission().path.name == "sample_submission.csv"


def test_a_missing_input_names_the_stage_to_run(tmp_path):
    ws = Workspace.of(tmp_path, PLANET)
    with pytest.raises(FileNotFoundError, match="run the resize stage first"):
        ws.split.read()
    with pytest.raises(ShardError, match="run the extract stage again"):
        ws.original("train").read_manifest()
    with pytest.raises(FileNotFoundError, match="run the predict stage first"):
        ws.predictions("r", "valid").read_manifest()
    with pytest.raises(FileNotFoundError, match="run the thresholds stage first"):
        ws.thresholds("r").require("thresholds")
    with pytest.raises(FileNotFoundError, match="run the fetch step first"):
        ws.raw("train_v2.csv.zip").read()


def test_the_split_is_complete_only_with_the_same_settings(tmp_path):
    ws = Workspace.of(tmp_path, PLANET)
    settings = {"valid_pct": 0.25, "seed": 1, "n_folds": None}
    assert ws.split.complete(settings) is None  # not there
    ws.split.write(random_split([f"train_{i}" for i in range(8)], 0.25, seed=1))
    assert ws.split.complete(settings).valid_names == ws.split.read().valid_names
    assert ws.split.complete({**settings, "seed": 2}) is None
    ws.split.path.write_bytes(b"not parquet")
    assert ws.split.complete(settings) is None


def test_a_stage_is_complete_while_its_record_and_weights_agree(tmp_path):
    run = Workspace.of(tmp_path, PLANET).model_run("r")
    weights = run.stage_weights(0)
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"w" * 10)
    write_json_atomic(run.stage_record(0), {"fingerprint": "abc", "bytes": 10})
    assert run.stage_complete(0, "abc") == {"fingerprint": "abc", "bytes": 10}
    assert run.stage_complete(0, "other") is None  # other settings or data
    weights.write_bytes(b"w" * 9)
    assert run.stage_complete(0, "abc") is None  # not the weights it recorded
    weights.unlink()
    assert run.stage_complete(0, "abc") is None  # deleted: the stage runs again
    assert run.stage_complete(1, "abc") is None  # never ran


def test_predictions_are_complete_only_for_the_same_model(tmp_path):
    from planet.infer.predict import predict_split
    from tests.toy import make_toy_planet

    make_toy_planet(tmp_path, n=8, sizes=(32,))
    ws = Workspace.of(tmp_path, PLANET)
    out = ws.predictions("r", "train")
    assert not out.complete({"bundle_sha256": "a"})

    class Constant:
        training = False

        def parameters(self):
            return iter(())

        def eval(self):
            return self

        def train(self, mode=True):
            return self

        def __call__(self, x):
            import torch

            return torch.zeros(len(x), len(PLANET.classes))

    predict_split(
        Constant(),
        ws.sized(32, "train").folder,
        out.folder,
        classes=PLANET.classes,
        task="multi_label",
        tta=False,
        settings={"bundle_sha256": "a"},
    )
    assert out.complete({"bundle_sha256": "a"}, tta=False)
    assert not out.complete({"bundle_sha256": "b"})
    assert not out.complete({"bundle_sha256": "a"}, tta=True)
    names, probs, classes = out.read()
    assert len(names) == 8 and np.allclose(probs, 0.5) and classes == PLANET.classes
