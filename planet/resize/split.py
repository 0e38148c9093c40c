"""A split: resize every shard of a complete original-image folder (`resize_split`), in this
process or on a Dask cluster, and the manifest that says the sized folder is complete.

`resize_shard` is a pure function of file paths and small picklable values, so it runs
anywhere: in this process (`client=None`) or mapped over a Dask cluster (`client.map`, one
task per shard, progress reported per finished shard with `as_completed`). The caller passes
one `LabelTable` for the split; `resize_split` reads each source shard's names and hands each
task only its own shard's labels (~60 KB), so nothing large is scattered and a task can be
re-run anywhere. Dask retries a task whose worker died (`allowed-failures`, default 3); a
killed stage keeps its finished shards, and a rerun redoes only what is missing.
A TRAIN image that fails to decode is left out and listed in the manifest; a TEST image that
fails raises `BadImageError` (a submission must cover every test image), leaving no manifest.
Shards already finished stay: they are reused when the re-extracted source has them unchanged.

`manifest.json` is written last (format, size, method, pixel layout, classes, label kind,
count, the source manifest's sha256 and count, bad images, shards with rows/bytes/sha256,
config); its presence means the folder is complete (`sized_complete`).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from planet.constants import MANIFEST
from planet.fileio import (
    files_intact,
    folder_lock,
    manifest_of,
    remove_stale_temps,
    sha256_json,
    write_json_atomic,
)
from planet.resize.image import RESAMPLE, Method, check_method, check_size
from planet.resize.shard import COMPRESSION, labels_digest, read_names, resize_shard, shard_schema
from planet.store import shards
from planet.store.labels import LabelError, LabelTable
from planet.store.sized import CHANNELS, FORMAT, FORMAT_VERSION

if TYPE_CHECKING:
    import distributed

Progress = Callable[[int, int], None]


def _source_record(source_manifest: dict[str, Any]) -> dict[str, Any]:
    return {
        "sha256": sha256_json(source_manifest),
        "count": source_manifest["count"],
        "shards": len(source_manifest["shards"]),
    }


def _split_config(size: int, method: str, is_test: bool) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "size": size,
        "method": method,
        "resample": RESAMPLE,
        "is_test": is_test,
        "compression": COMPRESSION,
    }


def sized_complete(
    folder: str | os.PathLike[str],
    source_manifest: dict[str, Any],
    size: int,
    method: str = "squish",
    labels: LabelTable | None = None,
) -> dict[str, Any] | None:
    """The manifest of `folder` when it holds the sized shards of exactly this source
    (original-image manifest), size and method, every shard file present with its recorded
    size; else None. With `labels`, they must also be the labels it was made with. Cheap: reads
    the manifest and stats the shard files."""
    folder = Path(folder)
    manifest = manifest_of(folder, FORMAT, FORMAT_VERSION)
    try:
        if (
            manifest is None
            or manifest["size"] != size
            or manifest["method"] != method
            or manifest["source"]["sha256"] != sha256_json(source_manifest)
            or (labels is not None and manifest["labels_sha256"] != labels_digest(labels))
            or not files_intact(folder, manifest["shards"])
        ):
            return None
    except (AttributeError, KeyError, TypeError):  # not a manifest of ours
        return None
    return manifest


def _jobs(
    src_dir: Path, dest_dir: Path, source: dict[str, Any], labels: LabelTable | None
) -> list[dict[str, Any]]:
    """One `resize_shard` call's arguments per source shard, each with only its own labels
    (a missing label fails here, before any work)."""
    jobs = []
    missing: list[str] = []
    for rec in source["shards"]:
        src = src_dir / rec["name"]
        shard_labels = None
        if labels is not None:
            names = read_names(src)
            missing += [n for n in names if n not in labels.index]
            if not missing:
                shard_labels = labels.take(names)
        jobs.append(
            {
                "src": src,
                "dest": dest_dir / rec["name"],
                "labels": shard_labels,
                "src_sha256": rec["sha256"],
            }
        )
    if missing:
        shown = ", ".join(missing[:10]) + (
            f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        )
        raise LabelError(
            f"{len(missing)} image(s) of {src_dir} have no label: {shown}; check the labels file"
        )
    return jobs


def resize_split(
    src_dir: str | os.PathLike[str],
    dest_dir: str | os.PathLike[str],
    size: int,
    labels: LabelTable | None,
    *,
    method: Method = "squish",
    is_test: bool = False,
    client: distributed.Client | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Resize every shard of the complete original-image folder `src_dir` into `dest_dir`
    (one task per shard on the Dask `client`, or one after another in this process when it is
    None), then write `manifest.json` last and return it. `progress(done, total)` is called in
    shards, as each finishes.

    Idempotent and resumable: a complete split returns at once; otherwise finished shards made
    from the same sources and settings are kept and only the rest is done. Raises
    `BadImageError` for an undecodable test image, `LabelError` for a train image without a
    label, `ShardError` when `src_dir` is not a complete extraction."""
    src_dir, dest_dir = Path(src_dir), Path(dest_dir)
    size = check_size(size)
    check_method(method)
    if is_test and labels is not None:
        raise ValueError("test splits have no labels: pass labels=None with is_test=True")
    if not is_test and labels is None:
        raise ValueError(f"{src_dir}: the train split needs its labels (a LabelTable)")
    source = shards.verify(src_dir)
    total = len(source["shards"])
    with folder_lock(dest_dir):
        complete = sized_complete(dest_dir, source, size, method, labels)
        if complete is not None:
            if progress is not None:
                progress(total, total)
            return complete
        (dest_dir / MANIFEST).unlink(missing_ok=True)
        remove_stale_temps(dest_dir)
        wanted = {rec["name"] for rec in source["shards"]}
        for stray in shards.shard_files(dest_dir):
            if stray.name not in wanted:
                stray.unlink()
        jobs = _jobs(src_dir, dest_dir, source, labels)
        records = _run(jobs, size, method, is_test, client, progress)
        bad = [{**b, "shard": r["name"]} for r in records for b in r["bad_images"]]
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "split": source.get("split"),
            "size": size,
            "method": method,
            "pixels": {
                "column": "pixels",
                "layout": "HWC",
                "dtype": "uint8",
                "channels": CHANNELS,
                "height": size,
                "width": size,
                "bytes_per_image": size * size * CHANNELS,
            },
            "label_kind": None if labels is None else labels.kind,
            "classes": None if labels is None else list(labels.classes),
            "labels_sha256": labels_digest(labels),
            "columns": {f.name: str(f.type) for f in shard_schema(size, labels)},
            "compression": COMPRESSION,
            "count": sum(r["rows"] for r in records),
            "source": _source_record(source),
            "bad_images": bad,
            "shards": [
                {k: r[k] for k in ("name", "rows", "bytes", "sha256")}
                | {"source_sha256": r["source"]["sha256"]}
                for r in records
            ],
            "config": _split_config(size, method, is_test),
        }
        write_json_atomic(dest_dir / MANIFEST, manifest)
    return manifest


