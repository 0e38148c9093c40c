"""Which floating-point precision a model trains and predicts in: one decision, in one place.

`choose_precision(device, requested)` answers for training, the LR finder, validation and
prediction alike; `Precision` carries the answer (its autocast context and, for fp16, the
gradient scaler).

    requested  device                                       precision
    auto       CUDA with native bf16 (compute capability    bf16 autocast
               8.0+: A100, A10, L4, RTX 30xx/40xx, H100)
    auto       CUDA without (T4, the Kaggle/Colab GPU)      fp16 autocast + GradScaler
    auto       CPU with native bf16 (AVX512-BF16, AMX)      bf16 autocast (see CPU_AUTO)
    auto       other CPUs                                   fp32
    fp32       any                                          no autocast
    bf16       CUDA or CPU                                  bf16 autocast (emulated, slowly,
                                                            where the hardware lacks it)
    fp16       CUDA                                         fp16 autocast + GradScaler
    fp16       CPU                                          an error (fp16 is for GPUs: use bf16)

"Native bf16" on CUDA is `torch.cuda.is_bf16_supported(including_emulation=False)`'s test
(compute capability >= 8) asked of the device itself, not of the current one; on the CPU it is
the `avx512_bf16` / `amx_bf16` (x86) or `bf16` (ARM) flag of `torch.cpu.get_capabilities()`.

CPU_AUTO: on a CPU with native bf16 `auto` picks bf16. On the development machine's
AVX512-BF16 EPYC a resnet18 training step ran 1.24x (64 px) and 1.57x (128 px) faster, and
the demo's validation and graded scores moved within the seed-to-seed noise (bench/README.md,
"Precision"); `--precision fp32` keeps fp32 (the tests that compare fp32 numbers pin it), and
is faster where other jobs oversubscribe the cores (bf16 measured 0.4-0.7x there).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:
    import torch

PrecisionName = Literal["fp32", "bf16", "fp16"]
Requested = Literal["auto", "fp32", "bf16", "fp16"]
REQUESTS: tuple[str, ...] = get_args(Requested)
CPU_AUTO_BF16 = True  # measured: see the module doc and bench/README.md
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")


@dataclass(frozen=True)
class Precision:
    """Autocast to `name` on devices of `device_type` (`fp32`: no autocast); fp16 scales the
    loss (`scaled`: `torch.amp.GradScaler`)."""

    name: PrecisionName
    device_type: str

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype (None for fp32)."""
        import torch

        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    @property
    def scaled(self) -> bool:
        """Whether the loss is scaled (fp16: its gradients would underflow otherwise)."""
        return self.name == "fp16"

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward pass's context: autocast to `dtype`, or nothing for fp32."""
        import torch

        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def scaler(self) -> torch.amp.GradScaler:
        """A gradient scaler for one training run (a no-op pass-through unless `scaled`)."""
        import torch

        return torch.amp.GradScaler(self.device_type, enabled=self.scaled)


def cuda_native_bf16(device: torch.device) -> bool:
    """Whether this CUDA device computes bf16 natively (compute capability 8.0 or newer; ROCm
    devices all do): `torch.cuda.is_bf16_supported(including_emulation=False)`'s test, asked
    of `device` rather than of the current device."""
    import torch

    if torch.version.hip:
        return True
    index = device.index if device.index is not None else torch.cuda.current_device()
    major, _ = torch.cuda.get_device_capability(index)
    return major >= 8


def cpu_native_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX-BF16 on x86, BF16 on ARM)."""
    import torch

    caps = torch.cpu.get_capabilities()
    return any(bool(caps.get(flag)) for flag in CPU_BF16_FLAGS)


def choose_precision(device: torch.device | str, requested: str = "auto") -> Precision:
    """The precision for `device` (see the module doc's table); ValueError naming the setting
    for a request this device cannot run."""
    import torch

    device = torch.device(device)
    if requested not in REQUESTS:
        raise ValueError(f"precision {requested!r}: use one of {', '.join(REQUESTS)}")
    kind = device.type
    if requested == "auto":
        if kind == "cuda":
            requested = "bf16" if cuda_native_bf16(device) else "fp16"
        elif kind == "cpu" and CPU_AUTO_BF16 and cpu_native_bf16():
            requested = "bf16"
        else:
            requested = "fp32"
    if requested == "fp16" and kind != "cuda":
        raise ValueError(
            f"precision fp16 needs a CUDA device, the model is on {device}: "
            "use --precision bf16 or fp32 (or auto)"
        )
    if requested == "bf16" and kind not in ("cuda", "cpu"):
        raise ValueError(f"precision bf16 on {device} is not supported: use fp32 (or auto)")
    return Precision(requested, kind)  # type: ignore[arg-type]
