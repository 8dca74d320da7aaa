"""What ``python -m dlcore bench`` shows: the table, the target lines, the JSON file, the plot.

The JSON file (``--json FILE``) holds one object with the keys

- ``settings``: engines, cases, peers, repeats, steps, smoke, seed, gemm_size, dtype
  (``"float32"``, or ``null`` when only mixed precisions ran), isolated; with
  ``--precision mixed_...`` also ``mixed``: ``{"precisions": [...], "matmul_precision"}``;
- ``machine``: cpu (``machine.CpuInfo.to_dict()``: model, vendor, isa (the GEMM flags
  present), logical_cpus, physical_cores, family, label: the machine class), blas_libraries
  (``machine.blas_libraries()``: internal_api, version, architecture, num_threads, ...),
  platform, machine, processor, cpu_count, python, numpy, blas (numpy's BLAS name and
  version), dlcore, peers (their versions, with ``--peers``);
- ``engines``: ``{engine timed: device}``; ``skipped``: ``{engine or peer: why not}``;
- ``results``: one object per case and runner: every field of ``runner.Measurement``
  (epoch_seconds, peak_flops, bound_step_seconds, ...) and the derived samples,
  median_seconds, min_seconds, samples_per_second, ms_per_step, median_ms_per_step,
  bound_fraction;
- ``peaks``: ``{case: {engine or "<peer> (own matmul)": [FLOP/s per round]}}``;
- ``targets``: one object per ``runner.TargetCheck``; ``all_targets_met``;
- ``sweep``: the plot's points (``runner.SweepPoint``), with ``--plot``;
- ``mixed`` (only with a mixed ``--precision``): one object per precision, case and runner
  (``runner.MixedMeasurement``): the fields of ``results`` (peak and bound ``null``: none
  is measured) with ``precision``, ``computes`` (what the runner computed in),
  ``layer_dtypes`` (a dlcore engine's ``Layer.run_dtype`` per layer) and ``fallback``
  (why an engine computed float32 instead, else ``null``). The float32 targets are not
  applied to these.

matplotlib is needed only for ``--plot`` (``pip install "dlcore[bench]"``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from dlcore.benchmark import machine as machine_class
from dlcore.benchmark.runner import (
    MET,
    NOT_MEASURED,
    NOT_MET,
    SMOKE_FACTOR,
    BenchmarkRun,
    Measurement,
    MixedMeasurement,
    SweepPoint,
    TargetCheck,
)

PLOT_INSTALL = 'pip install "dlcore[bench]"'

Say = Callable[[str], None]


def require_matplotlib() -> None:
    """Raise before any measuring when ``--plot`` cannot be drawn.

    Raises:
        ImportError: matplotlib is not installed; the message says what to install.
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:
        raise ImportError(
            f"--plot needs matplotlib, which cannot be imported ({error}); "
            f"install it with: {PLOT_INSTALL}"
        ) from None


def _widths(widths: Sequence[int]) -> str:
    return "-".join(str(w) for w in widths)


def _percent(fraction: float) -> str:
    return f"{fraction * 100:.1f}%" if math.isfinite(fraction) else "-"


def format_table(measurements: Sequence[Measurement]) -> str:
    """One row per case and runner: samples/s and ms/step of the fastest epoch, ms/step
    of the median one, the GEMM bound per step, the fraction of it reached, the peak the
    bound uses (GFLOP/s, and whose ``gemm``) and the warm-up epoch's loss."""
    header = (
        f"{'case':<8} {'widths':<19} {'batch':>5}  {'runner':<17} {'samples/s':>11} "
        f"{'ms/step':>9} {'median ms':>9} {'bound ms':>9} {'of bound':>8} "
        f"{'peak GFLOP/s':>16} {'loss':>7}"
    )
    lines = [header, "-" * len(header)]
    for m in measurements:
        peak = f"{m.peak_flops / 1e9:,.1f}"
        if m.kind == "peer":
            peak = f"{peak} ({m.peak_source})"
        lines.append(
            f"{m.case:<8} {_widths(m.widths):<19} {m.batch_size:>5}  {m.runner:<17} "
            f"{m.samples_per_second:>11,.0f} {m.ms_per_step:>9.3f} {m.median_ms_per_step:>9.3f} "
            f"{m.bound_step_seconds * 1e3:>9.3f} {_percent(m.bound_fraction):>8} "
            f"{peak:>16} {m.warmup_loss:>7.4f}"
        )
    return "\n".join(lines)


def format_check(check: TargetCheck) -> str:
    """One target line: what is asked, then ``met``/``NOT met``/``not measured`` and why."""
    if check.target == "peer":
        goal = f"samples/s >= {check.threshold:g} x {check.peer}"
        value = f"{check.value:.2f}x" if check.value is not None else ""
    else:
        goal = f">= {check.threshold:g} of the GEMM bound"
        value = f"{check.value:.2f}" if check.value is not None else ""
    text = f"  {check.case:<8} {check.engine:<17} {goal:<32} {check.status:<13}"
    return f"{text} {value:>7}  ({check.note})".rstrip()


