"""Shared fixtures: a tiny fake Kaggle folder, a local Kaggle server serving it, and an
environment in which no test can read the real ~/.kaggle credentials."""

from __future__ import annotations

import os
import tempfile

# Prefect reads its settings at import: give the test session its own Prefect home (and so its
# own result storage: cache records of earlier sessions must not make a first run "Cached").
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="planet-tests-prefect-")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"

import csv  # noqa: E402
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from planet.competitions import DOGS_VS_CATS, PLANET

KAGGLE_ENV_VARS = (
    "KAGGLE_USERNAME",
    "KAGGLE_KEY",
    "KAGGLE_CONFIG_DIR",
    "KAGGLE_API_TOKEN",
    "KAGGLE_API_ENVIRONMENT",
    "XDG_CONFIG_HOME",
)
KAGGLE_TEST_USER = "tester"
UNKNOWN_SLUG = "some-unknown-competition"


@dataclass(frozen=True)
class FakeKaggle:
    """What `kaggle_root` built: root/<slug>/<files> plus each slug's hidden solution rows."""

    root: Path
    planet: str  # slug
    dogs: str  # slug
    unknown: str  # a slug planet.competitions doesn't know (servable, not gradable)
    files: dict[str, dict[str, bytes]]  # slug -> data file name -> bytes
    solutions: dict[str, list[dict[str, str]]]  # slug -> solution.csv rows


def _write_csv(path: Path, header: list[str], rows: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def build_fake_kaggle(root: Path, seed: int = 0, n_test: int = 60) -> FakeKaggle:
    """A Planet, a Dogs vs Cats and an unknown competition with random-byte files."""
    rng = np.random.default_rng(seed)
    files: dict[str, dict[str, bytes]] = {
        PLANET.slug: {
            "train-jpg.tar.7z": rng.bytes(3_000_000),  # > 1 MiB: the client writes in 1 MiB chunks
            "train_v2.csv.zip": rng.bytes(20_000),
            "sample_submission_v2.csv.zip": rng.bytes(1_000),
        },
        DOGS_VS_CATS.slug: {
            "train.zip": rng.bytes(50_000),
            "sample_submission.csv": rng.bytes(500),
        },
        UNKNOWN_SLUG: {"data.bin": rng.bytes(2_000)},
    }
    for slug, named in files.items():
        for name, data in named.items():
            (root / slug).mkdir(parents=True, exist_ok=True)
            (root / slug / name).write_bytes(data)
    usage = ["Public" if rng.random() < 0.4 else "Private" for _ in range(n_test)]
    planet_rows = []
    for i in range(n_test):
        k = int(rng.integers(1, 5))
        tags = rng.choice(PLANET.classes, size=k, replace=False)
        planet_rows.append(
            {"image_name": f"test_{i}", "tags": " ".join(sorted(tags)), "Usage": usage[i]}
        )
    dogs_rows = [
        {"id": str(i + 1), "label": str(int(rng.integers(0, 2))), "Usage": usage[i]}
        for i in range(n_test)
    ]
    unknown_rows = [{"id": "1", "label": "1", "Usage": "Public"}]
    _write_csv(
        root / PLANET.slug / "_private" / "solution.csv",
        ["image_name", "tags", "Usage"],
        planet_rows,
    )
    _write_csv(
        root / DOGS_VS_CATS.slug / "_private" / "solution.csv", ["id", "label", "Usage"], dogs_rows
    )
    _write_csv(
        root / UNKNOWN_SLUG / "_private" / "solution.csv", ["id", "label", "Usage"], unknown_rows
    )
    return FakeKaggle(
        root=root,
        planet=PLANET.slug,
        dogs=DOGS_VS_CATS.slug,
        unknown=UNKNOWN_SLUG,
        files=files,
        solutions={
            PLANET.slug: planet_rows,
            DOGS_VS_CATS.slug: dogs_rows,
            UNKNOWN_SLUG: unknown_rows,
        },
    )


@pytest.fixture
def isolated_kaggle_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """HOME is an empty temporary folder and no KAGGLE_* variable is set; returns HOME."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in KAGGLE_ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture
def kaggle_root(tmp_path: Path) -> FakeKaggle:
    """root/<slug>/<random-byte files> + root/<slug>/_private/solution.csv, for three slugs."""
    return build_fake_kaggle(tmp_path / "kaggle")


@pytest.fixture
def kaggle_user() -> str:
    """The username kaggle_server accepts (with kaggle_key)."""
    return KAGGLE_TEST_USER


@pytest.fixture
def kaggle_key() -> str:
    """A fresh, recognisable fake API key (so tests can look for leaks of it)."""
    return "test-key-" + secrets.token_hex(16)


@pytest.fixture
def kaggle_server(kaggle_root: FakeKaggle, kaggle_key: str) -> Iterator:
    """A LocalKaggleServer on a free port serving kaggle_root, accepting tester/kaggle_key."""
    from planet.kaggle_local import LocalKaggleServer

    with LocalKaggleServer(
        kaggle_root.root, credentials={KAGGLE_TEST_USER: kaggle_key}, daily_submission_limit=3
    ) as server:
        yield server


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """A temporary Prefect API and database for the whole session (starts once, ~25 s)."""
    from prefect.events.worker import EventsWorker
    from prefect.testing.utilities import prefect_test_harness

    # The harness drains Prefect's event worker without a time limit when it stops; once (under
    # heavy CPU contention) that drain never returned. Bound it: events of finished test runs
    # are not worth a hung session.
    drain_all = EventsWorker.drain_all.__func__
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(
            EventsWorker,
            "drain_all",
            classmethod(lambda cls, timeout=None, **kw: drain_all(cls, timeout or 30, **kw)),
        )
        with prefect_test_harness(server_startup_timeout=180):
            yield
