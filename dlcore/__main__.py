"""Command line: ``python -m dlcore demo|engines|doctor``."""

from __future__ import annotations

import argparse
import sys

from dlcore import backends


def _engines(_: argparse.Namespace) -> int:
    for info in backends.available():
        status = "yes" if info.available else "no "
        print(f"{info.name:<18} {status}  {info.detail}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from dlcore import demo

    result = demo.run(
        args.backend, epochs=args.epochs, seed=args.seed, verbose=args.verbose, save_path=args.save
    )
    if result.reload_max_difference != 0.0:
        print("the reloaded model predicts differently", file=sys.stderr)
        return 1
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from dlcore import doctor

    return 0 if doctor.run(args.engine) else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m dlcore`` and the ``dlcore`` script."""
    parser = argparse.ArgumentParser(prog="python -m dlcore", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    engines = commands.add_parser("engines", help="list the engines and whether they run here")
    engines.set_defaults(run=_engines)
    demo = commands.add_parser("demo", help="train the course model on handwritten digits")
    demo.add_argument(
        "--backend",
        default="numpy",
        choices=backends.engine_names(),
        help="engine to train on (default: numpy)",
    )
    demo.add_argument("--epochs", type=int, default=200, help="most epochs (early stopping)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2))
    demo.add_argument("--save", metavar="PATH", help="keep the trained model at PATH")
    demo.set_defaults(run=_demo)
    doctor = commands.add_parser(
        "doctor", help="check every engine against numpy here, and time gemm on a GPU"
    )
    doctor.add_argument(
        "--engine",
        action="append",
        choices=backends.engine_names(),
        help="check this engine only (repeatable; default: all); numpy is always the reference",
    )
    doctor.set_defaults(run=_doctor)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (RuntimeError, ImportError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
