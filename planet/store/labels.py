"""Training labels: Planet's `train_v2.csv` tags as multi-hot vectors, Dogs vs Cats from names.

A competition with a `labels` file (Planet) reads it: `image_name,tags` with space-separated
tags; a UTF-8 BOM and CRLF line endings are accepted. It is read with pandas and checked
column-wise (bench/tables.py measures it against the former row-by-row `csv` reader). Otherwise the label is the file name's
first dot-separated part (`cat.12` -> cat), as in Dogs vs Cats. Class order is the
competition's fixed `classes` order.

Errors name what is wrong and where: an unknown tag (row number and tag), an empty tags cell, a
duplicate image name, an image without a row, a row without an image; and they say to check
the labels file (re-download it and run the prepare stage again).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from planet.competitions import Competition

LabelKind = Literal["multi_hot", "class_index"]
MAX_NAMED = 10  # how many offending names an error message lists
CHECK_FILE = (
    "check the labels file: re-download it and run the prepare stage again, or fix it if it was "
    "edited by hand"
)
CHECK_ARCHIVE = "if the labels file is right, re-download the train archive instead"


class LabelError(ValueError):
    """A labels file or image name that cannot be turned into labels."""


def _some(items: Sequence[str]) -> str:
    shown = ", ".join(map(str, items[:MAX_NAMED]))
    more = f" and {len(items) - MAX_NAMED} more" if len(items) > MAX_NAMED else ""
    return shown + more


@dataclass(frozen=True)
class LabelTable:
    """Labels aligned with `names`: (n, n_classes) uint8 multi-hot, or (n,) int64 class index."""

    names: list[str]
    values: np.ndarray
    kind: LabelKind
    classes: tuple[str, ...]
    index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", {n: i for i, n in enumerate(self.names)})

    def __len__(self) -> int:
        return len(self.names)

    def take(self, names: Sequence[str]) -> LabelTable:
        """The labels of `names`, in that order (KeyError naming the first unknown ones)."""
        missing = [n for n in names if n not in self.index]
        if missing:
            raise LabelError(f"no label for {len(missing)} image(s): {_some(missing)}")
        idx = np.fromiter((self.index[n] for n in names), dtype=np.int64, count=len(names))
        return LabelTable(list(names), self.values[idx], self.kind, self.classes)

    def tags(self, i: int) -> list[str]:
        """Class names of row i."""
        if self.kind == "class_index":
            return [self.classes[int(self.values[i])]]
        return [c for c, on in zip(self.classes, self.values[i], strict=True) if on]


def _short_row(path: Path, line_no: int, need: int) -> list[str] | None:
    """The cells of line `line_no` when it has fewer than `need` fields (error path only:
    pandas fills a missing field with an empty string)."""
    lines = path.read_bytes().decode("utf-8-sig").splitlines()
    cells = lines[line_no - 1].split(",") if line_no <= len(lines) else []
    return cells if len(cells) < need else None


def parse_tags_csv(path: str | Path, classes: Sequence[str]) -> LabelTable:
    """Read an `image_name,tags` CSV into a multi-hot LabelTable (rows in file order)."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    from planet.store.frames import blank_rows, column, read_csv_frame

    path = Path(path)
    try:
        frame = read_csv_frame(path)
    except pd.errors.EmptyDataError:
        raise LabelError(
            f"{path} is empty: expected a header `image_name,tags`; {CHECK_FILE}"
        ) from None
    header = list(frame.columns)
    if "image_name" not in header or "tags" not in header:
        raise LabelError(
            f"{path}: header is {header}, expected columns image_name and tags; {CHECK_FILE}"
        )
    i_name, i_tags = header.index("image_name"), header.index("tags")
    kept = frame[~blank_rows(frame)]
    line_nos = kept.index.to_numpy() + 2
    names = pc.utf8_trim_whitespace(column(kept, i_name))
    lists = pc.utf8_split_whitespace(pc.utf8_trim_whitespace(column(kept, i_tags)))
    tokens = pc.list_flatten(lists)  # "" is the one token of an empty cell
    real = pc.not_equal(tokens, "").to_numpy(False)
    position = pc.list_parent_indices(lists).to_numpy()[real]  # the row of each tag
    codes = pc.index_in(tokens.filter(real), value_set=pa.array(list(classes)))
    empty_tags = np.bincount(position, minlength=len(kept)) == 0
    unknown = np.zeros(len(kept), dtype=bool)
    unknown[position[pc.is_null(codes).to_numpy(False)]] = True
    names = names.to_pandas()
    bad = names.eq("").to_numpy() | empty_tags | unknown
    if bad.any():
        i = int(np.argmax(bad))
        line_no, name = int(line_nos[i]), names.iloc[i]
        short = _short_row(path, line_no, max(i_name, i_tags) + 1)
        if short is not None:
            raise LabelError(
                f"{path}, line {line_no}: expected image_name,tags, got {short}; {CHECK_FILE}"
            )
        if not name:
            raise LabelError(f"{path}, line {line_no}: empty image_name; {CHECK_FILE}")
        if empty_tags[i]:
            raise LabelError(
                f"{path}, line {line_no}: image {name} has an empty tags cell; {CHECK_FILE}"
            )
        row_tags = kept.iloc[i, i_tags].split()
        raise LabelError(
            f"{path}, line {line_no}: image {name} has unknown tag(s) "
            f"{[t for t in row_tags if t not in classes]}; "
            f"known tags are {sorted(classes)}; {CHECK_FILE}"
        )
    dupes = names[names.duplicated(keep=False)].drop_duplicates().tolist()
    if dupes:
        raise LabelError(f"{path}: duplicate image name(s) {_some(dupes)}; {CHECK_FILE}")
    values = np.zeros((len(kept), len(classes)), dtype=np.uint8)
    values[position, codes.to_numpy()] = 1
    return LabelTable(names.tolist(), values, "multi_hot", tuple(classes))


