"""Ctrl-C and SIGTERM on real `planet` processes: a run without a Prefect server ends at once
with 130 and its runs marked Crashed; `planet server` and `planet kaggle-local` stop their
server and free the port.

A terminal's Ctrl-C is SIGINT to the whole foreground process group: the process is started in
a session of its own (with SIGINT at its default: a background process started from a shell
ignores it) and the test signals the group with os.killpg.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fault_hooks import hook_env, read_work_log
from tests.servers import free_port, get
from tests.toy import make_toy_planet

ROOT = Path(__file__).resolve().parents[1]
EXIT_WAIT_S = 60  # how long a stopped process may take (it took minutes before)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "PLANET_"))}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _planet(args: list[str], cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "flows.cli", *args],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_default_sigint,  # noqa: PLW1509
            start_new_session=True,
        )


def _wait_for(condition, proc: subprocess.Popen, log: Path, what: str, limit_s: float = 300):
    deadline = time.monotonic() + limit_s
    while not condition():
        assert proc.poll() is None, f"exited before {what}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {what} in {limit_s} s:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)


def _ctrl_c_once(proc: subprocess.Popen, ready: Callable[[], bool], log: Path, what: str) -> int:
    """Once `ready()`, SIGINT to `proc`'s group (what Ctrl-C in the terminal does); its exit
    code. It is killed if it has not exited within `EXIT_WAIT_S`."""
    try:
        _wait_for(ready, proc, log, what)
        os.killpg(proc.pid, signal.SIGINT)
        started = time.monotonic()
        code = proc.wait(timeout=EXIT_WAIT_S)
        print(f"exited {time.monotonic() - started:.1f} s after SIGINT")
        return code
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ")[-1].startswith("Z"))


@pytest.mark.slow
def test_ctrl_c_mid_training_without_a_server_exits_130_and_marks_the_runs(tmp_path):
    data = tmp_path / "data"
    make_toy_planet(data, n=64, sizes=(32,))
    recipe = tmp_path / "tiny.json"
    stage = {"size": 32, "frozen": False, "epochs": 2, "lr": "1e-3", "batch_size": 16}
    recipe.write_text(
        json.dumps({"name": "tiny", "arch": "resnet18", "pretrained": False, "stages": [stage]})
    )
    work_log = tmp_path / "work.log"
    env = _env(**hook_env(PLANET_FAULT="train-epoch-1=pause", PLANET_WORK_LOG=str(work_log)))
    log = tmp_path / "run.log"
    args = ["run", "--data-dir", str(data), "--stages", "train", "--recipe", str(recipe)]
    proc = _planet([*args, "--device", "cpu"], tmp_path, env, log)
    code = _ctrl_c_once(
        proc, lambda: any("epoch-1" in line for line in read_work_log(work_log)), log, "first epoch"
    )
    out = log.read_text()
    assert code == 130, out[-3000:]
    assert "interrupted: finished stages and checkpoints are kept under" in out
    assert "rerun the same command to resume" in out
    assert "Traceback" not in out and "Connection refused" not in out
    # the epoch's checkpoint is kept for the rerun to resume from
    assert [
        p for p in (data / "planet-understanding-the-amazon-from-space" / "models").rglob("*.pt")
    ]
    # the temporary server lived until the runs were marked, then stopped
    db = sqlite3.connect(tmp_path / ".prefect" / "prefect.db")
    states = dict(db.execute("select name, state_type from flow_run").fetchall())
    assert states and set(states.values()) == {"CRASHED"}, states
    tasks = {s for (s,) in db.execute("select state_type from task_run")}
    assert not tasks & {"RUNNING", "PENDING"}, tasks
    ports = re.findall(r"Stopping temporary server on http://127.0.0.1:(\d+)", out)
    assert ports and not _listening(int(ports[-1]))


def _processes_in(folder: Path) -> list[int]:
    """The processes whose working directory is `folder` (a run's Dask workers inherit it)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and Path(os.readlink(proc / "cwd")) == folder:
                found.append(int(proc.name))
        except OSError:
            continue
    return [pid for pid in found if _alive(pid)]


@pytest.mark.slow
def test_ctrl_c_mid_resize_without_a_server_exits_130_and_leaves_no_worker(tmp_path):
    from planet import synthetic
    from planet.kaggle_local import LocalKaggleServer

    kaggle_root = tmp_path / "kaggle"
    synthetic.generate("planet", kaggle_root, train=40, test=8, additional=3, seed=3)
    key = "interrupt-key-" + "7" * 16
    work_log = tmp_path / "work.log"
    point = "resize-32-train-part-00001"  # the second of three train shards
    env = _env(
        KAGGLE_USERNAME="tester",
        KAGGLE_KEY=key,
        **hook_env(PLANET_FAULT=f"{point}=pause", PLANET_WORK_LOG=str(work_log)),
    )
    cwd = tmp_path / "run"
    cwd.mkdir()
    log = tmp_path / "run.log"
    with LocalKaggleServer(kaggle_root, credentials={"tester": key}) as kaggle:
        args = ["run", "--data-dir", str(tmp_path / "data"), "--kaggle-endpoint", kaggle.url]
        args += ["--stages", "prepare", "resize", "--recipe", "cpu-demo", "--sizes", "32"]
        proc = _planet([*args, "--shard-size", "16"], cwd, env, log)
        code = _ctrl_c_once(
            proc,
            lambda: any("resize 32/train/part-00001" in x for x in read_work_log(work_log)),
            log,
            "the second train shard",
        )
    out = log.read_text()
    assert code == 130, out[-3000:]
    assert "interrupted: finished stages and checkpoints are kept under" in out
    assert "Traceback" not in out, out[-3000:]
    sized = tmp_path / "data" / "planet-understanding-the-amazon-from-space" / "shards" / "32"
    assert (sized / "train" / "part-00001.parquet").is_file()  # finished shards are kept
    db = sqlite3.connect(cwd / ".prefect" / "prefect.db")
    states = dict(db.execute("select name, state_type from flow_run").fetchall())
    assert not set(states.values()) - {"COMPLETED", "CRASHED"}, states  # none left Running
    assert states["pipeline planet-understanding-the-amazon-from-space cpu-demo"] == "CRASHED"
    deadline = time.monotonic() + 30
    while _processes_in(cwd) and time.monotonic() < deadline:
        time.sleep(0.5)  # the nannies' kill of a worker paused in its task takes a few seconds
    assert not _processes_in(cwd), "a Dask worker or the Prefect server outlived the run"


@pytest.mark.slow
def test_planet_server_stops_its_server_on_sigterm_and_ctrl_c(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}/api/health"
    args = ["server", "--home", str(tmp_path / "home"), "--port", str(port)]
    # SIGTERM to `planet server` alone (a service manager, `kill PID`) ...
    log = tmp_path / "first.log"
    first = _planet(args, tmp_path, _env(), log)
    try:
        _wait_for(lambda: get(url) == 200, first, log, "server")
        children = _children(first.pid)
        assert children, "planet server runs the Prefect server as a child"
        first.send_signal(signal.SIGTERM)
        code = first.wait(timeout=EXIT_WAIT_S)
        alive = [pid for pid in children if _alive(pid)]
        for pid in alive:  # what this test is about: don't leave it running
            os.kill(pid, signal.SIGKILL)
        assert not alive, "the Prefect server outlived planet server"
        assert code == 128 + signal.SIGTERM
        assert not _listening(port)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    # ... and the next start on the same port works; Ctrl-C (SIGINT to the group) stops it too
    log = tmp_path / "second.log"
    second = _planet(args, tmp_path, _env(), log)
    try:
        _wait_for(lambda: get(url) == 200, second, log, "server restarted on the same port")
        assert "already in use" not in log.read_text()
        children = _children(second.pid)
        os.killpg(second.pid, signal.SIGINT)
        assert second.wait(timeout=EXIT_WAIT_S) == 130
        assert not any(_alive(pid) for pid in children)
        assert not _listening(port)
    finally:
        if second.poll() is None:
            os.killpg(second.pid, signal.SIGKILL)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_planet_kaggle_local_frees_its_port_when_stopped(tmp_path, stop):
    port = free_port()
    (tmp_path / "root").mkdir()
    env = _env(KAGGLE_USERNAME="tester", KAGGLE_KEY="test-key-0123456789")
    log = tmp_path / "kaggle.log"
    args = ["kaggle-local", "--root", str(tmp_path / "root"), "--port", str(port)]
    proc = _planet(args, tmp_path, env, log)
    try:
        _wait_for(lambda: "stop with Ctrl-C" in log.read_text(), proc, log, "server", 120)
        assert _listening(port)
        os.killpg(proc.pid, stop)
        assert proc.wait(timeout=EXIT_WAIT_S) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "stopping the local Kaggle server" in log.read_text()
    assert not _listening(port)


def _child(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


READY = "import signal, sys, time\n{handler}\nprint('ready', flush=True)\ntime.sleep(60)\n"


@pytest.mark.parametrize(
    ("handler", "child_code"),
    [
        ("signal.signal(signal.SIGTERM, lambda *_: sys.exit(7))", 7),  # stops when told
        ("signal.signal(signal.SIGTERM, signal.SIG_IGN)", -signal.SIGKILL),  # killed after grace
    ],
)
def test_a_signal_is_passed_on_to_the_child_and_waited_for(handler, child_code):
    from flows.processes import wait_forwarding_signals

    child = _child(READY.format(handler=handler))
    assert child.stdout.readline().strip() == "ready"
    timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        assert wait_forwarding_signals(child, grace_s=1.0) == 128 + signal.SIGTERM
    finally:
        timer.cancel()
        if child.poll() is None:
            child.kill()
    assert child.returncode == child_code
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_child_in_its_own_session_dies_with_its_killed_parent():
    """What keeps a SIGKILLed `planet` from leaving its Prefect server holding a port."""
    starts_child = (
        "import subprocess, sys, time\n"
        "from flows.processes import own_session\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],"
        " preexec_fn=own_session)\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", starts_child], stdout=subprocess.PIPE, text=True, env=_env()
    )
    child = int(parent.stdout.readline())
    try:
        assert os.getpgid(child) != os.getpgid(parent.pid)  # out of reach of the group's Ctrl-C
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(child)
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)


def test_a_closing_workers_heartbeat_failure_is_dropped_and_only_then():
    """The shutdown race behind the traceback after a Ctrl-C mid-resize: distributed logs
    "Failed to communicate with scheduler during heartbeat" while the worker closes its own
    connection pool. Dropped then; kept while the worker runs (a real lost scheduler)."""
    import logging
    from types import SimpleNamespace

    from distributed.core import Status

    from planet.resize.cluster import _ClosingHeartbeatFilter

    worker = SimpleNamespace(status=Status.running)
    keep = _ClosingHeartbeatFilter(worker)
    record = logging.LogRecord(
        "distributed.worker",
        logging.ERROR,
        __file__,
        1,
        "Failed to communicate with scheduler during heartbeat.",
        None,
        None,
    )
    other = logging.LogRecord("distributed.worker", logging.ERROR, __file__, 1, "boom", None, None)
    assert keep.filter(record) and keep.filter(other)
    worker.status = Status.closing
    assert not keep.filter(record) and keep.filter(other)
