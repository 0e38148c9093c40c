"""The reliability suite, as a runner: every case of tests/reliability/ (download faults, kill -9
inside every stage, bad inputs, secrets, server exposure, load), one line per case, then a
tally.

    .venv/bin/python bench/reliability.py [-k EXPR] [--seed N] [pytest options...]

Each line reads `PASS|FAIL|SKIP <seconds> <case>`; a failure is followed by the first lines of
its report. The last line is `reliability passed=<n> failed=<m>` (skipped cases are counted in
neither and listed). `--seed` draws other random kill points and cut offsets
(PLANET_RELIABILITY_SEED). The exit code is 0 only when nothing failed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


class Tally:
    """A pytest plugin printing one line per case and counting outcomes."""

    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0
        self.skipped: list[str] = []
        self._started: dict[str, float] = {}

    def pytest_runtest_logstart(self, nodeid: str, location: Any) -> None:
        self._started[nodeid] = time.perf_counter()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        case = report.nodeid.removeprefix("tests/reliability/")
        failed = report.failed
        if report.when == "call" or (report.when == "setup" and (failed or report.skipped)):
            seconds = time.perf_counter() - self._started.get(report.nodeid, time.perf_counter())
            if report.skipped:
                self.skipped.append(case)
                self._line("SKIP", seconds, case)
            elif failed:
                self.failed += 1
                self._line("FAIL", seconds, case)
                for text in str(report.longrepr).splitlines()[-12:]:
                    print(f"    {text}", flush=True)
            else:
                self.passed += 1
                self._line("PASS", seconds, case)
                for name, value in report.user_properties:
                    print(f"    {name}: {value}", flush=True)
        elif report.when == "teardown" and failed:
            self.failed += 1
            self._line("FAIL", 0.0, f"{case} (teardown)")

    @staticmethod
    def _line(status: str, seconds: float, case: str) -> None:
        print(f"{status} {seconds:7.1f}s {case}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=None, help="PLANET_RELIABILITY_SEED")
    args, rest = parser.parse_known_args()
    if args.seed is not None:
        os.environ["PLANET_RELIABILITY_SEED"] = str(args.seed)
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))  # `tests.reliability...` imports, as under `python -m pytest`
    tally = Tally()
    t0 = time.perf_counter()
    code = pytest.main(
        [
            "tests/reliability",
            "-o",
            "addopts=",
            "-p",
            "no:terminal",
            "-p",
            "no:cacheprovider",
            *rest,
        ],
        plugins=[tally],
    )
    if (
        code not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED)
        or tally.failed + tally.passed == 0
    ):
        tally.failed += 1
        Tally._line(
            "FAIL", time.perf_counter() - t0, f"the suite itself (pytest exit code {int(code)})"
        )
    print(f"{tally.passed + tally.failed} cases in {time.perf_counter() - t0:.0f} s", flush=True)
    if tally.skipped:
        print(f"skipped: {', '.join(tally.skipped)}")
    print(f"reliability passed={tally.passed} failed={tally.failed}")
    return 0 if tally.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
