"""One-cycle training with discriminative learning rates, checkpointed every epoch.

fast.ai's `fit_one_cycle(epochs, lrs)` with torch's own parts:

- `torch.optim.AdamW`, betas (0.9, 0.99), decoupled weight decay 1e-2 (fast.ai's `true_wd`),
  one parameter group per layer group, so `lrs` holds one rate per group;
- `torch.optim.lr_scheduler.OneCycleLR`, stepped per batch: warm-up over 30% of the steps
  from lr/25, cosine annealing to lr/(25 * 1e4), momentum (AdamW's beta1) 0.95 -> 0.85 -> 0.95.
  That is fast.ai v1's schedule (its `final_div` defaults to div * 1e4); nothing measured
  argues for a hand-written one;
- loss: BCE-with-logits for multi-label, cross-entropy for single-label;
- validation after each epoch: loss and `planet.learn.metrics.epoch_metrics` (F2 and
  accuracy_thresh at 0.2 for Planet, accuracy and log loss for Dogs vs Cats).

Checkpointing, progress and metric records are callbacks (planet.learn.callbacks): a fit
given a checkpoint folder and key resumes after the last finished epoch. The loader draws batch
order and augmentation from (seed, epoch, batch) and the checkpoint restores the RNG that
dropout draws from, so on the CPU a resumed run ends with the same history as an uninterrupted
one.

Precision is `planet.learn.precision.choose_precision`'s one decision (bf16 autocast on GPUs
with native bf16, fp16 with a `GradScaler` on the others, bf16 on CPUs with native bf16, else
fp32), the same for the LR finder, validation and prediction. On CUDA cuDNN autotunes its kernels for the
fixed batch shapes (`cudnn.benchmark`) and, when asked, the model is `torch.compile`d; each
epoch's first step (compilation, autotuning) is timed apart (`first_step_s`) from its images/s.

Losses stay on the device: the loop reads them every `loss_every` steps (one host sync then,
not one per step) and at the epoch's end; `Callback.after_losses` hears them there, while
`after_batch` (progress) is still called after every step.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from planet.constants import TaskType
from planet.learn.callbacks import (
    BatchCallback,
    BatchProgress,
    Callback,
    Checkpoints,
    EpochCallback,
    EpochEnd,
    FitState,
    HookEvents,
    rng_state,
    set_rng_state,
)
from planet.learn.loader import Loader
from planet.learn.metrics import epoch_metrics
from planet.learn.precision import Precision, choose_precision

Task = TaskType
BETAS = (0.9, 0.99)
PCT_START = 0.3
DIV_FACTOR = 25.0
FINAL_DIV_FACTOR = 1e4
MOMENTUMS = (0.95, 0.85)
LOSS_EVERY = 20  # training losses are read from the device every this many steps


def loss_function(task: Task) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """BCE-with-logits (multi-label, float multi-hot targets) or cross-entropy (single-label,
    class indices); mean over the batch."""
    if task == "multi_label":
        return F.binary_cross_entropy_with_logits
    if task == "single_label":
        return F.cross_entropy
    raise ValueError(f"unknown task {task!r}: multi_label or single_label")


def activation(task: Task, logits: torch.Tensor) -> torch.Tensor:
    """Probabilities from logits: sigmoid per class, or softmax over classes."""
    return torch.sigmoid(logits) if task == "multi_label" else torch.softmax(logits, dim=1)


def param_groups(model: nn.Module) -> list[list[nn.Parameter]]:
    """The model's parameters by layer group (one group when it has no `param_groups`)."""
    if hasattr(model, "param_groups"):
        return [list(g) for g in model.param_groups()]
    return [list(model.parameters())]


def make_optimizer(
    model: nn.Module, lrs: list[float], weight_decay: float = 1e-2
) -> torch.optim.AdamW:
    """AdamW with one parameter group per layer group, at `lrs` (one per group)."""
    groups = param_groups(model)
    if len(lrs) != len(groups):
        raise ValueError(f"{len(lrs)} learning rates for {len(groups)} layer groups")
    return torch.optim.AdamW(
        [{"params": g, "lr": lr} for g, lr in zip(groups, lrs, strict=True)],
        lr=lrs[-1],
        betas=BETAS,
        weight_decay=weight_decay,
    )


def make_one_cycle(
    optimizer: torch.optim.Optimizer, lrs: list[float], total_steps: int
) -> torch.optim.lr_scheduler.OneCycleLR:
    """torch's one-cycle schedule with fast.ai's settings, stepped once per batch."""
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=list(lrs),
        total_steps=max(total_steps, 2),
        pct_start=PCT_START,
        anneal_strategy="cos",
        cycle_momentum=True,
        base_momentum=MOMENTUMS[1],
        max_momentum=MOMENTUMS[0],
        div_factor=DIV_FACTOR,
        final_div_factor=FINAL_DIV_FACTOR,
        three_phase=False,
    )


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`auto`: CUDA when available, else the CPU. CUDA always with an index (a bare `cuda` is
    the current device, `cuda:<current>`), so the loader's threads use the same GPU."""
    from planet.learn.loader import with_cuda_index

    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {dev} asked for, but CUDA is not available here")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"device {dev} asked for, but MPS is not available here")
    return with_cuda_index(dev)


