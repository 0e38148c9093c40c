"""Benchmark: the competition's CSV tables through pandas against the former `csv`-module code.

    .venv/bin/python bench/tables.py [--repeat 7] [--seed 0]

Three measures, each on Planet-sized synthetic tables written once to a temporary folder:

- labels: `train_v2.csv` with 40,479 rows (1-5 tags each, drawn from the 17 classes), read
  into a LabelTable with every check (`planet.store.labels.parse_tags_csv`: pandas' pyarrow
  engine, checks column-wise with `pyarrow.compute`) against the row-by-row `csv.reader`
  parser it replaced (kept below as `old_parse_tags_csv`);
- sample submission: the 61,191 keys of `sample_submission_v2.csv` with their checks
  (`planet.infer.submission.expected_keys` against `old_expected_keys`);
- submission: 61,191 `(image_name, tags)` rows in shuffled order, validated against the
  sample submission's keys, reordered and written atomically
  (`planet.infer.submission.write_submission`, pandas `to_csv`, against `old_write_submission`,
  `csv.writer`).

Both sides run alternately `--repeat` times; a side's time is its best round (noise on a shared
machine only adds time). The results are checked to be equal (names and multi-hot values, keys,
the submission's bytes) before anything is timed. The last line is `tables ratio=<geometric mean
over the three measures of old seconds / new seconds>` (above 1: pandas is faster).
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from planet.competitions import PLANET  # noqa: E402
from planet.fileio import atomic_path  # noqa: E402
from planet.infer.submission import expected_keys, validate, write_submission  # noqa: E402
from planet.store.labels import parse_tags_csv  # noqa: E402

N_LABELS = 40_479
N_TEST, N_ADDITIONAL = 40_669, 20_522  # 61,191 submission rows


# ----- the former implementations (csv module), the reference --------------------------------


def old_parse_tags_csv(path: Path, classes: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """planet.store.labels.parse_tags_csv before pandas (errors reduced to ValueError)."""
    text = path.read_bytes().decode("utf-8-sig")
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [h.strip() for h in next(reader)]
    i_name, i_tags = header.index("image_name"), header.index("tags")
    col = {c: j for j, c in enumerate(classes)}
    names: list[str] = []
    rows: list[list[int]] = []
    for line_no, row in enumerate(reader, start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) <= max(i_name, i_tags):
            raise ValueError(f"line {line_no}: expected image_name,tags")
        name, tags = row[i_name].strip(), row[i_tags].split()
        if not name or not tags:
            raise ValueError(f"line {line_no}: empty cell")
        unknown = [t for t in tags if t not in col]
        if unknown:
            raise ValueError(f"line {line_no}: unknown tag(s) {unknown}")
        names.append(name)
        rows.append([col[t] for t in tags])
    if [n for n, k in Counter(names).items() if k > 1]:
        raise ValueError("duplicate image names")
    values = np.zeros((len(names), len(classes)), dtype=np.uint8)
    for i, cols in enumerate(rows):
        values[i, cols] = 1
    {n: i for i, n in enumerate(names)}  # noqa: B018 - the LabelTable's index, built by both
    return names, values


def _old_read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    text = path.read_bytes().decode("utf-8-sig")
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [h.strip() for h in next(reader, [])]
    rows = [row for row in reader if row and any(cell.strip() for cell in row)]
    return header, rows


def old_expected_keys(path: Path, key_col: str) -> list[str]:
    """planet.infer.submission.expected_keys before pandas."""
    header, rows = _old_read_csv(path)
    i = header.index(key_col)
    keys = [row[i].strip() if i < len(row) else "" for row in rows]
    if [str(n) for n, k in enumerate(keys, start=2) if not k]:
        raise ValueError("empty key")
    if [k for k, c in Counter(keys).items() if c > 1]:
        raise ValueError("duplicate key")
    return keys


def old_write_submission(
    path: Path, header: Sequence[str], rows: Sequence[Sequence[str]], expected: Sequence[str]
) -> bytes:
    """planet.infer.submission.write_submission before pandas (returns the bytes written)."""
    header = [str(h) for h in header]
    if [str(r[0]) if r else "" for r in rows if len(r) != len(header)]:
        raise ValueError("short rows")
    keys = [str(r[0]) for r in rows]
    validate(keys, expected, header[0])
    by_key = {k: r for k, r in zip(keys, rows, strict=True)}
    ordered = [[str(v) for v in by_key[k]] for k in expected]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(ordered)
    data = buf.getvalue().encode("utf-8")
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return data


# ----- the tables --------------------------------------------------------------------------


def make_tables(folder: Path, seed: int) -> tuple[Path, Path, list[tuple[str, str]]]:
    """train_v2.csv, sample_submission_v2.csv and shuffled submission rows."""
    rng = np.random.default_rng(seed)
    classes = list(PLANET.classes)

    def tags() -> str:
        return " ".join(sorted(rng.choice(classes, size=int(rng.integers(1, 6)), replace=False)))

    labels = folder / "train_v2.csv"
    labels.write_text(
        "image_name,tags\n" + "".join(f"train_{i},{tags()}\n" for i in range(N_LABELS))
    )
    keys = [f"test_{i}" for i in range(N_TEST)] + [f"file_{i}" for i in range(N_ADDITIONAL)]
    sample = folder / "sample_submission_v2.csv"
    sample.write_text("image_name,tags\n" + "".join(f"{k},primary clear\n" for k in keys))
    rows = [(keys[i], tags()) for i in rng.permutation(len(keys))]
    return labels, sample, rows


def timed(fn: Callable[[], object], times: list[float]) -> None:
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    classes = PLANET.classes
    with tempfile.TemporaryDirectory(prefix="planet-bench-tables-") as tmp:
        folder = Path(tmp)
        labels, sample, rows = make_tables(folder, args.seed)
        keys = old_expected_keys(sample, "image_name")
        header = ["image_name", "tags"]
        old_out, new_out = folder / "old.csv", folder / "new.csv"

        old_names, old_values = old_parse_tags_csv(labels, classes)
        table = parse_tags_csv(labels, classes)
        assert table.names == old_names and np.array_equal(table.values, old_values)
        assert expected_keys(PLANET, folder) == keys
        written = old_write_submission(old_out, header, rows, keys)
        write_submission(new_out, header, rows, keys)
        assert new_out.read_bytes() == written, "the submission's bytes differ"

        measures: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {
            f"labels ({N_LABELS:,} rows, read + checked)": (
                lambda: old_parse_tags_csv(labels, classes),
                lambda: parse_tags_csv(labels, classes),
            ),
            f"sample submission ({len(keys):,} keys)": (
                lambda: old_expected_keys(sample, "image_name"),
                lambda: expected_keys(PLANET, folder),
            ),
            f"submission ({len(rows):,} rows, checked + written)": (
                lambda: old_write_submission(old_out, header, rows, keys),
                lambda: write_submission(new_out, header, rows, keys),
            ),
        }
        ratios = []
        for label, (old, new) in measures.items():
            old_times: list[float] = []
            new_times: list[float] = []
            for _ in range(args.repeat):
                timed(old, old_times)
                timed(new, new_times)
            o, n = min(old_times), min(new_times)
            ratios.append(o / n)
            print(f"{label}: csv module {o * 1000:.1f} ms, pandas {n * 1000:.1f} ms, x{o / n:.2f}")
        ratio = math.exp(sum(map(math.log, ratios)) / len(ratios))
        print(f"tables ratio={ratio:.3f}")


if __name__ == "__main__":
    main()
