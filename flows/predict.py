"""The last mile of the seed notebooks, as three small flows:

    predict     = TTA probabilities of the validation images and of every test split
    thresholds  = the competition's decision fitted on validation (per-class thresholds, or a
                  probability clip), then the error analysis at it (top losses, per-tag table,
                  show_results; Dogs vs Cats: confident mistakes and the confusion matrix)
    submission  = the CSV, checked against the sample submission before it is written

Each reads what the one before wrote (under predictions/<run>/) and is cached on its content.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.config import PredictConfig
from flows.notify import HOOKS
from planet.fileio import sha256_file
from planet.infer.interpretation import interpretation_inputs
from planet.infer.runs import VALID, prediction_inputs, prediction_splits, scored_splits
from planet.learn.stages import exported_bundle
from tasks.ensemble import combine_members
from tasks.interpret import error_analysis
from tasks.predict import fit_validation_decision, predict_images, submission_file

DEFAULT_CONFIG = PredictConfig()


@flow(name="predict", flow_run_name="predict {config.competition} {config.recipe.name}", **HOOKS)
def predict(config: PredictConfig = DEFAULT_CONFIG) -> dict[str, Any]:
    """TTA probabilities of the validation split and of every test split, by every member of
    the ensemble (a k-fold member's validation split is its held-out fold), then the members'
    combination; the ensemble's manifests by split (one member: its own)."""
    ws, options = config.workspace, config.predict
    members = config.members()
    predicted: list[dict[str, Any]] = []
    for member in members:
        bundle = exported_bundle(ws, member.recipe, member.fold)
        for split_name in prediction_splits(ws):
            predicted.append(
                predict_images(
                    ws=ws,
                    run=member.run_name,
                    split_name=split_name,
                    bundle=bundle["bundle"],
                    bundle_sha256=bundle["sha256"],
                    **prediction_inputs(ws, split_name, bundle["size"], member.fold),
                    tta=options.tta,
                    beta=options.beta,
                    size=bundle["size"],
                    device=config.compute.device,
                    batch_size=options.batch_size,
                    part_size=options.part_size,
                    fold=member.fold,
                    precision=config.compute.precision,
                )
            )
    if len(members) > 1:
        combine_members(
            ws=ws,
            name=config.run_name,
            members=members,
            member_sha256=[m["probs"]["sha256"] for m in predicted],
            how=config.ensemble.combine,
            size=members[0].recipe.stages[-1].size,
        )
    return {
        split: ws.predictions(config.run_name, split).read_manifest()
        for split in prediction_splits(ws)
    }


@flow(
    name="thresholds", flow_run_name="thresholds {config.competition} {config.recipe.name}", **HOOKS
)
def thresholds(config: PredictConfig = DEFAULT_CONFIG) -> dict[str, Any]:
    """Fit the thresholds (or clip) on the validation probabilities (an ensemble's: its
    out-of-fold predictions), then analyse the errors at them (`interpretation`: the files
    under predictions/<run>/)."""
    ws, run = config.workspace, config.run_name
    size = config.members()[0].recipe.stages[-1].size
    valid = ws.predictions(run, VALID).read_manifest()
    fitted = fit_validation_decision(
        ws=ws, run=run, valid_sha256=valid["probs"]["sha256"], size=size
    )
    analysed = error_analysis(ws=ws, run=run, **interpretation_inputs(ws, run, size))
    return {**fitted, "interpretation": analysed}


@flow(
    name="submission", flow_run_name="submission {config.competition} {config.recipe.name}", **HOOKS
)
def submission(config: PredictConfig = DEFAULT_CONFIG) -> dict[str, Any]:
    """Write submissions/<run>.csv from the test probabilities and the fitted thresholds."""
    ws, run = config.workspace, config.run_name
    tests = [ws.predictions(run, split).read_manifest() for split in scored_splits(ws)]
    fitted = ws.thresholds(run).require("thresholds")
    return submission_file(
        ws=ws,
        run=run,
        test_sha256=[m["probs"]["sha256"] for m in tests],
        thresholds_sha256=sha256_file(fitted),
    )
