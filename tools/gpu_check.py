"""``make gpu-check``: everything worth knowing from a short window on a CUDA GPU, in one run.

Run it with the machine's own ``python3`` from the project root; it needs the
standard library only (the GPU machine reaches no package index, and may lack
the setuptools an install needs). It lays dlcore out as an install would
(``dlcore/``, ``backends/`` as ``dlcore/backends``, ``kernels/`` as
``dlcore/kernels``) in a temporary folder put first on ``PYTHONPATH``, runs
every step from there in a process of its own with its own time limit, and
stops starting steps at a global deadline (``--deadline``, default 480 s)::

    versions      python, numpy, numba, numba-cuda, cupy, ...; driver, runtime, NVVM; the GPU
    tests-kernels tests/kernels and tests/test_numba_engine.py, CUDA_LAUNCH_BLOCKING=1  } at
    tests-numba   the rest of tests/ with --engine numba --full-simulation               } the
    tests-cupy    the cupy-parametrized tests (--engine cupy -m gpu)                     } same
    sanitizer-*   compute-sanitizer racecheck, synccheck, memcheck (when on PATH)        } time
    probe         tools/gpu_probe.py shapes: large and odd shapes against float64 NumPy
    timings       tools/gpu_probe.py timings: gemm GFLOP/s, Adam GB/s, launch cost
    graphs        tools/gpu_probe.py graphs: a tiny fit with CUDA graph replay off and on
    doctor        python -m dlcore doctor, timed
    bench         python -m dlcore bench --engines cupy numba --peers --repeats 3
    bench-mixed   the same in mixed_float16 (torch autocast, JAX float16), large case, 2 repeats

Every step after ``versions`` needs a GPU: without one (``nvidia-smi`` and
libcuda both absent, or ``numba.cuda.is_available()`` false with the simulator
off, or ``--dry-run``) each is recorded as "skipped: no GPU" at once. The
correctness steps run side by side (they compile kernels on the CPU and barely
load the GPU); the measuring steps run alone, and the benchmark, the longest
and least predictable, last. Results: ``report.md`` (a table of the steps, then
each step's last lines), ``report.json`` (per step: rc, seconds, parsed
numbers) and every step's whole output in ``logs/``, under ``--out`` (or
``$OUT``, default ``gpu-check-out``), rewritten after every step so that an
interrupted run still leaves a report. Exit status 1 when a step failed or ran
out of time, else 0.
"""

from __future__ import annotations

import argparse
import ctypes.util
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = os.path.join(REPO, "tools", "gpu_probe.py")
DEADLINE_S = 480  # the whole run, 8 minutes: the rest of a 15-minute window starts the machine
DETECT_S = 90  # numba.cuda.is_available() in a subprocess: starts the driver, loads NVVM
TAIL_LINES = 30  # of each step's output, in report.md
KILL_GRACE_S = 5  # between SIGTERM and SIGKILL of a step's process group
NO_GPU = "skipped: no GPU"
SANITIZER_TOOLS = ("racecheck", "synccheck", "memcheck")


@dataclass
class Step:
    """One step: a command, its time limit, and how to read its output.

    ``group`` steps that share a name start together; ``min_s`` is the least time
    worth starting it with; ``needs`` an executable that must be on PATH.
    """

    name: str
    title: str
    command: list[str]
    limit_s: int
    needs_gpu: bool = True
    group: str | None = None
    min_s: int = 15
    env: dict[str, str] = field(default_factory=dict)
    needs: str | None = None
    parse: Callable[[str, str], tuple[str, dict[str, Any]]] | None = None
    json_file: str | None = None  # a file the step writes, read by ``parse``


@dataclass
class Result:
    name: str
    title: str
    status: str  # "passed", "failed", "timeout after N s", "skipped: ..."
    rc: int
    seconds: float
    limit_s: int
    summary: str
    numbers: dict[str, Any]
    command: str
    log: str | None
    tail: str = ""


# ---------------------------------------------------------------------- output parsing
PYTEST_COUNT = re.compile(
    r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected|warnings?)"
)
PYTEST_SUMMARY = re.compile(r"^=+ (.*\d+ \w+.* in [\d.]+s.*?) =+$")


