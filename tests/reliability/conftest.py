"""Session fixtures of the reliability suite: one synthetic competition served by a local
Kaggle server, one real Prefect server (with basic auth), and one uninterrupted reference run
of the whole pipeline that the fault cases are compared with."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator

import pytest

from tests.fault_hooks import FAULT_ENVS
from tests.reliability.harness import SLUG, STAGES, SYNTH, USER, Run, Services, run_pipeline
from tests.servers import planet_server

# Recognisable made-up secrets: the secrets case looks for them everywhere a run leaves data.
KAGGLE_KEY = "KGLFAKEKEY" + secrets.token_hex(12)
PREFECT_AUTH = "planet:PFAUTH" + secrets.token_hex(8)


@pytest.fixture(autouse=True)
def _no_inherited_faults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in FAULT_ENVS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    """The local Kaggle server and the Prefect server every run of the suite uses."""
    from planet import synthetic
    from planet.kaggle_local import LocalKaggleServer

    root = tmp_path_factory.mktemp("reliability")
    kaggle_root = root / "kaggle"
    synthetic.generate(SLUG, kaggle_root, **SYNTH)
    config_dir = root / "kaggle-config"
    config_dir.mkdir()
    key_file = config_dir / "kaggle.json"
    key_file.write_text(json.dumps({"username": USER, "key": KAGGLE_KEY}))
    key_file.chmod(0o644)  # readable by others: every run must warn about it
    with (
        LocalKaggleServer(
            kaggle_root, credentials={USER: KAGGLE_KEY}, daily_submission_limit=100
        ) as kaggle,
        planet_server(root / "prefect-server", auth=PREFECT_AUTH) as prefect_url,
    ):
        yield Services(
            root=root,
            kaggle_root=kaggle_root,
            kaggle_url=kaggle.url,
            kaggle_key=KAGGLE_KEY,
            kaggle_config_dir=config_dir,
            prefect_url=prefect_url,
            prefect_auth=PREFECT_AUTH,
            prefect_home=root / "prefect-client",
        )


@pytest.fixture(scope="session")
def reference(services: Services) -> Run:
    """The whole pipeline, uninterrupted, from download to a scored submission."""
    run = run_pipeline(services, "reference", services.root / "reference" / "data", STAGES)
    assert run.returncode == 0, run.tail()
    assert run.summary and run.summary["score"] is not None, run.tail()
    return run
