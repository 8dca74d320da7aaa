"""Training throughput per engine and case (pytest-benchmark): one ``model.fit`` epoch.

Each benchmark builds the case's model on one engine from the shared initial weights
(``dlcore.benchmark.runner``), trains a warm-up epoch and times ``ROUNDS`` epochs of
``PROTOCOL_STEPS`` batches; ``extra_info`` records samples/s of the median epoch.
``make bench`` saves a baseline, ``make bench-compare`` fails when an epoch takes 11%
longer than in the baseline (throughput 10% lower). In the normal test run the same
benchmarks train the cases divided by 16 for two batches, untimed; ``engine`` is every
engine that runs here (``conftest.py``).
"""

from __future__ import annotations

import math

import pytest

from dlcore.benchmark import runner
from dlcore.benchmark.cases import CASES

ROUNDS = 3  # timed epochs; the large case takes minutes per epoch on a CPU
SMOKE_STEPS = 2


@pytest.mark.parametrize("case_name", list(CASES))
def test_fit_epoch(benchmark, bench_full: bool, engine: str, case_name: str) -> None:
    case = CASES[case_name] if bench_full else CASES[case_name].scaled(runner.SMOKE_FACTOR)
    steps = runner.PROTOCOL_STEPS if bench_full else SMOKE_STEPS
    x, y = case.data(steps)
    trainer = runner.DlcoreTrainer(engine, case, x, y, runner.initial_weights(case, seed=0))
    loss = benchmark.pedantic(trainer.epoch, rounds=ROUNDS, warmup_rounds=1, iterations=1)
    assert math.isfinite(loss), f"{engine} trained {case_name} to a loss of {loss}"
    benchmark.extra_info.update(
        widths="-".join(map(str, case.widths)),
        batch_size=case.batch_size,
        steps=steps,
        samples=steps * case.batch_size,
    )
    if benchmark.stats is not None:  # None when timing is off
        median = benchmark.stats.stats.median
        benchmark.extra_info["samples_per_s"] = steps * case.batch_size / median
        benchmark.extra_info["ms_per_step"] = median / steps * 1e3
