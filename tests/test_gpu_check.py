"""``make gpu-check`` (tools/gpu_check.py, tools/gpu_probe.py) without a GPU.

The driver's dry run must finish in seconds and say that every GPU step was
skipped for want of a GPU; the probe's pure pieces (errors, tolerances, shapes)
are checked here with NumPy, so that the rare GPU window is not spent on their bugs.
"""

from __future__ import annotations

import ctypes.util
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def _load(name: str) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gpu_check = _load("gpu_check")
gpu_probe = _load("gpu_probe")

GPU_STEPS = [s.name for s in gpu_check.plan(sys.executable, "out") if s.needs_gpu]
ALL_STEPS = [s.name for s in gpu_check.plan(sys.executable, "out")]


def _run_driver(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    return subprocess.run(
        [sys.executable, str(TOOLS / "gpu_check.py"), "--out", str(tmp_path / "out"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def _check_report(out: Path, reason: str) -> dict:
    markdown = (out / "report.md").read_text()
    report = json.loads((out / "report.json").read_text())
    steps = {step["name"]: step for step in report["steps"]}
    assert list(steps) == ALL_STEPS
    for name in ALL_STEPS:
        assert f"| {name} |" in markdown and f"## {name}" in markdown
    assert steps["versions"]["status"] == "passed", steps["versions"]["tail"]
    assert steps["versions"]["numbers"]["python"] == ".".join(map(str, sys.version_info[:3]))
    for name in GPU_STEPS:
        assert steps[name]["status"] == "skipped: no GPU"
        assert steps[name]["rc"] == 0
        assert steps[name]["summary"] == f"skipped: no GPU ({reason})"
    assert report["gpu_found"] is False
    return report


def test_the_dry_run_skips_every_gpu_step_and_writes_the_report(tmp_path):
    start = time.monotonic()
    done = _run_driver(tmp_path, "--dry-run")
    assert done.returncode == 0, done.stdout + done.stderr
    assert time.monotonic() - start < 30
    _check_report(tmp_path / "out", "--dry-run")
    for name in ALL_STEPS:  # one line per step on stdout
        assert any(line.startswith(f"== {name} ") for line in done.stdout.splitlines()), name


@pytest.mark.skipif(
    shutil.which("nvidia-smi") is not None or ctypes.util.find_library("cuda") is not None,
    reason="a CUDA driver is here: the plain run would use the GPU",
)
def test_without_a_gpu_the_plain_run_finds_none_and_skips(tmp_path):
    done = _run_driver(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    _check_report(tmp_path / "out", "neither nvidia-smi nor libcuda is here")


def test_a_step_is_stopped_at_its_limit_and_none_starts_past_the_deadline(tmp_path):
    def step(name: str, seconds: float, limit: int, needs_gpu: bool = False, **kwargs):
        code = f"import time; print('started', flush=True); time.sleep({seconds})"
        command = [sys.executable, "-c", code]
        return gpu_check.Step(name, name, command, limit, needs_gpu=needs_gpu, **kwargs)

    steps = [
        step("quick", 0, 5, min_s=0, group="g"),
        step("hangs", 60, 1, min_s=0, group="g"),
        step("too-late", 0, 5, min_s=30),
        step("no-gpu", 0, 5, needs_gpu=True, min_s=0),
        step("no-tool", 0, 5, min_s=0, needs="no-such-tool-here"),
    ]
    lines: list[str] = []
    start = time.monotonic()
    results = gpu_check.run_plan(
        steps,
        gpu=False,
        no_gpu_reason="test",
        env=dict(os.environ),
        cwd=str(tmp_path),
        logs=str(tmp_path),
        deadline=time.monotonic() + 20,
        say=lines.append,
    )
    assert time.monotonic() - start < 15
    by_name = {r.name: r for r in results}
    assert by_name["quick"].status == "passed" and by_name["quick"].rc == 0
    assert by_name["hangs"].status == "timeout after 1 s" and by_name["hangs"].rc == 124
    assert "started" in by_name["hangs"].tail
    assert by_name["too-late"].status.startswith("skipped: deadline (")
    assert by_name["no-gpu"].status == "skipped: no GPU"
    assert by_name["no-tool"].status == "skipped: no-such-tool-here not on PATH"
    assert "-- starting together: quick, hangs" in lines
    assert len([line for line in lines if line.startswith("== ")]) == len(steps)


def test_pytest_and_sanitizer_summaries_are_parsed():
    verbose = (
        "tests/x.py::test_a[numba] PASSED          [ 50%]\n"
        "tests/x.py::test_b[numba] FAILED          [100%]\n"
        "tests/x.py::test_c[numba] \n"
    )
    summary, numbers = gpu_check.parse_pytest(
        verbose + "FAILED tests/x.py::test_b[numba] - AssertionError: 1 != 2\n"
        "========= 2 failed, 120 passed, 4 skipped, 1 error in 81.20s (0:01:21) =========\n"
    )
    assert summary == "2 failed, 120 passed, 4 skipped, 1 error in 81.20s (0:01:21)"
    assert numbers == {
        "failed": 2,
        "passed": 120,
        "skipped": 4,
        "errors": 1,
        "pytest_seconds": 81.2,
        "failed_tests": ["tests/x.py::test_b[numba]"],
    }
    # cut off by the step's limit: the outcomes so far
    summary, numbers = gpu_check.parse_pytest(verbose)
    assert summary == "no pytest summary line; so far: 1 passed, 1 failed"
    assert numbers == {"passed": 1, "failed": 1}
    summary, numbers = gpu_check.parse_sanitizer(
        "sanitize run done: 11 families\n"
        "========= RACECHECK SUMMARY: 3 hazards displayed (0 errors, 3 warnings)\n"
        "========= ERROR SUMMARY: 0 errors\n"
    )
    assert numbers == {
        "errors": 0,
        "hazards": 3,
        "hazard_errors": 0,
        "hazard_warnings": 3,
        "families": 11,
    }
    assert summary.startswith("0 errors, 3 hazards")


def test_the_result_files_of_the_steps_are_summarised(tmp_path):
    versions = tmp_path / "versions.json"
    found = {"numba": "0.61.0", "cupy": "missing (ImportError: x)", "gpu": "NVIDIA H200 (cc 9.0)"}
    versions.write_text(json.dumps(found))
    summary, numbers = gpu_check.parse_versions("", str(versions))
    assert "numba 0.61.0" in summary and "cupy missing;" in summary
    assert "gpu NVIDIA H200 (cc 9.0)" in summary and numbers["cupy"].startswith("missing (")
    probe = tmp_path / "probe.json"
    checks = [gpu_probe.judge("gemm NN", 1e-6, 1e-5), gpu_probe.judge("sum", 0.0, 1e-12)]
    probe.write_text(json.dumps({"checks": checks, "complete": True}))
    summary, _ = gpu_check.parse_probe("", str(probe))
    assert summary == "2 of 2 checks pass; closest to its tolerance: gemm NN (1.0e-06 of 1.0e-05)"
    checks.append(gpu_probe.plain(gpu_probe.judge("take_rows", math.inf, 0.0)))
    probe.write_text(json.dumps({"checks": checks, "complete": False}))
    summary, numbers = gpu_check.parse_probe("", str(probe))
    assert summary == "2 of 3 checks pass (cut short: see the tail); FAILED: take_rows"
    assert numbers["failed"] == ["take_rows"]
    assert gpu_check.parse_probe("", str(tmp_path / "absent.json"))[0].startswith("no probe")
    timings = tmp_path / "timings.json"
    timings.write_text(
        json.dumps(
            {
                "gemm_cube": {"M": 4096, "gflops": 31000.4, "cupy_gflops": 45000.0},
                "adam": {"params": 21_020_682, "gbytes_per_s": 3900.2},
                "launch": {"microseconds": 12.34},
                "complete": True,
            }
        )
    )
    summary, _ = gpu_check.parse_timings("", str(timings))
    assert summary == (
        "gemm 4096^3 31000 GFLOP/s (cupy 45000); Adam 21.0M params 3900 GB/s; empty launch 12.3 us"
    )


def test_the_mixed_precision_bench_shares_the_float32_benchs_time_and_is_summarised(tmp_path):
    steps = {step.name: step for step in gpu_check.plan("python3", str(tmp_path))}
    float32, mixed = steps["bench"], steps["bench-mixed"]
    assert ALL_STEPS[-2:] == ["bench", "bench-mixed"]
    assert float32.limit_s + mixed.limit_s == 240 and mixed.min_s <= mixed.limit_s
    assert "--precision" not in float32.command
    command = " ".join(mixed.command)
    assert "--precision mixed_float16" in command and "--engines cupy numba --peers" in command
    assert mixed.json_file != float32.json_file and mixed.json_file in mixed.command
    found = tmp_path / "bench-mixed.json"
    row = {"case": "large", "runner": "cupy", "samples_per_second": 9e4, "ms_per_step": 1.1}
    found.write_text(
        json.dumps(
            {
                "results": [],
                "all_targets_met": True,
                "mixed": [{**row, "precision": "mixed_float16", "computes": "float16"}],
            }
        )
    )
    summary, numbers = gpu_check.parse_bench("", str(found))
    assert summary == "1 mixed-precision measurements (no targets)"
    assert numbers["mixed"]["mixed_float16/large/cupy"]["computes"] == "float16"
    found.write_text(json.dumps({"results": [row], "all_targets_met": False}))
    summary, numbers = gpu_check.parse_bench("", str(found))
    assert summary == "1 measurements; targets NOT all met" and "mixed" not in numbers


# ---------------------------------------------------------------------- the probe's pieces
def test_max_relative_error_is_normwise_and_refuses_non_finite_results():
    ref = np.array([[1.0, -4.0], [2.0, 0.0]])
    assert gpu_probe.max_relative_error(ref, ref) == 0.0
    assert gpu_probe.max_relative_error(ref + [[0, 0], [0, 0.04]], ref) == pytest.approx(0.01)
    assert gpu_probe.max_relative_error(np.array([0.5]), np.zeros(1)) == 0.5
    assert gpu_probe.max_relative_error(np.array([np.nan, 1.0]), np.ones(2)) == math.inf
    assert gpu_probe.max_relative_error(np.ones(3), np.ones(2)) == math.inf
    assert gpu_probe.max_relative_error(3.0, 2.0) == 0.5


def test_the_accumulation_tolerance_passes_float32_sums_and_catches_a_lost_term():
    assert gpu_probe.accumulation_tolerance(1) == 8 * 2.0**-24
    assert gpu_probe.accumulation_tolerance(4099) == pytest.approx(8 * math.sqrt(4099) * 2.0**-24)
    with pytest.raises(ValueError):
        gpu_probe.accumulation_tolerance(0)
    rng = np.random.default_rng(0)
    for M, K, N in ((33, 4099, 65), (40, 10, 50), (20, 2051, 30)):
        a = rng.standard_normal((M, K), dtype=np.float32)
        b = rng.standard_normal((K, N), dtype=np.float32)
        ref = a.astype(np.float64) @ b.astype(np.float64)
        tol = gpu_probe.accumulation_tolerance(K)
        # float32 accumulation, in BLAS's order and in the plainest order of all
        assert gpu_probe.max_relative_error(a @ b, ref) < tol / 4
        sequential = np.zeros((M, N), np.float32)
        for k in range(K):
            sequential += np.outer(a[:, k], b[k])
        assert gpu_probe.max_relative_error(sequential, ref) < tol / 4
        # one product term lost from one element fails
        lost = (a @ b).copy()
        lost[M // 2, N // 2] -= a[M // 2, K // 2] * b[K // 2, N // 2]
        assert gpu_probe.max_relative_error(lost, ref) > tol


def test_gemm_operands_are_stored_for_every_transpose_mode():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((3, 5)), rng.standard_normal((5, 2))
    for trans_a, trans_b in gpu_probe.TRANSPOSES:
        A, B = gpu_probe.stored_operands(a, b, trans_a, trans_b)
        assert A.flags.c_contiguous and B.flags.c_contiguous
        np.testing.assert_array_equal((A.T if trans_a else A) @ (B.T if trans_b else B), a @ b)
    modes = [gpu_probe.mode_name(*t) for t in gpu_probe.TRANSPOSES]
    assert modes == ["NN", "TN", "NT", "TT"]


def test_layer_gemms_are_the_products_of_a_training_step():
    from dlcore.benchmark import cases

    case = cases.CASES["tiny"]
    shapes = gpu_probe.layer_gemms(case.widths, case.batch_size)
    assert [s[0] for s in shapes] == [
        "L0 fwd",
        "L0 dW",
        "L1 fwd",
        "L1 dW",
        "L1 dX",
        "L2 fwd",
        "L2 dW",
        "L2 dX",
    ]
    assert shapes[0] == ("L0 fwd", 32, 784, 50, False, False)
    assert shapes[1] == ("L0 dW", 784, 32, 50, True, False)
    assert shapes[4] == ("L1 dX", 32, 50, 50, False, True)
    # every weight takes part in the forward and the weight-gradient product
    weights = sum(i * o for i, o in zip(case.widths[:-1], case.widths[1:]))
    forward = sum(gpu_probe.gemm_flops(M, K, N) for label, M, K, N, *_ in shapes if "fwd" in label)
    assert forward == 2 * case.batch_size * weights
    assert gpu_probe.adam_bytes(cases.CASES["large"].weights) == 7 * 4 * 21_020_682


def test_the_references_and_the_dropout_tolerance():
    rng = np.random.default_rng(2)
    z = 3 * rng.standard_normal((50, 7))
    p = gpu_probe.softmax64(z)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    y = np.eye(7)[rng.integers(0, 7, 50)]
    expected = np.mean(-np.log(p[y == 1]))
    assert gpu_probe.crossentropy64(p, y) == pytest.approx(expected, rel=1e-12)
    assert gpu_probe.crossentropy_logits64(z, y) == pytest.approx(expected, rel=1e-12)
    # unnormalised rows are normalised, as Keras does
    assert gpu_probe.crossentropy64(2 * p, y) == pytest.approx(expected, rel=1e-12)
    n, rate = 10_000_000, gpu_probe.DROPOUT_RATE
    tol = gpu_probe.kept_fraction_tolerance(n, rate)
    kept = rng.binomial(n, 1 - rate) / n
    assert abs(kept - (1 - rate)) / (1 - rate) < tol < 0.002
    with pytest.raises(ValueError):
        gpu_probe.kept_fraction_tolerance(10, 1.0)


def test_a_check_that_is_not_finite_fails_and_results_are_plain_json():
    assert gpu_probe.judge("x", 1e-7, 1e-6)["passed"] is True
    assert gpu_probe.judge("x", math.inf, 1e-6)["passed"] is False
    assert gpu_probe.judge("x", 0.0, 0.0)["passed"] is True
    data = gpu_probe.plain({"a": np.float32(0.5), "b": [np.int64(3), math.inf], "c": (True,)})
    assert json.loads(json.dumps(data)) == {"a": 0.5, "b": [3, None], "c": [True]}
    assert gpu_probe.format_check(gpu_probe.judge("gemm NN", 1e-7, 1e-6)).startswith("PASS gemm NN")


def test_best_seconds_times_back_to_back_calls_after_a_warm_up():
    calls = []
    seconds, per_sample = gpu_probe.best_seconds(
        lambda: calls.append(time.sleep(0.001)), lambda: None, min_sample=0.005, samples=2
    )
    assert 0.0009 < seconds < 0.05
    assert per_sample >= 2
    assert len(calls) >= 1 + 2 * per_sample


@pytest.mark.slow
@pytest.mark.cudasim
def test_the_probe_runs_its_checks_on_the_simulated_numba_engine(tmp_path):
    """``gpu_probe.py shapes --small``: every check's code path, at tiny sizes, in Numba's
    CUDA simulator (about half a minute on two cores), so that the GPU run finds no bug
    of the probe's own."""
    pytest.importorskip("numba")
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1", "NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS": "0"}
    out = tmp_path / "probe.json"
    done = subprocess.run(
        [sys.executable, "-W", "error", str(TOOLS / "gpu_probe.py"), "shapes", "--small"]
        + ["--json", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    checks = json.loads(out.read_text())["checks"]
    names = " ".join(check["name"] for check in checks)
    for part in ("gemm NN", "gemm TN", "gemm NT", "gemm TT", "sum_all", "column_sums"):
        assert part in names
    for part in ("softmax", "crossentropy", "take_rows", "dropout kept fraction"):
        assert part in names
    assert all(check["passed"] for check in checks), done.stdout


def test_the_graph_probe_compares_histories_and_its_step_is_summarised(tmp_path):
    plain = {"loss": [0.5, 0.25], "accuracy": [0.5, 0.75]}
    assert gpu_probe.histories_match(plain, dict(plain)) == {
        "identical": True,
        "max_relative_difference": 0.0,
    }
    moved = {"loss": [0.5, 0.25 * (1 + 1e-6)], "accuracy": [0.5, 0.75]}
    match = gpu_probe.histories_match(plain, moved)
    assert not match["identical"] and match["max_relative_difference"] == pytest.approx(1e-6)
    assert gpu_probe.histories_match(plain, {"loss": [0.5]})["max_relative_difference"] == math.inf
    found = tmp_path / "graphs.json"
    row = {"plain_samples_per_s": 90000.4, "graphs_samples_per_s": 150000.0, "captures": 2}
    found.write_text(
        json.dumps(
            {
                "cases": {
                    "fused": {**row, "identical": True},
                    "nodes": {**row, "identical": False},
                },
                "complete": False,
            }
        )
    )
    summary, _ = gpu_check.parse_graphs("", str(found))
    assert summary == (
        "fused 90000 -> 150000 samples/s, 2 captured, same history; "
        "nodes 90000 -> 150000 samples/s, 2 captured, HISTORIES DIFFER (cut short: see the tail)"
    )
    step = {s.name: s for s in gpu_check.plan("python3", str(tmp_path))}["graphs"]
    assert step.command[-3:] == ["graphs", "--json", step.json_file] and step.limit_s == 45


def test_data_parallel_steps_run_two_processes_per_gpu_engine(tmp_path):
    steps = {step.name: step for step in gpu_check.plan("/venv/bin/python3", str(tmp_path))}
    for engine in ("cupy", "numba"):
        step = steps[f"data-parallel-{engine}"]
        assert step.command[:3] == ["/venv/bin/mpiexec", "-n", "2"] and step.needs_gpu
        assert step.needs == "/venv/bin/mpiexec" and engine in step.command
    report = tmp_path / "data-parallel-cupy.json"
    report.write_text(
        json.dumps(
            {
                "transport": "NCCLCommunicator",
                "max_weight_difference": 2e-7,
                "seconds_per_epoch": 0.5,
                "seconds_per_epoch_alone": 0.8,
            }
        )
    )
    summary, numbers = gpu_check.parse_data_parallel("", str(report))
    assert summary == "NCCLCommunicator: weights within 2e-07, 0.5 s/epoch (alone 0.8)"
    assert numbers["transport"] == "NCCLCommunicator"
    assert gpu_check.parse_data_parallel("", str(tmp_path / "missing.json"))[0] == "no report"
