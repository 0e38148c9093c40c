"""Training an ensemble's members: each its own run of the train flow.

    no work pool (the default)   here, one after another, each a subflow of the pipeline
    a work pool                  each member a run of the train deployment (`run_deployment`):
                                 whichever worker of the pool is free takes it (one worker per
                                 GPU, `prefect worker start --limit 1` with its own
                                 CUDA_VISIBLE_DEVICES); the parent waits for all, then goes on

A member that fails fails the stage, naming it; rerun the pipeline and the finished members come
back Cached while the failed one resumes from its last checkpointed epoch.
"""

from __future__ import annotations

import time
from typing import Any

from prefect.artifacts import create_table_artifact
from prefect.logging import get_run_logger

from flows.config import PipelineConfig, TrainConfig
from flows.train import train
from planet.fileio import read_json
from planet.infer.decision import decision_for
from planet.learn import stages
from planet.learn.members import Member
from planet.workspace import Workspace
from tasks.progress import artifact_key

POLL_S = 2.0
HERE = "this process"


def _records(ws: Workspace, member: Member) -> list[dict[str, Any]]:
    run = stages.model_run(ws, member.recipe, member.fold)
    return [read_json(run.stage_record(i)) for i in range(len(member.recipe.stages))]


def member_summary(ws: Workspace, member: Member) -> dict[str, Any]:
    """What the members table shows of a trained member: its last validation metric."""
    metric = decision_for(ws.competition).epoch_metric
    return {**member.describe(), "valid_metric": _records(ws, member)[-1]["history"][-1][metric]}


def train_summary(ws: Workspace, member: Member) -> dict[str, Any]:
    """A trained member's summary as the train flow returns it, from its records on disk."""
    run = stages.model_run(ws, member.recipe, member.fold)
    return {
        "run": run.name,
        "bundle": {"bundle": ws.relative(run.export)},
        "epoch_metric": decision_for(ws.competition).epoch_metric,
        "stages": [
            {"stage": rec["stage"], "epochs": stages.history_table(rec["history"])}
            for rec in _records(ws, member)
        ],
    }


def _train_here(base: TrainConfig, members: list[Member]) -> tuple[list[dict], list[str]]:
    summaries = [train(base.for_member(m)) for m in members]
    return summaries, [HERE] * len(members)


def _train_on_pool(config: PipelineConfig, base: TrainConfig, members: list[Member]) -> list[str]:
    """Start every member as a deployment run, wait for all; the worker that ran each."""
    from prefect import get_client
    from prefect.deployments import run_deployment

    logger = get_run_logger()
    options = config.ensemble
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(options.train_deployment)
        if deployment.work_pool_name != options.work_pool:
            raise ValueError(
                f"deployment {options.train_deployment} runs on work pool "
                f"{deployment.work_pool_name!r}, not {options.work_pool!r}: deploy it there "
                "(deployments/prefect.yaml) or set work_pool to its pool"
            )
    here = base.model_copy(update={"data_dir": str(base.data_path)})  # workers run elsewhere
    runs = [
        run_deployment(
            name=options.train_deployment,
            parameters={"config": here.for_member(m).model_dump(mode="json")},
            flow_run_name=f"train {config.competition} {m.run_name}",
            timeout=0,
        )
        for m in members
    ]
    logger.info("%d members sent to work pool %s", len(runs), options.work_pool)
    with get_client(sync_client=True) as client:
        while True:
            states = [client.read_flow_run(r.id) for r in runs]
            if all(s.state is not None and s.state.is_final() for s in states):
                break
            time.sleep(POLL_S)
    failed = [
        f"{m.run_name} ({s.state.name})"
        for m, s in zip(members, states, strict=True)
        if not s.state.is_completed()
    ]
    if failed:
        raise RuntimeError(
            f"{len(failed)} of {len(members)} members did not complete: {', '.join(failed)}; "
            "rerun the pipeline (finished members come back Cached)"
        )
    return [(s.labels or {}).get("prefect.worker.name", "?") for s in states]


def train_members(config: PipelineConfig) -> dict[str, Any]:
    """Train every member (see the module doc); the first member's train summary and the
    members table (also an artifact)."""
    ws = config.workspace
    base = config.for_stage(TrainConfig)
    members = config.members()
    if config.ensemble.work_pool:
        workers = _train_on_pool(config, base, members)
        first = train_summary(ws, members[0])
    else:
        summaries, workers = _train_here(base, members)
        first = summaries[0]
    table = [
        {**member_summary(ws, m), "state": "Completed", "worker": w}
        for m, w in zip(members, workers, strict=True)
    ]
    create_table_artifact(
        key=artifact_key(ws.slug, config.run_name, "members"),
        table=table,
        description=f"{len(members)} members of {config.run_name}: fold, recipe, seed, "
        "validation metric of their last epoch, who trained them",
    )
    return {"first": first, "members": table}
