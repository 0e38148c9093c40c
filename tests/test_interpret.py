"""Error analysis (fast.ai's ClassificationInterpretation): per-image losses, top losses, the
per-class counts and metrics at the fitted decision against scikit-learn, the pictures, and
the files under predictions/<run>/ (one model, an ensemble's out-of-fold rows, Dogs vs Cats)."""

from __future__ import annotations

import csv
import io
import math

import numpy as np
import pytest
from PIL import Image
from sklearn import metrics

from planet.competitions import DOGS_VS_CATS, PLANET
from planet.infer.interpretation import (
    CONFIDENT_MISTAKES,
    CONFUSION,
    PER_TAG,
    RESULTS,
    TOP_LOSSES,
    interpretation_inputs,
    write_interpretation,
)
from planet.infer.predict import write_probs
from planet.infer.runs import VALID, fit_decision, valid_names, valid_truth
from planet.report import interpret
from planet.report.show import PAD
from planet.store.sized import read_images, read_sized_pixels
from tests.toy import make_toy_dogs, make_toy_planet


def _random_multi_label(seed: int = 0, n: int = 60, c: int = 6):
    rng = np.random.default_rng(seed)
    truth = rng.random((n, c)) < 0.4
    truth[:, 0] = False  # a class that never occurs
    probs = np.clip(0.6 * truth + 0.5 * rng.random((n, c)), 0, 1)
    probs[:, 1] = 0.0  # a class never predicted
    probs[:3, 2] = 1.0  # saturated probabilities keep finite losses
    return probs, truth


def test_per_tag_counts_and_metrics_match_sklearn():
    probs, truth = _random_multi_label()
    thresholds = np.array([0.2, 0.3, 0.5, 0.45, 0.6, 0.25])
    classes = [f"c{j}" for j in range(probs.shape[1])]
    names = [f"img_{i}" for i in range(len(probs))]
    got = interpret.analyse_multi_label(names, probs, truth, classes, thresholds).table
    predicted = probs > thresholds
    mcm = metrics.multilabel_confusion_matrix(truth, predicted)  # [[tn, fp], [fn, tp]] per class
    precision, recall, f2, support = metrics.precision_recall_fscore_support(
        truth, predicted, beta=2, average=None, zero_division=0
    )
    for j, row in enumerate(got):
        (tn, fp), (fn, tp) = mcm[j]
        assert (row["tp"], row["fp"], row["fn"], row["tn"]) == (tp, fp, fn, tn), row
        assert row["support"] == support[j] and row["threshold"] == thresholds[j]
        assert row["precision"] == pytest.approx(precision[j])
        assert row["recall"] == pytest.approx(recall[j])
        assert row["f2"] == pytest.approx(f2[j])
    assert [r["class"] for r in got] == classes
    assert got[0]["support"] == 0 and got[0]["f2"] == 0.0  # never true: 0, not NaN
    assert got[1]["tp"] + got[1]["fp"] == 0 and got[1]["precision"] == 0.0


def test_losses_are_summed_bce_and_log_loss():
    probs, truth = _random_multi_label(1)
    losses = interpret.multi_label_losses(probs, truth)
    clipped = np.clip(probs, interpret.EPS, 1 - interpret.EPS)
    for i in range(len(probs)):
        expected = metrics.log_loss(truth[i], clipped[i], labels=[0, 1], normalize=False)
        assert losses[i] == pytest.approx(expected)
    p, y = np.array([0.9, 0.2, 0.5, 1.0]), np.array([1, 1, 0, 0])
    got = interpret.binary_losses(p, y)
    assert got[:3] == pytest.approx([-math.log(0.9), -math.log(0.2), math.log(2)])
    assert np.isfinite(got[3]) and got[3] > 15  # a confident mistake, finite
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        interpret.binary_losses([1.2], [1])
    # the class costing the most: a true tag predicted low, or a false one predicted high
    a = interpret.analyse_multi_label(
        ["x", "y"], [[0.9, 0.05, 0.6], [0.3, 0.2, 0.1]], [[1, 0, 0], [1, 0, 1]], "abc", [0.5] * 3
    )
    assert interpret.worst_classes(a).tolist() == [2, 2]
    caption = interpret.top_losses_captions(a)[0]
    assert caption.splitlines() == [
        "y  loss 3.73",
        "true: a 0.30 c 0.10",
        "pred: -",
        "worst: c 0.10",
    ]


