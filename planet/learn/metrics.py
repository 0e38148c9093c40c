"""Competition and training metrics, in numpy: Planet's mean F2 and Dogs vs Cats' log loss.

Design: every function takes plain arrays (numpy, or torch tensors on any device, converted
with `.detach().cpu()`) of probabilities (`accuracy` also takes logits: same argmax), so the same
code scores a validation epoch, a threshold search and a submission without fast.ai.

- Multi-label (Planet): `f2_thresh` is the Kaggle metric, mean over samples of F2 of
  `probs > thresh` (equal to scikit-learn's `fbeta_score(average='samples', zero_division=0)`);
  `accuracy_thresh` is fast.ai v1's element-wise accuracy; `per_class_f2` scores each column on
  its own (for per-class thresholds and bar charts).
- Single-label (Dogs vs Cats): `accuracy` (argmax) and `binary_log_loss_from_classes`, Kaggle's
  log loss of P(dog) with probabilities clipped like `log_loss`.
- `epoch_metrics(task, ...)` picks the set a training epoch reports.

fast.ai v1's `fbeta(thresh=0.2, beta=2, eps=1e-9)` adds `eps` to the denominators of per-sample
precision, recall and F, so it differs from `f2_thresh` only by that rounding (below 1e-6 per
sample); both score 0 for a sample with no true and no predicted tag (fast.ai: 0/eps).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from planet.constants import TASK_TYPES


def fbeta_samples(y_true: np.ndarray, y_pred: np.ndarray, beta: float = 2.0) -> float:
    """F-beta per sample, averaged over samples (Kaggle Planet's metric; scikit-learn's
    `fbeta_score(average='samples')`: a sample with no true and no predicted tag scores 0)."""
    t = np.asarray(y_true, dtype=bool)
    p = np.asarray(y_pred, dtype=bool)
    if t.shape != p.shape or t.ndim != 2:
        raise ValueError(f"expected two (n_samples, n_classes) arrays, got {t.shape} and {p.shape}")
    tp = (t & p).sum(axis=1).astype(np.float64)
    n_pred = p.sum(axis=1)
    n_true = t.sum(axis=1)
    b2 = beta * beta
    denom = b2 * n_true + n_pred
    score = np.divide((1 + b2) * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(score.mean())


def log_loss(y_true: np.ndarray, p: np.ndarray, eps: float = 1e-15) -> float:
    """Binary log loss with probabilities clipped to [eps, 1-eps] (Kaggle's definition)."""
    y = np.asarray(y_true, dtype=np.float64)
    q = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    if y.shape != q.shape:
        raise ValueError(f"labels and probabilities differ in shape: {y.shape} vs {q.shape}")
    return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))


def _np(x: Any) -> np.ndarray:
    """A numpy array of `x`; torch tensors (any device, any float dtype) via `.detach().cpu()`."""
    if hasattr(x, "detach"):
        t = x.detach().cpu()
        if t.is_floating_point():
            t = t.float()  # numpy has no bfloat16
        return t.numpy()
    return np.asarray(x)


def _multi_label(probs: Any, targets: Any) -> tuple[np.ndarray, np.ndarray]:
    p = _np(probs).astype(np.float64)
    t = _np(targets)
    if p.shape != t.shape or p.ndim != 2:
        raise ValueError(f"expected two (n_samples, n_classes) arrays, got {p.shape} and {t.shape}")
    if p.shape[0] == 0:
        raise ValueError("no samples")
    return p, t.astype(bool)


def _single_label(probs: Any, target_index: Any) -> tuple[np.ndarray, np.ndarray]:
    p = _np(probs).astype(np.float64)
    y = _np(target_index)
    if p.ndim != 2 or y.shape != (p.shape[0],):
        raise ValueError(
            f"expected (n, C) probabilities and (n,) class indices, got {p.shape} and {y.shape}"
        )
    if p.shape[0] == 0:
        raise ValueError("no samples")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(y == np.round(y)):
            raise ValueError("class indices must be integers")
        y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(f"class indices outside [0, {p.shape[1]})")
    return p, y


def accuracy_thresh(probs: Any, targets: Any, thresh: float = 0.2) -> float:
    """Mean over all elements of `(probs > thresh) == targets` (fast.ai v1's `accuracy_thresh`
    with `sigmoid=False`)."""
    p, t = _multi_label(probs, targets)
    return float(((p > thresh) == t).mean())


def f2_thresh(probs: Any, targets: Any, thresh: float = 0.2) -> float:
    """Mean per-sample F2 of `probs > thresh` (Kaggle Planet's metric; see the module docstring
    for how it differs from fast.ai's `fbeta`)."""
    p, t = _multi_label(probs, targets)
    return fbeta_samples(t, p > thresh, 2.0)


def per_class_f2(
    probs: Any, targets: Any, thresholds: float | Any = 0.2, beta: float = 2.0
) -> np.ndarray:
    """Binary F-beta of each column, `(C,)`: (1+b²)tp / ((1+b²)tp + b² fn + fp), 0 for a class
    with no true and no predicted positive. `thresholds` is one number or one per class."""
    p, t = _multi_label(probs, targets)
    th = np.broadcast_to(np.asarray(_np(thresholds), dtype=np.float64), (p.shape[1],))
    pred = p > th
    tp = (pred & t).sum(axis=0).astype(np.float64)
    fp = (pred & ~t).sum(axis=0)
    fn = (~pred & t).sum(axis=0)
    b2 = beta * beta
    denom = (1 + b2) * tp + b2 * fn + fp
    return np.divide((1 + b2) * tp, denom, out=np.zeros_like(tp), where=denom > 0)


def accuracy(probs_or_logits: Any, target_index: Any) -> float:
    """Fraction of rows whose argmax is the target class (single-label)."""
    p, y = _single_label(probs_or_logits, target_index)
    return float((p.argmax(axis=1) == y).mean())


def binary_log_loss_from_classes(probs: Any, target_index: Any, eps: float = 1e-15) -> float:
    """Kaggle Dogs vs Cats log loss: `log_loss(target == 1, probs[:, 1])` (P(dog), clipped)."""
    p, y = _single_label(probs, target_index)
    if p.shape[1] != 2:
        raise ValueError(f"expected two classes, got {p.shape[1]}")
    return log_loss((y == 1).astype(np.float64), p[:, 1], eps)


def multiclass_log_loss(probs: Any, target_index: Any, eps: float = 1e-15) -> float:
    """Mean of -log(clip(p[target])), the cross-entropy of probabilities."""
    p, y = _single_label(probs, target_index)
    q = np.clip(p[np.arange(len(y)), y], eps, 1 - eps)
    return float(-np.log(q).mean())


def epoch_metrics(task: str, probs: Any, targets: Any, thresh: float = 0.2) -> dict[str, float]:
    """The metrics a validation epoch reports: `multi_label` -> f2, accuracy_thresh;
    `single_label` -> accuracy, log_loss (binary of class 1 for two classes, else cross-entropy)."""
    if task == "multi_label":
        return {
            "f2": f2_thresh(probs, targets, thresh),
            "accuracy_thresh": accuracy_thresh(probs, targets, thresh),
        }
    if task == "single_label":
        p, y = _single_label(probs, targets)
        loss = binary_log_loss_from_classes(p, y) if p.shape[1] == 2 else multiclass_log_loss(p, y)
        return {"accuracy": accuracy(p, y), "log_loss": loss}
    raise ValueError(f"unknown task {task!r}; expected one of {TASK_TYPES}")
