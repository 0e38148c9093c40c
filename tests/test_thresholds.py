"""Threshold fitting (Planet F2) and probability clipping (Dogs vs Cats log loss)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import fbeta_score

from planet.competitions import PLANET
from planet.infer.thresholds import (
    CLASS_GRID,
    GLOBAL_CANDIDATES,
    RULES,
    best_global_threshold,
    choose_rule,
    clip_report,
    cross_fit,
    f2_at,
    fit_class_thresholds,
    fit_clip,
    read_clip,
    read_thresholds,
    threshold_report,
    write_thresholds,
)


def _model_like(n: int, c: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Targets with varied class frequencies and noisy, informative probabilities."""
    rng = np.random.default_rng(seed)
    freq = rng.uniform(0.02, 0.7, size=c)
    y = (rng.random((n, c)) < freq).astype(np.uint8)
    logits = rng.normal(size=(n, c)) + np.where(y == 1, 2.0, -2.0) + rng.normal(size=c)
    return 1 / (1 + np.exp(-logits)), y


def _noise(n: int, c: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((n, c)), (rng.random((n, c)) < 0.3).astype(np.uint8)


def _naive_fit(p, y, init=0.2, grid=CLASS_GRID, passes=3):
    """Slow reference: recompute the full F2 for every candidate of every class."""
    t = np.full(p.shape[1], init, dtype=np.float64)
    for _ in range(passes):
        changed = False
        for j in range(p.shape[1]):
            current = f2_at(p, y, t)
            scores = []
            for g in grid:
                trial = t.copy()
                trial[j] = g
                scores.append(f2_at(p, y, trial))
            scores = np.array(scores)
            if scores.max() > current + 1e-12:
                t[j] = grid[np.flatnonzero(scores >= scores.max() - 1e-12)[0]]
                changed = True
        if not changed:
            break
    return t


@pytest.mark.parametrize("t", [0.2, 0.5, np.linspace(0.1, 0.6, 5)])
def test_f2_at_matches_sklearn(t):
    p, y = _model_like(300, 5, 1)
    y[:7] = 0  # samples with no true tag: some predicted, some not (the zero-division case)
    p[:3] = 0.0
    pred = p > t
    assert f2_at(p, y, t) == pytest.approx(
        fbeta_score(y, pred, beta=2, average="samples", zero_division=0), abs=1e-12
    )


def test_f2_at_empty_sample_scores_zero_like_sklearn_zero_division_0():
    y = np.array([[0, 0], [1, 0]])
    p = np.array([[0.0, 0.0], [0.9, 0.0]])
    assert f2_at(p, y, 0.2) == 0.5  # planet.learn.metrics: no true and no predicted tag scores 0
    assert fbeta_score(y, p > 0.2, beta=2, average="samples", zero_division=0) == 0.5
    assert fbeta_score(y, p > 0.2, beta=2, average="samples", zero_division=1) == 1.0


def test_low_class_gets_lower_threshold_and_f2_improves():
    rng = np.random.default_rng(0)
    n = 400
    y = np.zeros((n, 3), dtype=np.uint8)
    y[:, 0] = 1  # always present, confidently predicted
    y[:, 1] = rng.random(n) < 0.4
    y[:, 2] = rng.random(n) < 0.3
    p = np.empty((n, 3))
    p[:, 0] = 0.95
    p[:, 1] = np.where(y[:, 1] == 1, 0.8, 0.05)
    p[:, 2] = np.where(y[:, 2] == 1, 0.1, 0.02) + rng.uniform(-0.005, 0.005, n)  # too low
    t = fit_class_thresholds(p, y)
    assert t[2] < 0.2 and 0.025 <= t[2] < 0.095
    assert f2_at(p, y, t) > f2_at(p, y, 0.2) + 0.1
    assert f2_at(p, y, t) == pytest.approx(1.0)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("make", [_model_like, _noise])
def test_fitted_never_below_fixed_baseline(make, seed):
    p, y = make(500, 17, seed)
    t = fit_class_thresholds(p, y)
    assert f2_at(p, y, t) >= f2_at(p, y, 0.2) - 1e-12


def test_ties_go_to_the_lower_threshold():
    # class 1: positives at 0.6, negatives at 0.1, so any threshold in [0.10, 0.60) is perfect
    # (class 0 is always present, so a false positive of class 1 costs F2).
    y = np.array([[1, 1], [1, 0], [1, 1], [1, 0], [1, 1]])
    p = np.where(y == 1, 0.6, 0.1)
    assert fit_class_thresholds(p, y, init=[0.2, 0.7]).tolist() == [0.2, 0.1]
    # starting inside the tied range: no strict improvement, so no change
    assert fit_class_thresholds(p, y, init=[0.2, 0.3]).tolist() == [0.2, 0.3]


def test_no_change_without_strict_improvement():
    p, y = _model_like(200, 4, 3)
    t0 = fit_class_thresholds(p, y)
    assert np.array_equal(fit_class_thresholds(p, y, init=t0), t0)


@pytest.mark.parametrize("seed", range(3))
def test_vectorised_fit_equals_naive_reference(seed):
    p, y = _model_like(150, 5, 10 + seed)
    assert np.array_equal(fit_class_thresholds(p, y), _naive_fit(p, y))
    p, y = _noise(120, 4, seed)
    assert np.array_equal(fit_class_thresholds(p, y), _naive_fit(p, y))


def test_fit_on_planet_sized_validation_never_loses_to_the_fixed_threshold():
    p, y = _model_like(8000, 17, 0)
    fitted = fit_class_thresholds(p, y, passes=3)
    assert fitted.shape == (17,)
    assert f2_at(p, y, fitted) >= f2_at(p, y, 0.2)


def test_best_global_threshold_picks_from_fastai_range():
    assert GLOBAL_CANDIDATES.tolist() == [0.17, 0.18, 0.19, 0.2, 0.21, 0.22, 0.23]
    p, y = _model_like(500, 6, 2)
    t, f2 = best_global_threshold(p, y)
    assert t in GLOBAL_CANDIDATES.tolist()
    assert f2 == pytest.approx(max(f2_at(p, y, c) for c in GLOBAL_CANDIDATES))
    # probabilities far from the range: all candidates tie, the lowest wins
    y = np.array([[1, 0], [0, 1]])
    p = np.where(y == 1, 0.9, 0.01)
    assert best_global_threshold(p, y) == (0.17, 1.0)


def test_cross_fit_returns_finite_numbers():
    p, y = _model_like(600, 17, 4)
    out = cross_fit(p, y, seed=0)
    for key in ("fixed", "global", "per_class", "gain_global", "gain_per_class"):
        assert np.isfinite(out[key])
    assert len(out["folds"]) == 2 and sum(out["halves"]) == 600
    assert out == cross_fit(p, y, seed=0)  # seeded
    assert len(cross_fit(p, y, seed=1, repeats=2)["folds"]) == 4


def test_threshold_report_round_trip(tmp_path):
    p, y = _model_like(400, 17, 5)
    report = threshold_report(p, y, PLANET.classes)
    json.dumps(report)  # JSON-able
    assert report["fixed"]["threshold"] == 0.2
    assert report["per_class"]["f2"] >= report["fixed"]["f2"] - 1e-12
    assert set(report["per_class_f2"]) == set(PLANET.classes)
    assert "cross_fit" in report and report["note"]
    path = tmp_path / "thresholds.json"
    write_thresholds(path, report)
    classes, t = read_thresholds(path)
    assert classes == PLANET.classes
    assert t.tolist() == [report["chosen"]["thresholds"][c] for c in PLANET.classes]
    _, t = read_thresholds(path, "per_class")
    assert t.tolist() == [report["per_class"]["thresholds"][c] for c in PLANET.classes]
    _, g = read_thresholds(path, "global")
    assert np.all(g == report["global"]["threshold"])
    assert list(tmp_path.iterdir()) == [path]


def _calibrated(n: int, c: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated probabilities, alike for every class: per-class thresholds can only fit noise."""
    rng = np.random.default_rng(seed)
    p = rng.beta(0.4, 1.2, size=(n, c))
    return p, (rng.random((n, c)) < p).astype(np.uint8)


def _held_out_best(report):
    cf = report["cross_fit"]
    return max(cf[r] for r in RULES)


@pytest.mark.parametrize("seed", [0, 2, 3])
def test_per_class_thresholds_that_overfit_are_not_submitted(tmp_path, seed):
    """Few validation images: per-class thresholds score best where they were fitted and worst
    on held-out halves; the report chooses (and the submission reads) a single threshold."""
    p, y = _calibrated(40, 17, seed)
    report = threshold_report(p, y, PLANET.classes)
    cf, chosen = report["cross_fit"], report["chosen"]
    assert report["per_class"]["f2"] > report["fixed"]["f2"]  # in sample, per class looks best
    assert cf["per_class"] < max(cf["fixed"], cf["global"])  # held out, it is not
    assert chosen["rule"] in ("fixed", "global")
    assert chosen["f2_cross_fit"] == _held_out_best(report)
    for rule in RULES:  # all three estimates are reported, with why
        assert f"{cf[rule]:.4f}" in chosen["why"]
    path = tmp_path / "thresholds.json"
    write_thresholds(path, report)
    _, submitted = read_thresholds(path)
    expected = report[chosen["rule"]]["threshold"]
    assert submitted.tolist() == [expected] * len(PLANET.classes)


def test_per_class_thresholds_that_pay_off_held_out_are_submitted():
    p, y = _model_like(2000, 17, 0)
    report = threshold_report(p, y, PLANET.classes)
    assert report["chosen"]["rule"] == "per_class"
    assert report["chosen"]["thresholds"] == report["per_class"]["thresholds"]
    assert report["chosen"]["f2"] == report["per_class"]["f2"]


def test_a_tie_goes_to_the_simpler_rule():
    assert choose_rule({"fixed": 0.8, "global": 0.8, "per_class": 0.8})[0] == "fixed"
    assert choose_rule({"fixed": 0.7, "global": 0.8, "per_class": 0.8})[0] == "global"
    assert choose_rule({"fixed": 0.7, "global": 0.8, "per_class": 0.81})[0] == "per_class"


def test_the_decision_reports_and_submits_the_chosen_rule(tmp_path):
    from planet.infer.decision import decision_for
    from planet.synthetic.archives import write_csv

    decision = decision_for(PLANET)
    p, y = _calibrated(40, 17, 0)
    report = decision.fit(p, y, PLANET.classes)
    rule = report["chosen"]["rule"]
    default, tuned = decision.scores(report)
    assert (default, tuned) == (report["fixed"]["f2"], report[rule]["f2"])
    assert decision.honest(report) == report["cross_fit"][rule]
    summary = decision.summary(report)
    assert summary["threshold_rule"] == rule
    assert summary["val_metric_crossfit"] == report["cross_fit"][rule]
    line = decision.log_line(report)
    assert f"submitting {rule.replace('_', ' ')}" in line and "held-out" in line
    fitted = tmp_path / "thresholds.json"
    decision.write(fitted, report)
    tables = tmp_path / "tables"
    names = [f"test_{i}" for i in range(40)]
    write_csv(
        tables / "sample_submission_v2.csv", PLANET.submission_columns, [(n, "") for n in names]
    )
    decision.write_submission(tables, tmp_path / "sub.csv", names, p, fitted)
    rows = (tmp_path / "sub.csv").read_text().splitlines()[1:]
    t = report[rule]["threshold"]
    expected = [" ".join(c for c, v in zip(PLANET.classes, row, strict=True) if v > t) for row in p]
    assert [r.split(",", 1)[1] for r in rows] == expected


def test_read_thresholds_rejects_other_files(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("{}")
    with pytest.raises(ValueError, match="not a threshold report"):
        read_thresholds(path)


def test_fit_clip_overconfident_gets_a_clip():
    rng = np.random.default_rng(0)
    y = (rng.random(2000) < 0.5).astype(float)
    wrong = rng.random(2000) < 0.03
    truth_side = np.where(y == 1, 0.9999, 0.0001)
    p = np.where(wrong, 1 - truth_side, truth_side)
    clip, clipped, raw = fit_clip(p, y)
    assert clip > 0
    assert clipped < raw


def test_fit_clip_calibrated_keeps_zero():
    rng = np.random.default_rng(1)
    p = rng.uniform(0.1, 0.9, 5000)
    y = (rng.random(5000) < p).astype(float)
    clip, clipped, raw = fit_clip(p, y)
    assert clip == 0.0 and clipped == raw  # every candidate ties: the smallest wins


def test_clip_report_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    y = (rng.random(300) < 0.5).astype(float)
    p = np.where(rng.random(300) < 0.9, y, 1 - y) * 0.998 + 0.001
    report = clip_report(p, y)
    json.dumps(report)
    assert report["clip"] > 0 and report["log_loss_clipped"] <= report["log_loss_raw"]
    assert report["log_loss_clipped"] == min(report["candidates"].values())
    write_thresholds(tmp_path / "clip.json", report)
    assert read_clip(tmp_path / "clip.json") == report["clip"]
