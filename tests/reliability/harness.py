"""The reliability suite's harness: the whole pipeline in child processes that the tests kill
with SIGKILL and run again, against a local Kaggle server and a real Prefect server.

A run's child is `python -m tests.reliability.harness CONFIG.json`: it runs the pipeline flow
exactly as `planet run` does. The work it really did is read back from its work log
(`PLANET_WORK_LOG`, see tests/fault_hooks.py): one line per extracted shard, resized shard, trained
epoch, prediction part and Kaggle submission.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from planet.competitions import PLANET
from planet.fileio import read_json, sha256_file
from planet.learn.recipe import Recipe, TrainStage
from tests.fault_hooks import hook_env, read_work_log

ROOT = Path(__file__).resolve().parents[2]
SLUG = PLANET.slug
USER = "reliability-user"
SIZE = 32
# Small enough for a CI run, big enough that every stage has several units of work to kill in.
SYNTH = {"train": 120, "test": 40, "additional": 16, "seed": 11}
SHARD_SIZE = 16  # 8 train shards, 3 test, 1 test-additional
PART_SIZE = 8  # prediction parts: 3 valid, 5 test, 2 test-additional
RECIPE = Recipe(
    name="reliability",
    arch="resnet18",
    pretrained=False,
    stages=[TrainStage(size=SIZE, frozen=False, epochs=3, lr="auto", batch_size=16)],
    lr_find_iterations=10,
)
# A pipeline stage (PipelineConfig.stages) and the outputs it writes, relative to the
# competition folder; a case starting at a stage deletes these outputs of it and all later ones.
STAGE_OUTPUTS: dict[str, list[str]] = {
    "prepare": ["tables", "shards"],
    "resize": [f"shards/{SIZE}", "shards/split.parquet"],
    "train": ["models"],
    "predict": ["predictions"],
    "thresholds": [],
    "submission": ["submissions"],
    "submit": ["submissions/*.json"],
}
STAGES = list(STAGE_OUTPUTS)
TIMING_FIELDS = ("seconds", "images_per_s", "first_step_s")


@dataclass
class Services:
    """What every run talks to: the local Kaggle server, the Prefect server, the key."""

    root: Path
    kaggle_root: Path
    kaggle_url: str
    kaggle_key: str
    kaggle_config_dir: Path  # holds kaggle.json (mode 0644 on purpose: the warning case)
    prefect_url: str
    prefect_auth: str
    prefect_home: Path
    runs: list[Run] = field(default_factory=list)

    def submissions(self) -> int:
        """Submissions the local Kaggle server holds for the competition."""
        stored = self.kaggle_root / SLUG / "_private" / "submissions.json"
        return len(json.loads(stored.read_text())) if stored.is_file() else 0


@dataclass
class Run:
    """One child process: its exit code, output, the work it did and its summary."""

    name: str
    data_dir: Path
    returncode: int
    seconds: float
    output: Path
    work: list[str]
    summary: dict[str, Any] | None
    folder: Path  # config.json, output.log, work.log

    def tail(self, n: int = 4000) -> str:
        return self.output.read_text(errors="replace")[-n:]

    def units(self, kind: str) -> list[str]:
        """Work units of one kind: extract, resize, train, predict, submit."""
        return [u for u in self.work if u.split(" ", 1)[0] == kind]


def config_json(data_dir: Path, stages: list[str], kaggle_url: str) -> str:
    from flows.config import PipelineConfig

    return PipelineConfig(
        competition=SLUG,
        data_dir=str(data_dir),
        stages=stages,
        kaggle_endpoint=kaggle_url,
        shard_size=SHARD_SIZE,
        recipe=RECIPE,
        device="cpu",
        workers=1,
        part_size=PART_SIZE,
        submit=True,
        submit_timeout_s=120,
    ).model_dump_json()


def run_pipeline(
    services: Services,
    name: str,
    data_dir: Path,
    stages: list[str],
    *,
    fault: str | None = None,
    timeout: float = 600,
) -> Run:
    """Run the pipeline's `stages` on `data_dir` in a child process of its own session, crashed
    at `fault` (a tests/fault_hooks.py `point=action`) when given; the child's whole process group is
    gone afterwards."""
    folder = services.root / "runs" / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(config_json(data_dir, stages, services.kaggle_url))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "KAGGLE_"))}
    env |= {
        "PREFECT_API_URL": f"{services.prefect_url}/api",
        "PREFECT_API_AUTH_STRING": services.prefect_auth,
        "PREFECT_HOME": str(services.prefect_home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "KAGGLE_CONFIG_DIR": str(services.kaggle_config_dir),
        "PYTHONWARNINGS": "default",
    }
    env |= hook_env(PLANET_WORK_LOG=str(folder / "work.log"))
    if fault:
        env |= {"PLANET_FAULT": fault, "PLANET_FAULT_ONCE": str(folder / "fired")}
    output = folder / "output.log"
    t0 = time.perf_counter()
    with output.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.reliability.harness", str(folder / "config.json")],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            code = proc.wait(timeout=timeout)
        finally:
            _kill_group(proc.pid)  # Dask workers orphaned by a killed pipeline
    summary = None
    lines = output.read_text(errors="replace").strip().splitlines()
    if code == 0 and lines:
        summary = json.loads(lines[-1])
    seconds = time.perf_counter() - t0
    run = Run(
        name, data_dir, code, seconds, output, read_work_log(folder / "work.log"), summary, folder
    )
    services.runs.append(run)
    return run


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def copy_before(reference: Path, dest: Path, stage: str) -> Path:
    """A copy of the reference data directory without the outputs of `stage` and later ones."""
    shutil.copytree(reference, dest)
    comp = dest / SLUG
    for later in STAGES[STAGES.index(stage) :]:
        for pattern in STAGE_OUTPUTS[later]:
            for path in comp.glob(pattern):
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()
    return dest


def outputs(data_dir: Path) -> dict[str, Any]:
    """What a finished run produced, comparable between runs: the sha256 of every data file
    (shards, tables, predictions, submission) and each training stage's weights and history
    (without its timings)."""
    comp = data_dir / SLUG
    out: dict[str, Any] = {}
    for path in sorted(comp.rglob("*")):
        rel = path.relative_to(comp)
        if rel.parts[0] != "raw" and path.suffix in (".parquet", ".csv") and path.is_file():
            out[str(rel)] = sha256_file(path)
    for record in sorted(comp.glob("models/*/stage-*.json")):
        stage = read_json(record)
        out[str(record.relative_to(comp))] = {
            "sha256": stage["sha256"],
            "history": [
                {k: v for k, v in row.items() if k not in TIMING_FIELDS} for row in stage["history"]
            ],
        }
    return out


def main(config_path: str) -> int:
    """The child: run the pipeline as `planet run` does and print its summary last."""
    from flows.console import cli_flow_settings, prefect_defaults

    prefect_defaults()
    from flows.config import PipelineConfig
    from flows.pipeline import pipeline

    config = PipelineConfig.model_validate_json(Path(config_path).read_text())
    with cli_flow_settings("run"):
        summary = pipeline(config)
    print(json.dumps(summary, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
