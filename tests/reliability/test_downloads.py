"""Download faults, end to end: planet.kaggle's download path as the fetch tasks drive it (their
retry policy, see fetch_harness) against the local Kaggle server with faults injected.

A recoverable fault must end with the server's exact bytes in raw/ (sha256), recorded in the
manifest, and nothing of the download in progress left behind; an unrecoverable one with a
clear error after the configured number of tries, and nothing left at all.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from planet.kaggle import (
    DEFAULT_CLIENT_RETRIES,
    KaggleAuthError,
    KaggleError,
    KaggleNotFoundError,
    KaggleRulesError,
    KaggleTransientError,
    is_transient,
)
from planet.kaggle_local import LocalKaggleServer
from tests.conftest import FakeKaggle
from tests.reliability.fetch_harness import (
    CLIENT_CHUNK,
    CONFIGURED_TRIES,
    PipelineFetch,
    TaskRetries,
    assert_clean_raw,
    blob_gets,
    patch_client_sleep,
    pipeline_env,  # noqa: F401 - a fixture, used through pytestmark
    range_start,
    server_bytes,
    sha,
)

pytestmark = [pytest.mark.usefixtures("pipeline_env"), pytest.mark.timeout(30)]

SEED = 20250611
BIG = "train-jpg.tar.7z"  # 3 MB of the fake Planet competition
CUT_FILE = "cuts.bin"
CUT_SIZE = 6 * CLIENT_CHUNK + 12_345  # room for chains of cuts that each keep some progress
RESUME_CUT = CLIENT_CHUNK + 4321  # a cut after one full chunk of the client's
CLIENT_TRIES = DEFAULT_CLIENT_RETRIES + 1  # the client's own tries within one task try
RETRIES = CONFIGURED_TRIES - 1


@pytest.fixture
def client_sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    return patch_client_sleep(monkeypatch)


@pytest.fixture
def planet_fetch(
    kaggle_server: LocalKaggleServer, kaggle_root: FakeKaggle, tmp_path: Path
) -> PipelineFetch:
    return PipelineFetch(kaggle_server, kaggle_root.planet, tmp_path / "data")


@pytest.fixture
def cut_fetch(
    kaggle_server: LocalKaggleServer, kaggle_root: FakeKaggle, tmp_path: Path
) -> PipelineFetch:
    """A fetch of CUT_FILE (random bytes, CUT_SIZE) from the fake unknown competition."""
    data = random.Random(SEED).randbytes(CUT_SIZE)
    (kaggle_root.root / kaggle_root.unknown / CUT_FILE).write_bytes(data)
    return PipelineFetch(kaggle_server, kaggle_root.unknown, tmp_path / "data")


def _retried(fetch: PipelineFetch, path: str, name: str) -> TaskRetries:
    """The TaskRetries that met faults armed on `path`: the listing's or the download's."""
    return fetch.list_retries if path == "ListDataFiles" else fetch.downloads[name]


def _waits(retries: TaskRetries) -> list[float]:
    """Seconds between each failed try and the next try's start."""
    return [
        nxt - failed for failed, nxt in zip(retries.failed_at, retries.started[1:], strict=False)
    ]


# ----- 5xx bursts and rate limits ----------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "path", "n"),
    [
        (500, "/blobs/", 1),
        (503, "/blobs/", RETRIES),
        (502, "DownloadDataFile", 2),
        (500, "ListDataFiles", RETRIES),
    ],
    ids=["blob-500x1", f"blob-503x{RETRIES}", "download-502x2", f"listing-500x{RETRIES}"],
)
def test_burst_of_server_errors_ends_in_the_servers_bytes(
    planet_fetch: PipelineFetch, kaggle_server: LocalKaggleServer, status: int, path: str, n: int
) -> None:
    """n 5xx answers in a row (n <= the configured retries): retried to the complete file."""
    kaggle_server.faults.fail_next(n, status=status, path=path)
    rec = planet_fetch.download(BIG)
    data = server_bytes(kaggle_server, planet_fetch.slug, BIG)
    assert rec.downloaded and rec.sha256 == sha(data) and rec.size == len(data)
    retried = _retried(planet_fetch, path, BIG)
    assert [(type(e), e.status) for e in retried.errors] == [(KaggleTransientError, status)] * n
    named = planet_fetch.slug if path == "ListDataFiles" else f"file {BIG!r}"
    assert all(named in str(e) and "temporary" in str(e) for e in retried.errors)
    assert retried.tries == n + 1 and kaggle_server.faults.pending == 0
    assert kaggle_server.count(path, status=status) == n
    assert planet_fetch.progress[BIG][-1] == (len(data), len(data))
    assert_clean_raw(planet_fetch.raw, {BIG: data})


