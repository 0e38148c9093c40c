"""The composed config: every stage option settable from the pipeline's parameters and from
`planet run`, each declared once, flat (earlier) settings still accepted."""

from __future__ import annotations

import pytest

from flows import cli
from flows.config import (
    STAGE_CONFIGS,
    PipelineConfig,
    PredictConfig,
    PrepareConfig,
    ResizeConfig,
    SubmitConfig,
    TrainConfig,
)
from flows.options import (
    ComputeOptions,
    EnsembleOptions,
    Options,
    PredictOptions,
    PrepareOptions,
    ResizeOptions,
    SubmitOptions,
    TrainOptions,
)
from planet.competitions import DOGS_VS_CATS, PLANET
from planet.learn.recipe import cpu_demo

SECTIONS: dict[str, type[Options]] = {
    "prepare": PrepareOptions,
    "resize": ResizeOptions,
    "ensemble": EnsembleOptions,
    "compute": ComputeOptions,
    "train": TrainOptions,
    "predict": PredictOptions,
    "submit": SubmitOptions,
}
# A value other than the default for every field of every section, with its command-line form.
# A new field without a line here fails test_every_option_has_a_sample: give it one.
SAMPLES: dict[str, tuple[object, list[str]]] = {
    "files": (["train_v2.csv.zip"], ["train_v2.csv.zip"]),
    "shard_size": (500, ["500"]),
    "write_files": (True, []),
    "sizes": ([48, 96], ["48", "96"]),
    "method": ("crop", ["crop"]),
    "dask_address": ("tcp://scheduler:8786", ["tcp://scheduler:8786"]),
    "valid_pct": (0.25, ["0.25"]),
    "split_seed": (7, ["7"]),
    "folds": (5, ["5"]),
    "seeds": ([1, 2], ["1", "2"]),
    "recipes": ([cpu_demo()], ["cpu-demo"]),
    "combine": ("stack", ["stack"]),
    "work_pool": ("gpus", ["gpus"]),
    "train_deployment": ("train/gpu", ["train/gpu"]),
    "device": ("cpu", ["cpu"]),
    "workers": (3, ["3"]),
    "precision": ("fp32", ["fp32"]),
    "concurrency_limit": ("gpu", ["gpu"]),
    "compile": (True, []),
    "tta": (False, []),
    "beta": (0.4, ["0.4"]),
    "batch_size": (32, ["32"]),
    "part_size": (512, ["512"]),
    "submit": (True, []),
    "score_timeout_s": (120.0, ["120"]),
    "poll_interval_s": (0.5, ["0.5"]),
    "resubmit": (True, []),
}


def _flag(field: str, value: object) -> list[str]:
    name = "--" + field.replace("_", "-")
    if isinstance(value, bool):
        return [name if value else "--no-" + name[2:]]
    return [name, *SAMPLES[field][1]]


def _fields() -> list[tuple[str, str]]:
    return [(section, field) for section, model in SECTIONS.items() for field in model.model_fields]


def test_every_option_has_a_sample_and_one_name():
    names = [field for _, field in _fields()]
    assert sorted(names) == sorted(SAMPLES), "give every new option a sample value here"
    top = set(PipelineConfig.model_fields) - set(SECTIONS)
    assert len(names) == len(set(names)) and not set(names) & top  # one flat flag each


@pytest.mark.parametrize(("section", "field"), _fields())
def test_every_stage_option_is_settable_from_the_pipeline_and_planet_run(section, field):
    value = SAMPLES[field][0]
    assert getattr(SECTIONS[section](), field) != value  # the sample is not the default
    from_params = PipelineConfig(competition="planet", **{section: {field: value}})
    from_cli = cli.parse_run_config(["--competition", "planet", *_flag(field, value)])
    for config in (from_params, from_cli):
        assert getattr(getattr(config, section), field) == value
        # ... and it reaches every stage flow that has this section, as the same value
        for cls in STAGE_CONFIGS:
            if section in cls.model_fields:
                assert getattr(getattr(config.for_stage(cls), section), field) == value


def test_planet_run_help_shows_a_flag_for_every_stage_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for _, field in _fields():
        assert "--" + field.replace("_", "-") in out, field
    for flag in ("--folds", "--valid-pct", "--split-seed", "--beta", "--compile", "--batch-size"):
        assert flag in out


