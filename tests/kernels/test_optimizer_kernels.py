"""Optimizer kernels against the NumPy reference rules of ``backends/xp_optimizers.py``.

Every variant (each optional buffer present or ``None``) runs a few steps on
buffers of 1, 3 and 1000 elements (four blocks of 256 threads), and once with
a grid smaller than the buffer so that the grid-stride loop wraps.

Each step is compared with the rule run in float64 on the kernel's state before
the step, within a few ulps of the kernel's dtype of the largest term that enters
each output (``step_terms``): on a GPU the kernels' multiply-adds are fused
(``fma.rn``), which rounds differently from NumPy where terms cancel.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from dlcore.backends import xp_optimizers
from dlcore.backends.names import OPTIMIZER_RULES
from dlcore.kernels import optimizers as kernels
from numba import cuda

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


def step_terms(name, before, after, grads, h) -> list[tuple]:
    """Per buffer (the parameters, then each slot), the float64 magnitudes of the terms
    that enter its new value in one step of rule ``name`` from the state ``before``
    (``after`` is the reference's result). A slot's error enters the parameters through
    the update, so the update's terms carry its slot's terms."""
    p, *s = before
    new = after[1:]
    g = np.abs(grads)
    if name == "sgd":
        lr, (velocity,) = h["learning_rate"], s
        if velocity is None:
            return [(p, lr * g), ()]
        momentum = h["momentum"]
        velocity_terms = (momentum * velocity, lr * g)
        return [(p, new[0], *velocity_terms), velocity_terms]
    if name in ("adam", "nadam", "adamax"):
        m_terms = (s[0], (1.0 - h["beta_1"]) * g)
        m_bound = np.abs(s[0]) + (1.0 - h["beta_1"]) * g
    if name == "adam":
        v_terms = (s[1], (1.0 - h["beta_2"]) * g * g)
        v_used = new[2] if s[2] is not None else new[1]
        update = h["alpha"] * m_bound / (np.sqrt(v_used) + h["epsilon"])
        v_max_terms = () if s[2] is None else (s[2], *v_terms)
        return [(p, update), m_terms, v_terms, v_max_terms]
    if name == "nadam":
        v_terms = (s[1], (1.0 - h["beta_2"]) * g * g)
        m_hat = h["m_weight"] * m_bound + h["g_weight"] * g
        v_hat = new[1] / h["v_correction"]
        update = h["learning_rate"] * m_hat / (np.sqrt(v_hat) + h["epsilon"])
        return [(p, update), m_terms, v_terms]
    if name == "adamax":
        u_terms = (h["beta_2"] * s[1], g)
        denominator = h["bias_correction"] * (new[1] + h["epsilon"])
        return [(p, h["learning_rate"] * m_bound / denominator), m_terms, u_terms]
    if name == "adagrad":
        update = h["learning_rate"] * g / np.sqrt(new[0] + h["epsilon"])
        return [(p, update), (s[0], g * g)]
    if name == "rmsprop":
        rho, (velocity, average, buffer) = h["rho"], s
        velocity_terms = (rho * velocity, (1.0 - rho) * g * g)
        average_terms = () if average is None else (rho * average, (1.0 - rho) * g)
        squared_average = 0.0 if average is None else new[1] * new[1]
        denominator = new[0] - squared_average + h["epsilon"]
        # the denominator's own rounding, relative to it, enters the increment
        magnitude = (new[0] + squared_average + h["epsilon"]) / denominator
        increment = h["learning_rate"] * g / np.sqrt(denominator) * magnitude
        if buffer is None:
            return [(p, increment), velocity_terms, average_terms, ()]
        buffer_terms = (h["momentum"] * buffer, increment)
        return [(p, *buffer_terms), velocity_terms, average_terms, buffer_terms]
    raise KeyError(name)


def run_and_compare(rng, name, present, extra, size, dtype, fma_atol, launch=None):
    """Run ``STEPS`` updates with the kernel; check each against the float64 reference."""
    n_state, _, hyper = OPTIMIZERS[name]
    params = rng.standard_normal(size).astype(dtype)
    state = [
        initial_state(rng, name, slot, size, dtype) if present[slot] else None
        for slot in range(n_state)
    ]
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
        before = [d.copy_to_host().astype(np.float64) if d is not None else None for d in device]
        expected = [b.copy() if b is not None else None for b in before]
        grads64 = grads.astype(np.float64)
        reference(np, expected[0], grads64, expected[1:], h)
        kernel(device[0], cuda.to_device(grads), device[1:], h)
        terms = step_terms(name, before, expected, grads64, h)
        for k, (d, want) in enumerate(zip(device, expected, strict=True)):
            if want is None:
                assert d is None
                continue
            got = d.copy_to_host()
            assert got.dtype == dtype
            excess = np.abs(got - want) - fma_atol(*terms[k], dtype=dtype)
            worst = int(np.argmax(excess))
            assert excess[worst] <= 0.0, (step, k, worst, got[worst], want[worst])


@pytest.mark.parametrize("dtype", DTYPES, ids=case_id)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(("name", "present", "extra"), variants(), ids=case_id)
def test_update_matches_reference(name, present, extra, size, dtype, rng, fma_atol):
    run_and_compare(rng, name, present, extra, size, dtype, fma_atol)


def test_every_rule_has_a_launcher():
    assert sorted(kernels.LAUNCHERS) == sorted(OPTIMIZER_RULES)


def test_grid_stride_loop_covers_every_element(rng, fma_atol):
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

    run_and_compare(
        rng, "adam", (True, True, True), {}, 100, np.float64, fma_atol, launch=small_grid_adam
    )


# ---------------------------------------------------------------------- the newer rules
# name: (number of state buffers, which may be None, the step's hyperparameters); each step
# is compared with the float64 reference run from the kernel's state before the step,
# within a relative tolerance of the kernel's dtype (these rules' terms do not cancel
# except Lion's sign argument, whose near-zero elements are left out)
NEWER_RULES = {
    "adamw": (
        3,
        (2,),
        {"alpha": 0.01, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7, "decay": 4e-5},
    ),
    "adadelta": (2, (), {"learning_rate": 0.5, "rho": 0.95, "epsilon": 1e-7}),
    "lion": (1, (), {"learning_rate": 0.01, "beta_1": 0.9, "beta_2": 0.99}),
    "ftrl": (
        2,
        (),
        {"learning_rate": 0.05, "power": 0.5, "l1": 0.01, "l2": 0.02, "shrinkage": 0.01},
    ),
}
NEWER_TOLERANCE = {np.float64: 1e-12, np.float32: 2e-6}


def newer_variants() -> list[tuple[str, tuple[bool, ...]]]:
    cases = []
    for name, (n_state, optional, _) in NEWER_RULES.items():
        for mask in range(2 ** len(optional)):
            present = [True] * n_state
            for bit, slot in enumerate(optional):
                present[slot] = bool(mask >> bit & 1)
            cases.append((name, tuple(present)))
    return cases


def newer_state(rng, name: str, slot: int, size: int, dtype) -> np.ndarray:
    if name == "ftrl" and slot == 0:  # the accumulator starts positive
        return np.full(size, 0.1, dtype=dtype)
    if (name, slot) in {("adamw", 1), ("adamw", 2), ("adadelta", 0), ("adadelta", 1)}:
        return rng.uniform(0.0, 0.01, size).astype(dtype)  # moving squares: non-negative
    return (0.01 * rng.standard_normal(size)).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=case_id)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(("name", "present"), newer_variants(), ids=case_id)
def test_newer_rules_match_the_reference(name, present, size, dtype, rng):
    n_state, _, h = NEWER_RULES[name]
    device = [cuda.to_device(rng.standard_normal(size).astype(dtype))] + [
        cuda.to_device(newer_state(rng, name, slot, size, dtype)) if present[slot] else None
        for slot in range(n_state)
    ]
    for _ in range(STEPS):
        grads = rng.standard_normal(size).astype(dtype)
        before = [d.copy_to_host().astype(np.float64) if d is not None else None for d in device]
        expected = [b.copy() if b is not None else None for b in before]
        xp_optimizers.STEPS[name](np, expected[0], grads.astype(np.float64), expected[1:], h)
        kernels.LAUNCHERS[name](device[0], cuda.to_device(grads), device[1:], h)
        keep = np.ones(size, dtype=bool)
        if name == "lion":
            direction = before[1] * h["beta_1"] + grads * (1.0 - h["beta_1"])
            keep = np.abs(direction) > 1e-4
        floor = np.full(size, 1e-7 if dtype == np.float32 else 1e-14)
        atol = [floor] * len(device)
        if name == "ftrl":  # w = (clip(linear) - linear) / quadratic cancels near +-l1
            quadratic = expected[1] ** h["power"] / h["learning_rate"] + 2 * h["l2"]
            # each power is rounded before their difference cancels
            powers = (expected[1] ** h["power"] + before[1] ** h["power"]) / h["learning_rate"]
            linear_terms = (
                np.abs(before[2])
                + np.abs(grads)
                + np.abs(h["shrinkage"] * before[0])
                + powers * np.abs(before[0])
            )
            linear_error = 8 * np.finfo(dtype).eps * (linear_terms + h["l1"])
            atol = [floor + linear_error / quadratic, floor, floor + linear_error]
        for k, (d, want) in enumerate(zip(device, expected, strict=True)):
            if want is None:
                assert d is None
                continue
            got = d.copy_to_host()
            assert got.dtype == dtype
            bound = NEWER_TOLERANCE[dtype] * np.abs(want) + atol[k]
            excess = (np.abs(got - want) - bound)[keep]
            assert excess.size == 0 or excess.max() <= 0, (k, int(np.argmax(excess)))


@pytest.mark.parametrize("dtype", DTYPES, ids=case_id)
def test_clip_decay_norm_and_moving_average_launchers(dtype, rng):
    size = 1000
    params = rng.standard_normal(size).astype(dtype)
    grads = (3 * rng.standard_normal(size)).astype(dtype)
    tolerance = {"rtol": NEWER_TOLERANCE[dtype], "atol": 1e-7 if dtype == np.float32 else 1e-14}
    # the clipping factor of each range, and of all together
    segments = [(0, 10), (10, 600), (600, 1000)]
    norms = np.array([np.linalg.norm(grads[a:b].astype(np.float64)) for a, b in segments])
    each = cuda.to_device(np.zeros(3, dtype=dtype))
    kernels.gradient_norm_scale(cuda.to_device(grads), segments, 2.0, each, each=True)
    np.testing.assert_allclose(each.copy_to_host(), 2.0 / np.maximum(norms, 2.0), **tolerance)
    total = cuda.to_device(np.zeros(1, dtype=dtype))
    kernels.gradient_norm_scale(cuda.to_device(grads), segments, 2.0, total)
    factor = 2.0 / max(float(np.sqrt(np.sum(norms**2))), 2.0)
    np.testing.assert_allclose(total.copy_to_host(), [factor], **tolerance)
    # decay, scale and clip in one pass
    device_params, out = cuda.to_device(params), cuda.to_device(np.zeros(size, dtype=dtype))
    kernels.clip_and_decay(
        device_params, cuda.to_device(grads), out, scale=total, clipvalue=0.5, decay=0.01
    )
    expected_grads = np.clip(grads.astype(np.float64) * float(total.copy_to_host()[0]), -0.5, 0.5)
    np.testing.assert_allclose(out.copy_to_host(), expected_grads, **tolerance)
    np.testing.assert_allclose(device_params.copy_to_host(), params * (1 - 0.01), **tolerance)
    # the moving average of the EMA
    average = cuda.to_device(params)
    kernels.moving_average(average, cuda.to_device(grads), 0.9)
    np.testing.assert_allclose(average.copy_to_host(), 0.9 * params + 0.1 * grads, **tolerance)
