"""Loss values and gradients of the generic engine (``dlcore.backends.xp_losses``).

Values are compared with float64 NumPy formulas written out here from the Keras 3
definitions; gradients with central finite differences of those formulas. Every
check runs on NumPy, on ``array_api_compat.numpy`` (the wrapper CuPy is used through)
and on ``array_api_strict`` with its simulated non-CPU device pinned to the 2023.12
standard, so any function outside the standard or any mixing of host arrays with
engine arrays fails.
"""

from __future__ import annotations

from collections.abc import Callable

import array_api_compat.numpy
import array_api_strict as xps
import numpy as np
import pytest
from dlcore.backends import xp_losses
from dlcore.backends.names import LOSSES

EPS = 1e-7  # Keras's backend epsilon
N, O = 5, 4
STRICT_DEVICE = xps.Device("device1")
STRICT_ARRAY = type(xps.asarray(0.0))
SPARSE = "sparse_categorical_crossentropy"


# ---------------------------------------------------------------------- engines
@pytest.fixture(params=["numpy", "array_api_compat.numpy", "array_api_strict"])
def xp(request):
    if request.param == "numpy":
        yield np
    elif request.param == "array_api_compat.numpy":
        # The wrapped namespace CuPy is used through, here over NumPy.
        yield array_api_compat.numpy
    else:
        with xps.ArrayAPIStrictFlags(api_version="2023.12"):
            yield xps


def to_xp(xp, a: np.ndarray):
    if xp is not xps:
        return np.asarray(a)
    return xps.asarray(a, device=STRICT_DEVICE)


def to_np(a) -> np.ndarray:
    if not isinstance(a, STRICT_ARRAY):
        assert isinstance(a, np.ndarray), f"expected an array, received {type(a)}"
        return a
    assert a.device == STRICT_DEVICE
    return np.from_dlpack(a.to_device(xps.Device("CPU_DEVICE")))


# ---------------------------------------------------------------------- references (float64)
def hinge_labels(Y):
    return 2.0 * Y - 1.0 if np.all((Y == 0) | (Y == 1)) else Y


def l2_normalize(X):
    return X / np.sqrt(np.maximum(np.sum(X**2, axis=1, keepdims=True), EPS**2))


def log_softmax(Z):
    m = Z.max(axis=1, keepdims=True)
    return Z - m - np.log(np.exp(Z - m).sum(axis=1, keepdims=True))


def ref_cce(P, Y):
    Q = np.clip(P / P.sum(axis=1, keepdims=True), EPS, 1 - EPS)
    return -(Y * np.log(Q)).sum(axis=1)


def ref_bce(P, Y):
    C = np.clip(P, EPS, 1 - EPS)
    return np.mean(-(Y * np.log(C) + (1 - Y) * np.log(1 - C)), axis=1)


REFERENCE: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "mean_squared_error": lambda P, Y: np.mean((Y - P) ** 2, axis=1),
    "mean_absolute_error": lambda P, Y: np.mean(np.abs(Y - P), axis=1),
    "mean_absolute_percentage_error": lambda P, Y: (
        100 * np.mean(np.abs(Y - P) / np.maximum(np.abs(Y), EPS), axis=1)
    ),
    "mean_squared_logarithmic_error": lambda P, Y: np.mean(
        (np.log(np.maximum(P, EPS) + 1) - np.log(np.maximum(Y, EPS) + 1)) ** 2, axis=1
    ),
    "squared_hinge": lambda P, Y: np.mean(np.maximum(1 - hinge_labels(Y) * P, 0) ** 2, axis=1),
    "hinge": lambda P, Y: np.mean(np.maximum(1 - hinge_labels(Y) * P, 0), axis=1),
    "categorical_hinge": lambda P, Y: np.maximum(
        np.max((1 - Y) * P, axis=1) - np.sum(Y * P, axis=1) + 1, 0
    ),
    "log_cosh": lambda P, Y: np.mean(np.log(np.cosh(P - Y)), axis=1),
    "categorical_crossentropy": ref_cce,
    SPARSE: lambda P, labels: ref_cce(P, np.eye(P.shape[1])[labels]),
    "binary_crossentropy": ref_bce,
    "kl_divergence": lambda P, Y: np.sum(
        np.clip(Y, EPS, 1) * np.log(np.clip(Y, EPS, 1) / np.clip(P, EPS, 1)), axis=1
    ),
    "poisson": lambda P, Y: np.mean(P - Y * np.log(P + EPS), axis=1),
    "cosine_similarity": lambda P, Y: -np.sum(l2_normalize(Y) * l2_normalize(P), axis=1),
}

