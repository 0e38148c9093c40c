"""Content-keyed caching for stage tasks.

A stage task's cache key hashes what its output depends on: the manifests (content hashes) of
its inputs, its settings and the code version, never the path strings it reads or writes.
Task results are location-independent manifests (names relative to the competition folder),
so a cached result is valid in any data directory whose outputs are present.

Prefect alone would hand back a cached manifest whose files were deleted meanwhile. So every
stage task is called through `run_cached`, which first asks the domain library whether the
outputs are still complete and, when they are not, runs the task with `refresh_cache=True`:
it runs again and overwrites the stale cache record under the same key, so the next run is
Cached again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from prefect import Task
from prefect.context import TaskRunContext
from prefect.futures import PrefectFuture

import planet
from planet.fileio import sha256_json

R = TypeVar("R")


def content_key(*, stage: str, code_version: str, **content: Any) -> str:
    """A cache key from a stage name, its code version and JSON-able content fingerprints."""
    return sha256_json(
        {"stage": stage, "code": code_version, "planet": planet.__version__, **content}
    )


def key_from(
    stage: str, code_version: str, fields: Iterable[str]
) -> Callable[[TaskRunContext, dict[str, Any]], str]:
    """A Prefect `cache_key_fn` hashing only the named parameters (manifests, settings).

    Parameters that are locations (data_dir, paths) are deliberately left out.
    """
    names = tuple(fields)

    def _key(_ctx: TaskRunContext, params: dict[str, Any]) -> str:
        picked = {}
        for name in names:
            value = params[name]
            picked[name] = value.model_dump(mode="json") if hasattr(value, "model_dump") else value
        return content_key(stage=stage, code_version=code_version, **picked)

    return _key


def run_cached(
    task: Task[..., R], *, outputs_complete: bool, submit: bool = False, **params: Any
) -> R | PrefectFuture[R]:
    """Call `task` with `params`; refresh its cache record when its outputs are gone."""
    if not outputs_complete:
        task = task.with_options(refresh_cache=True)
    if submit:
        return task.submit(**params)
    return task(**params)
