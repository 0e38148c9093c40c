"""`planet server`: a real Prefect server on loopback, with and without basic auth, and the
flow-run page of a pipeline run in headless Chromium."""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tasks.progress import artifact_key

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, auth: str | None = None, timeout: float = 5.0) -> int:
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return 0  # not listening (yet)


@contextlib.contextmanager
def planet_server(home: Path, auth: str | None = None):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    if auth:
        env["PREFECT_SERVER_API_AUTH_STRING"] = auth
    log = (home.parent / f"server-{port}.log").open("w")
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("planet")),
            "server",
            "--home",
            str(home),
            "--port",
            str(port),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while get(f"{url}/api/health") != 200:
            assert proc.poll() is None, (home.parent / f"server-{port}.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the server did not come up in 240 s"
            time.sleep(1)
        yield url
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
        log.close()


def _non_loopback_ip() -> str | None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))
            ip = s.getsockname()[0]
    except OSError:
        return None
    return None if ip.startswith("127.") else ip


def test_server_binds_loopback_keeps_its_database_home_and_enforces_auth(tmp_path):
    home = tmp_path / "home"
    with planet_server(home, auth="admin:s3cret-pw") as url:
        assert get(f"{url}/api/health") == 200  # Prefect lets health probes through
        assert get(f"{url}/api/admin/version") == 401  # no credentials
        assert get(f"{url}/api/admin/version", "admin:wrong") == 401
        assert get(f"{url}/api/admin/version", "admin:s3cret-pw") == 200
        assert (home / "prefect.db").is_file()  # the default SQLite database, under --home
        ip = _non_loopback_ip()
        if ip:
            port = int(url.rsplit(":", 1)[1])
            with pytest.raises(OSError), socket.create_connection((ip, port), timeout=3):
                pass
        # a client with the auth string runs a flow against it
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env |= {
            "PREFECT_API_URL": f"{url}/api",
            "PREFECT_API_AUTH_STRING": "admin:s3cret-pw",
            "PREFECT_HOME": str(tmp_path / "client-home"),
        }
        code = "from prefect import flow\n@flow\ndef hello():\n    return 42\nprint(hello())\n"
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0 and done.stdout.strip().endswith("42"), done.stderr[-2000:]
        env.pop("PREFECT_API_AUTH_STRING")
        refused = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
        )
        assert refused.returncode != 0


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


@pytest.mark.browser
def test_the_flow_run_page_shows_the_stages_state_and_metrics_in_chromium(tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    chromium = _chromium()
    if chromium is None:
        pytest.skip("no Chromium on this machine (CI installs the distribution's package)")
    import json

    recipe = tmp_path / "tiny.json"
    recipe.write_text(json.dumps(TINY_RECIPE))
    with planet_server(tmp_path / "home") as url:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env |= {"PREFECT_API_URL": f"{url}/api", "PREFECT_HOME": str(tmp_path / "client")}
        demo = subprocess.run(
            [
                str(Path(sys.executable).with_name("planet")),
                "demo",
                "--workdir",
                str(tmp_path / "demo"),
                "--recipe",
                str(recipe),
                "--train",
                "40",
                "--test",
                "8",
                "--additional",
                "4",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert demo.returncode == 0, demo.stderr[-3000:]
        summary = json.loads(demo.stdout.strip().splitlines()[-1])
        page_url = f"{url}/runs/flow-run/{summary['flow_run_id']}"
        assert f"flow run: {page_url}" in demo.stdout

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
    from planet.stages import models_dir
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
    assert (models_dir(data_dir, PLANET.slug, trained) / "export.pt").is_file()
