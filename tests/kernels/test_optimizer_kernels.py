"""Optimizer kernels against the NumPy reference rules of ``backends/xp_optimizers.py``.

Every variant (each optional buffer present or ``None``) runs a few steps on
buffers of 1, 3 and 1000 elements (four blocks of 256 threads), and once with
a grid smaller than the buffer so that the grid-stride loop wraps.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from dlcore.backends import xp_optimizers
from dlcore.backends.names import OPTIMIZER_RULES
from dlcore.kernels import optimizers as kernels
from numba import cuda

TOLERANCE = {np.float64: 1e-13, np.float32: 1e-6}
SIZES = (1, 3, 1000)
DTYPES = (np.float64, np.float32)
STEPS = 3

# name: (number of state buffers, which of them may be None, hyperparameters)
OPTIMIZERS = {
    "sgd": (1, (0,), {"learning_rate": 0.1, "momentum": 0.9}),
    "adam": (3, (2,), {"learning_rate": 0.01, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7}),
    "rmsprop": (
        3,
        (1, 2),
        {"learning_rate": 0.01, "rho": 0.9, "momentum": 0.5, "epsilon": 1e-7},
    ),
    "adagrad": (1, (), {"learning_rate": 0.05, "epsilon": 1e-7}),
    "adamax": (2, (), {"learning_rate": 0.01, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7}),
    "nadam": (2, (), {"learning_rate": 0.01, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7}),
}


def variants() -> list[tuple[str, tuple[bool, ...], dict]]:
    """Every optimizer with every combination of its optional buffers, and SGD's Nesterov."""
    cases = []
    for name, (n_state, optional, _) in OPTIMIZERS.items():
        for mask in range(2 ** len(optional)):
            present = [True] * n_state
            for bit, slot in enumerate(optional):
                present[slot] = bool(mask >> bit & 1)
            extras = [{"nesterov": False}, {"nesterov": True}] if name == "sgd" else [{}]
            if name == "sgd" and not present[0]:
                extras = [{"nesterov": False}]
            cases += [(name, tuple(present), extra) for extra in extras]
    return cases


def case_id(value) -> str:
    if isinstance(value, tuple):
        return "".join("1" if p else "0" for p in value)
    if isinstance(value, dict):
        return "nesterov" if value.get("nesterov") else "-"
    return getattr(value, "__name__", str(value))


def step_hyperparameters(name: str, hyper: dict, present: tuple[bool, ...], step: int) -> dict:
    """The hyperparameters of rule ``name`` at ``step``, as the optimizer computes them."""
    h = dict(hyper)
    beta_1, beta_2 = hyper.get("beta_1", 0.0), hyper.get("beta_2", 0.0)
    if name == "sgd" and not present[0]:
        h["momentum"] = 0.0
    if name == "adam":
        h["alpha"] = hyper["learning_rate"] * math.sqrt(1.0 - beta_2**step) / (1.0 - beta_1**step)
        del h["learning_rate"]
    if name == "adamax":
        h["bias_correction"] = 1.0 - beta_1**step
    if name == "nadam":
        # a momentum schedule: mu_t = beta_1 * (1 - 0.5 * 0.96 ** (0.004 * t))
        def mu(t: int) -> float:
            return beta_1 * (1.0 - 0.5 * 0.96 ** (0.004 * t))

        product = math.prod(mu(t) for t in range(1, step + 1))
        h.update(
            m_weight=mu(step + 1) / (1.0 - product * mu(step + 1)),
            g_weight=(1.0 - mu(step)) / (1.0 - product),
            v_correction=1.0 - beta_2**step,
        )
    return h


def initial_state(rng, name: str, slot: int, size: int, dtype) -> np.ndarray:
    if name == "adagrad":
        return np.full(size, 0.1, dtype=dtype)
    if name == "adam" and slot == 2:  # v_max starts at zero, like v
        return np.zeros(size, dtype=dtype)
    if (name, slot) in {("adam", 1), ("nadam", 1), ("rmsprop", 0), ("adamax", 1)}:
        return rng.uniform(0.0, 0.01, size).astype(dtype)  # second moments are non-negative
    return (0.01 * rng.standard_normal(size)).astype(dtype)


def run_both(rng, name, present, extra, size, dtype, launch=None):
    """Run ``STEPS`` updates with the kernel and the reference; return both results."""
    n_state, _, hyper = OPTIMIZERS[name]
    params = rng.standard_normal(size).astype(dtype)
    state = [
        initial_state(rng, name, slot, size, dtype) if present[slot] else None
        for slot in range(n_state)
    ]
    expected = [params.copy()] + [s.copy() if s is not None else None for s in state]
    device = [cuda.to_device(params)] + [
        cuda.to_device(s) if s is not None else None for s in state
    ]
    reference = xp_optimizers.STEPS[name]
    kernel = launch or kernels.LAUNCHERS[name]
    for step in range(1, STEPS + 1):
        grads = rng.standard_normal(size).astype(dtype)
        if step == 2:
            grads[0] = 0.0
        h = {**step_hyperparameters(name, hyper, present, step), **extra}
        reference(np, expected[0], grads, expected[1:], h)
        kernel(device[0], cuda.to_device(grads), device[1:], h)
    actual = [d.copy_to_host() if d is not None else None for d in device]
    return actual, expected


@pytest.mark.parametrize("dtype", DTYPES, ids=case_id)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(("name", "present", "extra"), variants(), ids=case_id)
def test_update_matches_reference(name, present, extra, size, dtype, rng):
    actual, expected = run_both(rng, name, present, extra, size, dtype)
    for got, want in zip(actual, expected, strict=True):
        if want is None:
            assert got is None
            continue
        assert got.dtype == dtype
        np.testing.assert_allclose(got, want, rtol=TOLERANCE[dtype], atol=0)


def test_every_rule_has_a_launcher():
    assert sorted(kernels.LAUNCHERS) == sorted(OPTIMIZER_RULES)


def test_grid_stride_loop_covers_every_element(rng):
    """One block of 32 threads over 100 elements: each thread updates four of them."""

    def small_grid_adam(params, grads, slots, h):
        f = np.float64
        kernels._amsgrad_kernel()[1, 32](
            params,
            grads,
            *slots,
            f(h["alpha"]),
            f(1.0 - h["beta_1"]),
            f(1.0 - h["beta_2"]),
            f(h["epsilon"]),
        )

    actual, expected = run_both(
        rng, "adam", (True, True, True), {}, 100, np.float64, launch=small_grid_adam
    )
    for got, want in zip(actual, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=0)
