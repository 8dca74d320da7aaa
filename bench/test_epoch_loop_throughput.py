"""A ``fit`` epoch of the small cases on the NumPy engine with the epoch as one compiled call
(``Engine.dense_stack_epoch``) and with the steps run one by one, side by side
(pytest-benchmark, group ``epoch-loop-<case>``).

The per-step epochs are the same fit with a callback that has a batch hook, which
is what sends ``fit`` through the per-step loop; both train the same numbers to the
bit. ``extra_info`` records ms per step; compare the two rows of a group for the
speed-up. Timing off (the normal test run) trains the cases divided by 16 for two
batches, untimed, as ``test_fit_throughput.py`` does.
"""

from __future__ import annotations

import math

import pytest
from dlcore.backends import cpu_jit

import dlcore
from dlcore.benchmark import runner
from dlcore.benchmark.cases import CASES

ROUNDS = 9
SMOKE_STEPS = 2

pytestmark = pytest.mark.skipif(
    not cpu_jit.stack_available(), reason="Numba or SciPy is not installed"
)


class _BatchHook(dlcore.callbacks.Callback):
    """A batch hook that does nothing: the epoch runs step by step."""

    def on_train_batch_begin(self, batch, logs=None):
        return None


@pytest.mark.parametrize("loop", ["epoch_call", "per_step"])
@pytest.mark.parametrize("case_name", ["tiny", "small"])
def test_fit_epoch_loop(benchmark, bench_full: bool, case_name: str, loop: str) -> None:
    case = CASES[case_name] if bench_full else CASES[case_name].scaled(runner.SMOKE_FACTOR)
    steps = runner.PROTOCOL_STEPS if bench_full else SMOKE_STEPS
    x, y = case.data(steps)
    trainer = runner.DlcoreTrainer("numpy", case, x, y, runner.initial_weights(case, seed=0))
    callbacks = [_BatchHook()] if loop == "per_step" else []

    def epoch() -> float:
        history = trainer.model.fit(
            x, y, batch_size=case.batch_size, epochs=1, verbose=0, callbacks=callbacks
        )
        return float(history.history["loss"][-1])

    benchmark.group = f"epoch-loop-{case_name}"
    loss = benchmark.pedantic(epoch, rounds=ROUNDS, warmup_rounds=1, iterations=1)
    assert math.isfinite(loss), f"{loop} trained {case_name} to a loss of {loss}"
    benchmark.extra_info.update(loop=loop, steps=steps, batch_size=case.batch_size)
    if benchmark.stats is not None:  # None when timing is off
        benchmark.extra_info["ms_per_step"] = benchmark.stats.stats.median / steps * 1e3
