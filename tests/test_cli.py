"""The `planet` command line: help, synth, kaggle-local, run and the demo's JSON line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from flows import cli
from flows.config import PrepareConfig
from flows.console import how_to_open
from planet.competitions import DOGS_VS_CATS, PLANET
from planet.store import shards
from planet.workspace import Workspace

COMMANDS = ["synth", "kaggle-local", "demo", "run", "server", "predict-images"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"planet {command}" in out
    assert "--" in out  # lists its options


def test_console_script_is_installed():
    exe = Path(sys.executable).with_name("planet")
    result = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for command in COMMANDS:
        assert command in result.stdout


def test_unknown_competition_is_a_clear_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["synth", "mnist", "--root", "x"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "mnist" in err and PLANET.slug in err and "dogs-vs-cats" in err


def test_synth_accepts_aliases_and_writes_kaggle_files(tmp_path, capsys):
    assert (
        cli.main(
            [
                "synth",
                "dogs-vs-cats",
                "--root",
                str(tmp_path),
                "--train",
                "6",
                "--test",
                "3",
                "--seed",
                "1",
            ]
        )
        == 0
    )
    out = tmp_path / DOGS_VS_CATS.slug
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == sorted(
        f.name for f in DOGS_VS_CATS.files
    )
    assert (out / "_private" / "solution.csv").is_file()
    assert "solution.csv" in capsys.readouterr().out


def test_config_validates_competition_and_files():
    assert PrepareConfig(competition="planet").competition == PLANET.slug
    with pytest.raises(ValueError, match="not files of"):
        PrepareConfig(competition="planet", files=["train.zip"])
    with pytest.raises(ValueError, match="unknown competition"):
        PrepareConfig(competition="mnist")


@pytest.mark.slow
def test_demo_prints_one_json_line_and_leaks_no_key(prefect_api, tmp_path, capsys, monkeypatch):
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL, PREFECT_HOME

    from flows import demo

    fake_key = "demo-secret-" + "5" * 20
    monkeypatch.setattr(demo.secrets, "token_hex", lambda _n: fake_key)
    workdir = tmp_path / "demo"
    recipe = tmp_path / "tiny.json"
    recipe.write_text(
        json.dumps(
            {
                "name": "tiny",
                "arch": "resnet18",
                "pretrained": False,
                "lr_find_iterations": 10,
                "stages": [
                    {"size": 32, "frozen": False, "epochs": 1, "lr": "auto", "batch_size": 8},
                    {"size": 64, "frozen": False, "epochs": 1, "lr": "1e-3", "batch_size": 8},
                ],
            }
        )
    )
    assert (
        cli.main(
            [
                "demo",
                "--workdir",
                str(workdir),
                "--recipe",
                str(recipe),
                "--train",
                "24",
                "--test",
                "8",
                "--additional",
                "3",
                "--seed",
                "7",
            ]
        )
        == 0
    )
    out_lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(out_lines[-1])
    assert summary["demo"] == "ok" and summary["competition"] == PLANET.slug
    assert {s: v["count"] for s, v in summary["images"].items()} == {
        "train": 24,
        "test": 8,
        "test-additional": 3,
    }
    dirs = Workspace.of(workdir / "data", PLANET.slug)
    assert Path(summary["images"]["train"]["dir"]) == dirs.original("train").folder
    assert shards.verify(dirs.original("train").folder, checksums=True)["count"] == 24
    # prepare -> resize: every recipe size, every split, and a picture of a batch
    assert sorted(summary["sized"], key=int) == ["32", "64"]
    assert summary["sized"]["64"]["test-additional"]["count"] == 3
    # -> train -> predict -> thresholds -> submission -> a graded submission
    assert [(e["stage"], e["epoch"]) for e in summary["train"]["epochs"]] == [(1, 1), (2, 1)]
    assert 0.0 <= summary["score"] <= 1.0 and summary["submitted"] is True
    assert Path(summary["submission"]).is_file()
    assert any(line.startswith("val_metric_default: ") for line in out_lines)
    assert summary["threshold_rule"] in ("fixed", "global", "per_class")
    assert any(line.startswith("threshold_rule: ") for line in out_lines)
    assert 0.0 <= summary["val_metric_crossfit"] <= 1.0
    assert summary["split"]["train"] + summary["split"]["valid"] == 24
    assert Path(summary["batch_png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the error analysis of the validation images, beside the predictions
    predictions = dirs.predictions_dir / summary["recipe"]
    assert Path(summary["top_losses_png"]) == predictions / "top_losses.png"
    assert Path(summary["top_losses_png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    per_tag = Path(summary["per_tag_csv"]).read_text().splitlines()
    assert per_tag[0].startswith("class,threshold,support,tp,fp,fn,tn,")
    assert len(per_tag) == 1 + len(PLANET.classes)

    # the made-up key was used (the server accepted it) but is stored nowhere
    places = [workdir, Path(PREFECT_HOME.value())]
    db_url = PREFECT_API_DATABASE_CONNECTION_URL.value() or ""
    if db_url.startswith("sqlite"):
        places.append(Path(db_url.split("///", 1)[1]).parent)
    scanned = 0
    for place in places:
        for path in Path(place).rglob("*"):
            if path.is_file():
                scanned += 1
                assert fake_key.encode() not in path.read_bytes(), path
    assert scanned > 10
    assert fake_key not in "\n".join(out_lines)


@pytest.mark.slow
def test_run_command_fetches_only_the_named_files(
    prefect_api, tmp_path, capsys, isolated_kaggle_env, monkeypatch
):
    from planet import synthetic
    from planet.kaggle_local import LocalKaggleServer

    root = tmp_path / "root"
    synthetic.generate("planet", root, train=6, test=3, additional=1, seed=2)
    monkeypatch.setenv("KAGGLE_USERNAME", "run-user")
    monkeypatch.setenv("KAGGLE_KEY", "run-key-0123456789")
    with LocalKaggleServer(root, credentials={"run-user": "run-key-0123456789"}) as server:
        assert (
            cli.main(
                [
                    "run",
                    "--competition",
                    "planet",
                    "--data-dir",
                    str(tmp_path / "d"),
                    "--kaggle-endpoint",
                    server.url,
                    "--stages",
                    "prepare",
                    "--files",
                    "train_v2.csv.zip",
                    "sample_submission_v2.csv.zip",
                ]
            )
            == 0
        )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(summary["raw"]) == {"train_v2.csv.zip", "sample_submission_v2.csv.zip"}
    assert summary["images"] == {}
    assert summary["tables"]["train_v2.csv.zip"]["rows"] == 6
    raw = Workspace.of(tmp_path / "d", PLANET.slug).raw_dir
    assert sorted(p.name for p in raw.iterdir() if p.is_file() and p.suffix != ".json") == [
        "sample_submission_v2.csv.zip",
        "train_v2.csv.zip",
    ]


def test_bad_input_is_one_clear_line_not_a_traceback(tmp_path, capsys):
    missing = tmp_path / "no-such-root"
    assert cli.main(["demo", "--kaggle-root", str(missing), "--workdir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("planet demo: error:") and str(missing) in err
    assert "Traceback" not in err and "planet synth" in err
    assert not (tmp_path / "data").exists()


def test_the_flows_import_without_torch_or_matplotlib():
    """A cached rerun never trains or plots: importing the flows must not pay for torch,
    torchvision (~5 s per process here) or matplotlib; they load when a stage really runs."""
    code = (
        "import sys, flows.cli, flows.pipeline, flows.serve\n"
        "heavy = [m for m in ('torch', 'torchvision', 'matplotlib') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_an_unknown_recipe_is_one_clear_line(tmp_path, capsys):
    assert cli.main(["run", "--data-dir", str(tmp_path), "--recipe", "no-such-recipe"]) == 1
    err = capsys.readouterr().err
    assert "no-such-recipe" in err and "lesson3" in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.slow
def test_predicting_before_training_names_the_missing_model(prefect_api, tmp_path, capsys):
    args = ["run", "--data-dir", str(tmp_path), "--stages", "predict", "--recipe", "cpu-demo"]
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert "export.pt does not exist" in err and "train" in err and "cpu-demo" in err


def test_how_to_open_names_the_run_page_of_the_server_in_use(monkeypatch):
    """With a server (PREFECT_API_URL): the page's URL; without: `planet server --home` and the
    URL on its default port."""
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

    with temporary_settings(
        updates={PREFECT_API_URL: "http://10.0.0.5:4300/api"}, set_defaults={PREFECT_UI_URL: None}
    ):
        assert how_to_open("abc") == ["flow run: http://10.0.0.5:4300/runs/flow-run/abc"]
    monkeypatch.setenv("PREFECT_HOME", "/x/.prefect")
    with temporary_settings(restore_defaults={PREFECT_API_URL, PREFECT_UI_URL}):
        lines = how_to_open("abc")
    assert lines[1].strip() == "planet server --home /x/.prefect"
    assert lines[2].strip().endswith("http://127.0.0.1:4200/runs/flow-run/abc")


def test_the_epoch_table_explains_a_huge_first_valid_loss():
    from flows.demo import BN_LAG_NOTE, epoch_table

    def summary(first_valid_loss: float) -> dict:
        epochs = [
            {"stage": 1, "epoch": 1, "train_loss": 0.7, "valid_loss": first_valid_loss, "f2": 0.3},
            {"stage": 1, "epoch": 2, "train_loss": 0.4, "valid_loss": 0.5, "f2": 0.6},
        ]
        return {"train": {"epochs": epochs, "epoch_metric": "f2"}}

    assert BN_LAG_NOTE in epoch_table(summary(352_000.0))
    assert "BatchNorm" not in epoch_table(summary(0.9))
