"""The last mile of one model run on a workspace: what the predict, thresholds and submission
stages each do, as one call apiece.

    predict_run_split     TTA probabilities of one split (`valid`: the split's validation
                          images of the train shards) with the run's exported model
    fit_decision          the competition's decision (thresholds or clip) fitted on validation
    write_run_submission  the submission CSV from the test splits' probabilities

Memory: prediction reads its batches from the shard files (`planet.infer.predict`);
the other stages hold probability and label tables whole (n x classes float32: 4.2 MB for
Planet's 61,191 test images), never pixels, so they are kept in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from planet.fileio import sha256_file, sha256_json
from planet.infer.decision import decision_for
from planet.learn.members import Fold
from planet.workspace import Workspace

VALID = "valid"  # the predictions of the validation images (of the train shards)


def image_split(split_name: str) -> str:
    """The sized shards a prediction split reads (`valid` reads the train shards)."""
    return "train" if split_name == VALID else split_name


def prediction_splits(ws: Workspace) -> list[str]:
    """What the predict stage predicts: validation, then every test split."""
    return [VALID] + scored_splits(ws)


def scored_splits(ws: Workspace) -> list[str]:
    return [f.split for f in ws.competition.image_files if f.split != "train"]


def valid_names(ws: Workspace, size: int, fold: Fold | None = None) -> list[str]:
    """The images a model validates on (the split's validation images, or its held-out fold)
    that the train shards at `size` hold (resize may have left an unreadable one out), in the
    split's order."""
    from planet.learn.stages import selection

    have = set(ws.sized(size, "train").labels()[0])
    return [n for n in selection(ws.split.read(), fold)[1] if n in have]


def valid_truth(ws: Workspace, names: Sequence[str], size: int) -> np.ndarray:
    """The labels of `names` from the train shards at `size`."""
    all_names, labels = ws.sized(size, "train").labels()
    if labels is None:
        raise ValueError(f"the {size}px train shards of {ws.slug} carry no labels")
    pos = {n: i for i, n in enumerate(all_names)}
    return labels[[pos[n] for n in names]]


def prediction_inputs(
    ws: Workspace, split_name: str, size: int, fold: Fold | None = None
) -> dict[str, Any]:
    """What a split's predictions depend on besides the model: its sized shards' manifest and
    (for `valid`) the names predicted, as hashes (the cache key's content)."""
    sized = ws.sized(size, image_split(split_name))
    try:
        source = sized.read_manifest()
    except Exception as exc:
        raise FileNotFoundError(
            f"{sized.folder} has no complete {size}px shards ({exc}): the model was trained at "
            f"{size}px, so the resize stage must include size {size}"
        ) from None
    names = valid_names(ws, size, fold) if split_name == VALID else None
    return {
        "source_sha256": sha256_json(source),
        "names_sha256": sha256_json(names) if names is not None else None,
    }


def predict_run_split(
    ws: Workspace,
    run: str,
    split_name: str,
    bundle: str,
    bundle_sha256: str,
    *,
    tta: bool = True,
    beta: float | None = None,
    device: str = "auto",
    batch_size: int = 64,
    part_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    fold: Fold | None = None,
    precision: str = "auto",
) -> dict[str, Any]:
    """Probabilities of a split with the run's exported bundle (`bundle`, relative to the
    competition folder), averaged over the 8 symmetries of the square, at `precision` (auto,
    fp32, bf16, fp16); its manifest. A k-fold member's `valid` is the fold it held out
    (`fold`)."""
    import torch

    from planet.infer.predict import PART_SIZE, predict_split
    from planet.learn.fit import resolve_device
    from planet.learn.model import load_bundle

    loaded = load_bundle(ws.path(bundle), device=resolve_device(device))
    select = valid_names(ws, loaded.size, fold) if split_name == VALID else None
    loaded.model.to(memory_format=torch.channels_last)  # faster on the CPU and on CUDA
    manifest = predict_split(
        loaded.model,
        ws.sized(loaded.size, image_split(split_name)).folder,
        ws.predictions(run, split_name).folder,
        classes=loaded.classes,
        task=loaded.task,
        batch_size=batch_size,
        part_size=part_size or PART_SIZE,
        device=next(loaded.model.parameters()).device,
        tta=tta,
        beta=beta,
        select=select,
        mean=loaded.mean,
        std=loaded.std,
        progress=progress,
        channels_last=True,
        settings={"bundle_sha256": bundle_sha256},
        precision=precision,
    )
    manifest.pop("source", None)  # holds an absolute folder path
    return manifest


def fit_decision(ws: Workspace, run: str, size: int) -> dict[str, Any]:
    """The competition's decision fitted on the run's validation probabilities, written to
    predictions/<run>/thresholds.json; what the pipeline reports of it."""
    decision = decision_for(ws.competition)
    names, probs, classes = ws.predictions(run, VALID).read()
    report = decision.fit(probs, valid_truth(ws, names, size), classes)
    path = ws.thresholds(run).path
    decision.write(path, report)
    default, tuned = decision.scores(report)
    return {
        "path": ws.relative(path),
        "sha256": sha256_file(path),
        "metric": ws.competition.metric,
        "val_metric_default": default,
        "val_metric_tuned": tuned,
        "summary": decision.summary(report),
        "report": report,
    }


def write_run_submission(ws: Workspace, run: str) -> dict[str, Any]:
    """submissions/<run>.csv from the test splits' probabilities and the fitted decision,
    checked against the sample submission before it is written."""
    names: list[str] = []
    parts = []
    for split_name in scored_splits(ws):
        n, p, _ = ws.predictions(run, split_name).read()
        names += n
        parts.append(p)
    path = ws.submission(run).path
    fitted = ws.thresholds(run).require("thresholds")
    result = decision_for(ws.competition).write_submission(
        ws.tables_dir, path, names, np.concatenate(parts), fitted
    )
    return {**result, "path": ws.relative(path)}
