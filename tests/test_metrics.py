"""Metrics against scikit-learn's reference implementations and fast.ai v1's formulas."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn import metrics as skm
from sklearn.exceptions import UndefinedMetricWarning

from planet.learn.metrics import (
    accuracy,
    accuracy_thresh,
    binary_log_loss_from_classes,
    epoch_metrics,
    f2_thresh,
    fbeta_samples,
    log_loss,
    per_class_f2,
)

SEEDS = (0, 1, 2, 3, 4)


def multi_label_case(seed: int, n: int = 200, c: int = 17) -> tuple[np.ndarray, np.ndarray]:
    """Random probabilities and tags, with rows of no true tag, no prediction, and neither."""
    rng = np.random.default_rng(seed)
    probs = rng.random((n, c)) ** 2
    targets = (rng.random((n, c)) < 0.2).astype(np.int64)
    targets[:10] = 0  # no true tag
    probs[5:15] = 0.1  # no predicted tag (rows 5..9: neither)
    targets[20:25] = 1  # every tag true
    return probs, targets


def fastai_fbeta(y_pred, y_true, thresh=0.2, beta=2, eps=1e-9):
    """fast.ai v1's `fbeta` with `sigmoid=False` (fastai/metrics.py), in torch."""
    beta2 = beta**2
    y_pred = (y_pred > thresh).float()
    y_true = y_true.float()
    tp = (y_pred * y_true).sum(dim=1)
    prec = tp / (y_pred.sum(dim=1) + eps)
    rec = tp / (y_true.sum(dim=1) + eps)
    res = (prec * rec) / (prec * beta2 + rec + eps) * (1 + beta2)
    return res.mean()


@pytest.mark.parametrize("seed", SEEDS)
def test_f2_thresh_equals_sklearn_samples(seed: int) -> None:
    probs, targets = multi_label_case(seed)
    pred = probs > 0.2
    assert (~targets.any(axis=1) & ~pred.any(axis=1)).sum() >= 5  # rows with neither
    ours = f2_thresh(probs, targets, 0.2)
    assert ours == pytest.approx(
        skm.fbeta_score(targets, pred, beta=2, average="samples", zero_division=0), abs=1e-12
    )
    assert ours == pytest.approx(fbeta_samples(targets, pred, 2), abs=0)
    # The default zero_division ("warn") also scores such rows 0, with a warning.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        assert ours == pytest.approx(
            skm.fbeta_score(targets, pred, beta=2, average="samples"), abs=1e-12
        )
    # fast.ai's eps-smoothed formula differs only by rounding.
    fa = fastai_fbeta(torch.from_numpy(probs), torch.from_numpy(targets)).item()
    assert ours == pytest.approx(fa, abs=1e-6)


def test_f2_zero_division_one_differs() -> None:
    """sklearn's zero_division=1 scores a row with no true and no predicted tag 1; we score 0."""
    targets = np.array([[0, 0, 0], [1, 0, 0]])
    probs = np.array([[0.1, 0.1, 0.1], [0.9, 0.1, 0.1]])
    assert f2_thresh(probs, targets) == pytest.approx(0.5)
    pred = probs > 0.2
    assert skm.fbeta_score(targets, pred, beta=2, average="samples", zero_division=0) == 0.5
    assert skm.fbeta_score(targets, pred, beta=2, average="samples", zero_division=1) == 1.0


def test_f2_hand_example() -> None:
    # tp=1, 2 true, 2 predicted: 5*1 / (4*2 + 2) = 0.5
    assert f2_thresh(np.array([[0.9, 0.5, 0.0]]), np.array([[1, 0, 1]])) == pytest.approx(0.5)


@pytest.mark.parametrize("seed", SEEDS)
def test_accuracy_thresh(seed: int) -> None:
    probs, targets = multi_label_case(seed)
    n, c = probs.shape
    hand = sum((probs[i, j] > 0.2) == bool(targets[i, j]) for i in range(n) for j in range(c)) / (
        n * c
    )
    assert accuracy_thresh(probs, targets, 0.2) == pytest.approx(hand, abs=1e-12)
    # fast.ai v1: ((y_pred > thresh) == y_true.byte()).float().mean(), sigmoid=False
    tp, tt = torch.from_numpy(probs), torch.from_numpy(targets)
    fa = ((tp > 0.2) == tt.byte()).float().mean().item()
    assert accuracy_thresh(tp, tt, 0.2) == pytest.approx(fa, abs=1e-6)


