"""Prefect tasks over planet.stages: one task per recipe stage, plus the export.

A stage task is cached on the stage's fingerprint (recipe settings, the stage, the previous
stage's weights hash, the training data's manifest and split, the code version), never on
paths. A stage whose weights file is gone runs again (`run_cached`). A stage that crashed
mid-way is not cached: rerunning it resumes from its last epoch checkpoint.

What the UI gets: a progress artifact advancing with the batches, one log line per epoch with
the metrics, a table artifact of the stage's epochs, the loss curves and (when the stage ran
it) the LR finder's plot and table as artifacts.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.logging import get_run_logger

from planet.competitions import resolve
from planet.learn import stages
from planet.learn.recipe import Recipe
from planet.report.show import png_data_uri
from tasks.caching import key_from, run_cached
from tasks.progress import Progress, artifact_key


def _metrics_line(row: dict[str, Any]) -> str:
    skip = {"epoch", "batch_losses", "lr", "seconds", "images_per_s"}
    parts = [f"{k} {v:.4f}" for k, v in row.items() if k not in skip and isinstance(v, float)]
    return ", ".join(parts)


def _image_markdown(title: str, png: Path, note: str = "") -> str:
    return f"# {title}\n\n![{title}]({png_data_uri(png.read_bytes())})\n\n{note}`{png}`\n"


@task(
    name="train stage",
    task_run_name="stage {index_1}: {describe}",
    cache_key_fn=key_from("train-stage", stages.CODE_VERSION, ["fingerprint"]),
    persist_result=True,
)
def train_stage(
    slug: str,
    data_dir: str,
    recipe: Recipe,
    index: int,
    index_1: int,
    describe: str,
    fingerprint: str,
    previous: str | None,
    device: str = "auto",
    workers: int = 2,
    compile_model: bool = False,
) -> dict[str, Any]:
    """fast.ai's `fit_one_cycle` for one stage of the recipe (resuming from a checkpoint)."""
    from planet.learn.lr_finder import LRFinderResult
    from planet.learn.model import PretrainedWeightsMissing

    logger = get_run_logger()
    out_dir = stages.models_dir(data_dir, slug, recipe)
    progress = Progress(f"stage {index_1}: {describe}", unit="batches", min_interval_s=5.0)

    def on_epoch(row: dict[str, Any]) -> None:
        logger.info(
            "stage %d epoch %d/%d: %s (%.1f s, %.0f img/s)",
            index_1,
            row["epoch"],
            recipe.stages[index].epochs,
            _metrics_line(row),
            row["seconds"],
            row["images_per_s"],
        )

    def on_lr_find(result: LRFinderResult) -> None:
        png = out_dir / f"lr_find-{index_1}.png"
        picks = ", ".join(f"{k} {v:.2e}" for k, v in result.suggestions.items())
        logger.info("stage %d LR finder: %d steps, suggestions %s", index_1, len(result.lrs), picks)
        create_markdown_artifact(
            key=artifact_key(slug, recipe.name, f"lr-find-{index_1}"),
            markdown=_image_markdown(
                f"LR finder before stage {index_1}",
                png,
                f"Suggestions: {picks}; `auto` uses {recipe.lr_suggestion}.\n\n",
            ),
            description=f"LR finder plot, stage {index_1}",
        )
        create_table_artifact(
            key=artifact_key(slug, recipe.name, f"lr-find-{index_1}-table"),
            table=result.table(every=max(1, len(result.lrs) // 50)),
            description=f"LR finder sweep before stage {index_1} (smoothed and raw loss)",
        )

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PretrainedWeightsMissing)
        record = stages.run_stage(
            data_dir,
            slug,
            recipe,
            index,
            previous=Path(data_dir).expanduser().resolve() / slug / previous if previous else None,
            device=device,
            workers=workers,
            compile_model=compile_model,
            on_epoch=on_epoch,
            on_batch=progress,
            on_lr_find=on_lr_find,
        )
    for w in caught:  # the missing-weights warning, in the run's log where users look
        logger.warning("%s", w.message)
    progress.done()
    if record["resumed_from_epoch"]:
        logger.info(
            "stage %d resumed after epoch %d from its checkpoint",
            index_1,
            record["resumed_from_epoch"],
        )
    create_table_artifact(
        key=artifact_key(slug, recipe.name, f"stage-{index_1}-metrics"),
        table=stages.history_table(record["history"]),
        description=f"stage {index_1} ({describe}): metrics per epoch",
    )
    create_markdown_artifact(
        key=artifact_key(slug, recipe.name, f"stage-{index_1}-losses"),
        markdown=_image_markdown(f"Losses, stage {index_1}", out_dir / f"losses-{index_1}.png"),
        description=f"train and valid loss, stage {index_1}",
    )
    return record


def stage_fingerprint(
    slug: str, data_dir: str, recipe: Recipe, index: int, previous_sha256: str | None
) -> str:
    data = stages.data_fingerprint(data_dir, slug, recipe.stages[index].size)
    return stages.stage_fingerprint(recipe, index, previous_sha256, data)


def run_train_stage(
    slug: str,
    data_dir: str,
    recipe: Recipe,
    index: int,
    previous: dict[str, Any] | None,
    *,
    device: str = "auto",
    workers: int = 2,
    compile_model: bool = False,
) -> dict[str, Any]:
    """Run `train_stage`, Cached when this stage was trained on the same inputs and its
    weights are still there."""
    fingerprint = stage_fingerprint(
        slug, data_dir, recipe, index, previous["sha256"] if previous else None
    )
    out_dir = stages.models_dir(data_dir, slug, recipe)
    complete = stages.stage_complete(out_dir, index, fingerprint) is not None
    return run_cached(
        train_stage,
        outputs_complete=complete,
        slug=resolve(slug).slug,
        data_dir=data_dir,
        recipe=recipe,
        index=index,
        index_1=index + 1,
        describe=recipe.stages[index].describe(),
        fingerprint=fingerprint,
        previous=previous["weights"] if previous else None,
        device=device,
        workers=workers,
        compile_model=compile_model,
    )


@task(name="export model")
def export_model(slug: str, data_dir: str, recipe: Recipe, last: dict[str, Any]) -> dict[str, Any]:
    """The last stage's weights as models/<run>/export.pt (an inference bundle)."""
    out_dir = stages.models_dir(data_dir, slug, recipe)
    record = stages.export(out_dir, last["stage"] - 1)
    get_run_logger().info(
        "exported %s (sha256 %s…)", out_dir / stages.EXPORT_FILE, record["sha256"][:12]
    )
    return record
