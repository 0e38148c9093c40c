"""Progress of long tasks (downloads, extraction, resizing, training, prediction): a Prefect
progress artifact, plus, for the console, one live bar per running task when stderr is a
terminal (`live_bars`, which the CLI turns on) or a sparse log line otherwise."""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.logging import get_run_logger

_live: Any = None  # the rich Progress shown while `live_bars` is on
_live_lock = threading.Lock()


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key: lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-")[:100]


@contextlib.contextmanager
def live_bars() -> Iterator[None]:
    """One live progress bar per running task on stderr for the block; log lines (Prefect's
    console handlers) print above the bars instead of through them."""
    global _live
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
    from rich.progress import Progress as RichProgress

    console = Console(stderr=True)
    bars = RichProgress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )
    handlers = [h for h in logging.getLogger().handlers if hasattr(h, "console")]
    saved = [h.console for h in handlers]
    for handler in handlers:
        handler.console = console  # type: ignore[attr-defined]
    with _live_lock:
        _live = bars
    bars.start()
    try:
        yield
    finally:
        bars.stop()
        with _live_lock:
            _live = None
        for handler, old in zip(handlers, saved, strict=True):
            handler.console = old  # type: ignore[attr-defined]


class Progress:
    """A callable `(done, total)` that advances a progress artifact, a live bar (see
    `live_bars`) or, without one, logs now and then.

    Log lines are sparse: at most one every `min_interval_s` seconds and `min_step` percent,
    and one when the work is done. A failing update never fails the task it reports on.
    """

    def __init__(
        self,
        description: str,
        unit: str = "items",
        min_interval_s: float = 5.0,
        min_step: float = 10.0,
    ) -> None:
        self.description = description
        self.unit = unit
        self.min_interval_s = min_interval_s
        self.min_step = min_step
        self._lock = threading.Lock()
        self._last_t = time.monotonic()
        self._last_pct = 0.0
        self._finished = False
        self._logger = get_run_logger()
        self._id = create_progress_artifact(progress=0.0, description=description)
        self._bar = _live.add_task(description, total=None) if _live is not None else None

    def __call__(self, done: int, total: int | None) -> None:
        pct = 100.0 * done / total if total else 0.0
        now = time.monotonic()
        finished = bool(total) and done >= total
        if self._bar is not None and _live is not None:
            _live.update(self._bar, completed=done, total=total)
        with self._lock:
            if self._finished or not (
                finished
                or (
                    now - self._last_t >= self.min_interval_s
                    and pct - self._last_pct >= self.min_step
                )
            ):
                return
            self._last_t, self._last_pct, self._finished = now, pct, finished
        try:
            update_progress_artifact(self._id, progress=min(pct, 100.0))
        except Exception as exc:  # progress is a courtesy: never fail the work for it
            self._logger.debug("progress update failed: %s", exc)
        if self._bar is None:
            of_total = f"/{total:,}" if total else ""
            self._logger.info(
                "%s: %s%s %s (%.0f%%)", self.description, f"{done:,}", of_total, self.unit, pct
            )

    def done(self) -> None:
        if self._bar is not None and _live is not None:
            _live.remove_task(self._bar)
            self._bar = None
        try:
            update_progress_artifact(self._id, progress=100.0)
        except Exception as exc:
            self._logger.debug("progress update failed: %s", exc)
