"""Benchmark: a fully cached rerun of the demo pipeline against its first run.

    .venv/bin/python bench/cached_rerun.py [--train N --test N --additional N] [--recipe R]

Starts a Prefect server the way users run one (`planet server`, loopback, its own home), then
runs `planet demo` twice in a fresh work folder against it: the first run does everything
(synthetic data, download, extract, resize, training, TTA, thresholds, submission, submit to
the local server), the second finds every stage Cached (and the submission recorded). Each run
is a separate process timed end to end, so the figures include Python start-up and imports.

Target: the cached rerun takes <= 15 s and <= 5% of the first run. The last line is
`cached_rerun ratio=<cached seconds / first-run seconds>`: lower is better here.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLANET = Path(sys.executable).with_name("planet")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/health", timeout=3) as resp:
            return resp.status == 200
    except OSError:
        return False


def _demo(workdir: Path, env: dict[str, str], extra: list[str]) -> tuple[float, dict]:
    t0 = time.perf_counter()
    done = subprocess.run(
        [str(PLANET), "demo", "--workdir", str(workdir), *extra],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"planet demo failed:\n{done.stderr[-4000:]}")
    return seconds, json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=None)
    parser.add_argument("--test", type=int, default=None)
    parser.add_argument("--additional", type=int, default=None)
    parser.add_argument("--recipe", default=None, help="as `planet demo --recipe`")
    args = parser.parse_args()
    extra = [f"--{k}={v}" for k, v in vars(args).items() if v is not None and k != "recipe"] + (
        ["--recipe", args.recipe] if args.recipe else []
    )

    with tempfile.TemporaryDirectory(prefix="planet-bench-rerun-") as tmp:
        tmp_path = Path(tmp)
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        server = subprocess.Popen(
            [str(PLANET), "server", "--home", str(tmp_path / "home"), "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 240
            while not _healthy(url):
                if server.poll() is not None or time.monotonic() > deadline:
                    sys.exit("the Prefect server did not start")
                time.sleep(1)
            client = env | {
                "PREFECT_API_URL": f"{url}/api",
                "PREFECT_HOME": str(tmp_path / "client"),
            }
            first, summary = _demo(tmp_path / "demo", client, extra)
            cached, again = _demo(tmp_path / "demo", client, extra)
        finally:
            os.killpg(server.pid, 15)
            server.wait(timeout=60)
    same = again.get("score") == summary.get("score")
    print(f"first run:     {first:8.1f} s  (score {summary.get('score')})")
    print(f"cached rerun:  {cached:8.1f} s  (same score: {same})")
    print(f"share:         {100 * cached / first:8.1f} %   target <= 15 s and <= 5 %")
    print(f"cached_rerun ratio={cached / first:.4f}")


if __name__ == "__main__":
    main()