@pytest.mark.parametrize(
    ("path", "n", "retry_after"),
    [("ListDataFiles", 1, 1.0), ("DownloadDataFile", 2, 0.5), ("/blobs/", 1, 1.0)],
    ids=["listing", "download-twice", "blob"],
)
def test_rate_limit_waits_out_retry_after(
    planet_fetch: PipelineFetch,
    kaggle_server: LocalKaggleServer,
    path: str,
    n: int,
    retry_after: float,
) -> None:
    """429 + Retry-After: the next try starts no sooner than the server asked, then succeeds."""
    kaggle_server.faults.rate_limit_next(n, retry_after=retry_after, path=path)
    rec = planet_fetch.download(BIG)
    assert rec.sha256 == sha(server_bytes(kaggle_server, planet_fetch.slug, BIG))
    retried = _retried(planet_fetch, path, BIG)
    assert [(e.status, e.retry_after) for e in retried.errors] == [(429, retry_after)] * n
    assert all(f"retry after {retry_after:g} s" in str(e) for e in retried.errors)
    waits = _waits(retried)
    assert len(waits) == n and all(retry_after <= w < retry_after + 3 for w in waits), waits
    assert kaggle_server.count(path, status=429) == n and kaggle_server.faults.pending == 0
    assert_clean_raw(planet_fetch.raw, {BIG: server_bytes(kaggle_server, planet_fetch.slug, BIG)})


# ----- dropped connections -------------------------------------------------------------------