LOGIT_REFERENCE: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "categorical_crossentropy": lambda Z, Y: -(Y * log_softmax(Z)).sum(axis=1),
    SPARSE: lambda Z, labels: -log_softmax(Z)[np.arange(Z.shape[0]), labels],
    "binary_crossentropy": lambda Z, Y: np.mean(np.logaddexp(0, Z) - Z * Y, axis=1),
}


def reference_loss(name: str, P: np.ndarray, Y: np.ndarray, from_logits: bool) -> float:
    table = LOGIT_REFERENCE if from_logits else REFERENCE
    return float(np.mean(table[name](P, Y)))


def finite_difference(name, P, Y, from_logits, h):
    grad = np.zeros_like(P)
    for index in np.ndindex(P.shape):
        step = np.zeros_like(P)
        step[index] = h
        plus = reference_loss(name, P + step, Y, from_logits)
        minus = reference_loss(name, P - step, Y, from_logits)
        grad[index] = (plus - minus) / (2 * h)
    return grad


# ---------------------------------------------------------------------- inputs
# Each case keeps every element of Y_pred away from kinks and clip boundaries, so
# that finite differences are exact to rounding; several include elements deep
# inside a clipped region, where the gradient must be zero.


def away_from(P, kink, distance=0.1, shift=0.3):
    """Push elements of ``P`` within ``distance`` of ``kink`` (same shape) by ``shift``."""
    return np.where(np.abs(P - kink) < distance, P + shift, P)


def one_hot(labels):
    return np.eye(O)[labels]


def case_regression(rng):
    return rng.normal(size=(N, O)), rng.normal(size=(N, O))


def case_absolute(rng):
    Y = rng.normal(size=(N, O))
    offsets = rng.uniform(0.1, 1.0, size=(N, O)) * rng.choice([-1.0, 1.0], size=(N, O))
    return Y + offsets, Y


def case_mape(rng):
    Y = rng.normal(size=(N, O))
    Y = np.where(np.abs(Y) < 0.2, 0.5, Y)
    offsets = rng.uniform(0.1, 1.0, size=(N, O)) * rng.choice([-1.0, 1.0], size=(N, O))
    return Y + offsets, Y


def case_mape_tiny_labels(rng):
    # |y| below epsilon: Keras divides by epsilon instead.
    Y = rng.choice([0.0, 3e-8, -5e-8], size=(N, O))
    P = rng.uniform(0.2, 2.0, size=(N, O)) * rng.choice([-1.0, 1.0], size=(N, O))
    return P, Y


def case_msle(rng):
    P = rng.uniform(0.1, 3.0, size=(N, O))
    P[0, 1] = -0.5  # clipped to epsilon: zero gradient
    P[3, 2] = -0.2
    Y = rng.uniform(0.0, 3.0, size=(N, O))
    Y[2, 0] = -1.0
    return P, Y


def case_hinge(rng):
    Y = rng.choice([-1.0, 1.0], size=(N, O))
    P = rng.normal(scale=1.5, size=(N, O))
    return away_from(Y * P, 1.0) * Y, Y


def case_hinge_binary(rng):
    Y = rng.choice([0.0, 1.0], size=(N, O))
    Y[0, :2] = [0.0, 1.0]
    signs = 2.0 * Y - 1.0
    P = rng.normal(scale=1.5, size=(N, O))
    return away_from(signs * P, 1.0) * signs, Y


def case_hinge_mixed(rng):
    # A -1 among 0/1 labels: Keras leaves such labels as they are.
    Y = rng.choice([0.0, 1.0], size=(N, O))
    Y[0, 0] = -1.0
    P = rng.normal(scale=1.5, size=(N, O))
    P = np.where(Y == 0, P, away_from(Y * P, 1.0) * Y)
    return P, Y


