"""Prefect tasks over planet.infer: TTA probabilities per split, the decision (thresholds or
clip) fitted on validation, and the submission CSV.

Cache keys hash the model bundle's sha256, the sized shards' manifest, the names predicted and
the TTA settings (predictions); the validation probabilities' sha256 (thresholds); the test
probabilities' and thresholds' sha256 (submission). Never paths.
"""

from __future__ import annotations

from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.logging import get_run_logger

from planet.infer import predict as predict_lib
from planet.infer.decision import decision_for
from planet.infer.runs import fit_decision, predict_run_split, write_run_submission
from planet.learn.members import Fold
from planet.workspace import Workspace
from tasks.caching import key_from, stage_task
from tasks.progress import Progress, artifact_key

CODE_VERSION = "1"


@stage_task(
    name="predict",
    task_run_name="predict {split_name} (TTA {tta})",
    cache_key_fn=key_from(
        "predict",
        f"{predict_lib.FORMAT_VERSION}.{CODE_VERSION}",
        [
            "ws",
            "run",
            "split_name",
            "bundle_sha256",
            "source_sha256",
            "names_sha256",
            "tta",
            "beta",
            "precision",
        ],
    ),
    done=lambda ws, run, split_name, bundle_sha256, tta, beta, precision="auto", **_: (
        ws.predictions(run, split_name).complete(
            {"bundle_sha256": bundle_sha256},
            tta=tta,
            beta=beta,
            **({} if precision == "auto" else {"precision": precision}),
        )
    ),
)
def predict_images(
    ws: Workspace,
    run: str,
    split_name: str,
    bundle: str,
    bundle_sha256: str,
    source_sha256: str,
    names_sha256: str | None,
    tta: bool,
    beta: float | None,
    size: int,
    device: str = "auto",
    batch_size: int = 64,
    part_size: int = predict_lib.PART_SIZE,
    fold: Fold | None = None,
    precision: str = "auto",
) -> dict[str, Any]:
    """Probabilities of a split (`valid`: the validation images of the train shards, or the
    fold a k-fold member held out) with the exported model, averaged over the 8 symmetries of
    the square, at `precision` (auto, fp32, bf16, fp16: planet.learn.precision; a finished
    prediction counts as done for auto whatever precision made it, as for the device)."""
    progress = Progress(f"predict {split_name} at {size}px", unit="images")
    manifest = predict_run_split(
        ws,
        run,
        split_name,
        bundle,
        bundle_sha256,
        tta=tta,
        beta=beta,
        device=device,
        batch_size=batch_size,
        part_size=part_size,
        progress=progress,
        fold=fold,
        precision=precision,
    )
    progress.done()
    get_run_logger().info(
        "%s: %d images at %dpx (%s), %d parts computed, %d reused",
        split_name,
        manifest["count"],
        size,
        manifest.get("precision", "fp32"),
        manifest.get("parts_computed", 0),
        manifest.get("parts_reused", 0),
    )
    return manifest


@stage_task(
    name="fit thresholds",
    cache_key_fn=key_from("thresholds", CODE_VERSION, ["ws", "run", "valid_sha256"]),
    done=lambda ws, run, **_: ws.thresholds(run).complete(),
)
def fit_validation_decision(
    ws: Workspace, run: str, valid_sha256: str, size: int
) -> dict[str, Any]:
    """Per-class thresholds (multi-label) or the probability clip (single-label) fitted on the
    validation probabilities; written to predictions/<run>/thresholds.json."""
    fitted = fit_decision(ws, run, size)
    decision, report = decision_for(ws.competition), fitted["report"]
    get_run_logger().info("%s", decision.log_line(report))
    table = decision.table(report)
    if table is not None:
        create_table_artifact(
            key=artifact_key(ws.slug, run, "thresholds"),
            table=table,
            description="what was fitted on validation, per class, with each class's metric",
        )
    markdown = decision.markdown(report)
    if markdown is not None:
        create_markdown_artifact(
            key=artifact_key(ws.slug, run, "thresholds-summary"),
            markdown=markdown,
            description="the validation metric as given and with what was fitted",
        )
    return fitted


@stage_task(
    name="write submission",
    cache_key_fn=key_from(
        "submission", CODE_VERSION, ["ws", "run", "test_sha256", "thresholds_sha256"]
    ),
    done=lambda ws, run, **_: ws.submission(run).complete(),
)
def submission_file(
    ws: Workspace, run: str, test_sha256: list[str], thresholds_sha256: str
) -> dict[str, Any]:
    """The submission CSV from the test probabilities and the fitted thresholds (or clip),
    checked against the sample submission before it is written."""
    result = write_run_submission(ws, run)
    path = ws.path(result["path"])
    preview = "\n".join(result["preview"])
    create_markdown_artifact(
        key=artifact_key(ws.slug, run, "submission"),
        markdown=f"# Submission\n\n`{path}`: {result['rows']:,} rows, sha256 "
        f"`{result['sha256'][:16]}…`\n\n```\n{preview}\n```\n",
        description=f"submission file for {ws.slug}",
    )
    get_run_logger().info("wrote %s (%d rows)", path, result["rows"])
    return result
