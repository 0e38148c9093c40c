"""The `planet` command line: everyday commands over the library and the flows.

    planet synth COMPETITION --root ROOT [--train N] [--test N] [--additional N] [--seed S]
    planet kaggle-local --root ROOT [--host 127.0.0.1] [--port P]
    planet demo [--competition SLUG] [--workdir DIR] [--kaggle-root ROOT]
    planet server [--home .prefect] [--host 127.0.0.1] [--port 4200]
    planet run [--competition SLUG] [--data-dir DIR] [--stages STAGE ...] [--recipe NAME|FILE]
               [--device auto|cpu|cuda] [--submit]

Prefect and the kaggle client are imported only by the commands that need them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from flows.config import PIPELINE_STAGES
from planet.competitions import COMPETITIONS, resolve

COMPETITION_HELP = "Kaggle slug or alias: " + "; ".join(
    f"{c.slug} ({', '.join(c.aliases)})" for c in COMPETITIONS
)


def _competition(value: str) -> str:
    try:
        return resolve(value).slug
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_sizes(p: argparse.ArgumentParser) -> None:
    p.add_argument("--train", type=int, default=None, help="train images (default: demo size)")
    p.add_argument("--test", type=int, default=None, help="test images (default: demo size)")
    p.add_argument("--additional", type=int, default=None, help="Planet test-jpg-additional images")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def cmd_synth(args: argparse.Namespace) -> int:
    from planet import synthetic

    out = synthetic.generate(
        args.competition,
        Path(args.root),
        train=args.train,
        test=args.test,
        additional=args.additional,
        seed=args.seed,
    )
    for f in sorted(out.iterdir()):
        if f.is_file():
            print(f"{f.stat().st_size:>12,}  {f}")
    print(f"hidden solution: {out / '_private' / 'solution.csv'}")
    return 0


def cmd_kaggle_local(args: argparse.Namespace) -> int:
    from planet.kaggle_local import serve_forever

    try:
        serve_forever(
            Path(args.root),
            host=args.host,
            port=args.port,
            daily_submission_limit=args.daily_limit,
            out=lambda line: print(line, flush=True),
        )
    except ValueError as exc:
        print(f"planet kaggle-local: error: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from flows.demo import epoch_table, run_demo

    summary = run_demo(
        competition=args.competition,
        workdir=Path(args.workdir),
        kaggle_root=Path(args.kaggle_root) if args.kaggle_root else None,
        train=args.train,
        test=args.test,
        additional=args.additional,
        seed=args.seed,
        recipe=load_recipe(args.recipe),
        stages=args.stages,
    )
    print(epoch_table(summary))
    for key in ("val_metric_default", "val_metric_tuned", "score"):
        if summary.get(key) is not None:
            print(f"{key}: {summary[key]:.4f}")
    print(f"submission: {summary.get('submission')}")
    from flows.server import flow_run_url

    url = flow_run_url(summary.get("flow_run_id") or "")
    print(
        f"flow run: {url}"
        if url
        else "flow run: (ephemeral Prefect; start `planet server` to keep runs)"
    )
    print(json.dumps(summary, sort_keys=True))
    return 0


def load_recipe(value: str | None):
    """A built-in recipe name, or a JSON/YAML file holding a recipe (None: the default)."""
    from planet.learn.recipe import RECIPES, Recipe, named_recipe

    if value is None:
        return None
    if value in RECIPES:
        return named_recipe(value)
    path = Path(value)
    if not path.is_file():
        raise ValueError(
            f"--recipe {value!r} is neither a built-in recipe ({', '.join(sorted(RECIPES))}) "
            "nor a recipe file (.json/.yaml)"
        )
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        return Recipe.model_validate(yaml.safe_load(text))
    return Recipe.model_validate_json(text)


def cmd_run(args: argparse.Namespace) -> int:
    from flows.config import PipelineConfig
    from flows.pipeline import pipeline

    config = PipelineConfig(
        competition=args.competition,
        data_dir=args.data_dir,
        stages=args.stages,
        kaggle_endpoint=args.kaggle_endpoint,
        files=args.files or None,
        shard_size=args.shard_size,
        write_files=args.write_files,
        sizes=args.sizes,
        dask_address=args.dask_address,
        recipe=load_recipe(args.recipe),
        device=args.device,
        tta=not args.no_tta,
        submit=args.submit,
    )
    summary = pipeline(config)
    print(json.dumps(summary, sort_keys=True))
    return 0


def cmd_server(args: argparse.Namespace) -> int:
    from flows.server import run_server

    return run_server(Path(args.home), host=args.host, port=args.port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="planet",
        description="Kaggle image competitions from raw download to submission, with Prefect.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "synth",
        help="generate a synthetic competition in Kaggle's file layout",
        description="Write a learnable synthetic competition with Kaggle's exact "
        "files under ROOT/<slug>/, plus the hidden _private/solution.csv.",
    )
    p.add_argument("competition", type=_competition, help=COMPETITION_HELP)
    p.add_argument("--root", required=True, help="folder holding one folder per competition")
    _add_sizes(p)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser(
        "kaggle-local",
        help="serve competition folders as a local Kaggle API",
        description="Serve ROOT/<slug>/ folders to the real kaggle client until "
        "stopped. Accepts the credentials in KAGGLE_USERNAME/KAGGLE_KEY or "
        "kaggle.json; point the client at the printed URL.",
    )
    p.add_argument("--root", required=True, help="folder holding one folder per competition")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    p.add_argument(
        "--daily-limit",
        type=int,
        default=5,
        help="submissions per user per competition per day (default 5)",
    )
    p.set_defaults(func=cmd_kaggle_local)

    p = sub.add_parser(
        "demo",
        help="offline end-to-end demo on a synthetic competition",
        description="Generate a synthetic competition (unless --kaggle-root is "
        "given), serve it locally, and run the pipeline against it with the real "
        "kaggle client. Ends with one JSON line summarising the run.",
    )
    p.add_argument("--competition", type=_competition, default="planet", help=COMPETITION_HELP)
    p.add_argument("--workdir", default="demo", help="where data and generated files go")
    p.add_argument(
        "--kaggle-root",
        default=None,
        help="serve this folder of competitions instead of generating one",
    )
    p.add_argument(
        "--recipe",
        default=None,
        help="built-in recipe or a recipe .json/.yaml file (default: the competition's "
        "CPU demo recipe, cpu-demo)",
    )
    p.add_argument(
        "--stages",
        nargs="+",
        choices=list(PIPELINE_STAGES),
        default=list(PIPELINE_STAGES),
        help="stages to run (default: all, submitting to the local server)",
    )
    _add_sizes(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "run",
        help="run the pipeline against Kaggle (or --kaggle-endpoint)",
        description="Run the pipeline's stages for a competition. Credentials "
        "come from KAGGLE_USERNAME/KAGGLE_KEY or ~/.kaggle/kaggle.json.",
    )
    p.add_argument("--competition", type=_competition, default="planet", help=COMPETITION_HELP)
    p.add_argument("--data-dir", default="data", help="data directory (default ./data)")
    p.add_argument(
        "--stages",
        nargs="+",
        choices=list(PIPELINE_STAGES),
        default=[s for s in PIPELINE_STAGES if s != "submit"],
        help="stages to run, in pipeline order (default: all but submit)",
    )
    p.add_argument(
        "--kaggle-endpoint",
        default=None,
        help="base URL of a Kaggle-compatible server (default: kaggle.com)",
    )
    p.add_argument("--shard-size", type=int, default=2000, help="images per parquet shard")
    p.add_argument("--files", nargs="*", default=None, help="only these Kaggle files")
    p.add_argument(
        "--write-files", action="store_true", help="also write images/<split>/<name>.jpg"
    )
    p.add_argument("--sizes", nargs="+", type=int, default=None, help="resize to these sizes too")
    p.add_argument(
        "--recipe",
        default=None,
        help="built-in recipe (lesson3, dogs-vgg16, cpu-demo) or a recipe .json/.yaml file "
        "(default: the competition's: lesson3 for Planet, dogs-vgg16 for Dogs vs Cats)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default auto)")
    p.add_argument("--no-tta", action="store_true", help="predict without TTA")
    p.add_argument(
        "--submit",
        action="store_true",
        help="submit the file (spends one of today's Kaggle submissions)",
    )
    p.add_argument(
        "--dask-address",
        default=None,
        help="scheduler of an existing Dask cluster (default: a LocalCluster on this machine)",
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "server",
        help="start a local Prefect server (UI + API) for this project",
        description="Run `prefect server start` with its SQLite database under --home, bound "
        "to 127.0.0.1, analytics off. Set PREFECT_SERVER_API_AUTH_STRING=user:password for "
        "basic auth (clients then set PREFECT_API_AUTH_STRING). Other shells use it with "
        "PREFECT_API_URL=http://127.0.0.1:PORT/api.",
    )
    p.add_argument("--home", default=".prefect", help="PREFECT_HOME (default ./.prefect)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=4200, help="port (default 4200)")
    p.set_defaults(func=cmd_server)
    return parser


def prefect_defaults() -> None:
    """Defaults that make Prefect's ephemeral mode work on a fresh home (set before import)."""
    # First start on a fresh home runs database migrations (20-30 s here).
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@contextlib.contextmanager
def cli_flow_settings(command: str) -> Iterator[None]:
    """Flow runs started by `planet demo`/`planet run` send no heartbeats. Prefect 3.8 spends
    up to a second ending each flow run joining its heartbeat thread (it sleeps in 1 s steps):
    8 of the pipeline's ~20 s when everything is Cached. Heartbeats serve the server's
    crashed-run detection for runs whose process is gone; a CLI run's process reports its own
    failures, and deployment runs started by workers keep Prefect's default."""
    if command not in ("demo", "run"):
        yield
        return
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    prefect_defaults()
    from planet.extract.members import ArchiveError
    from planet.kaggle import KaggleError

    try:
        with cli_flow_settings(args.command):
            return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (KaggleError, ArchiveError, ValueError, OSError) as exc:
        # Errors that name the file/setting and what to do: one line, no traceback.
        print(f"planet {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
