"""`planet server` in use: the flow-run page of a pipeline run in headless Chromium, and
`prefect deploy` + a worker as the README shows. (Loopback binding and basic auth are in
tests/reliability/test_server_exposure.py.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.progress import artifact_key
from tests.servers import planet_server

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


TINY_RECIPE = {
    "name": "tiny-ui",
    "arch": "resnet18",
    "pretrained": False,
    "lr_find_iterations": 10,
    "stages": [
        {"size": 32, "frozen": False, "epochs": 1, "lr": "auto", "batch_size": 8},
        {"size": 64, "frozen": False, "epochs": 1, "lr": "1e-3", "batch_size": 8},
    ],
}
ARTIFACTS = ROOT / ".test-artifacts"


@pytest.fixture(scope="module")
def demo_then_server(tmp_path_factory):
    """A small `planet demo` run as a new user runs it (no PREFECT_API_URL, in its own folder),
    then `planet server` started afterwards on the home the demo kept its runs in. Yields the
    server's URL, the demo's stdout and its JSON summary."""
    import json

    root = tmp_path_factory.mktemp("demo-then-server")
    recipe = root / "tiny.json"
    recipe.write_text(json.dumps(TINY_RECIPE))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("planet")),
            "demo",
            "--workdir",
            "demo",
            "--recipe",
            str(recipe),
            "--train",
            "40",
            "--test",
            "8",
            "--additional",
            "4",
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    home = root / ".prefect"
    assert (home / "prefect.db").is_file()
    with planet_server(home) as url:
        yield url, done.stdout, summary


def test_the_demos_runs_are_in_the_ui_afterwards(demo_then_server):
    """`planet demo` without PREFECT_API_URL keeps its runs in ./.prefect, the home `planet
    server` opens by default; started there afterwards, the server has the demo's flow run and
    its artifacts, and the demo's last lines say how to open the run's page."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url, stdout, summary = demo_then_server
    run_id = summary["flow_run_id"]
    assert "planet server --home " in stdout and "/.prefect" in stdout
    assert f"http://127.0.0.1:4200/runs/flow-run/{run_id}" in stdout
    settings = temporary_settings(updates={PREFECT_API_URL: f"{url}/api"})
    with settings, get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )
    assert run.state.is_completed() and run.name.startswith("pipeline ")
    assert any(a.key and a.key.endswith("pipeline-summary") for a in artifacts), artifacts


@pytest.mark.browser
def test_the_demos_run_page_shows_its_stages_and_metrics_in_chromium(demo_then_server):
    """The page the demo's last lines point to, opened after the demo in `planet server`'s UI:
    the run Completed, its stage subflows, its artifacts and the metrics table."""
    playwright = pytest.importorskip("playwright.sync_api")
    chromium = _chromium()
    if chromium is None:
        pytest.skip("no Chromium on this machine (CI installs the distribution's package)")
    url, stdout, summary = demo_then_server
    printed = f"/runs/flow-run/{summary['flow_run_id']}"
    assert printed in stdout
    page_url = f"{url}{printed}"
    ARTIFACTS.mkdir(exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(page_url, wait_until="networkidle")
        page.get_by_text("Completed").first.wait_for(timeout=60_000)
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(ARTIFACTS / "flow-run.png"), full_page=True)
        page.get_by_text("Subflow Runs", exact=True).first.click()
        page.wait_for_load_state("networkidle")
        for stage in (
            "prepare",
            "resize",
            "train",
            "predict",
            "thresholds",
            "submission",
            "submit",
        ):
            page.get_by_text(f"{stage} ", exact=False).first.wait_for(timeout=60_000)
        page.screenshot(path=str(ARTIFACTS / "flow-run-subflows.png"), full_page=True)
        page.get_by_text("Artifacts", exact=True).first.click()
        page.wait_for_load_state("networkidle")
        page.get_by_text("pipeline-summary").first.wait_for(timeout=60_000)
        key = artifact_key(summary["competition"], "tiny-ui", "metrics")
        page.goto(f"{url}/artifacts/key/{key}", wait_until="networkidle")
        page.get_by_text("metrics per epoch").first.wait_for(timeout=60_000)
        page.screenshot(path=str(ARTIFACTS / "metrics-artifact.png"), full_page=True)
        browser.close()
    assert (ARTIFACTS / "flow-run.png").stat().st_size > 10_000


def test_deploy_all_worker_and_deployment_run_as_the_readme_shows(tmp_path):
    """prefect deploy --all (deployments/prefect.yaml), a process worker, then a deployment
    run of the train stage on a toy data set, watched to completion."""
    import json

    from flows.config import TrainConfig
    from planet.competitions import PLANET
    from planet.learn.stages import model_run
    from planet.workspace import Workspace
    from tests.toy import make_toy_planet

    data_dir = tmp_path / "data"
    make_toy_planet(data_dir, n=64, sizes=(32,))
    recipe = {
        "name": "deployed",
        "arch": "resnet18",
        "pretrained": False,
        "stages": [{"size": 32, "frozen": False, "epochs": 1, "lr": "1e-3", "batch_size": 8}],
    }
    prefect = str(Path(sys.executable).with_name("prefect"))
    with planet_server(tmp_path / "home") as url:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env |= {
            "PREFECT_API_URL": f"{url}/api",
            "PREFECT_HOME": str(tmp_path / "client"),
            "PLANET_PIPELINE_DIR": str(ROOT),
        }

        def prefect_cli(*args: str, timeout: int = 300) -> str:
            done = subprocess.run(
                [prefect, "--no-prompt", *args],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            assert done.returncode == 0, (args, done.stdout[-2000:], done.stderr[-2000:])
            return done.stdout

        prefect_cli("work-pool", "create", "planet-process", "--type", "process")
        out = prefect_cli("deploy", "--all", "--prefect-file", "deployments/prefect.yaml")
        for name in ("pipeline/pipeline", "train/train", "predict/predict", "submit/submit"):
            assert name in out, out[-2000:]
        worker = subprocess.Popen(
            [prefect, "worker", "start", "--pool", "planet-process"],
            cwd=tmp_path,
            env=env,
            stdout=(tmp_path / "worker.log").open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            config = {"competition": "planet", "data_dir": str(data_dir), "recipe": recipe}
            out = prefect_cli(
                "deployment",
                "run",
                "train/train",
                "-p",
                f"config={json.dumps(config)}",
                "--watch",
                "--watch-timeout",
                "400",
                timeout=450,
            )
            assert "Completed" in out, out[-2000:]
        finally:
            os.killpg(worker.pid, 15)
            worker.wait(timeout=60)
    trained = TrainConfig(competition="planet", data_dir=str(data_dir), recipe=recipe).recipe
    assert model_run(Workspace.of(data_dir, PLANET), trained).export.is_file()