PYTEST_OUTCOME = re.compile(r"::\S+ (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)\b")
PYTEST_FAILURE = re.compile(r"^(?:FAILED|ERROR) (\S+)")


def parse_pytest(output: str, _json_file: str = "") -> tuple[str, dict[str, Any]]:
    """pytest's final line, ``= 3 failed, 120 passed, 4 skipped in 81.2s =``, and its counts;
    the tests that failed (``-ra``'s summary); for a run cut short, the outcomes so far
    (``-v`` prints one per test)."""
    lines = output.splitlines()
    numbers: dict[str, Any] = {}
    failures = [m.group(1) for m in map(PYTEST_FAILURE.match, lines) if m]
    if failures:
        numbers["failed_tests"] = failures
    summaries = [line.strip() for line in lines if PYTEST_SUMMARY.match(line.strip())]
    if not summaries:
        so_far: dict[str, int] = {}
        for outcome in PYTEST_OUTCOME.findall(output):
            so_far[outcome.lower()] = so_far.get(outcome.lower(), 0) + 1
        numbers.update(so_far)
        counts = ", ".join(f"{n} {kind}" for kind, n in so_far.items()) or "no test finished"
        return f"no pytest summary line; so far: {counts}", numbers
    text = PYTEST_SUMMARY.match(summaries[-1]).group(1)  # type: ignore[union-attr]
    for count, kind in PYTEST_COUNT.findall(text):
        kind = {"error": "errors", "warning": "warnings"}.get(kind, kind)
        numbers[kind] = int(count)
    seconds = re.search(r" in ([\d.]+)s", text)
    if seconds:
        numbers["pytest_seconds"] = float(seconds.group(1))
    return text, numbers


def parse_sanitizer(output: str, _json_file: str = "") -> tuple[str, dict[str, Any]]:
    """compute-sanitizer's ``ERROR SUMMARY: N errors`` (and racecheck's hazard counts)."""
    numbers: dict[str, Any] = {}
    errors = re.findall(r"ERROR SUMMARY: (\d+) error", output)
    if errors:
        numbers["errors"] = int(errors[-1])
    hazards = re.findall(
        r"RACECHECK SUMMARY: (\d+) hazards? displayed \((\d+) errors?, (\d+)", output
    )
    if hazards:
        numbers["hazards"], numbers["hazard_errors"], numbers["hazard_warnings"] = map(
            int, hazards[-1]
        )
    families = re.findall(r"sanitize run done: (\d+) families", output)
    if families:
        numbers["families"] = int(families[-1])
    if "errors" not in numbers:
        return "no ERROR SUMMARY line (see the tail)", numbers
    summary = f"{numbers['errors']} errors"
    if "hazards" in numbers:
        summary += f", {numbers['hazards']} hazards ({numbers['hazard_warnings']} warnings)"
    summary += f"; {numbers.get('families', '?')} kernel families launched"
    return summary, numbers


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except (OSError, ValueError):
        return None


def parse_versions(output: str, json_file: str) -> tuple[str, dict[str, Any]]:
    data = _read_json(json_file)
    if not isinstance(data, dict):
        return "no versions file (see the tail)", {}
    keys = ("python", "numpy", "numba", "numba-cuda", "cupy", "driver", "runtime", "nvvm", "gpu")
    # the summary keeps "missing" without its reason, which report.json has
    values = [str(data.get(k, "?")) for k in keys]
    parts = [f"{k} {'missing' if v.startswith('missing') else v}" for k, v in zip(keys, values)]
    return "; ".join(parts), data


def parse_probe(output: str, json_file: str) -> tuple[str, dict[str, Any]]:
    data = _read_json(json_file)
    if not isinstance(data, dict) or "checks" not in data:
        return "no probe results file (see the tail)", {}
    checks = data["checks"]
    failed = [c for c in checks if not c.get("passed")]
    summary = f"{len(checks) - len(failed)} of {len(checks)} checks pass"
    if not data.get("complete"):
        summary += " (cut short: see the tail)"
    if failed:
        summary += "; FAILED: " + ", ".join(c["name"] for c in failed[:4])
        summary += " ..." if len(failed) > 4 else ""
    elif checks:
        worst = max(
            checks, key=lambda c: (c["error"] or 0.0) / c["tolerance"] if c["tolerance"] else 0.0
        )
        summary += (
            f"; closest to its tolerance: {worst['name']} "
            f"({worst['error']:.1e} of {worst['tolerance']:.1e})"
        )
    return summary, {"checks": checks, "failed": [c["name"] for c in failed]}


