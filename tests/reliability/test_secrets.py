"""Secrets: after the whole pipeline ran (and, in a full session, every kill case too) with a
recognisable made-up Kaggle key and a Prefect auth string, neither appears in any log, the
Prefect database (every table), persisted results, artifacts, manifests, checkpoints or data
directory. A kaggle.json readable by others produces a warning."""

from __future__ import annotations

import json
import sqlite3
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.reliability.harness import USER, Run, Services
from tests.reliability.secrets_scan import needles, scan_file, scan_tree

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _wanted(services: Services) -> dict[str, bytes]:
    user, password = services.prefect_auth.split(":", 1)
    return {
        **{f"kaggle-key {k}": v for k, v in needles(services.kaggle_key, USER).items()},
        **{f"prefect-auth {k}": v for k, v in needles(password, user).items()},
    }


def test_no_secret_in_anything_the_runs_left(services: Services, reference: Run) -> None:
    hits, seen = scan_tree(services.root, _wanted(services), skip=[services.kaggle_config_dir])
    assert not hits, "\n".join(f"{h.path} ({h.where}): {h.needle}" for h in hits[:20])
    # It looked where secrets would hide: the Prefect database, checkpoints (zip), the shards,
    # predictions and submission files, and each run's captured output.
    assert seen.get("sqlite", 0) >= 1, seen
    assert seen.get("zip", 0) >= 2 and seen.get("parquet", 0) >= 10, seen
    assert (services.root / "prefect-server" / "prefect.db").is_file()
    assert any(services.prefect_home.rglob("*")), "the clients persisted results"
    for run in services.runs:
        assert run.output.stat().st_size > 0, run.name


def test_the_scan_finds_a_planted_secret_in_every_form(tmp_path: Path) -> None:
    secret = "KGLFAKEKEY" + "0123456789abcdef"
    wanted = needles(secret, "someone")
    (tmp_path / "plain.log").write_text(f"token={secret}\n")
    with zipfile.ZipFile(tmp_path / "model.pt", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", f"{{'key': '{secret}'}}" * 50)
    table = pa.table({"image_name": [f"x-{secret}"]})
    pq.write_table(table, tmp_path / "names.parquet", compression="zstd")
    con = sqlite3.connect(tmp_path / "prefect.db")
    con.execute("CREATE TABLE log (message TEXT)")
    con.execute("INSERT INTO log VALUES (?)", (json.dumps({"auth": secret}),))
    con.commit()
    con.close()
    hits, seen = scan_tree(tmp_path, wanted)
    where = {(h.path.name, h.where.split(" ")[0]) for h in hits}
    assert ("plain.log", "bytes") in where
    assert ("model.pt", "member") in where  # compressed: only the member view sees it
    assert ("names.parquet", "parquet") in where
    assert ("prefect.db", "table") in where
    assert seen == {"bytes": 4, "zip": 1, "parquet": 1, "sqlite": 1}
    assert not scan_file(tmp_path / "plain.log", needles("other-secret"))[0]


def test_a_kaggle_json_readable_by_others_is_warned_about(reference: Run) -> None:
    text = reference.output.read_text()
    assert "readable by other users" in text and "chmod 600" in text, reference.tail()
