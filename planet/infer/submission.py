"""Kaggle submission CSVs from test predictions, checked against the sample submission.

Design:

- Keys. The sample submission (extracted by the prepare stage into `tables/<table_name>`, bytes
  unchanged, so a BOM and CRLF are accepted) lists every key Kaggle expects, in its column
  `comp.submission_columns[0]`. Test image names are the names stored in the shards: the archive
  member's file name less `.jpg` (`planet.extract`). A trailing `.jpg`/`.jpeg` is stripped
  anyway, so a name and its key map one to one:
  Planet `test-jpg/test_0.jpg` -> shard name `test_0` -> `image_name` `test_0` (and
  `test-jpg-additional/file_0.jpg` -> `file_0`); Dogs vs Cats `test/12.jpg` -> `12` -> `id` `12`.
- Values. Planet `tags`: the space-separated classes with `prob > threshold` in the
  competition's class order (one threshold or one per class); the cell is empty for an image
  with no tag above its threshold, which Kaggle accepts (that image scores 0). Dogs vs Cats
  `label`: P(dog) clipped to [clip, 1 - clip], written `%.6f`; a value that would round to 0 or
  1 (only possible with a clip below 5e-7) is written in full (`repr`), since Kaggle scores a
  written 0 or 1 as 1e-15.
- Checks before writing. `validate` compares the written keys with the sample submission's:
  missing, extra or duplicate keys raise `SubmissionError` naming the first few of each. Rows
  are then written in the sample submission's order, atomically (`\\n` line endings, no index
  column), so a failed check or an interrupted write leaves no file and no temporary file.
- Tables. The sample submission and submissions are read, and submissions written, with pandas
  (`planet.store.frames`: strings as written; the bytes are those `csv.writer` wrote before).
- Memory: the test probabilities and the CSV rows are held whole (61,191 x 17 float32 for
  Planet, 4.2 MB, and ~61k short strings) and no pixels are read: small, so kept.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from planet.competitions import Competition
from planet.fileio import atomic_path, sha256_bytes

if TYPE_CHECKING:  # pandas loads when a table is read or written
    import pandas as pd

MAX_NAMED = 10  # how many offending keys an error message lists
PREVIEW_LINES = 5
IMAGE_SUFFIXES = (".jpg", ".jpeg")

Row = tuple[str, str]


class SubmissionError(ValueError):
    """A submission that does not match what Kaggle expects; the message says what to do."""


def _some(items: Sequence[str]) -> str:
    shown = ", ".join(map(str, items[:MAX_NAMED]))
    more = f" and {len(items) - MAX_NAMED} more" if len(items) > MAX_NAMED else ""
    return shown + more


def image_key(name: str) -> str:
    """The submission key of a test image name: the name less a `.jpg`/`.jpeg` suffix."""
    name = str(name).strip()
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def sample_submission_path(comp: Competition, tables_dir: str | os.PathLike[str]) -> Path:
    """Where the prepare stage puts the competition's sample submission CSV."""
    files = [f for f in comp.files if f.kind == "sample_submission"]
    if not files or files[0].table_name is None:
        raise SubmissionError(f"{comp.slug} has no sample submission CSV")
    return Path(tables_dir) / files[0].table_name


def read_frame(path: str | os.PathLike[str]) -> pd.DataFrame:
    """A submission-shaped CSV (cells as written, blank lines left out; the index is the
    line number less 2) as a DataFrame of strings."""
    import pandas as pd

    from planet.store.frames import blank_rows, read_csv_frame

    try:
        frame = read_csv_frame(path)
    except UnicodeDecodeError as exc:
        raise SubmissionError(f"{path} is not UTF-8 text") from exc
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    return frame[~blank_rows(frame)]


def expected_keys(comp: Competition, tables_dir: str | os.PathLike[str]) -> list[str]:
    """The keys (first submission column) of the sample submission, in its row order."""
    path = sample_submission_path(comp, tables_dir)
    if not path.is_file():
        raise SubmissionError(
            f"{path} not found: the sample submission lists the test images to predict; "
            "run the prepare stage (fetch + extract) first"
        )
    key_col = comp.submission_columns[0]
    frame = read_frame(path)
    header = list(frame.columns)
    if key_col not in header:
        raise SubmissionError(f"{path}: header is {header}, expected a column {key_col!r}")
    keys = frame[key_col].str.strip()
    empty = [str(n) for n in frame.index[keys.eq("").to_numpy()] + 2]
    if empty:
        raise SubmissionError(f"{path}: empty {key_col} on line(s) {_some(empty)}")
    dupes = keys[keys.duplicated(keep=False)].drop_duplicates().tolist()
    if dupes:
        raise SubmissionError(f"{path}: duplicate {key_col} {_some(dupes)}; re-run prepare")
    return keys.tolist()


def _check_names(names: Sequence[str], n: int, what: str) -> list[str]:
    keys = [image_key(x) for x in names]
    if len(keys) != n:
        raise SubmissionError(f"{len(keys)} image names for {n} rows of {what}")
    return keys


