"""Submitting predictions against the local Kaggle server: scores, records, retries without a
second submission, rules errors, and no key leaks."""

from __future__ import annotations

import contextlib
import csv
import json
import subprocess
from pathlib import Path

import pytest

from planet import kaggle
from planet.fileio import sha256_file
from planet.kaggle import Credentials, KaggleRulesError, KaggleTransientError, submit_record
from planet.kaggle.submit_record import (
    StaleRecordError,
    SubmissionScoringError,
    git_commit,
    read_record,
    record_path,
    submission_message,
    submit_and_wait,
)
from planet.kaggle_local import grade_file

pytestmark = pytest.mark.usefixtures("isolated_kaggle_env")

CREATED = "CreateSubmission"
MESSAGE = "planet-pipeline test-run: 64px frozen 1ep @ abc1234"


@pytest.fixture
def creds(kaggle_user: str, kaggle_key: str) -> Credentials:
    return Credentials(kaggle_user, kaggle_key, source="the test's credentials")


@pytest.fixture
def env_creds(monkeypatch, kaggle_user: str, kaggle_key: str) -> None:
    """The task reads credentials itself (load_credentials): put them in the environment."""
    monkeypatch.setenv("KAGGLE_USERNAME", kaggle_user)
    monkeypatch.setenv("KAGGLE_KEY", kaggle_key)


