"""Competition metrics, in numpy: Planet's mean F2 and Dogs vs Cats' log loss."""

from __future__ import annotations

import numpy as np


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