def labels_from_names(names: Sequence[str], classes: Sequence[str]) -> LabelTable:
    """Class index from each name's first dot-separated part (`dog.7` -> classes.index('dog'))."""
    col = {c: j for j, c in enumerate(classes)}
    bad = [n for n in names if n.split(".", 1)[0] not in col]
    if bad:
        raise LabelError(
            f"cannot tell the class of {len(bad)} image(s) from their names: {_some(bad)}; "
            f"names must start with one of {list(classes)} followed by '.'"
        )
    values = np.array([col[n.split(".", 1)[0]] for n in names], dtype=np.int64)
    return LabelTable(list(names), values, "class_index", tuple(classes))


def load_labels(
    comp: Competition, tables_dir: str | Path, image_names: Sequence[str]
) -> LabelTable:
    """The labels of the train images `image_names`, checked both ways: every image has a row
    and every row has an image. Rows come in the labels file's order (fast.ai splits in that
    order), or in the given order when names are the labels; `.take(names)` reorders."""
    if comp.labels == "file_names":
        return labels_from_names(image_names, comp.classes)
    labels_files = [f for f in comp.files if f.kind == "labels"]
    if not labels_files:
        raise LabelError(f"{comp.slug} reads labels from a CSV but lists no labels file")
    csv_path = Path(tables_dir) / str(labels_files[0].table_name)
    if not csv_path.is_file():
        raise LabelError(f"{csv_path} not found: run the prepare stage (fetch + extract) first")
    table = parse_tags_csv(csv_path, comp.classes)
    images = set(image_names)
    no_row = [n for n in image_names if n not in table.index]
    no_image = [n for n in table.names if n not in images]
    if no_row:
        raise LabelError(
            f"{len(no_row)} train image(s) have no row in {csv_path}: {_some(no_row)}; "
            f"{CHECK_FILE}; {CHECK_ARCHIVE}"
        )
    if no_image:
        raise LabelError(
            f"{len(no_image)} row(s) of {csv_path} name images missing from the train archive: "
            f"{_some(no_image)}; {CHECK_FILE}; {CHECK_ARCHIVE}"
        )
    return table
