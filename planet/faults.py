"""Fault injection for tests: crash a stage at a named point, once or every time.

    PLANET_FAULT="train-epoch-1=kill"          SIGKILL this process after epoch 1's checkpoint
    PLANET_FAULT="train-batch-3=raise"         raise FaultInjected at training batch 3
    PLANET_FAULT_ONCE=/tmp/fired               fire only if this file does not exist (and create it)

Several points may be given, separated by commas. Points: `train-epoch-<k>` (after epoch k,
counted from 1, is checkpointed), `train-batch-<n>` (before the n-th training step of a stage,
counted from 1 over the whole stage), `predict-part-<n>` (after prediction part n is
written). Nothing happens when `PLANET_FAULT` is unset, which is always the case outside tests.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

ENV = "PLANET_FAULT"
ONCE_ENV = "PLANET_FAULT_ONCE"


class FaultInjected(RuntimeError):
    """Raised at a fault point set to `raise`."""


def _actions() -> dict[str, str]:
    spec = os.environ.get(ENV, "").strip()
    if not spec:
        return {}
    out = {}
    for item in spec.split(","):
        point, _, action = item.strip().partition("=")
        out[point.strip()] = (action or "raise").strip()
    return out


def fault_point(name: str) -> None:
    """Crash here if the environment asks for it (see the module doc)."""
    action = _actions().get(name)
    if action is None:
        return
    once = os.environ.get(ONCE_ENV)
    if once:
        marker = Path(once)
        if marker.exists():
            return
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise FaultInjected(f"fault injected at {name} ({ENV}={os.environ.get(ENV)})")