def precision_for(
    device: torch.device, precision: str | Precision = "auto", amp: bool = True
) -> Precision:
    """`precision` (a request: auto, fp32, bf16, fp16; or a decision) for `device`; `amp=False`,
    the older switch, means fp32."""
    if isinstance(precision, Precision):
        return precision
    return choose_precision(device, precision if amp else "fp32")


def enable_cudnn_autotune(device: torch.device) -> bool:
    """On CUDA let cuDNN pick its fastest kernels for the (fixed) batch shapes; whether it did."""
    if torch.device(device).type != "cuda":
        return False
    torch.backends.cudnn.benchmark = True
    return True


@dataclass
class Evaluation:
    """A pass over a labelled loader: mean loss, probabilities and targets (numpy)."""

    loss: float
    probs: np.ndarray
    targets: np.ndarray

    def metrics(self, task: Task) -> dict[str, float]:
        return {"valid_loss": self.loss, **epoch_metrics(task, self.probs, self.targets)}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Loader,
    task: Task,
    *,
    precision: str | Precision = "auto",
    amp: bool = True,
) -> Evaluation:
    """Loss and probabilities of `loader`'s images in eval mode (training mode restored), the
    forward at `precision` (see `precision_for`)."""
    loss_fn = loss_function(task)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    probs: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    chosen: Precision | None = None
    try:
        for images, y in loader:
            if y is None:
                raise ValueError("evaluate needs labelled images")
            chosen = chosen or precision_for(images.device, precision, amp)
            with chosen.autocast():
                logits = model(images)
            logits = logits.float()
            total += float(loss_fn(logits, y)) * len(y)
            count += len(y)
            probs.append(activation(task, logits).cpu().numpy())
            targets.append(y.cpu().numpy())
    finally:
        model.train(was_training)
    if not count:
        raise ValueError("the validation loader has no images")
    return Evaluation(total / count, np.concatenate(probs), np.concatenate(targets))


def _train_step(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    precision: Precision,
    scaler: torch.amp.GradScaler,
) -> torch.Tensor:
    """One optimiser step; the loss, detached, still on the device (reading it is a host sync).
    With fp16 the loss is scaled and a step whose gradients overflowed is skipped (`scaler`:
    `precision.scaler()`, a pass-through otherwise)."""
    with precision.autocast():
        logits = model(images)
    loss = loss_fn(logits.float(), targets)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)  # (unscale_ first, were gradients ever clipped)
    scaler.update()
    return loss.detach()


def _schedule_step(scheduler: torch.optim.lr_scheduler.LRScheduler, scaled: bool) -> None:
    """`scheduler.step()`; with fp16 the first optimiser steps may be skipped (the scaler
    finding its scale), which torch would report as a scheduler stepped before the optimiser."""
    if not scaled:
        scheduler.step()
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
        scheduler.step()


def _read_losses(
    pending: list[torch.Tensor],
    batch_losses: list[float],
    fit: FitState,
    cbs: Sequence[Callback],
    lrs: list[float],
) -> None:
    """One host sync: the `pending` losses (emptied) checked, onto `batch_losses`, to the
    callbacks' `after_losses`."""
    losses = torch.stack(pending).tolist()
    pending.clear()
    for i, loss in enumerate(losses):
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"training loss became {loss} at epoch {fit.epoch + 1}, batch "
                f"{len(batch_losses) + i + 1}: the learning rates {lrs} are too high for this "
                "stage"
            )
    batch_losses.extend(losses)
    for cb in cbs:
        cb.after_losses(fit, losses)


def _optimizer_steps(optimizer: torch.optim.Optimizer) -> int:
    """Steps the optimiser has taken (AdamW counts them per parameter; skipped ones are not)."""
    steps = [state["step"] for state in optimizer.state.values() if "step" in state]
    return int(max(float(s) for s in steps)) if steps else 0


# ---------------------------------------------------------------------------------------------
# fit_one_cycle


@dataclass
class FitResult:
    history: list[dict[str, Any]]  # one row per epoch
    resumed_from: int  # epochs taken from a checkpoint (0: a fresh start)
    epochs_run: int  # epochs trained by this call


