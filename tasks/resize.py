"""Prefect tasks over planet.split and planet.resize: the validation split, the sized shards,
and a picture of a batch.

Cache keys hash the original-image manifest of the split, the labels table's record, the size,
method and code version; never the data directory or the Dask scheduler's address.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.futures import PrefectFuture
from prefect.logging import get_run_logger

from planet import kaggle, resize
from planet.competitions import resolve
from planet.extract.archives import table_record
from planet.layout import CompetitionDirs
from planet.report import show
from planet.store import labels, shards, split
from planet.store.sized import read_sized
from tasks.caching import key_from, run_cached
from tasks.progress import Progress, artifact_key

SPLIT_CODE_VERSION = "1"
SPLIT_FILE = "split.parquet"


def labels_fingerprint(slug: str, data_dir: str) -> dict[str, Any] | None:
    """The record (sha256) of the competition's labels table, or None when names are labels."""
    comp = resolve(slug)
    files = [f for f in comp.files if f.kind == "labels"]
    if not files:
        return None
    dirs = CompetitionDirs.of(data_dir, slug)
    raw = kaggle.read_raw_records(dirs.raw, [files[0].name])[files[0].name]
    record = table_record(dirs.tables, files[0], raw["sha256"])
    if record is None:
        raise FileNotFoundError(
            f"{files[0].table_name} is not in {dirs.tables}: run the prepare stage first"
        )
    return {"name": record["name"], "sha256": record["sha256"]}


def original_manifest(slug: str, split_name: str, data_dir: str) -> dict[str, Any]:
    """The extraction manifest of a split's original-image shards (their content hashes)."""
    folder = CompetitionDirs.of(data_dir, slug).original_shards(split_name)
    try:
        return shards.read_manifest(folder)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{folder} has no complete original-image shards: run the prepare stage first"
        ) from None


def _load_train_labels(slug: str, data_dir: str) -> labels.LabelTable:
    dirs = CompetitionDirs.of(data_dir, slug)
    names = shards.read_table(dirs.original_shards("train"), ["image_name"])
    names = names.column("image_name").to_pylist()
    return labels.load_labels(resolve(slug), dirs.tables, names)


@task(
    name="validation split",
    cache_key_fn=key_from(
        "split",
        SPLIT_CODE_VERSION,
        ["slug", "train_manifest", "labels_record", "valid_pct", "seed", "n_folds"],
    ),
    persist_result=True,
)
def make_split(
    slug: str,
    train_manifest: dict[str, Any],
    labels_record: dict[str, Any] | None,
    data_dir: str,
    valid_pct: float,
    seed: int,
    n_folds: int | None,
) -> dict[str, Any]:
    """fast.ai's seeded random split over the labelled train images, stored as split.parquet."""
    table = _load_train_labels(slug, data_dir)
    result = split.random_split(table.names, valid_pct=valid_pct, seed=seed, n_folds=n_folds)
    path = CompetitionDirs.of(data_dir, slug).root / "shards" / SPLIT_FILE
    split.write_split(path, result)
    get_run_logger().info(
        "split: %d train, %d valid (seed %d) -> %s",
        len(result.train_names),
        len(result.valid_names),
        seed,
        path,
    )
    return {
        "path": f"shards/{SPLIT_FILE}",
        "train": len(result.train_names),
        "valid": len(result.valid_names),
        **result.settings,
    }


def split_complete(slug: str, data_dir: str, **settings: Any) -> bool:
    path = CompetitionDirs.of(data_dir, slug).root / "shards" / SPLIT_FILE
    try:
        return split.read_split(path).settings == {
            "valid_pct": settings["valid_pct"],
            "seed": settings["seed"],
            "n_folds": settings["n_folds"],
        }
    except (OSError, ValueError):
        return False


