"""Synthetic Planet images for the benchmarks, built once and cached: one original-image
shard folder (`<root>/original/`) of `n` rendered JPEGs and their labels (`labels.npy`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from planet.competitions import PLANET
from planet.store import shards
from planet.store.labels import LabelTable
from planet.synthetic.planet_amazon import make_texture_bank, render_jpeg, sample_labels

SHARD_ROWS = 1000
Built = Callable[[list[str], np.ndarray, list[bytes]], None]


def original_shards(root: Path, n: int, on_built: Built | None = None) -> tuple[Path, LabelTable]:
    """`<root>/original` and the images' labels; made (seed 2017) unless already there, then
    `on_built(names, labels, jpegs)` sees what was just made."""
    original = root / "original"
    names = [f"train_{i}" for i in range(n)]
    if not (original / "manifest.json").is_file():
        print(f"building {n:,} synthetic Planet JPEGs under {root} ...", flush=True)
        t0 = time.perf_counter()
        rng = np.random.default_rng(2017)
        bank = make_texture_bank(rng)
        labels = sample_labels(n, rng)
        jpegs = [render_jpeg(labels[i], rng, bank) for i in range(n)]
        if on_built is not None:
            on_built(names, labels, jpegs)
        records = []
        for i in range(0, n, SHARD_ROWS):
            table = shards.image_table(names[i : i + SHARD_ROWS], jpegs[i : i + SHARD_ROWS])
            records.append(shards.write_shard(original / shards.shard_name(len(records)), table))
        np.save(root / "labels.npy", labels.astype(np.uint8))
        shards.write_manifest(
            original,
            {
                "format": shards.FORMAT,
                "format_version": shards.FORMAT_VERSION,
                "split": "train",
                "count": n,
                "shards": records,
            },
        )
        print(f"built in {time.perf_counter() - t0:.1f} s")
    labels = np.load(root / "labels.npy")
    return original, LabelTable(names, labels, "multi_hot", PLANET.classes)
