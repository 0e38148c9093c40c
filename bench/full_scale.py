"""Benchmark: the pipeline on the full-size synthetic Planet, stage by stage, each timed with its
peak memory, against the seeds' way of unpacking the same archives.

    .venv/bin/python bench/full_scale.py [--train 40479 --test 40669 --additional 20522]
        [--batches-256 200] [--batch-256 32] [--precision-256 auto] [--no-submit] [--keep]
        [--stop-after prepare]

The competition (`planet.synthetic`, seed 0; 1.3 GB of `.tar.7z` at full size) is generated
once and cached under `$TMPDIR/planet-bench-full/g<generator version>-<sizes>-s0/` (~5 min at
full size); small `--train/--test/--additional` make a quick smoke run. One `planet server`
(its own home, loopback) serves the Prefect API of every stage and the local Kaggle server runs
in this process with made-up credentials; neither is counted in the figures.

Each stage runs in a fresh child process, one after another in one fresh data folder:

- `prepare`: `planet run --stages prepare` (fetch every file from the local server with the
  real kaggle client, then extract the archives into parquet shards): "fetch+extract";
- `resize`: `planet run --stages resize --sizes 64 128 256` (the split, and every split at
  each size on the LocalCluster's Dask workers);
- `train 64`: `planet run --stages train` of a one-stage recipe: resnet18 from random weights
  (`pretrained: false`, no weights offline), 64 px, all layers, one epoch over every train
  image of the split, a fixed one-cycle rate of 2e-3 (no LR finder), batch 32, augmentation
  on; the epoch ends with the validation pass;
- `train 256`: the same model, 256 px, `--batches-256` steps of `--batch-256` images through
  the library (`read_images` over the 256 px train folder, `Loader` with augmentation and 2
  workers reading batches from the shard files, `_train_step` with AdamW, channels_last, at
  the precision the train stage chooses: bf16 where the CPU has it natively, `--precision-256`
  to force one): the recipe has no batch limit and a 256 px epoch on 2 cores takes hours; the
  point is memory;
- `predict`: `planet run --stages predict --no-tta` (TTA off: one pass, not 8 symmetries) of
  every validation and test image at 64 px; `thresholds`; `submission`; `submit`: to the local
  server, waiting for the grader's score.

Memory: every 0.2 s the stage's process tree (the child and all its descendants: Dask workers,
loader threads are in the child) is read from `/proc/<pid>/status`; "peak RSS" is the largest
sum of `VmRSS` over the tree at one sample, "anon" the same for `RssAnon` (the processes' own
memory: `RssFile`, the rest, is mostly shared libraries; shard pages read with `os.preadv`
stay in the page cache, outside every process's RSS). `hwm` is the child's own `ru_maxrss`
(`os.wait4`).
images/s: images the stage handled over its seconds (wall time of the whole child: Python
start-up, imports and Prefect round trips included).

The seeds' way of unpacking: `7z x <archive> -o<dir>` then `tar xf <dir>/<name>.tar`, archive by
archive, into a fresh folder (`sync` before; the loose files are not flushed). The project's
`prepare` also fetches the files from the server, writes a few parquet shards with a manifest
and hashes every archive and shard. The two run `--unpack-rounds` times, alternating, each
`prepare` into a fresh data folder (the last one's is kept for the later stages), and each
side's fastest round counts: noise only adds time, and the seeds' side writes 1.4 GB of tar
and 100k loose files, which the disk's state slowed from 59 s to 99 s between back-to-back
runs (bench/README.md).

The last lines are `full_scale ratio=<seed-style unpack seconds / project fetch+extract
seconds>` and `full_scale peak_rss_gb=<the largest peak RSS of any stage>`. Targets: ratio
>= 1.5; peak RSS <= 3 GB for every stage.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cached_rerun import _free_port, _healthy  # noqa: E402

from planet.competitions import PLANET  # noqa: E402

PLANET_CLI = [sys.executable, "-m", "flows.cli"]
FULL = {"train": 40479, "test": 40669, "additional": 20522}
SAMPLE_S = 0.2
LR = "2e-3"
ARCH = "resnet18"
GB = 1e9


@dataclass
class Stage:
    name: str
    seconds: float
    images: int | None
    peak_rss: int
    peak_anon: int
    hwm: int
    note: str = ""
    summary: dict = field(default_factory=dict)

    def line(self) -> str:
        rate = f"{self.images / self.seconds:9,.0f}" if self.images else f"{'-':>9}"
        count = f"{self.images:>8,}" if self.images else f"{'-':>8}"
        return (
            f"{self.name:<22} {self.seconds:8.1f} s {count} {rate} img/s  peak RSS "
            f"{self.peak_rss / GB:5.2f} GB (anon {self.peak_anon / GB:5.2f}, child hwm "
            f"{self.hwm / GB:5.2f})  {self.note}"
        )


def _status_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, RssAnon) of one process in bytes; zeros once it is gone."""
    rss = anon = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("RssAnon:"):
                    anon = int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss, anon


