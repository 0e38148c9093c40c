"""The fast.ai v1 `cnn_learner` model in plain torch/torchvision: a pretrained body, a new head.

Body. A torchvision ImageNet backbone without its pooling and classifier (`ARCHS`): resnets
keep `children()[:-2]`, VGGs keep `.features` (not torchvision's 7x7 `avgpool`, which would
upsample small inputs). `nf`, the number of channels the body puts out, is measured once with
a 32 px dummy batch in eval mode (so no BatchNorm running statistic moves).

Head. fast.ai's `create_head(2 * nf, n_classes)` with `ps=0.5`: `AdaptiveConcatPool2d` (max pool
then average pool, concatenated), `Flatten`, `BatchNorm1d(2nf)`, `Dropout(0.25)`,
`Linear(2nf, 512)`, `ReLU`, `BatchNorm1d(512)`, `Dropout(0.5)`, `Linear(512, n_classes)`,
initialised like `apply_init(head, kaiming_normal_)`: Linear weights kaiming normal (fan in,
gain sqrt(2)), biases zero, BatchNorm layers left at torch's default.

Layer groups. Three, for discriminative learning rates: the body split where fast.ai's
`model_meta` splits it (resnets before body[6], i.e. `layer3`; vgg16_bn before features[22], the
last ReLU of the third block) and the head. fast.ai has no vgg16 (no BN) entry; the same place
in its features is index 15, and we split at 16 (the third block's max pool: the same
parameters on either side). `param_groups()` gives one list of parameters per group, each
parameter once, for an optimizer with one param group per layer group.

Freezing. `freeze_to(n)` stops gradients for groups before `n`, except in BatchNorm layers,
which stay trainable everywhere (fast.ai's `train_bn=True`); `freeze()` trains only the head
(plus every BatchNorm), `unfreeze()` everything. Modules stay in whatever train/eval mode
the caller sets: frozen BatchNorm layers keep updating their statistics, as in fast.ai.

Pretrained weights are never downloaded. `create_model` loads `weights_path` if given, else looks
for torchvision's file in the torch hub cache (`<torch.hub.get_dir()>/checkpoints/<file of
the weights URL>`, where torchvision itself would have put it), else warns
(`PretrainedWeightsMissing`, naming the path to fill) and keeps the random initialisation.
`model.pretrained_source` records which file was loaded (None: none).

Bundles. `export_bundle` writes, atomically, everything inference needs (arch, classes, input
size, task, normalisation, state dict, free-form `extra`) as plain types, so `load_bundle` can
use `torch.load(weights_only=True)`: loading a bundle never runs pickled code.

Memory format: `to_channels_last(model)` (i.e. `model.to(memory_format=torch.channels_last)`)
is numerically the same model; feed it channels-last batches for faster GPU convolutions.
"""

from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, get_args

import torch
import torchvision.models as tvm
from torch import nn

from planet.constants import TaskType
from planet.fileio import atomic_path

Task = TaskType
BUNDLE_FORMAT = "planet-model-bundle"
BUNDLE_VERSION = 1
HEAD_HIDDEN = 512
HEAD_PS = 0.5
BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class PretrainedWeightsMissing(UserWarning):
    """No pretrained weights file was found: the body starts from a random initialisation."""


def _resnet_body(m: nn.Module) -> nn.Sequential:
    return nn.Sequential(*list(m.children())[:-2])


def _vgg_body(m: nn.Module) -> nn.Sequential:
    return m.features


class Arch(NamedTuple):
    """A torchvision backbone: how to build it, its ImageNet weights, how to cut it, where to
    split the body into two layer groups (an index into the body)."""

    constructor: Callable[..., nn.Module]
    weights: tvm.WeightsEnum
    cut: Callable[[nn.Module], nn.Sequential]
    split: int


ARCHS: dict[str, Arch] = {
    "resnet18": Arch(tvm.resnet18, tvm.ResNet18_Weights.DEFAULT, _resnet_body, 6),
    "resnet34": Arch(tvm.resnet34, tvm.ResNet34_Weights.DEFAULT, _resnet_body, 6),
    "resnet50": Arch(tvm.resnet50, tvm.ResNet50_Weights.DEFAULT, _resnet_body, 6),
    "resnet101": Arch(tvm.resnet101, tvm.ResNet101_Weights.DEFAULT, _resnet_body, 6),
    "vgg16_bn": Arch(tvm.vgg16_bn, tvm.VGG16_BN_Weights.DEFAULT, _vgg_body, 22),
    "vgg16": Arch(tvm.vgg16, tvm.VGG16_Weights.DEFAULT, _vgg_body, 16),
}


def get_arch(name: str) -> Arch:
    """The `ARCHS` entry for `name`; a ValueError listing the known names otherwise."""
    try:
        return ARCHS[name]
    except KeyError:
        raise ValueError(f"unknown arch {name!r}; known: {', '.join(ARCHS)}") from None