def write_submission(path: Path, rows: list[dict[str, str]], tags: str | None = "primary") -> Path:
    """A Planet submission: every test image tagged `tags` (None: the true tags)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["image_name", "tags"])
        writer.writerows([r["image_name"], r["tags"] if tags is None else tags] for r in rows)
    return path


@pytest.fixture
def planet_csv(kaggle_root, tmp_path) -> Path:
    rows = kaggle_root.solutions[kaggle_root.planet]
    return write_submission(tmp_path / "data" / "submissions" / "primary.csv", rows)


def expected_scores(kaggle_root, csv_path: Path) -> tuple[float, float]:
    slug = kaggle_root.planet
    graded = grade_file(slug, csv_path, kaggle_root.root / slug / "_private" / "solution.csv")
    assert graded.ok
    return graded.public_score, graded.private_score


def created(server) -> int:
    """Submissions the server actually created (successful CreateSubmission requests)."""
    return server.count(CREATED, status=200)


def no_key_in(kaggle_key: str, *texts: object) -> None:
    for text in texts:
        assert kaggle_key not in str(text)


# ----- message and commit ---------------------------------------------------------------------


def test_submission_message_names_the_run_and_stays_short():
    msg = submission_message(
        "cpu-demo-1a2b3c4d", ["64px frozen 1ep", "64px unfrozen 2ep"], "3f2a1bc"
    )
    assert msg == "planet-pipeline cpu-demo-1a2b3c4d: 64px frozen 1ep; 64px unfrozen 2ep @ 3f2a1bc"
    assert submission_message("r", "one\nstage", None) == "planet-pipeline r: one stage"
    long = submission_message("recipe", [f"stage {i} " + "x" * 40 for i in range(20)], "abcdef0")
    assert len(long) <= submit_record.MAX_MESSAGE_LEN
    assert long.startswith("planet-pipeline recipe: stage 0") and long.endswith("... @ abcdef0")
    assert len(submission_message("r" * 500, [], "abc")) <= submit_record.MAX_MESSAGE_LEN


def test_git_commit_never_raises(monkeypatch, tmp_path):
    def fake_run(args, **kw):
        assert args[:2] == ["git", "-C"] and args[3:] == ["rev-parse", "--short", "HEAD"]
        return subprocess.CompletedProcess(args, 0, stdout="3f2a1bc\n", stderr="")

    monkeypatch.setattr(submit_record.subprocess, "run", fake_run)
    assert git_commit(tmp_path) == "3f2a1bc"
    monkeypatch.setattr(
        submit_record.subprocess,
        "run",
        lambda args, **kw: subprocess.CompletedProcess(args, 128, "", "fatal: not a git repo"),
    )
    assert git_commit(tmp_path) is None

    def missing(args, **kw):
        raise FileNotFoundError("git")

    monkeypatch.setattr(submit_record.subprocess, "run", missing)
    assert git_commit(tmp_path) is None

    def slow(args, **kw):
        raise subprocess.TimeoutExpired(args, 10)

    monkeypatch.setattr(submit_record.subprocess, "run", slow)
    assert git_commit(tmp_path) is None


def test_record_path_is_keyed_on_content_competition_and_host(tmp_path):
    sha = "ab" * 32
    local = record_path(tmp_path, sha, "planet", "http://127.0.0.1:8765")
    assert local == tmp_path / f"planet-{sha[:16]}-127.0.0.1.submitted.json"
    assert record_path(tmp_path, sha, "planet", "http://127.0.0.1:9999/") == local  # new port
    assert record_path(tmp_path, sha, "planet").name.endswith("-www.kaggle.com.submitted.json")
    assert record_path(tmp_path, sha, "planet", "http://u:secret@h:1").name.endswith(
        "-h.submitted.json"
    )
    with pytest.raises(ValueError, match="sha256"):
        record_path(tmp_path, "../x", "planet")


# ----- submit_and_wait against the local server --------------------------------------------------


def test_success_records_the_ref_then_reuses_it(
    kaggle_server, kaggle_root, creds, planet_csv, kaggle_key
):
    slug = kaggle_root.planet
    public, private = expected_scores(kaggle_root, planet_csv)
    announced: list[bool] = []
    kw = dict(endpoint=kaggle_server.url, credentials=creds, timeout_s=10, interval_s=0.05)
    res = submit_and_wait(slug, planet_csv, MESSAGE, on_submit=lambda: announced.append(True), **kw)
    assert res["status"] == "complete" and isinstance(res["public_score"], float)
    assert res["public_score"] == pytest.approx(public, abs=5e-6)
    assert res["private_score"] == pytest.approx(private, abs=5e-6)
    assert res["submitted"] and not res["resubmitted"] and announced == [True]
    assert res["message"] == MESSAGE and res["csv_sha256"] == sha256_file(planet_csv)
    json.dumps(res)
    [sub] = kaggle_server.submissions(slug)
    assert sub["ref"] == res["ref"] and sub["description"] == MESSAGE

    path = Path(res["record"])
    assert path.parent == planet_csv.parent  # default: beside the CSV
    assert path == record_path(planet_csv.parent, res["csv_sha256"], slug, kaggle_server.url)
    rec = read_record(path)
    assert rec["ref"] == res["ref"] and rec["status"] == "complete"
    assert rec["endpoint"] == "127.0.0.1" and rec["slug"] == slug and rec["scored_at"]
    assert rec["public_score"] == res["public_score"]

    # the same file again (even under another name): polled, not submitted again
    copy = planet_csv.with_name("copy.csv")
    copy.write_bytes(planet_csv.read_bytes())
    again = submit_and_wait(slug, copy, MESSAGE, on_submit=lambda: announced.append(True), **kw)
    assert not again["submitted"] and again["ref"] == res["ref"] and announced == [True]
    assert again["public_score"] == res["public_score"] and created(kaggle_server) == 1

    # force_new: a second submission, deliberately; the record names the new one
    forced = submit_and_wait(slug, planet_csv, MESSAGE, force_new=True, **kw)
    assert forced["submitted"] and forced["resubmitted"] and forced["ref"] != res["ref"]
    assert created(kaggle_server) == 2
    rec = read_record(path)
    assert rec["ref"] == forced["ref"] and rec["previous_refs"] == [res["ref"]]
    no_key_in(kaggle_key, path.read_text(), json.dumps(res), json.dumps(forced))


def test_429_on_submit_then_success_submits_once(kaggle_server, kaggle_root, creds, planet_csv):
    slug = kaggle_root.planet
    kaggle_server.faults.rate_limit_next(path=CREATED, retry_after=3)
    kw = dict(endpoint=kaggle_server.url, credentials=creds, timeout_s=10, interval_s=0.05)
    with pytest.raises(KaggleTransientError) as info:
        submit_and_wait(slug, planet_csv, MESSAGE, **kw)
    assert info.value.status == 429 and info.value.retry_after == 3
    assert kaggle.is_transient(info.value)
    assert not list(planet_csv.parent.glob("*.submitted.json"))  # nothing was submitted
    res = submit_and_wait(slug, planet_csv, MESSAGE, **kw)
    assert res["status"] == "complete" and res["submitted"]
    assert created(kaggle_server) == 1 and len(kaggle_server.submissions(slug)) == 1


def test_failure_while_polling_keeps_the_ref_and_never_submits_twice(
    kaggle_server, kaggle_root, creds, planet_csv, kaggle_key
):
    slug = kaggle_root.planet
    kaggle_server.faults.fail_next(
        status=500, path="ListSubmissions", message=f"db down for key {kaggle_key}"
    )
    kw = dict(
        endpoint=kaggle_server.url, credentials=creds, timeout_s=10, interval_s=0.05, run_id="r1"
    )
    with pytest.raises(KaggleTransientError) as info:
        submit_and_wait(slug, planet_csv, MESSAGE, **kw)
    path = next(planet_csv.parent.glob("*.submitted.json"))
    rec = read_record(path)
    assert rec["ref"] and rec["status"] == "pending" and "HTTP 500" in rec["last_error"]
    no_key_in(kaggle_key, info.value, path.read_text())

    res = submit_and_wait(slug, planet_csv, MESSAGE, **kw)  # the retry: same attempt id
    assert res["status"] == "complete" and res["ref"] == rec["ref"] and res["submitted"]
    assert created(kaggle_server) == 1
    other = submit_and_wait(slug, planet_csv, MESSAGE, **{**kw, "run_id": "r2"})
    assert not other["submitted"] and created(kaggle_server) == 1


def test_still_pending_at_the_timeout_is_transient_and_polled_later(
    kaggle_root, kaggle_user, kaggle_key, creds, planet_csv
):
    from planet.kaggle_local import LocalKaggleServer

    slug = kaggle_root.planet
    with LocalKaggleServer(
        kaggle_root.root, credentials={kaggle_user: kaggle_key}, grading_delay_s=1.0
    ) as srv:
        kw = dict(endpoint=srv.url, credentials=creds, interval_s=0.05)
        with pytest.raises(KaggleTransientError, match="still pending"):
            submit_and_wait(slug, planet_csv, MESSAGE, timeout_s=0.1, **kw)
        res = submit_and_wait(slug, planet_csv, MESSAGE, timeout_s=10, **kw)
        assert res["status"] == "complete" and not res["submitted"]
        assert srv.count(CREATED, status=200) == 1


def test_rules_not_accepted_is_a_clear_error_and_records_nothing(
    kaggle_server, kaggle_root, creds, planet_csv, kaggle_key
):
    slug = kaggle_root.planet
    kaggle_server.decline_rules(slug)
    with pytest.raises(KaggleRulesError) as info:
        submit_and_wait(slug, planet_csv, MESSAGE, endpoint=kaggle_server.url, credentials=creds)
    assert f"https://www.kaggle.com/c/{slug}/rules" in str(info.value)
    assert not kaggle.is_transient(info.value) and info.value.status == 403
    assert not list(planet_csv.parent.glob("*.submitted.json"))
    assert created(kaggle_server) == 0
    no_key_in(kaggle_key, info.value, repr(info.value))


def test_unscorable_file_is_recorded_and_raises_a_scoring_error(
    kaggle_server, kaggle_root, creds, tmp_path
):
    slug = kaggle_root.planet
    rows = kaggle_root.solutions[slug][:-1]  # one image missing
    bad = write_submission(tmp_path / "bad.csv", rows)
    res = submit_and_wait(
        slug, bad, MESSAGE, endpoint=kaggle_server.url, credentials=creds, interval_s=0.05
    )
    assert res["status"] == "error" and "missing 1 image_name" in res["error"]
    with pytest.raises(SubmissionScoringError, match="could not score") as info:
        submit_record.raise_for_scoring(res)
    assert not kaggle.is_transient(info.value)


def test_stale_record_is_an_error_not_a_second_submission(
    kaggle_server, kaggle_root, creds, planet_csv
):
    slug = kaggle_root.planet
    sha = sha256_file(planet_csv)
    path = record_path(planet_csv.parent, sha, slug, kaggle_server.url)
    submit_record.write_record(
        path,
        {
            "slug": slug,
            "file": planet_csv.name,
            "csv_sha256": sha,
            "message": MESSAGE,
            "endpoint": "127.0.0.1",
            "ref": 987654,
            "status": "pending",
        },
    )
    kw = dict(endpoint=kaggle_server.url, credentials=creds, interval_s=0.05)
    with pytest.raises(StaleRecordError, match="force_new"):
        submit_and_wait(slug, planet_csv, MESSAGE, **kw)
    assert created(kaggle_server) == 0
    res = submit_and_wait(slug, planet_csv, MESSAGE, force_new=True, **kw)
    assert res["status"] == "complete" and read_record(path)["previous_refs"] == [987654]


# ----- the Prefect task -------------------------------------------------------------------------


def _artifact_markdown(key: str) -> str:
    """The newest artifact under this key."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        FlowRunFilter,
        TaskRunFilter,
    )
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            flow_run_filter=FlowRunFilter(),
            task_run_filter=TaskRunFilter(),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
            offset=0,
        )
    assert found, f"no artifact {key!r}"
    return str(found[0].data)


