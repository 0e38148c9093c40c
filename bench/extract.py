"""Benchmark: stream a Planet-layout `train-jpg.tar.7z` into parquet shards (planet.archives)
against the usual `7z x -so train-jpg.tar.7z | tar x -C dir`.

    .venv/bin/python bench/extract.py [--images 4000] [--repeat 3] [--parallel]

The archive (256x256 JPEGs from `planet.synthetic` when it is importable, else random
textures, ~13-17 KB each like Kaggle's) is built once and cached under
`$TMPDIR/planet-bench-extract/`. Each method runs `--repeat` times, alternating, with
`sync` and cleanup between runs (not timed); the project's time includes hashing the archive
(sha256) and fsyncing every shard, the reference's does not include flushing its files.
Throughputs use each method's best run (the machine may be shared: noise only adds time);
the median is printed too. `--parallel` also times two archives one after the other, in two
threads and in two processes. The last line is `extract ratio=<project/reference images/s>`.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from planet import archives
from planet.competitions import PLANET

DATA_FILE = PLANET.file("train-jpg.tar.7z")
CACHE_VERSION = 1


def _synthetic_members(n: int) -> Iterator[tuple[str, bytes]] | None:
    try:
        from planet.synthetic.planet_amazon import (
            make_texture_bank,
            render_jpeg,
            sample_labels,
        )
    except ImportError:
        return None
    rng = np.random.default_rng(2017)
    bank = make_texture_bank(rng)
    labels = sample_labels(n, rng)
    return ((f"train_{i}.jpg", render_jpeg(labels[i], rng, bank)) for i in range(n))


def _texture_members(n: int) -> Iterator[tuple[str, bytes]]:
    import simplejpeg

    rng = np.random.default_rng(2017)
    for i in range(n):
        base = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
        img = np.kron(base, np.ones((16, 16, 1), dtype=np.uint8)).astype(np.int16)
        img += rng.integers(-12, 12, (256, 256, 3), dtype=np.int16)
        img = np.ascontiguousarray(np.clip(img, 0, 255).astype(np.uint8))
        yield f"train_{i}.jpg", simplejpeg.encode_jpeg(img, quality=85)


def _write_tar_7z(dest: Path, members: Iterator[tuple[str, bytes]]) -> None:
    """Fallback archive writer: tar (dir member first) in a 7z, LZMA2 preset 1."""
    import lzma

    import py7zr

    with tempfile.TemporaryFile(dir=dest.parent) as spool:
        with tarfile.open(fileobj=spool, mode="w", format=tarfile.GNU_FORMAT) as tar:
            d = tarfile.TarInfo(DATA_FILE.inner_dir or "")
            d.type, d.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(d)
            for name, data in members:
                info = tarfile.TarInfo(f"{DATA_FILE.inner_dir}/{name}")
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
        spool.seek(0)
        tmp = dest.with_suffix(".partial")
        filters = [{"id": lzma.FILTER_LZMA2, "preset": 1}]
        with py7zr.SevenZipFile(tmp, "w", filters=filters) as z:
            z.writef(spool, DATA_FILE.name.removesuffix(".7z"))
        tmp.replace(dest)


def build_archive(n: int, cache: Path) -> Path:
    """The cached benchmark archive of `n` images (built if missing)."""
    cache.mkdir(parents=True, exist_ok=True)
    members = _synthetic_members(n)
    source = "planet.synthetic" if members is not None else "random textures"
    tag = "synthetic" if members is not None else "texture"
    path = cache / f"train-jpg-{n}-{tag}-v{CACHE_VERSION}.tar.7z"
    if path.is_file():
        print(f"archive: {path} (cached, {source})")
        return path
    print(f"building {path} ({n:,} images from {source}) ...", flush=True)
    t0 = time.perf_counter()
    if members is None:
        members = _texture_members(n)
    try:
        from planet.synthetic import write_tar_7z

        write_tar_7z(path, DATA_FILE.inner_dir or "", members)
    except ImportError:
        _write_tar_7z(path, members)
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
    archive: Path, cache: Path, name: str = "out-project", decoder: archives.Decoder = "auto"
) -> tuple[float, dict]:
    out = _fresh(cache, name)
    t0 = time.perf_counter()
    manifest = archives.extract_images(archive, DATA_FILE, out, decoder=decoder)
    return time.perf_counter() - t0, manifest


def _job(args: tuple[Path, Path, str, archives.Decoder]) -> int:
    archive, cache, name, decoder = args
    return run_project(archive, cache, name, decoder)[1]["count"]


def run_pair(mode: str, archives_: list[Path], cache: Path, decoder: archives.Decoder) -> float:
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
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / "planet-bench-extract"
    )
    args = ap.parse_args(argv)

    archive = build_archive(args.images, args.cache)
    print(f"archive size {archive.stat().st_size / 1e6:.1f} MB, {os.cpu_count()} CPUs")
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
    decoder = "7-Zip" if archives.find_7z() else "py7zr"
    print(f"{count:,} images, {image_mb:.1f} MB of JPEG; MB/s below are MB of JPEG bytes")
    p_best = _best(f"project, default ({decoder})", project, count, image_mb)
    if project_py7zr:
        _best("project, decoder=py7zr", project_py7zr, count, image_mb)

    if args.parallel:
        second = args.cache / f"copy-{archive.name}"
        if not second.is_file():
            shutil.copyfile(archive, second)
        decoders: list[archives.Decoder] = ["py7zr", "7z"] if have_7z else ["py7zr"]
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
