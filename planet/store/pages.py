"""Where a parquet column's values lie in its file, so they can be memory-mapped in place.

pyarrow decodes a parquet column into new memory even when the file is memory-mapped and the
column is uncompressed and PLAIN-encoded (measured: reading a 56 MB shard with
`pq.read_table(..., memory_map=True)` grew the anonymous resident memory by 93 MB, and the
file was no longer mapped afterwards; bench/README.md). A `fixed_size_binary` column written
the way `planet.resize` writes sized shards (no compression, no dictionary, PLAIN pages) holds
its values as they are in memory: page after page, each page a run of whole values behind a
small Thrift header. `value_runs` reads those headers (parquet's Thrift compact protocol, only
as far as needed) and returns each page's (file offset, rows), so a reader can view the file
itself, e.g. with `np.memmap`, and copy nothing.

It returns None when the column cannot be viewed this way (compressed or dictionary-encoded
pages, a nested column, nulls): the caller then decodes it with pyarrow.
"""

from __future__ import annotations

import os
from typing import BinaryIO, NamedTuple

import pyarrow.parquet as pq

# parquet.thrift: PageType and Encoding values used here
_DATA_PAGE, _DICTIONARY_PAGE, _DATA_PAGE_V2 = 0, 2, 3
_PLAIN = 0
_HEADER_READ = 1 << 12  # bytes read to parse one page header (they are tens of bytes)

# Thrift compact protocol field types
_BOOL_TRUE, _BOOL_FALSE, _BYTE, _I16, _I32, _I64, _DOUBLE = 1, 2, 3, 4, 5, 6, 7
_BINARY, _LIST, _SET, _MAP, _STRUCT = 8, 9, 10, 11, 12


class ValueRun(NamedTuple):
    """`rows` consecutive values stored from byte `offset` of the file, `rows * width` bytes."""

    offset: int
    rows: int


class _Compact:
    """Just enough of a Thrift compact-protocol reader to parse parquet page headers."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise ValueError("page header runs past the bytes read")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def varint(self) -> int:
        shift = result = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def struct(self) -> dict[int, object]:
        """A struct's fields by id: integers and booleans as values, nested structs as dicts,
        anything else skipped (None)."""
        fields: dict[int, object] = {}
        last = 0
        while True:
            head = self.byte()
            kind = head & 0x0F
            if kind == 0:
                return fields
            delta = head >> 4
            last = last + delta if delta else self.zigzag()
            fields[last] = self.value(kind)

    def value(self, kind: int) -> object:
        if kind in (_BOOL_TRUE, _BOOL_FALSE):
            return kind == _BOOL_TRUE
        if kind == _BYTE:
            return self.byte()
        if kind in (_I16, _I32, _I64):
            return self.zigzag()
        if kind == _DOUBLE:
            self.pos += 8
            return None
        if kind == _BINARY:
            length = self.varint()  # (not `self.pos += self.varint()`: that drops the varint)
            self.pos += length
            return None
        if kind in (_LIST, _SET):
            head = self.byte()
            size = head >> 4 if head >> 4 != 15 else self.varint()
            elem = head & 0x0F
            for _ in range(size):
                if elem in (_BOOL_TRUE, _BOOL_FALSE):  # one byte each inside a list
                    self.byte()
                else:
                    self.value(elem)
            return None
        if kind == _MAP:
            size = self.varint()
            if size:
                types = self.byte()
                for _ in range(size):
                    self.value(types >> 4)
                    self.value(types & 0x0F)
            return None
        if kind == _STRUCT:
            return self.struct()
        raise ValueError(f"unknown Thrift compact type {kind}")


def _int(fields: dict[int, object], key: int) -> int:
    value = fields.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"page header field {key} missing")
    return value


def _page_runs(
    fh: BinaryIO, start: int, end: int, width: int, levels: bool
) -> list[ValueRun] | None:
    """The value runs of one column chunk's pages in [start, end), or None (see module doc)."""
    runs: list[ValueRun] = []
    pos = start
    while pos < end:
        fh.seek(pos)
        reader = _Compact(fh.read(min(_HEADER_READ, end - pos)))
        header = reader.struct()
        page_type = _int(header, 1)
        size = _int(header, 3)  # compressed_page_size: the bytes after the header
        body = pos + reader.pos
        pos = body + size
        if page_type == _DATA_PAGE:
            page = header.get(5)
            if not isinstance(page, dict) or _int(page, 2) != _PLAIN:
                return None
            rows = _int(page, 1)
            skip = 0
            if levels:  # v1: definition levels first, prefixed by their byte length
                fh.seek(body)
                skip = 4 + int.from_bytes(fh.read(4), "little")
        elif page_type == _DATA_PAGE_V2:
            page = header.get(8)
            if not isinstance(page, dict) or _int(page, 4) != _PLAIN or page.get(2, 0):
                return None
            rows = _int(page, 1)
            skip = int(page.get(5, 0) or 0) + int(page.get(6, 0) or 0)  # def + rep levels
        elif page_type == _DICTIONARY_PAGE:
            return None
        else:  # an index page: no values
            continue
        if size - skip != rows * width:  # nulls, or a page that is not whole values
            return None
        if rows:
            runs.append(ValueRun(body + skip, rows))
    return runs


def value_runs(path: str | os.PathLike[str], column: str, width: int) -> list[ValueRun] | None:
    """Where the values of the `fixed_size_binary(width)` column `column` of the parquet file
    `path` lie (file offset and rows of each page, in row order), or None when they are not
    stored as plain bytes (compressed, dictionary-encoded, nested, with nulls)."""
    meta = pq.read_metadata(path)
    schema = meta.schema
    index = next((i for i in range(len(schema)) if schema.column(i).path == column), None)
    if index is None:
        return None
    col_schema = schema.column(index)
    if col_schema.max_repetition_level or col_schema.physical_type != "FIXED_LEN_BYTE_ARRAY":
        return None
    levels = col_schema.max_definition_level > 0
    runs: list[ValueRun] = []
    with open(path, "rb") as fh:
        for g in range(meta.num_row_groups):
            chunk = meta.row_group(g).column(index)
            if chunk.compression != "UNCOMPRESSED" or chunk.has_dictionary_page:
                return None
            start = chunk.data_page_offset
            try:
                group = _page_runs(fh, start, start + chunk.total_compressed_size, width, levels)
            except ValueError:
                return None
            if group is None or sum(r.rows for r in group) != meta.row_group(g).num_rows:
                return None
            runs += group
    return runs
