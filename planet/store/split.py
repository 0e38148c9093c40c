"""The validation split (and optional k-fold assignment), stored once for every later stage.

`random_split` reproduces fast.ai's `split_by_rand_pct(valid_pct=0.2, seed=42)`: a
`np.random.seed(seed)` permutation of the items in their given order, the first
`int(valid_pct * n)` of which are the validation set. Folds, when asked for, are dealt round
robin over the same permutation, so fold sizes differ by at most one.

The split is written as a small parquet table (`image_name`, `is_valid`, `fold`) plus its
settings in the file's metadata; `read_split` returns it unchanged. It holds names and two
small columns (40,479 rows for Planet), never pixels, so reading it whole is kept.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from planet.fileio import atomic_path

META_KEY = b"planet.split"


@dataclass(frozen=True)
class Split:
    names: list[str]
    is_valid: np.ndarray  # bool (n,)
    fold: np.ndarray  # int16 (n,), -1 when no folds were asked for
    valid_pct: float
    seed: int
    n_folds: int | None

    @property
    def train_names(self) -> list[str]:
        return [n for n, v in zip(self.names, self.is_valid, strict=True) if not v]

    @property
    def valid_names(self) -> list[str]:
        return [n for n, v in zip(self.names, self.is_valid, strict=True) if v]

    def fold_names(self, k: int) -> list[str]:
        """Names held out in fold k."""
        if self.n_folds is None or not 0 <= k < self.n_folds:
            raise ValueError(f"fold {k} does not exist (n_folds={self.n_folds})")
        return [n for n, f in zip(self.names, self.fold, strict=True) if f == k]

    @property
    def settings(self) -> dict:
        return {"valid_pct": self.valid_pct, "seed": self.seed, "n_folds": self.n_folds}


def random_split(
    names: Sequence[str], valid_pct: float = 0.2, seed: int = 42, n_folds: int | None = None
) -> Split:
    """fast.ai's seeded random split of `names` (in the given order), plus optional folds."""
    if not 0.0 <= valid_pct < 1.0:
        raise ValueError(f"valid_pct must be in [0, 1), got {valid_pct}")
    if n_folds is not None and not 2 <= n_folds <= max(2, len(names)):
        raise ValueError(f"n_folds must be between 2 and the number of images, got {n_folds}")
    if len(set(names)) != len(names):
        raise ValueError("image names must be unique to split them")
    n = len(names)
    perm = np.random.RandomState(seed).permutation(n)
    is_valid = np.zeros(n, dtype=bool)
    is_valid[perm[: int(valid_pct * n)]] = True
    fold = np.full(n, -1, dtype=np.int16)
    if n_folds:
        fold[perm] = np.arange(n) % n_folds
    return Split(list(names), is_valid, fold, float(valid_pct), int(seed), n_folds)


def write_split(path: str | Path, split: Split) -> Path:
    """Write the split atomically as parquet; its settings go in the file's metadata."""
    table = pa.table(
        {
            "image_name": pa.array(split.names, pa.string()),
            "is_valid": pa.array(split.is_valid, pa.bool_()),
            "fold": pa.array(split.fold, pa.int16()),
        }
    ).replace_schema_metadata({META_KEY: json.dumps(split.settings).encode()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def read_split(path: str | Path) -> Split:
    table = pq.read_table(path)
    meta = json.loads((table.schema.metadata or {}).get(META_KEY, b"{}"))
    if not meta:
        raise ValueError(
            f"{path} is not a split written by planet.store.split (no settings metadata)"
        )
    return Split(
        names=table.column("image_name").to_pylist(),
        is_valid=table.column("is_valid").to_numpy(zero_copy_only=False).astype(bool),
        fold=table.column("fold").to_numpy().astype(np.int16),
        valid_pct=meta["valid_pct"],
        seed=meta["seed"],
        n_folds=meta["n_folds"],
    )
