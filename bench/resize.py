"""Benchmark: the resize stage (planet.resize) on one core, against fast.ai's way and against
the decoder's own limit.

    .venv/bin/python bench/resize.py [--images 2000] [--size 128] [--repeat 5]

The images are 256x256 synthetic Planet JPEGs from `planet.synthetic` (~14 KB each), built
once and cached under `$TMPDIR/planet-bench-resize/` both as one original-image shard (what
the stage reads) and as loose `.jpg` files (what fast.ai reads). The process is pinned to one
core (`os.sched_setaffinity`). For each size (64, 128 and `--size`): naive runs back to
back, then project and limit alternate, run after run; one warm-up run each, then the best of
`--repeat` (noise on a shared machine only adds time). Runs follow each other closely, as a
stage's shards do: on this VM memory freed for more than a few seconds goes back to the host,
and touching it again costs ~1-2 ms/MB, which a naive run (seconds) between two project runs
would charge to every byte the project writes.

- naive: fast.ai's `resize` loop: PIL open, convert RGB, resize (BILINEAR), save as JPEG in a
  temporary folder;
- project: `planet.resize.resize_shard` in this process: read the shard, decode with DCT
  scaling, finish the resize, write the sized shard (hashed, fsynced, renamed);
- limit: `simplejpeg.decode_jpeg(min_height=size, min_width=size)` alone on bytes already in
  memory: libjpeg-turbo's scaled decode, no resize, nothing written.

The last line is `resize ratio=<project images/s / limit images/s>` at `--size`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import simplejpeg
from PIL import Image

from planet.competitions import PLANET
from planet.resize.shard import resize_shard
from planet.store import shards
from planet.store.labels import LabelTable
from planet.synthetic.planet_amazon import make_texture_bank, render_jpeg, sample_labels

CACHE_VERSION = 1


def build_images(n: int, cache: Path) -> tuple[Path, Path, LabelTable]:
    """The cached original-image shard folder and loose-file folder of `n` synthetic Planet
    images (built if missing), and their labels."""
    rng = np.random.default_rng(2017)
    bank = make_texture_bank(rng)
    values = sample_labels(n, rng).astype(np.uint8)
    names = [f"train_{i}" for i in range(n)]
    table = LabelTable(names, values, "multi_hot", PLANET.classes)
    base = cache / f"planet-{n}-v{CACHE_VERSION}"
    shard_dir, jpg_dir = base / "shards", base / "jpg"
    if (shard_dir / "manifest.json").is_file() and jpg_dir.is_dir():
        print(f"images: {base} (cached)")
        return shard_dir, jpg_dir, table
    print(f"building {n:,} images from planet.synthetic in {base} ...", flush=True)
    shutil.rmtree(base, ignore_errors=True)
    jpg_dir.mkdir(parents=True)
    jpegs = [render_jpeg(values[i], rng, bank) for i in range(n)]
    for name, data in zip(names, jpegs, strict=True):
        (jpg_dir / f"{name}.jpg").write_bytes(data)
    rec = shards.write_shard(shard_dir / shards.shard_name(0), shards.image_table(names, jpegs))
    shards.write_manifest(
        shard_dir,
        {
            "format": shards.FORMAT,
            "format_version": shards.FORMAT_VERSION,
            "split": "train",
            "count": n,
            "shards": [rec],
        },
    )
    return shard_dir, jpg_dir, table


def naive(jpg_dir: Path, out: Path, size: int) -> int:
    """fast.ai's resize: one image file in, one smaller JPEG file out."""
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    for path in sorted(jpg_dir.iterdir()):
        with Image.open(path) as im:
            im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR).save(out / path.name)
        n += 1
    return n


def project(src: Path, dest: Path, size: int, table: LabelTable, src_sha256: str) -> int:
    """The resize stage on one shard, in this process."""
    return resize_shard(src, dest, size, table, src_sha256=src_sha256)["rows"]


def limit(jpegs: list[bytes], size: int) -> int:
    for data in jpegs:
        simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=size, min_width=size)
    return len(jpegs)


def timed(run: Callable[[], int], times: list[float], dest: Path | None = None) -> None:
    """Run `run` once and append the seconds it took to `times` (deleting `dest` first)."""
    if dest is not None:
        dest.unlink(missing_ok=True)  # else resize_shard finds it complete and skips it
    t0 = time.perf_counter()
    run()
    times.append(time.perf_counter() - t0)


def fresh(work: Path) -> None:
    """An empty work folder, with earlier writes flushed (not timed)."""
    shutil.rmtree(work, ignore_errors=True)
    os.sync()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / "planet-bench-resize"
    )
    args = parser.parse_args(argv)

    shard_dir, jpg_dir, table = build_images(args.images, args.cache)
    src = shards.shard_paths(shard_dir)[0]
    src_sha256 = shards.read_manifest(shard_dir)["shards"][0]["sha256"]
    jpegs = shards.read_shard(src)[1]
    cpu = max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    print(f"pinned to cpu {cpu}; {len(jpegs):,} images of 256x256, {args.repeat} runs each")

    work = args.cache / "work"
    sizes = list(dict.fromkeys([64, 128, args.size]))
    rates: dict[int, dict[str, float]] = {}
    for size in sizes:
        times: dict[str, list[float]] = {"naive": [], "project": [], "limit": []}
        dest = work / "sized" / shards.shard_name(0)
        fresh(work)
        for i in range(args.repeat + 1):  # run 0 warms up: not counted
            timed(partial(naive, jpg_dir, work / "naive", size), times["naive"] if i else [])
        fresh(work)
        for i in range(args.repeat + 1):  # alternating, so both see the same machine load
            timed(
                partial(project, src, dest, size, table, src_sha256),
                times["project"] if i else [],
                dest,
            )
            timed(partial(limit, jpegs, size), times["limit"] if i else [])
        rates[size] = {k: len(jpegs) / min(v) for k, v in times.items()}
        r = rates[size]
        print(
            f"{size:4d} px: naive {r['naive']:7,.0f} img/s | project {r['project']:7,.0f} img/s "
            f"({r['project'] / r['naive']:.2f}x naive, {r['project'] / r['limit']:.2f} of the "
            f"limit) | limit (decode only) {r['limit']:7,.0f} img/s",
            flush=True,
        )
    shutil.rmtree(work, ignore_errors=True)
    r = rates[args.size]
    print(f"resize ratio={r['project'] / r['limit']:.3f}")


if __name__ == "__main__":
    main()
