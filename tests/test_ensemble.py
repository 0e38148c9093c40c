"""Ensembles: k-fold members (folds x recipes x seeds), out-of-fold predictions, the mean and
the stack, thresholds fitted on the out-of-fold rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flows.config import PipelineConfig, TrainConfig
from planet.competitions import PLANET
from planet.infer import ensemble
from planet.infer.predict import write_probs
from planet.infer.runs import VALID, fit_decision, predict_run_split, scored_splits
from planet.learn import stages
from planet.learn.members import Fold, Member, ensemble_name, members
from planet.learn.recipe import Recipe, TrainStage
from planet.workspace import Workspace
from tests.toy import make_toy_planet

TINY = Recipe(
    name="tiny-k",
    arch="resnet18",
    pretrained=False,
    stages=[TrainStage(size=32, frozen=False, epochs=1, lr="1e-3", batch_size=8)],
)


def test_members_are_folds_x_recipes_x_seeds():
    other = TINY.model_copy(update={"name": "other"})
    got = members([TINY, other], seeds=[0, 1], folds=3)
    assert len(got) == 12 and len({m.run_name for m in got}) == 12
    assert [(m.recipe.name, m.recipe.seed, m.fold.index) for m in got[:4]] == [
        ("tiny-k", 0, 0),
        ("tiny-k", 0, 1),
        ("tiny-k", 0, 2),
        ("tiny-k", 1, 0),
    ]
    single = members([TINY], None, 1)
    assert single == [Member(TINY)] and ensemble_name(single) == TINY.run_name  # today's folder
    assert got[0].run_name == f"{TINY.run_name}-fold1of3"
    assert ensemble_name(got) != ensemble_name(got[:-1])
    with pytest.raises(ValueError, match="fold 4 of 3"):
        Fold(3, 3)


def test_the_config_names_one_member_per_training_run():
    config = PipelineConfig(competition="planet", recipe=TINY, ensemble={"folds": 3})
    train = config.for_stage(TrainConfig)
    assert train.fold == 1 and train.member == Member(TINY, Fold(0, 3))
    third = train.for_member(config.members()[2])
    assert third.fold == 3 and third.member.run_name.endswith("fold3of3")
    assert config.for_stage(TrainConfig).ensemble.folds == 3
    with pytest.raises(ValueError, match="name the fold"):
        TrainConfig(recipe=TINY, ensemble={"folds": 3})
    with pytest.raises(ValueError, match="fold 4 asked for"):
        TrainConfig(recipe=TINY, ensemble={"folds": 3}, fold=4)
    assert PipelineConfig(recipe=TINY).run_name == TINY.run_name  # folds 1: the one model


def test_a_fold_member_trains_outside_its_fold_and_validates_on_it(tmp_path):
    ws = make_toy_planet(tmp_path, n=30, folds=3)
    split = ws.split.read()
    seen: list[str] = []
    for k in range(3):
        train, valid = stages.selection(split, Fold(k, 3))
        assert not set(train) & set(valid) and sorted(train + valid) == sorted(split.names)
        seen += valid
    assert sorted(seen) == sorted(split.names)  # every image held out exactly once
    with pytest.raises(stages.StageError, match="folds 5"):
        stages.selection(split, Fold(0, 5))


def _fake_member(ws: Workspace, member: Member, rng: np.random.Generator, probs=None) -> None:
    """Predictions as a member's predict stage writes them: its held-out fold, every test."""
    split = ws.split.read()
    valid = stages.selection(split, member.fold)[1]
    classes = PLANET.classes
    p = (
        rng.random((len(valid), len(classes)))
        if probs is None
        else np.stack([probs[n] for n in valid])
    )
    write_probs(
        ws.predictions(member.run_name, VALID).folder,
        valid,
        p,
        classes=classes,
        task="multi_label",
        settings={"fake": member.run_name},
    )
    for name in scored_splits(ws):
        names = [f"{name}_{i}" for i in range(5)]
        write_probs(
            ws.predictions(member.run_name, name).folder,
            names,
            rng.random((5, len(classes))),
            classes=classes,
            task="multi_label",
            settings={"fake": member.run_name},
        )


