"""Prepare a competition's data: fetch the Kaggle files, then extract them.

    prepare = fetch (list files, download each, resuming)  ->  extract (archives -> parquet shards,
              CSVs -> tables/)

`fetch` and `extract` are subflows, each runnable alone (`extract` then reads raw/manifest.json).
Every task is cached on content: a second run shows them Cached and does no work; a task whose
outputs were deleted runs again.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.logging import get_run_logger

from flows.config import PrepareConfig
from flows.notify import HOOKS
from planet import kaggle
from tasks.extract import extract_archive, unpack_table
from tasks.fetch import fetch_file, list_remote_files
from tasks.progress import artifact_key

DEFAULT_CONFIG = PrepareConfig()


@flow(name="fetch", flow_run_name="fetch {config.competition}", **HOOKS)
def fetch(config: PrepareConfig) -> dict[str, dict[str, Any]]:
    """Download the selected files of the competition into raw/ (skipping complete ones)."""
    ws, endpoint = config.workspace, config.kaggle_endpoint
    listing = {f["name"]: f for f in list_remote_files(ws.slug, endpoint)}
    wanted = config.selected_files()
    missing = [name for name in wanted if name not in listing]
    if missing:
        raise kaggle.KaggleNotFoundError(
            f"{ws.slug} does not list {missing} (it lists {sorted(listing)}); "
            "check the competition and the file names"
        )
    futures = {
        name: fetch_file.submit(ws=ws, remote=listing[name], endpoint=endpoint) for name in wanted
    }
    records = {name: future.result() for name, future in futures.items()}
    create_table_artifact(
        key=artifact_key(ws.slug, "raw-files"),
        table=[
            {"file": r["name"], "bytes": r["size"], "sha256": r["sha256"]} for r in records.values()
        ],
        description=f"Kaggle files of {ws.slug} in {ws.raw_dir}",
    )
    return records


@flow(name="extract", flow_run_name="extract {config.competition}", **HOOKS)
def extract(config: PrepareConfig, raw: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Images -> original-image parquet shards per split; CSVs -> tables/."""
    ws, options = config.workspace, config.prepare
    names = config.selected_files()
    raw = raw if raw is not None else {name: ws.raw(name).read() for name in names}
    image_futures, tables = {}, {}
    for name in names:
        data_file = ws.competition.file(name)
        if data_file.kind == "images":
            image_futures[data_file.split] = extract_archive.submit(
                ws=ws,
                file_name=name,
                source=raw[name],
                shard_size=options.shard_size,
                write_files=options.write_files,
            )
        else:
            tables[name] = unpack_table(ws=ws, file_name=name, source=raw[name])
    images = {split: future.result() for split, future in image_futures.items()}
    return {
        "images": {
            split: {
                "count": m["count"],
                "shards": len(m["shards"]),
                "dir": str(ws.original(split).folder),
            }
            for split, m in images.items()
        },
        "tables": {
            name: {"table": t["name"], "rows": t["rows"], "path": str(ws.tables_dir / t["name"])}
            for name, t in tables.items()
        },
    }


@flow(name="prepare", flow_run_name="prepare {config.competition}", **HOOKS)
def prepare(config: PrepareConfig = DEFAULT_CONFIG) -> dict[str, Any]:
    """Fetch then extract; returns a JSON-able summary (counts, paths)."""
    logger = get_run_logger()
    raw = fetch(config)
    extracted = extract(config, raw)
    summary = {
        "competition": config.competition,
        "data_dir": str(config.data_path),
        "raw": {name: {"bytes": r["size"], "sha256": r["sha256"]} for name, r in raw.items()},
        **extracted,
    }
    create_markdown_artifact(
        key=artifact_key(config.competition, "prepare-summary"),
        markdown=_summary_markdown(summary),
        description=f"prepare {config.competition}",
    )
    for split, info in extracted["images"].items():
        logger.info("%s: %s images -> %s", split, f"{info['count']:,}", info["dir"])
    return summary


def _summary_markdown(summary: dict[str, Any]) -> str:
    lines = [
        f"# Prepared {summary['competition']}",
        "",
        f"Data directory: `{summary['data_dir']}`",
        "",
        "| split | images | shards | folder |",
        "|---|---:|---:|---|",
    ]
    for split, info in summary["images"].items():
        lines.append(f"| {split} | {info['count']:,} | {info['shards']} | `{info['dir']}` |")
    lines += ["", "| table | rows | path |", "|---|---:|---|"]
    for info in summary["tables"].values():
        lines.append(f"| {info['table']} | {info['rows']:,} | `{info['path']}` |")
    return "\n".join(lines) + "\n"
