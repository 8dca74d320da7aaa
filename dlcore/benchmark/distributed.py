"""Data parallelism's numbers: what two processes measure here, and what 8 GPUs should do.

``python -m dlcore.benchmark.distributed`` measures, side by side in one run on this
machine, the samples/s of a case's ``fit`` (medium by default) on the numpy engine in
float32:

- one process with every core's threads (OpenMP, OpenBLAS, MKL and Numba set to
  ``--threads``, default 2), the case's batch;
- one process with one thread, bound to one core (the unit that data parallelism
  multiplies);
- ``mpiexec -n K`` processes with one thread each, each bound to its own core, after
  ``dlcore.distribute.init()``, the same global batch, once per ``bucket_bytes`` of
  ``--buckets`` (default: ``None`` and ``DEFAULT_BUCKET_BYTES``, alternating epochs);
  the time of each step's gradient sum (``GradientSync.finish``, instrumented from
  outside) and the median time of ``Communicator.allreduce_sum`` on a float32 buffer
  of the model's parameter count.

Each configuration runs in processes of its own (thread counts are fixed when NumPy
loads), started by this driver: ``--worker`` is what those processes run, alone or
under ``mpiexec``. Throughput is the fastest timed epoch's, as in ``runner``; the median
epoch is reported beside it.

``python -m dlcore.benchmark.distributed --table`` prints the expected scaling of every
case on 8 H200 GPUs (one node, NVLink) and on 8 nodes (100, 200, 400 Gb/s): computed
on paper from the ring all-reduce's cost, nothing measured (``scaling_markdown``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlcore.benchmark.cases import CASES, Case

# ---------------------------------------------------------------------- on paper
#: NVIDIA H200 SXM data sheet: FP32 on the CUDA cores. dlcore's float32 products run
#: without TF32 (``matmul_precision("highest")``), so this is their peak.
H200_FP32_FLOPS = 67e12
#: the fraction of that peak a step's matrix products are assumed to reach
ACHIEVABLE_FRACTION = 0.7
#: NCCL all-reduce bus bandwidth per GPU on H200's NVLink 4 (assumed; NVLink 4 moves
#: 450 GB/s each way, and NCCL's measured bus bandwidth is somewhat below that)
NVLINK_BUS_BYTES_PER_S = 400e9
#: the latency of one of the ring's 2 (n - 1) steps: within a node, across nodes (assumed)
NVLINK_HOP_SECONDS = 1e-6
NETWORK_HOP_SECONDS = 2e-6
#: the network links compared, in Gb/s, each node one GPU and one link
NETWORK_GBITS = (100, 200, 400)
GPUS = 8
#: float32 gradients
GRADIENT_ITEMSIZE = 4


def ring_allreduce_seconds(
    nbytes: float, processes: int, bus_bytes_per_s: float, hop_seconds: float = 0.0
) -> float:
    """Seconds of a ring all-reduce of ``nbytes`` over ``processes``: its ``2 (n - 1)``
    steps each pay ``hop_seconds``, and each process sends and receives
    ``2 (n - 1) / n × nbytes`` at ``bus_bytes_per_s``. One process: 0.

    Raises:
        ValueError: ``processes < 1``, a bandwidth that is not positive, or a negative
            size or latency.
    """
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise ValueError(f"processes must be an int >= 1, received {processes!r}")
    if not bus_bytes_per_s > 0:
        raise ValueError(
            f"bus_bytes_per_s must be positive (bytes per second), received {bus_bytes_per_s!r}"
        )
    if nbytes < 0 or hop_seconds < 0:
        raise ValueError(
            f"nbytes and hop_seconds must be >= 0, received {nbytes!r} and {hop_seconds!r}"
        )
    n = processes
    return 2 * (n - 1) * hop_seconds + 2 * (n - 1) / n * nbytes / bus_bytes_per_s


def launches_per_step(case: Case) -> int:
    """The numba engine's kernel launches per training step of ``case``
    (``dlcore.kernels.roofline``: the fused step where the widths fit it)."""
    from dlcore.kernels import roofline

    if roofline.fused_fits(case.widths):
        return len(roofline.fused_training_step(case.widths, case.batch_size))
    return len(roofline.training_step(case.widths, case.batch_size))


def compute_seconds(
    case: Case, peak_flops: float = H200_FP32_FLOPS, fraction: float = ACHIEVABLE_FRACTION
) -> float:
    """One GPU's step of ``case``: ``6 × weights × batch`` FLOPs at ``fraction`` of
    ``peak_flops``, and at least the step's launches at ``roofline.LAUNCH_SECONDS`` each.

    Raises:
        ValueError: a peak that is not positive or a fraction outside ``(0, 1]``.
    """
    from dlcore.kernels import roofline

    if not peak_flops > 0:
        raise ValueError(f"peak_flops must be positive, received {peak_flops!r}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], received {fraction!r}")
    arithmetic = case.batch_size * case.flops_per_sample / (fraction * peak_flops)
    return max(arithmetic, launches_per_step(case) * roofline.LAUNCH_SECONDS)


@dataclass(frozen=True)
class Link:
    """How the GPUs of a run are joined: ``processes`` GPUs, the all-reduce's bus
    bandwidth per GPU and the latency of each ring step."""

    name: str
    processes: int
    bus_bytes_per_s: float
    hop_seconds: float


def links(gpus: int = GPUS) -> list[Link]:
    """``gpus`` GPUs of one node over NVLink, then ``gpus`` nodes of one GPU over each
    network of ``NETWORK_GBITS``."""
    out = [Link(f"{gpus} GPUs, NVLink", gpus, NVLINK_BUS_BYTES_PER_S, NVLINK_HOP_SECONDS)]
    for gbits in NETWORK_GBITS:
        out.append(Link(f"{gpus} nodes, {gbits} Gb/s", gpus, gbits * 1e9 / 8, NETWORK_HOP_SECONDS))
    return out


@dataclass(frozen=True)
class ScalingRow:
    """One case on one link: its step's compute and all-reduce, and the efficiencies.

    Each GPU trains the case's batch (the global batch is ``processes × batch``), so
    perfect scaling is ``processes ×`` one GPU's samples/s and the efficiency is the
    fraction of it reached.
    """

    case: str
    link: Link
    params: int
    compute_s: float
    allreduce_s: float

    @property
    def gradient_mb(self) -> float:
        """The float32 gradient summed per step, in MB (10⁶ bytes)."""
        return self.params * GRADIENT_ITEMSIZE / 1e6

    @property
    def efficiency_serial(self) -> float:
        """The gradient summed after the step: ``compute / (compute + all-reduce)``."""
        return self.compute_s / (self.compute_s + self.allreduce_s)

    @property
    def efficiency_overlapped(self) -> float:
        """The gradient summed in buckets during the backward pass (2/3 of the step's
        FLOPs): ``compute / (compute / 3 + max(2 compute / 3, all-reduce))``."""
        forward, backward = self.compute_s / 3, 2 * self.compute_s / 3
        return self.compute_s / (forward + max(backward, self.allreduce_s))


def scaling_rows(
    cases: Iterable[Case] | None = None, link_list: Sequence[Link] | None = None
) -> list[ScalingRow]:
    """Every case (default: ``CASES``) on every link (default: ``links()``), case by case."""
    rows = []
    for case in CASES.values() if cases is None else cases:
        compute = compute_seconds(case)
        for link in links() if link_list is None else link_list:
            nbytes = case.weights * GRADIENT_ITEMSIZE
            allreduce = ring_allreduce_seconds(
                nbytes, link.processes, link.bus_bytes_per_s, link.hop_seconds
            )
            rows.append(ScalingRow(case.name, link, case.weights, compute, allreduce))
    return rows


def hiding_bandwidth(case: Case, processes: int, hop_seconds: float) -> float:
    """The least bus bandwidth (bytes/s) at which the ring all-reduce of ``case``'s
    gradient fits in its backward pass (2/3 of ``compute_seconds``), so that overlap
    hides it; ``inf`` when the ring's latency alone is longer."""
    room = 2 * compute_seconds(case) / 3 - 2 * (processes - 1) * hop_seconds
    if room <= 0:
        return math.inf
    return 2 * (processes - 1) / processes * case.weights * GRADIENT_ITEMSIZE / room


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


