"""Benchmark: stream a Planet-layout `train-jpg.tar.7z` into parquet shards (planet.extract)
against the usual `7z x -so train-jpg.tar.7z | tar x -C dir`.

    .venv/bin/python bench/extract.py [--images 4000] [--repeat 3] [--parallel]

The archive (256x256 JPEGs from `planet.synthetic`, ~13 KB each; Kaggle's are ~15 KB) is
built once and cached under
`$TMPDIR/planet-bench-extract/`. Each method runs `--repeat` times, alternating, with
`sync` and cleanup between runs (not timed); the project's time includes hashing the archive
(sha256) and fsyncing every shard, the reference's does not include flushing its files.
Throughputs use each method's best run (the machine may be shared: noise only adds time);
the median is printed too. The project runs with its default decoder (the 7-Zip program when
it is on PATH, as here) and, for comparison, with `decoder="py7zr"`. `--parallel` also times
two archives one after the other, in two threads and in two processes, with each decoder.
The last line is `extract ratio=<project default / reference images per second>`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from planet.competitions import PLANET
from planet.extract.images import extract_images
from planet.extract.sevenzip import Decoder, find_7z
from planet.synthetic import write_tar_7z
from planet.synthetic.planet_amazon import make_texture_bank, render_jpeg, sample_labels

DATA_FILE = PLANET.file("train-jpg.tar.7z")
CACHE_VERSION = 1


def _synthetic_members(n: int) -> Iterator[tuple[str, bytes]]:
    rng = np.random.default_rng(2017)
    bank = make_texture_bank(rng)
    labels = sample_labels(n, rng)
    return ((f"train_{i}.jpg", render_jpeg(labels[i], rng, bank)) for i in range(n))


def build_archive(n: int, cache: Path) -> Path:
    """The cached benchmark archive of `n` synthetic Planet images (built if missing)."""
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"train-jpg-{n}-synthetic-v{CACHE_VERSION}.tar.7z"
    if path.is_file():
        print(f"archive: {path} (cached)")
        return path
    print(f"building {path} ({n:,} images from planet.synthetic) ...", flush=True)
    t0 = time.perf_counter()
    write_tar_7z(path, DATA_FILE.inner_dir or "", _synthetic_members(n))
    print(f"built in {time.perf_counter() - t0:.1f} s")
    return path


def _fresh(cache: Path, name: str) -> Path:
    path = cache / name
    shutil.rmtree(path, ignore_errors=True)
    os.sync()
    return path


def run_reference(archive: Path, cache: Path) -> float:
    out = _fresh(cache, "out-reference")
    out.mkdir()
    t0 = time.perf_counter()
    p7 = subprocess.Popen(
        ["7z", "x", "-so", str(archive)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    ptar = subprocess.Popen(["tar", "x", "-C", str(out)], stdin=p7.stdout)
    assert p7.stdout is not None
    p7.stdout.close()
    rc_tar, rc_7z = ptar.wait(), p7.wait()
    dt = time.perf_counter() - t0
    if rc_tar or rc_7z:
        sys.exit(f"reference failed: 7z exit {rc_7z}, tar exit {rc_tar}")
    return dt


def run_project(
    archive: Path, cache: Path, name: str = "out-project", decoder: Decoder = "auto"
) -> tuple[float, dict]:
    out = _fresh(cache, name)
    t0 = time.perf_counter()
    manifest = extract_images(archive, DATA_FILE, out, decoder=decoder)
    return time.perf_counter() - t0, manifest


def _job(args: tuple[Path, Path, str, Decoder]) -> int:
    archive, cache, name, decoder = args
    return run_project(archive, cache, name, decoder)[1]["count"]


def run_pair(mode: str, archives_: list[Path], cache: Path, decoder: Decoder) -> float:
    jobs = [(a, cache, f"out-par-{i}", decoder) for i, a in enumerate(archives_)]
    for _, _, name, _ in jobs:
        _fresh(cache, name)
    t0 = time.perf_counter()
    if mode == "sequential":
        for j in jobs:
            _job(j)
    else:
        pool_cls = ThreadPoolExecutor if mode == "threads" else ProcessPoolExecutor
        with pool_cls(max_workers=2) as pool:
            list(pool.map(_job, jobs))
    return time.perf_counter() - t0


def _best(label: str, times: list[float], images: int, mbytes: float) -> float:
    best, med = min(times), statistics.median(times)
    runs = ", ".join(f"{t:.2f}" for t in times)
    print(
        f"{label:<28} best {best:6.2f} s  {images / best:7.0f} images/s  {mbytes / best:6.1f} MB/s"
        f"   (median {med:.2f} s; runs: {runs})"
    )
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=4000, help="images in the archive (>= 1)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs of each method")
    ap.add_argument("--parallel", action="store_true", help="also time 2 archives at once")
    ap.add_argument(
        "--one-core",
        action="store_true",
        help="pin this process and its children (7z, tar) to one CPU, as when every core "
        "is busy extracting another archive",
    )
    ap.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / "planet-bench-extract"
    )
    args = ap.parse_args(argv)
    if args.one_core:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

    archive = build_archive(args.images, args.cache)
    cpus = len(os.sched_getaffinity(0))
    print(f"archive size {archive.stat().st_size / 1e6:.1f} MB, {cpus} CPU(s) used")
    have_7z = shutil.which("7z") is not None and shutil.which("tar") is not None

    project: list[float] = []
    project_py7zr: list[float] = []
    reference: list[float] = []
    manifest: dict = {}
    for _ in range(max(1, args.repeat)):
        if have_7z:
            reference.append(run_reference(archive, args.cache))
            project_py7zr.append(run_project(archive, args.cache, decoder="py7zr")[0])
        dt, manifest = run_project(archive, args.cache)
        project.append(dt)
    count, image_mb = manifest["count"], manifest["image_bytes"] / 1e6
    decoder = "7-Zip" if find_7z() else "py7zr"
    print(f"{count:,} images, {image_mb:.1f} MB of JPEG; MB/s below are MB of JPEG bytes")
    p_best = _best(f"project, default ({decoder})", project, count, image_mb)
    if project_py7zr:
        _best("project, decoder=py7zr", project_py7zr, count, image_mb)

    if args.parallel:
        second = args.cache / f"copy-{archive.name}"
        if not second.is_file():
            shutil.copyfile(archive, second)
        decoders: list[Decoder] = ["py7zr", "7z"] if have_7z else ["py7zr"]
        pairs = {(d, m): [] for d in decoders for m in ("sequential", "threads", "processes")}
        for _ in range(max(1, args.repeat)):
            for (dec, mode), times in pairs.items():
                times.append(run_pair(mode, [archive, second], args.cache, dec))
        for (dec, mode), times in pairs.items():
            _best(f"2 archives, {dec}, {mode}", times, 2 * count, 2 * image_mb)

    for name in ("out-reference", "out-project", "out-par-0", "out-par-1"):
        shutil.rmtree(args.cache / name, ignore_errors=True)
    if not have_7z:
        print("7z (p7zip) or tar is not installed: the reference `7z x -so | tar x` was skipped")
        return 0
    r_best = _best("reference 7z x -so | tar x", reference, count, image_mb)
    print(f"extract ratio={r_best / p_best:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
