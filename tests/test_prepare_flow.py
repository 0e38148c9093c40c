"""The prepare flow under a real (temporary) Prefect API: content caching end to end."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from flows.config import PrepareConfig
from planet import synthetic
from planet.competitions import PLANET
from planet.store import shards
from planet.workspace import Workspace

pytestmark = pytest.mark.slow

SIZES = {"train": 40, "test": 20, "additional": 8}


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.fixture(scope="module")
def served_planet(tmp_path_factory, prefect_api, monkeypatch_module):
    from planet.kaggle_local import LocalKaggleServer

    root = tmp_path_factory.mktemp("kaggle")
    synthetic.generate("planet", root, seed=3, **SIZES)
    creds = {"flow-tester": "k-" + "9" * 30}
    monkeypatch_module.setenv("KAGGLE_USERNAME", "flow-tester")
    monkeypatch_module.setenv("KAGGLE_KEY", creds["flow-tester"])
    with LocalKaggleServer(root, credentials=creds) as server:
        yield root, server


def _run_prepare(config: PrepareConfig) -> tuple[dict, dict[str, str]]:
    """Run the prepare flow; return its summary and {task run name: state name} for the
    task runs of the flow run and of its subflow runs."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterParentTaskRunId,
    )
    from prefect.client.schemas.sorting import FlowRunSort, TaskRunSort

    from flows.prepare import prepare

    state = prepare(config, return_state=True)
    summary = state.result()
    states: dict[str, str] = {}
    with get_client(sync_client=True) as client:
        level = [state.state_details.flow_run_id]
        while level:  # walk the tree: task runs of these flow runs, then their subflow runs
            task_runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=level)),
                sort=TaskRunSort.EXPECTED_START_TIME_ASC,
                limit=200,
            )
            states.update({t.name: t.state.name for t in task_runs})
            children = (
                client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(
                        parent_task_run_id=FlowRunFilterParentTaskRunId(
                            any_=[t.id for t in task_runs]
                        )
                    ),
                    sort=FlowRunSort.START_TIME_ASC,
                    limit=200,
                )
                if task_runs
                else []
            )
            level = [r.id for r in children]
    return summary, states


def test_prepare_twice_is_cached_and_rebuilds_deleted_outputs(served_planet, tmp_path):
    root, server = served_planet
    data_dir = tmp_path / "data"
    config = PrepareConfig(
        competition="planet", data_dir=str(data_dir), kaggle_endpoint=server.url, shard_size=16
    )

    summary, states = _run_prepare(config)
    dirs = Workspace.of(data_dir, PLANET.slug)
    assert summary["images"]["train"]["count"] == SIZES["train"]
    assert summary["images"]["test"]["count"] == SIZES["test"]
    assert summary["images"]["test-additional"]["count"] == SIZES["additional"]
    names = [name for name, _ in shards.iter_images(dirs.original("train").folder)]
    assert sorted(names) == sorted(f"train_{i}" for i in range(SIZES["train"]))
    downloads = {k: v for k, v in states.items() if k.startswith("download ")}
    assert len(downloads) == len(PLANET.files)
    assert set(downloads.values()) == {"Completed"}

    # second run: every stage task is Cached and nothing is downloaded again
    blob_requests = server.count()
    summary2, states2 = _run_prepare(config)
    assert summary2 == summary
    stage_states = {k: v for k, v in states2.items() if k.startswith(("download ", "extract "))}
    assert len(stage_states) == 2 * len(PLANET.files), states2
    assert set(stage_states.values()) == {"Cached"}, stage_states
    assert server.count() - blob_requests <= 1  # only the listing call

    # delete one output of each stage: exactly those tasks run again
    (dirs.raw_dir / "train_v2.csv.zip").unlink()
    shutil.rmtree(dirs.original("test").folder)
    summary3, states3 = _run_prepare(config)
    assert summary3 == summary
    assert states3["download train_v2.csv.zip"] == "Completed"
    assert states3["extract test-jpg.tar.7z"] == "Completed"
    assert states3["download train-jpg.tar.7z"] == "Cached"
    assert states3["extract train-jpg.tar.7z"] == "Cached"
    assert states3["extract train_v2.csv.zip"] == "Cached"  # same content came back
    assert Path(summary3["images"]["test"]["dir"]).is_dir()

    # and once rebuilt, the next run is Cached again
    _, states4 = _run_prepare(config)
    assert states4["extract test-jpg.tar.7z"] == "Cached"
    assert states4["download train_v2.csv.zip"] == "Cached"


def _fetch_config(server, tmp_path, files):
    return PrepareConfig(
        competition="planet",
        data_dir=str(tmp_path / "data"),
        kaggle_endpoint=server.url,
        files=files,
    )


def test_fetch_task_retries_transient_errors(served_planet, tmp_path):
    from flows.prepare import fetch
    from planet import kaggle

    _, server = served_planet
    config = _fetch_config(server, tmp_path, ["train_v2.csv.zip"])
    server.faults.fail_next(1, status=503, path="DownloadDataFile")
    server.faults.rate_limit_next(1, retry_after=1, path="DownloadDataFile")
    records = fetch(config)
    raw = Workspace.of(config.data_path, PLANET.slug).raw_dir
    assert (
        records["train_v2.csv.zip"]["sha256"]
        == kaggle.read_manifest(raw)["train_v2.csv.zip"]["sha256"]
    )
    assert server.faults.pending == 0  # both faults were hit, then a retry succeeded


@pytest.mark.parametrize(
    "status, error, words",
    [
        (401, "KaggleAuthError", "credentials"),
        (403, "KaggleRulesError", "rules"),
    ],
)
def test_fetch_fails_fast_on_auth_and_rules(served_planet, tmp_path, status, error, words):
    from flows.prepare import fetch

    _, server = served_planet
    config = _fetch_config(server, tmp_path, ["train_v2.csv.zip"])
    server.faults.fail_next(5, status=status, path="DownloadDataFile")
    before = server.count("DownloadDataFile")
    state = fetch(config, return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception) as exc_info:
        state.result()
    assert type(exc_info.value).__name__ == error and words in str(exc_info.value)
    assert server.count("DownloadDataFile") - before == 1  # not retried
    server.faults.clear()


def test_extract_runs_alone_from_the_raw_manifest(served_planet, tmp_path):
    from flows.prepare import extract, fetch

    _, server = served_planet
    config = _fetch_config(server, tmp_path, ["test-jpg-additional.tar.7z", "train_v2.csv.zip"])
    fetch(config)
    result = extract(config)  # no `raw` given: read from raw/manifest.json
    assert result["images"]["test-additional"]["count"] == SIZES["additional"]
    assert result["tables"]["train_v2.csv.zip"]["rows"] == SIZES["train"]


def test_extract_alone_without_downloads_names_what_is_missing(served_planet, tmp_path):
    from flows.prepare import extract

    _, server = served_planet
    config = _fetch_config(server, tmp_path, ["train_v2.csv.zip"])
    state = extract(config, return_state=True)
    with pytest.raises(FileNotFoundError, match="train_v2.csv.zip.*fetch"):
        state.result()
