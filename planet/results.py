"""A pipeline's results as pandas DataFrames, for a notebook.

    from planet import results
    results.runs("data", "planet")                                # what ran, one row per run
    results.predictions("data", "planet", run=..., split="valid")  # image_name x class
    results.labels("data", "planet")                              # image_name x class, 0/1

Every function takes the data directory and the competition (by slug or alias, as the CLI
does) and reads the files the pipeline wrote (planet.workspace): nothing is recomputed, and a
missing file is an error naming the stage to run.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

import numpy as np

from planet.competitions import Competition
from planet.workspace import MANIFEST, Workspace

if TYPE_CHECKING:
    import pandas as pd

COMBINE_FILE = "combine.json"  # planet.infer.ensemble's report, beside an ensemble's splits
VALID = "valid"
DataDir = str | os.PathLike[str]


def _ws(data_dir: DataDir, competition: str | Competition) -> Workspace:
    return Workspace.of(data_dir, competition)


def _combine(ws: Workspace, run: str) -> dict[str, Any] | None:
    from planet.fileio import read_json

    path = ws.predictions_dir / run / COMBINE_FILE
    return read_json(path) if path.is_file() else None


def _scores(ws: Workspace, run: str) -> tuple[float | None, float | None]:
    from planet.infer.decision import decision_for

    if not ws.thresholds(run).complete():
        return None, None
    return decision_for(ws.competition).scores(ws.thresholds(run).read())


def runs(data_dir: DataDir, competition: str | Competition) -> pd.DataFrame:
    """One row per run (index: its name, sorted): `kind` (model or ensemble), stages and
    epochs trained, the last epoch's validation metric, the predicted splits, the validation
    metric at the default and the fitted decision, whether a submission was written and its
    latest public score."""
    import pandas as pd

    from planet.infer.decision import decision_for

    ws = _ws(data_dir, competition)
    metric = decision_for(ws.competition).epoch_metric
    folders = [d for d in (ws.models_dir, ws.predictions_dir) if d.is_dir()]
    names = sorted({p.name for d in folders for p in d.iterdir() if p.is_dir()})
    rows = []
    for name in names:
        records = ws.model_run(name).stage_records()
        history = [row for rec in records for row in rec["history"]]
        splits = sorted(
            p.name for p in (ws.predictions_dir / name).glob("*") if (p / MANIFEST).is_file()
        )
        default, tuned = _scores(ws, name)
        scored = [r for r in ws.submission(name).records() if r.get("public_score") is not None]
        rows.append(
            {
                "run": name,
                "kind": "ensemble" if _combine(ws, name) else "model",
                "stages": len(records),
                "epochs": len(history),
                f"last_{metric}": history[-1].get(metric) if history else None,
                "splits": ",".join(splits),
                "val_metric_default": default,
                "val_metric_tuned": tuned,
                "submission": ws.submission(name).complete(),
                "public_score": scored[-1]["public_score"] if scored else None,
            }
        )
    columns = ["run", "kind", "stages", "epochs", f"last_{metric}", "splits"]
    return pd.DataFrame(rows, columns=None if rows else columns).set_index("run")


def predictions(
    data_dir: DataDir, competition: str | Competition, run: str, split: str = VALID
) -> pd.DataFrame:
    """A run's probabilities of one split (`valid`: its validation images; or a test split):
    index image_name, one column per class."""
    return _ws(data_dir, competition).predictions(run, split).frame()


def _fold_members(ws: Workspace, run: str) -> list[tuple[str, int]]:
    combined = _combine(ws, run)
    if combined is not None:
        return [(m["run"], m["fold"]) for m in combined["members"] if m.get("fold")]
    pattern = re.compile(re.escape(run) + r"-fold(\d+)of\d+")
    found = ws.predictions_dir.glob(f"{run}-fold*") if ws.predictions_dir.is_dir() else []
    matches = [(p.name, pattern.fullmatch(p.name)) for p in found]
    return sorted(((n, int(m.group(1))) for n, m in matches if m), key=lambda x: x[1])


def oof(data_dir: DataDir, competition: str | Competition, run: str) -> pd.DataFrame:
    """Out-of-fold predictions of a k-fold training: each member's probabilities of the fold
    it held out (index image_name; columns member, fold, then one per class). `run` is an
    ensemble or the run name its fold members (`<run>-fold<k>of<K>`) share."""
    import pandas as pd

    ws = _ws(data_dir, competition)
    members = _fold_members(ws, run)
    if not members:
        raise ValueError(
            f"{run} has no out-of-fold predictions in {ws.predictions_dir}: they come from a "
            "k-fold training (folds >= 2)"
        )
    frames = []
    for member, fold in members:
        frame = ws.predictions(member, VALID).frame()
        frame.insert(0, "fold", fold)
        frame.insert(0, "member", member)
        frames.append(frame)
    return pd.concat(frames)


def metrics(data_dir: DataDir, competition: str | Competition, run: str) -> pd.DataFrame:
    """The metrics history of a run, one row per epoch (stage, epoch, train_loss, valid_loss,
    the metrics, lr, seconds, images_per_s); an ensemble's members' rows, with a `run`
    column."""
    import pandas as pd

    ws = _ws(data_dir, competition)
    combined = _combine(ws, run)
    if combined is None or ws.model_run(run).stage_records():
        frame = ws.model_run(run).frame()
        if frame.empty:
            raise FileNotFoundError(
                f"{ws.model_run(run).folder} holds no finished stage: run the train stage first"
            )
        return frame
    members = [m["run"] for m in combined["members"]]
    return pd.concat([ws.model_run(m).frame().assign(run=m) for m in members], ignore_index=True)


def thresholds(data_dir: DataDir, competition: str | Competition, run: str) -> pd.DataFrame:
    """The decision fitted on validation: per class (index) its support, threshold and F2 at
    0.2 and fitted (multi-label); per candidate clip (index) its validation log loss and
    whether it was chosen (single-label)."""
    return _ws(data_dir, competition).thresholds(run).frame()


def submission(data_dir: DataDir, competition: str | Competition, run: str) -> pd.DataFrame:
    """The submission CSV as written (strings), indexed by its key column."""
    return _ws(data_dir, competition).submission(run).frame()


def submit_record(data_dir: DataDir, competition: str | Competition, run: str) -> pd.DataFrame:
    """The submissions of the run's CSV (one row per endpoint): ref, status, scores, message,
    timestamps. Empty when it was never submitted."""
    import pandas as pd

    return pd.DataFrame(_ws(data_dir, competition).submission(run).records())


def labels(data_dir: DataDir, competition: str | Competition) -> pd.DataFrame:
    """The train images' labels: index image_name, one 0/1 column per class. From the labels
    CSV when the competition has one and it was extracted, else from the sized train shards
    (the labels training saw; Dogs vs Cats' come from the file names)."""
    import pandas as pd

    from planet.store.labels import parse_tags_csv

    ws = _ws(data_dir, competition)
    classes = list(ws.competition.classes)
    table = ws.labels_table()
    if table is not None and table.path.is_file():
        parsed = parse_tags_csv(table.path, classes)
        names, values = parsed.names, parsed.values
    else:
        sizes = sorted(
            int(p.parent.name)
            for p in (ws.root / "shards").glob("*/train")
            if p.parent.name.isdigit() and (p / MANIFEST).is_file()
        )
        if not sizes:
            raise FileNotFoundError(
                f"no labels in {ws.root}: run the prepare and resize stages first"
            )
        names, values = ws.sized(sizes[0], "train").labels()
        if values.ndim == 1:  # class indices
            values = np.eye(len(classes), dtype=np.uint8)[values]
    index = pd.Index(names, name="image_name")
    return pd.DataFrame(np.asarray(values, dtype=np.uint8), index=index, columns=classes)
