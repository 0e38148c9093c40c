"""Prefect tasks over planet.store.split, planet.resize and planet.report.show: the validation
split, the sized shards and a picture of a batch.

Cache keys hash the original-image manifest of the split, the labels table's record, the size,
method and code version; never the data directory or the Dask scheduler's address.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.logging import get_run_logger

from planet import resize
from planet.report import show
from planet.store.split import random_split
from planet.workspace import Workspace
from tasks.caching import key_from, stage_task
from tasks.progress import Progress, artifact_key

SPLIT_CODE_VERSION = "1"


def _split_settings(valid_pct: float, seed: int, n_folds: int | None) -> dict[str, Any]:
    return {"valid_pct": valid_pct, "seed": seed, "n_folds": n_folds}


@stage_task(
    name="validation split",
    cache_key_fn=key_from(
        "split",
        SPLIT_CODE_VERSION,
        ["ws", "train_manifest", "labels_record", "valid_pct", "seed", "n_folds"],
    ),
    done=lambda ws, valid_pct, seed, n_folds, **_: (
        ws.split.complete(_split_settings(valid_pct, seed, n_folds)) is not None
    ),
)
def split_train_images(
    ws: Workspace,
    train_manifest: dict[str, Any],
    labels_record: dict[str, Any] | None,
    valid_pct: float,
    seed: int,
    n_folds: int | None,
) -> dict[str, Any]:
    """fast.ai's seeded random split over the labelled train images, stored as split.parquet."""
    result = random_split(ws.train_labels().names, valid_pct=valid_pct, seed=seed, n_folds=n_folds)
    path = ws.split.write(result)
    get_run_logger().info(
        "split: %d train, %d valid (seed %d) -> %s",
        len(result.train_names),
        len(result.valid_names),
        seed,
        path,
    )
    return {
        "path": ws.relative(path),
        "train": len(result.train_names),
        "valid": len(result.valid_names),
        **result.settings,
    }


@stage_task(
    name="resize",
    task_run_name="resize {split_name} to {size}px",
    cache_key_fn=key_from(
        "resize",
        str(resize.FORMAT_VERSION),
        ["ws", "split_name", "size", "method", "source", "labels_record"],
    ),
    done=lambda ws, split_name, size, method, source, **_: (
        ws.sized(size, split_name).complete(source, method) is not None
    ),
)
def resize_images(
    ws: Workspace,
    split_name: str,
    size: int,
    method: str,
    source: dict[str, Any],
    labels_record: dict[str, Any] | None,
    dask_address: str | None,
) -> dict[str, Any]:
    """Decode + resize one split's original shards on Dask into shards/<size>/<split>/."""
    logger = get_run_logger()
    is_test = split_name != "train"
    out = ws.sized(size, split_name)
    progress = Progress(f"resize {split_name} to {size}px", unit="shards")
    with resize.dask_client(dask_address) as client:
        logger.info(
            "Dask: %s (dashboard %s)",
            client.scheduler.address,
            resize.dashboard_link(client) or "off",
        )
        manifest = resize.resize_split(
            ws.original(split_name).folder,
            out.folder,
            size,
            None if is_test else ws.train_labels(),
            method=method,
            is_test=is_test,
            client=client,
            progress=progress,
        )
    progress.done()
    bad = manifest.get("bad_images", [])
    logger.info(
        "%s at %dpx: %s images in %d shards, %d left out",
        split_name,
        size,
        f"{manifest['count']:,}",
        len(manifest["shards"]),
        len(bad),
    )
    if bad:
        create_table_artifact(
            key=artifact_key(ws.slug, split_name, str(size), "bad-images"),
            table=[{"image": b["name"], "reason": b["reason"]} for b in bad],
            description=f"{len(bad)} {split_name} images that failed to decode were left out "
            f"(listed in {out.folder / 'manifest.json'})",
        )
    return manifest


@task(name="show batch", task_run_name="show batch at {size}px")
def picture_batch(ws: Workspace, size: int, n: int = 16, seed: int = 0) -> str:
    """fast.ai's `show_batch`: a PNG grid of train images with their tags, written beside the
    shards and shown in the UI as a markdown artifact (the image embedded, plus its path)."""
    sized = ws.sized(size, "train")
    data = sized.read()
    path, shown = show.show_random_batch(
        data.images,
        data.labels,
        ws.competition.classes,
        sized.batch_picture,
        n=n,
        seed=seed,
        title=f"{ws.slug}: {{n}} train images at {size}px",
    )
    create_markdown_artifact(
        key=artifact_key(ws.slug, "batch", str(size)),
        markdown=f"# A batch at {size}px\n\n![batch]({show.png_data_uri(path.read_bytes())})"
        f"\n\n`{path}`\n",
        description=f"{shown} train images of {ws.slug} with their tags",
    )
    return str(path)