def _mixed_precisions(result: BenchmarkRun) -> list[str]:
    return list((result.settings.get("mixed") or {}).get("precisions", []))


def print_report(result: BenchmarkRun, say: Say = print) -> None:
    """The whole report: the settings, what was skipped, the float32 table, the peaks, the
    targets; then a table per mixed precision, when any was measured."""
    s = result.settings
    trained = ", ".join([*([s["dtype"]] if s.get("dtype") else []), *_mixed_precisions(result)])
    say(
        f"dlcore {result.machine['dlcore']} bench: {s['steps']} steps per epoch, the fastest "
        f"of {s['repeats']} interleaved timed epochs after a warm-up epoch (the median "
        f"beside it); {trained}, "
        "Dense ReLU layers + softmax, categorical cross-entropy, Adam"
    )
    machine = result.machine
    blas = machine.get("blas") or {}
    say(
        f"machine: {machine['platform']}, {machine['cpu_count']} CPUs, Python "
        f"{machine['python']}, NumPy {machine['numpy']}"
        + (f" ({blas.get('name')} {blas.get('version')})" if blas else "")
    )
    if machine.get("cpu"):
        say(machine_class.machine_line(machine["cpu"]))
    if "blas_libraries" in machine:
        say(machine_class.blas_line(machine["blas_libraries"]))
    if blas.get("kernels"):
        say(f"NumPy's OpenBLAS runs its {blas['kernels']} kernels")
    for key, value in (blas.get("environment") or {}).items():
        say(
            f"note: {key}={value} is set; it chooses OpenBLAS's kernels and cache size and "
            "so the numpy engine's matrix products (unset both OPENBLAS_ variables for "
            "the CPU's own choice)"
        )
    jit = machine.get("numpy_engine_jit") or {}
    if jit and not jit.get("dense_stack"):
        say(
            "note: the numpy engine runs without its compiled training step: "
            'pip install "dlcore[cpu]" (Numba and SciPy)'
        )
    for name, device in result.engines.items():
        say(f"engine {name}: {device}")
    for peer, version in (machine.get("peers") or {}).items():
        if version:
            say(f"peer {peer}: {version}")
    if s["smoke"]:
        say(
            f"SMOKE RUN: sizes divided by {SMOKE_FACTOR}; the numbers say only that everything runs"
        )
    for name, why in result.skipped.items():
        say(f"skipped {name}: {why}")
    if s.get("dtype"):
        if _mixed_precisions(result):
            say("")
            say("=== FLOAT32 === the targets apply to this table only")
        _print_float32(result, say)
    for precision in _mixed_precisions(result):
        _print_mixed(result, precision, say)


def _measured_on(result: BenchmarkRun) -> str:
    """The line above a table naming the machine class its numbers belong to."""
    cpu = result.machine.get("cpu") or {}
    return f"measured on: {cpu.get('label', 'unknown machine class')}, {cpu.get('model', '?')}"


def _print_float32(result: BenchmarkRun, say: Say) -> None:
    """The float32 table, the GEMM peaks and the targets."""
    s = result.settings
    say("")
    say(_measured_on(result))
    say(format_table(result.measurements))
    say("")
    say(
        f"GEMM bound = 6 x batch x weights / peak; peak = FLOP/s of the engine's gemm on a "
        f"{s['gemm_size']}^3 float32 product, the highest of the rounds (peers: the numpy "
        "engine's)"
    )
    for case, peaks in result.peaks.items():
        highest = ", ".join(f"{name} {max(samples) / 1e9:,.1f}" for name, samples in peaks.items())
        say(f"  {case}: {highest} GFLOP/s")
    say("")
    say("Targets")
    if not result.checks:
        say("  none for these cases and engines")
    for check in result.checks:
        say(format_check(check))
    counts = {
        status: sum(c.status == status for c in result.checks)
        for status in (MET, NOT_MET, NOT_MEASURED)
    }
    say("")
    say(
        f"{'OK' if result.all_met else 'FAILED'}: {counts[MET]} met, {counts[NOT_MET]} "
        f"not met, {counts[NOT_MEASURED]} not measured"
    )


def to_json(result: BenchmarkRun) -> dict[str, Any]:
    """Everything in ``result`` as plain JSON types (the keys are in the module docstring)."""
    data = {
        "settings": result.settings,
        "machine": result.machine,
        "engines": result.engines,
        "skipped": result.skipped,
        "results": [m.to_dict() for m in result.measurements],
        "peaks": result.peaks,
        "targets": [asdict(check) for check in result.checks],
        "all_targets_met": result.all_met,
        "sweep": [asdict(point) for point in result.sweep],
    }
    if result.settings.get("mixed"):
        data["mixed"] = [row.to_dict() for row in result.mixed]
    return data


