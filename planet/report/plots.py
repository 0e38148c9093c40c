"""Training plots as PNG bytes: LR finder, losses, metrics per epoch, per-class bars, a
confusion matrix.

Design: matplotlib's object API only (`Figure` + `FigureCanvasAgg`), never `pyplot`: no global
figure registry, no backend selection and no rcParams changes, so the functions are safe to call
from worker threads at once and import nothing GUI. Every function returns PNG `bytes` (small
figures, 6x4 in at 100 dpi, a few tens of KB, so a `data:` URI from `planet.report.show.png_data_uri`
fits in a Prefect markdown artifact); `write_png` stores them atomically.

Inputs are plain sequences or dicts; non-finite values (a diverged LR sweep's NaN/inf losses) are
dropped, and an input with nothing to draw raises ValueError.

History entries (`losses_png`, `metric_png`) are dicts, one per epoch:
    epoch       int, the epoch number (used for the x-axis when increasing; else 1, 2, ...)
    train_loss  float, the epoch's training loss
    valid_loss  float or None, the validation loss
    batch_losses  optional list of per-batch training losses of that epoch
    iterations  optional: an int, the cumulative number of batches at the epoch's end, or a list
                of per-batch iteration numbers matching `batch_losses` (default: running count)
    stage       optional str, the recipe stage (e.g. "frozen", "unfrozen"); a vertical line marks
                each change
    <metric>    floats for `metric_png` (e.g. "f2", "accuracy", "log_loss")
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from planet.fileio import atomic_path
from planet.report.show import png_data_uri

__all__ = [
    "class_bars_png",
    "confusion_png",
    "losses_png",
    "lr_finder_png",
    "metric_png",
    "png_data_uri",
    "smooth_losses",
    "write_png",
]

FIGSIZE = (6.0, 4.0)
DPI = 100
MIN_KEPT = 5  # an LR sweep keeps at least this many points (or all it has) after skipping
SUGGESTION_COLORS = ("tab:red", "tab:green", "tab:purple", "tab:orange", "tab:brown")


def _figure(figsize: tuple[float, float] = FIGSIZE) -> tuple[Figure, Axes]:
    fig = Figure(figsize=figsize, dpi=DPI, layout="tight")
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas
    return fig, fig.add_subplot()


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _finite(x: Any) -> bool:
    return x is not None and isinstance(x, int | float | np.number) and math.isfinite(x)


def write_png(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write PNG bytes to `path` atomically (temporary name, then rename); returns the path."""
    if not data.startswith(b"\x89PNG"):
        raise ValueError("not PNG data")
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def smooth_losses(losses: Sequence[float], beta: float = 0.98) -> np.ndarray:
    """fast.ai's debiased exponential moving average (`SmoothenValue`); beta=0 returns a copy."""
    out = np.empty(len(losses))
    avg = 0.0
    for i, v in enumerate(losses):
        avg = beta * avg + (1 - beta) * float(v)
        out[i] = avg / (1 - beta ** (i + 1))
    return out


def _skips(n: int, skip_start: int, skip_end: int) -> tuple[int, int]:
    """Shrink the skips until at least min(n, MIN_KEPT) points remain."""
    start, end = max(0, skip_start), max(0, skip_end)
    keep = min(n, MIN_KEPT)
    while n - start - end < keep:
        if start >= end and start > 0:
            start -= 1
        else:
            end -= 1
    return start, end


