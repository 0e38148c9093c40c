"""Error analysis of validation predictions, fast.ai's `ClassificationInterpretation` for
multi-label too: which images cost the most, and how each class fares at the decision the
submission uses.

    losses        per image: binary cross-entropy summed over the tags (multi-label), or the
                  log loss of the clipped probability of the true class (single-label)
    top losses    the images of highest loss, highest first (ties: in validation order), each
                  with the class whose term of the loss is largest; for a single-label
                  competition the most confident mistakes (wrong at 0.5, by loss)
    per-class     TP, FP, FN, TN, precision, recall and F2 of each class at the chosen
                  thresholds (multi-label) or at 0.5 on the clipped probability (single-label,
                  with its 2x2 confusion matrix); no prediction or no positive scores 0, as
                  scikit-learn's `zero_division=0`
    pictures      the top-losses grid (name, loss, true and predicted classes with their
                  probabilities), `show_results` (predicted vs true, green when all right, red
                  otherwise) and the confusion matrix, as PNG bytes

Everything here works on arrays (`analyse_multi_label`, `analyse_single_label` -> `Analysis`);
`planet.infer.interpretation` reads a run's predictions and writes the files.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

EPS = 1e-7  # probabilities are clipped to [EPS, 1 - EPS] for the losses (finite for 0 and 1)
TOP_K = 16  # images in the top-losses grid
RESULTS_K = 16  # images in the show_results grid
NCOLS = 4
TILE = 160  # pixels per tile: room for a caption of Planet tags
RIGHT = (0, 110, 0)
WRONG = (190, 0, 0)
BETA = 2.0
TABLE_COLUMNS = (
    "class",
    "threshold",
    "support",
    "tp",
    "fp",
    "fn",
    "tn",
    "precision",
    "recall",
    "f2",
)


@dataclass(frozen=True)
class Analysis:
    """The error analysis of one set of validation predictions (see the module doc)."""

    task: str  # "multi_label" or "single_label"
    names: list[str]
    classes: tuple[str, ...]
    probs: np.ndarray  # (n, C) as decided on (single-label: clipped, the classes' columns)
    truth: np.ndarray  # (n, C) bool
    predicted: np.ndarray  # (n, C) bool, at the decision
    losses: np.ndarray  # (n,)
    top: np.ndarray  # positions of the top-losses grid, in its order
    top_title: str
    table: list[dict[str, Any]]  # one row per class, TABLE_COLUMNS
    confusion: np.ndarray | None  # (C, C) counts, true down, predicted across (single-label)

    def top_records(self) -> list[dict[str, Any]]:
        """The top-losses grid's images as JSON-able rows (name, loss, true, predicted)."""
        return [
            {
                "name": self.names[i],
                "loss": round(float(self.losses[i]), 6),
                "true": self._tags(self.truth[i]),
                "predicted": self._tags(self.predicted[i]),
            }
            for i in self.top
        ]

    def _tags(self, row: np.ndarray) -> list[str]:
        return [self.classes[j] for j in np.flatnonzero(row)]