def in_flow(task_fn, *args, **kwargs):
    """Run the task inside a flow run, as the pipeline's flows do."""
    from prefect import flow

    @flow(name="submit-test")
    def wrapper():
        return task_fn(*args, **kwargs)

    return wrapper()


@pytest.mark.slow
def test_task_submits_records_and_reports(
    prefect_api, env_creds, kaggle_server, kaggle_root, planet_csv, kaggle_key
):
    from tasks.progress import artifact_key
    from tasks.submit import submit_predictions

    slug = kaggle_root.planet
    public, _ = expected_scores(kaggle_root, planet_csv)
    # the first attempt: rate-limited (Retry-After 1 s) while creating the submission
    kaggle_server.faults.rate_limit_next(path=CREATED, retry_after=1)
    fast = submit_predictions.with_options(retry_delay_seconds=0)
    res = in_flow(fast, slug, str(planet_csv), MESSAGE, endpoint=kaggle_server.url, interval_s=0.05)
    assert res["status"] == "complete" and res["submitted"] and not res["resubmitted"]
    assert res["public_score"] == pytest.approx(public, abs=5e-6)
    assert kaggle_server.count(CREATED) == 2 and created(kaggle_server) == 1
    assert read_record(res["record"])["ref"] == res["ref"]
    md = _artifact_markdown(artifact_key(slug, "submission"))
    assert str(res["ref"]) in md and MESSAGE in md and "complete" in md
    assert f"{res['public_score']:.5f}" in md and "private score" in md
    no_key_in(kaggle_key, md, json.dumps(res), Path(res["record"]).read_text())

    again = in_flow(
        fast, slug, str(planet_csv), MESSAGE, endpoint=kaggle_server.url, interval_s=0.05
    )
    assert not again["submitted"] and again["ref"] == res["ref"] and created(kaggle_server) == 1


