"""Command line: ``python -m dlcore demo|engines|doctor|bench``."""

from __future__ import annotations

import argparse
import os
import sys

from dlcore import backends


def _engines(_: argparse.Namespace) -> int:
    for info in backends.available():
        status = "yes" if info.available else "no "
        print(f"{info.name:<18} {status}  {info.detail}")
    from dlcore.benchmark import machine

    _matrix_product_libraries()
    # the machine's two lines come last (README: "ends with the same two lines")
    print(machine.machine_line(machine.cpu_info().to_dict()))
    print(machine.blas_line(machine.blas_libraries()))
    return 0


def _matrix_product_libraries() -> None:
    """Print the libraries the NumPy engine's compiled step may run its matrix products
    on, and what it picks for the benchmark's tiny and small cases, timed now."""
    from dlcore.backends import cpu_gemm, cpu_jit
    from dlcore.benchmark.cases import CASES

    print("numpy engine matrix products (chosen per product by timing; DLCORE_GEMM forces one):")
    for library in cpu_gemm.libraries():
        print(f"  {library.name:<9} {'yes' if library.available else 'no '}  {library.detail}")
    if not cpu_jit.stack_available():
        print(
            "  picked: nothing, the compiled step needs Numba and SciPy (pip install dlcore[cpu])"
        )
        return
    for name in ("tiny", "small"):
        case = CASES[name]
        plan, products = cpu_jit.plan_for_widths(case.widths, case.batch_size)
        print(f"  picked for the {name} case (batch {case.batch_size}):")
        for line in cpu_gemm.describe(plan, products):
            print(f"    {line}")


def _demo(args: argparse.Namespace) -> int:
    from dlcore import demo

    folder = os.path.dirname(os.path.abspath(args.plot)) if args.plot else None
    if folder is not None and not os.path.isdir(folder):
        raise ValueError(f"--plot {args.plot}: the folder {folder} does not exist")

    result = demo.run(
        args.backend,
        epochs=args.epochs,
        seed=args.seed,
        verbose=args.verbose,
        save_path=args.save,
        plot_path=args.plot,
    )
    if result.reload_max_difference != 0.0:
        print("the reloaded model predicts differently", file=sys.stderr)
        return 1
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from dlcore import doctor

    return 0 if doctor.run(args.engine) else 1


