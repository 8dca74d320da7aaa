"""Data-parallel training throughput (pytest-benchmark): the medium case's ``fit`` on the
numpy engine, one process of two threads against ``mpiexec -n 2`` processes of one thread
each (``dlcore.benchmark.distributed.measure``).

The epochs are timed inside the launched processes; ``extra_info`` records samples/s of
the best epoch of each configuration (``samples_per_s`` is the two processes' with the
default buckets), the median all-reduce of the gradient and the CPU. The benchmark's own
time is the whole run's, launches included. In the normal test run the case is divided
by ``runner.SMOKE_FACTOR`` and trained for two steps, untimed. Skipped without mpi4py
or ``mpiexec``.
"""

from __future__ import annotations

import importlib.util
import math

import pytest

from dlcore.benchmark import distributed, runner

SMOKE_STEPS = 2


def test_data_parallel_fit(benchmark, bench_full: bool) -> None:
    if importlib.util.find_spec("mpi4py") is None or distributed.find_mpiexec() is None:
        pytest.skip("mpi4py or mpiexec is missing: pip install dlcore[mpi]")
    options = {
        "steps": distributed.DEFAULT_STEPS if bench_full else SMOKE_STEPS,
        "repeats": distributed.DEFAULT_REPEATS if bench_full else 1,
        "scale": 1 if bench_full else runner.SMOKE_FACTOR,
    }
    result = benchmark.pedantic(
        distributed.measure, args=("medium",), kwargs=options, rounds=1, iterations=1
    )
    configurations = result["configurations"]
    rates = {}
    for label, configuration in configurations.items():
        for run in configuration["runs"]:
            bucket = run["bucket_bytes"]
            key = label if configuration["processes"] == 1 else f"{label}_bucket_{bucket}"
            rates[key] = run["samples_per_s"]
    assert all(math.isfinite(rate) and rate > 0 for rate in rates.values()), rates
    parallel = configurations["2x1"]
    benchmark.extra_info.update(
        cpu=result["machine"]["cpu"],
        widths="-".join(map(str, result["case"]["widths"])),
        batch_size=result["case"]["batch_size"],
        steps=result["steps"],
        samples_per_s=parallel["runs"][-1]["samples_per_s"],
        samples_per_s_by_configuration=rates,
        allreduce_ms=parallel["allreduce"]["median_ms"],
    )
