"""The last mile of the seed notebooks, as three small flows:

    predict     = TTA probabilities of the validation images and of every test split
    thresholds  = per-class thresholds fitted on validation (Planet), or the clip (Dogs vs Cats)
    submission  = the CSV, checked against the sample submission before it is written

Each reads what the one before wrote (under predictions/<run>/) and is cached on its content.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.config import PredictConfig
from planet.fileio import read_json, sha256_file
from planet.layout import CompetitionDirs
from planet.learn import stages
from planet.learn.recipe import Recipe
from tasks import predict as predict_tasks

DEFAULT_CONFIG = PredictConfig()


def exported_bundle(data_dir: str, slug: str, recipe: Recipe) -> dict[str, Any]:
    """The trained recipe's export.pt (path relative to the competition folder, sha256)."""
    out_dir = stages.models_dir(data_dir, slug, recipe)
    path = out_dir / stages.EXPORT_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: train recipe {recipe.run_name} first (the train stage)"
        )
    return {
        "bundle": str(path.relative_to(CompetitionDirs.of(data_dir, slug).root)),
        "sha256": sha256_file(path),
    }


def _model_size(data_dir: str, slug: str, recipe: Recipe) -> int:
    record = read_json(
        stages.stage_record_file(stages.models_dir(data_dir, slug, recipe), len(recipe.stages) - 1)
    )
    return recipe.stages[record["stage"] - 1].size


@flow(name="predict", flow_run_name="predict {config.competition} {config.recipe.name}")
def predict(config: PredictConfig = DEFAULT_CONFIG) -> dict[str, Any]:
    """TTA probabilities of the validation split and of every test split."""
    slug, data_dir, recipe = config.competition, str(config.data_path), config.recipe
    bundle = exported_bundle(data_dir, slug, recipe)
    size = _model_size(data_dir, slug, recipe)
    splits = [predict_tasks.VALID] + [
        f.split for f in config.spec.image_files if f.split != "train"
    ]
    return {
        split_name: predict_tasks.run_predict(
            slug,
            data_dir,
            recipe.run_name,
            split_name,
            bundle,
            size=size,
            tta=config.tta,
            beta=config.beta,
            device=config.device,
            batch_size=config.batch_size,
            part_size=config.part_size,
        )
        for split_name in splits
    }


def _probs_manifest(data_dir: str, slug: str, run: str, split_name: str) -> dict[str, Any]:
    folder = predict_tasks.predictions_dir(data_dir, slug, run, split_name)
    try:
        return read_json(folder / "manifest.json")
    except (OSError, ValueError):
        raise FileNotFoundError(
            f"{folder} holds no finished predictions: run the predict stage first"
        ) from None


@flow(name="thresholds", flow_run_name="thresholds {config.competition} {config.recipe.name}")
def thresholds(config: PredictConfig = DEFAULT_CONFIG) -> dict[str, Any]:
    """Fit the thresholds (or clip) on the validation probabilities."""
    slug, data_dir, run = config.competition, str(config.data_path), config.recipe.run_name
    valid = _probs_manifest(data_dir, slug, run, predict_tasks.VALID)
    size = _model_size(data_dir, slug, config.recipe)
    return predict_tasks.run_thresholds(slug, data_dir, run, valid, size)


@flow(name="submission", flow_run_name="submission {config.competition} {config.recipe.name}")
def submission(config: PredictConfig = DEFAULT_CONFIG) -> dict[str, Any]:
    """Write submissions/<run>.csv from the test probabilities and the fitted thresholds."""
    slug, data_dir, run = config.competition, str(config.data_path), config.recipe.run_name
    tests = {
        f.split: _probs_manifest(data_dir, slug, run, f.split)
        for f in config.spec.image_files
        if f.split != "train"
    }
    path = predict_tasks.predictions_dir(data_dir, slug, run, predict_tasks.THRESHOLDS_FILE)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the thresholds stage first")
    fitted = {"sha256": sha256_file(path)}
    return predict_tasks.run_submission(slug, data_dir, run, tests, fitted)
