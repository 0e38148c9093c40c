"""Test-time augmentation: class probabilities of a batch over the 8 symmetries of the square.

The activation follows the task: sigmoid per class for `multi_label` (Planet, 17 tags),
softmax over the classes for `single_label` (Dogs vs Cats). Logits are cast to float32 before
the activation; the forward runs at the precision `planet.learn.precision.choose_precision`
decides for the images' device (bf16 or fp16 autocast on CUDA, fp32 on the CPU), or the one
given. The model is put in eval mode for the call and given back in the mode it came in; gradients are off
(`torch.no_grad`, not `inference_mode`, so the caller may use the result anywhere).

TTA. Our augmented set is the 8 symmetries of the square, `planet.learn.augment.dihedral(x, k)` for
k = 0..7 (k = 0 is the image itself): the augmentation the models are trained with (flips and
transposes; zoom and lighting are left out at test time). `tta=True` returns the mean of the 8
PROBABILITIES (not of logits), as fast.ai averages activated predictions. One forward per
symmetry, in a loop: 8 passes over the batch, no 8x batch in memory.

fast.ai v1's `Learner.TTA(beta=0.4, scale=1.35)` (`fastai/vision/tta.py`, `_TTA`) does:

    preds = learn.get_preds(ds_type, activ=activ)          # plain, un-augmented
    all_preds = list(learn.tta_only(...))                  # 8 augmented passes
    avg_preds = torch.stack(all_preds).mean(0)
    final_preds = preds*beta + avg_preds*(1-beta)          # beta=None: (preds, avg_preds)

where its 8 augmented passes (`_tta_only`) are a zoom by `scale` (1.35) anchored at one of the
4 corners, with or without a left-right flip (i & 4), plus the training set's other transforms
(lighting...; not crop_pad, flip_lr, dihedral or zoom): none of them is the plain image. Our
`beta` keeps that meaning, the weight of the plain prediction, with the 7 NON-IDENTITY
symmetries (k = 1..7) as the augmented set:

    beta given:  beta * p_0 + (1 - beta) * mean(p_1, ..., p_7)
    beta None:   mean(p_0, ..., p_7)      (the same as beta = 1/8)

so fast.ai's `TTA(beta=0.4)` becomes `beta=0.4` here (with symmetries instead of corner zooms),
and `beta=1/8` gives the plain 8-way mean.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from planet.constants import TASK_TYPES, TaskType

if TYPE_CHECKING:  # torch loads when something is predicted
    import torch
    from torch import nn

    from planet.learn.precision import Precision

Task = TaskType
TTA_VIEWS = 8  # the symmetries of the square, `dihedral(x, k)` for k in 0..7


def check_task(task: str) -> str:
    if task not in TASK_TYPES:
        raise ValueError(f"task must be one of {', '.join(TASK_TYPES)}, not {task!r}")
    return task


def check_beta(beta: float | None, tta: bool) -> float | None:
    if beta is None:
        return None
    if not tta:
        raise ValueError("beta mixes the plain and the TTA predictions: it needs tta=True")
    beta = float(beta)
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must lie in [0, 1], got {beta}")
    return beta


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """The model in eval mode for the block, then back in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def predict_probs(
    model: nn.Module,
    images: torch.Tensor,
    task: Task,
    tta: bool = True,
    beta: float | None = None,
    precision: Precision | None = None,
) -> torch.Tensor:
    """float32 probabilities (n, C), on the images' device, of a normalised float NCHW batch,
    the forward at `precision` (None: `choose_precision`'s auto for the images' device).

    Without `tta`: activation(model(x)). With `tta`: the mean over the 8 symmetries
    `dihedral(x, k)` of activation(model(view)); with `beta` as well:
    `beta * p_0 + (1 - beta) * mean(p_1..p_7)` (fast.ai v1's mix; see the module doc)."""
    import torch

    from planet.learn.augment import dihedral
    from planet.learn.fit import activation
    from planet.learn.precision import choose_precision

    check_task(task)
    beta = check_beta(beta, tta)
    precision = precision or choose_precision(images.device)
    with torch.no_grad(), eval_mode(model), precision.autocast():
        plain = activation(task, model(images).float())
        if not tta:
            return plain
        others = torch.zeros_like(plain)
        for k in range(1, TTA_VIEWS):
            others += activation(task, model(dihedral(images, k)).float())
        if beta is None:
            return (plain + others) / TTA_VIEWS
        return beta * plain + (1.0 - beta) * (others / (TTA_VIEWS - 1))


def state_dict_sha256(model: nn.Module) -> str:
    """A fingerprint of a model's state (every entry's name, dtype, shape and bytes), for
    `settings` when there is no bundle file to hash."""
    import torch

    h = hashlib.sha256()
    for name, value in model.state_dict().items():
        t = value.detach().to("cpu").contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
