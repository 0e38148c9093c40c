"""The one list of the pipeline's deployments: the whole pipeline and every stage flow.

`deployments/prefect.yaml` (for `prefect deploy --all` and a process work pool, plus the failure
automation of flows/automations.py under `automations:`) is written from this list
(`python -m flows.deployments` rewrites it; tests/test_deployments.py checks they agree), and
`python -m flows.serve` serves the same flows without a worker.
"""

from __future__ import annotations

import copy
import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from flows.automations import failure_automation

ROOT = Path(__file__).resolve().parents[1]
PREFECT_YAML = ROOT / "deployments" / "prefect.yaml"
WORK_POOL = "planet-process"
DEFAULT_PARAMETERS = {
    "competition": "planet-understanding-the-amazon-from-space",
    "data_dir": "data",
}
HEADER = """\
# Prefect deployments for planet-pipeline. Written by `python -m flows.deployments` from the list
# in flows/deployments.py: edit that list, not this file.
#   prefect work-pool create planet-process --type process
#   export PLANET_PIPELINE_DIR=$PWD                                  # the repository root
#   prefect deploy --all --prefect-file deployments/prefect.yaml     # from the repository root
#   prefect worker start --pool planet-process
#   prefect deployment run 'pipeline/pipeline' -p config='{"competition": "planet"}'
#   prefect deployment run 'train/train' -p config='{"competition": "planet"}'
# Kaggle credentials come from the worker's environment (KAGGLE_USERNAME/KAGGLE_KEY or
# ~/.kaggle/kaggle.json), else from the Prefect Secret block `kaggle-credentials` (kaggle.json's
# content; PLANET_KAGGLE_SECRET_BLOCK names another), never from deployment parameters.
# Failures: each flow posts to PLANET_WEBHOOK_URL (or the Secret block `planet-webhook-url`)
# when set; `automations:` below is the server-side twin, created by
#   PLANET_WEBHOOK_URL=https://... python -m flows.automations   # fills in the block's id
"""


@dataclass(frozen=True)
class Deployment:
    """A flow offered as a deployment (named after the flow)."""

    name: str
    entrypoint: str  # path/to/module.py:flow_function
    description: str
    cron: str | None = None  # a schedule, inactive until turned on in the UI
    parameters: tuple[tuple[str, Any], ...] = ()

    def load(self) -> Any:
        """The flow object."""
        path, attr = self.entrypoint.split(":")
        return getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), attr)

    def config(self) -> dict[str, Any]:
        return copy.deepcopy({**DEFAULT_PARAMETERS, **dict(self.parameters)})


OFF = (("submit", {"submit": False}),)
DEPLOYMENTS: tuple[Deployment, ...] = (
    Deployment(
        "pipeline",
        "flows/pipeline.py:pipeline",
        "The whole recipe, from the Kaggle download to a submission (submit is off).",
        cron="0 2 * * 6",
        parameters=OFF,
    ),
    Deployment(
        "prepare",
        "flows/prepare.py:prepare",
        "Fetch a competition's Kaggle files and extract them into parquet shards.",
        cron="0 3 * * 1",
    ),
    Deployment(
        "fetch",
        "flows/prepare.py:fetch",
        "Download (or resume) the competition's Kaggle files into raw/.",
    ),
    Deployment(
        "extract",
        "flows/prepare.py:extract",
        "Extract the downloaded archives into original-image parquet shards.",
    ),
    Deployment(
        "resize",
        "flows/resize.py:resize",
        "Pre-resize the original images to the recipe's sizes on Dask.",
    ),
    Deployment(
        "train",
        "flows/train.py:train",
        "Train the recipe's stages (LR finder, one-cycle, checkpoint every epoch).",
    ),
    Deployment(
        "predict",
        "flows/predict.py:predict",
        "TTA probabilities of the validation and test images with the trained model.",
    ),
    Deployment(
        "thresholds",
        "flows/predict.py:thresholds",
        "Fit the per-class thresholds (or the probability clip) on the validation predictions.",
    ),
    Deployment(
        "submission",
        "flows/predict.py:submission",
        "Write the submission CSV from the test predictions, checked against the sample.",
    ),
    Deployment(
        "submit",
        "flows/submit.py:submit",
        "Submit the submission file and record its score (spends a daily submission).",
        parameters=OFF,
    ),
    Deployment(
        "predict-images",
        "flows/predict_images.py:predict_new_images",
        "Predict the drop folder's new images (unseen content) into one CSV with the trained run.",
        cron="*/15 * * * *",  # every 15 minutes, once turned on
        parameters=(("source", "drop"),),
    ),
)


def prefect_yaml() -> str:
    """The text of deployments/prefect.yaml for DEPLOYMENTS."""
    document = {
        "name": "planet-pipeline",
        "prefect-version": "3.8.8",
        "pull": [
            {
                "prefect.deployments.steps.set_working_directory": {
                    "directory": "{{ $PLANET_PIPELINE_DIR }}"
                }
            }
        ],
        "deployments": [
            {
                "name": d.name,
                "description": d.description,
                "entrypoint": d.entrypoint,
                "work_pool": {"name": WORK_POOL},
                "parameters": {"config": d.config()},
                **(
                    {"schedules": [{"cron": d.cron, "timezone": "UTC", "active": False}]}
                    if d.cron
                    else {}
                ),
            }
            for d in DEPLOYMENTS
        ],
        "automations": [failure_automation(tuple(d.name for d in DEPLOYMENTS))],
    }
    return HEADER + yaml.safe_dump(document, sort_keys=False, width=100)


def prefect_automations(path: Path = PREFECT_YAML) -> list[dict[str, Any]]:
    """The `automations:` of a prefect.yaml (what `python -m flows.automations` creates)."""
    return yaml.safe_load(path.read_text()).get("automations", [])


def main() -> None:
    PREFECT_YAML.write_text(prefect_yaml())
    print(f"wrote {PREFECT_YAML}", file=sys.stderr)


if __name__ == "__main__":
    main()
