"""planet.hooks: the library's events reach a listener named by PLANET_HOOKS, and only then;
tests/fault_hooks.py turns them into work-log lines and fault points."""

from __future__ import annotations

import pytest

from planet import hooks
from tests import fault_hooks


def test_without_a_listener_emit_does_nothing(monkeypatch):
    monkeypatch.delenv(hooks.ENV, raising=False)
    hooks.emit("train.batch", step=1)  # no error, no listener


def test_the_listener_named_by_the_environment_hears_every_event(tmp_path, monkeypatch):
    log = tmp_path / "events.txt"
    plugin = tmp_path / "listener.py"
    plugin.write_text(
        "def on_event(event, info):\n"
        f"    open({str(log)!r}, 'a').write(event + ' ' + repr(sorted(info.items())) + '\\n')\n"
    )
    monkeypatch.setenv(hooks.ENV, str(plugin))
    hooks.emit("predict.part", split="valid", part=2)
    hooks.emit("submit.accepted", file="run.csv")
    assert log.read_text().splitlines() == [
        "predict.part [('part', 2), ('split', 'valid')]",
        "submit.accepted [('file', 'run.csv')]",
    ]


def test_a_listener_that_is_not_a_file_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv(hooks.ENV, str(tmp_path / "missing.txt"))
    with pytest.raises((ImportError, FileNotFoundError)):
        hooks.emit("train.batch", step=1)


def test_the_fault_listener_logs_work_and_fires_at_its_point(tmp_path, monkeypatch):
    work = tmp_path / "work.log"
    for name, value in fault_hooks.hook_env(
        PLANET_WORK_LOG=str(work), PLANET_FAULT="predict-part-2=raise"
    ).items():
        monkeypatch.setenv(name, value)
    hooks.emit("extract.shard", split="train", index=0, name="part-00000.parquet")
    hooks.emit("resize.shard", size=64, split="test", name="part-00001.parquet")
    hooks.emit("train.epoch", run="stage-1.ckpt", epoch=1)
    hooks.emit("predict.part", split="valid", part=1)
    with pytest.raises(RuntimeError, match="fault injected at predict-part-2"):
        hooks.emit("predict.part", split="valid", part=2)
    assert fault_hooks.read_work_log(work) == [
        "extract train/part-00000.parquet",
        "resize 64/test/part-00001.parquet",
        "train stage-1.ckpt epoch-1",
        "predict valid part-1",
        "predict valid part-2",
    ]


def test_at_most_one_product_module_names_the_hooks_variable():
    """Fault injection and work accounting live in tests/: no planet/, tasks/ or flows/ module
    names their environment variables, and only planet/hooks.py names PLANET_HOOKS."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    named = {
        str(p.relative_to(root))
        for folder in ("planet", "tasks", "flows")
        for p in (root / folder).rglob("*.py")
        if any(v in p.read_text() for v in ("PLANET_FAULT", "PLANET_WORK_LOG", "PLANET_HOOKS"))
    }
    assert named == {"planet/hooks.py"}