def test_top_losses_are_highest_first_ties_in_order():
    losses = [0.5, 2.0, 0.1, 2.0, 3.0, 0.5]
    assert interpret.top_losses(losses).tolist() == [4, 1, 3, 0, 5, 2]
    assert interpret.top_losses(losses, 3).tolist() == [4, 1, 3]
    among = np.array([True, False, True, False, False, True])
    assert interpret.top_losses(losses, 2, among=among).tolist() == [0, 5]
    probs, truth = _random_multi_label(2)
    a = interpret.analyse_multi_label(
        [str(i) for i in range(60)], probs, truth, list("abcdef"), [0.3] * 6, k=5
    )
    assert len(a.top) == 5 and np.all(np.diff(a.losses[a.top]) <= 0)
    assert a.losses[a.top[-1]] >= np.sort(a.losses)[-5]  # no higher loss left out


def test_dogs_confusion_matrix_and_most_confident_mistakes():
    rng = np.random.default_rng(3)
    y = (rng.random(50) < 0.5).astype(int)
    p_dog = np.clip(0.4 * y + 0.6 * rng.random(50) - 0.05, 0, 1)
    probs = np.stack([1 - p_dog, p_dog], axis=1)
    names = [f"x.{i}.jpg" for i in range(50)]
    a = interpret.analyse_single_label(names, probs, y, DOGS_VS_CATS.classes, 1, clip=0.02, k=8)
    pred = (np.clip(p_dog, 0.02, 0.98) > 0.5).astype(int)
    assert a.confusion.tolist() == metrics.confusion_matrix(y, pred, labels=[0, 1]).tolist()
    wrong = np.flatnonzero(pred != y)
    assert len(wrong) > 0
    assert set(a.top) <= set(wrong) and len(a.top) == min(8, len(wrong))
    assert np.all(np.diff(a.losses[a.top]) <= 0)
    clipped = np.clip(p_dog, 0.02, 0.98)
    assert a.losses == pytest.approx(
        [metrics.log_loss([t], [q], labels=[0, 1]) for t, q in zip(y, clipped, strict=True)]
    )
    dog = a.table[1]
    assert (dog["tp"], dog["fp"], dog["fn"], dog["tn"]) == (
        a.confusion[1, 1],
        a.confusion[0, 1],
        a.confusion[1, 0],
        a.confusion[0, 0],
    )
    assert dog["f2"] == pytest.approx(metrics.fbeta_score(y, pred, beta=2))
    assert a.top_records()[0]["true"] != a.top_records()[0]["predicted"]
    perfect = interpret.analyse_single_label(names, np.eye(2)[y], y, DOGS_VS_CATS.classes, 1)
    assert perfect.confusion.trace() == 50 and perfect.top_title.startswith("No mistakes")
    assert len(perfect.top) == interpret.TOP_K


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(data)) as im:
        im.load()  # decodes the whole image
        return im.size


def test_pictures_decode_with_the_expected_size():
    probs, truth = _random_multi_label(4, n=10)
    a = interpret.analyse_multi_label(
        [f"train_{i}" for i in range(10)], probs, truth, list("abcdef"), [0.4] * 6, k=6
    )
    pixels = np.random.default_rng(0).integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
    width, height = _png_size(interpret.top_losses_png(a, pixels))
    assert width == PAD + interpret.NCOLS * (interpret.TILE + PAD)  # 4 tiles a row
    assert height > 2 * interpret.TILE  # two rows of tiles and their captions
    shown = interpret.results_positions(a)
    assert len(shown) == 10
    width, _ = _png_size(interpret.results_png(a, np.zeros((10, 32, 32, 3), np.uint8)))
    assert width == PAD + interpret.NCOLS * (interpret.TILE + PAD)
    with pytest.raises(ValueError, match="captions"):
        interpret.top_losses_png(a, pixels[:5])
    with pytest.raises(ValueError, match="no confusion matrix"):
        interpret.confusion_matrix_png(a)
    dogs = interpret.analyse_single_label(
        ["a", "b", "c"],
        np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]),
        [0, 0, 1],
        ("cat", "dog"),
        1,
    )
    assert dogs.confusion.tolist() == [[1, 1], [1, 0]]
    assert _png_size(interpret.confusion_matrix_png(dogs)) == (350, 300)  # 3.5 x 3 in, 100 dpi


def test_sized_pixels_are_read_by_name_in_the_given_order(tmp_path):
    ws = make_toy_planet(tmp_path, n=30)
    folder = ws.sized(32, "train").folder
    everything = read_images(folder)
    wanted = ["train_7", "train_2", "train_29", "train_7"]
    got = read_sized_pixels(folder, wanted)
    assert np.array_equal(got, everything.images[everything.indices(wanted)])
    assert read_sized_pixels(folder, []).shape == (0, 32, 32, 3)
    with pytest.raises(KeyError, match="nope"):
        read_sized_pixels(folder, ["train_1", "nope"])


