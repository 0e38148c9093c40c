"""Prefect tasks over planet.extract: images into parquet shards, CSVs into tables/.

Cache keys hash the downloaded file's record (its sha256), the file's spec and the
extraction settings; results are manifests with names relative to the competition folder.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.futures import PrefectFuture
from prefect.logging import get_run_logger

from planet.competitions import resolve
from planet.extract import images, tables
from planet.layout import CompetitionDirs
from planet.store.shards import FORMAT_VERSION
from tasks.caching import key_from, run_cached
from tasks.progress import Progress


@task(
    name="extract images",
    task_run_name="extract {file_name}",
    cache_key_fn=key_from(
        "extract-images",
        FORMAT_VERSION,
        ["slug", "file_name", "source", "shard_size", "write_files"],
    ),
    persist_result=True,
)
def extract_images(
    slug: str,
    file_name: str,
    source: dict[str, Any],
    data_dir: str,
    shard_size: int,
    write_files: bool = False,
) -> dict[str, Any]:
    """Stream one image archive into original-image parquet shards (shards/original/<split>)."""
    dirs = CompetitionDirs.of(data_dir, slug)
    data_file = resolve(slug).file(file_name)
    progress = Progress(f"extract {file_name}", unit="images")
    manifest = images.extract_images(
        dirs.root / source["path"],
        data_file,
        dirs.original_shards(data_file.split),
        shard_size=shard_size,
        files_dir=dirs.image_folder(data_file.split) if write_files else None,
        progress=progress,
        archive_sha256=source["sha256"],
    )
    progress.done()
    get_run_logger().info(
        "%s: %s images in %d shards under %s",
        file_name,
        f"{manifest['count']:,}",
        len(manifest["shards"]),
        dirs.original_shards(data_file.split),
    )
    return manifest


def images_complete(
    slug: str,
    file_name: str,
    source: dict[str, Any],
    data_dir: str,
    shard_size: int,
    write_files: bool = False,
) -> bool:
    dirs = CompetitionDirs.of(data_dir, slug)
    split = resolve(slug).file(file_name).split
    return (
        images.images_complete(
            dirs.original_shards(split),
            source["sha256"],
            shard_size=shard_size,
            files_dir=dirs.image_folder(split) if write_files else None,
        )
        is not None
    )


@task(
    name="extract table",
    task_run_name="extract {file_name}",
    cache_key_fn=key_from("extract-table", FORMAT_VERSION, ["slug", "file_name", "source"]),
    persist_result=True,
)
def extract_table(
    slug: str, file_name: str, source: dict[str, Any], data_dir: str
) -> dict[str, Any]:
    """Unzip (or copy) one CSV into tables/."""
    dirs = CompetitionDirs.of(data_dir, slug)
    data_file = resolve(slug).file(file_name)
    record = tables.extract_table(dirs.root / source["path"], data_file, dirs.tables)
    get_run_logger().info("%s -> tables/%s (%s rows)", file_name, record["name"], record["rows"])
    return record


def table_complete(slug: str, file_name: str, source: dict[str, Any], data_dir: str) -> bool:
    dirs = CompetitionDirs.of(data_dir, slug)
    return tables.table_complete(dirs.tables, resolve(slug).file(file_name), source["sha256"])


def submit_images(
    slug: str,
    file_name: str,
    source: dict[str, Any],
    data_dir: str,
    shard_size: int,
    write_files: bool = False,
) -> PrefectFuture[dict[str, Any]]:
    """Submit `extract_images`, Cached unless its shards are missing or incomplete."""
    params = dict(
        slug=slug,
        file_name=file_name,
        source=source,
        data_dir=data_dir,
        shard_size=shard_size,
        write_files=write_files,
    )
    return run_cached(
        extract_images, outputs_complete=images_complete(**params), submit=True, **params
    )


def run_table(slug: str, file_name: str, source: dict[str, Any], data_dir: str) -> dict[str, Any]:
    """Run `extract_table`, Cached unless the CSV is missing from tables/."""
    params = dict(slug=slug, file_name=file_name, source=source, data_dir=data_dir)
    return run_cached(extract_table, outputs_complete=table_complete(**params), **params)
