"""Training throughput of the course model per engine (pytest-benchmark).

Run with ``make bench``; compare engines side by side in the same run.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import dlcore
from dlcore import backends
from dlcore.layers import Dense
from dlcore.models import Sequential

# Timing Numba's CUDA simulator (one OS thread per CUDA thread) would measure nothing.
SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
ENGINES = [
    pytest.param(
        info.name,
        marks=pytest.mark.skipif(
            SIMULATED and info.name == "numba", reason="the numba engine runs in the CUDA simulator"
        ),
    )
    for info in backends.available()
    if info.available
]


@pytest.mark.parametrize("engine_name", ENGINES)
def test_fit_one_epoch_course_model(benchmark, engine_name):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3200, 784)).astype(np.float32)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 3200)]
    with dlcore.use_backend(engine_name):
        dlcore.set_random_seed(0)
        model = Sequential(
            [
                Dense(50, activation="relu", input_shape=(784,)),
                Dense(50, activation="relu"),
                Dense(10, activation="softmax"),
            ]
        )
        model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
        model.fit(x, y, batch_size=32, epochs=1, verbose=0)  # warm-up
        benchmark.extra_info["samples"] = len(x)
        benchmark(model.fit, x, y, batch_size=32, epochs=1, verbose=0)