@pytest.mark.slow
def test_task_retry_after_a_polling_failure_does_not_submit_again(
    prefect_api, env_creds, kaggle_server, kaggle_root, planet_csv
):
    from tasks.submit import submit_predictions

    slug = kaggle_root.planet
    kaggle_server.faults.fail_next(2, status=503, path="ListSubmissions")
    fast = submit_predictions.with_options(retry_delay_seconds=0)
    res = in_flow(fast, slug, str(planet_csv), MESSAGE, endpoint=kaggle_server.url, interval_s=0.05)
    assert res["status"] == "complete" and isinstance(res["public_score"], float)
    assert res["submitted"]  # made by an earlier attempt of this same task run
    assert kaggle_server.count(CREATED) == 1 and len(kaggle_server.submissions(slug)) == 1
    assert kaggle_server.count("ListSubmissions", status=503) == 2


@pytest.mark.slow
def test_task_fails_at_once_when_the_rules_are_not_accepted(
    prefect_api, env_creds, kaggle_server, kaggle_root, planet_csv, kaggle_key
):
    from tasks.submit import submit_predictions

    slug = kaggle_root.planet
    kaggle_server.decline_rules(slug)
    fast = submit_predictions.with_options(retry_delay_seconds=0)
    with pytest.raises(KaggleRulesError) as info:
        in_flow(fast, slug, str(planet_csv), MESSAGE, endpoint=kaggle_server.url, interval_s=0.05)
    assert f"https://www.kaggle.com/c/{slug}/rules" in str(info.value)
    assert kaggle_server.count("StartSubmissionUpload") == 1  # no retry
    assert created(kaggle_server) == 0 and not list(planet_csv.parent.glob("*.submitted.json"))
    no_key_in(kaggle_key, info.value)