def case_categorical_hinge(rng):
    labels = rng.integers(0, O, size=N)
    Y = one_hot(labels)
    P = rng.normal(size=(N, O))
    P = np.where(Y == 0, away_from(P, 0.0), P)  # (1 - y) * p must not tie with the zero
    P[0, labels[0]] = 6.0  # margin inactive: zero gradient for that row
    P[1] = -rng.uniform(0.2, 1.0, size=O)  # the largest (1 - y) * p is the 0 of the target
    P[1, labels[1]] = 0.4
    rows = np.arange(N)
    margin = np.max((1 - Y) * P, axis=1) - P[rows, labels] + 1
    P[rows, labels] += np.where(np.abs(margin) < 0.1, 0.3, 0.0)
    return P, Y


def case_log_cosh(rng):
    P, Y = case_regression(rng)
    P[1, 1] = Y[1, 1] + 30.0  # large error: the stable form must not overflow
    return P, Y


def case_cce(rng):
    labels = rng.integers(0, O, size=N)
    P = rng.uniform(0.05, 1.0, size=(N, O))  # unnormalised rows: Keras normalises
    P[3] = [0.5, -0.3, 0.4, 0.6]  # a negative share is clipped up to epsilon
    P[4] = [2.0, -0.4, -0.3, 0.1]  # 2.0 / 1.4 > 1 - epsilon is clipped down
    labels[3], labels[4] = 1, 3
    return P, one_hot(labels)


def case_cce_soft(rng):
    return rng.uniform(0.05, 1.0, size=(N, O)), rng.dirichlet(np.ones(O), size=N)


def case_sparse(rng):
    return rng.uniform(0.05, 1.0, size=(N, O)), rng.integers(0, O, size=N)


def case_logits_one_hot(rng):
    return rng.normal(scale=2.0, size=(N, O)), one_hot(rng.integers(0, O, size=N))


def case_logits_soft(rng):
    # Soft targets that do not sum to one: the gradient is softmax * sum(y) - y.
    return rng.normal(scale=2.0, size=(N, O)), rng.uniform(0.0, 1.0, size=(N, O))


def case_sparse_logits(rng):
    return rng.normal(scale=2.0, size=(N, O)), rng.integers(0, O, size=N)


def case_bce(rng):
    P = rng.uniform(0.05, 0.95, size=(N, O))
    P[1, 2] = 1.3  # clipped: zero gradient
    P[2, 0] = -0.2
    return P, rng.uniform(0.0, 1.0, size=(N, O))


def case_bce_logits(rng):
    Z = rng.normal(scale=3.0, size=(N, O))
    Z[0, 0], Z[1, 3] = 800.0, -800.0  # exp(800) overflows in a naive form
    return Z, rng.uniform(0.0, 1.0, size=(N, O))


def case_kl(rng):
    Y = rng.uniform(0.05, 1.0, size=(N, O))
    Y[0, 0], Y[1, 1] = 0.0, 1.2  # clipped into [epsilon, 1]
    P = rng.uniform(0.05, 0.95, size=(N, O))
    P[2, 3], P[3, 1] = 1.5, -0.3  # clipped: zero gradient
    return P, Y


def case_poisson(rng):
    return rng.uniform(0.1, 3.0, size=(N, O)), rng.poisson(1.5, size=(N, O)).astype(float)


def case_cosine(rng):
    P, Y = case_regression(rng)
    Y[2] = 0.0  # a zero target row: loss 0 and zero gradient
    return P, Y


def case_cosine_tiny_pred(rng):
    # Every row of P has a norm below epsilon, where Keras clamps the norm.
    return 1e-9 * rng.normal(size=(N, O)), rng.normal(size=(N, O))


