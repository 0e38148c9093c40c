"""What a trained run predicted with, found from its `export.pt`: the fitted thresholds (or
clip), TTA and beta, the resize method, and the competition whose answer it gives.

When `export.pt` is still in its workspace (`<data>/<slug>/models/<run>/export.pt`):

    thresholds / clip   predictions/<run>/thresholds.json
    TTA and beta        the run's predictions' manifest (test splits first, then valid), when
                        made with this bundle (its sha256)
    resize method       the run's sized train shards' manifest (squish or crop)

Arguments win over the run's; without a run the defaults are TTA, no beta, squish, and the
thresholds file must be given (`PredictSetupError` says so).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from planet.competitions import COMPETITIONS, Competition, resolve
from planet.workspace import Workspace

if TYPE_CHECKING:
    from planet.learn.model import Bundle


class PredictSetupError(ValueError):
    """What predicting needs and was not found (the model, its thresholds); says what to do."""


@dataclass(frozen=True)
class RunSettings:
    """How the run predicted: where the bundle's workspace and run are (when known), the
    fitted file, TTA, beta and the resize method, with where each came from."""

    workspace: Workspace | None
    run: str | None
    thresholds: Path
    tta: bool
    beta: float | None
    method: str
    sources: dict[str, str] = field(default_factory=dict)  # setting -> run, option or default


def run_of(model: Path) -> tuple[Workspace, str] | None:
    """(workspace, run name) of `<data>/<slug>/models/<run>/export.pt`, else None."""
    path = model.resolve()
    if path.parent.parent.name != "models":
        return None
    root = path.parent.parent.parent
    try:
        comp = resolve(root.name)
    except ValueError:
        return None
    return Workspace(root, comp), path.parent.name


def _run_tta(ws: Workspace, run: str, bundle_sha256: str) -> tuple[bool, float | None] | None:
    """The TTA and beta of the run's predictions made with this bundle (test splits first)."""
    from planet.infer.runs import VALID, scored_splits

    for split in [*scored_splits(ws), VALID]:
        try:
            manifest = ws.predictions(run, split).read_manifest()
        except FileNotFoundError:
            continue
        if (manifest.get("settings") or {}).get("bundle_sha256") == bundle_sha256:
            return bool(manifest["tta"]), manifest.get("beta")
    return None


def _run_method(ws: Workspace, size: int) -> str | None:
    try:
        return str(ws.sized(size, "train").read_manifest()["method"])
    except Exception:  # no shards, or not a manifest of ours: the caller's default
        return None


def run_settings(
    model: Path,
    bundle_sha256: str,
    size: int,
    *,
    thresholds: str | os.PathLike[str] | None = None,
    tta: bool | None = None,
    beta: float | None = None,
    method: str | None = None,
) -> RunSettings:
    """The settings the model's run predicted with (see the module doc); given arguments
    win over the run's."""
    found = run_of(model)
    ws, run = found if found else (None, None)
    sources: dict[str, str] = {}
    if thresholds is not None:
        fitted, sources["thresholds"] = Path(thresholds), "option"
        if not fitted.is_file():
            raise PredictSetupError(f"--thresholds {fitted} does not exist")
    elif ws is not None and run is not None and ws.thresholds(run).complete():
        fitted, sources["thresholds"] = ws.thresholds(run).path, "run"
    else:
        where = (
            f"{ws.thresholds(run).path} does not exist"
            if ws and run
            else (f"{model} is not in a workspace's models/<run>/ folder")
        )
        raise PredictSetupError(
            f"no fitted thresholds for {model}: {where}; run the thresholds stage or pass "
            "--thresholds FILE (a predictions/<run>/thresholds.json)"
        )
    run_tta = _run_tta(ws, run, bundle_sha256) if ws and run else None
    if tta is not None:
        sources["tta"] = "option"
    elif run_tta is not None:
        tta, sources["tta"] = run_tta[0], "run"
    else:
        tta, sources["tta"] = True, "default"
    if beta is not None:
        sources["beta"] = "option"
    elif run_tta is not None and tta == run_tta[0]:
        beta, sources["beta"] = run_tta[1], "run"
    else:
        sources["beta"] = "default"
    run_method = _run_method(ws, size) if ws else None
    if method is not None:
        sources["method"] = "option"
    elif run_method is not None:
        method, sources["method"] = run_method, "run"
    else:
        method, sources["method"] = "squish", "default"
    return RunSettings(ws, run, fitted, bool(tta), beta, method, sources)


def competition_of(bundle: Bundle, ws: Workspace | None) -> Competition:
    """The competition whose answer the bundle gives (its workspace's, else by its classes)."""
    if ws is not None:
        return ws.competition
    for comp in COMPETITIONS:
        if tuple(comp.classes) == tuple(bundle.classes) and comp.task == bundle.task:
            return comp
    raise PredictSetupError(
        f"the model's {len(bundle.classes)} classes ({', '.join(bundle.classes[:5])}...) are "
        "not those of a known competition"
    )
