"""Recipes, learning rates, the one-cycle schedule, the LR finder and checkpointed training."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from planet.competitions import PLANET
from planet.learn import stages
from planet.learn.fit import fit_one_cycle, make_one_cycle, make_optimizer
from planet.learn.loader import Loader
from planet.learn.lr_finder import exponential_lrs, lr_find, suggestions
from planet.learn.metrics import f2_thresh
from planet.learn.model import PretrainedWeightsMissing
from planet.learn.recipe import Recipe, TrainStage, cpu_demo, lesson3, parse_lr
from planet.store.sized import read_images
from planet.workspace import Workspace
from tests.fault_hooks import hook_env
from tests.toy import make_toy_planet

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# learning rates and the schedule


def test_slice_lrs_follow_fastai():
    assert parse_lr("slice(1e-5, 2e-3)").group_lrs(3) == pytest.approx(
        [1e-5, 1.4142e-4, 2e-3], rel=1e-4
    )
    assert parse_lr("slice(1e-2)").group_lrs(3) == pytest.approx([1e-3, 1e-3, 1e-2])
    assert parse_lr("1e-2").group_lrs(3) == [1e-2] * 3
    assert parse_lr(0.003).group_lrs(2) == [0.003, 0.003]
    auto = parse_lr("slice(1e-5, auto/5)")
    assert auto.needs_finder
    assert auto.group_lrs(3, suggestion=1e-2)[-1] == pytest.approx(2e-3)
    with pytest.raises(ValueError, match="no LR finder suggestion"):
        auto.group_lrs(3)
    assert parse_lr("auto").group_lrs(3, 4e-3) == [4e-3] * 3


@pytest.mark.parametrize("bad", ["-1e-2", "0", "slice(1e-5,-2)", "fast", "slice()", "auto/0"])
def test_bad_learning_rates_are_refused(bad):
    with pytest.raises((ValueError, ValidationError)):
        TrainStage(lr=bad)


def test_recipes_are_valid_and_name_their_runs():
    seed = lesson3()
    assert seed.arch == "resnet50"
    assert [(s.size, s.frozen, s.epochs) for s in seed.stages] == [
        (128, True, 5),
        (128, False, 5),
        (256, True, 5),
        (256, False, 5),
    ]
    assert seed.stages[1].lr_spec.group_lrs(3)[-1] == pytest.approx(1e-2 / 5)
    assert seed.stages[3].lr_spec.group_lrs(3) == pytest.approx(
        [1e-5, math.sqrt(1e-5 * 1e-3), 1e-3]
    )
    demo = cpu_demo()
    assert demo.sizes == [64, 128] and demo.stages[0].runs_finder
    assert seed.run_name != demo.run_name and seed.run_name.startswith("lesson3-")
    assert Recipe.model_validate(json.loads(demo.model_dump_json())) == demo
    with pytest.raises(ValidationError):
        Recipe(stages=[])


def test_one_cycle_schedule_shape():
    params = [nn.Parameter(torch.zeros(1)) for _ in range(3)]
    model = nn.Module()
    model.param_groups = lambda: [[p] for p in params]  # type: ignore[method-assign]
    model.parameters = lambda: iter(params)  # type: ignore[method-assign]
    lrs = [1e-4, 1e-3, 1e-2]
    opt = make_optimizer(model, lrs)
    sched = make_one_cycle(opt, lrs, total_steps=100)
    seen_lr, seen_mom = [], []
    for _ in range(100):
        seen_lr.append([g["lr"] for g in opt.param_groups])
        seen_mom.append(opt.param_groups[0]["betas"][0])
        opt.step()
        sched.step()
    lr = np.array(seen_lr)
    assert lr[0] == pytest.approx(np.array(lrs) / 25)
    peak = int(np.argmax(lr[:, 2]))
    assert 28 <= peak <= 31 and lr[peak] == pytest.approx(lrs, rel=1e-3)
    assert np.all(np.diff(lr[: peak + 1, 2]) > 0) and np.all(np.diff(lr[peak:, 2]) < 0)
    assert lr[-1, 2] == pytest.approx(1e-2 / 25 / 1e4, rel=0.05)
    assert np.allclose(lr[:, 0] / lr[:, 2], 1e-2)  # groups keep their ratios
    assert seen_mom[0] == pytest.approx(0.95) and seen_mom[peak] == pytest.approx(0.85, abs=1e-3)
    assert seen_mom[-1] == pytest.approx(0.95, abs=1e-3)
    assert opt.param_groups[0]["betas"][1] == 0.99 and opt.param_groups[0]["weight_decay"] == 1e-2


# ---------------------------------------------------------------------------------------------
# the LR finder


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("toy")
    make_toy_planet(data_dir, n=160, sizes=(32, 64))
    return data_dir


def _small_model():
    with pytest.warns(PretrainedWeightsMissing):
        from planet.learn.model import create_model

        torch.manual_seed(0)
        return create_model("resnet18", len(PLANET.classes))


def test_lr_finder_sweeps_and_restores_the_model(toy):
    data = stages.load_train_data(Workspace.of(toy, PLANET), 32)
    model = _small_model()
    loader = Loader(data.images, data.train_names, batch_size=16, shuffle=True, drop_last=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    result = lr_find(model, loader, task="multi_label", num_it=30, end_lr=1.0)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN buffers
    assert torch.equal(torch.get_rng_state(), rng) and model.training
    assert (
        5 <= len(result.lrs) <= 30
        and result.lrs == exponential_lrs(1e-7, 1.0, 30)[: len(result.lrs)]
    )
    assert set(result.suggestions) == {"min/10", "steepest"}
    assert result.lrs[0] <= result.suggestions["steepest"] <= result.lrs[-1]
    assert len(result.table()) == len(result.lrs)


def test_lr_finder_stops_when_the_loss_diverges():
    losses = [1.0] * 20 + [0.5] * 10 + [5.0] * 5
    lrs = exponential_lrs(1e-7, 10, len(losses))
    picks = suggestions(lrs, losses)
    assert picks["min/10"] == pytest.approx(lrs[20] / 10)
    assert lrs[19] <= picks["steepest"] <= lrs[21]


# ---------------------------------------------------------------------------------------------
# training


def test_training_lowers_the_loss_and_beats_a_constant_predictor(toy):
    data = stages.load_train_data(Workspace.of(toy, PLANET), 32)
    model = _small_model()
    train = Loader(data.images, data.train_names, batch_size=8, shuffle=True, drop_last=True)
    valid = Loader(data.images, data.valid_names, batch_size=64)
    fit = fit_one_cycle(
        model, train, valid, task="multi_label", epochs=5, lrs=[1e-2] * 3, amp=False
    )
    h = fit.history
    assert [row["epoch"] for row in h] == [1, 2, 3, 4, 5]
    assert h[-1]["train_loss"] < h[0]["train_loss"]
    assert h[-1]["valid_loss"] < h[0]["valid_loss"]
    # the best constant predictor: each tag's training frequency
    vi = data.images.indices(data.valid_names)
    ti = data.images.indices(data.train_names)
    freq = data.images.labels[ti].mean(axis=0)
    truth = data.images.labels[vi]
    constant = f2_thresh(np.tile(freq, (len(vi), 1)), truth)
    assert h[-1]["f2"] > constant + 0.05, (h[-1]["f2"], constant)
    assert set(h[-1]) >= {"train_loss", "valid_loss", "f2", "accuracy_thresh", "batch_losses"}


def test_channels_last_training_runs_on_the_cpu(toy):
    data = stages.load_train_data(Workspace.of(toy, PLANET), 32)
    model = _small_model().to(memory_format=torch.channels_last)
    kw = dict(batch_size=16, channels_last=True)
    train = Loader(data.images, data.train_names[:32], shuffle=True, drop_last=True, **kw)
    valid = Loader(data.images, data.valid_names[:16], **kw)
    fit = fit_one_cycle(model, train, valid, task="multi_label", epochs=1, lrs=[1e-3] * 3)
    assert math.isfinite(fit.history[0]["valid_loss"])


TINY = Recipe(
    name="tiny",
    arch="resnet18",
    pretrained=False,
    stages=[
        TrainStage(size=32, frozen=True, epochs=2, lr="auto", batch_size=16),
        TrainStage(size=64, frozen=False, epochs=3, lr="slice(1e-4, 2e-3)", batch_size=16),
    ],
    lr_find_iterations=12,
)

STAGE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from planet.learn import stages
    from planet.learn.recipe import Recipe
    from planet.workspace import Workspace
    recipe = Recipe.model_validate_json(sys.argv[2])
    prev = Path(sys.argv[4]) if sys.argv[4] != "-" else None
    ws = Workspace.of(sys.argv[1], "planet")
    rec = stages.run_stage(ws, recipe, int(sys.argv[3]), previous=prev,
                           device="cpu")
    print("RECORD", json.dumps(rec))
    """
)


