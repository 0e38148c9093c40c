"""Benchmark: one model against a K-fold ensemble of the same recipe, both graded.

    .venv/bin/python bench/ensemble.py [--folds 5] [--combine mean|stack|best] [--recipe cpu-demo]

Runs the offline demo (synthetic Planet, local Kaggle server, graded submission) twice in one
fresh work folder: once with one model on the 80/20 split, once with a K-fold ensemble of the
same recipe (K members, thresholds fitted on their out-of-fold predictions). Prints both graded
scores, the validation / out-of-fold metrics and the wall times (the ensemble trains K models),
and ends with `ensemble ratio=<ensemble score / single score>` (log loss: single / ensemble).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flows.console import cli_flow_settings, prefect_defaults  # noqa: E402

WORKDIR = Path("/tmp/planet-bench-ensemble")


def _line(label: str, summary: dict) -> str:
    return (
        f"{label:<22} score {summary['score']:.4f} (private {summary['private_score']:.4f})  "
        f"validation metric {summary['val_metric_default']:.4f} as predicted, "
        f"{summary['val_metric_tuned']:.4f} tuned  {summary['seconds']:.0f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--combine", default="mean", choices=["mean", "stack", "best"])
    parser.add_argument("--recipe", default="cpu-demo")
    parser.add_argument("--competition", default="planet")
    args = parser.parse_args()
    prefect_defaults()
    from flows.demo import run_demo
    from planet.competitions import resolve
    from planet.infer.decision import decision_for
    from planet.learn.recipe import load_recipe

    shutil.rmtree(WORKDIR, ignore_errors=True)
    recipe = load_recipe(args.recipe)
    with cli_flow_settings("demo"):
        single = run_demo(args.competition, WORKDIR, recipe=recipe)
        ensemble = run_demo(
            args.competition, WORKDIR, recipe=recipe, folds=args.folds, combine=args.combine
        )
    print(_line("single model (80/20)", single))
    print(_line(f"{args.folds}-fold ensemble", ensemble).replace("validation", "out-of-fold"))
    for member in ensemble["members"]:
        print(f"  member fold {member['fold']}: validation metric {member['valid_metric']:.4f}")
    combine = WORKDIR / "data" / resolve(args.competition).slug / "predictions"
    for report in sorted(combine.glob("*/combine.json")):
        data = json.loads(report.read_text())
        print(f"  combined by {data['chosen']} (asked {data['asked']}): {data['honest_scores']}")
    lower = decision_for(resolve(args.competition)).lower_is_better
    ratio = single["score"] / ensemble["score"] if lower else ensemble["score"] / single["score"]
    print(f"ensemble gain {ensemble['score'] - single['score']:+.4f} (target: >= +0.015 F2)")
    print(f"ensemble ratio={ratio:.4f}")


if __name__ == "__main__":
    main()
