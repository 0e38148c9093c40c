"""Benchmark: images per second of whole training steps (batch loading included), this
project's loop against a plain PyTorch loop, for resnet18/34 at 64 and 128 px, and the
project's loop at each precision side by side.

    .venv/bin/python bench/train_step.py [--archs resnet18,resnet34] [--sizes 64,128]
        [--batch-size 32] [--steps 4] [--warmup 1] [--repeat 2] [--quick]
        [--precisions fp32,bf16] [--no-reference]

The images are `--images` synthetic 256 px Planet chips (`planet.synthetic`), built once and
cached under `$TMPDIR/planet-bench-train-step/` like `bench/loader.py` builds them: one
original-image shard, resized by the project's own `planet.resize.resize_split` into sized
shards at each size, and the same sized pixels written as JPEG files (quality 90) in an
ImageFolder layout (`jpeg-<size>/<weather tag>/<name>.jpg`), so both sides see the same
pixels at the same size and neither resizes while training.

What is compared, per (arch, size), on the same model (`create_model(arch, 17,
pretrained=False)`, a fresh instance from the same seed on each side):

- project: `read_images` (not timed: once per training run), `Loader(shuffle=True,
  drop_last=True, augment=Augment(), workers=--workers)` (dihedral, zoom, lighting per sample,
  in threads) feeding `planet.learn.fit._train_step` with `make_optimizer` (AdamW per layer group)
  and BCE-with-logits on the multi-hot targets: what `fit_one_cycle` runs per batch (less the
  scheduler step). As the train stage runs: channels_last model and batches on every device
  (measured +15-25% per step on this CPU). One project side per `--precisions` entry
  (`planet.learn.precision`: fp32, bf16 autocast, fp16 autocast with a GradScaler; default
  fp32 and bf16 on the CPU, bf16 and fp16 on CUDA, where `auto` picks one of them by the GPU);
- reference: `DataLoader(ImageFolder(root, RandomHorizontalFlip, ToTensor, Normalize),
  shuffle=True, drop_last=True, num_workers=--workers, persistent_workers=True)` (worker
  start-up not counted; no pinned memory), `torch.optim.AdamW(model.parameters())` and
  `opt.zero_grad(); cross_entropy(model(x), y).backward(); opt.step()` in float32.
  ImageFolder labels are single class indices (the weather tag), hence cross-entropy: on 17
  logits per image its cost next to BCE is nothing beside a resnet's forward and backward.

Each side runs `--warmup` steps, then `--repeat` rounds, alternating the sides (so the
precisions are interleaved: a shared machine's slow spells fall on all of them alike), of
`--steps` timed steps each (the iterators, models and optimisers carry on from round to
round); images/s = batch * steps / seconds, best round per side (noise on a shared machine
only adds time). `wait` is the share of a side's timed seconds spent waiting for its next
batch. On CUDA the timing is synchronised and `nvidia-smi`'s GPU utilisation is sampled in a
background thread while each side runs (mean of the samples, `n/a` when it cannot be read).

The last lines are `precision <a>/<b> ratio=<geometric mean over the configurations of the
second precision's rate / the first's>` (per configuration the median over rounds of the two
sides' ratio in the same round; on the CPU of images per CPU second of this process, which a
shared machine's other jobs barely move, where wall-clock rates varied 10x under load) and `train_step ratio=<geometric mean over the configurations of project
images/s (at the precision `auto` picks here) / reference images/s>` (this one only with the
reference side, and `auto`'s precision among `--precisions`).

Measured on the 2-core development machine while another job used about one core (two full
runs, ~3.5-4 min each): project / reference images/s resnet18 64 px 40.7 / 37.5 and 34.6 /
36.2, 128 px 11.9 / 12.8 and 12.5 / 13.4; resnet34 64 px 17.1 / 17.2 and 18.5 / 17.2, 128 px
7.2 / 6.9 and 6.4 / 7.8 (`train_step ratio=1.013`, `0.940`; rounds of one side varied up to 2x
under that load). On the CPU the model's forward and backward are nearly all of a step (both
sides waited for batches under 1% of the time): the project's loader, much faster than JPEG
decoding (`bench/loader.py`), buys nothing here, and its threads share the two cores with the
model.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from synthetic_data import original_shards

from planet.competitions import PLANET, PLANET_WEATHER_TAGS
from planet.constants import IMAGENET_MEAN, IMAGENET_STD
from planet.learn.augment import Augment
from planet.learn.fit import _train_step, loss_function, make_optimizer, resolve_device
from planet.learn.loader import Loader
from planet.learn.model import create_model
from planet.learn.precision import REQUESTS, Precision, choose_precision
from planet.resize.split import resize_split
from planet.store.sized import read_images
from planet.synthetic.planet_amazon import (
    CLASS_INDEX,
)

CACHE_VERSION = 1
SHARD_ROWS = 1000
JPEG_QUALITY = 90
LR = 1e-3
MODEL_SEED = 0


# ---------------------------------------------------------------------------------------------
# Data


def build(n: int, sizes: list[int], cache: Path) -> dict[int, tuple[Path, Path]]:
    """The cached (sized shard folder, ImageFolder root) per size for `n` synthetic images."""
    root = cache / f"v{CACHE_VERSION}-{n}"
    original, table = original_shards(root, n)
    weather = [CLASS_INDEX[t] for t in PLANET_WEATHER_TAGS]
    out: dict[int, tuple[Path, Path]] = {}
    for size in sizes:
        sized, folder_root = root / str(size), root / f"jpeg-{size}"
        t0 = time.perf_counter()
        resize_split(original, sized, size, table)  # returns at once when already complete
        done = folder_root / ".complete"
        if not done.is_file():
            shutil.rmtree(folder_root, ignore_errors=True)
            data = read_images(sized)
            assert data.labels is not None
            for name, pixels, row in zip(data.names, data.images, data.labels, strict=True):
                tag = PLANET_WEATHER_TAGS[int(np.argmax(row[weather]))]
                path = folder_root / tag / f"{name}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                buf = BytesIO()
                Image.fromarray(pixels).save(buf, format="JPEG", quality=JPEG_QUALITY)
                path.write_bytes(buf.getvalue())
            done.touch()
        print(f"{size} px: {sized} and {folder_root} ({time.perf_counter() - t0:.1f} s)")
        out[size] = (sized, folder_root)
    return out


# ---------------------------------------------------------------------------------------------
# GPU utilisation


class GpuSampler:
    """Samples the GPU's utilisation (%) every `period` seconds in a background thread:
    `torch.cuda.utilization()` (needs pynvml) or else `nvidia-smi`; no samples when neither
    answers."""

    def __init__(self, device: torch.device, period: float = 0.1) -> None:
        self.device = device
        self.period = period
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._read = self._pick()

    @property
    def available(self) -> bool:
        return self._read is not None

    def _pick(self) -> Callable[[], float] | None:
        if self.device.type != "cuda":
            return None
        try:
            torch.cuda.utilization(self.device)
            return lambda: float(torch.cuda.utilization(self.device))
        except Exception:
            pass
        index = self.device.index if self.device.index is not None else 0
        cmd = [
            "nvidia-smi",
            f"--id={index}",
            "--query-gpu=utilization.gpu",
            "--format=csv,noheader,nounits",
        ]

        def smi() -> float:
            return float(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)

        try:
            smi()
        except (OSError, subprocess.SubprocessError, ValueError):
            return None
        return smi

    def _loop(self) -> None:
        assert self._read is not None
        while not self._stop.wait(self.period):
            try:
                self.samples.append(self._read())
            except Exception:
                return

    def __enter__(self) -> GpuSampler:
        self.samples = []
        if self._read is not None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="gpu-sampler", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.samples)) if self.samples else None


# ---------------------------------------------------------------------------------------------
# The two loops


@dataclass
class Side:
    """One side's batches (forever, epoch after epoch) and its training step."""

    name: str
    batches: Generator[tuple[torch.Tensor, torch.Tensor], None, None] | None
    step: Callable[[torch.Tensor, torch.Tensor], None] | None
    rates: list[float] = field(default_factory=list)
    cpu_rates: list[float] = field(default_factory=list)  # images per CPU second (this process)
    waits: list[float] = field(default_factory=list)
    utils: list[float] = field(default_factory=list)

    def close(self) -> None:
        """Stop the loader (its threads or worker processes) and let the model go."""
        if self.batches is not None:
            self.batches.close()  # a Loader epoch's `finally` stops its threads
        self.batches = self.step = None


