"""A user error is one line (what, where, what to do) and exit code 1 or 2, found before
anything starts and leaving nothing half-made; tracebacks only with --verbose or for bugs."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows import cli
from flows.user_errors import QuietExpectedErrors
from planet.kaggle import KaggleCredentialsError
from planet.learn.stages import StageError
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[1]
SLUG = "planet-understanding-the-amazon-from-space"


def _planet(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "KAGGLE_", "PLANET_", "DASK_"))
    }
    (cwd / "home").mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=cwd,
        env={**base, "HOME": str(cwd / "home"), "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def _one_line(result: subprocess.CompletedProcess[str], code: int, *parts: str) -> str:
    lines = result.stderr.splitlines()
    assert result.returncode == code, result.stderr[-3000:]
    assert len(lines) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


def _nothing_started(cwd: Path) -> None:
    """No Prefect home (no server, no run) and no data folder."""
    assert not (cwd / ".prefect").exists()
    assert not (cwd / "data").exists()


def test_missing_credentials_are_one_line_naming_where_they_were_looked_for(tmp_path):
    result = _planet(["run", "--stages", "prepare"], tmp_path)
    _one_line(
        result,
        1,
        "planet run: error: No Kaggle credentials found",
        "KAGGLE_USERNAME/KAGGLE_KEY",
        str(tmp_path / "home" / ".kaggle" / "kaggle.json"),
    )
    _nothing_started(tmp_path)


def test_cuda_without_cuda_is_one_line_before_any_model_folder(tmp_path):
    result = _planet(
        ["run", "--stages", "train", "--device", "cuda"], tmp_path, CUDA_VISIBLE_DEVICES=""
    )
    _one_line(result, 1, "--device cuda: CUDA is not available", "--device cpu")
    _nothing_started(tmp_path)


def test_a_stale_prefect_api_url_is_one_line(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/api"
    result = _planet(["run", "--stages", "train"], tmp_path, PREFECT_API_URL=url)
    _one_line(
        result,
        1,
        f"cannot reach the Prefect API at {url}",
        "start `planet server` or unset PREFECT_API_URL",
    )
    assert not (tmp_path / "data").exists()


def test_an_unreachable_dask_scheduler_is_one_line(tmp_path):
    address = f"tcp://127.0.0.1:{free_port()}"
    result = _planet(["run", "--stages", "resize", "--dask-address", address], tmp_path)
    _one_line(result, 1, f"--dask-address {address}: no Dask scheduler answers", "leave")
    _nothing_started(tmp_path)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["run", "--device", "gpu"],
            "--device: device 'gpu': use auto, cpu, cuda, cuda:<n> or mps",
        ),
        (["run", "--sizes", "0"], "--sizes: sizes must be 8..1024 pixels"),
        (["demo", "--folds", "0"], "--folds: Input should be greater than or equal to 1"),
    ],
)
def test_bad_settings_are_one_line_before_anything_starts(tmp_path, args, message):
    result = _planet([*args, "--workdir", "w"] if args[0] == "demo" else args, tmp_path)
    _one_line(result, 1, message)
    if args[0] == "demo":
        assert not (tmp_path / "w").exists()  # no synthetic competition, no data
    else:
        _nothing_started(tmp_path)


@pytest.mark.slow
def test_an_error_inside_a_run_is_one_line_not_a_traceback_per_flow(tmp_path):
    """The train stage without its sized shards: the flows fail with a StageError; the console
    shows the runs' own lines and the error once (the UI keeps the tracebacks)."""
    result = _planet(["run", "--stages", "train", "--device", "cpu"], tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "holds no complete" in line]
    assert len(errors) == 1 and errors[0].startswith("planet run: error:"), result.stderr


def test_verbose_shows_the_traceback_before_the_line(tmp_path):
    result = _planet(["run", "--stages", "prepare", "--verbose"], tmp_path)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "KaggleCredentialsError" in result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith("planet run: error: No Kaggle credentials found")