def measure(
    name: str, cmd: list[str], env: dict[str, str], images: int | None, log: Path, note: str = ""
) -> Stage:
    """Run `cmd` as a fresh child, sampling its process tree's memory; exit on failure."""
    print(f"-- {name}: {' '.join(cmd[2:] if cmd[:2] == PLANET_CLI[:2] else cmd)}", flush=True)
    peak_rss = peak_anon = 0
    with open(log, "w") as out:
        t0 = time.perf_counter()
        child = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        proc = psutil.Process(child.pid)
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            try:
                tree = [child.pid, *(p.pid for p in proc.children(recursive=True))]
            except psutil.Error:
                tree = [child.pid]
            sums = [_status_kb(p) for p in tree]
            peak_rss = max(peak_rss, sum(s[0] for s in sums))
            peak_anon = max(peak_anon, sum(s[1] for s in sums))
            time.sleep(SAMPLE_S)
        seconds = time.perf_counter() - t0
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        sys.exit(f"{name} failed (exit {child.returncode}); its output:\n{log.read_text()[-6000:]}")
    summary: dict = {}
    for line in reversed(log.read_text().splitlines()):
        if line.startswith("{"):
            summary = json.loads(line)
            break
    hwm = usage.ru_maxrss * 1024
    stage = Stage(name, seconds, images, max(peak_rss, hwm), peak_anon, hwm, note, summary)
    print(stage.line(), flush=True)
    return stage


def seed_unpack(archives: list[Path], out: Path, env: dict[str, str], log: Path, n: int) -> Stage:
    """`7z x` then `tar xf`, archive by archive, as the seed notebooks do."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    os.sync()
    script = " && ".join(
        f"7z x -y -bd {a} -o{out} >/dev/null && tar xf {out / a.name[: -len('.7z')]} -C {out}"
        f" && rm {out / a.name[: -len('.7z')]}"
        for a in archives
    )
    stage = measure(
        "seed-style 7z x + tar", ["bash", "-c", script], env, n, log, "sequential, per archive"
    )
    shutil.rmtree(out, ignore_errors=True)
    return stage


def best_of(rounds: list[Stage]) -> Stage:
    """The fastest of a stage's rounds (noise only adds time), the others' seconds noted."""
    best = min(rounds, key=lambda s: s.seconds)
    if len(rounds) > 1:
        times = " / ".join(f"{s.seconds:.1f}" for s in rounds)
        best.note += f"; best of {len(rounds)} rounds: {times} s"
    return best


def train_256(data_dir: str, batches: int, batch_size: int, precision: str) -> None:
    """The child of the 256 px stage: `batches` training steps over the train folder."""
    import torch

    from planet.learn.augment import Augment
    from planet.learn.fit import _train_step, loss_function, make_optimizer, precision_for
    from planet.learn.loader import Loader
    from planet.learn.model import create_model, to_channels_last
    from planet.workspace import Workspace

    torch.manual_seed(0)
    ws = Workspace.of(data_dir, PLANET)
    data = ws.sized(256, "train").read()
    loader = Loader(
        data,
        ws.split.read().train_names,
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        augment=Augment(),
        workers=2,
        channels_last=True,
    )
    model = to_channels_last(create_model(ARCH, len(PLANET.classes), pretrained=False))
    model.train()
    optimizer = make_optimizer(model, [float(LR)] * len(model.param_groups()))
    loss_fn = loss_function("multi_label")
    chosen = precision_for(torch.device("cpu"), precision)  # as the train stage chooses
    scaler = chosen.scaler()
    print(f"precision: {chosen.name}", flush=True)
    done, t0, steady = 0, time.perf_counter(), 0.0
    while done < batches:
        for images, targets in loader:
            step = _train_step(model, images, targets, loss_fn, optimizer, chosen, scaler)
            loss = float(step)
            done += 1
            if done == 1:
                steady = time.perf_counter()  # the first step: start-up, first touches
            if done % 25 == 0:
                rate = done * batch_size / (time.perf_counter() - t0)
                print(f"batch {done}: loss {loss:.4f}, {rate:.1f} img/s", flush=True)
            if done >= batches:
                break
    rate = (done - 1) * batch_size / max(time.perf_counter() - steady, 1e-9)
    print(
        json.dumps(
            {
                "batches": done,
                "images": done * batch_size,
                "steps_rate": rate,
                "precision": chosen.name,
            }
        )
    )


def recipe_json(path: Path) -> Path:
    recipe = {
        "name": "full-scale-64",
        "arch": ARCH,
        "pretrained": False,
        "stages": [{"size": 64, "frozen": False, "epochs": 1, "lr": LR, "batch_size": 32}],
    }
    path.write_text(json.dumps(recipe))
    return path


def competition(cache: Path, sizes: dict[str, int]) -> Path:
    """The cached synthetic competition's root (generated unless complete)."""
    from flows.demo import ensure_synthetic
    from planet.synthetic.build import GENERATOR_VERSION

    root = cache / f"g{GENERATOR_VERSION}-{sizes['train']}-{sizes['test']}-{sizes['additional']}-s0"
    t0 = time.perf_counter()
    out = ensure_synthetic(PLANET.slug, root, seed=0, **sizes)
    size = sum(f.stat().st_size for f in out.glob("*.7z"))
    print(f"competition: {out} ({size / GB:.2f} GB of .tar.7z; {time.perf_counter() - t0:.0f} s)")
    return root