def _fake_valid(ws, run: str, rng, size: int = 32) -> None:
    """Validation probabilities as the predict stage writes them: noisy truth."""
    names = valid_names(ws, size)
    truth = valid_truth(ws, names, size)
    classes = ws.competition.classes
    if truth.ndim == 1:  # class indices
        p = np.clip(0.6 * truth + 0.6 * rng.random(len(names)) - 0.1, 0.01, 0.99)
        probs = np.stack([1 - p, p], axis=1)
    else:
        probs = np.clip(0.6 * truth + 0.5 * rng.random(truth.shape), 0, 1)
    task = ws.competition.task
    write_probs(
        ws.predictions(run, VALID).folder,
        names,
        probs,
        classes=classes,
        task=task,
        settings={"fake": run},
    )


def _read_csv(path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_a_runs_analysis_files_and_their_completeness(tmp_path):
    ws = make_toy_planet(tmp_path, n=40)
    _fake_valid(ws, "run", np.random.default_rng(0))
    fitted = fit_decision(ws, "run", 32)
    result = write_interpretation(ws, "run", 32)
    folder = ws.predictions_dir / "run"
    assert result["files"] == {
        "top_losses_png": f"predictions/run/{TOP_LOSSES}",
        "per_tag_csv": f"predictions/run/{PER_TAG}",
        "results_png": f"predictions/run/{RESULTS}",
    }
    for rel in result["files"].values():
        assert ws.path(rel).stat().st_size > 0
    assert _png_size(ws.path(result["files"]["top_losses_png"]).read_bytes())[0] > 0
    rows = _read_csv(folder / PER_TAG)
    assert [r["class"] for r in rows] == list(PLANET.classes)
    names, probs, _ = ws.predictions("run", VALID).read()
    truth = valid_truth(ws, names, 32).astype(bool)
    thresholds = np.array([fitted["report"]["per_class"]["thresholds"][c] for c in PLANET.classes])
    mcm = metrics.multilabel_confusion_matrix(truth, probs > thresholds)
    for row, ((tn, fp), (fn, tp)) in zip(rows, mcm, strict=True):
        assert [int(row[k]) for k in ("tp", "fp", "fn", "tn")] == [tp, fp, fn, tn]
        assert float(row["threshold"]) == pytest.approx(
            fitted["report"]["per_class"]["thresholds"][row["class"]]
        )
    losses = interpret.multi_label_losses(probs, truth)
    assert [r["name"] for r in result["top_losses"]] == [
        names[i] for i in interpret.top_losses(losses, interpret.TOP_K)
    ]

    inputs = interpretation_inputs(ws, "run", 32)
    dataset = ws.interpretation("run")
    assert dataset.complete(inputs)["images"] == len(names) == 10
    assert dataset.complete({**inputs, "valid_sha256": "other"}) is None
    (folder / RESULTS).write_bytes(b"truncated")
    assert dataset.complete(inputs) is None  # a damaged file: not complete
    write_interpretation(ws, "run", 32)
    assert dataset.complete(inputs) is not None
    assert not [p for p in folder.iterdir() if p.name.startswith(".tmp-")]


def test_an_analysis_needs_the_fitted_thresholds(tmp_path):
    ws = make_toy_planet(tmp_path, n=20)
    _fake_valid(ws, "run", np.random.default_rng(1))
    with pytest.raises(FileNotFoundError, match="thresholds"):
        write_interpretation(ws, "run", 32)
    assert not ws.interpretation("run").manifest.exists()


def test_an_ensembles_analysis_is_of_its_out_of_fold_rows(tmp_path):
    from planet.infer import ensemble
    from planet.learn.members import ensemble_name, members
    from tests.test_ensemble import TINY, _fake_member

    ws = make_toy_planet(tmp_path, n=40, folds=4)
    group = members([TINY], None, 4)
    rng = np.random.default_rng(0)
    for member in group:
        _fake_member(ws, member, rng)
    name = ensemble_name(group)
    ensemble.combine(ws, group, name, "mean", 32)
    fit_decision(ws, name, 32)
    write_interpretation(ws, name, 32)
    manifest = ws.interpretation(name).read_manifest()
    assert manifest["images"] == 40  # every train image once, from the model that held it out
    oof_names, oof, _ = ws.predictions(name, VALID).read()
    losses = interpret.multi_label_losses(oof, valid_truth(ws, oof_names, 32))
    assert manifest["top_losses"][0]["name"] == oof_names[int(np.argmax(losses))]


def test_dogs_analysis_writes_confident_mistakes_and_the_confusion_matrix(tmp_path):
    ws = make_toy_dogs(tmp_path, n=48)
    _fake_valid(ws, "dogs", np.random.default_rng(2))
    fitted = fit_decision(ws, "dogs", 32)
    result = write_interpretation(ws, "dogs", 32)
    assert result["files"]["top_losses_png"].endswith(CONFIDENT_MISTAKES)
    assert result["files"]["confusion_png"].endswith(CONFUSION)
    assert _png_size(ws.path(result["files"]["confusion_png"]).read_bytes()) == (350, 300)
    names, probs, _ = ws.predictions("dogs", VALID).read()
    y = valid_truth(ws, names, 32)
    clip = fitted["report"]["clip"]
    pred = (np.clip(probs[:, 1], clip, 1 - clip) > 0.5).astype(int)
    expected = metrics.confusion_matrix(y, pred, labels=[0, 1])
    assert result["confusion"] == expected.tolist()
    rows = _read_csv(ws.path(result["files"]["per_tag_csv"]))
    assert [r["class"] for r in rows] == ["cat", "dog"]
    assert int(rows[1]["tp"]) == expected[1, 1] and int(rows[0]["tp"]) == expected[0, 0]
    wrong = {names[i] for i in np.flatnonzero(pred != y)}
    assert {r["name"] for r in result["top_losses"]} <= wrong or not wrong


def test_the_thresholds_flow_writes_the_analysis_publishes_it_and_caches_it(tmp_path, prefect_api):
    from datetime import UTC, datetime

    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.config import PredictConfig
    from flows.predict import thresholds
    from planet.learn.recipe import Recipe, TrainStage
    from tasks.progress import artifact_key
    from tests.test_pipeline import _task_states_since

    recipe = Recipe(
        name="interp",
        arch="resnet18",
        pretrained=False,
        stages=[TrainStage(size=32, frozen=False, epochs=1, lr="1e-3", batch_size=8)],
    )
    config = PredictConfig(competition="planet", data_dir=str(tmp_path), recipe=recipe)
    ws = make_toy_planet(tmp_path, n=40)
    run = config.run_name
    _fake_valid(ws, run, np.random.default_rng(5))
    first = thresholds(config)
    files = first["interpretation"]["files"]
    assert set(files) == {"top_losses_png", "per_tag_csv", "results_png"}
    assert all(ws.path(rel).is_file() for rel in files.values())
    with get_client(sync_client=True) as client:
        found = {
            a.key: a
            for a in client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(like_=artifact_key(ws.slug, run))
                )
            )
        }
    table = found[artifact_key(ws.slug, run, "per-tag")]
    assert table.type == "table" and "agriculture" in str(table.data)
    picture = found[artifact_key(ws.slug, run, "top-losses")]
    assert picture.type == "markdown" and "data:image/png;base64," in picture.data

    since = datetime.now(UTC)
    again = thresholds(config)
    assert again["interpretation"]["files"] == files
    assert _task_states_since(since)["interpret"] == ["Cached"]
    ws.path(files["top_losses_png"]).unlink()  # deleted outputs: the task runs again
    since = datetime.now(UTC)
    thresholds(config)
    assert _task_states_since(since)["interpret"] == ["Completed"]
    assert ws.path(files["top_losses_png"]).is_file()


def test_show_results_colours_right_green_and_wrong_red():
    names = ["right", "wrong"]
    a = interpret.analyse_multi_label(
        names, [[0.9, 0.1], [0.9, 0.9]], [[1, 0], [1, 0]], ["a", "b"], [0.5, 0.5]
    )
    with Image.open(io.BytesIO(interpret.results_png(a, np.zeros((2, 32, 32, 3), np.uint8)))) as im:
        pixels = np.asarray(im.convert("RGB"))
    tile = interpret.TILE + PAD
    left, right = pixels[:, PAD : PAD + tile - PAD], pixels[:, PAD + tile : PAD + 2 * tile - PAD]
    assert (left == interpret.RIGHT).all(axis=2).any() and not (left == interpret.WRONG).all(
        axis=2
    ).any()
    assert (right == interpret.WRONG).all(axis=2).any() and not (right == interpret.RIGHT).all(
        axis=2
    ).any()