def _shard_task(
    src: Path,
    dest: Path,
    labels: LabelTable | None,
    src_sha256: str,
    *,
    size: int,
    method: Method,
    is_test: bool,
) -> dict[str, Any]:
    """`resize_shard` with the per-shard values positional (for `client.map`)."""
    return resize_shard(
        src, dest, size, labels, method=method, is_test=is_test, src_sha256=src_sha256
    )


def _run(
    jobs: list[dict[str, Any]],
    size: int,
    method: str,
    is_test: bool,
    client: distributed.Client | None,
    progress: Progress | None,
) -> list[dict[str, Any]]:
    """Every job's record, in job order; in this process or on Dask."""
    total = len(jobs)
    records: list[dict[str, Any] | None] = [None] * total
    if progress is not None:
        progress(0, total)
    if client is None:
        for i, job in enumerate(jobs):
            records[i] = resize_shard(
                job["src"],
                job["dest"],
                size,
                job["labels"],
                method=method,  # type: ignore[arg-type]
                is_test=is_test,
                src_sha256=job["src_sha256"],
            )
            if progress is not None:
                progress(i + 1, total)
        return records  # type: ignore[return-value]

    from distributed import as_completed

    token = uuid.uuid4().hex[:8]
    futures = client.map(
        _shard_task,
        [j["src"] for j in jobs],
        [j["dest"] for j in jobs],
        [j["labels"] for j in jobs],
        [j["src_sha256"] for j in jobs],
        size=size,
        method=method,
        is_test=is_test,
        key=[f"resize_shard-{size}-{j['dest'].parent.name}-{j['dest'].stem}-{token}" for j in jobs],
    )
    index = {f.key: i for i, f in enumerate(futures)}
    done = 0
    try:
        for future in as_completed(futures):
            records[index[future.key]] = future.result()
            done += 1
            if progress is not None:
                progress(done, total)
    except BaseException:
        client.cancel(futures)
        raise
    return records  # type: ignore[return-value]