def _probabilities(probs: Any) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if not np.all(np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError("probabilities must be finite and in [0, 1]")
    return p


def multi_label_losses(probs: Any, truth: Any) -> np.ndarray:
    """Per image, the binary cross-entropy summed over the tags (natural log)."""
    p = np.clip(_probabilities(probs), EPS, 1 - EPS)
    t = np.asarray(truth, dtype=np.float64)
    if p.ndim != 2 or p.shape != t.shape:
        raise ValueError(f"expected two equal (n, C) arrays, got {p.shape} and {t.shape}")
    return -(t * np.log(p) + (1 - t) * np.log1p(-p)).sum(axis=1)


def binary_losses(p_positive: Any, y: Any) -> np.ndarray:
    """Per image, the log loss of the positive class's probability against 0/1 labels."""
    p = np.clip(_probabilities(p_positive), EPS, 1 - EPS)
    t = np.asarray(y, dtype=np.float64)
    if p.ndim != 1 or p.shape != t.shape:
        raise ValueError(f"expected two equal (n,) arrays, got {p.shape} and {t.shape}")
    return -(t * np.log(p) + (1 - t) * np.log1p(-p))


def top_losses(losses: Any, k: int | None = None, among: Any = None) -> np.ndarray:
    """Positions of the `k` highest losses (all without `k`), highest first, ties in position
    order; `among`: a boolean mask of the positions that may be chosen."""
    values = np.asarray(losses, dtype=np.float64)
    candidates = np.arange(len(values)) if among is None else np.flatnonzero(among)
    order = candidates[np.argsort(-values[candidates], kind="stable")]
    return order if k is None else order[:k]


def tag_counts(predicted: Any, truth: Any) -> dict[str, np.ndarray]:
    """Per class (column): true positives, false positives, false negatives, true negatives."""
    p = np.asarray(predicted, dtype=bool)
    t = np.asarray(truth, dtype=bool)
    if p.ndim != 2 or p.shape != t.shape:
        raise ValueError(f"expected two equal (n, C) arrays, got {p.shape} and {t.shape}")
    return {
        "tp": (p & t).sum(axis=0),
        "fp": (p & ~t).sum(axis=0),
        "fn": (~p & t).sum(axis=0),
        "tn": (~p & ~t).sum(axis=0),
    }


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = num.astype(np.float64), den.astype(np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def precision_recall_fbeta(
    tp: Any, fp: Any, fn: Any, beta: float = BETA
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per class precision, recall and F-beta from the counts (0 where undefined)."""
    tp, fp, fn = (np.asarray(a) for a in (tp, fp, fn))
    b2 = beta * beta
    return (
        _ratio(tp, tp + fp),
        _ratio(tp, tp + fn),
        _ratio((1 + b2) * tp, (1 + b2) * tp + b2 * fn + fp),
    )


def class_table(
    classes: Sequence[str], thresholds: Sequence[float], predicted: Any, truth: Any
) -> list[dict[str, Any]]:
    """One row per class (TABLE_COLUMNS): its threshold, support, counts and metrics."""
    counts = tag_counts(predicted, truth)
    precision, recall, f2 = precision_recall_fbeta(counts["tp"], counts["fp"], counts["fn"])
    return [
        {
            "class": c,
            "threshold": float(thresholds[j]),
            "support": int(counts["tp"][j] + counts["fn"][j]),
            **{k: int(v[j]) for k, v in counts.items()},
            "precision": float(precision[j]),
            "recall": float(recall[j]),
            "f2": float(f2[j]),
        }
        for j, c in enumerate(classes)
    ]


def confusion_matrix(truth: Any, predicted: Any, n_classes: int) -> np.ndarray:
    """(C, C) counts of class indices: true class down the rows, predicted across."""
    out = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(out, (np.asarray(truth, dtype=np.int64), np.asarray(predicted, dtype=np.int64)), 1)
    return out


def analyse_multi_label(
    names: Sequence[str],
    probs: Any,
    truth: Any,
    classes: Sequence[str],
    thresholds: Sequence[float],
    k: int = TOP_K,
) -> Analysis:
    """Multi-label: a tag is predicted when its probability is above its class's threshold
    (as the submission writes it)."""
    p = _probabilities(probs)
    t = np.asarray(truth).astype(bool)
    th = np.asarray(thresholds, dtype=np.float64)
    if p.shape != t.shape or p.shape != (len(names), len(classes)) or th.shape != (len(classes),):
        raise ValueError(
            f"{len(names)} names, {len(classes)} classes and {len(th)} thresholds do not fit "
            f"probabilities {p.shape} and labels {t.shape}"
        )
    predicted = p > th[None, :]
    losses = multi_label_losses(p, t)
    return Analysis(
        task="multi_label",
        names=list(names),
        classes=tuple(classes),
        probs=p,
        truth=t,
        predicted=predicted,
        losses=losses,
        top=top_losses(losses, k),
        top_title="Top losses (summed binary cross-entropy): true and predicted tags",
        table=class_table(classes, th, predicted, t),
        confusion=None,
    )


def analyse_single_label(
    names: Sequence[str],
    probs: Any,
    truth: Any,
    classes: Sequence[str],
    positive: int,
    clip: float = 0.0,
    k: int = TOP_K,
) -> Analysis:
    """Two classes, one per image (`truth`: class indices): the positive class's probability
    clipped to [clip, 1 - clip] as submitted; the positive class is predicted above 0.5. The
    top-losses grid holds the most confident mistakes (the highest losses when there is none)."""
    p_all = _probabilities(probs)
    y = np.asarray(truth, dtype=np.int64)
    if len(classes) != 2 or p_all.shape != (len(names), 2) or y.shape != (len(names),):
        raise ValueError(
            f"two classes expected, with (n, 2) probabilities and (n,) labels; got "
            f"{len(classes)} classes, {p_all.shape} and {y.shape}"
        )
    negative = 1 - positive
    p = np.clip(p_all[:, positive], clip, 1 - clip)
    losses = binary_losses(p, y == positive)
    pred = np.where(p > 0.5, positive, negative)
    decided = np.empty((len(p), 2))
    decided[:, positive], decided[:, negative] = p, 1 - p
    onehot = np.arange(2)[None, :]
    wrong = pred != y
    top = top_losses(losses, k, among=wrong)
    title = f"Most confident mistakes ({int(wrong.sum())} of {len(y)} wrong)"
    if len(top) == 0:
        top, title = top_losses(losses, k), "No mistakes: the highest losses"
    truth_hot, pred_hot = y[:, None] == onehot, pred[:, None] == onehot
    return Analysis(
        task="single_label",
        names=list(names),
        classes=tuple(classes),
        probs=decided,
        truth=truth_hot,
        predicted=pred_hot,
        losses=losses,
        top=top,
        top_title=title,
        table=class_table(classes, [0.5, 0.5], pred_hot, truth_hot),
        confusion=confusion_matrix(y, pred, 2),
    )


def table_csv(table: Sequence[dict[str, Any]]) -> str:
    """The per-class table as CSV text (TABLE_COLUMNS; metrics to 6 decimals)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=TABLE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in table:
        writer.writerow(
            {
                k: f"{v:.6f}" if isinstance(v, float) and k != "threshold" else v
                for k, v in row.items()
            }
        )
    return buf.getvalue()


def _with_probs(analysis: Analysis, i: int, row: np.ndarray) -> str:
    cols = np.flatnonzero(row)
    if len(cols) == 0:
        return "-"
    return " ".join(f"{analysis.classes[j]} {analysis.probs[i, j]:.2f}" for j in cols)


def worst_classes(analysis: Analysis) -> np.ndarray:
    """Per image, the class whose term of the loss is largest (what the loss is mostly about)."""
    p = np.clip(analysis.probs, EPS, 1 - EPS)
    return np.argmax(np.where(analysis.truth, -np.log(p), -np.log1p(-p)), axis=1)


def top_losses_captions(analysis: Analysis) -> list[str]:
    """Per image of the top-losses grid: its name and loss, the true classes and the predicted
    ones, each with its probability, and (multi-label) the class costing the most."""
    worst = worst_classes(analysis)
    lines = []
    for i in analysis.top:
        text = (
            f"{analysis.names[i]}  loss {analysis.losses[i]:.2f}\n"
            f"true: {_with_probs(analysis, i, analysis.truth[i])}\n"
            f"pred: {_with_probs(analysis, i, analysis.predicted[i])}"
        )
        if analysis.task == "multi_label":
            w = worst[i]
            text += f"\nworst: {analysis.classes[w]} {analysis.probs[i, w]:.2f}"
        lines.append(text)
    return lines


def results_positions(analysis: Analysis, k: int = RESULTS_K) -> np.ndarray:
    """The images `show_results` shows: the first `k` validation images."""
    return np.arange(min(k, len(analysis.names)))


def _tags(analysis: Analysis, row: np.ndarray) -> str:
    return " ".join(analysis.classes[j] for j in np.flatnonzero(row)) or "-"


def top_losses_png(analysis: Analysis, pixels: np.ndarray) -> bytes:
    """The top-losses grid; `pixels` are the images of `analysis.top`, in its order."""
    from planet.report.show import batch_png

    return batch_png(
        pixels,
        texts=top_losses_captions(analysis),
        ncols=NCOLS,
        tile=TILE,
        title=analysis.top_title,
    )


def results_png(analysis: Analysis, pixels: np.ndarray) -> bytes:
    """fast.ai's `show_results`: the images of `results_positions` (`pixels`, in that order)
    with predicted and true classes, green when the prediction is all right, red otherwise."""
    from planet.report.show import batch_png

    shown = results_positions(analysis)
    right = [bool(np.array_equal(analysis.predicted[i], analysis.truth[i])) for i in shown]
    texts = [
        f"{analysis.names[i]}\npred: {_tags(analysis, analysis.predicted[i])}\n"
        f"true: {_tags(analysis, analysis.truth[i])}"
        for i in shown
    ]
    return batch_png(
        pixels,
        texts=texts,
        colors=[RIGHT if r else WRONG for r in right],
        ncols=NCOLS,
        tile=TILE,
        title=f"Predicted vs true: {sum(right)} of {len(shown)} all right",
    )


def confusion_matrix_png(analysis: Analysis) -> bytes:
    """The confusion matrix (single-label analyses only)."""
    from planet.report.plots import confusion_png

    if analysis.confusion is None:
        raise ValueError("a multi-label analysis has no confusion matrix: see its per-class table")
    return confusion_png(analysis.confusion, analysis.classes, "Confusion matrix (validation)")
