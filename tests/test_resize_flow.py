"""The resize flow under a real (temporary) Prefect API, on a Dask cluster reached by address."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flows.config import PrepareConfig, ResizeConfig
from planet import synthetic
from planet.competitions import PLANET
from planet.store import split
from planet.store.labels import load_labels
from planet.store.sized import read_sized
from planet.workspace import Workspace

pytestmark = pytest.mark.slow

SIZES = {"train": 30, "test": 12, "additional": 5}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, prefect_api):
    """A tiny synthetic Planet, fetched from the local server and extracted."""
    from flows.prepare import prepare
    from planet.kaggle_local import LocalKaggleServer

    root = tmp_path_factory.mktemp("kaggle")
    synthetic.generate("planet", root, seed=5, **SIZES)
    data_dir = tmp_path_factory.mktemp("data")
    with (
        pytest.MonkeyPatch.context() as mp,
        LocalKaggleServer(root, credentials={"resize-user": "rk-" + "1" * 24}) as server,
    ):
        mp.setenv("KAGGLE_USERNAME", "resize-user")
        mp.setenv("KAGGLE_KEY", "rk-" + "1" * 24)
        prepare(
            PrepareConfig(
                competition="planet",
                data_dir=str(data_dir),
                kaggle_endpoint=server.url,
                shard_size=16,
            )
        )
    return data_dir


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as c:
        yield c


def _task_states(flow_state) -> dict[str, str]:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    # Task run states reach the server as events, a moment after the flow returns: wait for
    # every run to have one (under load one was once read without a state).
    deadline = time.monotonic() + 30
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(
                    id=FlowRunFilterId(any_=[flow_state.state_details.flow_run_id])
                ),
                sort=TaskRunSort.EXPECTED_START_TIME_ASC,
                limit=200,
            )
            if all(r.state is not None for r in runs) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    return {r.name: r.state.name for r in runs}


def test_resize_flow_on_a_cluster_by_address(prepared, cluster):
    from flows.resize import resize

    config = ResizeConfig(
        competition="planet",
        data_dir=str(prepared),
        sizes=[32, 64],
        dask_address=cluster.scheduler_address,
        valid_pct=0.2,
    )
    state = resize(config, return_state=True)
    summary = state.result()
    dirs = Workspace.of(prepared, PLANET.slug)

    # every split at every size, counts as generated
    expected = {
        "train": SIZES["train"],
        "test": SIZES["test"],
        "test-additional": SIZES["additional"],
    }
    for size in ("32", "64"):
        assert {k: v["count"] for k, v in summary["sized"][size].items()} == expected
    sized = read_sized(dirs.sized(64, "train").folder)
    assert sized.pixels.shape == (SIZES["train"], 64, 64, 3)

    # labels travel with names: compare with train_v2.csv
    table = load_labels(PLANET, dirs.tables_dir, sized.names).take(sized.names)
    assert np.array_equal(sized.labels, table.values)
    assert read_sized(dirs.sized(32, "test").folder).labels is None

    # the stored split is fast.ai's over the CSV order
    stored = split.read_split(dirs.root / "shards" / "split.parquet")
    assert len(stored.valid_names) == int(0.2 * SIZES["train"])
    assert summary["split"]["valid"] == len(stored.valid_names)

    # a picture of a batch, shown in the UI
    png = Image.open(summary["batch_png"])
    assert png.format == "PNG" and png.size[0] > 4 * 32
    states = _task_states(state)
    assert states["show batch at 32px"] == "Completed"
    assert [v for k, v in states.items() if k.startswith("resize ")] == ["Completed"] * 6

    # rerun: all Cached, no cluster needed; delete one output: only it runs again
    again = resize(config, return_state=True)
    assert again.result()["sized"] == summary["sized"]
    states = _task_states(again)
    assert {v for k, v in states.items() if k.startswith(("resize ", "validation"))} == {"Cached"}
    shutil.rmtree(dirs.sized(64, "test").folder)
    third = resize(config, return_state=True)
    states = _task_states(third)
    assert states["resize test to 64px"] == "Completed"
    assert states["resize train to 64px"] == "Cached"
    assert third.result()["sized"]["64"]["test"]["count"] == SIZES["test"]


def test_resize_runs_on_a_separate_scheduler_and_worker_processes(prepared, tmp_path):
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    from distributed import Client

    from flows.resize import resize

    def _executed(dask_worker) -> int:  # nested: pickled by value for the workers
        """Tasks this worker ran (transitions into `executing` in its state log)."""
        return sum(1 for e in dask_worker.state.log if len(e) > 2 and e[2] == "executing")

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dask = str(Path(sys.executable).with_name("dask"))
    address = f"tcp://127.0.0.1:{port}"
    procs = [
        subprocess.Popen(
            [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    ]
    try:
        time.sleep(2)
        for _ in range(2):
            procs.append(
                subprocess.Popen(
                    [dask, "worker", address, "--nthreads", "1", "--no-dashboard", "--no-nanny"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=60)
            pids = client.run(os.getpid)
            assert len(pids) == 2 and os.getpid() not in pids.values()
            before = sum(client.run(_executed).values())
            summary = resize(
                ResizeConfig(
                    competition="planet",
                    data_dir=str(prepared),
                    sizes=[48],
                    dask_address=address,
                )
            )
            assert {k: v["count"] for k, v in summary["sized"]["48"].items()} == {
                "train": SIZES["train"],
                "test": SIZES["test"],
                "test-additional": SIZES["additional"],
            }
            shards_made = sum(v["shards"] for v in summary["sized"]["48"].values())
            ran = sum(client.run(_executed).values()) - before
            assert ran >= shards_made  # the external workers resized every shard
    finally:
        for p in reversed(procs):
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=30)
