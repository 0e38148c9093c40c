"""A run's error analysis as files under predictions/<run>/ (planet.report.interpret), made from
its validation probabilities (an ensemble's: out of fold) and the decision fitted on them.

    top_losses.png          multi-label: the images of highest loss, true and predicted tags
    confident_mistakes.png  single-label: the most confident mistakes (in place of top losses)
    per_tag.csv             per class: threshold, support, TP, FP, FN, TN, precision, recall, F2
    results.png             show_results: the first validation images, predicted vs true
    confusion.png           single-label: the 2x2 confusion matrix at 0.5
    interpretation.json     the manifest, written last: what it was made from, each file's size
                            and sha256, the top losses and the confusion counts

Each file is written atomically; the manifest's presence with intact files and the same inputs
is `complete`. Only the pixels of the images shown are read from the sized shards.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from planet.fileio import (
    files_intact,
    read_json,
    sha256_bytes,
    sha256_file,
    sha256_json,
    write_bytes_atomic,
    write_json_atomic,
)
from planet.infer.runs import VALID, valid_truth
from planet.workspace import Workspace

FORMAT = "planet-interpretation"
FORMAT_VERSION = 1
TOP_LOSSES = "top_losses.png"
CONFIDENT_MISTAKES = "confident_mistakes.png"
PER_TAG = "per_tag.csv"
RESULTS = "results.png"
CONFUSION = "confusion.png"


def interpretation_inputs(ws: Workspace, run: str, size: int) -> dict[str, Any]:
    """What the analysis is made from, as hashes: the validation probabilities, the fitted
    decision, the sized train shards read for the pictures (and their size)."""
    valid = ws.predictions(run, VALID).read_manifest()
    return {
        "valid_sha256": valid["probs"]["sha256"],
        "thresholds_sha256": sha256_file(ws.thresholds(run).require("thresholds")),
        "source_sha256": sha256_json(ws.sized(size, "train").read_manifest()),
        "size": size,
    }


def interpretation_complete(path: Path, inputs: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest at `path` when the analysis was made from `inputs` and the files it lists
    beside it are intact (their recorded sizes)."""
    try:
        manifest = read_json(path)
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return None
    if manifest.get("format_version") != FORMAT_VERSION:
        return None
    if manifest.get("inputs") != inputs or not isinstance(manifest.get("files"), dict):
        return None
    return manifest if files_intact(path.parent, manifest["files"].values()) else None


def _analyse(ws: Workspace, run: str, size: int) -> Any:
    from planet.infer.thresholds import read_clip, read_thresholds
    from planet.report import interpret

    names, probs, classes = ws.predictions(run, VALID).read()
    truth = valid_truth(ws, names, size)
    fitted = ws.thresholds(run).require("thresholds")
    if ws.competition.task == "multi_label":
        fitted_classes, thresholds = read_thresholds(fitted)
        if tuple(fitted_classes) != tuple(classes):
            raise ValueError(f"{fitted} fits other classes than the predictions: rerun thresholds")
        return interpret.analyse_multi_label(names, probs, truth, classes, thresholds)
    positive = list(classes).index(ws.competition.positive_class or classes[-1])
    return interpret.analyse_single_label(names, probs, truth, classes, positive, read_clip(fitted))


def write_interpretation(ws: Workspace, run: str, size: int) -> dict[str, Any]:
    """Write the run's analysis files (see the module doc) and then its manifest; returns the
    manifest, its files relative to the competition folder by role (`top_losses_png`,
    `per_tag_csv`, `results_png`, `confusion_png`), and the per-class table."""
    from planet.report import interpret
    from planet.store.sized import read_sized_pixels

    inputs = interpretation_inputs(ws, run, size)
    analysis = _analyse(ws, run, size)
    shown = interpret.results_positions(analysis)
    wanted = [analysis.names[i] for i in analysis.top] + [analysis.names[i] for i in shown]
    pixels = read_sized_pixels(ws.sized(size, "train").folder, wanted)
    top_pixels, shown_pixels = pixels[: len(analysis.top)], pixels[len(analysis.top) :]
    single = analysis.confusion is not None
    contents = {
        "top_losses_png": (
            CONFIDENT_MISTAKES if single else TOP_LOSSES,
            interpret.top_losses_png(analysis, top_pixels),
        ),
        "per_tag_csv": (PER_TAG, interpret.table_csv(analysis.table).encode()),
        "results_png": (RESULTS, interpret.results_png(analysis, shown_pixels)),
    }
    if single:
        contents["confusion_png"] = (CONFUSION, interpret.confusion_matrix_png(analysis))
    dataset = ws.interpretation(run)
    dataset.manifest.unlink(missing_ok=True)  # the files below are no longer what it lists
    files = {}
    for role, (name, data) in contents.items():
        write_bytes_atomic(dataset.folder / name, data)
        files[role] = {"name": name, "bytes": len(data), "sha256": sha256_bytes(data)}
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "run": run,
        "task": analysis.task,
        "inputs": inputs,
        "files": files,
        "classes": list(analysis.classes),
        "images": len(analysis.names),
        "top_losses": analysis.top_records(),
        "confusion": None if analysis.confusion is None else analysis.confusion.tolist(),
    }
    write_json_atomic(dataset.manifest, manifest)
    return {
        "manifest": ws.relative(dataset.manifest),
        "files": {role: ws.relative(dataset.folder / rec["name"]) for role, rec in files.items()},
        "task": analysis.task,
        "top_losses": manifest["top_losses"],
        "confusion": manifest["confusion"],
        "table": analysis.table,
    }
