"""Shared by the reliability tests of the download path (test_downloads, test_load).

`PipelineFetch` drives planet.kaggle the way flows.prepare.fetch and tasks.fetch do: the
listing and each download run under their Prefect task's retry policy (its retry count and its
retry_condition_fn, which waits out a 429's Retry-After), with the task's backoff scaled down
so the tests stay fast. Prefect itself is not started: the policy is read off the task objects.
`patch_client_sleep` shortens the kaggle client's own retry sleeps (2-9 s each) the same way.
"""

from __future__ import annotations

import csv
import hashlib
import sys
import threading
import time
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from prefect import Task
from prefect.states import Failed

from planet import kaggle
from planet.constants import MANIFEST
from planet.kaggle import client
from planet.kaggle_local import LocalKaggleServer
from planet.kaggle_local.http_handler import RequestRecord
from tasks import fetch as fetch_tasks

T = TypeVar("T")

CLIENT_CHUNK = 1 << 20  # the kaggle client (kaggle==2.2.4) writes a download in 1 MiB chunks
BACKOFF_SCALE = 0.01  # the tasks' backoff (2, 4, 8, 16 s) becomes 0.02 ... 0.16 s
CLIENT_SLEEP_S = 0.01  # what one of the client's retry sleeps takes here
CONFIGURED_TRIES = fetch_tasks.fetch_file.task.retries + 1  # the pipeline's tries per download


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def server_bytes(server: LocalKaggleServer, slug: str, name: str) -> bytes:
    """The bytes the server serves for slug/name right now."""
    return server.data_file(slug, name).read_bytes()


@pytest.fixture
def pipeline_env(
    isolated_kaggle_env: Path, monkeypatch: pytest.MonkeyPatch, kaggle_user: str, kaggle_key: str
) -> None:
    """No real credentials anywhere (tests/conftest.py's isolated_kaggle_env); the test ones in
    the environment, where the pipeline finds them (it passes none). Import it to use it."""
    monkeypatch.setenv("KAGGLE_USERNAME", kaggle_user)
    monkeypatch.setenv("KAGGLE_KEY", kaggle_key)


def _delays(task: Task[..., Any]) -> list[float]:
    delay = task.retry_delay_seconds
    if isinstance(delay, int | float):
        return [float(delay)] * task.retries
    return [float(d) for d in delay or [0.0] * task.retries]


@dataclass
class TaskRetries:
    """Run a call under `task`'s retry policy, recording each failed try.

    `between(failed_try)` runs after a failed try that will be retried (to change the world
    between tries). `started` / `failed_at`: time.monotonic() of each try's start / failure.
    """

    task: Task[..., Any]
    between: Callable[[int], None] | None = None
    errors: list[Exception] = field(default_factory=list)
    started: list[float] = field(default_factory=list)
    failed_at: list[float] = field(default_factory=list)

    @property
    def tries(self) -> int:
        return len(self.started)

    def run(self, call: Callable[[], T]) -> T:
        delays = _delays(self.task)
        for attempt in range(self.task.retries + 1):
            self.started.append(time.monotonic())
            try:
                return call()
            except Exception as exc:
                self.failed_at.append(time.monotonic())
                self.errors.append(exc)
                last = attempt == self.task.retries
                if last or not self.task.retry_condition_fn(self.task, None, Failed(data=exc)):
                    raise
            if self.between is not None:
                self.between(attempt)
            time.sleep(delays[attempt] * BACKOFF_SCALE)
        raise AssertionError("unreachable")  # pragma: no cover


