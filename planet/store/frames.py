"""The competition's CSV tables as pandas DataFrames of strings, cells as written.

`read_csv_frame` reads a labels file, a sample submission, a submission or a solution with
pandas' pyarrow engine: a UTF-8 BOM and CRLF line endings are accepted, every cell is a string
(an empty cell stays "", "NA" stays "NA"), header names are stripped, and a blank line stays a
row of empty cells, so row i of the frame is line i + 2 of the file (for files without quoted
line breaks) and error messages can name the line. A row with more or fewer fields than the
header is a `pd.errors.ParserError` with `strict`; otherwise the file is read again by the
C engine, which reads a missing trailing field as "" and drops extra ones (as the labels
reader always did). `blank_rows` says which rows to skip; `column` gives a column to
`pyarrow.compute`. `csv_bytes` writes rows the way `csv.writer` does (minimal quoting, `\\n`).
"""

from __future__ import annotations

import io
import os
import re
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

Source = str | os.PathLike[str] | io.BytesIO  # pyarrow reads bytes (a StringIO can fail)
_QUOTE = re.compile(r'[,"\r\n]')  # what makes csv.writer quote a cell
_OPTIONS = {"dtype": str, "keep_default_na": False, "encoding": "utf-8-sig"}


def read_csv_frame(source: Source, *, strict: bool = False) -> pd.DataFrame:
    """A CSV file (or bytes buffer) as a DataFrame of strings (see the module doc);
    `pd.errors.EmptyDataError` when it has no header."""
    try:
        frame = pd.read_csv(source, engine="pyarrow", skip_blank_lines=False, **_OPTIONS)
    except pd.errors.ParserError:
        if strict:
            raise
        if isinstance(source, io.BytesIO):
            source.seek(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", pd.errors.ParserWarning)  # extra fields dropped
            frame = pd.read_csv(source, skip_blank_lines=False, index_col=False, **_OPTIONS)
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def column(frame: pd.DataFrame, j: int) -> pa.Array:
    """Column j as a pyarrow string array."""
    return pa.array(frame.iloc[:, j], type=pa.string())


def blank_rows(frame: pd.DataFrame) -> np.ndarray:
    """Rows whose cells are all empty or white space (a blank line, a trailing newline)."""
    blank = np.ones(len(frame), dtype=bool)
    for j in range(frame.shape[1]):
        blank &= pc.equal(pc.utf8_trim_whitespace(column(frame, j)), "").to_numpy(False)
    return blank


def string_frame(rows: Sequence[Sequence[object]], width: int) -> pd.DataFrame:
    """Rows of `width` cells as a DataFrame of strings (`str()` of each cell), columns 0..width-1."""
    columns = list(zip(*rows, strict=True)) or [()] * width
    return pd.DataFrame({j: pd.Series(c, dtype=object) for j, c in enumerate(columns)}).astype(str)


def csv_bytes(header: Sequence[str], frame: pd.DataFrame) -> bytes:
    """UTF-8 CSV of a DataFrame of strings under `header`, byte for byte as
    `csv.writer(lineterminator="\\n")` writes it: when no cell needs quotes (the usual case) the
    lines are joined by pyarrow, otherwise pandas' `to_csv` quotes them."""
    header = [str(h) for h in header]
    cols = [column(frame, j) for j in range(frame.shape[1])]
    plain = len(cols) > 1 and not any(_QUOTE.search(h) for h in header)
    plain = plain and not any(
        pc.any(pc.match_substring_regex(c, _QUOTE.pattern)).as_py() for c in cols
    )
    if not plain:
        return frame.to_csv(index=False, header=header, lineterminator="\n").encode("utf-8")
    lines = pc.binary_join_element_wise(*cols, ",")
    offsets = pa.array([0, len(lines)], pa.int32())
    body = pc.binary_join(pa.ListArray.from_arrays(offsets, lines), "\n")[0].as_py()
    return (",".join(header) + "\n" + body + ("\n" if len(lines) else "")).encode("utf-8")
