"""Where pretrained ImageNet weights sit in the torch hub cache, without importing torch.

The training stage's fingerprint says which initial weights the first stage starts from, and
fingerprints are computed on every run, Cached or not; importing torchvision to read its
weights URLs costs ~3 s per process (it imports `torch._dynamo`). So the file names are listed
here; `tests/test_model.py` checks them against torchvision's own weights enums.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# arch -> file names in <hub>/checkpoints/: torchvision's default weights first, then its
# other IMAGENET1K_V* weights (fast.ai's resnet50 was the V1 file)
HUB_FILES: dict[str, tuple[str, ...]] = {
    "resnet18": ("resnet18-f37072fd.pth",),
    "resnet34": ("resnet34-b627a593.pth",),
    "resnet50": ("resnet50-11ad3fa6.pth", "resnet50-0676ba61.pth"),
    "resnet101": ("resnet101-cd907fc2.pth", "resnet101-63fe2227.pth"),
    "vgg16_bn": ("vgg16_bn-6c64b313.pth",),
    "vgg16": ("vgg16-397923af.pth",),
}


def hub_dir() -> Path:
    """torch.hub.get_dir(): $TORCH_HOME/hub, else $XDG_CACHE_HOME/torch/hub, else
    ~/.cache/torch/hub (torch's own answer when torch is already imported)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return Path(torch.hub.get_dir())
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", "~/.cache"), "torch"
    )
    return Path(home).expanduser() / "hub"


def hub_file_candidates(arch: str) -> list[Path]:
    """The hub-cache paths `planet.learn.model.create_model` looks at for `arch`, in order."""
    try:
        names = HUB_FILES[arch]
    except KeyError:
        raise ValueError(f"unknown arch {arch!r}; known: {sorted(HUB_FILES)}") from None
    return [hub_dir() / "checkpoints" / name for name in names]
