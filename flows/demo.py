"""The offline demo: a synthetic competition, served by the local Kaggle server, fetched by the
real kaggle client and run through the pipeline's flows.

The demo's Kaggle credentials are made up for this run and live only in this process's
environment (never in a flow parameter, result or artifact).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from planet import synthetic
from planet.competitions import resolve
from planet.fileio import read_json
from planet.learn.recipe import Recipe, named_recipe

DEMO_USER = "planet-demo"
BN_LAG_RATIO = 100.0  # a valid_loss this many times the train_loss gets the note below
BN_LAG_NOTE = (
    "note: a valid_loss far above the train_loss in the first epochs of a model trained from "
    "random weights (no pretrained weights offline) is BatchNorm: validation runs in eval mode "
    "with running statistics that lag the quickly changing weights; it falls as they catch up"
)


def ensure_synthetic(
    slug: str,
    root: Path,
    *,
    train: int | None,
    test: int | None,
    additional: int | None,
    seed: int,
) -> Path:
    """Generate the synthetic competition unless the same one is already complete under root."""
    comp = resolve(slug)
    out = root / slug
    settings = out / synthetic.PRIVATE_DIR / "synthetic.json"
    wanted = {
        "seed": seed,
        "sizes": synthetic.resolve_sizes(comp, train=train, test=test, additional=additional),
    }
    if settings.exists() and all((out / f.name).is_file() for f in comp.files):
        have = read_json(settings)
        if {k: have.get(k) for k in wanted} == wanted:
            return out
    return synthetic.generate(slug, root, train=train, test=test, additional=additional, seed=seed)


@contextlib.contextmanager
def demo_credentials() -> Iterator[dict[str, str]]:
    """Made-up credentials in this process's environment for the duration of the demo."""
    creds = {DEMO_USER: secrets.token_hex(16)}
    saved = {k: os.environ.get(k) for k in ("KAGGLE_USERNAME", "KAGGLE_KEY")}
    os.environ["KAGGLE_USERNAME"], os.environ["KAGGLE_KEY"] = DEMO_USER, creds[DEMO_USER]
    try:
        yield creds
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_demo(
    competition: str = "planet",
    workdir: Path = Path("demo"),
    kaggle_root: Path | None = None,
    *,
    train: int | None = None,
    test: int | None = None,
    additional: int | None = None,
    seed: int = 0,
    recipe: Recipe | None = None,
    stages: list[str] | None = None,
    folds: int = 1,
    combine: str = "mean",
    precision: str = "auto",
) -> dict[str, Any]:
    """Generate (unless kaggle_root is given), serve locally, run the pipeline (submitting to
    the local server, whose grader scores the hidden labels); return its summary. `folds`:
    an ensemble of that many k-fold members of the recipe (combined by `combine`);
    `precision`: training and prediction precision (planet.learn.precision)."""
    from flows.config import PIPELINE_STAGES, PipelineConfig
    from flows.local_api import ensure_api
    from flows.options import ComputeOptions, EnsembleOptions, SubmitOptions
    from flows.pipeline import pipeline
    from planet.kaggle_local import LocalKaggleServer

    t0 = time.perf_counter()
    slug = resolve(competition).slug
    ensemble = EnsembleOptions(folds=folds, combine=combine)  # refused before anything starts
    workdir = workdir.expanduser().resolve()
    if kaggle_root is None:
        kaggle_root = workdir / "kaggle"
        ensure_synthetic(
            slug, kaggle_root, train=train, test=test, additional=additional, seed=seed
        )
    elif not (kaggle_root / slug).is_dir():
        raise FileNotFoundError(
            f"--kaggle-root {kaggle_root} has no folder {slug}/: lay it out as "
            f"<root>/<competition-slug>/<Kaggle files> (see `planet synth --help`)"
        )
    ensure_api()  # the Prefect API: checked, or the temporary one started (flows/local_api.py)
    with demo_credentials() as creds, LocalKaggleServer(kaggle_root, credentials=creds) as server:
        print(f"local Kaggle server at {server.url} serving {kaggle_root}", flush=True)
        config = PipelineConfig(
            competition=slug,
            data_dir=str(workdir / "data"),
            kaggle_endpoint=server.url,
            recipe=recipe or named_recipe(resolve(slug).demo_recipe),
            compute=ComputeOptions(device="cpu", precision=precision),
            ensemble=ensemble,
            submit=SubmitOptions(submit=True, score_timeout_s=120),
            stages=list(stages or PIPELINE_STAGES),
        )
        result = pipeline(config)
    summary = {
        "demo": "ok",
        "workdir": str(workdir),
        "kaggle_root": str(kaggle_root),
        "seconds": round(time.perf_counter() - t0, 1),
        **result,
    }
    json.dumps(summary)  # the summary must stay JSON-able: it is the demo's last line
    return summary


def epoch_table(summary: dict[str, Any]) -> str:
    """The validation metric per epoch, as printed by `planet demo`."""
    epochs = summary.get("train", {}).get("epochs", [])
    if not epochs:
        return ""
    metric = summary["train"]["epoch_metric"]
    lines = [f"stage epoch  train_loss  valid_loss  {metric}"]
    for e in epochs:
        lines.append(
            f"{e['stage']:>5} {e['epoch']:>5}  {e['train_loss']:>10.4f}  {e['valid_loss']:>10.4f}  "
            f"{e[metric]:.4f}"
        )
    if any(e["valid_loss"] > BN_LAG_RATIO * max(e["train_loss"], 1e-6) for e in epochs):
        lines.append(BN_LAG_NOTE)
    return "\n".join(lines)