def parse_timings(output: str, json_file: str) -> tuple[str, dict[str, Any]]:
    data = _read_json(json_file)
    if not isinstance(data, dict):
        return "no timings file (see the tail)", {}
    parts = []
    cube = data.get("gemm_cube")
    if cube:
        size = cube["M"]
        cupy = f" (cupy {cube['cupy_gflops']:.0f})" if cube.get("cupy_gflops") else ""
        parts.append(f"gemm {size}^3 {cube['gflops']:.0f} GFLOP/s{cupy}")
    if data.get("adam"):
        adam = data["adam"]
        parts.append(f"Adam {adam['params'] / 1e6:.1f}M params {adam['gbytes_per_s']:.0f} GB/s")
    if data.get("launch"):
        parts.append(f"empty launch {data['launch']['microseconds']:.1f} us")
    summary = "; ".join(parts) or "no numbers"
    return summary + ("" if data.get("complete") else " (cut short: see the tail)"), data


def parse_graphs(output: str, json_file: str) -> tuple[str, dict[str, Any]]:
    data = _read_json(json_file)
    if not isinstance(data, dict):
        return "no graphs file (see the tail)", {}
    parts = []
    for case, row in data.get("cases", {}).items():
        verdict = "same history" if row.get("identical") else "HISTORIES DIFFER"
        parts.append(
            f"{case} {row['plain_samples_per_s']:.0f} -> {row['graphs_samples_per_s']:.0f} "
            f"samples/s, {row['captures']} captured, {verdict}"
        )
    summary = "; ".join(parts) or "no numbers"
    return summary + ("" if data.get("complete") else " (cut short: see the tail)"), data


def parse_doctor(output: str, _json_file: str = "") -> tuple[str, dict[str, Any]]:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    verdict = next((line for line in reversed(lines) if line.startswith(("OK:", "FAILED:"))), None)
    gflops = re.findall(r"([\d.]+) GFLOP/s", output)
    numbers: dict[str, Any] = {"gflops": [float(g) for g in gflops]} if gflops else {}
    return verdict or "no OK/FAILED line (see the tail)", numbers


def parse_data_parallel(output: str, json_file: str) -> tuple[str, dict[str, Any]]:
    """tests/distribute_scripts/gpu_data_parallel.py's report: the transport and how far
    two processes' training is from one's."""
    report = _read_json(json_file)
    if not isinstance(report, dict):
        return "no report", {}
    alone = report.get("seconds_per_epoch_alone")
    return (
        f"{report.get('transport')}: weights within {report.get('max_weight_difference')}, "
        f"{report.get('seconds_per_epoch')} s/epoch (alone {alone})",
        report,
    )


def parse_bench(output: str, json_file: str) -> tuple[str, dict[str, Any]]:
    data = _read_json(json_file)
    if not isinstance(data, dict):
        return "no bench JSON (see the tail)", {}
    rows = {}
    for m in data.get("results", []):
        rows[f"{m.get('case')}/{m.get('runner')}"] = {
            "samples_per_second": m.get("samples_per_second"),
            "ms_per_step": m.get("ms_per_step"),
            "bound_fraction": m.get("bound_fraction"),
        }
    mixed = {}
    for m in data.get("mixed", []):
        mixed[f"{m.get('precision')}/{m.get('case')}/{m.get('runner')}"] = {
            "samples_per_second": m.get("samples_per_second"),
            "ms_per_step": m.get("ms_per_step"),
            "computes": m.get("computes"),
        }
    met = data.get("all_targets_met")
    parts = []
    if rows or not mixed:
        parts.append(f"{len(rows)} measurements; targets {'all met' if met else 'NOT all met'}")
    if mixed:
        parts.append(f"{len(mixed)} mixed-precision measurements (no targets)")
    numbers = {"results": rows, "all_targets_met": met, "skipped": data.get("skipped")}
    if mixed:
        numbers["mixed"] = mixed
    return "; ".join(parts), numbers