# (id, loss name, from_logits, inputs, finite-difference step)
CASES = [
    ("mse", "mean_squared_error", False, case_regression, 1e-6),
    ("mae", "mean_absolute_error", False, case_absolute, 1e-6),
    ("mape", "mean_absolute_percentage_error", False, case_mape, 1e-6),
    ("mape_tiny_labels", "mean_absolute_percentage_error", False, case_mape_tiny_labels, 1e-6),
    ("msle", "mean_squared_logarithmic_error", False, case_msle, 1e-6),
    ("squared_hinge", "squared_hinge", False, case_hinge, 1e-6),
    ("squared_hinge_binary", "squared_hinge", False, case_hinge_binary, 1e-6),
    ("hinge", "hinge", False, case_hinge, 1e-6),
    ("hinge_binary", "hinge", False, case_hinge_binary, 1e-6),
    ("hinge_mixed", "hinge", False, case_hinge_mixed, 1e-6),
    ("categorical_hinge", "categorical_hinge", False, case_categorical_hinge, 1e-6),
    ("log_cosh", "log_cosh", False, case_log_cosh, 1e-6),
    ("cce", "categorical_crossentropy", False, case_cce, 1e-6),
    ("cce_soft", "categorical_crossentropy", False, case_cce_soft, 1e-6),
    ("cce_logits", "categorical_crossentropy", True, case_logits_one_hot, 1e-6),
    ("cce_logits_soft", "categorical_crossentropy", True, case_logits_soft, 1e-6),
    ("sparse", SPARSE, False, case_sparse, 1e-6),
    ("sparse_logits", SPARSE, True, case_sparse_logits, 1e-6),
    ("bce", "binary_crossentropy", False, case_bce, 1e-6),
    ("bce_logits", "binary_crossentropy", True, case_bce_logits, 1e-6),
    ("kl", "kl_divergence", False, case_kl, 1e-6),
    ("poisson", "poisson", False, case_poisson, 1e-6),
    ("cosine", "cosine_similarity", False, case_cosine, 1e-6),
    ("cosine_tiny_pred", "cosine_similarity", False, case_cosine_tiny_pred, 1e-11),
]
CASE_PARAMS = [pytest.param(*case[1:], id=case[0]) for case in CASES]


def make_inputs(build, seed=0):
    return build(np.random.default_rng(seed))


def on_engine(xp, P, Y, dtype=np.float64):
    Y_engine = Y.astype(np.int64) if Y.ndim == 1 else Y.astype(dtype)
    return to_xp(xp, P.astype(dtype)), to_xp(xp, Y_engine)


# ---------------------------------------------------------------------- tests
def test_every_loss_has_a_case_and_a_reference():
    assert set(REFERENCE) == set(LOSSES)
    assert {case[1] for case in CASES} == set(LOSSES)
    assert {case[1] for case in CASES if case[2]} == set(LOGIT_REFERENCE)


@pytest.mark.parametrize("name, from_logits, build, h", CASE_PARAMS)
def test_loss_value_matches_reference(xp, name, from_logits, build, h):
    P, Y = make_inputs(build)
    value = xp_losses.loss(xp, name, *on_engine(xp, P, Y), from_logits=from_logits)
    host = to_np(value)
    assert host.shape == ()  # a 0-d array, not a NumPy scalar
    assert host.dtype == np.float64
    np.testing.assert_allclose(host, reference_loss(name, P, Y, from_logits), rtol=1e-12)


@pytest.mark.parametrize("name, from_logits, build, h", CASE_PARAMS)
def test_loss_gradient_matches_finite_differences(xp, name, from_logits, build, h):
    P, Y = make_inputs(build)
    grad = to_np(xp_losses.backprop_loss(xp, name, *on_engine(xp, P, Y), from_logits=from_logits))
    assert grad.shape == (N, O)
    assert grad.dtype == np.float64
    expected = finite_difference(name, P, Y, from_logits, h)
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "name, build, zero_at",
    [
        ("msle", case_msle, [(0, 1), (3, 2)]),
        ("bce", case_bce, [(1, 2), (2, 0)]),
        ("kl", case_kl, [(2, 3), (3, 1)]),
        ("cce", case_cce, [(3, slice(None))]),  # its target share is clipped
        ("categorical_hinge", case_categorical_hinge, [(0, slice(None))]),
        ("cosine", case_cosine, [(2, slice(None))]),
    ],
)
def test_gradient_is_zero_where_clipped_or_inactive(xp, name, build, zero_at):
    loss_name = {case[0]: case[1] for case in CASES}[name]
    P, Y = make_inputs(build)
    grad = to_np(xp_losses.backprop_loss(xp, loss_name, *on_engine(xp, P, Y)))
    for index in zero_at:
        np.testing.assert_array_equal(grad[index], 0.0)
    assert np.count_nonzero(grad) > 0


