"""Progress of long tasks (downloads, extraction) as Prefect progress artifacts."""

from __future__ import annotations

import re
import threading
import time

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.logging import get_run_logger


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key: lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-")[:100]


class Progress:
    """A callable `(done, total)` that advances a progress artifact and logs now and then.

    Updates are throttled (every `min_interval_s` seconds or `min_step` percent), and a
    failing update never fails the task it reports on.
    """

    def __init__(
        self,
        description: str,
        unit: str = "items",
        min_interval_s: float = 2.0,
        min_step: float = 5.0,
    ) -> None:
        self.description = description
        self.unit = unit
        self.min_interval_s = min_interval_s
        self.min_step = min_step
        self._lock = threading.Lock()
        self._last_t = 0.0
        self._last_pct = -100.0
        self._logger = get_run_logger()
        self._id = create_progress_artifact(progress=0.0, description=description)

    def __call__(self, done: int, total: int | None) -> None:
        pct = 100.0 * done / total if total else 0.0
        now = time.monotonic()
        finished = bool(total) and done >= total
        with self._lock:
            if not finished and (
                now - self._last_t < self.min_interval_s and pct - self._last_pct < self.min_step
            ):
                return
            self._last_t, self._last_pct = now, pct
        try:
            update_progress_artifact(self._id, progress=min(pct, 100.0))
        except Exception as exc:  # progress is a courtesy: never fail the work for it
            self._logger.debug("progress update failed: %s", exc)
        of_total = f"/{total:,}" if total else ""
        self._logger.info(
            "%s: %s%s %s (%.0f%%)", self.description, f"{done:,}", of_total, self.unit, pct
        )

    def done(self) -> None:
        try:
            update_progress_artifact(self._id, progress=100.0)
        except Exception as exc:
            self._logger.debug("progress update failed: %s", exc)
