"""Look for secrets in everything a run leaves behind: plain bytes, SQLite tables, zip members
(torch checkpoints, Kaggle zips) and parquet files (metadata and text columns)."""

from __future__ import annotations

import base64
import sqlite3
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SQLITE_MAGIC = b"SQLite format 3\x00"


@dataclass(frozen=True)
class Hit:
    path: Path
    where: str  # "bytes", "table <name>", "member <name>", "parquet"
    needle: str


def needles(secret: str, user: str | None = None) -> dict[str, bytes]:
    """The forms a secret can leak in: itself, and base64 of `user:secret` (basic auth)."""
    out = {"plain": secret.encode()}
    if user is not None:
        out["basic-auth"] = base64.b64encode(f"{user}:{secret}".encode())
    return out


def _found(data: bytes, wanted: dict[str, bytes]) -> Iterator[str]:
    return (name for name, needle in wanted.items() if needle in data)


def _sqlite_rows(path: Path) -> Iterator[tuple[str, bytes]]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for row in con.execute(f'SELECT * FROM "{table}"'):  # noqa: S608 (names from the db)
                yield table, repr(row).encode()
    finally:
        con.close()


def _parquet_text(path: Path) -> bytes:
    parts = [repr(pq.read_metadata(path).metadata).encode()]
    table = pq.read_table(path)
    for column in table.columns:
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            parts.append("\n".join(map(str, column.to_pylist())).encode())
    return b"\n".join(parts)


def scan_file(path: Path, wanted: dict[str, bytes]) -> tuple[list[Hit], list[str]]:
    """Hits in one file, and the views it was scanned in (bytes, tables, members...)."""
    data = path.read_bytes()
    hits = [Hit(path, "bytes", n) for n in _found(data, wanted)]
    views = ["bytes"]
    if data.startswith(SQLITE_MAGIC):
        views.append("sqlite")
        for table, row in _sqlite_rows(path):
            hits += [Hit(path, f"table {table}", n) for n in _found(row, wanted)]
    elif zipfile.is_zipfile(path):
        views.append("zip")
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                hits += [
                    Hit(path, f"member {info.filename}", n) for n in _found(z.read(info), wanted)
                ]
    elif path.suffix == ".parquet":
        views.append("parquet")
        hits += [Hit(path, "parquet", n) for n in _found(_parquet_text(path), wanted)]
    return hits, views


def scan_tree(
    root: Path, wanted: dict[str, bytes], skip: Iterable[Path] = ()
) -> tuple[list[Hit], dict[str, int]]:
    """Every hit under `root` (leaving out `skip` folders), and how many files each view saw."""
    skipped = [p.resolve() for p in skip]
    hits: list[Hit] = []
    seen: dict[str, int] = {}
    for path in sorted(root.rglob("*")):
        real = path.resolve()
        if not path.is_file() or any(real.is_relative_to(s) for s in skipped):
            continue
        found, views = scan_file(path, wanted)
        hits += found
        for view in views:
            seen[view] = seen.get(view, 0) + 1
    return hits, seen