def _cut_plans() -> dict[str, list[int]]:
    """id -> where the successive blob responses are cut (bytes into each response).

    Seeded. The cuts of a plan add up to less than CUT_SIZE - CLIENT_CHUNK, so every one of
    them lands inside the file however much of the last chunk the client drops on resuming.
    """
    rng = random.Random(SEED)
    room = CUT_SIZE - CLIENT_CHUNK
    plans = {f"once-at-{c}": [c] for c in sorted(rng.randrange(1, room) for _ in range(3))}
    same = rng.randrange(CLIENT_CHUNK, room // CLIENT_TRIES)  # each cut keeps >= 1 chunk
    plans[f"at-{same}-on-{CLIENT_TRIES}-tries-in-a-row"] = [same] * CLIENT_TRIES
    chain = [rng.randrange(1, room // 3) for _ in range(3)]
    plans["chain-" + "-".join(map(str, chain))] = chain
    return plans


CUT_PLANS = _cut_plans()


@pytest.mark.parametrize("cuts", list(CUT_PLANS.values()), ids=list(CUT_PLANS))
def test_cut_connections_resume_with_range_to_the_servers_bytes(
    cut_fetch: PipelineFetch,
    kaggle_server: LocalKaggleServer,
    client_sleeps: list[float],
    cuts: list[int],
) -> None:
    """Each cut is resumed with a Range request from where it broke off (less at most the
    client's unfinished 1 MiB chunk): within the client's retries, then on the task's retry."""
    for c in cuts:
        kaggle_server.faults.cut_next_body(c, path=CUT_FILE)
    rec = cut_fetch.download(CUT_FILE)
    data = server_bytes(kaggle_server, cut_fetch.slug, CUT_FILE)
    assert rec.sha256 == sha(data) and kaggle_server.faults.pending == 0

    retries = cut_fetch.downloads[CUT_FILE]
    assert retries.tries == 1 + len(cuts) // CLIENT_TRIES  # the client gives up after 4 cuts
    assert len(client_sleeps) == len(cuts) - (retries.tries - 1)
    assert all(is_transient(e) and "connection to Kaggle broke" in str(e) for e in retries.errors)
    gets = blob_gets(kaggle_server, CUT_FILE)
    full = [g for g in gets if not g.range]  # one per task try (a later one only to probe)
    ranged = [g for g in gets if g.range]
    assert len(full) == retries.tries and full[0].bytes_sent == cuts[0]
    assert len(ranged) == len(cuts)
    reached = cuts[0]
    for i, get in enumerate(ranged):
        start = range_start(get)
        assert get.status == 206 and reached - CLIENT_CHUNK < start <= reached, (i, start, reached)
        sent = cuts[i + 1] if i + 1 < len(cuts) else CUT_SIZE - start
        assert get.bytes_sent == sent
        reached = start + sent
    assert reached == CUT_SIZE
    assert_clean_raw(cut_fetch.raw, {CUT_FILE: data})


@pytest.mark.parametrize(
    "keep",
    [0, random.Random(SEED + 1).randrange(1, CUT_SIZE - 1), CUT_SIZE - 1],
    ids=lambda keep: f"keep-{keep}",
)
def test_truncated_body_is_discarded_and_fetched_again(
    cut_fetch: PipelineFetch, kaggle_server: LocalKaggleServer, keep: int
) -> None:
    """A well-formed but short response (its Content-Length says so too) is caught by the size
    check against the listing, discarded, and the retry fetches the whole file afresh."""
    kaggle_server.faults.truncate_next_body(keep, path=CUT_FILE)
    rec = cut_fetch.download(CUT_FILE)
    data = server_bytes(kaggle_server, cut_fetch.slug, CUT_FILE)
    assert rec.sha256 == sha(data)
    [err] = cut_fetch.downloads[CUT_FILE].errors
    assert isinstance(err, KaggleTransientError) and f"has {keep} bytes but Kaggle lists" in str(
        err
    )
    assert repr(CUT_FILE) in str(err) and cut_fetch.slug in str(err)
    first, last = blob_gets(kaggle_server, CUT_FILE)
    assert (first.bytes_sent, last.range, last.status, last.bytes_sent) == (
        keep,
        None,
        200,
        CUT_SIZE,
    )
    assert_clean_raw(cut_fetch.raw, {CUT_FILE: data})


def _fail_twice(server: LocalKaggleServer) -> None:
    server.faults.fail_next(2, status=500, path="/blobs/")


def _rate_limit_once(server: LocalKaggleServer) -> None:
    server.faults.rate_limit_next(1, retry_after=0.3, path="/blobs/")


def _truncate_once(server: LocalKaggleServer) -> None:
    server.faults.truncate_next_body(CLIENT_CHUNK // 2, path=CUT_FILE)


@pytest.mark.parametrize(
    ("arm", "tries"),
    [(_fail_twice, 2), (_rate_limit_once, 1), (_truncate_once, 2)],
    ids=["500x2", "429", "truncated"],
)
def test_fault_on_the_resume_request_still_ends_in_the_servers_bytes(
    cut_fetch: PipelineFetch,
    kaggle_server: LocalKaggleServer,
    monkeypatch: pytest.MonkeyPatch,
    arm: Callable[[LocalKaggleServer], None],
    tries: int,
) -> None:
    """A cut, then a fault on the client's Range request (armed while the client waits to
    resume). When the Range request is refused the client at once asks for the whole file
    again; a body it cannot use fails its size check, the partial is discarded and the task's
    retry starts afresh."""
    kaggle_server.faults.cut_next_body(RESUME_CUT, path=CUT_FILE)
    patch_client_sleep(monkeypatch, on_sleep=lambda i: arm(kaggle_server) if i == 0 else None)
    rec = cut_fetch.download(CUT_FILE)
    data = server_bytes(kaggle_server, cut_fetch.slug, CUT_FILE)
    assert rec.sha256 == sha(data) and kaggle_server.faults.pending == 0
    retries = cut_fetch.downloads[CUT_FILE]
    assert retries.tries == tries
    assert all("incomplete" in str(e) and "discarded" in str(e) for e in retries.errors)
    last = blob_gets(kaggle_server, CUT_FILE)[-1]
    assert (last.range, last.status, last.bytes_sent) == (None, 200, CUT_SIZE)
    assert_clean_raw(cut_fetch.raw, {CUT_FILE: data})


# ----- the remote file changes between tries ---------------------------------------------------


@pytest.mark.parametrize("change", ["etag", "content"])
@pytest.mark.parametrize("when", ["between-client-retries", "between-task-tries"])
def test_changed_remote_file_is_not_stitched_onto_a_partial(
    cut_fetch: PipelineFetch,
    kaggle_server: LocalKaggleServer,
    monkeypatch: pytest.MonkeyPatch,
    change: str,
    when: str,
) -> None:
    """A partial of the old version is never completed with the new one's bytes: once the ETag
    differs, the download starts again from byte 0 (If-Range within the client's retries, the
    resume marker on the task's retry) and ends with exactly the server's current bytes."""
    old = server_bytes(kaggle_server, cut_fetch.slug, CUT_FILE)
    new = random.Random(SEED + 2).randbytes(CUT_SIZE)  # same size: only the ETag tells
    path = kaggle_server.data_file(cut_fetch.slug, CUT_FILE)

    def replace(_: int) -> None:
        if change == "etag":
            kaggle_server.faults.change_etag()
            return
        path.write_bytes(new)
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5 * 10**9))

    in_client = when == "between-client-retries"
    # cut after a full chunk (the partial keeps it); the latter case: until the client gives up
    kaggle_server.faults.cut_next_body(RESUME_CUT, 1 if in_client else CLIENT_TRIES, path=CUT_FILE)
    if in_client:
        patch_client_sleep(monkeypatch, on_sleep=lambda i: replace(i) if i == 0 else None)
        rec = cut_fetch.download(CUT_FILE)
    else:
        patch_client_sleep(monkeypatch)
        rec = cut_fetch.download(CUT_FILE, between=replace)

    current = server_bytes(kaggle_server, cut_fetch.slug, CUT_FILE)
    assert current == (new if change == "content" else old)
    if change == "content":
        kept = RESUME_CUT // CLIENT_CHUNK * CLIENT_CHUNK  # what the partial held then
        assert old[:kept] + new[kept:] != new  # so a stitched file would be caught below
    assert rec.sha256 == sha(current)
    assert cut_fetch.downloads[CUT_FILE].tries == (1 if in_client else 2)
    gets = blob_gets(kaggle_server, CUT_FILE)
    after = gets[1] if in_client else gets[-1]
    # the whole new version, from byte 0 (asked with a Range, the server ignored it: If-Range)
    assert (after.status, after.bytes_sent) == (200, CUT_SIZE)
    assert bool(after.range) == in_client
    assert_clean_raw(cut_fetch.raw, {CUT_FILE: current})


# ----- unrecoverable faults ----------------------------------------------------------------------


def _always_500(server: LocalKaggleServer, fetch: PipelineFetch, mp: pytest.MonkeyPatch) -> None:
    server.faults.fail_next(CONFIGURED_TRIES + 2, status=500, path="/blobs/")


def _always_429(server: LocalKaggleServer, fetch: PipelineFetch, mp: pytest.MonkeyPatch) -> None:
    server.faults.rate_limit_next(CONFIGURED_TRIES + 2, retry_after=0.2, path="DownloadDataFile")


def _decline_rules(server: LocalKaggleServer, fetch: PipelineFetch, mp: pytest.MonkeyPatch) -> None:
    server.decline_rules(fetch.slug)


def _wrong_key(server: LocalKaggleServer, fetch: PipelineFetch, mp: pytest.MonkeyPatch) -> None:
    mp.setenv("KAGGLE_KEY", "wrong-key-0123456789abcdef")


def _file_gone(server: LocalKaggleServer, fetch: PipelineFetch, mp: pytest.MonkeyPatch) -> None:
    server.data_file(fetch.slug, BIG).unlink()


UNRECOVERABLE = {
    "500-every-try": (
        _always_500,
        KaggleTransientError,
        CONFIGURED_TRIES,
        ["HTTP 500", "temporary", "rerun the stage later"],
    ),
    "429-every-try": (_always_429, KaggleTransientError, CONFIGURED_TRIES, ["retry after 0.2 s"]),
    "403-rules": (
        _decline_rules,
        KaggleRulesError,
        1,
        ["HTTP 403", "accept the competition rules"],
    ),
    "401-key": (_wrong_key, KaggleAuthError, 1, ["HTTP 401", "check your credentials (read from"]),
    "404-gone": (_file_gone, KaggleNotFoundError, 1, ["HTTP 404", "check the competition slug"]),
}


@pytest.mark.parametrize(
    ("arm", "error", "tries", "words"), UNRECOVERABLE.values(), ids=UNRECOVERABLE
)
def test_unrecoverable_fault_fails_clearly_after_the_configured_tries(
    planet_fetch: PipelineFetch,
    kaggle_server: LocalKaggleServer,
    monkeypatch: pytest.MonkeyPatch,
    kaggle_key: str,
    arm: Callable[[LocalKaggleServer, PipelineFetch, pytest.MonkeyPatch], None],
    error: type[KaggleError],
    tries: int,
    words: list[str],
) -> None:
    """Transient faults that never stop: KaggleTransientError after the configured tries (each
    waiting out Retry-After); permanent ones (401/403/404): at once. The message says what is
    wrong and what to do, and nothing at all is left in raw/."""
    planet_fetch.listing()  # listed before the fault, as the flow's listing task does
    arm(kaggle_server, planet_fetch, monkeypatch)
    kaggle_server.clear_log()
    with pytest.raises(error) as info:
        planet_fetch.download(BIG)
    exc, msg = info.value, str(info.value)
    assert all(w in msg for w in words), msg
    assert (exc.slug, exc.file_name) == (planet_fetch.slug, BIG) and kaggle_key not in msg
    if error is KaggleAuthError:  # the credentials, not the file, are wrong: it names their source
        assert "environment KAGGLE_USERNAME/KAGGLE_KEY" in msg
    else:
        assert repr(BIG) in msg and repr(planet_fetch.slug) in msg
    retries = planet_fetch.downloads[BIG]
    assert retries.tries == tries and retries.errors[-1] is exc
    assert all(
        w >= (e.retry_after or 0) for e, w in zip(retries.errors, _waits(retries), strict=False)
    )
    assert kaggle_server.count("DownloadDataFile") == tries  # each try asked once, no more
    assert kaggle_server.count("ListDataFiles") == 0
    assert_clean_raw(planet_fetch.raw, {})
