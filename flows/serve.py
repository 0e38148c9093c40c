"""Serve the pipeline's flows without a work pool or worker: `python -m flows.serve`.

    PREFECT_API_URL=http://127.0.0.1:4200/api python -m flows.serve [--cron "0 2 * * 6"]

This process registers one deployment per stage (and the whole pipeline) with the server and
runs whatever is triggered from the UI or `prefect deployment run 'pipeline/pipeline-served'`
until stopped. The pipeline's schedule is off unless `--cron` is given.
"""

from __future__ import annotations

import argparse
from typing import Any

from flows.deployments import DEPLOYMENTS


def served_deployments(cron: str | None = None) -> list[Any]:
    """`flow.to_deployment` for every flow of flows.deployments (names end in `-served`); the
    pipeline gets `cron` as its schedule."""
    return [
        d.load().to_deployment(name=f"{d.name}-served", cron=cron if d.name == "pipeline" else None)
        for d in DEPLOYMENTS
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cron", default=None, help="a schedule for the pipeline (UTC cron)")
    args = parser.parse_args(argv)
    from prefect import serve

    serve(*served_deployments(args.cron))


if __name__ == "__main__":
    main()