def test_flat_settings_of_earlier_versions_go_into_their_sections():
    config = PipelineConfig(
        competition="planet",
        shard_size=500,
        sizes=[64],
        dask_address="tcp://h:1",
        device="cpu",
        workers=1,
        tta=False,
        part_size=100,
        submit=True,
        submit_timeout_s=120,
    )
    assert config.prepare.shard_size == 500 and config.resize.sizes == [64]
    assert config.resize.dask_address == "tcp://h:1"
    assert config.compute.device == "cpu" and config.compute.workers == 1
    assert config.predict.tta is False and config.predict.part_size == 100
    assert config.submit.submit is True and config.submit.score_timeout_s == 120
    assert ResizeConfig(n_folds=5).ensemble.folds == 5
    assert TrainConfig(compile_model=True).train.compile is True
    assert SubmitConfig(timeout_s=30).submit.score_timeout_s == 30
    assert PrepareConfig(files=["train_v2.csv.zip"]).prepare.files == ["train_v2.csv.zip"]


def test_the_pipeline_checks_every_stage_config_before_it_runs():
    with pytest.raises(ValueError, match="not files of"):
        PipelineConfig(competition="dogs-vs-cats", prepare={"files": ["train_v2.csv.zip"]})
    with pytest.raises(ValueError, match="device"):
        PipelineConfig(compute={"device": "gpu"})


def test_stage_configs_share_the_pipelines_objects():
    config = PipelineConfig(competition="planet", recipe=cpu_demo(), predict={"beta": 0.3})
    predict = config.for_stage(PredictConfig)
    assert predict.recipe == config.recipe and predict.predict == config.predict
    assert set(type(predict).model_fields) <= set(PipelineConfig.model_fields)


def test_resize_sizes_are_the_recipes_plus_the_extra_ones():
    assert ResizeConfig().all_sizes() == [64, 128, 256]  # alone, no recipe: fast.ai's sizes
    assert ResizeConfig(resize={"sizes": [32]}).all_sizes() == [32]
    pipeline = PipelineConfig(recipe=cpu_demo(), resize={"sizes": [32]})
    assert pipeline.for_stage(ResizeConfig).all_sizes() == [32, 64, 128]
    assert PipelineConfig(recipe=cpu_demo()).for_stage(ResizeConfig).all_sizes() == [64, 128]


def test_recipe_by_name_and_competition_default():
    assert PipelineConfig(competition="dogs-vs-cats").recipe.arch == "vgg16"
    assert PipelineConfig(recipe="cpu-demo").recipe.name == "cpu-demo"
    assert cli.parse_run_config(["--competition", "dogs-vs-cats"]).recipe.arch == "vgg16"
    assert cli.parse_run_config([]).stages == [
        "prepare",
        "resize",
        "train",
        "predict",
        "thresholds",
        "submission",
    ]
    assert cli.parse_run_config(["--stages", "submit", "train"]).stages == ["train", "submit"]
    assert PLANET.slug == cli.parse_run_config(["--competition", "planet"]).competition
    assert DOGS_VS_CATS.slug == PipelineConfig(competition="dogs-vs-cats").competition


@pytest.mark.parametrize(
    ("argv", "code", "words"),
    [
        (["run", "--vald-pct", "0.3"], 2, ["--vald-pct", "--valid-pct"]),
        (["run", "--valid-pct", "3"], 1, ["--valid-pct", "less than 1"]),
        (["run", "--competition", "mnist"], 2, ["mnist", "dogs-vs-cats"]),
        (["run", "--shard-size", "many"], 2, ["--shard-size", "integer"]),
        (["run", "--device", "gpu"], 1, ["--device", "'gpu'", "cuda"]),
    ],
)
def test_a_bad_setting_is_one_line_naming_the_flag(argv, code, words, capsys):
    if code == 2:
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        assert exit_info.value.code == 2
    else:
        assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("planet run: error: ") and err.count("\n") == 1, err
    for word in words:
        assert word in err


def test_the_resize_stage_says_where_each_size_comes_from():
    """`--stages resize --sizes 64` also makes the default recipe's 128 and 256 px: it says so."""
    config = cli.parse_run_config(["--stages", "resize", "--sizes", "64"]).for_stage(ResizeConfig)
    note = config.sizes_note()
    assert config.all_sizes() == [64, 128, 256]
    assert "64 px from the sizes setting" in note and "128, 256 px" in note
    assert "lesson3" in note and "does not replace" in note
    alone = ResizeConfig().sizes_note()
    assert "64, 128, 256 px by default" in alone


def test_planet_run_help_names_every_credential_source(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for source in (
        "KAGGLE_USERNAME",
        "KAGGLE_KEY",
        "KAGGLE_API_TOKEN",
        "kaggle.json",
        "access_token",
        "KAGGLE_CONFIG_DIR",
        "~/.kaggle",
        "XDG_CONFIG_HOME",
    ):
        assert source in out, source
    assert "--resubmit" in out