def planet_rows(
    names: Sequence[str],
    probs: Any,
    classes: Sequence[str],
    thresholds: float | Sequence[float] | np.ndarray = 0.2,
) -> list[Row]:
    """(image_name, tags) per image: classes with `prob > threshold`, in class order."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != len(classes):
        raise SubmissionError(f"expected (n, {len(classes)}) probabilities, got shape {p.shape}")
    keys = _check_names(names, p.shape[0], "probabilities")
    bad = [k for k, ok in zip(keys, np.isfinite(p).all(axis=1), strict=True) if not ok]
    if bad:
        raise SubmissionError(
            f"NaN or infinite probabilities for {len(bad)} image(s): {_some(bad)}"
        )
    t = np.asarray(thresholds, dtype=np.float64)
    if t.ndim not in (0, 1) or (t.ndim == 1 and t.shape != (len(classes),)):
        raise SubmissionError(f"expected one threshold or {len(classes)}, got shape {t.shape}")
    on = p > t
    cls = list(classes)
    return [
        (k, " ".join(c for c, v in zip(cls, row, strict=True) if v))
        for k, row in zip(keys, on, strict=True)
    ]


def format_probability(x: float) -> str:
    """`%.6f`, or the full `repr` when that would round a value inside (0, 1) to 0 or 1."""
    s = f"{x:.6f}"
    if float(s) in (0.0, 1.0) and 0.0 < x < 1.0:
        return repr(float(x))
    return s


def dogs_rows(names: Sequence[str], p_dog: Any, clip: float = 0.0) -> list[Row]:
    """(id, label) per image: id from the image name (`12.jpg` -> `12`), label =
    P(dog) clipped to [clip, 1 - clip]."""
    if not 0.0 <= clip < 0.5:
        raise SubmissionError(f"clip must lie in [0, 0.5), got {clip}")
    p = np.asarray(p_dog, dtype=np.float64)
    if p.ndim != 1:
        raise SubmissionError(f"expected (n,) probabilities of dog, got shape {p.shape}")
    keys = _check_names(names, p.shape[0], "probabilities")
    bad = [k for k, v in zip(keys, p, strict=True) if not (0.0 <= v <= 1.0)]  # NaN fails too
    if bad:
        raise SubmissionError(f"P(dog) outside [0, 1] for {len(bad)} image(s): {_some(bad)}")
    q = np.clip(p, clip, 1.0 - clip)
    return [(k, format_probability(float(v))) for k, v in zip(keys, q, strict=True)]


def validate(keys_written: Sequence[str], expected: Sequence[str], key_column: str = "key") -> None:
    """Raise `SubmissionError` naming missing, extra and duplicate keys (first few of each)."""
    counts = Counter(keys_written)
    want = set(expected)
    dupes = [k for k, c in counts.items() if c > 1]
    missing = [k for k in expected if k not in counts]
    extra = [k for k in counts if k not in want]
    if not (dupes or missing or extra):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing {key_column}(s): {_some(missing)}")
    if extra:
        parts.append(
            f"{len(extra)} extra {key_column}(s) not in the sample submission: {_some(extra)}"
        )
    if dupes:
        parts.append(f"{len(dupes)} duplicate {key_column}(s): {_some(dupes)}")
    raise SubmissionError(
        "the submission does not match the sample submission: "
        + "; ".join(parts)
        + f". Predict every test image exactly once (all test splits), keyed by the sample "
        f"submission's {key_column} column; re-run the predict stage on the complete test set."
    )


def write_submission(
    path: str | os.PathLike[str],
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    expected_keys: Sequence[str],
) -> dict[str, Any]:
    """Validate, reorder to the sample submission's order and write the CSV atomically.

    Returns `{"path", "rows", "sha256", "preview"}` (preview: the first 5 lines, header
    included). Nothing is written when validation fails."""
    import pandas as pd

    from planet.store.frames import csv_bytes, string_frame

    header = [str(h) for h in header]
    short = [str(r[0]) if r else "" for r in rows if len(r) != len(header)]
    if short:
        raise SubmissionError(
            f"{len(short)} row(s) do not have {len(header)} fields {header}: {_some(short)}"
        )
    frame = string_frame(rows, len(header))
    keys = pd.Index(frame[0])
    order = keys.get_indexer(list(expected_keys)) if keys.is_unique else None
    if order is None or len(keys) != len(expected_keys) or (order < 0).any():
        validate(keys.tolist(), expected_keys, header[0])  # names what is wrong
    data = csv_bytes(header, frame.take(order))
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return {
        "path": str(path),
        "rows": len(expected_keys),
        "sha256": sha256_bytes(data),
        "preview": data.decode("utf-8").split("\n")[:PREVIEW_LINES],
    }


def read_submission(path: str | os.PathLike[str]) -> tuple[list[str], list[tuple[str, ...]]]:
    """(header, rows) of a submission CSV, cells as written."""
    frame = read_frame(path)
    return list(frame.columns), list(frame.itertuples(index=False, name=None))


def make_submission(
    comp: Competition,
    tables_dir: str | os.PathLike[str],
    path: str | os.PathLike[str],
    names: Sequence[str],
    probs: Any,
    *,
    thresholds: float | Sequence[float] | np.ndarray = 0.2,
    clip: float = 0.0,
) -> dict[str, Any]:
    """Rows for `comp` (multi-label: `probs` (n, C) and `thresholds`; single-label: P(dog) as
    (n,) or the (n, 2) class probabilities, and `clip`), checked and written by
    `write_submission`."""
    keys = expected_keys(comp, tables_dir)
    if comp.task == "multi_label":
        rows = planet_rows(names, probs, comp.classes, thresholds)
    else:
        p = np.asarray(probs, dtype=np.float64)
        if p.ndim == 2:
            if p.shape[1] != len(comp.classes):
                raise SubmissionError(f"expected (n, {len(comp.classes)}) probabilities")
            p = p[:, comp.classes.index(comp.positive_class or comp.classes[-1])]
        rows = dogs_rows(names, p, clip)
    return write_submission(path, comp.submission_columns, rows, keys)