def start_prefect(home: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [*PLANET_CLI, "server", "--home", str(home), "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    while not _healthy(url):
        if server.poll() is not None or time.monotonic() > deadline:
            sys.exit("the Prefect server did not start")
        time.sleep(1)
    return server, url


def run_stages(args: argparse.Namespace, kaggle_root: Path, tmp: Path) -> list[Stage]:
    import secrets

    from planet.kaggle_local import LocalKaggleServer
    from planet.workspace import Workspace

    sizes = {"train": args.train, "test": args.test, "additional": args.additional}
    n_all = sum(sizes.values())
    n_test = args.test + args.additional
    user, key = "full-scale-bench", secrets.token_hex(16)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "KAGGLE_"))}
    base["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), base.get("PYTHONPATH")]))
    server, url = start_prefect(tmp / "prefect-home", base)
    logs = tmp / "logs"
    logs.mkdir()
    try:
        with LocalKaggleServer(kaggle_root, credentials={user: key}) as kaggle:
            env = base | {
                "PREFECT_API_URL": f"{url}/api",
                "PREFECT_HOME": str(tmp / "client"),
                "KAGGLE_USERNAME": user,
                "KAGGLE_KEY": key,
            }
            recipe = recipe_json(tmp / "recipe.json")
            common = [
                "--kaggle-endpoint",
                kaggle.url,
                "--recipe",
                str(recipe),
                "--device",
                "cpu",
            ]

            def planet(
                stage: str, images: int | None, *extra: str, note: str = "", data: str = "data"
            ) -> Stage:
                cmd = [*PLANET_CLI, "run", "--stages", stage, "--data-dir", str(tmp / data)]
                cmd += [*common, *extra]
                return measure(stage, cmd, env, images, logs / f"{stage}-{data}.log", note)

            archives = sorted(kaggle_root.glob(f"{PLANET.slug}/*.tar.7z"))
            seeds, prepares = [], []
            for r in range(args.unpack_rounds):  # alternating; the last round's data is kept
                last = r == args.unpack_rounds - 1
                seeds.append(
                    seed_unpack(archives, tmp / "seed-unpack", env, logs / "seed.log", n_all)
                )
                data = "data" if last else f"data-round-{r}"
                prepares.append(planet("prepare", n_all, note="fetch+extract", data=data))
                if not last:
                    shutil.rmtree(tmp / data)
            stages = [best_of(seeds), best_of(prepares)]
            if args.stop_after == "prepare":
                return stages
            stages.append(
                planet(
                    "resize", n_all, "--sizes", "64", "128", "256", note="x3 sizes: 64, 128, 256"
                )
            )
            split = Workspace.of(tmp / "data", PLANET).split.read()  # made by resize
            n_valid = int(split.is_valid.sum())
            n_train = len(split.names) - n_valid
            n_train -= n_train % 32  # the recipe's batch of 32, drop_last
            shards = tmp / "data" / PLANET.slug / "shards"
            on_disk = {
                d.name: sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
                for d in sorted(shards.iterdir())
                if d.is_dir()
            }
            print(
                "shards on disk: " + ", ".join(f"{k} {v / GB:.2f} GB" for k, v in on_disk.items())
            )
            stages.append(
                planet(
                    "train",
                    n_train,
                    note=f"64 px, 1 epoch: {n_train:,} train images, then {n_valid:,} valid",
                )
            )
            stages[-1].name = "train 64 px (1 epoch)"
            epoch = stages[-1].summary.get("train", {}).get("epochs", [{}])[0]
            if "seconds" in epoch:
                stages[-1].note += (
                    f"; the epoch itself {epoch['seconds']:.0f} s, "
                    f"{n_train / epoch['seconds']:.0f} img/s, valid f2 {epoch.get('f2', 0):.3f}"
                )
            n256 = args.batches_256 * args.batch_256
            stages.append(
                measure(
                    "train 256 px",
                    [
                        sys.executable,
                        __file__,
                        "--child-train-256",
                        str(tmp / "data"),
                        "--batches-256",
                        str(args.batches_256),
                        "--batch-256",
                        str(args.batch_256),
                        "--precision-256",
                        args.precision_256,
                    ],
                    env,
                    n256,
                    logs / "train256.log",
                    f"{args.batches_256} batches of {args.batch_256}, batches read from the files",
                )
            )
            if "steps_rate" in stages[-1].summary:
                stages[
                    -1
                ].note += f"; steps after the first {stages[-1].summary['steps_rate']:.1f} img/s"
            stages.append(
                planet("predict", n_valid + n_test, "--no-tta", note="64 px, TTA off, valid + test")
            )
            stages.append(planet("thresholds", n_valid))
            stages.append(planet("submission", n_test))
            if args.submit:
                stages.append(planet("submit", None, "--submit", note="local grader"))
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=60)
    return stages


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, n in FULL.items():
        ap.add_argument(f"--{name}", type=int, default=n, help=f"images (default {n:,})")
    ap.add_argument("--batches-256", type=int, default=200, help="training steps at 256 px")
    ap.add_argument("--batch-256", type=int, default=32, help="images per 256 px step")
    ap.add_argument(
        "--precision-256",
        default="auto",
        choices=["auto", "fp32", "bf16"],
        help="the 256 px steps' precision (auto: as the train stage chooses)",
    )
    ap.add_argument(
        "--unpack-rounds",
        type=int,
        default=2,
        help="rounds of the unpacking comparison (seed-style, then prepare); each side's best",
    )
    ap.add_argument("--submit", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--keep", action="store_true", help="keep the data folder (printed)")
    ap.add_argument(
        "--stop-after",
        choices=["prepare"],
        help="stop after this stage (the unpacking comparison alone: prepare)",
    )
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "planet-bench-full")
    ap.add_argument("--child-train-256", metavar="DATA_DIR", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.unpack_rounds < 1:
        ap.error(f"--unpack-rounds must be at least 1, got {args.unpack_rounds}")
    if args.child_train_256:
        train_256(args.child_train_256, args.batches_256, args.batch_256, args.precision_256)
        return 0
    if shutil.which("7z") is None or shutil.which("tar") is None:
        sys.exit("7z (p7zip) and tar are needed for the seeds' way of unpacking")

    print(
        f"start {time.strftime('%Y-%m-%d %H:%M:%S')}, load average {os.getloadavg()}, "
        f"{os.cpu_count()} CPUs, {psutil.virtual_memory().total / GB:.1f} GB"
    )
    sizes = {"train": args.train, "test": args.test, "additional": args.additional}
    kaggle_root = competition(args.cache, sizes)
    tmp = Path(tempfile.mkdtemp(prefix="planet-bench-full-run-"))
    try:
        stages = run_stages(args, kaggle_root, tmp)
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nend {time.strftime('%H:%M:%S')}, load average {os.getloadavg()}")
    print(f"{'stage':<22} {'seconds':>10} {'images':>8} {'rate':>15}")
    for s in stages:
        print(s.line())
    score = stages[-1].summary.get("score") if args.submit else None
    if score is not None:
        print(f"local grader's score (public): {score}")
    seed, prepare = stages[0], next(s for s in stages if s.name == "prepare")
    project_peak = max(s.peak_rss for s in stages[1:])
    print("targets: ratio >= 1.5; peak RSS <= 3 GB for every stage")
    print(f"full_scale ratio={seed.seconds / prepare.seconds:.3f}")
    print(f"full_scale peak_rss_gb={project_peak / GB:.3f}")
    anon = max(stages[1:], key=lambda s: s.peak_anon)
    print(f"(own memory, RssAnon: largest {anon.peak_anon / GB:.3f} GB, in {anon.name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