# ---------------------------------------------------------------------- versions
VERSION_SCRIPT = r"""
import importlib.metadata as md, json, platform, shutil, subprocess, sys
out = {"python": platform.python_version(), "executable": sys.executable}
def guard(key, fn):
    try:
        value = fn()
        out[key] = "missing" if value is None else value
    except Exception as error:
        out[key] = f"missing ({type(error).__name__}: {str(error)[:200]})"
def dist(*names):
    for name in names:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            pass
    return None
for key, names in {
    "numpy": ("numpy",), "numba": ("numba",), "numba-cuda": ("numba-cuda", "numba_cuda"),
    "cupy": ("cupy-cuda13x", "cupy-cuda12x", "cupy"), "torch": ("torch",), "jax": ("jax",),
    "jaxlib": ("jaxlib",), "pytest": ("pytest",), "pytest-benchmark": ("pytest-benchmark",),
    "setuptools": ("setuptools",), "scipy": ("scipy",),
}.items():
    guard(key, lambda names=names: dist(*names))
def run(*command):
    if shutil.which(command[0]) is None:
        return None
    done = subprocess.run(command, capture_output=True, text=True, timeout=20)
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[-1] if lines else None
QUERY = "--query-gpu=name,driver_version,compute_cap,memory.total"
guard("nvidia-smi", lambda: run("nvidia-smi", QUERY, "--format=csv,noheader"))
guard("compute-sanitizer", lambda: run("compute-sanitizer", "--version"))
guard("ptxas", lambda: run("ptxas", "--version"))
def numba_cuda():
    from numba import cuda
    return cuda
guard("driver", lambda: ".".join(map(str, numba_cuda().cudadrv.driver.driver.get_version())))
guard("runtime", lambda: ".".join(map(str, numba_cuda().runtime.get_version())))
def nvvm():
    from numba.cuda.cudadrv import nvvm
    return ".".join(map(str, nvvm.NVVM().get_version()))
guard("nvvm", nvvm)
def gpu():
    device = numba_cuda().get_current_device()
    name = device.name.decode() if isinstance(device.name, bytes) else str(device.name)
    return f"{name} (cc {device.compute_capability[0]}.{device.compute_capability[1]})"
guard("gpu", gpu)
def cupy_runtime():
    import cupy
    r = cupy.cuda.runtime
    return f"runtime {r.runtimeGetVersion()}, driver {r.driverGetVersion()}"
guard("cupy-cuda", cupy_runtime)
def dlcore_version():
    import dlcore
    return f"{dlcore.__version__} from {dlcore.__file__}"
guard("dlcore", dlcore_version)
for key, value in out.items():
    print(f"{key:>18}: {value}")
with open(sys.argv[1], "w", encoding="utf-8") as file:
    json.dump(out, file, indent=2)
"""


# ---------------------------------------------------------------------- the plan
def pytest_command(python: str, *args: str) -> list[str]:
    """pytest on the checkout's tests, reading its pyproject, from the installed-like copy.

    ``-v`` names each test as it starts, so a step cut off by its limit shows the test
    that hung; ``faulthandler_timeout`` dumps the stacks of a test stuck for a minute."""
    return [
        python, "-m", "pytest", "-v", "-p", "no:cacheprovider",
        "--rootdir", REPO, "-c", os.path.join(REPO, "pyproject.toml"),
        # the project's addopts, without --benchmark-disable (pytest-benchmark may be absent)
        "-o", "addopts=-ra --strict-markers", "-o", "faulthandler_timeout=60",
        "--maxfail=50", "--durations=10", *args,
    ]  # fmt: skip


