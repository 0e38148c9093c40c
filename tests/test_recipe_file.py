"""A recipe file's mistakes are refused when the recipe is read, before any stage runs: one
line naming the file, the line and what to write instead."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows import cli
from planet.constants import ARCH_NAMES
from planet.learn.recipe import RecipeError, load_recipe

GOOD_STAGE = "stages:\n  - size: 64\n    epochs: 1\n"

# (file name, text, words the one line must hold)
MISTAKES = {
    "epoch": (
        "x.yaml",
        "name: typo\narch: resnet18\nstages:\n  - size: 64\n    epoch: 1\n",
        ["x.yaml", "stage 1", "line 5", "'epoch'", "did you mean 'epochs'"],
    ),
    "archh": (
        "x.yaml",
        "name: typo\narchh: resnet34\n" + GOOD_STAGE,
        ["x.yaml", "line 2", "'archh'", "did you mean 'arch'"],
    ),
    "resnet19": (
        "x.yaml",
        "name: typo\narch: resnet19\n" + GOOD_STAGE,
        ["x.yaml", "line 2", "'resnet19'", *ARCH_NAMES],
    ),
    "broken-yaml": (
        "x.yaml",
        "name: typo\nstages:\n  - size: 64\n   epochs: [1\n",
        ["x.yaml", "not valid YAML", "line 4", "column 4"],
    ),
    "broken-json": (
        "x.json",
        '{"name": "typo",\n "arch": "resnet18",\n}',
        ["x.json", "not valid JSON", "line 3"],
    ),
}


@pytest.mark.parametrize("case", list(MISTAKES))
def test_a_recipe_mistake_is_refused_when_read(tmp_path: Path, case: str) -> None:
    name, text, words = MISTAKES[case]
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(RecipeError) as err:
        load_recipe(str(path))
    message = str(err.value)
    assert "\n" not in message and "<unicode string>" not in message
    for word in words:
        assert word in message, (word, message)


@pytest.mark.parametrize("case", list(MISTAKES))
def test_planet_run_refuses_a_recipe_mistake_before_any_stage(
    tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    name, text, words = MISTAKES[case]
    path = tmp_path / name
    path.write_text(text)
    data = tmp_path / "data"
    assert cli.main(["run", "--data-dir", str(data), "--recipe", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("planet run: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for word in words:
        assert word in err, (word, err)
    assert not data.exists()  # no stage ran


def test_an_ensemble_recipe_file_is_checked_too(tmp_path: Path, capsys) -> None:
    path = tmp_path / "more.yaml"
    path.write_text("name: more\narch: resnet19\n")
    assert cli.main(["run", "--data-dir", str(tmp_path / "d"), "--recipes", str(path)]) == 1
    err = capsys.readouterr().err
    assert "more.yaml" in err and "resnet19" in err and err.count("\n") == 1


def test_a_correct_recipe_file_still_reads(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text("name: ok\narch: resnet34\n" + GOOD_STAGE)
    recipe = load_recipe(str(path))
    assert recipe.arch == "resnet34" and recipe.stages[0].epochs == 1