def test_a_bug_keeps_its_traceback(monkeypatch, tmp_path):
    from planet import synthetic

    def broken(*_args, **_kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(synthetic, "generate", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["synth", "planet", "--root", str(tmp_path)])


def _record(name: str, level: int, msg: str, exc: BaseException | None = None):
    exc_info = (type(exc), exc, None) if exc else None
    return logging.LogRecord(name, level, __file__, 1, msg, None, exc_info)


def test_the_console_drops_prefects_reports_of_expected_errors_only():
    quiet = QuietExpectedErrors()
    missing = KaggleCredentialsError("No Kaggle credentials found")
    reports = [
        _record("prefect.flow_runs", logging.ERROR, "Encountered exception", missing),
        _record(
            "prefect.task_runs",
            logging.ERROR,
            "Finished in state Failed('Task run encountered an exception KaggleCredentialsError: "
            "No Kaggle credentials found')",
        ),
        _record(
            "prefect.flow_runs",
            logging.INFO,
            "Finished in state Failed('Flow run encountered an exception: StageError: ...')",
        ),
        _record("prefect.flow_runs", logging.ERROR, "Encountered exception", StageError("no")),
    ]
    assert not any(quiet.filter(r) for r in reports)
    kept = [
        _record("prefect.flow_runs", logging.ERROR, "Encountered exception", RuntimeError("bug")),
        _record(
            "prefect.flow_runs",
            logging.INFO,
            "Finished in state Failed('Flow run encountered an exception: RuntimeError: bug')",
        ),
        _record("prefect.flow_runs", logging.INFO, "Beginning flow run 'pipeline'"),
        _record("prefect.flow_runs", logging.ERROR, "Crash detected! Execution was aborted"),
    ]
    assert all(quiet.filter(r) for r in kept)


def test_after_ctrl_c_the_console_drops_every_errors_traceback(monkeypatch):
    fallout = _record("prefect.task_runs", logging.ERROR, "Task run failed", RuntimeError("closed"))
    failed = _record(
        "prefect.task_runs",
        logging.ERROR,
        "Finished in state Failed('Task run encountered an exception ClosedClientError: ...')",
    )
    crashed = _record("prefect.flow_runs", logging.ERROR, "Crash detected! Execution was aborted")
    assert QuietExpectedErrors().filter(fallout) and QuietExpectedErrors().filter(failed)
    monkeypatch.setattr(QuietExpectedErrors, "interrupted", True)
    quiet = QuietExpectedErrors()
    assert not quiet.filter(fallout) and not quiet.filter(failed)
    assert quiet.filter(crashed)


@pytest.mark.parametrize(
    ("status", "message"),
    [(401, r"refused this client \(401\): set PREFECT_API_AUTH_STRING"), (404, "HTTP 404")],
)
def test_a_prefect_api_that_answers_but_not_as_one_is_one_line(status, message):
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from flows.local_api import PrefectApiUnreachable, check_api

    class Answer(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            self.send_response(status)
            self.end_headers()

        def log_message(self, *_args):
            pass

    with ThreadingHTTPServer(("127.0.0.1", 0), Answer) as httpd:
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{httpd.server_address[1]}/api"
        with pytest.raises(PrefectApiUnreachable, match=message) as error:
            check_api(url)
        httpd.shutdown()
    assert "\n" not in str(error.value) and url in str(error.value)


def test_missing_local_credentials_wait_for_the_secret_block_when_there_is_a_prefect_api(
    tmp_path, monkeypatch
):
    """Without machine-local credentials the preflight does not refuse a run that has a Prefect
    API to read the Secret block from; once the API is up the block is read, and a missing one
    is the one error naming every place looked in (the block included)."""
    from flows import preflight
    from tasks import credentials

    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "PLANET_KAGGLE_SECRET_BLOCK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "none"))
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "fresh-home"))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with pytest.raises(KaggleCredentialsError):  # no API, no database: no block to wait for
        preflight.check_credentials()
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    preflight.check_credentials()  # left to the check after the API is up
    block = {"value": '{"username": "someone", "key": "0123456789abcdef"}'}
    monkeypatch.setattr(credentials, "read_secret_block", lambda name: block["value"])
    preflight.check_credentials(api_ready=True)
    block["value"] = None
    with pytest.raises(KaggleCredentialsError, match="kaggle-credentials"):
        preflight.check_credentials(api_ready=True)
    monkeypatch.setenv("PLANET_KAGGLE_SECRET_BLOCK", "none")
    with pytest.raises(KaggleCredentialsError):
        preflight.check_credentials()