def run_split(
    slug: str, data_dir: str, valid_pct: float, seed: int, n_folds: int | None
) -> dict[str, Any]:
    """Run `make_split`, Cached unless split.parquet is missing or has other settings."""
    params = dict(
        slug=slug,
        train_manifest=original_manifest(slug, "train", data_dir),
        labels_record=labels_fingerprint(slug, data_dir),
        data_dir=data_dir,
        valid_pct=valid_pct,
        seed=seed,
        n_folds=n_folds,
    )
    complete = split_complete(slug, data_dir, valid_pct=valid_pct, seed=seed, n_folds=n_folds)
    return run_cached(make_split, outputs_complete=complete, **params)


@task(
    name="resize",
    task_run_name="resize {split_name} to {size}px",
    cache_key_fn=key_from(
        "resize",
        str(resize.FORMAT_VERSION),
        ["slug", "split_name", "size", "method", "source", "labels_record"],
    ),
    persist_result=True,
)
def resize_split(
    slug: str,
    split_name: str,
    size: int,
    method: str,
    source: dict[str, Any],
    labels_record: dict[str, Any] | None,
    data_dir: str,
    dask_address: str | None,
) -> dict[str, Any]:
    """Decode + resize one split's original shards on Dask into shards/<size>/<split>/."""
    logger = get_run_logger()
    dirs = CompetitionDirs.of(data_dir, slug)
    is_test = split_name != "train"
    table = None if is_test else _load_train_labels(slug, data_dir)
    progress = Progress(f"resize {split_name} to {size}px", unit="shards")
    with resize.dask_client(dask_address) as client:
        logger.info(
            "Dask: %s (dashboard %s)",
            client.scheduler.address,
            resize.dashboard_link(client) or "off",
        )
        manifest = resize.resize_split(
            dirs.original_shards(split_name),
            dirs.sized_shards(size, split_name),
            size,
            table,
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
            key=artifact_key(slug, split_name, str(size), "bad-images"),
            table=[{"image": b["name"], "reason": b["reason"]} for b in bad],
            description=f"{len(bad)} {split_name} images that failed to decode were left out "
            f"(listed in {dirs.sized_shards(size, split_name) / 'manifest.json'})",
        )
    return manifest


def resized(slug: str, split_name: str, size: int, method: str, data_dir: str) -> bool:
    """Are the sized shards complete and made from the current original shards?"""
    source = original_manifest(slug, split_name, data_dir)
    folder = CompetitionDirs.of(data_dir, slug).sized_shards(size, split_name)
    return resize.sized_complete(folder, source, size, method) is not None


def submit_resize(
    slug: str, split_name: str, size: int, method: str, data_dir: str, dask_address: str | None
) -> PrefectFuture[dict[str, Any]]:
    """Submit `resize_split`, Cached unless the sized shards are missing or incomplete."""
    return run_cached(
        resize_split,
        outputs_complete=resized(slug, split_name, size, method, data_dir),
        submit=True,
        slug=slug,
        split_name=split_name,
        size=size,
        method=method,
        source=original_manifest(slug, split_name, data_dir),
        labels_record=None if split_name != "train" else labels_fingerprint(slug, data_dir),
        data_dir=data_dir,
        dask_address=dask_address,
    )


@task(name="show batch", task_run_name="show batch at {size}px")
def show_batch(slug: str, size: int, data_dir: str, n: int = 16, seed: int = 0) -> str:
    """fast.ai's `show_batch`: a PNG grid of train images with their tags, written beside the
    shards and shown in the UI as a markdown artifact (the image embedded, plus its path)."""
    dirs = CompetitionDirs.of(data_dir, slug)
    folder = dirs.sized_shards(size, "train")
    sized = read_sized(folder)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(sized.names), size=min(n, len(sized.names)), replace=False))
    path = show.show_batch(
        sized.pixels[pick],
        None if sized.labels is None else sized.labels[pick],
        resolve(slug).classes,
        folder / "batch.png",
        ncols=4,
        title=f"{slug}: {len(pick)} train images at {size}px",
    )
    create_markdown_artifact(
        key=artifact_key(slug, "batch", str(size)),
        markdown=f"# A batch at {size}px\n\n![batch]({show.png_data_uri(path.read_bytes())})"
        f"\n\n`{path}`\n",
        description=f"{len(pick)} train images of {slug} with their tags",
    )
    return str(path)
