"""Prefect tasks over planet.learn.stages: one task per recipe stage, plus the export.

A stage task is cached on the stage's fingerprint (recipe settings, the stage, the previous
stage's weights hash, the training data's manifest and split, the code version), never on
paths. A stage whose weights file is gone runs again; a stage that crashed mid-way is not
cached: rerunning it resumes from its last epoch checkpoint.

What the UI gets, from callbacks into the fit: a progress artifact advancing with the batches,
one log line per epoch with the metrics, the LR finder's plot and table when the stage ran it;
then a table artifact of the stage's epochs and the loss curves.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.logging import get_run_logger

from planet.learn import stages
from planet.learn.callbacks import Callback, FitState
from planet.learn.members import Fold, short_name
from planet.learn.recipe import Recipe
from planet.report.show import png_data_uri
from planet.workspace import Workspace
from tasks.caching import key_from, stage_task
from tasks.progress import Progress, artifact_key


def _metrics_line(row: dict[str, Any]) -> str:
    skip = {"epoch", "batch_losses", "lr", "seconds", "images_per_s", "first_step_s"}
    parts = [f"{k} {v:.4f}" for k, v in row.items() if k not in skip and isinstance(v, float)]
    return ", ".join(parts)


def _image_markdown(title: str, png: Path, note: str = "") -> str:
    return f"# {title}\n\n![{title}]({png_data_uri(png.read_bytes())})\n\n{note}`{png}`\n"


class StageReport(Callback):
    """What a training stage shows in Prefect while it runs: progress, epochs, the LR finder."""

    def __init__(
        self, ws: Workspace, recipe: Recipe, index: int, describe: str, fold: Fold | None
    ) -> None:
        self.ws, self.recipe, self.index = ws, recipe, index
        self.run = stages.model_run(ws, recipe, fold)
        self.label = short_name(recipe, fold)
        self.logger = get_run_logger()
        self.progress = Progress(
            f"stage {index + 1}: {describe}", unit="batches", min_interval_s=5.0
        )

    def before_fit(self, fit: FitState) -> None:
        if fit.resumed_from:  # said before the next epoch's line
            self.logger.info(
                "stage %d resumed after epoch %d from its checkpoint",
                self.index + 1,
                fit.resumed_from,
            )

    def after_batch(self, fit: FitState) -> None:
        self.progress(fit.step, fit.total_steps)

    def after_epoch(self, fit: FitState, row: dict[str, Any]) -> None:
        self.logger.info(
            "stage %d epoch %d/%d: %s (%.1f s, %.0f img/s; first step %.1f s)",
            self.index + 1,
            row["epoch"],
            fit.epochs,
            _metrics_line(row),
            row["seconds"],
            row["images_per_s"],
            row.get("first_step_s", 0.0),
        )

    def after_lr_find(self, result: Any) -> None:
        i, recipe = self.index + 1, self.recipe
        png = self.run.lr_find(self.index, ".png")
        picks = ", ".join(f"{k} {v:.2e}" for k, v in result.suggestions.items())
        self.logger.info("stage %d LR finder: %d steps, suggestions %s", i, len(result.lrs), picks)
        create_markdown_artifact(
            key=artifact_key(self.ws.slug, self.label, f"lr-find-{i}"),
            markdown=_image_markdown(
                f"LR finder before stage {i}",
                png,
                f"Suggestions: {picks}; `auto` uses {recipe.lr_suggestion}.\n\n",
            ),
            description=f"LR finder plot, stage {i}",
        )
        create_table_artifact(
            key=artifact_key(self.ws.slug, self.label, f"lr-find-{i}-table"),
            table=result.table(every=max(1, len(result.lrs) // 50)),
            description=f"LR finder sweep before stage {i} (smoothed and raw loss)",
        )


@stage_task(
    name="train stage",
    task_run_name="stage {index_1}: {describe}",
    cache_key_fn=key_from("train-stage", stages.CODE_VERSION, ["fingerprint"]),
    done=lambda ws, recipe, index, fingerprint, fold=None, **_: (
        stages.model_run(ws, recipe, fold).stage_complete(index, fingerprint) is not None
    ),
)
def fit_stage(
    ws: Workspace,
    recipe: Recipe,
    index: int,
    index_1: int,
    describe: str,
    fingerprint: str,
    previous: dict[str, Any] | None,
    device: str = "auto",
    workers: int = 2,
    compile_model: bool = False,
    fold: Fold | None = None,
    precision: str = "auto",
) -> dict[str, Any]:
    """fast.ai's `fit_one_cycle` for one stage of the recipe (resuming from a checkpoint);
    `previous` is the previous stage's record (its weights and their sha256); `fold` the
    member's held-out fold; `precision` auto, fp32, bf16 or fp16 (planet.learn.precision)."""
    from planet.learn.model import PretrainedWeightsMissing

    logger = get_run_logger()
    report = StageReport(ws, recipe, index, describe, fold)

    def warn_now(message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> None:
        logger.warning("%s", message)  # in the run's log, before training starts

    with warnings.catch_warnings():
        warnings.simplefilter("always", PretrainedWeightsMissing)
        warnings.showwarning = warn_now
        record = stages.run_stage(
            ws,
            recipe,
            index,
            previous=ws.path(previous["weights"]) if previous else None,
            previous_sha256=previous["sha256"] if previous else None,
            device=device,
            workers=workers,
            compile_model=compile_model,
            callbacks=[report],
            fold=fold,
            precision=precision,
        )
    report.progress.done()
    run = stages.model_run(ws, recipe, fold)
    create_table_artifact(
        key=artifact_key(ws.slug, short_name(recipe, fold), f"stage-{index_1}-metrics"),
        table=stages.history_table(record["history"]),
        description=f"stage {index_1} ({describe}): metrics per epoch",
    )
    create_markdown_artifact(
        key=artifact_key(ws.slug, short_name(recipe, fold), f"stage-{index_1}-losses"),
        markdown=_image_markdown(f"Losses, stage {index_1}", run.losses_picture(index)),
        description=f"train and valid loss, stage {index_1}",
    )
    return record


@task(name="export model")
def export_run(
    ws: Workspace, recipe: Recipe, last: dict[str, Any], fold: Fold | None = None
) -> dict[str, Any]:
    """The last stage's weights as models/<run>/export.pt (an inference bundle)."""
    record = stages.export(ws, recipe, last["stage"] - 1, fold)
    get_run_logger().info(
        "exported %s (sha256 %s…)", ws.path(record["bundle"]), record["sha256"][:12]
    )
    return record
