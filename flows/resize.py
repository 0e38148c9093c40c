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
from flows.notify import HOOKS
from planet import resize as resize_lib
from tasks.progress import artifact_key
from tasks.resize import picture_batch, resize_images, split_train_images

DEFAULT_CONFIG = ResizeConfig()


@flow(name="resize", flow_run_name="resize {config.competition}", **HOOKS)
def resize(config: ResizeConfig = DEFAULT_CONFIG) -> dict[str, Any]:
    """The split, then every (size, split) of sized shards; returns counts and folders."""
    logger = get_run_logger()
    ws, options = config.workspace, config.resize
    splits = [f.split for f in ws.competition.image_files]
    sizes = config.all_sizes()
    logger.info("%s", config.sizes_note())
    labels_record = ws.labels_record()
    split_info = split_train_images(
        ws=ws,
        train_manifest=ws.original("train").read_manifest(),
        labels_record=labels_record,
        valid_pct=options.valid_pct,
        seed=options.split_seed,
        n_folds=config.split_folds,
    )
    sources = {name: ws.original(name).read_manifest() for name in splits}
    pending = [
        (size, name)
        for size in sizes
        for name in splits
        if ws.sized(size, name).complete(sources[name], options.method) is None
    ]
    cluster = resize_lib.dask_client(options.dask_address) if pending else contextlib.nullcontext()
    with cluster as client:
        address = client.scheduler.address if client is not None else options.dask_address
        if client is not None:
            logger.info(
                "Dask scheduler %s, dashboard %s", address, resize_lib.dashboard_link(client)
            )
        futures = {
            (size, name): resize_images.submit(
                ws=ws,
                split_name=name,
                size=size,
                method=options.method,
                source=sources[name],
                labels_record=None if name != "train" else labels_record,
                dask_address=address,
            )
            for size in sizes
            for name in splits
        }
        manifests = {key: future.result() for key, future in futures.items()}
    batch_png = picture_batch(ws=ws, size=min(sizes))
    summary = {
        "split": split_info,
        "sized": {
            str(size): {
                name: {
                    "count": m["count"],
                    "shards": len(m["shards"]),
                    "bad_images": len(m.get("bad_images", [])),
                    "dir": str(ws.sized(size, name).folder),
                }
                for (s, name), m in manifests.items()
                if s == size
            }
            for size in sizes
        },
        "batch_png": batch_png,
    }
    create_markdown_artifact(
        key=artifact_key(ws.slug, "resize-summary"),
        markdown=_summary_markdown(ws.slug, summary),
        description=f"resize {ws.slug}",
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
