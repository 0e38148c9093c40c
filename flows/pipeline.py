"""The whole recipe, from the Kaggle download to a scored submission:

    prepare -> resize -> train (recipe stages) -> predict (TTA) -> thresholds -> submission
            -> submit

Each stage is a subflow, runnable alone too; `stages` runs a subset (the stages left out must
have run before: their outputs are read from the data directory). Every stage is cached on the
content of its inputs, so rerunning the pipeline after a failure redoes only what failed.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.context import get_run_context

from flows.config import PipelineConfig
from flows.predict import predict, submission, thresholds
from flows.prepare import prepare
from flows.resize import resize
from flows.submit import submit
from flows.train import train
from tasks.progress import artifact_key

DEFAULT_CONFIG = PipelineConfig()


@flow(name="pipeline", flow_run_name="pipeline {config.competition} {config.recipe.name}")
def pipeline(config: PipelineConfig = DEFAULT_CONFIG) -> dict[str, Any]:
    """Run the selected stages in order; returns the run's summary (score, metrics, files)."""
    run = config.stages
    out: dict[str, Any] = {"competition": config.competition, "recipe": config.recipe.run_name}
    if "prepare" in run:
        out.update(prepare(config.prepare_config()))
    if "resize" in run:
        resized = resize(config.resize_config())
        out.update({k: resized[k] for k in ("split", "sized", "batch_png")})
    if "train" in run:
        trained = train(config.train_config())
        out["train"] = _train_summary(trained)
    if "predict" in run:
        predicted = predict(config.predict_config())
        out["predicted"] = {k: v["count"] for k, v in predicted.items()}
    if "thresholds" in run:
        fitted = thresholds(config.predict_config())
        out["metric"] = fitted["metric"]
        out["val_metric_default"] = fitted["val_metric_default"]
        out["val_metric_tuned"] = fitted["val_metric_tuned"]
        if fitted["metric"] == "mean_f2":
            out["thresholds"] = fitted["report"]["per_class"]["thresholds"]
        else:
            out["clip"] = fitted["report"]["clip"]
    if "submission" in run:
        written = submission(config.predict_config())
        out["submission"] = str(config.data_path / config.competition / written["path"])
    if "submit" in run:
        submitted = submit(config.submit_config())
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
        "epochs": [
            {
                "stage": st["stage"],
                **{k: v for k, v in e.items() if k not in ("lr", "images_per_s")},
            }
            for st in trained["stages"]
            for e in st["epochs"]
        ],
    }


def _markdown(out: dict[str, Any]) -> str:
    lines = [f"# {out['competition']}: {out['recipe']}", ""]
    if "train" in out:
        lines += [
            "| stage | epoch | train loss | valid loss | metric |",
            "|---:|---:|---:|---:|---:|",
        ]
        for e in out["train"]["epochs"]:
            metric = e.get("f2", e.get("log_loss"))
            lines.append(
                f"| {e['stage']} | {e['epoch']} | {e['train_loss']:.4f} | {e['valid_loss']:.4f} | "
                f"{metric:.4f} |"
            )
        lines.append("")
    for key, label in (
        ("val_metric_default", "validation metric, default (F2 at 0.2 / raw log loss)"),
        ("val_metric_tuned", "validation metric, tuned (per-class thresholds / clip)"),
        ("score", "score from Kaggle"),
        ("private_score", "private score"),
        ("submission", "submission file"),
    ):
        if out.get(key) is not None:
            value = out[key]
            lines.append(
                f"- {label}: `{value:.5f}`" if isinstance(value, float) else f"- {label}: `{value}`"
            )
    return "\n".join(lines) + "\n"