def lr_finder_png(
    lrs: Sequence[float],
    losses: Sequence[float],
    suggestions: Mapping[str, float] | None = None,
    skip_start: int = 10,
    skip_end: int = 5,
    smooth_beta: float = 0.98,
) -> bytes:
    """fast.ai's `recorder.plot()`: loss against learning rate on a log axis.

    `losses` are the raw per-batch losses of the sweep; they are smoothed with fast.ai's
    debiased moving average (`smooth_beta`; pass 0 for losses already smoothed) and the raw ones
    drawn faintly behind. Points with a non-finite loss or a non-positive rate are dropped, then
    the first `skip_start` and last `skip_end` (fewer for short sweeps, never all). Each
    suggestion (name -> learning rate, e.g. {"steepest": 3e-3, "min/10": 1e-2}) is a vertical
    line in the legend. fast.ai's beta=0.98 lags a steep drop by a few dozen points, as in
    fast.ai's own plot; suggestions should be computed on the same smoothed losses."""
    if len(lrs) != len(losses):
        raise ValueError(f"{len(lrs)} learning rates but {len(losses)} losses")
    if len(lrs) == 0:
        raise ValueError("empty LR sweep: nothing to plot")
    pts = [(float(lr), float(v)) for lr, v in zip(lrs, losses, strict=True) if _finite(v)]
    pts = [(lr, v) for lr, v in pts if math.isfinite(lr) and lr > 0]
    if not pts:
        raise ValueError("the LR sweep has no finite loss at a positive learning rate")
    x = np.array([p[0] for p in pts])
    raw = np.array([p[1] for p in pts])
    y = smooth_losses(raw, smooth_beta) if smooth_beta > 0 else raw.copy()
    start, end = _skips(len(x), skip_start, skip_end)
    sl = slice(start, len(x) - end)
    x, raw, y = x[sl], raw[sl], y[sl]

    fig, ax = _figure()
    if smooth_beta > 0:
        ax.plot(x, raw, color="tab:blue", alpha=0.25, linewidth=1, label="loss")
    ax.plot(
        x, y, color="tab:blue", linewidth=2, label="smoothed loss" if smooth_beta > 0 else "loss"
    )
    ax.set_xscale("log")
    for i, (name, lr) in enumerate((suggestions or {}).items()):
        if _finite(lr) and lr > 0:
            color = SUGGESTION_COLORS[i % len(SUGGESTION_COLORS)]
            ax.axvline(
                float(lr), color=color, linestyle="--", linewidth=1.2, label=f"{name}: {lr:.2e}"
            )
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("loss")
    ax.set_title("LR finder")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return _png(fig)


def _epoch_x(history: Sequence[Mapping[str, Any]]) -> list[float]:
    """Epoch numbers if strictly increasing, else 1, 2, ... (e.g. epochs restarting per stage)."""
    epochs = [h.get("epoch") for h in history]
    if all(_finite(e) for e in epochs) and all(
        b > a for a, b in zip(epochs, epochs[1:], strict=False)
    ):
        return [float(e) for e in epochs]
    return [float(i + 1) for i in range(len(history))]


def _stage_lines(ax: Axes, history: Sequence[Mapping[str, Any]], ends: Sequence[float]) -> None:
    """A dotted vertical line (labelled with the new stage) wherever `stage` changes."""
    stages = [h.get("stage") for h in history]
    for i in range(1, len(history)):
        if stages[i] != stages[i - 1] and stages[i] is not None:
            ax.axvline(ends[i - 1], color="grey", linestyle=":", linewidth=1.2)
            ax.annotate(
                str(stages[i]),
                xy=(ends[i - 1], 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(3, -12),
                textcoords="offset points",
                fontsize="small",
                color="grey",
            )


def _check_history(history: Sequence[Mapping[str, Any]]) -> None:
    if len(history) == 0:
        raise ValueError("empty history: nothing to plot")
    if not all(isinstance(h, Mapping) for h in history):
        raise ValueError("history entries must be dicts")


def losses_png(history: Sequence[Mapping[str, Any]]) -> bytes:
    """fast.ai's `plot_losses`: per-batch training loss over iterations (when the entries have
    `batch_losses`) and each epoch's train/valid loss at the epoch's end; see the module
    docstring for the keys. Without batch losses the x-axis is the epoch."""
    _check_history(history)
    per_batch = any(h.get("batch_losses") for h in history)
    fig, ax = _figure()
    if per_batch:
        bx: list[float] = []
        by: list[float] = []
        ends: list[float] = []
        count = 0
        for h in history:
            bl = list(h.get("batch_losses") or [])
            it = h.get("iterations")
            if isinstance(it, Sequence) and len(it) == len(bl):
                xs = [float(v) for v in it]
            else:
                xs = [float(count + j + 1) for j in range(len(bl))]
            count = int(it) if _finite(it) else (int(xs[-1]) if xs else count)
            ends.append(float(count))
            for xv, yv in zip(xs, bl, strict=True):
                if _finite(yv):
                    bx.append(xv)
                    by.append(float(yv))
        ax.plot(bx, by, color="tab:blue", alpha=0.5, linewidth=1, label="train (batch)")
        ax.set_xlabel("iteration")
    else:
        ends = _epoch_x(history)
        ax.set_xlabel("epoch")
    drawn = per_batch and len(by) > 0
    for key, color, marker in (("train_loss", "tab:blue", "o"), ("valid_loss", "tab:orange", "s")):
        pts = [
            (x, float(h[key])) for x, h in zip(ends, history, strict=True) if _finite(h.get(key))
        ]
        if pts:
            drawn = True
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                color=color,
                marker=marker,
                linewidth=1.5,
                label=key.replace("_loss", "") + " (epoch)",
            )
    if not drawn:
        raise ValueError("the history has no finite train_loss, valid_loss or batch_losses")
    _stage_lines(ax, history, ends)
    ax.set_ylabel("loss")
    ax.set_title("Losses")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return _png(fig)


