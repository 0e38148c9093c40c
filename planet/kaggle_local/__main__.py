"""`python -m planet.kaggle_local ROOT [--host H] [--port P]`: serve ROOT until Ctrl-C.

Accepts the caller's own Kaggle credentials (KAGGLE_USERNAME/KAGGLE_KEY or kaggle.json).
"""

from __future__ import annotations

import argparse
import sys

from planet.kaggle_local.server import serve_forever


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m planet.kaggle_local", description=__doc__)
    parser.add_argument("root", help="folder holding <competition-slug>/<Kaggle files>")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 = any free port (default)")
    parser.add_argument(
        "--daily-limit", type=int, default=5, help="submissions per user per competition per day"
    )
    args = parser.parse_args(argv)
    try:
        serve_forever(
            args.root,
            args.host,
            args.port,
            daily_submission_limit=args.daily_limit,
            out=lambda line: print(line, flush=True),
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
