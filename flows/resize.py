"""Pre-resize: fast.ai's `data.resize(...)` done once, at scale, on any Dask cluster.

    resize = validation split (seeded, stored)  ->  for each size and split: decode + resize the
             original shards on Dask into shards/<size>/<split>/  ->  a picture of a batch

A LocalCluster is started only when some size/split still has work to do; with
`dask_address` the work goes to that existing cluster instead.
"""

from __future__ import annotations

import contextlib
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger

from flows.config import ResizeConfig
from planet import resize as resize_lib
from planet.layout import CompetitionDirs
from tasks import resize as resize_tasks
from tasks.progress import artifact_key

DEFAULT_CONFIG = ResizeConfig()


@flow(name="resize", flow_run_name="resize {config.competition}")
def resize(config: ResizeConfig = DEFAULT_CONFIG) -> dict[str, Any]:
    """The split, then every (size, split) of sized shards; returns counts and folders."""
    logger = get_run_logger()
    slug, data_dir = config.competition, str(config.data_path)
    dirs = CompetitionDirs.of(data_dir, slug)
    splits = [f.split for f in config.spec.image_files]
    sizes = config.all_sizes()
    split_info = resize_tasks.run_split(
        slug, data_dir, config.valid_pct, config.split_seed, config.n_folds
    )
    pending = [
        (size, name)
        for size in sizes
        for name in splits
        if not resize_tasks.resized(slug, name, size, config.method, data_dir)
    ]
    cluster = resize_lib.dask_client(config.dask_address) if pending else contextlib.nullcontext()
    with cluster as client:
        address = client.scheduler.address if client is not None else config.dask_address
        if client is not None:
            logger.info(
                "Dask scheduler %s, dashboard %s", address, resize_lib.dashboard_link(client)
            )
        futures = {
            (size, name): resize_tasks.submit_resize(
                slug, name, size, config.method, data_dir, address
            )
            for size in sizes
            for name in splits
        }
        manifests = {key: future.result() for key, future in futures.items()}
    batch_png = resize_tasks.show_batch(slug, min(config.sizes), data_dir)
    summary = {
        "split": split_info,
        "sized": {
            str(size): {
                name: {
                    "count": m["count"],
                    "shards": len(m["shards"]),
                    "bad_images": len(m.get("bad_images", [])),
                    "dir": str(dirs.sized_shards(size, name)),
                }
                for (s, name), m in manifests.items()
                if s == size
            }
            for size in sizes
        },
        "batch_png": batch_png,
    }
    create_markdown_artifact(
        key=artifact_key(slug, "resize-summary"),
        markdown=_summary_markdown(slug, summary),
        description=f"resize {slug}",
    )
    return summary


def _summary_markdown(slug: str, summary: dict[str, Any]) -> str:
    s = summary["split"]
    lines = [
        f"# Resized {slug}",
        "",
        f"Split: {s['train']:,} train / {s['valid']:,} valid (seed {s['seed']})",
        "",
        "| size | split | images | shards | left out | folder |",
        "|---:|---|---:|---:|---:|---|",
    ]
    for size, per_split in summary["sized"].items():
        for name, info in per_split.items():
            lines.append(
                f"| {size} | {name} | {info['count']:,} | {info['shards']} | "
                f"{info['bad_images']} | `{info['dir']}` |"
            )
    lines += ["", f"A batch: `{summary['batch_png']}`"]
    return "\n".join(lines) + "\n"