def forever(loader: Any) -> Generator[Any, None, None]:
    while True:
        yield from loader


def project_side(
    sized: Path, arch: str, device: torch.device, args: argparse.Namespace, precision: Precision
) -> Side:
    data = read_images(sized)
    loader = Loader(
        data,
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        augment=Augment(),
        device=device,
        seed=0,
        workers=args.workers,
        channels_last=True,  # as the train stage runs, on every device
    )
    torch.manual_seed(MODEL_SEED)
    model = create_model(arch, len(PLANET.classes), pretrained=False).to(device)
    model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = make_optimizer(model, [LR] * len(model.param_groups()))
    loss_fn = loss_function("multi_label")
    scaler = precision.scaler()

    def step(images: torch.Tensor, targets: torch.Tensor) -> None:
        _train_step(model, images, targets, loss_fn, optimizer, precision, scaler)

    return Side(f"project {precision.name}", forever(loader), step)


def reference_side(
    folder_root: Path, arch: str, device: torch.device, args: argparse.Namespace
) -> Side:
    from torchvision import datasets, transforms

    tf = transforms.Compose(
        [
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    dataset = datasets.ImageFolder(str(folder_root), transform=tf)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
    )
    torch.manual_seed(MODEL_SEED)
    model = create_model(arch, len(PLANET.classes), pretrained=False).to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)

    def step(images: torch.Tensor, targets: torch.Tensor) -> None:
        images, targets = images.to(device), targets.to(device)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(images), targets)
        loss.backward()
        optimizer.step()

    return Side("reference", forever(loader), step)