def _run_stage_process(data_dir: Path, index: int, previous: Path | None, **env: str):
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.run(
        [
            sys.executable,
            "-c",
            STAGE_SCRIPT,
            str(data_dir),
            TINY.model_dump_json(),
            str(index),
            str(previous) if previous else "-",
        ],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=300,
    )


def _record(proc) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RECORD ")][-1]
    return json.loads(line.removeprefix("RECORD "))


def _comparable(history):
    skip = {"seconds", "images_per_s", "first_step_s"}
    return [{k: v for k, v in row.items() if k not in skip} for row in history]


@pytest.mark.slow
def test_a_stage_killed_mid_way_resumes_with_the_same_history(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    for d in (straight, killed):
        make_toy_planet(d, n=96, sizes=(32, 64))
    first = _record(_run_stage_process(straight, 0, None))
    prev_a = straight / PLANET.slug / first["weights"]
    reference = _record(_run_stage_process(straight, 1, prev_a))

    first_b = _record(_run_stage_process(killed, 0, None))
    assert first_b["sha256"] == first["sha256"]  # stage 1 (with the LR finder) is reproducible
    prev_b = killed / PLANET.slug / first_b["weights"]
    proc = _run_stage_process(killed, 1, prev_b, **hook_env(PLANET_FAULT="train-epoch-2=kill"))
    assert proc.returncode == -9
    out = stages.model_run(Workspace.of(killed, PLANET), TINY).folder
    assert [p.name for p in (out / "stage-2.ckpt").iterdir()] == ["epoch-002.pt"]
    assert not (out / "stage-2.pt").exists()
    resumed = _record(_run_stage_process(killed, 1, prev_b))
    assert resumed["resumed_from_epoch"] == 2 and resumed["epochs_run"] == 1
    assert reference["resumed_from_epoch"] == 0 and reference["epochs_run"] == 3
    assert _comparable(resumed["history"]) == _comparable(reference["history"])
    assert resumed["sha256"] == reference["sha256"]
    assert not (out / "stage-2.ckpt").exists()  # the checkpoint goes once the stage is done


def test_a_finished_stage_is_not_trained_again(toy):
    recipe = TINY.model_copy(update={"name": "again"})
    recipe.stages[0] = recipe.stages[0].model_copy(update={"epochs": 1})
    first = stages.run_stage(Workspace.of(toy, PLANET), recipe, 0, device="cpu")
    again = stages.run_stage(Workspace.of(toy, PLANET), recipe, 0, device="cpu")
    assert again == first
    run = stages.model_run(Workspace.of(toy, PLANET), recipe)
    out = run.folder
    assert run.stage_complete(0, first["fingerprint"]) is not None
    (out / "stage-1.pt").unlink()
    assert run.stage_complete(0, first["fingerprint"]) is None
    redo = stages.run_stage(Workspace.of(toy, PLANET), recipe, 0, device="cpu")
    assert redo["sha256"] == first["sha256"]  # retrained, and deterministically
    assert (out / "lr_find-1.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "losses-1.png").is_file()


def test_a_recipe_size_without_shards_is_a_clear_error(toy):
    recipe = TINY.model_copy(update={"stages": [TrainStage(size=48, lr="1e-3")]})
    with pytest.raises(stages.StageError, match="48px.*resize stage"):
        stages.run_stage(Workspace.of(toy, PLANET), recipe, 0, device="cpu")


def test_read_images_of_toy_data(toy):
    data = read_images(Workspace.of(toy, PLANET).sized(64, "train").folder)
    assert data.images.shape == (160, 64, 64, 3) and data.labels.shape == (160, 17)