@pytest.mark.parametrize("name", ["hinge", "squared_hinge"])
def test_hinge_converts_binary_labels_only(xp, name):
    P, Y = make_inputs(case_hinge_binary)
    binary = xp_losses.loss(xp, name, *on_engine(xp, P, Y))
    signed = xp_losses.loss(xp, name, *on_engine(xp, P, 2.0 * Y - 1.0))
    np.testing.assert_allclose(to_np(binary), to_np(signed), rtol=1e-14)

    mixed = Y.copy()
    mixed[0, 0] = -1.0  # no longer all 0/1: used as given, zeros contribute a margin of 1
    value = to_np(xp_losses.loss(xp, name, *on_engine(xp, P, mixed)))
    unconverted = np.maximum(1 - mixed * P, 0) ** (2 if name == "squared_hinge" else 1)
    np.testing.assert_allclose(value, unconverted.mean(), rtol=1e-12)


def test_log_cosh_is_stable_for_huge_errors(xp):
    P = np.full((2, 3), 1000.0)
    P[1] = -1000.0
    value = to_np(xp_losses.loss(xp, "log_cosh", *on_engine(xp, P, np.zeros((2, 3)))))
    np.testing.assert_allclose(value, 1000.0 - np.log(2.0), rtol=1e-14)
    grad = to_np(xp_losses.backprop_loss(xp, "log_cosh", *on_engine(xp, P, np.zeros((2, 3)))))
    np.testing.assert_allclose(grad, np.sign(P) / 6.0, rtol=1e-14)


def test_from_logits_is_ignored_by_losses_without_logits(xp):
    P, Y = make_inputs(case_regression)
    name = "mean_squared_error"
    with_logits = xp_losses.loss(xp, name, *on_engine(xp, P, Y), from_logits=True)
    np.testing.assert_allclose(to_np(with_logits), reference_loss(name, P, Y, False), rtol=1e-12)


