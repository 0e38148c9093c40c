"""Facts the whole library shares, each in one place."""

from __future__ import annotations

from typing import Literal, get_args

TaskType = Literal["multi_label", "single_label"]  # sigmoid + BCE, or softmax + cross-entropy
TASK_TYPES: tuple[str, ...] = get_args(TaskType)

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)  # torchvision's weights
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

MANIFEST = "manifest.json"  # every stage's record of what it wrote, beside its outputs

# The backbones a recipe may name (planet.learn.model.ARCHS builds them; a test keeps the two
# equal). Here so that a recipe is checked when it is read, without importing torch.
ARCH_NAMES: tuple[str, ...] = ("resnet18", "resnet34", "resnet50", "resnet101", "vgg16_bn", "vgg16")
