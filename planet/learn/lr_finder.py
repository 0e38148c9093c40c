"""fast.ai's learning-rate finder.

An exponential sweep of the learning rate from `start_lr` to `end_lr` over `num_it` training
steps (one rate for every layer group, as fast.ai's `lr_find` does), recording the loss
smoothed like fast.ai (exponential moving average, beta 0.98, debiased). The sweep stops early
when the smoothed loss exceeds 4x the best one seen (it diverged) or stops being finite. The
model's weights, buffers, mode and the RNG are restored afterwards: the finder only looks.

Two suggestions are reported:
- `steepest`: the rate where the smoothed loss falls fastest (the minimum of its gradient with
  respect to log10(lr), skipping the first 10 and last 5 points: fast.ai v1's suggestion);
- `min/10`: a tenth of the rate at the lowest smoothed loss (fast.ai v2's `lr_min`), which
  is the more robust of the two on short, noisy sweeps.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from torch import nn

from planet.learn.fit import (
    Task,
    _train_step,
    loss_function,
    make_optimizer,
    param_groups,
    precision_for,
    preserved,
)
from planet.learn.loader import Loader
from planet.learn.precision import Precision

SKIP_START = 10
SKIP_END = 5
SMOOTH_BETA = 0.98
DIVERGE_FACTOR = 4.0


@dataclass
class LRFinderResult:
    lrs: list[float]
    losses: list[float]  # smoothed
    raw_losses: list[float]
    suggestions: dict[str, float] = field(default_factory=dict)
    stopped_early: bool = False

    def suggestion(self, which: str = "min/10") -> float:
        try:
            return self.suggestions[which]
        except KeyError:
            raise ValueError(
                f"no {which!r} suggestion: the sweep gave {sorted(self.suggestions)}"
            ) from None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> LRFinderResult:
        return cls(**obj)

    def table(self, every: int = 1) -> list[dict[str, float]]:
        """Rows (lr, smoothed loss, raw loss) for a table artifact."""
        rows = zip(self.lrs, self.losses, self.raw_losses, strict=True)
        return [
            {"lr": float(f"{lr:.3g}"), "loss": round(s, 5), "raw_loss": round(r, 5)}
            for i, (lr, s, r) in enumerate(rows)
            if i % every == 0 or i == len(self.lrs) - 1
        ]


def exponential_lrs(start_lr: float, end_lr: float, num_it: int) -> list[float]:
    """fast.ai's `annealing_exp`: start * (end/start) ** (i / (num_it - 1))."""
    if not 0 < start_lr < end_lr:
        raise ValueError(f"need 0 < start_lr < end_lr, got {start_lr}, {end_lr}")
    return [start_lr * (end_lr / start_lr) ** (i / max(num_it - 1, 1)) for i in range(num_it)]


def suggestions(lrs: list[float], losses: list[float]) -> dict[str, float]:
    """The steepest-descent and min/10 suggestions (see the module doc)."""
    out: dict[str, float] = {}
    if not losses:
        return out
    lr = np.asarray(lrs, dtype=np.float64)
    loss = np.asarray(losses, dtype=np.float64)
    out["min/10"] = float(lr[int(np.argmin(loss))] / 10)
    lo, hi = SKIP_START, len(loss) - SKIP_END
    if hi - lo < 3:  # a short sweep: use what there is
        lo, hi = 0, len(loss)
    if hi - lo >= 3:
        grad = np.gradient(loss[lo:hi], np.log10(lr[lo:hi]))
        out["steepest"] = float(lr[lo + int(np.argmin(grad))])
    return out


def lr_find(
    model: nn.Module,
    loader: Loader,
    *,
    task: Task,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_it: int = 100,
    weight_decay: float = 1e-2,
    stop_div: bool = True,
    precision: str | Precision = "auto",
    amp: bool = True,
) -> LRFinderResult:
    """Sweep the learning rate over `num_it` training steps (cycling through the loader's
    epochs as needed) at `precision` (as training: planet.learn.fit.precision_for); the model
    comes back exactly as it was. It reads every step's loss (it decides on each)."""
    sweep = exponential_lrs(start_lr, end_lr, num_it)
    loss_fn = loss_function(task)
    n_groups = len(param_groups(model))
    lrs: list[float] = []
    smoothed: list[float] = []
    raw: list[float] = []
    stopped = False
    with preserved(model):
        model.train()
        optimizer = make_optimizer(model, [sweep[0]] * n_groups, weight_decay)
        param = next(model.parameters())
        chosen = precision_for(param.device, precision, amp)
        scaler = chosen.scaler()
        avg, best = 0.0, math.inf
        epoch = 0
        while len(lrs) < num_it and not stopped:
            batches = 0
            for images, targets in loader.iter_epoch(epoch):
                batches += 1
                lr = sweep[len(lrs)]
                for group in optimizer.param_groups:
                    group["lr"] = lr
                step = _train_step(model, images, targets, loss_fn, optimizer, chosen, scaler)
                loss = float(step)
                if not math.isfinite(loss):
                    stopped = True
                    break
                avg = SMOOTH_BETA * avg + (1 - SMOOTH_BETA) * loss
                smooth = avg / (1 - SMOOTH_BETA ** (len(lrs) + 1))
                lrs.append(lr)
                raw.append(loss)
                smoothed.append(smooth)
                best = min(best, smooth)
                if stop_div and smooth > DIVERGE_FACTOR * best:
                    stopped = True
                    break
                if len(lrs) >= num_it:
                    break
            if batches == 0:
                raise ValueError("the LR finder's loader has no batches")
            epoch += 1
    return LRFinderResult(lrs, smoothed, raw, suggestions(lrs, smoothed), stopped)