@pytest.mark.parametrize("labels_as_int", [False, True])
def test_fused_softmax_gradient_is_the_logits_chain_rule(xp, labels_as_int):
    Z, Y = make_inputs(case_logits_one_hot)
    labels = np.argmax(Y, axis=1)
    P = np.exp(log_softmax(Z))
    target = labels if labels_as_int else Y
    fused = to_np(xp_losses.softmax_crossentropy_gradient(xp, *on_engine(xp, P, target)))
    name = SPARSE if labels_as_int else "categorical_crossentropy"
    chained = to_np(xp_losses.backprop_loss(xp, name, *on_engine(xp, Z, target), from_logits=True))
    np.testing.assert_allclose(fused, chained, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(fused, (P - Y) / N, rtol=1e-12)

    # Also the probability form of the loss followed by the softmax Jacobian.
    dP = to_np(xp_losses.backprop_loss(xp, name, *on_engine(xp, P, target)))
    through_softmax = P * (dP - np.sum(dP * P, axis=1, keepdims=True))
    np.testing.assert_allclose(fused, through_softmax, rtol=1e-9, atol=1e-15)


def test_fused_sigmoid_gradient_is_the_logits_chain_rule(xp):
    Z, Y = make_inputs(case_logits_soft)
    P = 1.0 / (1.0 + np.exp(-Z))
    fused = to_np(xp_losses.sigmoid_crossentropy_gradient(xp, *on_engine(xp, P, Y)))
    Z_engine, Y_engine = on_engine(xp, Z, Y)
    chained = to_np(
        xp_losses.backprop_loss(xp, "binary_crossentropy", Z_engine, Y_engine, from_logits=True)
    )
    np.testing.assert_allclose(fused, chained, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(fused, (P - Y) / (N * O), rtol=1e-12)

    dP = to_np(xp_losses.backprop_loss(xp, "binary_crossentropy", *on_engine(xp, P, Y)))
    np.testing.assert_allclose(fused, dP * P * (1 - P), rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("name, from_logits, build, h", CASE_PARAMS)
def test_float32_smoke(xp, name, from_logits, build, h):
    P, Y = make_inputs(build)
    P32, Y32 = on_engine(xp, P, Y, dtype=np.float32)
    value = to_np(xp_losses.loss(xp, name, P32, Y32, from_logits=from_logits))
    grad = to_np(xp_losses.backprop_loss(xp, name, P32, Y32, from_logits=from_logits))
    assert value.shape == () and value.dtype == np.float32
    assert grad.shape == (N, O) and grad.dtype == np.float32
    P32_host = P.astype(np.float32).astype(np.float64)  # the float32 inputs, exactly
    Y_host = Y if Y.ndim == 1 else Y.astype(np.float32).astype(np.float64)
    expected = reference_loss(name, P32_host, Y_host, from_logits)
    np.testing.assert_allclose(value, expected, rtol=1e-4, atol=1e-6)
    P64, Y64 = on_engine(xp, P32_host, Y_host)
    grad64 = to_np(xp_losses.backprop_loss(xp, name, P64, Y64, from_logits=from_logits))
    scale = np.max(np.abs(grad64))
    np.testing.assert_allclose(grad, grad64, rtol=1e-3, atol=1e-5 * scale)


@pytest.mark.parametrize("function", [xp_losses.loss, xp_losses.backprop_loss])
def test_unknown_name_raises_key_error_listing_names(function):
    P = np.zeros((2, 3))
    with pytest.raises(KeyError, match=r"unknown loss 'huber'; available: mean_squared_error"):
        function(np, "huber", P, P)
    with pytest.raises(KeyError, match="unknown loss 'huber'"):
        function(np, "huber", P, P, from_logits=True)


# ---------------------------------------------------------------------- through every engine
# The same cases through the engine interface, so every engine (``pytest --engine NAME``)
# is held to the references whatever implements its losses.
def _engine_inputs(engine, P, Y):
    labels = Y.ndim == 1
    return (
        engine.asarray(P, dtype="float64"),
        engine.asarray(Y, dtype="int64" if labels else "float64"),
    )


@pytest.mark.parametrize("name, from_logits, build, h", CASE_PARAMS)
def test_engine_loss_and_gradient_match_reference(engine, name, from_logits, build, h):
    P, Y = make_inputs(build)
    P_engine, Y_engine = _engine_inputs(engine, P, Y)
    value = engine.to_numpy(engine.loss(name, P_engine, Y_engine, from_logits=from_logits))
    np.testing.assert_allclose(value, reference_loss(name, P, Y, from_logits), rtol=1e-12)
    grad = engine.backprop_loss(name, P_engine, Y_engine, from_logits=from_logits)
    expected = finite_difference(name, P, Y, from_logits, h)
    np.testing.assert_allclose(engine.to_numpy(grad), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("labels_as_int", [False, True])
def test_engine_fused_gradients_equal_the_logits_gradients(engine, labels_as_int):
    rng = np.random.default_rng(5)
    Z = rng.normal(size=(N, O))
    labels = rng.integers(0, O, N)
    Y = labels if labels_as_int else one_hot(labels)
    Z_engine, Y_engine = _engine_inputs(engine, Z, Y)
    P = engine.activation("softmax", Z_engine)
    fused = engine.to_numpy(engine.backprop_softmax_crossentropy(P, Y_engine))
    name = SPARSE if labels_as_int else "categorical_crossentropy"
    chain = engine.to_numpy(engine.backprop_loss(name, Z_engine, Y_engine, from_logits=True))
    np.testing.assert_allclose(fused, chain, rtol=1e-12, atol=1e-15)
    targets = engine.asarray((rng.random((N, O)) > 0.5).astype(float), dtype="float64")
    S = engine.activation("sigmoid", Z_engine)
    fused = engine.to_numpy(engine.backprop_sigmoid_crossentropy(S, targets))
    chain = engine.backprop_loss("binary_crossentropy", Z_engine, targets, from_logits=True)
    np.testing.assert_allclose(fused, engine.to_numpy(chain), rtol=1e-12, atol=1e-15)
