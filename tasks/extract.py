"""Prefect tasks over planet.extract: images into parquet shards, CSVs into tables/.

Cache keys hash the downloaded file's record (its sha256), the file's spec and the extraction
settings; results are manifests with names relative to the competition folder.
"""

from __future__ import annotations

from typing import Any

from prefect.logging import get_run_logger

from planet.extract.images import extract_images
from planet.extract.tables import extract_table
from planet.store.shards import FORMAT_VERSION
from planet.workspace import Workspace
from tasks.caching import key_from, stage_task
from tasks.progress import Progress


def _images_done(
    ws: Workspace, file_name: str, source: dict[str, Any], shard_size: int, write_files: bool
) -> bool:
    out = ws.original(ws.competition.file(file_name).split or "")
    return (
        out.complete(source["sha256"], shard_size=shard_size, write_files=write_files) is not None
    )


@stage_task(
    name="extract images",
    task_run_name="extract {file_name}",
    cache_key_fn=key_from(
        "extract-images",
        FORMAT_VERSION,
        ["ws", "file_name", "source", "shard_size", "write_files"],
    ),
    done=_images_done,
)
def extract_archive(
    ws: Workspace, file_name: str, source: dict[str, Any], shard_size: int, write_files: bool
) -> dict[str, Any]:
    """Stream one image archive into original-image parquet shards (shards/original/<split>)."""
    data_file = ws.competition.file(file_name)
    out = ws.original(data_file.split or "")
    progress = Progress(f"extract {file_name}", unit="images")
    manifest = extract_images(
        ws.path(source["path"]),
        data_file,
        out.folder,
        shard_size=shard_size,
        files_dir=out.files_folder if write_files else None,
        progress=progress,
        archive_sha256=source["sha256"],
    )
    progress.done()
    get_run_logger().info(
        "%s: %s images in %d shards under %s",
        file_name,
        f"{manifest['count']:,}",
        len(manifest["shards"]),
        out.folder,
    )
    return manifest


@stage_task(
    name="extract table",
    task_run_name="extract {file_name}",
    cache_key_fn=key_from("extract-table", FORMAT_VERSION, ["ws", "file_name", "source"]),
    done=lambda ws, file_name, source: ws.table(file_name).complete(source["sha256"]) is not None,
)
def unpack_table(ws: Workspace, file_name: str, source: dict[str, Any]) -> dict[str, Any]:
    """Unzip (or copy) one CSV into tables/."""
    table = ws.table(file_name)
    record = extract_table(ws.path(source["path"]), table.data_file, table.folder)
    get_run_logger().info("%s -> tables/%s (%s rows)", file_name, record["name"], record["rows"])
    return record