class AdaptiveConcatPool2d(nn.Module):
    """`cat([adaptive max pool, adaptive avg pool], dim=1)`: twice the channels (fast.ai)."""

    def __init__(self, size: int = 1) -> None:
        super().__init__()
        self.mp = nn.AdaptiveMaxPool2d(size)
        self.ap = nn.AdaptiveAvgPool2d(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.mp(x), self.ap(x)], dim=1)


def create_head(nf: int, n_classes: int, ps: float = HEAD_PS) -> nn.Sequential:
    """fast.ai v1 `create_head(nf, n_classes)` (nf: channels after the concat pool), initialised
    like `apply_init(head, nn.init.kaiming_normal_)`."""
    head = nn.Sequential(
        AdaptiveConcatPool2d(),
        nn.Flatten(),
        nn.BatchNorm1d(nf),
        nn.Dropout(ps / 2),
        nn.Linear(nf, HEAD_HIDDEN),
        nn.ReLU(inplace=True),
        nn.BatchNorm1d(HEAD_HIDDEN),
        nn.Dropout(ps),
        nn.Linear(HEAD_HIDDEN, n_classes),
    )
    for m in head.modules():
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight)
            nn.init.zeros_(m.bias)
    return head


def body_features(body: nn.Module, size: int = 32) -> int:
    """Channels of `body`'s output, from a dummy forward pass in eval mode."""
    was_training = body.training
    p = next(body.parameters())
    body.eval()
    try:
        with torch.no_grad():
            out = body(torch.zeros(1, 3, size, size, dtype=p.dtype, device=p.device))
    finally:
        body.train(was_training)
    return int(out.shape[1])


class ConvNet(nn.Module):
    """A body and a head, with fast.ai's layer groups and BatchNorm-aware freezing."""

    def __init__(
        self, arch: str, body: nn.Sequential, n_classes: int, split: int, nf: int | None = None
    ) -> None:
        super().__init__()
        if not 0 < split < len(body):
            raise ValueError(f"split {split} outside the body's 1..{len(body) - 1}")
        self.arch = arch
        self.n_classes = n_classes
        self.split = split
        self.nf = nf if nf is not None else body_features(body)
        self.body = body
        self.head = create_head(2 * self.nf, n_classes)
        self.pretrained_source: str | None = None
        self._frozen_groups = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def layer_groups(self) -> list[nn.Sequential]:
        """Three groups: `body[:split]`, `body[split:]`, the head (sharing this model's modules)."""
        return [self.body[: self.split], self.body[self.split :], self.head]

    def param_groups(self) -> list[list[nn.Parameter]]:
        """The parameters of each layer group, each parameter once, in group order."""
        seen: set[int] = set()
        groups: list[list[nn.Parameter]] = []
        for g in self.layer_groups():
            ps = [p for p in g.parameters() if id(p) not in seen]
            seen.update(id(p) for p in ps)
            groups.append(ps)
        return groups

    def freeze_to(self, n: int) -> None:
        """Groups before `n` stop training, except their BatchNorm layers; the rest train."""
        groups = self.layer_groups()
        if not 0 <= n <= len(groups):
            raise ValueError(f"freeze_to({n}): there are {len(groups)} layer groups")
        for i, g in enumerate(groups):
            for m in g.modules():
                trainable = i >= n or isinstance(m, BN_TYPES)
                for p in m.parameters(recurse=False):
                    p.requires_grad_(trainable)
        self._frozen_groups = n

    def freeze(self) -> None:
        """Train only the head (and every BatchNorm layer)."""
        self.freeze_to(len(self.layer_groups()) - 1)

    def unfreeze(self) -> None:
        """Train everything."""
        self.freeze_to(0)

    @property
    def frozen_groups(self) -> int:
        """How many leading layer groups the last `freeze_to` froze (0: none)."""
        return self._frozen_groups


def hub_weights_path(arch: str) -> Path:
    """Where torchvision keeps `arch`'s default ImageNet weights in the torch hub cache."""
    url = get_arch(arch).weights.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def hub_candidates(arch: str) -> list[Path]:
    """The default weights' cache path, then other ImageNet classification weights'."""
    spec = get_arch(arch)
    folder = hub_weights_path(arch).parent
    others = [w for w in type(spec.weights) if w.name.startswith("IMAGENET1K_V")]
    urls = [spec.weights.url] + [w.url for w in others if w is not spec.weights]
    return [folder / os.path.basename(u) for u in urls]


def _torch_load(path: Path, what: str) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        raise ValueError(f"{what} {path} could not be read by torch.load: {exc}") from exc


def _load_state(model: nn.Module, state: Any, path: Path, expected: str) -> None:
    """`model.load_state_dict(state)`, strict, with errors that name `path`."""
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ValueError(f"{path} is not a state dict (str -> tensor); expected {expected}")
    want = set(model.state_dict())
    missing, unexpected = sorted(want - set(state)), sorted(set(state) - want)
    if missing or unexpected:
        raise ValueError(
            f"{path} does not match {expected}: {len(missing)} missing keys "
            f"{missing[:3]}, {len(unexpected)} unexpected keys {unexpected[:3]}"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path} does not match {expected}: {exc}") from exc


