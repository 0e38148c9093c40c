"""Training plots: valid, small PNGs; short, diverged and empty inputs; atomic writes; threads."""

from __future__ import annotations

import io
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from planet.fileio import TMP_PREFIX
from planet.report.plots import (
    class_bars_png,
    losses_png,
    lr_finder_png,
    metric_png,
    png_data_uri,
    smooth_losses,
    write_png,
)

MAX_BYTES = 60_000
CLASSES = [f"class_{i}" for i in range(17)]


def check_png(data: bytes) -> Image.Image:
    assert isinstance(data, bytes) and data.startswith(b"\x89PNG")
    assert 1_000 < len(data) < MAX_BYTES
    img = Image.open(io.BytesIO(data))
    img.load()
    assert img.format == "PNG" and 200 <= img.width <= 1000 and 150 <= img.height <= 1000
    return img


def sweep(n: int = 100, diverge: bool = True) -> tuple[list[float], list[float]]:
    lrs = list(np.geomspace(1e-7, 10, n))
    rng = np.random.default_rng(0)
    losses = [2.0 - 1.5 / (1 + math.exp(-3 * (math.log10(lr) + 3))) for lr in lrs]
    losses = [v + 0.05 * rng.normal() for v in losses]
    if diverge:
        losses[-3:] = [50.0, math.inf, math.nan]
    return lrs, losses


def history(n: int = 6, batches: int = 20) -> list[dict]:
    rng = np.random.default_rng(1)
    out = []
    for e in range(n):
        bl = list(1.0 / (e + 1) + 0.1 * rng.random(batches))
        out.append(
            {
                "epoch": e,
                "train_loss": float(np.mean(bl)),
                "valid_loss": 0.9 / (e + 1) + 0.05,
                "batch_losses": bl,
                "iterations": (e + 1) * batches,
                "stage": "frozen" if e < 3 else "unfrozen",
                "f2": 0.8 + 0.02 * e,
                "accuracy_thresh": 0.9 + 0.01 * e,
            }
        )
    return out


def test_lr_finder() -> None:
    lrs, losses = sweep()
    check_png(lr_finder_png(lrs, losses, {"steepest": 3e-3, "min/10": 1e-2}))
    check_png(lr_finder_png(lrs, losses, None, smooth_beta=0))


def test_lr_finder_short_and_diverged() -> None:
    check_png(lr_finder_png([1e-5, 1e-4, 1e-3], [1.0, 0.8, 0.9]))  # never skips everything
    check_png(lr_finder_png([1e-4], [1.0]))
    check_png(
        lr_finder_png([1e-5, 1e-4, 1e-3, 1e-2], [1.0, 0.5, math.nan, math.inf], {"x": math.nan})
    )
    with pytest.raises(ValueError, match="empty"):
        lr_finder_png([], [])
    with pytest.raises(ValueError, match="no finite"):
        lr_finder_png([1e-3, 1e-2], [math.nan, math.inf])
    with pytest.raises(ValueError):
        lr_finder_png([1e-3, 1e-2], [1.0])


def test_smooth_losses_matches_fastai() -> None:
    v = [1.0, 2.0, 3.0]
    avg, out = 0.0, []
    for i, x in enumerate(v):  # fast.ai's SmoothenValue
        avg = 0.98 * avg + 0.02 * x
        out.append(avg / (1 - 0.98 ** (i + 1)))
    np.testing.assert_allclose(smooth_losses(v), out)
    assert smooth_losses([5.0])[0] == pytest.approx(5.0)


def test_losses() -> None:
    h = history()
    check_png(losses_png(h))
    check_png(losses_png([{k: e[k] for k in ("epoch", "train_loss", "valid_loss")} for e in h]))
    # per-batch iteration numbers as a list, epochs restarting per stage, missing valid loss
    h2 = [
        {
            "epoch": i % 2,
            "train_loss": 1.0,
            "valid_loss": None if i == 0 else 0.9,
            "batch_losses": [1.0, 0.9, math.nan],
            "iterations": [3 * i + 1, 3 * i + 2, 3 * i + 3],
            "stage": "a" if i < 2 else "b",
        }
        for i in range(4)
    ]
    check_png(losses_png(h2))
    check_png(losses_png([{"epoch": 0, "train_loss": 0.5, "valid_loss": 0.6}]))
    with pytest.raises(ValueError, match="empty"):
        losses_png([])
    with pytest.raises(ValueError, match="no finite"):
        losses_png([{"epoch": 0, "train_loss": math.nan, "valid_loss": None}])


def test_metric() -> None:
    h = history()
    check_png(metric_png(h))
    check_png(metric_png(h, keys=("f2", "accuracy_thresh")))
    check_png(metric_png(h[:1]))
    with pytest.raises(ValueError, match="log_loss"):
        metric_png(h, keys=("log_loss",))
    with pytest.raises(ValueError, match="empty"):
        metric_png([])


def test_class_bars() -> None:
    values = list(np.linspace(0, 1, len(CLASSES)))
    check_png(class_bars_png(CLASSES, values, "Per-class F2", "F2"))
    check_png(class_bars_png(["cat", "dog"], [0.3, math.nan], "Thresholds", "threshold"))
    with pytest.raises(ValueError, match="no classes"):
        class_bars_png([], [], "t", "x")
    with pytest.raises(ValueError):
        class_bars_png(["a"], [1.0, 2.0], "t", "x")


def test_data_uri_small() -> None:
    lrs, losses = sweep()
    uri = png_data_uri(lr_finder_png(lrs, losses, {"steepest": 3e-3}))
    assert uri.startswith("data:image/png;base64,") and len(uri) < 80_000


def test_write_png_atomic(tmp_path: Path) -> None:
    data = losses_png(history())
    dest = tmp_path / "plots" / "losses.png"
    assert write_png(dest, data) == dest
    assert dest.read_bytes() == data
    assert not list(dest.parent.glob(f"{TMP_PREFIX}*"))
    with pytest.raises(ValueError):
        write_png(tmp_path / "bad.png", b"not a png")
    assert not (tmp_path / "bad.png").exists()
    assert not list(tmp_path.glob(f"{TMP_PREFIX}*"))


def test_threads() -> None:
    lrs, losses = sweep()
    h = history()
    jobs = [
        lambda: lr_finder_png(lrs, losses, {"steepest": 3e-3}),
        lambda: losses_png(h),
        lambda: metric_png(h, ("f2", "accuracy_thresh")),
        lambda: class_bars_png(CLASSES, list(np.linspace(0, 1, 17)), "Per-class F2", "F2"),
    ] * 2
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda f: f(), jobs))
    for r in results:
        check_png(r)
    # the same inputs give the same image, whichever thread drew it
    assert results[0] == results[4] and results[3] == results[7]
