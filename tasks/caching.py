"""Content-keyed stage tasks: one definition per unit of work.

A stage task's cache key hashes what its output depends on (`key_from`): the manifests
(content hashes) of its inputs, its settings and the code version, never the paths it reads
or writes (the workspace contributes only the competition's slug). Results are
location-independent manifests (paths relative to the competition folder), so a cached
result is valid in any data directory whose outputs are present.

Prefect alone would hand back a cached manifest whose files were deleted meanwhile, so a stage
task is declared with `done`, the catalog's answer to "are this call's outputs complete?"
(`planet.workspace`). Called (or submitted), a `StageTask` asks `done` first and, when the
outputs are gone, runs with `refresh_cache=True`: it runs again and overwrites the stale cache
record under the same key, so the next run is Cached again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from prefect import Task, task
from prefect.context import TaskRunContext
from prefect.futures import PrefectFuture

import planet
from planet.fileio import sha256_json
from planet.workspace import Workspace

R = TypeVar("R")


def content_key(*, stage: str, code_version: str, **content: Any) -> str:
    """A cache key from a stage name, its code version and JSON-able content fingerprints."""
    return sha256_json(
        {"stage": stage, "code": code_version, "planet": planet.__version__, **content}
    )


def key_from(
    stage: str, code_version: str, fields: Iterable[str]
) -> Callable[[TaskRunContext, dict[str, Any]], str]:
    """A Prefect `cache_key_fn` hashing only the named parameters (manifests, settings); a
    Workspace parameter counts as its competition's slug, never its location."""
    names = tuple(fields)

    def _key(_ctx: TaskRunContext, params: dict[str, Any]) -> str:
        picked: dict[str, Any] = {}
        for name in names:
            value = params[name]
            if isinstance(value, Workspace):
                picked["slug"] = value.slug
            elif hasattr(value, "model_dump"):
                picked[name] = value.model_dump(mode="json")
            else:
                picked[name] = value
        return content_key(stage=stage, code_version=code_version, **picked)

    return _key


class StageTask(Generic[R]):
    """A Prefect task plus `done(**params)`: Cached only while its outputs are complete."""

    def __init__(self, task_: Task[..., R], done: Callable[..., bool]) -> None:
        self.task = task_
        self.done = done
        self.name = task_.name

    def _for(self, params: dict[str, Any]) -> Task[..., R]:
        return self.task if self.done(**params) else self.task.with_options(refresh_cache=True)

    def __call__(self, **params: Any) -> R:
        return self._for(params)(**params)

    def submit(self, **params: Any) -> PrefectFuture[R]:
        return self._for(params).submit(**params)


def stage_task(
    *, done: Callable[..., bool], **options: Any
) -> Callable[[Callable[..., R]], StageTask[R]]:
    """Declare a stage task: `@stage_task(done=..., name=..., cache_key_fn=...)`; `options`
    are Prefect's `@task` options, `done` gets the task's parameters (by name)."""

    def wrap(fn: Callable[..., R]) -> StageTask[R]:
        return StageTask(task(persist_result=True, **options)(fn), done)

    return wrap
