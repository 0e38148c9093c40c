"""Tables: a zipped CSV (`.csv.zip`) unzipped, or a `.csv` copied, into tables/ with its bytes
unchanged, and recorded in tables/manifest.json."""

from __future__ import annotations

import csv
import hashlib
import os
import zipfile
from pathlib import Path
from typing import Any

from planet.competitions import DataFile
from planet.constants import MANIFEST
from planet.extract.members import KIND_WORDS, REDOWNLOAD, ArchiveError, member_error, safe_parts
from planet.extract.zip_stream import ZIP_READ_ERRORS, open_zip, zip_kind
from planet.fileio import atomic_path, folder_lock, read_json, sha256_file, write_json_atomic
from planet.store.shards import FORMAT_VERSION

__all__ = ["extract_table", "table_complete", "table_record"]

MAX_TABLE_BYTES = 2 << 30  # a CSV larger than this is refused
TABLES_FORMAT = "planet-tables"


def _count_rows(path: Path, label: str) -> int:
    """Data rows of a CSV (records after the header; blank lines not counted)."""
    try:
        with open(path, encoding="utf-8-sig", errors="replace", newline="") as fh:
            n = sum(1 for row in csv.reader(fh) if row)
    except csv.Error as exc:
        raise ArchiveError(f"{label} is not a readable CSV ({exc}); {REDOWNLOAD}") from exc
    return max(n - 1, 0)


def _copy_into(src: Any, tmp: Path, limit: int, what: str) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    with open(tmp, "wb") as out:
        while chunk := src.read(1 << 20):
            n += len(chunk)
            if n > limit:
                raise ArchiveError(f"{what} is larger than {limit:,} bytes; refusing it")
            h.update(chunk)
            out.write(chunk)
    return h.hexdigest(), n


def _csv_member(archive: Path, data_file: DataFile, zf: zipfile.ZipFile) -> zipfile.ZipInfo:
    candidates = []
    for info in zf.infolist():
        parts = safe_parts(archive, info.filename)
        kind = zip_kind(info)
        if kind == "dir" or not parts or parts[0] == "__MACOSX" or parts[-1].startswith("."):
            continue
        if kind != "file":
            raise member_error(archive, info.filename, KIND_WORDS.get(kind, "is special"))
        if len(parts) > 1:
            raise member_error(
                archive,
                info.filename,
                "has a folder path; expected one CSV at the top of the zip: refusing it",
            )
        candidates.append(info)
    exact = [i for i in candidates if i.filename == data_file.table_name]
    csvs = [i for i in candidates if i.filename.lower().endswith(".csv")]
    if exact:
        return exact[0]
    if len(csvs) == 1:
        return csvs[0]
    found = ", ".join(repr(i.filename) for i in candidates[:5]) or "nothing"
    raise ArchiveError(
        f"{archive}: expected one CSV ({data_file.table_name}) inside, found {found}; "
        "is this the right file?"
    )


def extract_table(
    source: str | os.PathLike[str],
    data_file: DataFile,
    out_dir: str | os.PathLike[str],
    *,
    source_sha256: str | None = None,
) -> dict[str, Any]:
    """Unzip a `.csv.zip` (or copy a `.csv`) into `out_dir/<table_name>` atomically, bytes
    unchanged (BOM and CRLF kept). Records it in `out_dir/manifest.json` and returns the
    record: name, sha256 and bytes of the CSV, rows (data rows after the header), source."""
    source = Path(source)
    out_dir = Path(out_dir)
    name = data_file.table_name
    if name is None:
        raise ValueError(f"{data_file.name} is not a CSV file (.csv or .csv.zip)")
    if not source.is_file():
        raise FileNotFoundError(f"{source} does not exist; download {data_file.name} first")
    src_record = {
        "name": source.name,
        "sha256": source_sha256 or sha256_file(source),
        "bytes": source.stat().st_size,
    }
    dest = out_dir / name
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as tmp:
        if data_file.format == "csv":
            with open(source, "rb") as fh:
                digest, size = _copy_into(fh, tmp, MAX_TABLE_BYTES, str(source))
        else:
            with open_zip(source) as zf:
                info = _csv_member(source, data_file, zf)
                label = f"{source}: member {info.filename!r}"
                if info.flag_bits & 0x1:
                    raise ArchiveError(f"{label} is encrypted; refusing it")
                if info.file_size > MAX_TABLE_BYTES:
                    raise ArchiveError(f"{label} would unpack to {info.file_size:,} bytes")
                try:
                    with zf.open(info) as member:
                        digest, size = _copy_into(member, tmp, MAX_TABLE_BYTES, label)
                except ZIP_READ_ERRORS as exc:
                    raise ArchiveError(
                        f"{label} is damaged ({exc}); the file is corrupt or truncated: "
                        + REDOWNLOAD
                    ) from exc
        if size == 0:
            raise ArchiveError(f"{source}: the CSV {name} is empty; " + REDOWNLOAD)
        rows = _count_rows(tmp, f"{source}: {name}")
    record = {"name": name, "sha256": digest, "bytes": size, "rows": rows, "source": src_record}
    with folder_lock(out_dir, wait=True):
        manifest = _read_tables_manifest(out_dir)
        manifest["tables"][name] = record
        write_json_atomic(out_dir / MANIFEST, manifest)
    return record


def _read_tables_manifest(folder: Path) -> dict[str, Any]:
    try:
        manifest = read_json(folder / MANIFEST)
    except (OSError, ValueError):
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("format") != TABLES_FORMAT:
        manifest = {"format": TABLES_FORMAT, "format_version": FORMAT_VERSION, "tables": {}}
    return manifest


def table_record(
    out_dir: str | os.PathLike[str], data_file: DataFile, source_sha256: str
) -> dict[str, Any] | None:
    """The record of `data_file`'s CSV in `out_dir` if it was extracted from the source with
    this sha256 and the file is still there with its recorded size; else None."""
    out_dir = Path(out_dir)
    record = _read_tables_manifest(out_dir)["tables"].get(data_file.table_name or "")
    if not record or record["source"]["sha256"] != source_sha256:
        return None
    path = out_dir / record["name"]
    if not path.is_file() or path.stat().st_size != record["bytes"]:
        return None
    return record


def table_complete(
    out_dir: str | os.PathLike[str], data_file: DataFile, source_sha256: str
) -> bool:
    """Whether `table_record` finds a complete extraction."""
    return table_record(out_dir, data_file, source_sha256) is not None
