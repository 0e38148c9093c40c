"""The test suite's `planet.hooks` listener: fault injection and work accounting.

Loaded by the library when `PLANET_HOOKS` names this file (`HOOKS_ENV`, see `hook_env`):

    PLANET_FAULT="train-epoch-1=kill"          SIGKILL this process after epoch 1's checkpoint
    PLANET_FAULT="train-batch-3=raise"         raise FaultInjected at training batch 3
    PLANET_FAULT="resize-64-train-part-00002=killgroup"
                                               SIGKILL this process's whole process group (the
                                               run and its Dask workers, when the run was
                                               started as a session of its own)
    PLANET_FAULT="train-epoch-1=pause"         sleep there (10 min): a test signals the run at a
                                               known point (the work log says it got there)
    PLANET_FAULT_ONCE=/tmp/fired               fire only if this file does not exist (and create it)
    PLANET_WORK_LOG=/tmp/work.log              append one line per unit of work done

Several points may be given, separated by commas. The points, each after its unit of work is
safely on disk unless said otherwise (from the library's events, see planet/hooks.py):
- `extract-<split>-shard-<n>`: shard n (from 1) of an extraction was written;
- `resize-<size>-<split>-<shard>`: that sized shard (e.g. `part-00002`) is written (this runs
  in a Dask worker process: use `killgroup`);
- `train-batch-<n>`: before the n-th training step of a stage (from 1, over the whole stage);
- `train-epoch-<k>`: epoch k (from 1) is checkpointed (`<model>:train-epoch-<k>`: only in the
  model whose models/ folder is <model>, e.g. one member of an ensemble);
- `predict-part-<n>`: prediction part n is written;
- `submit-accepted`: Kaggle accepted the file and its ref is recorded (before polling).

The work log gets one line per unit of work really done, not reused ("extract
train/part-00001.parquet", "train stage-1.ckpt epoch-2", ...): a test kills a run, reruns it
and counts what the rerun redid. Lines are short single appends (atomic between processes, Dask
workers too). This file imports nothing but the standard library: the library loads it by path.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

HOOKS_ENV = "PLANET_HOOKS"
ENV = "PLANET_FAULT"
ONCE_ENV = "PLANET_FAULT_ONCE"
WORK_LOG_ENV = "PLANET_WORK_LOG"
FAULT_ENVS = (ENV, ONCE_ENV, WORK_LOG_ENV, HOOKS_ENV)
PAUSE_S = 600.0
PATH = str(Path(__file__).resolve())


class FaultInjected(RuntimeError):
    """Raised at a fault point set to `raise`."""


def hook_env(**env: str) -> dict[str, str]:
    """The environment that loads this listener, plus the given fault/work-log variables."""
    return {HOOKS_ENV: PATH, **env}


def _actions() -> dict[str, str]:
    spec = os.environ.get(ENV, "").strip()
    if not spec:
        return {}
    out = {}
    for item in spec.split(","):
        point, _, action = item.strip().partition("=")
        out[point.strip()] = (action or "raise").strip()
    return out


def fault_point(name: str, model: str | None = None) -> None:
    """Crash here if the environment asks for it (see the module doc); a training point can
    also be named for one model only, `<models/ folder>:train-epoch-<k>`."""
    actions = _actions()
    action = actions.get(f"{model}:{name}") if model else None
    action = action or actions.get(name)
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
    if action == "killgroup":
        os.killpg(os.getpgrp(), signal.SIGKILL)
    if action == "pause":
        time.sleep(PAUSE_S)
        return
    raise FaultInjected(f"fault injected at {name} ({ENV}={os.environ.get(ENV)})")


def record_work(unit: str) -> None:
    """Append `unit` to the work log when `PLANET_WORK_LOG` names one."""
    path = os.environ.get(WORK_LOG_ENV)
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{unit}\n".encode())
    finally:
        os.close(fd)


def read_work_log(path: str | os.PathLike[str]) -> list[str]:
    """The units a work log holds, in order (empty when there is no log)."""
    p = Path(path)
    return p.read_text().splitlines() if p.is_file() else []


def on_event(event: str, info: dict[str, Any]) -> None:
    """The library's events (planet/hooks.py) as work-log lines and fault points."""
    if event == "extract.shard":
        record_work(f"extract {info['split']}/{info['name']}")
        fault_point(f"extract-{info['split']}-shard-{info['index'] + 1}")
    elif event == "resize.shard":
        name = str(info["name"])
        record_work(f"resize {info['size']}/{info['split']}/{name}")
        fault_point(f"resize-{info['size']}-{info['split']}-{name.removesuffix('.parquet')}")
    elif event == "train.batch":
        fault_point(f"train-batch-{info['step']}", info.get("model"))
    elif event == "train.epoch":
        record_work(f"train {info['run']} epoch-{info['epoch']}")
        fault_point(f"train-epoch-{info['epoch']}", info.get("model"))
    elif event == "predict.part":
        record_work(f"predict {info['split']} part-{info['part']}")
        fault_point(f"predict-part-{info['part']}")
    elif event == "submit.accepted":
        record_work(f"submit {info['file']}")
        fault_point("submit-accepted")