def test_a_mean_of_identical_members_equals_one_member(tmp_path):
    ws = make_toy_planet(tmp_path, n=40, folds=2)
    names = ws.split.read().names
    one = {n: np.random.default_rng(1).random(len(PLANET.classes)) for n in names}
    group = members([TINY], seeds=[0, 1], folds=2)  # two seeds: two identical groups
    for member in group:
        _fake_member(ws, member, np.random.default_rng(7), probs=one)
    by_name = {n: one[n] for n in names}
    report = ensemble.combine(ws, group, "same", "mean", 32)
    got_names, got, _ = ws.predictions("same", VALID).read()
    assert sorted(got_names) == sorted(names) and report["chosen"] == "mean"
    assert np.allclose(got, np.stack([by_name[n] for n in got_names]), atol=1e-6)
    test_names, test_probs, _ = ws.predictions("same", "test").read()
    _, member_test, _ = ws.predictions(group[0].run_name, "test").read()
    assert np.allclose(test_probs, member_test, atol=1e-6)  # the same rng: identical members


def test_out_of_fold_rows_are_each_image_once_and_the_thresholds_fit_them(tmp_path):
    ws = make_toy_planet(tmp_path, n=40, folds=4)
    group = members([TINY], None, 4)
    rng = np.random.default_rng(0)
    for member in group:
        _fake_member(ws, member, rng)
    names, groups_, _ = ensemble.oof_predictions(ws, group)
    assert names == ws.split.read().names and len(groups_) == 1  # all, once, in split order
    name = ensemble_name(group)
    ensemble.combine(ws, group, name, "mean", 32)
    fitted = fit_decision(ws, name, 32)
    assert fitted["report"]["n_samples"] == 40  # fitted on every train image, out of fold
    from planet.infer.runs import valid_truth
    from planet.infer.thresholds import threshold_report

    oof_names, oof, classes = ws.predictions(name, VALID).read()
    expected = threshold_report(oof, valid_truth(ws, oof_names, 32), classes)
    assert fitted["report"]["per_class"] == expected["per_class"]


def test_stacking_is_scored_on_rows_it_was_not_fitted_on(tmp_path):
    rng = np.random.default_rng(3)
    n = 200
    truth = (rng.random((n, 2)) < 0.4).astype(np.float64)
    good = np.clip(truth * 0.7 + rng.random((n, 2)) * 0.3, 0.01, 0.99)  # informative
    noise = rng.random((n, 2))  # not
    stacker = ensemble.Stacker().fit([good, noise], truth)
    weights = stacker.weights
    assert np.all(weights[:, 0] > 3 * np.abs(weights[:, 1]))  # it learns which member to trust
    folds = np.arange(n) % 5
    oof = ensemble.stacked_out_of_fold([good, noise], truth, folds)
    fitted_on_all = stacker.predict([good, noise])
    assert oof.shape == (n, 2) and not np.allclose(oof, fitted_on_all)
    for k in range(5):  # each fold's rows come from a stacker that never saw them
        held = folds == k
        again = ensemble.Stacker().fit([good[~held], noise[~held]], truth[~held])
        assert np.allclose(oof[held], again.predict([good[held], noise[held]]))


def test_best_picks_the_method_that_cross_validates_better(tmp_path):
    ws = make_toy_planet(tmp_path, n=60, folds=3)
    split = ws.split.read()
    _, labels = ws.sized(32, "train").labels()
    truth = dict(zip(ws.sized(32, "train").labels()[0], labels, strict=True))
    rng = np.random.default_rng(5)
    good = {n: np.clip(truth[n] * 0.8 + rng.random(17) * 0.2, 0, 1) for n in split.names}
    bad = {n: rng.random(17) for n in split.names}
    two = members([TINY, TINY.model_copy(update={"name": "noise"})], None, 3)
    for member in two:
        _fake_member(ws, member, rng, probs=good if member.recipe.name == "tiny-k" else bad)
    report = ensemble.combine(ws, two, "picked", "best", 32)
    scores = report["honest_scores"]
    assert set(scores) == {"mean", "stack"}
    assert report["chosen"] == max(scores, key=scores.get)  # F2: higher is better
    assert (ws.predictions_dir / "picked" / ensemble.COMBINE_FILE).is_file()


@pytest.mark.slow
def test_k_fold_members_predict_out_of_fold_with_models_that_did_not_see_those_images(tmp_path):
    """Real training: every train image gets one out-of-fold prediction, from the member that
    held it out (its training images exclude it)."""
    ws = make_toy_planet(tmp_path, n=48, folds=2, tests=4)
    group = members([TINY], None, 2)
    for member in group:
        record = stages.run_stage(ws, TINY, 0, device="cpu", fold=member.fold)
        train, held_out = stages.selection(ws.split.read(), member.fold)
        assert record["train_images"] == len(train) and record["valid_images"] == len(held_out)
        bundle = stages.export(ws, TINY, 0, member.fold)
        for split in [VALID, *scored_splits(ws)]:
            predict_run_split(
                ws,
                member.run_name,
                split,
                bundle["bundle"],
                bundle["sha256"],
                device="cpu",
                fold=member.fold,
            )
        names, _, _ = ws.predictions(member.run_name, VALID).read()
        assert set(names) == set(held_out) and not set(names) & set(train)
    names, groups_, _ = ensemble.oof_predictions(ws, group)
    assert sorted(names) == sorted(ws.split.read().names) and len(set(names)) == 48