def run_steps(side: Side, steps: int, device: torch.device) -> tuple[float, float, float]:
    """(seconds, seconds waiting for batches, CPU seconds of this process) of `steps` training
    steps."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
    assert side.batches is not None and side.step is not None
    wait = 0.0
    c0 = time.process_time()
    t0 = time.perf_counter()
    for _ in range(steps):
        t1 = time.perf_counter()
        images, targets = next(side.batches)
        wait += time.perf_counter() - t1
        side.step(images, targets)
    if cuda:
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0, wait, time.process_time() - c0


def bench_config(
    arch: str,
    size: int,
    paths: tuple[Path, Path],
    device: torch.device,
    sampler: GpuSampler,
    args: argparse.Namespace,
) -> dict[str, Side]:
    sized, folder_root = paths
    sides = {}
    for precision in args.precision_list:
        side = project_side(sized, arch, device, args, precision)
        sides[side.name] = side
    if args.reference:
        sides["reference"] = reference_side(folder_root, arch, device, args)
    for side in sides.values():  # warm-up: worker start-up, allocator, cuDNN choices
        run_steps(side, args.warmup, device)
    for _ in range(args.repeat):
        for side in sides.values():
            with sampler:
                seconds, wait, cpu_seconds = run_steps(side, args.steps, device)
            side.rates.append(args.batch_size * args.steps / seconds)
            side.cpu_rates.append(args.batch_size * args.steps / max(cpu_seconds, 1e-9))
            side.waits.append(wait / seconds)
            if sampler.mean is not None:
                side.utils.append(sampler.mean)
            util = f", GPU {sampler.mean:.0f}%" if sampler.mean is not None else ""
            print(
                f"  {arch} {size} px {side.name}: {side.rates[-1]:,.1f} img/s, "
                f"{side.cpu_rates[-1]:,.1f} per CPU s (wait {side.waits[-1]:.0%}{util})",
                flush=True,
            )
    for side in sides.values():
        side.close()
    return sides


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", default="resnet18,resnet34", help="comma-separated")
    parser.add_argument("--sizes", default="64,128", help="comma-separated image sides (px)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--steps", type=int, default=None, help="timed steps per round (CPU 4, CUDA 30)"
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed steps per side first (CPU 1, CUDA 5)"
    )
    parser.add_argument("--repeat", type=int, default=2, help="timed rounds per side")
    parser.add_argument("--workers", type=int, default=2, help="loader threads / processes")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda")
    parser.add_argument(
        "--precisions",
        default=None,
        help="comma-separated project sides: fp32, bf16, fp16, auto (CPU fp32,bf16; CUDA "
        "bf16,fp16)",
    )
    parser.add_argument(
        "--reference",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the plain PyTorch loop",
    )
    parser.add_argument(
        "--quick", action="store_true", help="resnet18 at 64 px only, few steps (smoke test)"
    )
    parser.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / "planet-bench-train-step"
    )
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    if args.steps is None:
        args.steps = 30 if cuda else 4  # resnet34 at 128 px: ~2-3 s a step of 32 on 2 cores
    if args.warmup is None:
        args.warmup = 5 if cuda else 1
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if args.quick:
        archs, sizes = ["resnet18"], [64]
        args.steps, args.warmup, args.repeat = min(args.steps, 3), min(args.warmup, 1), 1
    if args.images < args.batch_size:
        parser.error(f"--images {args.images} is less than one batch of {args.batch_size}")
    wanted = (args.precisions or ("bf16,fp16" if cuda else "fp32,bf16")).split(",")
    try:
        chosen = [choose_precision(device, p.strip()) for p in wanted if p.strip()]
    except ValueError as exc:
        parser.error(str(exc))
    args.precision_list = list(dict.fromkeys(chosen))  # auto may repeat an explicit one
    if not args.precision_list:
        parser.error(f"--precisions: a comma-separated list of {', '.join(REQUESTS)}")
    auto = choose_precision(device)

    paths = build(args.images, sizes, args.cache)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"{args.images:,} images, batch {args.batch_size}, {args.warmup} warm-up + "
        f"{args.repeat} x {args.steps} timed steps per side, {args.workers} workers, "
        f"device {device} ({name}), {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads)",
        flush=True,
    )
    sampler = GpuSampler(device)
    if device.type == "cuda" and not sampler.available:
        print("GPU utilisation: neither torch.cuda.utilization nor nvidia-smi answers")

    rows = []
    for arch in archs:
        for size in sizes:
            rows.append((arch, size, bench_config(arch, size, paths[size], device, sampler, args)))
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()

    gpu = device.type == "cuda"
    extra = " GPU" if gpu else f" {'per CPU s':>10}"
    print(f"{'arch':<9} {'size':>4} {'side':<16} {'img/s':>8} {'wait':>5}" + extra)

    def util(side: Side) -> str:
        return f" {np.mean(side.utils):3.0f}%" if side.utils else "  n/a"

    for arch, size, sides in rows:
        for side in sides.values():
            best = int(np.argmax(side.rates))
            line = f"{arch:<9} {size:>4} {side.name:<16} {side.rates[best]:>8,.1f}"
            cpu = f" {np.median(side.cpu_rates):>10,.1f}"  # the median: see round_ratio
            print(line + f" {side.waits[best]:>5.0%}" + (util(side) if gpu else cpu))

    def geo(values: list[float]) -> float:
        return math.exp(sum(math.log(v) for v in values) / len(values))

    def round_ratio(a: Side, b: Side) -> float:
        """The median over rounds of a's rate / b's in the same round (adjacent in time); on
        the CPU of images per CPU second, which other jobs on the machine barely move."""
        ra, rb = (a.rates, b.rates) if gpu else (a.cpu_rates, b.cpu_rates)
        return float(np.median([x / y for x, y in zip(ra, rb, strict=True)]))

    names = [f"project {p.name}" for p in args.precision_list]
    if len(names) > 1:
        a, b = names[1], names[0]
        ratios = [round_ratio(sides[a], sides[b]) for _, _, sides in rows]
        per = ", ".join(
            f"{arch} {size} px {r:.2f}" for (arch, size, _), r in zip(rows, ratios, strict=True)
        )
        print(f"{a.split()[1]} / {b.split()[1]}: {per}")
        print(f"precision {a.split()[1]}/{b.split()[1]} ratio={geo(ratios):.3f}")
    ours = f"project {auto.name}"
    if args.reference and ours in names:
        ratios = [max(sides[ours].rates) / max(sides["reference"].rates) for *_, sides in rows]
        print(f"project at {auto.name} (auto here) / reference")
        print(f"train_step ratio={geo(ratios):.3f}")


if __name__ == "__main__":
    main()
