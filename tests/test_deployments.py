"""deployments/prefect.yaml points at real flows with parameters those flows accept."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml
from prefect import Flow
from prefect.utilities.callables import parameter_schema

ROOT = Path(__file__).resolve().parents[1]
DEPLOYMENTS_YAML = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())[
    "deployments"
]


def _load(entrypoint: str) -> Flow:
    path, name = entrypoint.split(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    return getattr(module, name)


@pytest.mark.parametrize("deployment", DEPLOYMENTS_YAML, ids=lambda d: d["name"])
def test_deployment_entrypoint_and_parameters(deployment):
    flow = _load(deployment["entrypoint"])
    assert isinstance(flow, Flow)
    assert (ROOT / deployment["entrypoint"].split(":")[0]).is_file()
    flow.validate_parameters(deployment.get("parameters", {}))  # raises on a bad config
    schema = parameter_schema(flow).model_dump()
    config_ref = str(schema["properties"]["config"])
    model = next(name for name in schema["definitions"] if name in config_ref)
    assert model.endswith("Config")  # the UI renders the typed form
    assert "competition" in str(schema["definitions"][model]["properties"])


def test_serve_entry_point_builds_one_deployment_per_stage():
    from flows.serve import served_deployments

    deployments = served_deployments(cron="0 2 * * 6")
    names = {d.name for d in deployments}
    assert names == {
        "pipeline-served",
        "prepare-served",
        "fetch-served",
        "extract-served",
        "resize-served",
        "train-served",
        "predict-served",
        "thresholds-served",
        "submission-served",
        "submit-served",
        "predict-images-served",
    }
    pipeline = next(d for d in deployments if d.name == "pipeline-served")
    assert pipeline.schedules and pipeline.schedules[0].schedule.cron == "0 2 * * 6"
    assert pipeline.flow_name == "pipeline" and pipeline.entrypoint.endswith("pipeline.py:pipeline")


def test_prefect_yaml_is_written_from_the_one_deployment_list():
    from flows.deployments import DEPLOYMENTS, PREFECT_YAML, prefect_yaml

    assert PREFECT_YAML.read_text() == prefect_yaml(), "run `python -m flows.deployments`"
    assert [d["name"] for d in DEPLOYMENTS_YAML] == [d.name for d in DEPLOYMENTS]
    every_stage = {"prepare", "fetch", "extract", "resize", "train", "predict", "thresholds"}
    others = {"submission", "submit", "pipeline", "predict-images"}
    assert every_stage | others == {d.name for d in DEPLOYMENTS}