KFOLD = Recipe(
    name="kfold",
    arch="resnet18",
    pretrained=False,
    stages=[TrainStage(size=32, frozen=False, epochs=2, lr="2e-3", batch_size=16)],
)


@pytest.mark.slow
def test_a_k_fold_demo_ends_in_the_ensembles_score_and_a_killed_member_resumes_alone(
    prefect_api, tmp_path, monkeypatch
):
    from datetime import UTC, datetime

    from flows.demo import run_demo
    from tests.fault_hooks import hook_env
    from tests.test_pipeline import _task_states_since

    sizes = dict(train=120, test=30, additional=10, seed=4)
    second = members([KFOLD], None, 2)[1]
    for name, value in hook_env(
        PLANET_FAULT=f"{second.run_name}:train-epoch-1=raise",
        PLANET_FAULT_ONCE=str(tmp_path / "fired"),
    ).items():
        monkeypatch.setenv(name, value)
    with pytest.raises(Exception, match="fault injected at train-epoch-1"):
        run_demo("planet", tmp_path, recipe=KFOLD, folds=2, **sizes)
    since = datetime.now(UTC)
    done = run_demo("planet", tmp_path, recipe=KFOLD, folds=2, **sizes)
    states = _task_states_since(since, by=str)
    assert states["stage 1: 32px unfrozen 2 epoch(s) at 2e-3 (fold1of2)"] == ["Cached"]
    assert states["stage 1: 32px unfrozen 2 epoch(s) at 2e-3 (fold2of2)"] == ["Completed"]
    ws = Workspace.of(tmp_path / "data", PLANET)
    record = stages.model_run(ws, KFOLD, second.fold).stage_record(0)
    import json

    assert json.loads(record.read_text())["resumed_from_epoch"] == 1  # resumed, not redone

    assert done["folds"] == 2 and [m["fold"] for m in done["members"]] == [1, 2]
    assert all(m["recipe"] == "kfold" and m["valid_metric"] is not None for m in done["members"])
    assert done["predicted"]["valid"] == 120  # every train image once, out of fold
    assert done["oof_metric_default"] is not None and done["oof_metric_tuned"] is not None
    ensemble_run = ensemble_name(members([KFOLD], None, 2))
    assert done["submission"].endswith(f"{ensemble_run}.csv") and done["score"] is not None
    analysis = json.loads((Path(done["top_losses_png"]).parent / "interpretation.json").read_text())
    assert analysis["run"] == ensemble_run and analysis["images"] == 120  # out of fold


