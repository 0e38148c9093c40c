"""Parquet shards of images: the writer, the manifest reader and the readers every stage uses.

A shard folder holds `part-00000.parquet`, `part-00001.parquet`, ... (images in source order) and
`manifest.json`, written last: its presence means the folder is complete. Each shard is one
parquet file with one row group and the columns of `IMAGE_SCHEMA`:

- `image_name` (string): the file stem, e.g. `train_0`, `cat.0`, `1`;
- `jpeg` (binary): the image file's bytes, unchanged;
- `nbytes` (int32): `len(jpeg)`, so sizes can be read without the bytes.

Compression: none (measurements: bench/README.md). JPEG bytes are
already entropy-coded; 2% of disk is not worth a codec on every read, and uncompressed pages
keep the files readable by any parquet reader. Dictionary encoding is off (names are unique)
and column statistics are written for `image_name` only (min/max of JPEG bytes are useless).

`pyarrow.parquet.read_table(folder)` does not work on a shard folder (it tries to read
`manifest.json` as parquet); use `read_table(folder)` here, or pass the shard paths.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from planet.constants import MANIFEST
from planet.fileio import atomic_path, sha256_file, write_json_atomic

FORMAT = "planet-image-shards"
FORMAT_VERSION = 1
COMPRESSION = "none"
SHARD_PREFIX = "part-"
SHARD_SUFFIX = ".parquet"

IMAGE_SCHEMA = pa.schema(
    [
        pa.field("image_name", pa.string(), nullable=False),
        pa.field("jpeg", pa.binary(), nullable=False),
        pa.field("nbytes", pa.int32(), nullable=False),
    ]
)
IMAGE_COLUMNS: dict[str, str] = {f.name: str(f.type) for f in IMAGE_SCHEMA}


class ShardError(Exception):
    """A shard folder is incomplete or does not match its manifest."""


def shard_name(index: int) -> str:
    """The file name of shard number `index`: `part-00000.parquet`, ..."""
    return f"{SHARD_PREFIX}{index:05d}{SHARD_SUFFIX}"


def shard_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Every `part-*.parquet` file in `folder`, sorted by name (complete or not)."""
    return sorted(Path(folder).glob(f"{SHARD_PREFIX}*{SHARD_SUFFIX}"))


