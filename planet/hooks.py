"""Extension points: code outside the library observes the stages' units of work.

The library calls `emit(event, **info)` where a unit of work is safely on disk and before each
training step:

    extract.shard    split, index (from 0), name      an original-image shard is written
    resize.shard     size, split, name                a sized shard is written (in a Dask worker)
    train.batch      step (from 1, over the stage),   before a training step
                     model (its models/ folder)
    train.epoch      run, epoch (from 1), model       an epoch is checkpointed
    predict.part     split, part (from 1)             a prediction part is written
    submit.accepted  file                             Kaggle accepted a submission (ref recorded)

Nothing listens unless the environment variable `PLANET_HOOKS` names a Python file; that file
is loaded once per process (Dask workers inherit the variable) and its `on_event(event, info)`
is called for every event. The test suite's fault injection and work accounting are such a file
(`tests/fault_hooks.py`). Outside tests the variable is unset and `emit` costs one lookup.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from typing import Any

ENV = "PLANET_HOOKS"
Listener = Callable[[str, dict[str, Any]], None]
_loaded: dict[str, Listener] = {}


def _listener(path: str) -> Listener:
    listener = _loaded.get(path)
    if listener is None:
        spec = importlib.util.spec_from_file_location(f"planet_hooks_{len(_loaded)}", path)
        if spec is None or spec.loader is None:
            raise ImportError(f"{ENV}={path}: not a Python file")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        listener = _loaded[path] = module.on_event
    return listener


def emit(event: str, **info: Any) -> None:
    """Tell the listener named by `PLANET_HOOKS` (if any) that `event` happened."""
    path = os.environ.get(ENV)
    if path:
        _listener(path)(event, info)
