"""How `planet`'s processes end: child servers that outlive neither a signal nor their parent.

- `own_session` (a Popen preexec_fn): the child runs in a session of its own, so a terminal's
  Ctrl-C (SIGINT to the foreground process group) reaches the parent only, which decides
  what the child gets; on Linux the child gets SIGTERM when the parent dies, even by SIGKILL
  (PR_SET_PDEATHSIG), so no orphan keeps a port.
- `wait_forwarding_signals`: wait for a child, passing SIGINT/SIGTERM on to it, and kill it if
  it has not exited `grace_s` after the first one (`planet server`).
- `sigterm_as_interrupt`: SIGTERM ends an in-process server the way Ctrl-C does (its cleanup
  runs; `planet kaggle-local`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

PR_SET_PDEATHSIG = 1  # linux/prctl.h
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
GRACE_S = 10.0


def _find_prctl() -> Any:
    """libc's prctl, looked up here in the parent: between fork and exec the child must not
    load libraries (another thread of the parent may have held the loader's lock)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _find_prctl()


def own_session() -> None:
    """Popen preexec_fn: a session of its own, SIGTERM on the parent's death (Linux)."""
    os.setsid()
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


def wait_forwarding_signals(child: subprocess.Popen[Any], grace_s: float = GRACE_S) -> int:
    """Wait for `child`, passing SIGINT/SIGTERM on to it; SIGKILL it `grace_s` after the first
    signal if it is still running. Returns 128 + the first signal's number when stopped by
    one (130 for Ctrl-C, as a shell reports it), else the child's exit code."""
    received: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        received.append(signum)
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in STOP_SIGNALS}
    try:
        deadline = None
        while True:
            if received and deadline is None:
                deadline = time.monotonic() + grace_s
            try:
                code = child.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                if deadline is not None and time.monotonic() > deadline:
                    child.kill()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 128 + received[0] if received else code


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt in the main thread for the duration of the block."""

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
