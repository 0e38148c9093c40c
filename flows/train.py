"""Training: the seed notebook's recipe, stage by stage.

    train = for each stage of the recipe (e.g. 128px frozen, 128px unfrozen, 256px frozen,
            256px unfrozen): [LR finder] -> fit_one_cycle from the previous stage's weights,
            checkpointed every epoch  ->  export the last stage for the predict stage

Each stage is one task, cached on its inputs' content: rerunning the flow skips finished
stages, and a stage that crashed resumes from its last epoch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.logging import get_run_logger

from flows.config import TrainConfig
from flows.notify import HOOKS
from planet.infer.decision import decision_for
from planet.learn import stages
from planet.learn.members import short_name
from tasks.progress import artifact_key
from tasks.train import export_run, fit_stage

DEFAULT_CONFIG = TrainConfig()


@contextlib.contextmanager
def _holding(limit: str | None) -> Iterator[None]:
    """One slot of the global concurrency limit `limit` (e.g. gpu) while the block runs."""
    if not limit:
        yield
        return
    from prefect.concurrency.sync import concurrency

    with concurrency(limit, occupy=1):
        yield


@flow(name="train", flow_run_name="train {config.competition} {config.member_label}", **HOOKS)
def train(config: TrainConfig = DEFAULT_CONFIG) -> dict[str, Any]:
    """Train every stage of one member's recipe (holding out its fold); returns the stage
    records and the exported bundle."""
    logger = get_run_logger()
    ws, recipe, fold = config.workspace, config.recipe, config.member.fold
    run = stages.model_run(ws, recipe, fold)
    logger.info("%s: %s", run.name, "; ".join(s.describe() for s in recipe.stages))
    records: list[dict[str, Any]] = []
    previous = None
    with _holding(config.compute.concurrency_limit):
        for index, stage in enumerate(recipe.stages):
            previous = fit_stage(
                ws=ws,
                recipe=recipe,
                index=index,
                index_1=index + 1,
                describe=stage.describe() + (f" ({fold.label})" if fold else ""),
                fingerprint=stages.fingerprint(
                    ws, recipe, index, previous["sha256"] if previous else None, fold
                ),
                previous=previous,
                device=config.compute.device,
                workers=config.compute.workers,
                compile_model=config.train.compile,
                fold=fold,
                precision=config.compute.precision,
            )
            records.append(previous)
    bundle = export_run(ws=ws, recipe=recipe, last=records[-1], fold=fold)
    rows = stages.summary_rows(records)
    create_table_artifact(
        key=artifact_key(ws.slug, short_name(recipe, fold), "metrics"),
        table=rows,
        description=f"{run.name}: metrics per epoch, all stages",
    )
    summary = {
        "run": run.name,
        **config.member.describe(),
        "models_dir": str(run.folder),
        "bundle": bundle,
        "epoch_metric": decision_for(ws.competition).epoch_metric,
        "stages": [
            {k: v for k, v in rec.items() if k != "history"} | {"epochs": _epochs(rec)}
            for rec in records
        ],
        "final": rows[-1],
    }
    create_markdown_artifact(
        key=artifact_key(ws.slug, short_name(recipe, fold), "train-summary"),
        markdown=_summary_markdown(summary),
        description=f"training summary, {run.name}",
    )
    return summary


def _epochs(record: dict[str, Any]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k != "batch_losses"} for row in record["history"]]


def _summary_markdown(summary: dict[str, Any]) -> str:
    lines = [f"# Trained {summary['run']}", "", "| stage | recipe | lrs | final metrics | s |"]
    lines.append("|---:|---|---|---|---:|")
    for st in summary["stages"]:
        last = st["epochs"][-1]
        metrics = ", ".join(
            f"{k} {v:.4f}"
            for k, v in last.items()
            if isinstance(v, float) and k not in {"lr", "seconds", "images_per_s", "first_step_s"}
        )
        lrs = ", ".join(f"{lr:.2e}" for lr in st["lrs"])
        lines.append(f"| {st['stage']} | {st['describe']} | {lrs} | {metrics} | {st['seconds']} |")
    lines += ["", f"Bundle: `{summary['bundle']['bundle']}` in `{summary['models_dir']}`"]
    return "\n".join(lines) + "\n"
