"""Trainers in processes of their own (dlcore.benchmark.workers) train exactly as in-process."""

from __future__ import annotations

import math

import numpy as np
import pytest
from dlcore.backends import cpu_bf16

import dlcore
from dlcore.benchmark import runner
from dlcore.benchmark.cases import Case
from dlcore.benchmark.workers import ProcessTrainer

CASE = Case("t", (12, 8, 4), 4)
STEPS = 3


def test_an_engine_in_its_own_process_trains_as_it_does_in_this_one():
    worker = ProcessTrainer("engine", "numpy", CASE, STEPS, seed=5)
    try:
        losses = [worker.epoch() for _ in range(2)]
        assert worker.last_seconds > 0
        weights = worker.get_weights()
        assert worker.peak_flops(16) > 0
    finally:
        worker.close()
    x, y = CASE.data(STEPS, 5)
    trainer = runner.DlcoreTrainer("numpy", CASE, x, y, runner.initial_weights(CASE, 5))
    dlcore.set_random_seed(5)
    expected = [trainer.epoch() for _ in range(2)]
    np.testing.assert_allclose(losses, expected, rtol=1e-6)
    assert all(math.isfinite(loss) for loss in losses)
    for got, want in zip(weights, trainer.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_a_trainer_that_cannot_be_built_reports_the_childs_error():
    with pytest.raises(
        RuntimeError,
        match=r"(?s)tensorflow failed in its benchmark process.*"
        r"unknown engine 'tensorflow'",
    ):
        ProcessTrainer("engine", "tensorflow", CASE, STEPS, seed=0)


def test_an_engine_in_its_own_process_trains_and_reports_a_mixed_precision():
    worker = ProcessTrainer("engine", "numpy", CASE, STEPS, seed=5, precision="mixed_bfloat16")
    try:
        assert math.isfinite(worker.epoch())
        found = worker.arithmetic()
        weights = worker.get_weights()
    finally:
        worker.close()
    if cpu_bf16.status()[0]:  # bfloat16 products on AVX-512 BF16 or AMX, through oneDNN
        expected = runner.Arithmetic(
            "bfloat16 products, float32 output (float32 arrays)", ("float32", "float32"), None
        )
    else:
        expected = runner.Arithmetic(
            "float32 (no bfloat16 kernels)",
            ("float32", "float32"),
            "the numpy engine has no bfloat16 kernels: its layers ran in float32",
        )
    assert found == expected
    assert all(w.dtype == np.float32 for w in weights)