def scaling_markdown() -> str:
    """The README's table on paper: per case and link, parameters, gradient MB, compute
    and all-reduce ms per step, efficiency without and with overlap; then per case the
    bandwidth below which the all-reduce outlasts the backward pass."""
    lines = [
        "| case | params | gradient MB | link | compute ms/step | all-reduce ms/step "
        "| efficiency, sum after the step | efficiency, overlapped |",
        "|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for row in scaling_rows():
        lines.append(
            f"| {row.case} | {row.params:,} | {row.gradient_mb:.3f} | {row.link.name} | "
            f"{_ms(row.compute_s)} | {_ms(row.allreduce_s)} | "
            f"{row.efficiency_serial:.0%} | {row.efficiency_overlapped:.0%} |"
        )
    lines += [
        "",
        f"| case | bus bandwidth needed to hide the all-reduce, {GPUS} GPUs of a node "
        f"| the same, {GPUS} nodes |",
        "|---|---:|---:|",
    ]
    for case in CASES.values():
        cells = []
        for hop in (NVLINK_HOP_SECONDS, NETWORK_HOP_SECONDS):
            need = hiding_bandwidth(case, GPUS, hop)
            cells.append(
                "never (latency)"
                if math.isinf(need)
                else f"{need / 1e9:.1f} GB/s ({need * 8 / 1e9:.0f} Gb/s)"
            )
        lines.append(f"| {case.name} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------- measured: worker
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMBA_NUM_THREADS",
)
DEFAULT_STEPS = 20
DEFAULT_REPEATS = 3
ALLREDUCE_REPEATS = 30
ALLREDUCE_WARMUP = 3


def _bucket_label(bucket_bytes: int | None) -> str:
    return "None" if bucket_bytes is None else str(bucket_bytes)


def _bucket_shown(bucket_bytes: int | None) -> str:
    from dlcore.distribute import DEFAULT_BUCKET_BYTES

    if bucket_bytes is None:
        return "`None`"
    if bucket_bytes == DEFAULT_BUCKET_BYTES:
        return f"{bucket_bytes / 2**20:g} MiB (default)"
    return f"{bucket_bytes:,}"


def _parse_bucket(text: str) -> int | None:
    from dlcore.distribute import DEFAULT_BUCKET_BYTES

    if text.lower() == "none":
        return None
    if text.lower() == "default":
        return DEFAULT_BUCKET_BYTES
    value = int(text)
    if value < 1:
        raise ValueError(f"a bucket size is a positive int, 'none' or 'default', received {text!r}")
    return value


def _timed_gradient_sync(parallel: Any, log: dict[str, list[float]]) -> Callable[..., Any]:
    """``parallel.gradient_sync`` made to return a ``GradientSync`` whose ``finish`` (the
    step's blocking part of the sum) is timed into ``log["finish_s"]`` and whose
    ``ready`` calls (layer ranges handed over during the backward pass, which buckets
    need) are counted per step into ``log["ready_per_step"]``."""
    from dlcore.distribute.data_parallel import GradientSync

    class TimedGradientSync(GradientSync):
        ready_calls = 0

        def begin(self, weight: float) -> None:
            self.ready_calls = 0
            super().begin(weight)

        def ready(self, start: int, stop: int) -> None:
            self.ready_calls += 1
            super().ready(start, stop)

        def finish(self) -> None:
            began = time.perf_counter()
            super().finish()
            log["finish_s"].append(time.perf_counter() - began)
            log["ready_per_step"].append(float(self.ready_calls))

    def gradient_sync(engine: Any, grads: Any, ranges: Any) -> GradientSync:
        return TimedGradientSync(
            parallel.communicator, engine, grads, ranges, parallel.bucket_bytes
        )

    return gradient_sync


def _epoch_summary(seconds: Sequence[float], samples: int) -> dict[str, float]:
    best, median = min(seconds), statistics.median(seconds)
    return {
        "samples_per_s": samples / best,
        "median_samples_per_s": samples / median,
        "best_epoch_s": best,
        "median_epoch_s": median,
    }


def run_worker(
    case: Case,
    steps: int,
    repeats: int,
    buckets: Sequence[int | None],
    use_mpi: bool,
    allreduce_repeats: int = ALLREDUCE_REPEATS,
) -> dict[str, Any] | None:
    """What one configuration's processes run: a warm-up epoch, then ``repeats`` timed
    epochs of ``case`` (``steps`` batches, the global batch ``case.batch_size``) on the
    numpy engine in float32; with ``use_mpi``, data-parallel over ``MPI.COMM_WORLD``
    once per bucket size of ``buckets`` (epochs alternating between them), and the
    all-reduce of a float32 buffer of the model's parameter count timed
    ``allreduce_repeats`` times.

    Returns:
        On rank 0 (or alone): ``{"processes", "threads", "affinity", "params", "runs":
        [...], "allreduce": {...} or None}``, ``summarize``d: each run's ``epoch_s``
        (the slowest process's epoch), ``finish_s`` and ``ready_per_step`` (rank 0's
        steps), the all-reduce's ``samples_s`` (the slowest process's); ``None`` on the
        other ranks.
    """
    import numpy as np

    import dlcore
    from dlcore import distribute
    from dlcore.benchmark import runner

    dlcore.set_backend("numpy")
    x, y = case.data(steps)
    trainer = runner.DlcoreTrainer("numpy", case, x, y, runner.initial_weights(case, seed=0))
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    info: dict[str, Any] = {
        "threads": os.environ.get("OMP_NUM_THREADS"),
        "affinity": affinity,
        "steps": steps,
        "batch_size": case.batch_size,
        "widths": list(case.widths),
        "params": case.weights,
    }
    if not use_mpi:
        distribute.shutdown()
        trainer.epoch()
        alone: list[float] = []
        for _ in range(repeats):
            began = time.perf_counter()
            trainer.epoch()
            alone.append(time.perf_counter() - began)
        run = {"bucket_bytes": None, "epoch_s": alone}
        return summarize({**info, "processes": 1, "runs": [run], "allreduce": None})

    from dlcore.distribute.mpi import MPICommunicator

    comm = MPICommunicator()
    engine = trainer.engine
    logs: list[dict[str, list[float]]] = [{"finish_s": [], "ready_per_step": []} for _ in buckets]

    def epoch(index: int) -> float:
        parallel = distribute.init(comm, bucket_bytes=buckets[index])
        # instrumented from outside: DataParallel.gradient_sync answers with the timed sync
        timed = _timed_gradient_sync(parallel, logs[index])
        parallel.gradient_sync = timed  # type: ignore[method-assign]
        comm.comm.Barrier()
        began = time.perf_counter()
        trainer.epoch()
        took = time.perf_counter() - began
        return float(max(comm.gather_objects(took)))

    for index in range(len(buckets)):
        epoch(index)  # warm-up
        for key in logs[index]:
            logs[index][key].clear()
    seconds: list[list[float]] = [[] for _ in buckets]
    for _ in range(repeats):
        for index in range(len(buckets)):
            seconds[index].append(epoch(index))
    distribute.shutdown()

    buffer = np.ones(case.weights, dtype=np.float32)
    allreduce: list[float] = []
    for k in range(ALLREDUCE_WARMUP + allreduce_repeats):
        comm.comm.Barrier()
        began = time.perf_counter()
        comm.allreduce_sum(engine, buffer)
        took = float(max(comm.gather_objects(time.perf_counter() - began)))
        if k >= ALLREDUCE_WARMUP:
            allreduce.append(took)
    if comm.rank != 0:
        return None
    runs = [
        {"bucket_bytes": bucket, "epoch_s": epoch_seconds, **log}
        for bucket, log, epoch_seconds in zip(buckets, logs, seconds)
    ]
    allreduce_info = {"bytes": case.weights * GRADIENT_ITEMSIZE, "samples_s": allreduce}
    return summarize({**info, "processes": comm.size, "runs": runs, "allreduce": allreduce_info})


def summarize(configuration: dict[str, Any]) -> dict[str, Any]:
    """One configuration's raw samples (``epoch_s`` per run, ``finish_s`` and
    ``ready_per_step`` per step, the all-reduce's ``samples_s``) with their summaries
    added: samples/s of the best and the median epoch, the median gradient sum per step
    in ms, the median and fastest all-reduce and its bus bandwidth
    ``2 (n - 1) / n × bytes / median``."""
    samples = configuration["steps"] * configuration["batch_size"]
    for run in configuration["runs"]:
        run.update(_epoch_summary(run["epoch_s"], samples))
        if run.get("finish_s"):
            run["sync_ms_per_step"] = statistics.median(run["finish_s"]) * 1e3
            run["ready_calls_per_step"] = statistics.mean(run["ready_per_step"])
    allreduce = configuration["allreduce"]
    if allreduce is not None:
        median = statistics.median(allreduce["samples_s"])
        n = configuration["processes"]
        allreduce["median_ms"] = median * 1e3
        allreduce["min_ms"] = min(allreduce["samples_s"]) * 1e3
        allreduce["bus_gb_per_s"] = 2 * (n - 1) / n * allreduce["bytes"] / median / 1e9
    return configuration


def merge_rounds(rounds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One configuration measured in several rounds, as if in one: its raw samples
    concatenated, then ``summarize``d."""
    merged = json.loads(json.dumps(rounds[0]))
    for later in rounds[1:]:
        for run, more in zip(merged["runs"], later["runs"]):
            for key in ("epoch_s", "finish_s", "ready_per_step"):
                if key in run:
                    run[key] += more[key]
        if merged["allreduce"] is not None:
            merged["allreduce"]["samples_s"] += later["allreduce"]["samples_s"]
    return summarize(merged)


# ---------------------------------------------------------------------- measured: driver
def cpu_model() -> str:
    """This machine's CPU model, from ``/proc/cpuinfo`` (``platform.processor()``
    elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"


def find_mpiexec() -> str | None:
    """The ``mpiexec`` next to this Python (``dlcore[mpi]``'s wheel puts it there), else
    the one on ``PATH``, else ``None``."""
    beside = Path(sys.executable).parent / "mpiexec"
    if beside.exists():
        return str(beside)
    return shutil.which("mpiexec")


def _environment(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update({name: str(threads) for name in THREAD_VARIABLES})
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def _launch(command: list[str], threads: int, out: Path, timeout: float) -> dict[str, Any]:
    """Run one configuration's processes; their rank 0's JSON from ``out``."""
    result = subprocess.run(
        command,
        env=_environment(threads),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed with code {result.returncode}\n"
            f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
        )
    return dict(json.loads(out.read_text()))


def measure(
    case_name: str = "medium",
    *,
    steps: int = DEFAULT_STEPS,
    repeats: int = DEFAULT_REPEATS,
    processes: int = 2,
    threads: int = 2,
    buckets: Sequence[int | None] | None = None,
    scale: int = 1,
    rounds: int = 1,
    timeout: float = 600,
) -> dict[str, Any]:
    """The side-by-side measurement: the case ``case_name`` of ``CASES`` (divided by
    ``scale``, ``Case.scaled``) trained by one process of ``threads`` threads, one
    process of one thread bound to a core, and ``processes`` processes of one thread
    each under ``mpiexec -bind-to core`` with ``dlcore.distribute.init()``, once per
    bucket size of ``buckets`` (default: ``None`` and ``DEFAULT_BUCKET_BYTES``). With
    several ``rounds`` the three are launched again in each, the order rotated, and
    their epochs pooled (the machine's load changes over a run; each configuration
    meets the same changes).

    Returns:
        ``{"machine", "case", "configurations": {"1x<threads>", "1x1", "<K>x1"}}``, each
        configuration ``run_worker``'s result.

    Raises:
        ValueError: an unknown case or a count below 1.
        RuntimeError: ``mpiexec`` is missing, or a configuration's processes failed
            (their output is in the message).
    """
    from dlcore.distribute import DEFAULT_BUCKET_BYTES

    if case_name not in CASES:
        raise ValueError(f"unknown case {case_name!r}; available: {', '.join(CASES)}")
    counts = {"steps": steps, "repeats": repeats, "processes": processes}
    counts.update(threads=threads, scale=scale, rounds=rounds)
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, received {value!r}")
    case = CASES[case_name] if scale == 1 else CASES[case_name].scaled(scale)

    mpiexec = find_mpiexec()
    if mpiexec is None:
        raise RuntimeError(
            "no mpiexec next to this Python or on PATH: pip install dlcore[mpi] (mpi4py and MPICH)"
        )
    chosen = [None, DEFAULT_BUCKET_BYTES] if buckets is None else list(buckets)
    worker = [
        sys.executable,
        "-m",
        "dlcore.benchmark.distributed",
        "--worker",
        "--case",
        case.name,
        "--scale",
        str(scale),
        "--steps",
        str(steps),
        "--repeats",
        str(repeats),
        "--buckets",
        *map(_bucket_label, chosen),
    ]
    started = time.time()
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    with tempfile.TemporaryDirectory(prefix="dlcore-dp-bench-") as folder:
        plans = [
            (f"1x{threads}", [*worker], threads),
            ("1x1", [mpiexec, "-n", "1", "-bind-to", "core", *worker], 1),
            (
                f"{processes}x1",
                [mpiexec, "-n", str(processes), "-bind-to", "core", *worker, "--mpi"],
                1,
            ),
        ]
        measured: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in plans}
        for round_index in range(rounds):
            shift = round_index % len(plans)
            for label, command, thread_count in plans[shift:] + plans[:shift]:
                out = Path(folder) / f"{label}-{round_index}.json"
                measured[label].append(
                    _launch([*command, "--out", str(out)], thread_count, out, timeout)
                )
        configurations = {label: merge_rounds(found) for label, found in measured.items()}
    return {
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "load_average_at_start": list(load) if load is not None else None,
            "blas_environment": {
                key: os.environ[key]
                for key in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
                if key in os.environ
            },
        },
        "case": {"name": case.name, "widths": list(case.widths), "batch_size": case.batch_size},
        "steps": steps,
        "repeats": repeats,
        "rounds": rounds,
        "processes": processes,
        "threads": threads,
        "seconds": time.time() - started,
        "configurations": configurations,
    }


def measured_markdown(result: dict[str, Any]) -> str:
    """``measure``'s result as the README's measured table, with the machine named."""
    machine = result["machine"]
    case = result["case"]
    configurations = result["configurations"]
    threads, processes = result["threads"], result["processes"]
    reference = configurations[f"1x{threads}"]["runs"][0]["samples_per_s"]
    single = configurations["1x1"]["runs"][0]["samples_per_s"]
    widths = "-".join(map(str, case["widths"]))
    load = machine.get("load_average_at_start")
    pinned = machine.get("blas_environment") or {}
    lines = [
        f"Measured on {machine['cpu']} ({machine['cores']} cores"
        + (f", load average {load[0]:.1f} at the start" if load else "")
        + "".join(f", {key}={value}" for key, value in pinned.items())
        + f"), case {case['name']} "
        f"({widths}, global batch {case['batch_size']}), numpy engine, float32, "
        f"{result['steps']} steps per epoch, the best of {result['repeats']} epochs × "
        f"{result.get('rounds', 1)} rounds:",
        "",
        "| processes × threads | bucket_bytes | samples/s (best epoch) "
        "| samples/s (median epoch) | ms/step "
        f"| vs 1 × {threads} threads | vs 1 × 1 thread | gradient sum ms/step |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, configuration in configurations.items():
        count = configuration["processes"]
        shown_threads = threads if label == f"1x{threads}" else 1
        for run in configuration["runs"]:
            rate = run["samples_per_s"]
            step_ms = run["best_epoch_s"] / result["steps"] * 1e3
            sync = run.get("sync_ms_per_step")
            lines.append(
                f"| {count} × {shown_threads} | "
                f"{_bucket_shown(run['bucket_bytes']) if count > 1 else '-'} | "
                f"{rate:,.0f} | {run['median_samples_per_s']:,.0f} | {step_ms:.2f} | "
                f"{rate / reference:.2f}× | {rate / single:.2f}× | "
                f"{'-' if sync is None else f'{sync:.2f}'} |"
            )
    parallel = configurations[f"{processes}x1"]
    allreduce = parallel["allreduce"]
    ready = parallel["runs"][0]["ready_calls_per_step"]
    lines += [
        "",
        f"`allreduce_sum` of {parallel['params']:,} float32 ({allreduce['bytes'] / 1e6:.2f} MB) "
        f"over {processes} processes: median {allreduce['median_ms']:.2f} ms "
        f"(fastest {allreduce['min_ms']:.2f} ms), a bus bandwidth "
        f"2(n-1)/n × bytes / time of {allreduce['bus_gb_per_s']:.2f} GB/s. "
        f"Layer gradients handed to the sum during the backward pass: {ready:g} per step.",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------- command line
def main(argv: Sequence[str] | None = None) -> None:
    """``python -m dlcore.benchmark.distributed [--table] [--json FILE] [...]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", action="store_true", help="print the table on paper")
    parser.add_argument("--case", choices=sorted(CASES), default="medium")
    parser.add_argument(
        "--scale", type=int, default=1, help="divide widths and batch by this (Case.scaled)"
    )
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS)
    parser.add_argument("--rounds", type=int, default=1, help="launch every configuration again")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--buckets",
        nargs="+",
        default=["none", "default"],
        help="bucket_bytes: none, default or bytes",
    )
    parser.add_argument("--json", help="also write the measurement to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mpi", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.table:
        print(scaling_markdown())
        return
    for name in ("scale", "steps", "repeats", "rounds", "processes", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, received {getattr(args, name)}")
    case = CASES[args.case] if args.scale == 1 else CASES[args.case].scaled(args.scale)
    buckets = [_parse_bucket(text) for text in args.buckets]
    if args.worker:
        result = run_worker(case, args.steps, args.repeats, buckets, args.mpi)
        if result is not None and args.out:
            Path(args.out).write_text(json.dumps(result))
        return
    measured = measure(
        args.case,
        steps=args.steps,
        repeats=args.repeats,
        processes=args.processes,
        threads=args.threads,
        buckets=buckets,
        scale=args.scale,
        rounds=args.rounds,
    )
    if args.json:
        Path(args.json).write_text(json.dumps(measured, indent=2))
    print(measured_markdown(measured))


if __name__ == "__main__":
    main()