def test_the_train_deployment_takes_a_member_of_the_ensemble():
    """What the parent sends a worker: the train flow's config for one member."""
    from flows.deployments import DEPLOYMENTS

    (deployment,) = [d for d in DEPLOYMENTS if d.name == "train"]
    flow = deployment.load()
    config = PipelineConfig(competition="planet", recipe=TINY, ensemble={"folds": 3})
    member = config.for_stage(TrainConfig).for_member(config.members()[1])
    params = flow.validate_parameters({"config": member.model_dump(mode="json")})
    assert params["config"].member == config.members()[1]
    assert PipelineConfig().ensemble.train_deployment == "train/train"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_members_run_on_two_workers_of_a_process_pool_and_the_parent_combines_them(tmp_path):
    """prefect deploy, two process workers started as separate processes, a 2-fold ensemble
    whose members go to the pool: each worker takes one (read from the Prefect API), and the
    parent predicts with both members and combines them."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.pipeline import pipeline
    from tests.servers import planet_server

    root = Path(__file__).resolve().parents[1]
    data_dir = tmp_path / "data"
    make_toy_planet(data_dir, n=48, folds=2, tests=4)
    prefect = str(Path(sys.executable).with_name("prefect"))
    with planet_server(tmp_path / "home") as url:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env |= {
            "PREFECT_API_URL": f"{url}/api",
            "PREFECT_HOME": str(tmp_path / "client"),
            "PLANET_PIPELINE_DIR": str(root),
            "PREFECT_WORKER_QUERY_SECONDS": "1",
        }

        def prefect_cli(*args: str) -> None:
            done = subprocess.run(
                [prefect, "--no-prompt", *args],
                cwd=root,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert done.returncode == 0, (args, done.stdout[-2000:], done.stderr[-2000:])

        prefect_cli("work-pool", "create", "planet-process", "--type", "process")
        prefect_cli("deploy", "--all", "--prefect-file", "deployments/prefect.yaml")
        workers = [
            subprocess.Popen(
                [
                    prefect,
                    "worker",
                    "start",
                    "--pool",
                    "planet-process",
                    "--name",
                    name,
                    "--limit",
                    "1",
                ],
                cwd=tmp_path,
                env=env,
                stdout=(tmp_path / f"{name}.log").open("w"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            for name in ("gpu-0", "gpu-1")
        ]
        try:
            config = PipelineConfig(
                competition="planet",
                data_dir=str(data_dir),
                recipe=TINY,
                stages=["train", "predict"],
                ensemble={"folds": 2, "work_pool": "planet-process"},
                compute={"device": "cpu", "workers": 1},
            )
            with temporary_settings(updates={PREFECT_API_URL: f"{url}/api"}):
                out = pipeline(config)
                with get_client(sync_client=True) as client:
                    runs = [
                        r for r in client.read_flow_runs(limit=50) if r.name.startswith("train ")
                    ]
        finally:
            for worker in workers:
                os.killpg(worker.pid, 15)
                worker.wait(timeout=60)
    by_worker = {r.labels.get("prefect.worker.name") for r in runs}
    assert len(runs) == 2 and by_worker == {"gpu-0", "gpu-1"}, [(r.name, r.labels) for r in runs]
    assert {m["worker"] for m in out["members"]} == {"gpu-0", "gpu-1"}
    assert out["predicted"]["valid"] == 48  # the parent combined both members, out of fold
    ws = Workspace.of(data_dir, PLANET)
    name = ensemble_name(members([TINY], None, 2))
    assert sorted(ws.predictions(name, VALID).read()[0]) == sorted(ws.split.read().names)


class _FakeClient:
    """What `flows.ensemble` asks of Prefect's client, answered from memory."""

    def __init__(self, pool: str, states: dict) -> None:
        self.pool, self.states = pool, states

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def read_deployment_by_name(self, name):
        from types import SimpleNamespace

        return SimpleNamespace(work_pool_name=self.pool)

    def read_flow_run(self, run_id):
        from types import SimpleNamespace

        return SimpleNamespace(state=self.states[run_id], labels={"prefect.worker.name": "w"})


def _pool_config() -> PipelineConfig:
    return PipelineConfig(
        competition="planet", recipe=TINY, ensemble={"folds": 2, "work_pool": "gpus"}
    )


def test_a_work_pool_that_is_not_the_train_deployments_is_refused_before_any_run(
    prefect_api, monkeypatch
):
    import prefect
    import prefect.deployments
    from prefect import flow

    from flows import ensemble as dispatch

    started = []
    monkeypatch.setattr(prefect, "get_client", lambda **_: _FakeClient("cpus", {}))
    monkeypatch.setattr(prefect.deployments, "run_deployment", lambda **kw: started.append(kw))
    config = _pool_config()

    @flow
    def parent() -> None:
        dispatch._train_on_pool(config, config.for_stage(TrainConfig), config.members())

    with pytest.raises(ValueError, match="work pool 'cpus', not 'gpus'"):
        parent()
    assert started == []


def test_a_member_that_fails_on_the_pool_fails_the_stage_naming_it(prefect_api, monkeypatch):
    from types import SimpleNamespace

    import prefect
    import prefect.deployments
    from prefect import flow
    from prefect.states import Completed, Failed

    from flows import ensemble as dispatch

    config = _pool_config()
    first, second = config.members()
    states = {first.run_name: Completed(), second.run_name: Failed()}
    monkeypatch.setattr(prefect, "get_client", lambda **_: _FakeClient("gpus", states))

    def start(name, parameters, flow_run_name, timeout):
        member = TrainConfig.model_validate(parameters["config"]).member
        assert timeout == 0 and name == "train/train"
        return SimpleNamespace(id=member.run_name)

    monkeypatch.setattr(prefect.deployments, "run_deployment", start)

    @flow
    def parent() -> None:
        dispatch._train_on_pool(config, config.for_stage(TrainConfig), config.members())

    with pytest.raises(RuntimeError, match=rf"1 of 2 members.*{second.run_name} \(Failed\)"):
        parent()


def test_an_ensembles_seeds_must_differ():
    with pytest.raises(ValueError, match="seeds must differ"):
        PipelineConfig(recipe=TINY, ensemble={"seeds": [1, 1]})