def _bench(args: argparse.Namespace) -> int:
    from dlcore.benchmark import report, runner

    for option, path in (("--json", args.json), ("--plot", args.plot)):
        folder = os.path.dirname(os.path.abspath(path)) if path else None
        if folder is not None and not os.path.isdir(folder):
            raise ValueError(f"{option} {path}: the folder {folder} does not exist")
    if args.plot:
        report.require_matplotlib()  # fail now, not after minutes of measuring
    result = runner.run(
        args.engines,
        args.cases,
        peers=args.peers,
        repeats=args.repeats,
        steps=args.steps,
        smoke=args.smoke,
        seed=args.seed,
        isolated=None if not args.in_process else False,
        sweep=bool(args.plot),
        precisions=args.precision,
    )
    report.print_report(result)
    if args.json:
        report.write_json(result, args.json)
        print(f"wrote {args.json}")
    if args.plot:
        report.plot(result.sweep, args.plot)
        print(f"wrote {args.plot}")
    return 0 if result.all_met else 1


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, received {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, received {value}")
    return value


def _add_bench(commands: argparse._SubParsersAction) -> None:
    from dlcore.benchmark import cases, runner

    bench = commands.add_parser(
        "bench",
        help="measure training throughput per engine and case (and PyTorch, JAX with --peers)",
        description=(
            "Train every case on every engine through model.fit: one warm-up epoch, then "
            "--repeats rounds in which each engine (and peer) trains one timed epoch of "
            "--steps batches in turn. Prints samples/s, ms/step and the fraction of the "
            "GEMM bound (6 x batch x weights / the engine's gemm FLOP/s on a 2048^3 float32 "
            "product, measured every round), and checks the targets. Exit status: 0 when "
            "every measured target is met, 1 when one is not, 2 on a usage error. The "
            "large case trains 130 GFLOP per step: minutes per epoch on a CPU. "
            "--precision mixed_float16 (or mixed_bfloat16) trains the cases again in mixed "
            "precision, into a table of its own without targets."
        ),
    )
    bench.add_argument(
        "--engines",
        nargs="+",
        metavar="ENGINE",
        choices=backends.engine_names(),
        help=f"engines to time (default: every one that runs here except "
        f"{', '.join(runner.NOT_TIMED_BY_DEFAULT)}); one or more of "
        f"{', '.join(backends.engine_names())}",
    )
    bench.add_argument(
        "--cases",
        nargs="+",
        metavar="CASE",
        choices=tuple(cases.CASES),
        help=f"cases to train (default: all); one or more of {', '.join(cases.CASES)}",
    )
    bench.add_argument(
        "--peers",
        action="store_true",
        help="also train each case on whichever of PyTorch and JAX is installed, interleaved "
        'with the engines (pip install "dlcore[peers]")',
    )
    bench.add_argument(
        "--plot",
        metavar="FILE.png",
        help="also sweep batch sizes 32..1024 (784-256-256-10) and widths 64..2048 (784-w-w-10, "
        "batch 128) on every engine and draw samples/s against each; the sweep is extra "
        f"measuring, a warm-up and two epochs of {runner.SWEEP_STEPS} batches per point "
        "(a few seconds per point on a CPU, more at the widest); needs matplotlib "
        '(pip install "dlcore[bench]")',
    )
    bench.add_argument("--json", metavar="FILE", help="write every number and the machine to FILE")
    bench.add_argument(
        "--repeats",
        type=_positive_int,
        default=runner.DEFAULT_REPEATS,
        help=f"timed epochs per engine and case (default: {runner.DEFAULT_REPEATS})",
    )
    bench.add_argument(
        "--steps",
        type=_positive_int,
        help=f"batches per epoch (default: {runner.PROTOCOL_STEPS}, or {runner.SMOKE_STEPS} "
        f"with --smoke); targets are judged only with at least {runner.PROTOCOL_STEPS}",
    )
    bench.add_argument(
        "--smoke",
        action="store_true",
        help=f"sizes divided by {runner.SMOKE_FACTOR} and {runner.SMOKE_STEPS} steps: checks "
        "that everything runs in about a second; targets are not judged",
    )
    bench.add_argument(
        "--precision",
        nargs="+",
        metavar="PRECISION",
        choices=cases.PRECISIONS,
        default=[cases.FLOAT32],
        help=f"one or more of {', '.join(cases.PRECISIONS)} (default: float32). float32 gives "
        "the table with the GEMM bound and the targets (the peers with TF32 off). A mixed "
        "precision gives a table of its own, headed apart, without bound or targets: "
        "dlcore trains under that global dtype policy (float32 weights, the output layer "
        "in float32, Adam in a LossScaleOptimizer for mixed_float16) with "
        f'matmul precision "{runner.MIXED_MATMUL_PRECISION}"; torch under torch.autocast '
        "(float16 with a GradScaler on CUDA for mixed_float16, else bfloat16, also on the "
        "CPU) and JAX with its layers in float16/bfloat16 from float32 parameters, both "
        "with TF32 allowed. Engines without kernels for the dtype (numba and cupy for "
        "bfloat16, numpy for float16) compute float32 and the table says so; numpy runs "
        "bfloat16 layers' matrix products in bfloat16 on float32 arrays where the CPU has "
        "AVX-512 BF16 or AMX and oneDNN is installed, else float32",
    )
    bench.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    bench.add_argument(
        "--in-process",
        action="store_true",
        help="run every engine and peer in this process (default: each in a process of its "
        "own, so that no framework's threads slow another; --smoke runs in this process)",
    )
    bench.set_defaults(run=_bench)


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
    demo.add_argument(
        "--plot",
        metavar="FILE.png",
        help="also draw the learning curves (loss and accuracy, training and validation) "
        'to FILE.png; needs matplotlib (pip install "dlcore[plot]")',
    )
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
    _add_bench(commands)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (RuntimeError, ImportError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