def create_model(
    arch: str,
    n_classes: int,
    pretrained: bool = True,
    weights_path: str | os.PathLike[str] | None = None,
) -> ConvNet:
    """A `ConvNet` for `n_classes` outputs on an `arch` body (see the module docstring for where
    pretrained weights come from). `weights_path`, when given, wins over `pretrained`."""
    spec = get_arch(arch)
    if n_classes < 1:
        raise ValueError(f"n_classes must be positive, got {n_classes}")
    backbone = spec.constructor(weights=None)
    first_key = next(iter(backbone.state_dict()))
    expected = f"a torchvision {arch} ImageNet state dict (keys like {first_key!r})"
    source: Path | None = None
    if weights_path is not None:
        source = Path(weights_path)
        _load_state(backbone, _torch_load(source, f"weights file for {arch}"), source, expected)
    elif pretrained:
        found = [p for p in hub_candidates(arch) if p.is_file()]
        if found:
            source = found[0]
            _load_state(backbone, _torch_load(source, f"cached {arch} weights"), source, expected)
        else:
            want = hub_weights_path(arch)
            warnings.warn(
                f"no pretrained ImageNet weights for {arch}: looked for {want}. Download "
                f"{spec.weights.url} to that path, or pass weights_path=; training starts "
                "from random initialisation.",
                PretrainedWeightsMissing,
                stacklevel=2,
            )
    model = ConvNet(arch, spec.cut(backbone), n_classes, spec.split)
    model.pretrained_source = str(source) if source is not None else None
    return model


def to_channels_last(model: nn.Module) -> nn.Module:
    """`model` with channels-last 4-D parameters and buffers (in place; returns it)."""
    return model.to(memory_format=torch.channels_last)


@dataclass(frozen=True)
class Bundle:
    """A loaded inference bundle: the model (eval mode) and how to feed it."""

    model: ConvNet
    arch: str
    classes: tuple[str, ...]
    size: int
    task: Task
    mean: tuple[float, ...]
    std: tuple[float, ...]
    extra: dict[str, Any] = field(default_factory=dict)


_PLAIN = (str, int, float, bool, type(None), torch.Tensor)


def _check_plain(obj: Any, where: str) -> None:
    """Raise unless `obj` is made of types `torch.load(weights_only=True)` accepts."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_plain(k, where)
            _check_plain(v, f"{where}[{k!r}]")
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
    elif not isinstance(obj, _PLAIN):
        raise ValueError(f"{where} is a {type(obj).__name__}; bundles hold plain types only")


def export_bundle(
    model: ConvNet,
    path: str | os.PathLike[str],
    *,
    classes: Sequence[str],
    size: int,
    task: Task,
    mean: Sequence[float],
    std: Sequence[float],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write `model` and what inference needs to `path` (atomically); returns the path."""
    if len(classes) != model.n_classes:
        raise ValueError(f"{len(classes)} classes for a model with {model.n_classes} outputs")
    if task not in get_args(Task):
        raise ValueError(f"task must be one of {get_args(Task)}, got {task!r}")
    extra = dict(extra or {})
    _check_plain(extra, "extra")
    obj = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "arch": model.arch,
        "n_classes": model.n_classes,
        "classes": [str(c) for c in classes],
        "size": int(size),
        "task": task,
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        "extra": extra,
    }
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def load_bundle(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Bundle:
    """Read a bundle written by `export_bundle`; the model is on `device`, in eval mode."""
    path = Path(path)
    obj = _torch_load(path, "model bundle")
    if not isinstance(obj, dict) or obj.get("format") != BUNDLE_FORMAT:
        raise ValueError(
            f"{path} is not a model bundle (written by planet.learn.model.export_bundle)"
        )
    version = obj.get("format_version")
    if version != BUNDLE_VERSION:
        raise ValueError(f"{path} is bundle format {version}; this code reads {BUNDLE_VERSION}")
    try:
        arch, n_classes, state = obj["arch"], int(obj["n_classes"]), obj["state_dict"]
        if arch not in ARCHS:
            raise ValueError(f"{path} holds an unknown arch {arch!r}; known: {', '.join(ARCHS)}")
        spec = ARCHS[arch]
        model = ConvNet(arch, spec.cut(spec.constructor(weights=None)), n_classes, spec.split)
        _load_state(model, state, path, f"a {arch} ConvNet with {n_classes} classes")
        bundle = Bundle(
            model=model.to(device).eval(),
            arch=arch,
            classes=tuple(obj["classes"]),
            size=int(obj["size"]),
            task=obj["task"],
            mean=tuple(obj["mean"]),
            std=tuple(obj["std"]),
            extra=dict(obj.get("extra") or {}),
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path} is a damaged model bundle: {exc!r}") from exc
    return bundle