def plan(python: str, out: str) -> list[Step]:
    """Every step, in the order they run."""
    tests = os.path.join(REPO, "tests")
    kernel_tests = [os.path.join(tests, "kernels"), os.path.join(tests, "test_numba_engine.py")]
    not_kernel_tests = [f"--ignore={path}" for path in kernel_tests]
    sanitize = [python, PROBE, "sanitize"]
    steps = [
        Step(
            "versions",
            "versions: python, libraries, CUDA driver, runtime, NVVM, the GPU",
            [python, "-c", VERSION_SCRIPT, os.path.join(out, "versions.json")],
            40,
            needs_gpu=False,
            parse=parse_versions,
            json_file=os.path.join(out, "versions.json"),
        ),
        Step(
            "tests-kernels",
            "kernel tests and tests/test_numba_engine.py, CUDA_LAUNCH_BLOCKING=1",
            pytest_command(python, *kernel_tests),
            150,
            group="correctness",
            env={"CUDA_LAUNCH_BLOCKING": "1"},
            parse=parse_pytest,
        ),
        Step(
            "tests-numba",
            "the rest of tests/ on the numba engine, model-level tests included",
            pytest_command(
                python, "--engine", "numba", "--full-simulation", tests, *not_kernel_tests
            ),
            150,
            group="correctness",
            parse=parse_pytest,
        ),  # fmt: skip
        Step(
            "tests-cupy",
            "the cupy-parametrized tests (the rest ran in tests-numba)",
            pytest_command(python, "--engine", "cupy", "-m", "gpu", tests, *not_kernel_tests),
            120,
            group="correctness",
            parse=parse_pytest,
        ),
    ]
    for tool in SANITIZER_TOOLS:
        steps.append(
            Step(
                f"sanitizer-{tool}",
                f"compute-sanitizer --tool {tool} on one launch of every kernel family",
                # exit status 1 when the tool finds an error, even if the script passed
                ["compute-sanitizer", "--tool", tool, "--error-exitcode", "1", *sanitize],
                150,
                group="correctness",
                needs="compute-sanitizer",
                parse=parse_sanitizer,
            )
        )
    probe_json, timings_json = os.path.join(out, "probe.json"), os.path.join(out, "timings.json")
    graphs_json = os.path.join(out, "graphs.json")
    bench_json = os.path.join(out, "bench.json")
    mixed_json = os.path.join(out, "bench-mixed.json")
    bench = [python, "-m", "dlcore", "bench", "--engines", "cupy", "numba", "--peers"]
    steps += [
        Step(
            "probe",
            "shapes beyond the simulator against float64 NumPy (tools/gpu_probe.py shapes)",
            [python, PROBE, "shapes", "--json", probe_json],
            75,
            parse=parse_probe,
            json_file=probe_json,
        ),
        Step(
            "timings",
            "gemm GFLOP/s (4096^3, benchmark layers), Adam GB/s at 21M, launch cost",
            [python, PROBE, "timings", "--json", timings_json],
            60,
            parse=parse_timings,
            json_file=timings_json,
        ),
        # the kernels' compilation (an untimed fit per mode) is most of it
        Step(
            "graphs",
            "a 784-50-50-10 fit with CUDA graph replay off and on (tools/gpu_probe.py graphs)",
            [python, PROBE, "graphs", "--json", graphs_json],
            45,
            parse=parse_graphs,
            json_file=graphs_json,
        ),
        Step(
            "doctor",
            "python -m dlcore doctor (its wall time is the step's seconds)",
            [python, "-m", "dlcore", "doctor"],
            45,
            parse=parse_doctor,
        ),
        Step(
            "bench",
            "python -m dlcore bench --engines cupy numba --peers --repeats 3",
            [*bench, "--repeats", "3", "--json", bench_json],
            180,
            min_s=30,
            parse=parse_bench,
            json_file=bench_json,
        ),
        # the float32 bench's 240 s shared with the mixed-precision one: one case, the one
        # whose products are large enough for half precision's tensor cores to show
        Step(
            "bench-mixed",
            "python -m dlcore bench --engines cupy numba --peers --precision mixed_float16 "
            "--cases large --repeats 2",
            [
                *bench,
                "--precision",
                "mixed_float16",
                "--cases",
                "large",
                "--repeats",
                "2",
                "--json",
                mixed_json,
            ],
            60,
            min_s=40,
            parse=parse_bench,
            json_file=mixed_json,
        ),  # fmt: skip
    ]
    # data parallelism before the benches, which stay last
    mpiexec = os.path.join(os.path.dirname(python), "mpiexec")
    script = os.path.join(tests, "distribute_scripts", "gpu_data_parallel.py")
    first_bench = next(i for i, step in enumerate(steps) if step.name == "bench")
    for offset, engine in enumerate(("cupy", "numba")):
        report = os.path.join(out, f"data-parallel-{engine}.json")
        steps.insert(
            first_bench + offset,
            Step(
                f"data-parallel-{engine}",
                f"2 processes sharing the GPU, data-parallel on {engine} (NCCL where CuPy has "
                "it), against one process",
                [mpiexec, "-n", "2", python, script, engine, report],
                45,
                min_s=30,
                needs=mpiexec,
                parse=parse_data_parallel,
                json_file=report,
            ),
        )
    return steps


