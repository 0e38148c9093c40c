"""What training does besides training, as callbacks of `fit_one_cycle` (fast.ai's style).

    Checkpoints   resume from the newest checkpoint of this key; write one after every epoch
    EpochEnd      call a function with each epoch's row (the task's log line, a table)
    BatchProgress call a function with (step, total steps) after every batch (progress bars)
    HookEvents    the library's `train.batch` / `train.epoch` events (planet.hooks)

A stage (planet.learn.stages) also tells its callbacks when the LR finder has swept
(`after_lr_find`). The training losses stay on the device while the loop runs: `after_batch`
(every step) carries none, `after_losses` hears them when the loop reads them (every
`loss_every` steps and at the epoch's end: one host sync instead of one per step).

A callback overrides the events it needs; `fit_one_cycle` calls them in list order, so a
checkpoint is on disk before anyone hears the epoch ended. A checkpoint holds the model,
optimiser, scheduler, epoch, torch RNG state (the CPU's and the training GPU's), fp16's loss
scale (the GradScaler's state) and history, written atomically: given the same folder and
key, a fit resumes after the last finished epoch and, on the CPU, ends with the same history
as an uninterrupted one. A checkpoint for another
key (other settings or data) is ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from planet import hooks
from planet.fileio import atomic_path

if TYPE_CHECKING:  # a task subclassing Callback on the cached path does not load torch
    import torch
    from torch import nn

    from planet.learn.lr_finder import LRFinderResult

CHECKPOINT_VERSION = 1

EpochCallback = Callable[[dict[str, Any]], None]
BatchCallback = Callable[[int, int], None]


@dataclass
class FitState:
    """What the callbacks see of a running fit."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    epochs: int
    steps_per_epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)
    epoch: int = 0  # epochs finished
    step: int = 0  # the current step, from 1 over the whole fit
    resumed_from: int = 0  # epochs taken from a checkpoint
    scaler: torch.amp.GradScaler | None = None  # fp16's loss scale (checkpointed when enabled)

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch


class Callback:
    """A hook into `fit_one_cycle`: every event does nothing unless overridden."""

    def before_fit(self, fit: FitState) -> None:
        """Before the first epoch (may restore a checkpoint and move `fit.epoch` on)."""

    def before_batch(self, fit: FitState) -> None:
        """Before the training step `fit.step`."""

    def after_batch(self, fit: FitState) -> None:
        """After the training step `fit.step` (its loss is not read yet: `after_losses`)."""

    def after_losses(self, fit: FitState, losses: list[float]) -> None:
        """The training losses of the steps since the last read, the last one `fit.step`'s
        (every `loss_every` steps, after the epoch's first step and at the epoch's end)."""

    def after_epoch(self, fit: FitState, row: dict[str, Any]) -> None:
        """After validating epoch `fit.epoch` (its row is the last of `fit.history`)."""

    def after_lr_find(self, result: LRFinderResult) -> None:
        """After the LR finder swept before a stage (planet.learn.stages.run_stage)."""


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """torch's CPU RNG state and, on CUDA, the state of the training `device`'s generator only
    (a checkpoint then resumes on a machine with fewer GPUs, or on another GPU index). Without
    `device`, every visible GPU's (a list, for restoring within the same process)."""
    import torch

    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        if device is None:
            state["cuda"] = torch.cuda.get_rng_state_all()
        elif device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Restore `rng_state`'s result: the CUDA state onto the training `device` (None: the
    current device; a list, as `rng_state()` and version-1 checkpoints from before keep, sets
    each visible GPU, or only `device` from its own entry, else the first)."""
    import torch

    torch.set_rng_state(state["torch"])
    saved = state.get("cuda")
    if saved is None or not torch.cuda.is_available():
        return
    if device is not None and device.type != "cuda":
        return
    if isinstance(saved, torch.Tensor):
        torch.cuda.set_rng_state(saved, "cuda" if device is None else device)
    elif device is None:
        for index, one in enumerate(saved[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(one, index)
    else:
        index = torch.cuda.current_device() if device.index is None else device.index
        torch.cuda.set_rng_state(saved[index] if index < len(saved) else saved[0], device)


def model_device(model: nn.Module) -> torch.device | None:
    """The device of the model's first parameter (None when it has none)."""
    return next((p.device for p in model.parameters()), None)


def checkpoint_path(folder: Path, epoch: int) -> Path:
    return folder / f"epoch-{epoch:03d}.pt"


def latest_checkpoint(folder: Path, key: str) -> dict[str, Any] | None:
    """The newest readable checkpoint in `folder` written for `key` (None when there is none)."""
    import torch

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


def write_checkpoint(folder: Path, state: dict[str, Any]) -> Path:
    """Write `state` as the epoch's checkpoint (atomically) and keep only the newest."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    path = checkpoint_path(folder, state["epoch"])
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    for old in folder.glob("epoch-*.pt"):
        if old != path:
            old.unlink(missing_ok=True)
    return path


class Checkpoints(Callback):
    """Resume from `folder`'s newest checkpoint for `key`; checkpoint every epoch there."""

    def __init__(self, folder: Path, key: str) -> None:
        self.folder, self.key = Path(folder), key

    def before_fit(self, fit: FitState) -> None:
        state = latest_checkpoint(self.folder, self.key)
        if state is None:
            return
        fit.model.load_state_dict(state["model"])
        fit.optimizer.load_state_dict(state["optimizer"])
        fit.scheduler.load_state_dict(state["scheduler"])
        if fit.scaler is not None and fit.scaler.is_enabled() and state.get("scaler"):
            fit.scaler.load_state_dict(state["scaler"])  # the scale found, not 65536 again
        set_rng_state(state["rng"], model_device(fit.model))
        fit.history = list(state["history"])
        fit.epoch = fit.resumed_from = int(state["epoch"])

    def after_epoch(self, fit: FitState, row: dict[str, Any]) -> None:
        write_checkpoint(
            self.folder,
            {
                "version": CHECKPOINT_VERSION,
                "key": self.key,
                "epoch": fit.epoch,
                "model": fit.model.state_dict(),
                "optimizer": fit.optimizer.state_dict(),
                "scheduler": fit.scheduler.state_dict(),
                "rng": rng_state(model_device(fit.model)),
                "history": fit.history,
                "scaler": fit.scaler.state_dict() if fit.scaler is not None else {},
            },
        )


class EpochEnd(Callback):
    """Call `fn(row)` after every epoch."""

    def __init__(self, fn: EpochCallback) -> None:
        self.fn = fn

    def after_epoch(self, fit: FitState, row: dict[str, Any]) -> None:
        self.fn(row)


class BatchProgress(Callback):
    """Call `fn(step, total_steps)` after every batch."""

    def __init__(self, fn: BatchCallback) -> None:
        self.fn = fn

    def after_batch(self, fit: FitState) -> None:
        self.fn(fit.step, fit.total_steps)


class HookEvents(Callback):
    """The `train.batch` and `train.epoch` events of planet.hooks (`run` names the fit, `model`
    the model it belongs to: a run folder of models/)."""

    def __init__(self, run: str, model: str | None = None) -> None:
        self.run, self.model = run, model

    def before_batch(self, fit: FitState) -> None:
        hooks.emit("train.batch", step=fit.step, model=self.model)

    def after_epoch(self, fit: FitState, row: dict[str, Any]) -> None:
        hooks.emit("train.epoch", run=self.run, epoch=fit.epoch, model=self.model)
