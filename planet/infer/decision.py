"""How a competition turns probabilities into its answer: one decision object per task type.

    ClassThresholds   multi-label (Planet): thresholds fitted on validation (fixed 0.2, best
                      global or per class, whichever scores best on held-out halves), F2
    ProbabilityClip   single-label (Dogs vs Cats): probabilities clipped to [c, 1 - c], log loss

A decision fits itself on validation probabilities (`fit` -> a JSON-able report written to
thresholds.json), says what that report means (the default and tuned validation metric, the
summary keys, a log line, a table and a markdown page for people) and writes the submission
from test probabilities (`write_submission`). Flows and tasks ask the competition's decision
(`decision_for`) and never name a task type or a metric.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from planet.competitions import Competition
from planet.fileio import write_json_atomic

if TYPE_CHECKING:
    import pandas as pd


class Decision(ABC):
    """What is fitted on validation and how test probabilities become submission rows."""

    epoch_metric: str  # the validation metric per epoch that tables show ("f2", "log_loss")
    lower_is_better: bool = False  # of `honest` (and of the metric)

    def __init__(self, competition: Competition) -> None:
        self.competition = competition

    @abstractmethod
    def fit(self, probs: np.ndarray, truth: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
        """The report of what was fitted on these validation probabilities and labels."""

    @abstractmethod
    def scores(self, report: dict[str, Any]) -> tuple[float, float]:
        """(default, tuned): the validation metric without and with what was fitted (and is
        submitted), both on all of validation."""

    @abstractmethod
    def honest(self, report: dict[str, Any]) -> float:
        """The tuned metric as it would score on data it was not fitted on (for choosing
        between ways of combining an ensemble)."""

    def better(self, a: float, b: float) -> bool:
        """Whether `honest` value `a` beats `b`."""
        return a < b if self.lower_is_better else a > b

    @abstractmethod
    def targets(self, truth: np.ndarray, n_classes: int) -> np.ndarray:
        """The labels as one float column per class (what a per-class model learns)."""

    def normalise(self, probs: np.ndarray) -> np.ndarray:
        """Per-class probabilities made valid for the task (as given, by default)."""
        return probs

    @abstractmethod
    def summary(self, report: dict[str, Any]) -> dict[str, Any]:
        """What the pipeline's summary shows of the report (e.g. the thresholds)."""

    @abstractmethod
    def log_line(self, report: dict[str, Any]) -> str:
        """One line for the run's log."""

    def table(self, report: dict[str, Any]) -> list[dict[str, Any]] | None:
        """Rows of a table for the UI (None: the report has no table)."""
        return None

    def markdown(self, report: dict[str, Any]) -> str | None:
        """A page for the UI (None: the log line says it all)."""
        return None

    def write(self, path: Path, report: dict[str, Any]) -> None:
        write_json_atomic(path, report)

    @abstractmethod
    def write_submission(
        self, tables_dir: Path, path: Path, names: Sequence[str], probs: np.ndarray, fitted: Path
    ) -> dict[str, Any]:
        """The submission CSV from test probabilities and the fitted file, checked against the
        sample submission (see planet.infer.submission)."""