# ---------------------------------------------------------------------- running
def child_environment(site: str) -> dict[str, str]:
    """The steps' environment: the real GPU (no simulator), dlcore from ``site``."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    # numba-cuda warns on every launch of fewer than 128 blocks; the tests turn warnings
    # into errors, so without this nearly every GPU test would error
    env["NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS"] = "0"
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = site + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def lay_out_site(repo: str) -> str:
    """A temporary folder holding dlcore as an install would: dlcore/, with backends/ and
    kernels/ inside it (pyproject's package-dir)."""
    site = tempfile.mkdtemp(prefix="dlcore-gpu-check-")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(os.path.join(repo, "dlcore"), os.path.join(site, "dlcore"), ignore=ignore)
    for part in ("backends", "kernels"):
        shutil.copytree(os.path.join(repo, part), os.path.join(site, "dlcore", part), ignore=ignore)
    return site


def detect_gpu(python: str, env: dict[str, str], dry_run: bool) -> tuple[bool, str]:
    """Whether a CUDA GPU is usable, and what says so; quick when there is none."""
    if dry_run:
        return False, "--dry-run"
    if shutil.which("nvidia-smi") is None and ctypes.util.find_library("cuda") is None:
        return False, "neither nvidia-smi nor libcuda is here"
    code = (
        "from numba import cuda\n"
        "if cuda.is_available():\n"
        "    d = cuda.get_current_device(); n = d.name\n"
        "    n = n.decode() if isinstance(n, bytes) else n\n"
        "    print('GPU', n, 'cc %d.%d' % d.compute_capability)\n"
        "else:\n"
        "    print('NOGPU numba.cuda.is_available() is False')\n"
    )
    try:
        done = subprocess.run(
            [python, "-c", code], env=env, capture_output=True, text=True, timeout=DETECT_S
        )
    except subprocess.TimeoutExpired:
        return False, f"numba.cuda.is_available() did not answer within {DETECT_S} s"
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return False, f"numba.cuda cannot be used: {last}"
    word, _, detail = lines[-1].partition(" ")
    return word == "GPU", detail


def tail(path: str, lines: int = TAIL_LINES) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            return "".join(file.readlines()[-lines:])
    except OSError:
        return ""


def _stop(process: subprocess.Popen[bytes]) -> None:
    """End a step's process and everything it started (its own process group)."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, KILL_GRACE_S)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _skipped(step: Step, why: str, summary: str | None = None) -> Result:
    return Result(
        step.name, step.title, why, 0, 0.0, step.limit_s, summary or why, {},
        _shell(step.command), None,
    )  # fmt: skip


def _shell(command: Sequence[str]) -> str:
    shown = [arg if len(arg) < 200 else "<script>" for arg in command]
    return " ".join(shown)


def run_group(
    steps: Sequence[Step],
    *,
    env: dict[str, str],
    cwd: str,
    logs: str,
    deadline: float,
    on_finish: Callable[[Result], None] = lambda result: None,
) -> list[Result]:
    """Start the steps together, each with ``min(limit, time left)``, and wait for all;
    ``on_finish`` hears of each as it ends. Returns the results in the steps' order."""
    results: dict[str, Result] = {}
    running = []
    for step in steps:
        left = int(deadline - time.monotonic())
        if left < step.min_s:
            results[step.name] = _skipped(step, f"skipped: deadline ({max(left, 0)} s left)")
            on_finish(results[step.name])
            continue
        limit = min(step.limit_s, left)
        log = os.path.join(logs, f"{step.name}.log")
        if step.json_file and os.path.exists(step.json_file):
            os.remove(step.json_file)  # an earlier run's: not to be read as this one's
        with open(log, "wb") as file:
            file.write(f"$ {_shell(step.command)}\n".encode())
            file.flush()
            process = subprocess.Popen(
                step.command,
                cwd=cwd,
                env={**env, **step.env},
                stdout=file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: stopped with all it starts
            )
        running.append((step, process, time.monotonic(), limit, log))
    try:
        while running:
            for item in list(running):
                step, process, start, limit, log = item
                rc = process.poll()
                elapsed = time.monotonic() - start
                if rc is None and elapsed < limit:
                    continue
                status = "passed" if rc == 0 else "failed"
                if rc is None:
                    _stop(process)
                    rc, status = 124, f"timeout after {limit} s"
                running.remove(item)
                results[step.name] = _finish(step, rc, status, elapsed, limit, log)
                on_finish(results[step.name])
            time.sleep(0.05)
    finally:
        for step, process, start, limit, log in running:  # interrupted: stop what runs
            _stop(process)
            elapsed = time.monotonic() - start
            results[step.name] = _finish(step, -1, "interrupted", elapsed, limit, log)
            on_finish(results[step.name])
    return [results[step.name] for step in steps]


def _finish(step: Step, rc: int, status: str, seconds: float, limit: int, log: str) -> Result:
    output = ""
    try:
        with open(log, encoding="utf-8", errors="replace") as file:
            output = file.read()
    except OSError:
        pass
    summary = f"rc {rc}"
    numbers: dict[str, Any] = {}
    if step.parse is not None:
        try:
            summary, numbers = step.parse(output, step.json_file or "")
        except Exception as error:  # a parser must not lose the run's other results
            summary = f"output not understood ({type(error).__name__}: {error})"
    if status != "passed" and status != "failed":
        summary = f"{status}; {summary}"
    return Result(
        step.name, step.title, status, rc, round(seconds, 1), limit, summary, numbers,
        _shell(step.command), log, tail(log),
    )  # fmt: skip


def batches(steps: Sequence[Step]) -> list[list[Step]]:
    """The steps in runs of one group (started together) or alone, in order."""
    runs: list[list[Step]] = []
    for step in steps:
        if runs and step.group is not None and runs[-1][-1].group == step.group:
            runs[-1].append(step)
        else:
            runs.append([step])
    return runs


def run_plan(
    steps: Sequence[Step],
    *,
    gpu: bool,
    no_gpu_reason: str,
    env: dict[str, str],
    cwd: str,
    logs: str,
    deadline: float,
    results: list[Result] | None = None,
    on_result: Callable[[list[Result]], None] = lambda results: None,
    say: Callable[[str], None] = print,
) -> list[Result]:
    """Run the steps (a group's together), skipping what cannot run, into ``results``;
    ``on_result`` hears of the list after each step, ``say`` gets a line per step."""
    results = [] if results is None else results

    def record(result: Result) -> None:
        results.append(result)
        say(summary_line(result))
        on_result(results)

    for batch in batches(steps):
        runnable = []
        for step in batch:
            if step.needs_gpu and not gpu:
                record(_skipped(step, NO_GPU, f"{NO_GPU} ({no_gpu_reason})"))
            elif step.needs and shutil.which(step.needs) is None:
                record(_skipped(step, f"skipped: {step.needs} not on PATH"))
            else:
                runnable.append(step)
        if len(runnable) > 1:
            say(f"-- starting together: {', '.join(s.name for s in runnable)}")
        if runnable:
            run_group(runnable, env=env, cwd=cwd, logs=logs, deadline=deadline, on_finish=record)
    return results


def summary_line(result: Result) -> str:
    r = result
    return f"== {r.name:<20} {r.status:<18} rc={r.rc:<4} {r.seconds:6.1f} s  {r.summary}"


# ---------------------------------------------------------------------- the report
def write_report(out: str, header: dict[str, Any], results: Sequence[Result]) -> None:
    """``report.md`` and ``report.json`` in ``out``, replacing earlier ones."""
    data = {**header, "steps": [asdict(r) for r in results]}
    with open(os.path.join(out, "report.json.partial"), "w", encoding="utf-8") as file:
        json.dump(data, file, indent=2, default=str)
    os.replace(os.path.join(out, "report.json.partial"), os.path.join(out, "report.json"))
    lines = [
        "# dlcore GPU check",
        "",
        f"- started: {header['started']}; finished: {header.get('finished', 'still running')}",
        f"- GPU: {header['gpu']}",
        f"- host: {header['host']}; python: {header['python']}; commit: {header['commit']}",
        f"- deadline: {header['deadline_s']} s for the whole run; "
        f"total: {header.get('total_s', '?')} s",
        "",
        "| step | status | rc | seconds | limit | result |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        summary = r.summary.replace("|", "\\|")
        lines.append(
            f"| {r.name} | {r.status} | {r.rc} | {r.seconds:.1f} | {r.limit_s} | {summary} |"
        )
    for r in results:
        lines += ["", f"## {r.name}", "", r.title, "", f"`{r.command}`", ""]
        if r.log is None:
            lines.append(f"{r.status}.")
            continue
        lines += [
            f"Last {TAIL_LINES} lines (all of it: `logs/{r.name}.log`):",
            "",
            "```",
            r.tail.rstrip(),
            "```",
        ]
    with open(os.path.join(out, "report.md"), "w", encoding="utf-8") as file:
        file.write("\n".join(lines) + "\n")


def _commit() -> str:
    try:
        done = subprocess.run(
            ["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        return done.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Check dlcore on a CUDA GPU within a fixed time; see the module docstring.",
    )
    parser.add_argument(
        "--out",
        default=os.environ.get("OUT") or "gpu-check-out",
        help="folder of the report (default: $OUT, else gpu-check-out)",
    )
    parser.add_argument(
        "--deadline",
        type=int,
        default=int(os.environ.get("GPU_CHECK_S") or DEADLINE_S),
        help=f"seconds for the whole run (default: $GPU_CHECK_S, else {DEADLINE_S})",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="act as if there were no GPU: skip every GPU step"
    )
    parser.add_argument("--only", nargs="+", metavar="STEP", help="run these steps only")
    parser.add_argument("--list", action="store_true", help="list the steps and their limits")
    args = parser.parse_args(argv)
    started = time.monotonic()
    deadline = started + args.deadline
    python = sys.executable
    out = os.path.abspath(args.out)
    steps = plan(python, out)
    if args.list:
        for step in steps:
            together = f"  (with the other '{step.group}' steps)" if step.group else ""
            print(f"{step.name:<20} {step.limit_s:>4} s  {step.title}{together}")
        return 0
    if args.only:
        unknown = sorted(set(args.only) - {s.name for s in steps})
        if unknown:
            parser.error(f"unknown steps {unknown}; known: {', '.join(s.name for s in steps)}")
        steps = [s for s in steps if s.name in args.only]
    logs = os.path.join(out, "logs")
    os.makedirs(logs, exist_ok=True)
    # A SIGTERM (the machine's own time running out) ends the run like Ctrl-C: the steps
    # running are stopped, with everything they started, and the report is written.
    signal.signal(signal.SIGTERM, _interrupt)
    site = lay_out_site(REPO)
    results: list[Result] = []
    header: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "host": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs)",
        "python": f"{platform.python_version()} ({python})",
        "commit": _commit(),
        "deadline_s": args.deadline,
    }
    try:
        env = child_environment(site)
        gpu, detail = detect_gpu(python, env, args.dry_run)
        header["gpu"] = detail if gpu else f"none ({detail})"
        header["gpu_found"] = gpu
        print(f"GPU: {header['gpu']}; deadline {args.deadline} s; report in {out}", flush=True)
        run_plan(
            steps,
            gpu=gpu,
            no_gpu_reason=detail,
            env=env,
            cwd=site,
            logs=logs,
            deadline=deadline,
            results=results,
            on_result=lambda results: write_report(out, header, results),
            say=lambda line: print(line, flush=True),
        )
    except KeyboardInterrupt:
        header["interrupted"] = True
        print("interrupted: the report holds the steps that ended", flush=True)
    finally:
        header["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        header["total_s"] = round(time.monotonic() - started, 1)
        header.setdefault("gpu", "not detected (interrupted)")
        write_report(out, header, results)
        shutil.rmtree(site, ignore_errors=True)
    print(f"report: {os.path.join(out, 'report.md')} ({header['total_s']} s)", flush=True)
    failed = [r.name for r in results if r.rc != 0]  # failed, timed out or interrupted
    return 1 if failed or header.get("interrupted") else 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
