"""Prefect tasks over planet.predict, planet.thresholds and planet.submission: TTA
probabilities per split, thresholds (or the clip) fitted on validation, and the CSV.

Cache keys hash the model bundle's sha256, the sized shards' manifest, the names predicted
and the TTA settings (predictions); the validation probabilities' sha256 (thresholds); the
test probabilities' and thresholds' sha256 (submission). Never paths.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.logging import get_run_logger

from planet.competitions import resolve
from planet.fileio import read_json, sha256_file, sha256_json, write_json_atomic
from planet.infer import predict, submission, thresholds
from planet.layout import CompetitionDirs
from planet.report.show import png_data_uri
from planet.store.sized import read_labels, read_sized_manifest
from planet.store.split import read_split
from tasks.caching import key_from, run_cached
from tasks.progress import Progress, artifact_key

VALID = "valid"
THRESHOLDS_FILE = "thresholds.json"
CODE_VERSION = "1"


def predictions_dir(data_dir: str, slug: str, run: str, split_name: str) -> Path:
    return CompetitionDirs.of(data_dir, slug).predictions / run / split_name


def _valid_names(data_dir: str, slug: str, folder: Path) -> list[str]:
    split = read_split(CompetitionDirs.of(data_dir, slug).root / "shards" / "split.parquet")
    have = set(read_labels(folder)[0])
    return [n for n in split.valid_names if n in have]


@task(
    name="predict",
    task_run_name="predict {split_name} (TTA {tta})",
    cache_key_fn=key_from(
        "predict",
        f"{predict.FORMAT_VERSION}.{CODE_VERSION}",
        [
            "slug",
            "run",
            "split_name",
            "bundle_sha256",
            "source_sha256",
            "names_sha256",
            "tta",
            "beta",
        ],
    ),
    persist_result=True,
)
def predict_split(
    slug: str,
    data_dir: str,
    run: str,
    split_name: str,
    bundle: str,
    bundle_sha256: str,
    source_sha256: str,
    names_sha256: str | None,
    tta: bool,
    beta: float | None,
    device: str = "auto",
    batch_size: int = 64,
    part_size: int = predict.PART_SIZE,
) -> dict[str, Any]:
    """Probabilities of a split (`valid`: the validation images of the train shards) with the
    exported model, averaged over the 8 symmetries of the square."""
    import torch

    from planet.learn.fit import resolve_device
    from planet.learn.model import load_bundle

    dirs = CompetitionDirs.of(data_dir, slug)
    loaded = load_bundle(dirs.root / bundle, device=resolve_device(device))
    image_split = "train" if split_name == VALID else split_name
    folder = dirs.sized_shards(loaded.size, image_split)
    select = _valid_names(data_dir, slug, folder) if split_name == VALID else None
    dev = next(loaded.model.parameters()).device
    loaded.model.to(memory_format=torch.channels_last)  # +35% img/s on the CPU, faster on CUDA
    progress = Progress(f"predict {split_name} at {loaded.size}px", unit="images")
    manifest = predict.predict_split(
        loaded.model,
        folder,
        predictions_dir(data_dir, slug, run, split_name),
        classes=loaded.classes,
        task=loaded.task,
        batch_size=batch_size,
        part_size=part_size,
        device=dev,
        tta=tta,
        beta=beta,
        select=select,
        mean=loaded.mean,
        std=loaded.std,
        progress=progress,
        channels_last=True,
        settings={"bundle_sha256": bundle_sha256},
    )
    progress.done()
    get_run_logger().info(
        "%s: %d images at %dpx, %d parts computed, %d reused",
        split_name,
        manifest["count"],
        loaded.size,
        manifest.get("parts_computed", 0),
        manifest.get("parts_reused", 0),
    )
    manifest.pop("source", None)  # holds an absolute folder path
    return manifest


def run_predict(
    slug: str,
    data_dir: str,
    run: str,
    split_name: str,
    bundle: dict[str, Any],
    *,
    size: int,
    tta: bool = True,
    beta: float | None = None,
    device: str = "auto",
    batch_size: int = 64,
    part_size: int = predict.PART_SIZE,
) -> dict[str, Any]:
    """`predict_split`, Cached unless its probabilities are missing or were made otherwise."""
    dirs = CompetitionDirs.of(data_dir, slug)
    folder = dirs.sized_shards(size, "train" if split_name == VALID else split_name)
    try:
        source = read_sized_manifest(folder)
    except Exception as exc:
        raise FileNotFoundError(
            f"{folder} has no complete {size}px shards ({exc}): the model was trained at "
            f"{size}px, so the resize stage must include size {size}"
        ) from None
    names = _valid_names(data_dir, slug, folder) if split_name == VALID else None
    out = predictions_dir(data_dir, slug, run, split_name)
    complete = predict.predictions_complete(
        out, {"bundle_sha256": bundle["sha256"]}, tta=tta, beta=beta
    )
    return run_cached(
        predict_split,
        outputs_complete=complete,
        slug=slug,
        data_dir=data_dir,
        run=run,
        split_name=split_name,
        bundle=bundle["bundle"],
        bundle_sha256=bundle["sha256"],
        source_sha256=sha256_json(source),
        names_sha256=sha256_json(names) if names is not None else None,
        tta=tta,
        beta=beta,
        device=device,
        batch_size=batch_size,
        part_size=part_size,
    )


def _valid_truth(data_dir: str, slug: str, names: list[str], size: int) -> np.ndarray:
    all_names, labels = read_labels(CompetitionDirs.of(data_dir, slug).sized_shards(size, "train"))
    if labels is None:
        raise ValueError(f"the {size}px train shards of {slug} carry no labels")
    pos = {n: i for i, n in enumerate(all_names)}
    return labels[[pos[n] for n in names]]


@task(
    name="fit thresholds",
    cache_key_fn=key_from("thresholds", CODE_VERSION, ["slug", "run", "valid_sha256"]),
    persist_result=True,
)
def fit_thresholds(
    slug: str, data_dir: str, run: str, valid_sha256: str, size: int
) -> dict[str, Any]:
    """Per-class thresholds (Planet) or the probability clip (Dogs vs Cats) fitted on the
    validation probabilities; written to predictions/<run>/thresholds.json."""
    comp = resolve(slug)
    logger = get_run_logger()
    names, probs, classes = predict.read_probs(predictions_dir(data_dir, slug, run, VALID))
    truth = _valid_truth(data_dir, slug, names, size)
    path = predictions_dir(data_dir, slug, run, THRESHOLDS_FILE)
    if comp.task == "multi_label":
        report = thresholds.threshold_report(probs, truth, classes)
        thresholds.write_thresholds(path, report)
        _threshold_artifacts(slug, run, report)
        logger.info(
            "validation F2: %.4f at 0.2, %.4f at the best global %.2f, %.4f per class "
            "(cross-fitted on halves: %.4f vs %.4f at 0.2)",
            report["fixed"]["f2"],
            report["global"]["f2"],
            report["global"]["threshold"],
            report["per_class"]["f2"],
            report["cross_fit"]["per_class"],
            report["cross_fit"]["fixed"],
        )
        default, tuned = report["fixed"]["f2"], report["per_class"]["f2"]
    else:
        positive = list(classes).index(comp.positive_class or classes[-1])
        report = thresholds.clip_report(probs[:, positive], truth == positive)
        write_json_atomic(path, {"kind": "clip", **report})
        logger.info(
            "validation log loss %.4f, %.4f with probabilities clipped to [%g, %g]",
            report["log_loss_raw"],
            report["log_loss_clipped"],
            report["clip"],
            1 - report["clip"],
        )
        default, tuned = report["log_loss_raw"], report["log_loss_clipped"]
    return {
        "path": str(path.relative_to(CompetitionDirs.of(data_dir, slug).root)),
        "sha256": sha256_file(path),
        "metric": comp.metric,
        "val_metric_default": default,
        "val_metric_tuned": tuned,
        "report": report,
    }


def _threshold_artifacts(slug: str, run: str, report: dict[str, Any]) -> None:
    from planet.report import plots

    classes = report["classes"]
    per_class = report["per_class"]["thresholds"]
    create_table_artifact(
        key=artifact_key(slug, run, "thresholds"),
        table=[
            {
                "class": c,
                "support": report["support"][c],
                "threshold": per_class[c],
                "f2_at_0.2": round(report["per_class_f2_fixed"][c], 4),
                "f2_fitted": round(report["per_class_f2"][c], 4),
            }
            for c in classes
        ],
        description="per-class thresholds fitted on validation, with each class's F2",
    )
    bars = plots.class_bars_png(
        classes, [report["per_class_f2"][c] for c in classes], "Per-class F2 (validation)", "F2"
    )
    cf = report["cross_fit"]
    create_markdown_artifact(
        key=artifact_key(slug, run, "thresholds-summary"),
        markdown="\n".join(
            [
                "# Thresholds on validation",
                "",
                "| thresholds | mean F2 (fitted on all of validation) | mean F2 (cross-fitted halves) |",
                "|---|---:|---:|",
                f"| fixed 0.2 | {report['fixed']['f2']:.4f} | {cf['fixed']:.4f} |",
                f"| best global ({report['global']['threshold']:.2f}) | "
                f"{report['global']['f2']:.4f} | {cf['global']:.4f} |",
                f"| per class | {report['per_class']['f2']:.4f} | {cf['per_class']:.4f} |",
                "",
                report.get("note", ""),
                "",
                f"![per-class F2]({png_data_uri(bars)})",
                "",
            ]
        ),
        description="F2 at 0.2, at the best global threshold and with per-class thresholds",
    )


def run_thresholds(
    slug: str, data_dir: str, run: str, valid: dict[str, Any], size: int
) -> dict[str, Any]:
    path = predictions_dir(data_dir, slug, run, THRESHOLDS_FILE)
    complete = path.is_file()
    return run_cached(
        fit_thresholds,
        outputs_complete=complete,
        slug=slug,
        data_dir=data_dir,
        run=run,
        valid_sha256=valid["probs"]["sha256"],
        size=size,
    )


@task(
    name="write submission",
    cache_key_fn=key_from(
        "submission", CODE_VERSION, ["slug", "run", "test_sha256", "thresholds_sha256"]
    ),
    persist_result=True,
)
def write_submission(
    slug: str,
    data_dir: str,
    run: str,
    test_splits: list[str],
    test_sha256: list[str],
    thresholds_sha256: str,
) -> dict[str, Any]:
    """The submission CSV from the test probabilities and the fitted thresholds (or clip),
    checked against the sample submission before it is written."""
    comp = resolve(slug)
    dirs = CompetitionDirs.of(data_dir, slug)
    names: list[str] = []
    parts = []
    for split_name in test_splits:
        n, p, _ = predict.read_probs(predictions_dir(data_dir, slug, run, split_name))
        names += n
        parts.append(p)
    probs = np.concatenate(parts)
    fitted = read_json(predictions_dir(data_dir, slug, run, THRESHOLDS_FILE))
    path = dirs.submissions / f"{run}.csv"
    if comp.task == "multi_label":
        _, vector = thresholds.read_thresholds(
            predictions_dir(data_dir, slug, run, THRESHOLDS_FILE)
        )
        result = submission.make_submission(
            comp, dirs.tables, path, names, probs, thresholds=vector
        )
    else:
        result = submission.make_submission(
            comp, dirs.tables, path, names, probs, clip=float(fitted["clip"])
        )
    preview = "\n".join(result["preview"])
    create_markdown_artifact(
        key=artifact_key(slug, run, "submission"),
        markdown=f"# Submission\n\n`{path}`: {result['rows']:,} rows, sha256 "
        f"`{result['sha256'][:16]}…`\n\n```\n{preview}\n```\n",
        description=f"submission file for {slug}",
    )
    get_run_logger().info("wrote %s (%d rows)", path, result["rows"])
    return {**result, "path": str(path.relative_to(dirs.root))}


def run_submission(
    slug: str,
    data_dir: str,
    run: str,
    tests: dict[str, dict[str, Any]],
    fitted: dict[str, Any],
) -> dict[str, Any]:
    dirs = CompetitionDirs.of(data_dir, slug)
    path = dirs.submissions / f"{run}.csv"
    return run_cached(
        write_submission,
        outputs_complete=path.is_file(),
        slug=slug,
        data_dir=data_dir,
        run=run,
        test_splits=list(tests),
        test_sha256=[m["probs"]["sha256"] for m in tests.values()],
        thresholds_sha256=fitted["sha256"],
    )