def fit_one_cycle(
    model: nn.Module,
    train: Loader,
    valid: Loader,
    *,
    task: Task,
    epochs: int,
    lrs: list[float],
    weight_decay: float = 1e-2,
    callbacks: Sequence[Callback] = (),
    checkpoint_dir: Path | None = None,
    key: str = "",
    precision: str | Precision = "auto",
    amp: bool = True,
    on_epoch: EpochCallback | None = None,
    on_batch: BatchCallback | None = None,
    step_model: nn.Module | None = None,
    loss_every: int = LOSS_EVERY,
) -> FitResult:
    """Train `model` for `epochs` of one cycle at `lrs` (one per layer group); returns the
    per-epoch history. `callbacks` hook into the loop (planet.learn.callbacks); the keywords
    are shorthands for the usual ones: `checkpoint_dir` + `key` checkpoint every epoch and
    resume (`Checkpoints`), `on_epoch(row)` and `on_batch(step, total)` are called after each
    epoch and batch. `precision`: auto, fp32, bf16, fp16 or a `Precision` (see
    planet.learn.precision; `amp=False` means fp32). `step_model` (e.g. a `torch.compile`d
    `model`) runs the steps when given; `model` owns the weights. The training losses are read
    from the device every `loss_every` steps."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if loss_every < 1:
        raise ValueError(f"loss_every must be >= 1, got {loss_every}")
    loss_fn = loss_function(task)
    runner = step_model or model
    steps_per_epoch = len(train)
    if steps_per_epoch == 0:
        raise ValueError(
            f"no training batch: {len(train.indices)} images for batch size {train.batch_size} "
            "(with drop_last); lower the stage's batch_size"
        )
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    chosen = precision_for(device, precision, amp)
    enable_cudnn_autotune(device)
    optimizer = make_optimizer(model, lrs, weight_decay)
    scheduler = make_one_cycle(optimizer, lrs, epochs * steps_per_epoch)
    scaler = chosen.scaler()
    fit = FitState(model, optimizer, scheduler, epochs, steps_per_epoch, scaler=scaler)
    cbs: list[Callback] = [Checkpoints(checkpoint_dir, key)] if checkpoint_dir else []
    cbs += list(callbacks)
    cbs += [EpochEnd(on_epoch)] if on_epoch else []
    cbs += [BatchProgress(on_batch)] if on_batch else []
    if checkpoint_dir:
        cbs.append(HookEvents(checkpoint_dir.name, model=checkpoint_dir.parent.name))
    else:
        cbs.append(HookEvents("fit"))
    for cb in cbs:
        cb.before_fit(fit)
    optimizer_steps = _optimizer_steps(optimizer)
    for epoch in range(fit.epoch, epochs):
        t0 = time.perf_counter()
        model.train()
        batch_losses: list[float] = []
        pending: list[torch.Tensor] = []  # losses still on the device
        first_step_s = 0.0
        for b, (images, targets) in enumerate(train.iter_epoch(epoch)):
            fit.step = epoch * steps_per_epoch + b + 1
            for cb in cbs:
                cb.before_batch(fit)
            pending.append(_train_step(runner, images, targets, loss_fn, optimizer, chosen, scaler))
            _schedule_step(scheduler, chosen.scaled)
            for cb in cbs:
                cb.after_batch(fit)
            if b == 0 or len(pending) >= loss_every:  # the first read times the first step
                _read_losses(pending, batch_losses, fit, cbs, lrs)
            if b == 0:
                first_step_s = time.perf_counter() - t0
        if pending:
            _read_losses(pending, batch_losses, fit, cbs, lrs)
        train_seconds = time.perf_counter() - t0
        result = evaluate(model, valid, task, precision=chosen)
        steps = len(batch_losses)
        rest = (steps - 1, train_seconds - first_step_s) if steps > 1 else (1, first_step_s)
        taken = _optimizer_steps(optimizer)
        row = {
            "epoch": epoch + 1,
            "train_loss": float(np.mean(batch_losses)),
            **result.metrics(task),
            "lr": float(optimizer.param_groups[-1]["lr"]),
            "seconds": round(time.perf_counter() - t0, 2),
            "images_per_s": round(rest[0] * train.batch_size / max(rest[1], 1e-9), 1),
            "first_step_s": round(first_step_s, 3),
            **({"skipped_steps": steps - (taken - optimizer_steps)} if chosen.scaled else {}),
            "batch_losses": batch_losses,
        }
        optimizer_steps = taken
        fit.history.append(row)
        fit.epoch = epoch + 1
        for cb in cbs:
            cb.after_epoch(fit, row)
    return FitResult(
        history=fit.history, resumed_from=fit.resumed_from, epochs_run=epochs - fit.resumed_from
    )


@contextlib.contextmanager
def preserved(model: nn.Module) -> Iterator[None]:
    """Restore the model's weights, buffers, train/eval mode and the torch RNG on exit."""
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    mode = model.training
    rng = rng_state()
    try:
        yield
    finally:
        model.load_state_dict(saved)
        model.train(mode)
        set_rng_state(rng)
