"""`python -m planet.synthetic COMPETITION ROOT [--train N] [--test N] [--additional N] [--seed S]`"""

from __future__ import annotations

import argparse
import time

from planet.synthetic.build import generate


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m planet.synthetic", description=__doc__)
    parser.add_argument("competition", help="Kaggle slug or alias (planet, dogs-vs-cats)")
    parser.add_argument("root", help="folder to write <root>/<slug>/ into")
    parser.add_argument("--train", type=int)
    parser.add_argument("--test", type=int)
    parser.add_argument("--additional", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-background-compression", action="store_true", help="compress on the main thread"
    )
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    out = generate(
        args.competition,
        args.root,
        train=args.train,
        test=args.test,
        additional=args.additional,
        seed=args.seed,
        background_compression=not args.no_background_compression,
    )
    print(f"{out} ({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