def write_json(result: BenchmarkRun, path: str | os.PathLike[str]) -> None:
    """Write ``to_json(result)`` to ``path`` (non-finite numbers as ``null``)."""

    def finite(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: finite(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [finite(v) for v in value]
        return value

    with open(path, "w", encoding="utf-8") as file:
        json.dump(finite(to_json(result)), file, indent=2)
        file.write("\n")


def plot(points: Sequence[SweepPoint], path: str | os.PathLike[str]) -> None:
    """Draw samples/s against batch size (left) and hidden width (right), one line per
    engine, on log-log axes, and save the figure to ``path`` (PNG by its extension).

    Raises:
        ImportError: matplotlib is not installed (the message says what to install).
    """
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")  # no display needed: the figure only goes to a file
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(1, 2, figsize=(11, 4.2))
    for ax, axis in zip(axes, ("batch_size", "width")):
        on_axis = [p for p in points if p.axis == axis]
        for runner in dict.fromkeys(p.runner for p in on_axis):
            mine = sorted((p for p in on_axis if p.runner == runner), key=lambda p: p.value)
            ax.plot(
                [p.value for p in mine], [p.samples_per_second for p in mine], "o-", label=runner
            )
        label = "batch size" if axis == "batch_size" else "hidden width"
        title = ""
        if on_axis:
            widths, batch = on_axis[0].widths, on_axis[0].batch_size
            if axis == "batch_size":
                title = f"widths {_widths(widths)}"
            else:
                title = f"{widths[0]}-w-w-{widths[-1]}, batch {batch}"
        ax.set_xscale("log", base=2)
        values = sorted({p.value for p in on_axis})
        ax.set_xticks(values, [str(v) for v in values])
        ax.minorticks_off()
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("samples/s")
        ax.set_title(f"throughput vs {label} ({title})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    figure.suptitle("dlcore training throughput: one model.fit epoch, float32, Adam")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


def mixed_description(precision: str, matmul_precision: str) -> str:
    """What each side runs at ``precision``, for the line under the mixed table's heading."""
    scaling = ", Adam in a LossScaleOptimizer" if precision == "mixed_float16" else ""
    return (
        f"dlcore: global dtype policy {precision} (float32 weights, output layer float32"
        f"{scaling}), matmul precision {matmul_precision!r}; peers: their own mixed "
        "precision (torch autocast, JAX half-precision layers), TF32 allowed; "
        "'computes' says what each one ran"
    )


def _vs_float32(mixed: MixedMeasurement, float32: Sequence[Measurement]) -> str:
    """Samples/s as a multiple of the same case and runner in float32, or ``-``."""
    m = mixed.measurement
    same = [f for f in float32 if (f.case, f.runner) == (m.case, m.runner)]
    return f"{m.samples_per_second / same[0].samples_per_second:.2f}x" if same else "-"


def format_mixed_table(
    mixed: Sequence[MixedMeasurement], float32: Sequence[Measurement] = ()
) -> str:
    """One row per case and runner at a mixed precision: samples/s and ms/step of the
    fastest epoch, ms/step of the median one, samples/s as a multiple of the float32
    table's (when measured in the same run), the warm-up loss and what it computed in."""
    header = (
        f"{'case':<8} {'widths':<19} {'batch':>5}  {'runner':<17} {'samples/s':>11} "
        f"{'ms/step':>9} {'median ms':>9} {'vs float32':>10} {'loss':>7}  computes"
    )
    lines = [header, "-" * len(header)]
    for row in mixed:
        m = row.measurement
        lines.append(
            f"{m.case:<8} {_widths(m.widths):<19} {m.batch_size:>5}  {m.runner:<17} "
            f"{m.samples_per_second:>11,.0f} {m.ms_per_step:>9.3f} {m.median_ms_per_step:>9.3f} "
            f"{_vs_float32(row, float32):>10} {m.warmup_loss:>7.4f}  {row.arithmetic.summary}"
        )
    return "\n".join(lines)


def _print_mixed(result: BenchmarkRun, precision: str, say: Say) -> None:
    """The table of one mixed precision, headed apart from the float32 table, and a line
    per engine that computed float32 for want of kernels."""
    rows = [row for row in result.mixed if row.precision == precision]
    matmul = result.settings["mixed"]["matmul_precision"]
    say("")
    say(
        f"=== MIXED PRECISION: {precision} === a table of its own: not the float32 "
        "table's arithmetic, and none of its targets apply"
    )
    say(mixed_description(precision, matmul))
    say("")
    say(_measured_on(result))
    say(format_mixed_table(rows, result.measurements))
    fallbacks = {row.measurement.runner: row.arithmetic.fallback for row in rows}
    for runner, why in fallbacks.items():
        if why:
            say(f"note: {runner} did not compute {precision}: {why} (Layer.run_dtype)")
