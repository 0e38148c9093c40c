"""Benchmark: this project's training loader (`planet.learn.loader.Loader` over 128 px sized shards,
augmentation batched on the device) against the usual torchvision pipeline (`ImageFolder` of
JPEG files + PIL + `transforms` in a `DataLoader`), on the same images, on the CPU.

    .venv/bin/python bench/loader.py [--images 2000] [--size 128] [--batch 64] [--workers 2]

The images are synthetic 256 px Planet chips (`planet.synthetic`), built once and cached under
`$TMPDIR/planet-bench-loader/`: as JPEG files in an ImageFolder layout (one folder per weather
tag) and, through the project's own stages, as original-image shards resized by
`planet.resize.resize_split` into `--size` px sized shards.

What is compared, both yielding normalised float32 (64, 3, 128, 128) batches and labels:

- project: `read_images` (timed apart: once per training run; it locates the pixels in the
  shards, so each batch is read from the files with `os.preadv`) and `Loader(shuffle=True,
  augment=Augment())` (dihedral, zoom 1.05, lighting 0.1 per sample) on the `cpu` device, with
  `--workers` threads, torch's intra-op threads set to `--torch-threads` (default 1, as in each
  DataLoader worker: the same number of busy threads on both sides; measured on the 2-core
  machine with 2 workers, 1 torch thread gave ~5,100 samples/s, 2 gave ~4,300, oversubscribed);
- reference: `DataLoader(ImageFolder(...), batch_size, shuffle=True, num_workers=--workers,
  persistent_workers=True)` with `Resize(size), RandomHorizontalFlip, RandomVerticalFlip,
  ColorJitter(0.1, 0.1), ToTensor, Normalize` (each worker process decodes with PIL; the
  DataLoader runs workers with one torch thread each). Persistent workers, so process start-up
  is not counted.

Each side runs one warm-up epoch, then `--repeat` rounds, alternating project and reference,
of `--epochs` timed epochs each (the consumer only takes the batches). The machine may be
shared, and noise only adds time, so each side's best round counts; medians are printed too.
The last line is `loader ratio=<project / reference samples per second>`.

Measured on the 2-core development machine while other jobs ran on it (two runs, best round):
project 5,852 and 4,247 samples/s, reference 699 and 649 (`loader ratio=8.37`, `6.54`; the
ratio of medians 7.3 and 6.2). The project does more per image (zoom and logit-space lighting
besides the flips) and less per epoch: the JPEGs were decoded and resized once, by
`planet.resize`, where the reference decodes and resizes every image every epoch.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from synthetic_data import original_shards

from planet.competitions import PLANET_WEATHER_TAGS
from planet.learn.augment import Augment
from planet.learn.loader import Loader
from planet.resize.split import resize_split
from planet.store.sized import read_images
from planet.synthetic.planet_amazon import (
    CLASS_INDEX,
)

CACHE_VERSION = 1
SHARD_ROWS = 1000
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def build(n: int, size: int, cache: Path) -> tuple[Path, Path]:
    """The cached ImageFolder root and sized shard folder for `n` synthetic images."""
    root = cache / f"v{CACHE_VERSION}-{n}"
    folder_root, sized = root / "jpeg", root / str(size)

    def write_folder(names: list[str], labels: np.ndarray, jpegs: list[bytes]) -> None:
        for name, row, data in zip(names, labels, jpegs, strict=True):
            weather = next(t for t in PLANET_WEATHER_TAGS if row[CLASS_INDEX[t]])
            path = folder_root / weather / f"{name}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

    original, table = original_shards(root, n, write_folder)
    t0 = time.perf_counter()
    resize_split(original, sized, size, table)  # returns at once when already complete
    print(f"sized shards: {sized} ({time.perf_counter() - t0:.1f} s)")
    return folder_root, sized


def time_epochs(loader: Iterable[Any], epochs: int) -> float:
    """Samples per second over `epochs` epochs."""
    count = 0
    t0 = time.perf_counter()
    for _ in range(epochs):
        for images, _targets in loader:
            count += len(images)
    return count / (time.perf_counter() - t0)


def project_loader(sized: Path, args: argparse.Namespace) -> Loader:
    t0 = time.perf_counter()
    data = read_images(sized)
    print(f"project: read_images {len(data):,} images in {time.perf_counter() - t0:.2f} s")
    return Loader(
        data,
        batch_size=args.batch,
        shuffle=True,
        augment=Augment(),
        workers=args.workers,
        seed=0,
    )


def reference_loader(folder_root: Path, args: argparse.Namespace) -> Iterable[Any]:
    from torchvision import datasets, transforms

    tf = transforms.Compose(
        [
            transforms.Resize(args.size),
            transforms.RandomHorizontalFlip(),
            transforms.RandomVerticalFlip(),
            transforms.ColorJitter(0.1, 0.1),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )
    dataset = datasets.ImageFolder(str(folder_root), transform=tf)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=args.batch,
        shuffle=True,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per timed round")
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds per side")
    parser.add_argument(
        "--torch-threads", type=int, default=1, help="torch intra-op threads in this process"
    )
    parser.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / "planet-bench-loader"
    )
    args = parser.parse_args()
    folder_root, sized = build(args.images, args.size, args.cache)
    torch.set_num_threads(args.torch_threads)
    print(
        f"{args.images:,} images, {args.size} px, batch {args.batch}, {args.workers} workers, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    )
    loaders = {
        "project": project_loader(sized, args),
        "reference": reference_loader(folder_root, args),
    }
    rates: dict[str, list[float]] = {name: [] for name in loaders}
    for loader in loaders.values():  # warm-up epoch (worker start-up, caches)
        time_epochs(loader, 1)
    for _ in range(args.repeat):
        for name, loader in loaders.items():
            rates[name].append(time_epochs(loader, args.epochs))
            print(f"  {name}: {rates[name][-1]:,.0f} samples/s", flush=True)
    best = {name: max(r) for name, r in rates.items()}
    for name, label in (
        ("project", "project Loader (threads, augment on cpu)"),
        ("reference", "torchvision ImageFolder + DataLoader"),
    ):
        print(
            f"{label}: best {best[name]:,.0f} samples/s "
            f"(median {statistics.median(rates[name]):,.0f})"
        )
    print(f"loader ratio={best['project'] / best['reference']:.2f}")


if __name__ == "__main__":
    main()
