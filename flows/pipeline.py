"""The whole recipe, from the Kaggle download to a scored submission:

    prepare -> resize -> train (recipe stages) -> predict (TTA) -> thresholds -> submission
            -> submit

Each stage is a subflow, runnable alone too; `stages` runs a subset (the stages left out must
have run before: their outputs are read from the data directory). Each stage flow gets its
config from the pipeline's (`PipelineConfig.for_stage`: the same target and sections). Every
stage is cached on the content of its inputs, so rerunning the pipeline after a failure redoes
only what failed.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.context import get_run_context

from flows.config import (
    PipelineConfig,
    PredictConfig,
    PrepareConfig,
    ResizeConfig,
    SubmitConfig,
)
from flows.ensemble import train_members
from flows.notify import HOOKS
from flows.predict import predict, submission, thresholds
from flows.prepare import prepare
from flows.resize import resize
from flows.submit import submit
from tasks.progress import artifact_key

DEFAULT_CONFIG = PipelineConfig()


@flow(name="pipeline", flow_run_name="pipeline {config.competition} {config.recipe.name}", **HOOKS)
def pipeline(config: PipelineConfig = DEFAULT_CONFIG) -> dict[str, Any]:
    """Run the selected stages in order; returns the run's summary (score, metrics, files)."""
    run = config.stages
    out: dict[str, Any] = {
        "competition": config.competition,
        "recipe": config.recipe.run_name,
        "folds": config.ensemble.folds,
    }
    if "prepare" in run:
        out.update(prepare(config.for_stage(PrepareConfig)))
    if "resize" in run:
        resized = resize(config.for_stage(ResizeConfig))
        out.update({k: resized[k] for k in ("split", "sized", "batch_png")})
    if "train" in run:
        trained = train_members(config)
        out["train"] = _train_summary(trained["first"])
        out["members"] = [
            {k: m[k] for k in ("fold", "recipe", "seed", "valid_metric", "worker")}
            for m in trained["members"]
        ]
    if "predict" in run:
        predicted = predict(config.for_stage(PredictConfig))
        out["predicted"] = {k: v["count"] for k, v in predicted.items()}
    if "thresholds" in run:
        fitted = thresholds(config.for_stage(PredictConfig))
        out.update({k: fitted[k] for k in ("metric", "val_metric_default", "val_metric_tuned")})
        out["oof_metric_default"] = fitted["val_metric_default"]  # validation = out of fold
        out["oof_metric_tuned"] = fitted["val_metric_tuned"]
        out.update(fitted["summary"])
        files = fitted["interpretation"]["files"]  # the error analysis (Dogs: confident mistakes)
        out["top_losses_png"] = str(config.workspace.path(files["top_losses_png"]))
        out["per_tag_csv"] = str(config.workspace.path(files["per_tag_csv"]))
    if "submission" in run:
        written = submission(config.for_stage(PredictConfig))
        out["submission"] = str(config.workspace.path(written["path"]))
    if "submit" in run:
        submitted = submit(config.for_stage(SubmitConfig))
        out["submitted"] = submitted.get("submitted", False)
        out["score"] = submitted.get("public_score")
        out["private_score"] = submitted.get("private_score")
    ctx = get_run_context()
    out["flow_run_id"] = str(ctx.flow_run.id) if getattr(ctx, "flow_run", None) else None
    create_markdown_artifact(
        key=artifact_key(config.competition, "pipeline-summary"),
        markdown=_markdown(out),
        description=f"pipeline summary, {config.recipe.run_name}",
    )
    return out


def _train_summary(trained: dict[str, Any]) -> dict[str, Any]:
    return {
        "run": trained["run"],
        "bundle": trained["bundle"]["bundle"],
        "epoch_metric": trained["epoch_metric"],
        "epochs": [
            {
                "stage": st["stage"],
                **{k: v for k, v in e.items() if k not in ("lr", "images_per_s", "first_step_s")},
            }
            for st in trained["stages"]
            for e in st["epochs"]
        ],
    }


def _markdown(out: dict[str, Any]) -> str:
    lines = [f"# {out['competition']}: {out['recipe']}", ""]
    if "train" in out:
        metric = out["train"]["epoch_metric"]
        lines += [
            f"| stage | epoch | train loss | valid loss | {metric} |",
            "|---:|---:|---:|---:|---:|",
        ]
        for e in out["train"]["epochs"]:
            lines.append(
                f"| {e['stage']} | {e['epoch']} | {e['train_loss']:.4f} | {e['valid_loss']:.4f} | "
                f"{e[metric]:.4f} |"
            )
        lines.append("")
    if len(out.get("members", [])) > 1:
        lines += [
            f"{len(out['members'])} members ({out['folds']} folds); the metrics below are the "
            "ensemble's, out of fold",
            "",
            "| fold | recipe | seed | validation metric | worker |",
            "|---:|---|---:|---:|---|",
        ]
        for m in out["members"]:
            lines.append(
                f"| {m['fold'] or '-'} | {m['recipe']} | {m['seed']} | {m['valid_metric']:.4f} "
                f"| {m['worker']} |"
            )
        lines.append("")
    for key, label in (
        ("val_metric_default", "validation metric as predicted"),
        ("val_metric_tuned", "validation metric with what thresholds.json fitted"),
        ("threshold_rule", "thresholds submitted (the best on held-out halves)"),
        ("val_metric_crossfit", "validation metric of those thresholds on held-out halves"),
        ("score", "score from Kaggle"),
        ("private_score", "private score"),
        ("submission", "submission file"),
        ("top_losses_png", "top losses"),
        ("per_tag_csv", "per-class counts and metrics"),
    ):
        if out.get(key) is not None:
            value = out[key]
            lines.append(
                f"- {label}: `{value:.5f}`" if isinstance(value, float) else f"- {label}: `{value}`"
            )
    return "\n".join(lines) + "\n"
