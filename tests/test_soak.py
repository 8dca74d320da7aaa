"""Soak: many short ``fit`` and ``predict`` calls must not make the process grow.

Not part of the default run: ``make soak`` runs it (``DLCORE_SOAK=1``). ``SOAK_FITS``
(2,000) and ``SOAK_PREDICTS`` (100,000) set the number of measured calls, ``SOAK_ENGINE``
(numpy) the engine. Each part warms up first, then reads the resident memory before and
after its calls and fails when it grew by ``LIMIT_PER_1000_CALLS`` or more per 1,000
calls.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import resource
import sys
import time
from collections.abc import Callable

import numpy as np
import pytest

import dlcore
from dlcore.layers import Dense
from dlcore.models import Sequential

pytestmark = [
    pytest.mark.soak,
    pytest.mark.skipif(
        os.environ.get("DLCORE_SOAK") != "1", reason="a soak test: run it with make soak"
    ),
]

LIMIT_PER_1000_CALLS = 1024  # bytes
FITS = int(os.environ.get("SOAK_FITS", "2000"))
PREDICTS = int(os.environ.get("SOAK_PREDICTS", "100000"))
ENGINE = os.environ.get("SOAK_ENGINE", "numpy")


def _resident_bytes() -> int:
    """The process's resident memory now (Linux), else its peak so far."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # bytes there, KiB elsewhere


def _release_free_memory() -> None:
    """Collect garbage and hand the allocator's free pages back (glibc), so that a reading
    counts the memory still in use, not what malloc keeps for later."""
    gc.collect()
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def _settled_resident_bytes() -> int:
    _release_free_memory()
    return _resident_bytes()


def _growth_per_1000_calls(call: Callable[[], object], calls: int, label: str) -> float:
    """Resident-memory growth per 1,000 calls of ``call``, measured over ``calls`` calls
    after a warm-up of twice as many (at most 20,000), which fills caches and pools (the
    growth of short fits settles after about 2,500 calls)."""
    warmup = min(2 * calls, 20_000)
    for _ in range(warmup // 2):
        call()
    _release_free_memory()  # the first release moves the baseline: it happens before it
    for _ in range(warmup - warmup // 2):
        call()
    before = _settled_resident_bytes()
    started = time.perf_counter()
    for _ in range(calls):
        call()
    seconds = time.perf_counter() - started
    after = _settled_resident_bytes()
    growth = (after - before) * 1000 / calls
    print(
        f"\nsoak {label} on {ENGINE}: {calls} calls in {seconds:.1f} s; resident "
        f"{before / 2**20:.2f} MiB -> {after / 2**20:.2f} MiB; growth {growth:.1f} bytes "
        f"per 1,000 calls (limit {LIMIT_PER_1000_CALLS})"
    )
    return growth


@pytest.fixture
def model() -> Sequential:
    with dlcore.use_backend(ENGINE):
        dlcore.set_random_seed(0)
        model = Sequential(
            [Dense(16, activation="relu", input_shape=(8,)), Dense(3, activation="softmax")]
        )
        model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
        model.get_weights()  # placed on ENGINE
    return model


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    return x, np.eye(3, dtype="float32")[rng.integers(0, 3, size=64)]


def test_short_fits_do_not_grow_memory(model):
    x, y = _data()
    growth = _growth_per_1000_calls(
        lambda: model.fit(x, y, epochs=1, batch_size=32, verbose=0), FITS, "fit"
    )
    assert growth < LIMIT_PER_1000_CALLS


def test_predicts_do_not_grow_memory(model):
    x, _ = _data()
    growth = _growth_per_1000_calls(lambda: model.predict(x[:8]), PREDICTS, "predict")
    assert growth < LIMIT_PER_1000_CALLS