# ----- resubmitting after a scoring error -------------------------------------------------------


def test_planet_run_has_a_resubmit_flag():
    from flows import cli

    config = cli.parse_run_config(["--stages", "submit", "--submit", "--resubmit"])
    assert config.stages == ["submit"] and config.submit.submit and config.submit.resubmit
    assert not cli.parse_run_config(["--stages", "submit", "--submit"]).submit.resubmit


@pytest.mark.slow
def test_resubmit_after_the_servers_solution_was_fixed(
    prefect_api, env_creds, kaggle_server, kaggle_root, tmp_path
):
    """The issue's case: the server's solution is broken, the submission errors; after the
    solution is fixed a plain rerun only polls the errored submission, --resubmit scores."""
    from flows.config import SubmitConfig
    from flows.options import SubmitOptions
    from flows.submit import submit

    slug = kaggle_root.planet
    solution = kaggle_root.root / slug / "_private" / "solution.csv"
    good = solution.read_text()

    def config(resubmit: bool) -> SubmitConfig:
        options = SubmitOptions(submit=True, poll_interval_s=0.05, resubmit=resubmit)
        return SubmitConfig(
            competition=slug,
            data_dir=str(tmp_path / "data"),
            recipe="cpu-demo",
            kaggle_endpoint=kaggle_server.url,
            submit=options,
        )

    path = config(False).workspace.submission(config(False).run_name).path
    write_submission(path, kaggle_root.solutions[slug], tags=None)
    solution.write_text(good.replace("Public", "Hidden", 1))  # broken while serving
    with pytest.raises(SubmissionScoringError) as info:
        submit(config(False))
    assert str(solution) in str(info.value) and "--resubmit" in str(info.value)
    solution.write_text(good)  # fixed
    with _run_log() as lines, pytest.raises(SubmissionScoringError):
        submit(config(False))  # the same file: its errored submission is polled again
    assert created(kaggle_server) == 1
    assert not [line for line in lines if "submission" in line and "uses one" in line], lines
    with _run_log() as lines:
        result = submit(config(True))
    assert result["status"] == "complete" and result["resubmitted"]
    assert result["public_score"] == pytest.approx(1.0)
    assert created(kaggle_server) == 2
    assert [line for line in lines if "uses one of" in line]  # said when it really submits


@contextlib.contextmanager
def _run_log():
    """The flow and task run log lines written inside the block."""
    import logging

    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    handler = Keep(level=logging.DEBUG)
    loggers = [logging.getLogger(n) for n in ("prefect.flow_runs", "prefect.task_runs")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield lines
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
