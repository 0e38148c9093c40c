"""A tiny learnable Planet-shaped training set on disk: sized shards and a split, nothing else.

Three of the 17 Planet tags are painted into the images (a red, a green, a bright top half),
the others never occur; a small convnet learns them in a few epochs on the CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from planet import resize
from planet.competitions import DOGS_VS_CATS, PLANET
from planet.fileio import write_json_atomic
from planet.store import shards
from planet.store.split import random_split, write_split
from planet.workspace import Workspace

LEARNED = ("agriculture", "clear", "water")  # the tags painted into the images


def toy_images(n: int, size: int, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Names, uint8 (n, size, size, 3) images and float (n, 17) multi-hot Planet labels."""
    rng = np.random.default_rng(seed)
    cols = [PLANET.classes.index(t) for t in LEARNED]
    labels = np.zeros((n, len(PLANET.classes)), dtype=np.float32)
    present = rng.random((n, 3)) < 0.45
    labels[:, cols] = present
    img = rng.integers(0, 70, size=(n, size, size, 3)).astype(np.int32)
    img[present[:, 0], :, :, 0] += 150
    img[present[:, 1], :, :, 1] += 150
    img[present[:, 2], : size // 2, :, 2] += 150
    names = [f"train_{i}" for i in range(n)]
    return names, np.clip(img, 0, 255).astype(np.uint8), labels


def write_sized(
    folder: Path,
    names: list[str],
    pixels: np.ndarray,
    labels: np.ndarray | None,
    classes: tuple[str, ...] = PLANET.classes,
) -> Path:
    """A sized shard folder like planet.resize writes (one shard; (n, C) multi-hot labels,
    (n,) class indices, or none for a test split)."""
    folder.mkdir(parents=True, exist_ok=True)
    n, size = len(names), pixels.shape[1]
    flat = pa.py_buffer(np.ascontiguousarray(pixels).tobytes())
    pix = pa.Array.from_buffers(pa.binary(size * size * 3), n, [None, flat])
    if labels is None:
        lab = pa.nulls(n)
    elif labels.ndim == 1:
        lab = pa.array(labels.astype(np.int16), pa.int16())
    else:
        values = pa.array(labels.astype(np.uint8).ravel(), pa.uint8())
        lab = pa.FixedSizeListArray.from_arrays(values, labels.shape[1])
    table = pa.table({"image_name": pa.array(names), "label": lab, "pixels": pix})
    name = shards.shard_name(0)
    pq.write_table(table, folder / name, compression="none", use_dictionary=False)  # mappable
    write_json_atomic(
        folder / "manifest.json",
        {
            "format": resize.FORMAT,
            "format_version": resize.FORMAT_VERSION,
            "size": size,
            "count": n,
            "classes": list(classes),
            "label_kind": None
            if labels is None
            else ("class_index" if labels.ndim == 1 else "multi_hot"),
            "shards": [{"name": name, "rows": n, "bytes": (folder / name).stat().st_size}],
        },
    )
    return folder


def make_toy_planet(
    data_dir: Path,
    n: int = 160,
    sizes: tuple[int, ...] = (32,),
    seed: int = 0,
    folds: int | None = None,
    tests: int = 0,
):
    """Sized train shards at each size (the same images, resized by striding) and the split
    (with `folds`); with `tests`, that many unlabelled images in each test split too."""
    big = max(sizes)
    names, pixels, labels = toy_images(n, big, seed)
    dirs = Workspace.of(data_dir, PLANET.slug)
    for size in sizes:
        step = big // size
        write_sized(dirs.sized(size, "train").folder, names, pixels[:, ::step, ::step], labels)
    split = random_split(names, 0.25, seed=42, n_folds=folds)
    write_split(dirs.root / "shards" / "split.parquet", split)
    for data_file in PLANET.image_files[1:] if tests else ():
        test_names, test_pixels, _ = toy_images(tests, big, seed + 1)
        test_names = [f"{data_file.split}_{i}" for i in range(tests)]
        for size in sizes:
            step = big // size
            write_sized(
                dirs.sized(size, data_file.split).folder,
                test_names,
                test_pixels[:, ::step, ::step],
                None,
            )
    return dirs


def make_toy_dogs(data_dir: Path, n: int = 40, size: int = 32, seed: int = 0) -> Workspace:
    """Sized Dogs vs Cats train shards (class indices: 0 cat, 1 dog; dogs are redder) and the
    split, nothing else."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.5).astype(np.int64)
    img = rng.integers(0, 70, size=(n, size, size, 3)).astype(np.int32)
    img[labels == 1, :, :, 0] += 150
    names = [f"{DOGS_VS_CATS.classes[c]}.{i}.jpg" for i, c in enumerate(labels)]
    ws = Workspace.of(data_dir, DOGS_VS_CATS.slug)
    write_sized(
        ws.sized(size, "train").folder,
        names,
        np.clip(img, 0, 255).astype(np.uint8),
        labels,
        DOGS_VS_CATS.classes,
    )
    write_split(ws.root / "shards" / "split.parquet", random_split(names, 0.25, seed=42))
    return ws