@pytest.mark.parametrize("seed", SEEDS)
def test_per_class_f2_equals_sklearn(seed: int) -> None:
    probs, targets = multi_label_case(seed)
    targets[:, 3] = 0  # a class with no true positive ...
    probs[:, 3] = 0.0  # ... and no prediction: 0
    ours = per_class_f2(probs, targets, 0.2)
    ref = skm.fbeta_score(targets, probs > 0.2, beta=2, average=None, zero_division=0)
    np.testing.assert_allclose(ours, ref, atol=1e-12)
    assert ours.shape == (probs.shape[1],) and ours[3] == 0
    th = np.linspace(0.05, 0.5, probs.shape[1])
    ref = skm.fbeta_score(targets, probs > th, beta=2, average=None, zero_division=0)
    np.testing.assert_allclose(per_class_f2(probs, targets, th), ref, atol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_single_label_against_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    p1 = rng.random(300)
    p1[:3] = [0.0, 1.0, 1e-20]  # clipped
    probs = np.stack([1 - p1, p1], axis=1)
    y = rng.integers(0, 2, 300)
    assert accuracy(probs, y) == pytest.approx(skm.accuracy_score(y, probs.argmax(1)))
    # scikit-learn clips at float64's eps (2.2e-16), Kaggle and we at 1e-15: clip first to compare.
    ref = skm.log_loss(y, np.clip(p1, 1e-15, 1 - 1e-15), labels=[0, 1])
    assert binary_log_loss_from_classes(probs, y) == pytest.approx(ref, rel=1e-9)
    assert binary_log_loss_from_classes(probs, y) == pytest.approx(log_loss(y, p1), abs=0)
    logits = rng.normal(size=(300, 5))
    y5 = rng.integers(0, 5, 300)
    assert accuracy(logits, y5) == pytest.approx(skm.accuracy_score(y5, logits.argmax(1)))


def test_torch_inputs() -> None:
    probs, targets = multi_label_case(0)
    tp = torch.from_numpy(probs).to(torch.bfloat16).requires_grad_()
    tt = torch.from_numpy(targets)
    assert f2_thresh(tp, tt) == pytest.approx(f2_thresh(tp.detach().float().numpy(), targets))
    logits = torch.randn(10, 2, requires_grad=True)
    y = torch.randint(0, 2, (10,))
    assert accuracy(logits, y) == pytest.approx((logits.argmax(1) == y).float().mean().item())


def test_epoch_metrics() -> None:
    probs, targets = multi_label_case(0)
    m = epoch_metrics("multi_label", probs, targets)
    assert set(m) == {"f2", "accuracy_thresh"}
    assert m["f2"] == f2_thresh(probs, targets) and all(isinstance(v, float) for v in m.values())
    p = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    y = np.array([0, 1, 1])
    m = epoch_metrics("single_label", p, y)
    assert set(m) == {"accuracy", "log_loss"}
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, p[:, 1]))
    p3 = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    m = epoch_metrics("single_label", p3, np.array([0, 1]))
    assert m["log_loss"] == pytest.approx(skm.log_loss([0, 1], p3, labels=[0, 1, 2]))
    with pytest.raises(ValueError, match="unknown task"):
        epoch_metrics("regression", probs, targets)


def test_bad_shapes() -> None:
    with pytest.raises(ValueError):
        f2_thresh(np.zeros((3, 4)), np.zeros((3, 5)))
    with pytest.raises(ValueError):
        accuracy(np.zeros((3, 2)), np.array([0, 1]))
    with pytest.raises(ValueError):
        accuracy(np.zeros((2, 2)), np.array([0, 2]))
    with pytest.raises(ValueError):
        binary_log_loss_from_classes(np.zeros((2, 3)), np.array([0, 1]))
