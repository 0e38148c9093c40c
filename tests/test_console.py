"""What `planet demo`/`planet run` print: the pipeline's own lines and every warning (the
libraries' INFO lines with --verbose only), sparse progress lines, live bars on a terminal."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from flows.console import OwnLines


def _record(name: str, level: int) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, "message", None, None)


def test_the_libraries_info_lines_stay_out_and_warnings_get_through():
    own = OwnLines()
    assert own.filter(_record("prefect.task_runs", logging.INFO))
    assert own.filter(_record("prefect.flow_runs", logging.INFO))
    assert not own.filter(_record("distributed.scheduler", logging.INFO))
    assert not own.filter(_record("distributed.http.proxy", logging.INFO))
    assert not own.filter(_record("prefect", logging.INFO))  # "Starting temporary server..."
    assert own.filter(_record("distributed.nanny", logging.WARNING))
    assert own.filter(_record("py.warnings", logging.WARNING))


def test_progress_lines_are_sparse_and_say_done_once(prefect_api, monkeypatch):
    import types

    from prefect import flow, task

    from tasks import progress

    times = iter([0.0, 1.0, 2.0, 6.0, 6.5, 7.0, 20.0, 21.0])
    clock = types.SimpleNamespace(monotonic=lambda: next(times))
    monkeypatch.setattr(progress, "time", clock)  # the module's clock only
    lines: list[str] = []

    @task
    def work() -> None:
        p = progress.Progress("crunch", unit="things")
        logger = p._logger
        monkeypatch.setattr(logger, "info", lambda msg, *args: lines.append(msg % args))
        p(1, 100)  # t=1: too soon
        p(50, 100)  # t=2: too soon, whatever the step
        p(51, 100)  # t=6: 5 s and 51 % since the start: a line
        p(52, 100)  # t=6.5: too soon
        p(99, 99)  # t=7: done: a line
        p(99, 99)  # t=20: done again: no second line
        p.done()

    @flow
    def runs_it() -> None:
        work()

    runs_it()
    assert lines == ["crunch: 51/100 things (51%)", "crunch: 99/99 things (100%)"]


@pytest.mark.slow
def test_a_demo_on_a_terminal_shows_live_bars_and_no_dask_chatter(tmp_path):
    """The demo under a pseudo-terminal: rich bars while stages run, the pipeline's own lines,
    none of distributed's INFO lines (and all of them with --verbose)."""
    import json
    import pty

    recipe = tmp_path / "tiny.json"
    recipe.write_text(
        json.dumps(
            {
                "name": "tiny-tty",
                "arch": "resnet18",
                "pretrained": False,
                "stages": [{"size": 32, "frozen": False, "epochs": 1, "lr": "1e-3"}],
            }
        )
    )
    args = ["demo", "--recipe", str(recipe), "--train", "24", "--test", "8", "--additional", "3"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DASK_"))}
    env["COLUMNS"] = "120"
    exe = str(Path(sys.executable).with_name("planet"))

    def run(workdir: str, *extra: str) -> str:
        cwd = tmp_path / workdir  # its own ./.prefect too, as a new user's
        cwd.mkdir()
        main, follower = pty.openpty()
        proc = subprocess.Popen(
            [exe, *args, "--workdir", "demo", *extra],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=follower,
        )
        os.close(follower)
        out = b""
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        assert proc.wait(timeout=600) == 0, out.decode(errors="replace")[-3000:]
        os.close(main)
        return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.decode(errors="replace"))  # no colours

    quiet = run("demo")
    assert "━" in quiet  # a rich bar was drawn
    assert "Task run 'resize train to 32px'" in quiet  # the pipeline's own lines
    assert "distributed." not in quiet, [x for x in quiet.splitlines() if "distributed." in x]
    loud = run("verbose", "--verbose")  # a fresh folder: the resize runs again
    assert "distributed.scheduler" in loud