def metric_png(history: Sequence[Mapping[str, Any]], keys: Sequence[str] = ("f2",)) -> bytes:
    """Each metric in `keys` per epoch (entries missing a key or with a non-finite value skip
    that point); ValueError if none of the keys has a value."""
    _check_history(history)
    x = _epoch_x(history)
    fig, ax = _figure()
    drawn = False
    for key in keys:
        pts = [(xv, float(h[key])) for xv, h in zip(x, history, strict=True) if _finite(h.get(key))]
        if pts:
            drawn = True
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", linewidth=1.5, label=key)
    if not drawn:
        raise ValueError(f"no finite value of {list(keys)} in the history")
    _stage_lines(ax, history, x)
    ax.set_xlabel("epoch")
    ax.set_ylabel(", ".join(keys))
    ax.set_title("Metrics" if len(keys) > 1 else keys[0])
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return _png(fig)


def class_bars_png(names: Sequence[str], values: Sequence[float], title: str, xlabel: str) -> bytes:
    """A horizontal bar per class (first name at the top), its value written beside it; e.g.
    per-class F2 or thresholds. Non-finite values draw no bar and read "n/a"."""
    if len(names) != len(values):
        raise ValueError(f"{len(names)} names but {len(values)} values")
    if len(names) == 0:
        raise ValueError("no classes to plot")
    vals = [float(v) if _finite(v) else math.nan for v in values]
    height = max(2.5, 0.28 * len(names) + 1.2)
    fig, ax = _figure((FIGSIZE[0], height))
    pos = np.arange(len(names))
    ax.barh(pos, [0.0 if math.isnan(v) else v for v in vals], color="tab:blue", height=0.7)
    ax.set_yticks(pos, [str(n) for n in names], fontsize="small")
    ax.invert_yaxis()
    for p, v in zip(pos, vals, strict=True):
        ax.annotate(
            "n/a" if math.isnan(v) else f"{v:.3g}",
            xy=(0.0 if math.isnan(v) else max(v, 0.0), p),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            fontsize="x-small",
        )
    finite = [v for v in vals if not math.isnan(v)]
    hi = max(finite, default=1.0)
    lo = min(finite + [0.0])
    ax.set_xlim(lo * 1.15 if lo < 0 else 0.0, hi * 1.15 if hi > 0 else 1.0)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(True, axis="x", alpha=0.3)
    return _png(fig)


def confusion_png(matrix: Any, classes: Sequence[str], title: str = "Confusion matrix") -> bytes:
    """fast.ai's `plot_confusion_matrix`: counts with the true class down the rows and the
    predicted one across, each cell shaded by its count and labelled with it."""
    counts = np.asarray(matrix)
    k = len(classes)
    if counts.shape != (k, k) or k == 0:
        raise ValueError(
            f"a confusion matrix of {k} classes must be ({k}, {k}), not {counts.shape}"
        )
    fig, ax = _figure((max(3.5, 1.0 + 0.6 * k), max(3.0, 0.8 + 0.6 * k)))
    ax.imshow(counts, cmap="Blues", vmin=0, vmax=max(1, int(counts.max())))
    pos = np.arange(k)
    ax.set_xticks(pos, [str(c) for c in classes], rotation=90 if k > 4 else 0)
    ax.set_yticks(pos, [str(c) for c in classes])
    half = counts.max() / 2 if counts.size else 0
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                f"{int(counts[i, j])}",
                ha="center",
                va="center",
                color="white" if counts[i, j] > half else "black",
            )
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title)
    return _png(fig)
