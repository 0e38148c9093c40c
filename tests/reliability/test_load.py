"""Load: the local Kaggle server and the pipeline's download path under concurrency.

Eight downloads at once into one raw/ folder (planet.kaggle.download_file, as the download
task calls it) while another thread polls a submission's status through planet.kaggle at
POLL_RATE requests/s for POLL_SECONDS: no error, every file byte-identical to the server's and
recorded once in the manifest, every poll answered.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest

from planet import kaggle
from planet.kaggle_local import LocalKaggleServer
from tests.conftest import FakeKaggle
from tests.reliability.fetch_harness import (
    PipelineFetch,
    assert_clean_raw,
    blob_gets,
    patch_client_sleep,
    pipeline_env,  # noqa: F401 - a fixture, used through pytestmark
    sha,
    write_csv,
)

T = TypeVar("T")

pytestmark = [pytest.mark.usefixtures("pipeline_env"), pytest.mark.timeout(30)]

SEED = 20250612
LOAD_SLUG = "reliability-load"
N_DOWNLOADS = 8
FILE_SIZE = 3_000_000  # a few MB each, so that the eight downloads overlap in time
POLL_RATE = 50.0  # status polls per second
POLL_SECONDS = 5.0
DOWNLOADS_AFTER_S = 1.0  # the downloads start once the polling is under way
MIN_POLL_RATE = POLL_RATE / 2  # what the poller must sustain, even on a busy machine


@pytest.fixture
def load_files(kaggle_root: FakeKaggle) -> dict[str, bytes]:
    """N_DOWNLOADS random files of about FILE_SIZE bytes in a competition of their own."""
    rng = random.Random(SEED)
    folder = kaggle_root.root / LOAD_SLUG
    folder.mkdir()
    files = {f"part-{i}.bin": rng.randbytes(FILE_SIZE + 7919 * i) for i in range(N_DOWNLOADS)}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


@pytest.fixture
def load_fetch(
    kaggle_server: LocalKaggleServer, load_files: dict[str, bytes], tmp_path: Path
) -> PipelineFetch:
    fetch = PipelineFetch(kaggle_server, LOAD_SLUG, tmp_path / "data")
    assert set(fetch.listing()) == set(load_files)
    return fetch


@pytest.fixture
def submission_ref(
    kaggle_server: LocalKaggleServer, kaggle_root: FakeKaggle, tmp_path: Path
) -> int:
    """A scored submission (a perfect Dogs vs Cats one) whose status the poller asks for."""
    rows = kaggle_root.solutions[kaggle_root.dogs]
    path = write_csv(tmp_path / "submission.csv", ["id", "label"], rows)
    return kaggle.submit(kaggle_root.dogs, path, "load test", endpoint=kaggle_server.url).ref


@dataclass
class StatusPoller:
    """Polls a submission's status through planet.kaggle on a schedule of `rate` per second
    for `seconds` (catching up when late), from a thread of its own."""

    endpoint: str
    slug: str
    ref: int
    rate: float = POLL_RATE
    seconds: float = POLL_SECONDS
    answers: list[tuple[float, kaggle.SubmissionStatus]] = field(default_factory=list)
    errors: list[Exception] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def scheduled(self) -> int:
        return round(self.rate * self.seconds)

    def __enter__(self) -> StatusPoller:
        self._thread = threading.Thread(target=self._run, name="status-poller")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.join()

    def _run(self) -> None:
        t0 = time.monotonic()
        for i in range(self.scheduled):
            wait = t0 + i / self.rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            try:
                status = kaggle.submission_status(self.slug, self.ref, endpoint=self.endpoint)
            except Exception as exc:  # reported by the test
                self.errors.append(exc)
            else:
                self.answers.append((time.monotonic(), status))
        self.elapsed = time.monotonic() - t0


def run_at_once(calls: list[Callable[[], T]]) -> tuple[list[T], list[tuple[float, float]]]:
    """Run the calls on threads of their own, released together; their results and their
    (start, end) times. Fails listing every call that raised."""
    barrier = threading.Barrier(len(calls))

    def timed(call: Callable[[], T]) -> tuple[T, tuple[float, float]]:
        barrier.wait()
        start = time.monotonic()
        return call(), (start, time.monotonic())

    with ThreadPoolExecutor(len(calls)) as pool:
        futures = [pool.submit(timed, call) for call in calls]
    errors = [f.exception() for f in futures if f.exception() is not None]
    assert errors == [], errors
    done = [f.result() for f in futures]
    return [r for r, _ in done], [span for _, span in done]


def peak_overlap(spans: list[tuple[float, float]]) -> int:
    """The most intervals in progress at one moment."""
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    now = peak = 0
    for _, step in edges:
        now += step
        peak = max(peak, now)
    return peak


def polled_under_load(
    server: LocalKaggleServer,
    slug: str,
    ref: int,
    calls: list[Callable[[], T]],
    *,
    polls_meanwhile: bool = True,
) -> tuple[list[T], list[tuple[float, float]]]:
    """Run `calls` at once while a StatusPoller polls ref; check every poll was answered,
    right and in time (and, with polls_meanwhile, some while the calls ran). Returns what
    run_at_once does."""
    before = server.count("ListSubmissions")
    with StatusPoller(server.url, slug, ref) as poller:
        time.sleep(DOWNLOADS_AFTER_S)
        results, spans = run_at_once(calls)
    assert poller.errors == [], poller.errors[:3]
    assert len(poller.answers) == poller.scheduled
    assert {(s.ref, s.status, s.public_score) for _, s in poller.answers} == {
        (ref, "complete", 0.0)
    }
    assert server.count("ListSubmissions") - before == poller.scheduled  # one request each
    assert server.count("ListSubmissions", status=200) - before == poller.scheduled
    assert poller.scheduled / poller.elapsed >= MIN_POLL_RATE, poller.elapsed
    first, last = min(s for s, _ in spans), max(e for _, e in spans)
    during = sum(first <= t <= last for t, _ in poller.answers)
    assert during > 0 or not polls_meanwhile, (first, last)
    return results, spans


@pytest.mark.parametrize("same_file", [False, True], ids=["distinct-files", "same-file"])
def test_eight_downloads_at_once_under_status_polling(
    load_fetch: PipelineFetch,
    kaggle_server: LocalKaggleServer,
    kaggle_root: FakeKaggle,
    submission_ref: int,
    load_files: dict[str, bytes],
    same_file: bool,
) -> None:
    """No error and no retry at all; each distinct file fetched exactly once (the same file
    by one thread, the others finding it complete), byte-identical, in one manifest."""
    names = [next(iter(load_files))] * N_DOWNLOADS if same_file else list(load_files)
    listing = load_fetch.listing()
    calls = [
        lambda name=name: kaggle.download_file(
            LOAD_SLUG, name, load_fetch.raw, endpoint=kaggle_server.url, remote=listing[name]
        )
        for name in names
    ]
    # (one real download of the same file takes some 50 ms: too short to count polls in it)
    records, spans = polled_under_load(
        kaggle_server, kaggle_root.dogs, submission_ref, calls, polls_meanwhile=not same_file
    )
    assert [r.sha256 for r in records] == [sha(load_files[n]) for n in names]
    assert sum(r.downloaded for r in records) == len(set(names))
    if not same_file:
        assert peak_overlap(spans) >= 2  # the downloads really ran side by side
    gets = blob_gets(kaggle_server)
    assert sorted((g.path.rsplit("/", 1)[1], g.range, g.status, g.bytes_sent) for g in gets) == [
        (n, None, 200, len(load_files[n])) for n in sorted(set(names))
    ]
    assert_clean_raw(load_fetch.raw, {n: load_files[n] for n in names})


def test_downloads_under_load_recover_from_faults(
    load_fetch: PipelineFetch,
    kaggle_server: LocalKaggleServer,
    kaggle_root: FakeKaggle,
    submission_ref: int,
    load_files: dict[str, bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same load with download faults sprinkled over the eight files, each download under
    the task's retry policy: every file still ends byte-identical, the polls are unaffected."""
    patch_client_sleep(monkeypatch)
    faults = kaggle_server.faults
    faults.cut_next_body(1_500_000, path="part-0")
    faults.cut_next_body(2_000_000, 2, path="part-1")
    faults.truncate_next_body(1_000_000, path="part-2")
    faults.rate_limit_next(1, retry_after=0.5, path="/blobs/.*/part-3")
    faults.fail_next(1, status=500, path="/blobs/.*/part-4")
    faults.fail_next(2, status=503, path="DownloadDataFile")
    names = list(load_files)
    calls = [lambda name=name: load_fetch.download(name) for name in names]
    records, _ = polled_under_load(kaggle_server, kaggle_root.dogs, submission_ref, calls)
    assert [r.sha256 for r in records] == [sha(load_files[n]) for n in names]
    assert faults.pending == 0
    errors = [e for n in names for e in load_fetch.downloads[n].errors]
    assert all(kaggle.is_transient(e) for e in errors)
    # the cuts are resumed within the client's retries; every other fault costs one task try
    assert Counter(e.status for e in errors) == Counter({503: 2, 429: 1, 500: 1, None: 1})
    assert_clean_raw(load_fetch.raw, load_files)
