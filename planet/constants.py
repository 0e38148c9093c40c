"""Facts the whole library shares, each in one place."""

from __future__ import annotations

from typing import Literal, get_args

TaskType = Literal["multi_label", "single_label"]  # sigmoid + BCE, or softmax + cross-entropy
TASK_TYPES: tuple[str, ...] = get_args(TaskType)

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)  # torchvision's weights
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

MANIFEST = "manifest.json"  # every stage's record of what it wrote, beside its outputs