class ClassThresholds(Decision):
    """Multi-label: a tag is predicted above its class's threshold; mean F2 over images."""

    epoch_metric = "f2"

    def fit(self, probs: np.ndarray, truth: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
        from planet.infer.thresholds import threshold_report

        return threshold_report(probs, truth, classes)

    def scores(self, report: dict[str, Any]) -> tuple[float, float]:
        return report["fixed"]["f2"], report["chosen"]["f2"]

    def honest(self, report: dict[str, Any]) -> float:
        return report["chosen"]["f2_cross_fit"]  # fitted on one half, scored on the other

    def targets(self, truth: np.ndarray, n_classes: int) -> np.ndarray:
        return truth.astype(np.float64)  # already multi-hot

    def summary(self, report: dict[str, Any]) -> dict[str, Any]:
        chosen = report["chosen"]
        return {
            "thresholds": chosen["thresholds"],  # the submitted ones
            "threshold_rule": chosen["rule"],
            "val_metric_crossfit": chosen["f2_cross_fit"],
        }

    def log_line(self, report: dict[str, Any]) -> str:
        cf, chosen = report["cross_fit"], report["chosen"]
        return (
            f"validation F2: {report['fixed']['f2']:.4f} at 0.2, {report['global']['f2']:.4f} at "
            f"the best global {report['global']['threshold']:.2f}, "
            f"{report['per_class']['f2']:.4f} per class (cross-fitted on halves: "
            f"{cf['fixed']:.4f}, {cf['global']:.4f}, {cf['per_class']:.4f}); submitting "
            f"{chosen['rule'].replace('_', ' ')}: {chosen['why']}"
        )

    def table(self, report: dict[str, Any]) -> list[dict[str, Any]]:
        per_class, submitted = report["per_class"]["thresholds"], report["chosen"]["thresholds"]
        return [
            {
                "class": c,
                "support": report["support"][c],
                "threshold": per_class[c],
                "submitted": submitted[c],
                "f2_at_0.2": round(report["per_class_f2_fixed"][c], 4),
                "f2_fitted": round(report["per_class_f2"][c], 4),
            }
            for c in report["classes"]
        ]

    def markdown(self, report: dict[str, Any]) -> str:
        from planet.report import plots
        from planet.report.show import png_data_uri

        classes = report["classes"]
        bars = plots.class_bars_png(
            classes,
            [report["per_class_f2"][c] for c in classes],
            "Per-class F2 (validation)",
            "F2",
        )
        cf, g = report["cross_fit"], report["global"]
        return "\n".join(
            [
                "# Thresholds on validation",
                "",
                "| thresholds | mean F2 (fitted on all of validation) "
                "| mean F2 (cross-fitted halves) |",
                "|---|---:|---:|",
                f"| fixed 0.2 | {report['fixed']['f2']:.4f} | {cf['fixed']:.4f} |",
                f"| best global ({g['threshold']:.2f}) | {g['f2']:.4f} | {cf['global']:.4f} |",
                f"| per class | {report['per_class']['f2']:.4f} | {cf['per_class']:.4f} |",
                "",
                f"Submitted: **{report['chosen']['rule'].replace('_', ' ')}**. "
                f"{report['chosen']['why']}.",
                "",
                report.get("note", ""),
                "",
                f"![per-class F2]({png_data_uri(bars)})",
                "",
            ]
        )

    def write_submission(
        self, tables_dir: Path, path: Path, names: Sequence[str], probs: np.ndarray, fitted: Path
    ) -> dict[str, Any]:
        from planet.infer.submission import make_submission
        from planet.infer.thresholds import read_thresholds

        _, vector = read_thresholds(fitted)
        return make_submission(self.competition, tables_dir, path, names, probs, thresholds=vector)


class ProbabilityClip(Decision):
    """Single-label: the positive class's probability, clipped to [c, 1 - c]; log loss."""

    epoch_metric = "log_loss"
    lower_is_better = True

    def _positive(self, classes: Sequence[str]) -> int:
        comp = self.competition
        return list(classes).index(comp.positive_class or classes[-1])

    def fit(self, probs: np.ndarray, truth: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
        from planet.infer.thresholds import clip_report

        positive = self._positive(classes)
        return {"kind": "clip", **clip_report(probs[:, positive], truth == positive)}

    def scores(self, report: dict[str, Any]) -> tuple[float, float]:
        return report["log_loss_raw"], report["log_loss_clipped"]

    def honest(self, report: dict[str, Any]) -> float:
        return report["log_loss_clipped"]  # one parameter: barely fitted

    def targets(self, truth: np.ndarray, n_classes: int) -> np.ndarray:
        return (truth[:, None] == np.arange(n_classes)[None, :]).astype(np.float64)

    def normalise(self, probs: np.ndarray) -> np.ndarray:
        return probs / probs.sum(axis=1, keepdims=True)  # one class per image: rows sum to 1

    def summary(self, report: dict[str, Any]) -> dict[str, Any]:
        return {"clip": report["clip"]}

    def log_line(self, report: dict[str, Any]) -> str:
        clip = report["clip"]
        return (
            f"validation log loss {report['log_loss_raw']:.4f}, "
            f"{report['log_loss_clipped']:.4f} with probabilities clipped to [{clip:g}, "
            f"{1 - clip:g}]"
        )

    def write_submission(
        self, tables_dir: Path, path: Path, names: Sequence[str], probs: np.ndarray, fitted: Path
    ) -> dict[str, Any]:
        from planet.infer.submission import make_submission
        from planet.infer.thresholds import read_clip

        clip = read_clip(fitted)
        return make_submission(self.competition, tables_dir, path, names, probs, clip=clip)


DECISIONS: dict[str, type[Decision]] = {
    "multi_label": ClassThresholds,
    "single_label": ProbabilityClip,
}


def decision_for(competition: Competition) -> Decision:
    """The competition's decision (by its task type)."""
    return DECISIONS[competition.task](competition)


def report_frame(report: dict[str, Any]) -> pd.DataFrame:
    """thresholds.json as a DataFrame: per class (index) its support, threshold, F2 at 0.2 and
    fitted (multi-label); per candidate clip (index) its validation log loss and whether it was
    chosen (single-label)."""
    import pandas as pd

    if report.get("kind") == "clip":
        losses = {float(c): v for c, v in report["candidates"].items()}
        frame = pd.DataFrame({"log_loss": losses}).rename_axis("clip")
        return frame.assign(chosen=frame.index == float(report["clip"]))
    rows = {
        "support": report["support"],
        "threshold": report["per_class"]["thresholds"],
        "f2_at_0.2": report["per_class_f2_fixed"],
        "f2_fitted": report["per_class_f2"],
    }
    return pd.DataFrame(rows).loc[report["classes"]].rename_axis("class")
