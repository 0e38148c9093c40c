"""One-cycle training with discriminative learning rates, checkpointed every epoch.

fast.ai's `fit_one_cycle(epochs, lrs)` with torch's own parts:

- `torch.optim.AdamW`, betas (0.9, 0.99), decoupled weight decay 1e-2 (fast.ai's `true_wd`),
  one parameter group per layer group, so `lrs` holds one rate per group;
- `torch.optim.lr_scheduler.OneCycleLR`, stepped per batch: warm-up over 30% of the steps
  from lr/25, cosine annealing to lr/(25 * 1e4), momentum (AdamW's beta1) 0.95 -> 0.85 -> 0.95.
  That is fast.ai v1's schedule (its `final_div` defaults to div * 1e4); nothing measured
  argues for a hand-written one;
- loss: BCE-with-logits for multi-label, cross-entropy for single-label;
- validation after each epoch: loss and `planet.metrics.epoch_metrics` (F2 and
  accuracy_thresh at 0.2 for Planet, accuracy and log loss for Dogs vs Cats).

After every epoch a checkpoint (model, optimiser, scheduler, epoch, torch RNG state, history)
is written atomically; `fit_one_cycle` given the same checkpoint folder and key resumes after
the last finished epoch. The loader draws batch order and augmentation from (seed, epoch,
batch), the checkpoint restores the RNG that dropout draws from, so on the CPU a resumed run
ends with the same history as an uninterrupted one.

On CUDA: bf16 autocast (no loss scaling needed) and, when asked, channels_last and
`torch.compile`. On the CPU autocast is off (bf16 matmuls are slower there and would change
the numbers); channels_last still works and is tested.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from planet import hooks
from planet.constants import TaskType
from planet.fileio import atomic_path
from planet.learn.loader import Loader
from planet.learn.metrics import epoch_metrics

Task = TaskType
BETAS = (0.9, 0.99)
PCT_START = 0.3
DIV_FACTOR = 25.0
FINAL_DIV_FACTOR = 1e4
MOMENTUMS = (0.95, 0.85)
CHECKPOINT_VERSION = 1

EpochCallback = Callable[[dict[str, Any]], None]
BatchCallback = Callable[[int, int], None]


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
    """`auto`: CUDA when available, else the CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {dev} asked for, but CUDA is not available here")
    return dev


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; nothing on other devices."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass
class Evaluation:
    """A pass over a labelled loader: mean loss, probabilities and targets (numpy)."""

    loss: float
    probs: np.ndarray
    targets: np.ndarray

    def metrics(self, task: Task) -> dict[str, float]:
        return {"valid_loss": self.loss, **epoch_metrics(task, self.probs, self.targets)}


@torch.no_grad()
def evaluate(model: nn.Module, loader: Loader, task: Task, *, amp: bool = True) -> Evaluation:
    """Loss and probabilities of `loader`'s images in eval mode (training mode restored)."""
    loss_fn = loss_function(task)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    probs: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    try:
        for images, y in loader:
            if y is None:
                raise ValueError("evaluate needs labelled images")
            with autocast(images.device, amp):
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
    amp: bool,
) -> float:
    with autocast(images.device, amp):
        logits = model(images)
    loss = loss_fn(logits.float(), targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


# ---------------------------------------------------------------------------------------------
# Checkpoints


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_path(folder: Path, epoch: int) -> Path:
    return folder / f"epoch-{epoch:03d}.pt"


def latest_checkpoint(folder: Path, key: str) -> dict[str, Any] | None:
    """The newest readable checkpoint in `folder` written for `key` (None when there is none).
    A checkpoint for another key (other settings or data) is ignored."""
    if not folder.is_dir():
        return None
    for path in sorted(folder.glob("epoch-*.pt"), reverse=True):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a damaged file: fall back to the one before
            continue
        if state.get("version") == CHECKPOINT_VERSION and state.get("key") == key:
            return state
    return None


def _write_checkpoint(folder: Path, state: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = checkpoint_path(folder, state["epoch"])
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    for old in folder.glob("epoch-*.pt"):  # keep only the newest
        if old != path:
            old.unlink(missing_ok=True)
    return path


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
    checkpoint_dir: Path | None = None,
    key: str = "",
    amp: bool = True,
    on_epoch: EpochCallback | None = None,
    on_batch: BatchCallback | None = None,
    step_model: nn.Module | None = None,
) -> FitResult:
    """Train `model` for `epochs` of one cycle at `lrs` (one per layer group); returns the
    per-epoch history. With `checkpoint_dir`, every epoch is checkpointed there and a call
    finding a checkpoint for the same `key` resumes after it. `step_model` (e.g. a
    `torch.compile`d `model`) runs the steps when given; `model` owns the weights."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    loss_fn = loss_function(task)
    runner = step_model or model
    steps_per_epoch = len(train)
    if steps_per_epoch == 0:
        raise ValueError(
            f"no training batch: {len(train.indices)} images for batch size {train.batch_size} "
            "(with drop_last); lower the stage's batch_size"
        )
    optimizer = make_optimizer(model, lrs, weight_decay)
    scheduler = make_one_cycle(optimizer, lrs, epochs * steps_per_epoch)
    history: list[dict[str, Any]] = []
    start = 0
    state = latest_checkpoint(checkpoint_dir, key) if checkpoint_dir else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        history = list(state["history"])
        start = int(state["epoch"])
    total_steps = epochs * steps_per_epoch
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        model.train()
        batch_losses: list[float] = []
        for b, (images, targets) in enumerate(train.iter_epoch(epoch)):
            step = epoch * steps_per_epoch + b + 1
            hooks.emit("train.batch", step=step)
            loss = _train_step(runner, images, targets, loss_fn, optimizer, amp)
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"training loss became {loss} at epoch {epoch + 1}, batch {b + 1}: "
                    f"the learning rates {lrs} are too high for this stage"
                )
            scheduler.step()
            batch_losses.append(loss)
            if on_batch is not None:
                on_batch(step, total_steps)
        train_seconds = time.perf_counter() - t0
        result = evaluate(model, valid, task, amp=amp)
        row = {
            "epoch": epoch + 1,
            "train_loss": float(np.mean(batch_losses)),
            **result.metrics(task),
            "lr": float(optimizer.param_groups[-1]["lr"]),
            "seconds": round(time.perf_counter() - t0, 2),
            "images_per_s": round(len(batch_losses) * train.batch_size / train_seconds, 1),
            "batch_losses": batch_losses,
        }
        history.append(row)
        if checkpoint_dir is not None:
            _write_checkpoint(
                checkpoint_dir,
                {
                    "version": CHECKPOINT_VERSION,
                    "key": key,
                    "epoch": epoch + 1,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "rng": _rng_state(),
                    "history": history,
                },
            )
        if on_epoch is not None:
            on_epoch(row)
        hooks.emit(
            "train.epoch", run=checkpoint_dir.name if checkpoint_dir else "fit", epoch=epoch + 1
        )
    return FitResult(history=history, resumed_from=start, epochs_run=epochs - start)


@contextlib.contextmanager
def preserved(model: nn.Module) -> Iterator[None]:
    """Restore the model's weights, buffers, train/eval mode and the torch RNG on exit."""
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    mode = model.training
    rng = _rng_state()
    try:
        yield
    finally:
        model.load_state_dict(saved)
        model.train(mode)
        _set_rng_state(rng)