@dataclass
class PipelineFetch:
    """flows.prepare.fetch for one competition, without Prefect: list, then download into raw/."""

    server: LocalKaggleServer
    slug: str
    data_dir: Path
    list_retries: TaskRetries = field(
        default_factory=lambda: TaskRetries(fetch_tasks.list_remote_files)
    )
    downloads: dict[str, TaskRetries] = field(default_factory=dict)
    progress: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    _listing: dict[str, dict[str, Any]] | None = None

    @property
    def raw(self) -> Path:
        return Path(self.data_dir).expanduser().resolve() / self.slug / "raw"  # any slug

    def listing(self) -> dict[str, dict[str, Any]]:
        """name -> remote record, listed once (like the flow's listing task)."""
        if self._listing is None:
            files = self.list_retries.run(
                lambda: kaggle.list_files(self.slug, endpoint=self.server.url)
            )
            self._listing = {f.name: f.to_dict() for f in files}
        return self._listing

    def download(
        self, name: str, *, between: Callable[[int], None] | None = None
    ) -> kaggle.FileRecord:
        """Download `name` as the download task does; its TaskRetries go to downloads[name]."""
        remote = self.listing()[name]
        retries = self.downloads[name] = TaskRetries(fetch_tasks.fetch_file.task, between)
        seen = self.progress[name] = []
        return retries.run(
            lambda: kaggle.download_file(
                self.slug,
                name,
                self.raw,
                endpoint=self.server.url,
                progress=lambda done, total: seen.append((done, total)),
                remote=remote,
            )
        )


def patch_client_sleep(
    monkeypatch: pytest.MonkeyPatch, on_sleep: Callable[[int], None] | None = None
) -> list[float]:
    """Make the kaggle client's retry sleeps take CLIENT_SLEEP_S; returns the delays it asked
    for. `on_sleep(i)` runs during the i-th sleep (0-based): between two of its tries."""
    module = sys.modules[client._kaggle_api_class().__module__]
    asked: list[float] = []
    lock = threading.Lock()

    def sleep(seconds: float) -> None:
        with lock:
            asked.append(seconds)
            i = len(asked) - 1
        if on_sleep is not None:
            on_sleep(i)
        time.sleep(CLIENT_SLEEP_S)

    shim = types.SimpleNamespace(
        **{k: getattr(time, k) for k in dir(time) if not k.startswith("_")}
    )
    shim.sleep = sleep
    monkeypatch.setattr(module, "time", shim)
    return asked


def blob_gets(server: LocalKaggleServer, name: str | None = None) -> list[RequestRecord]:
    """The blob GETs the server answered (of one file, if named), in order."""
    return [
        r
        for r in server.requests
        if r.method == "GET"
        and r.path.startswith("/blobs/")
        and (name is None or r.path.endswith("/" + name))
    ]


def range_start(rec: RequestRecord) -> int:
    """The first byte a `bytes=N-` Range request asked for (0 without a Range)."""
    if not rec.range:
        return 0
    first, _, _ = rec.range.removeprefix("bytes=").partition("-")
    return int(first)


def assert_clean_raw(raw: Path, expected: Mapping[str, bytes]) -> None:
    """raw/ holds exactly the `expected` files with those bytes, the manifest recording them
    (none when nothing is expected) and nothing left of a download in progress: no temporary
    file, partial or resume marker; .partial/ keeps only its empty lock files."""
    top = {p.name for p in raw.iterdir()} if raw.exists() else set()
    want = {*expected, MANIFEST, kaggle.PARTIAL_DIR} if expected else {kaggle.PARTIAL_DIR}
    assert top <= want and set(expected) <= top, f"raw/ holds {sorted(top)}"
    partial_dir = raw / kaggle.PARTIAL_DIR
    left = partial_dir.iterdir() if partial_dir.is_dir() else []
    in_progress = [p.name for p in left if p.suffix != ".lock" or p.stat().st_size]
    assert in_progress == [], f"left behind in {partial_dir}: {in_progress}"
    manifest = kaggle.read_manifest(raw)
    assert {n: (e["size"], e["sha256"]) for n, e in manifest.items()} == {
        n: (len(b), sha(b)) for n, b in expected.items()
    }
    for name, data in expected.items():
        assert sha((raw / name).read_bytes()) == sha(data), f"{name} differs from the server's"
    if expected:
        records = kaggle.read_raw_records(raw, expected)
        assert {n: r["sha256"] for n, r in records.items()} == {
            n: sha(b) for n, b in expected.items()
        }


def write_csv(path: Path, header: list[str], rows: Iterable[Mapping[str, str]]) -> Path:
    """A submission file with these columns taken from the rows."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows([row[h] for h in header] for row in rows)
    return path