def image_table(names: Sequence[str], jpegs: Sequence[bytes]) -> pa.Table:
    """A table of `IMAGE_SCHEMA` from parallel lists of names and JPEG bytes."""
    if len(names) != len(jpegs):
        raise ValueError(f"{len(names)} names but {len(jpegs)} images")
    sizes = np.fromiter(map(len, jpegs), dtype=np.int64, count=len(jpegs))
    offsets = np.zeros(len(jpegs) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    if offsets[-1] >= 2**31:
        raise ValueError(
            f"{len(jpegs)} images of {offsets[-1]:,} bytes do not fit in one shard (2 GiB at "
            "most); use a smaller shard size"
        )
    # one copy of the bytes into a single buffer: ~10x faster than pa.array(list of bytes)
    data = pa.Array.from_buffers(
        pa.binary(),
        len(jpegs),
        [None, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(b"".join(jpegs))],
    )
    return pa.Table.from_arrays(
        [pa.array(names, pa.string()), data, pa.array(sizes.astype(np.int32), pa.int32())],
        schema=IMAGE_SCHEMA,
    )


def encode_shard(table: pa.Table) -> pa.Buffer:
    """The parquet bytes of `table` (one row group, no compression, deterministic)."""
    sink = pa.BufferOutputStream()
    stats = ["image_name"] if "image_name" in table.column_names else False
    pq.write_table(
        table,
        sink,
        row_group_size=max(1, table.num_rows),
        compression=COMPRESSION,
        use_dictionary=False,
        write_statistics=stats,
    )
    return sink.getvalue()


def write_shard(path: str | os.PathLike[str], table: pa.Table) -> dict[str, Any]:
    """Write `table` to `path` atomically (temp file, fsync, rename); return its manifest
    record: name, rows, bytes, sha256 and the first/last `image_name`."""
    path = Path(path)
    buf = encode_shard(table)
    digest = hashlib.sha256(buf).hexdigest()
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(buf)
    record: dict[str, Any] = {
        "name": path.name,
        "rows": table.num_rows,
        "bytes": buf.size,
        "sha256": digest,
    }
    if "image_name" in table.column_names and table.num_rows:
        names = table.column("image_name")
        record["first"] = names[0].as_py()
        record["last"] = names[-1].as_py()
    return record


def read_manifest(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a complete shard folder; `ShardError` if there is none or it is not one."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ShardError(
            f"{folder} has no {MANIFEST}: its images were never extracted or the extraction "
            "did not finish; run the extract stage again"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ShardError(f"{path} is not valid JSON ({exc}); delete it and extract again") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ShardError(f"{path} is not a {FORMAT} manifest; delete the folder and extract again")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ShardError(
            f"{path} has format version {manifest.get('format_version')}, this code reads "
            f"version {FORMAT_VERSION}; extract again"
        )
    return manifest


def write_manifest(folder: str | os.PathLike[str], manifest: dict[str, Any]) -> Path:
    """Write `manifest.json` atomically (call it last: it marks the folder complete)."""
    return write_json_atomic(Path(folder) / MANIFEST, manifest)


def shard_paths(folder: str | os.PathLike[str]) -> list[Path]:
    """The shard files of a complete folder, in order (from its manifest)."""
    folder = Path(folder)
    return [folder / s["name"] for s in read_manifest(folder)["shards"]]


def read_shard(
    path: str | os.PathLike[str], columns: Sequence[str] = ("image_name", "jpeg")
) -> tuple[list[str], list[bytes]]:
    """All (names, JPEG bytes) of one shard file, as two lists in shard order."""
    table = pq.read_table(path, columns=list(columns))
    return table.column(columns[0]).to_pylist(), table.column(columns[1]).to_pylist()


def iter_batches(
    folder: str | os.PathLike[str], batch_rows: int = 1024
) -> Iterator[tuple[list[str], list[bytes]]]:
    """Batches of (names, JPEG bytes) over a complete shard folder, in order, at most
    `batch_rows` images each; memory stays at about one batch."""
    for path in shard_paths(folder):
        pf = pq.ParquetFile(path)
        for batch in pf.iter_batches(batch_size=batch_rows, columns=["image_name", "jpeg"]):
            yield batch.column(0).to_pylist(), batch.column(1).to_pylist()


def iter_images(folder: str | os.PathLike[str]) -> Iterator[tuple[str, bytes]]:
    """Every (image_name, JPEG bytes) of a complete shard folder, in order."""
    for names, jpegs in iter_batches(folder):
        yield from zip(names, jpegs, strict=True)


def read_table(folder: str | os.PathLike[str], columns: Sequence[str] | None = None) -> pa.Table:
    """The whole folder as one table (all shards, in order); `columns` to read fewer."""
    cols = list(columns) if columns is not None else None
    tables = [pq.read_table(p, columns=cols) for p in shard_paths(folder)]
    return pa.concat_tables(tables)


def verify(folder: str | os.PathLike[str], *, checksums: bool = False) -> dict[str, Any]:
    """Check a shard folder against its manifest: every shard present with its recorded size
    (and, with `checksums`, its sha256 and row count). Returns the manifest; raises
    `ShardError` listing every problem found."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    problems: list[str] = []
    rows = 0
    for rec in manifest["shards"]:
        path = folder / rec["name"]
        rows += rec["rows"]
        if not path.is_file():
            problems.append(f"{rec['name']} is missing")
            continue
        size = path.stat().st_size
        if size != rec["bytes"]:
            problems.append(f"{rec['name']} has {size} bytes, the manifest says {rec['bytes']}")
            continue
        if checksums:
            if sha256_file(path) != rec["sha256"]:
                problems.append(f"{rec['name']} sha256 differs from the manifest")
            elif pq.ParquetFile(path).metadata.num_rows != rec["rows"]:
                problems.append(f"{rec['name']} row count differs from the manifest")
    if rows != manifest["count"]:
        problems.append(f"shards hold {rows} rows, the manifest count is {manifest['count']}")
    if problems:
        raise ShardError(
            f"{folder} does not match its {MANIFEST}: "
            + "; ".join(problems)
            + "; extract again (delete the folder to start over)"
        )
    return manifest
