"""Merges, their gradients, accumulate and scale on every engine, against float64 NumPy.

Forward values are compared with NumPy formulas; gradients with central finite
differences of the same formulas (inputs without ties, where maximum and minimum
are differentiable) and, at ties, with the rule that the first input equal to the
output takes the gradient. Shapes are odd (1, 3 and 17 columns, 5 rows).
"""

from __future__ import annotations

import numpy as np
import pytest
from dlcore.backends.base import Workspace
from dlcore.backends.generic import ArrayAPIEngine
from dlcore.backends.names import MERGES
from test_engine_ops import numerical_gradient

ELEMENTWISE = ("add", "multiply", "average", "maximum", "minimum")
TOLERANCE = {"float64": 1e-13, "float32": 2e-6}
N = 5


def widths(op: str) -> list[int]:
    """Column counts of the inputs that ``op`` is tested with."""
    if op == "concatenate":
        return [1, 3, 17]
    if op == "subtract":
        return [3, 3]
    return [3, 3, 3]


def reference(op: str, inputs: list[np.ndarray]) -> np.ndarray:
    """The merge in float64 NumPy."""
    if op == "concatenate":
        return np.concatenate(inputs, axis=1)
    if op == "subtract":
        return inputs[0] - inputs[1]
    stacked = np.stack(inputs)
    return {
        "add": np.sum,
        "multiply": np.prod,
        "average": np.mean,
        "maximum": np.max,
        "minimum": np.min,
    }[op](stacked, axis=0)


def host_inputs(rng, op: str) -> list[np.ndarray]:
    # distinct magnitudes: no ties, so maximum and minimum are differentiable here
    return [rng.standard_normal((N, F)) + 0.01 * k for k, F in enumerate(widths(op))]


def device(engine, arrays, dtype="float64"):
    return [engine.asarray(a, dtype=dtype) for a in arrays]


def test_every_merge_is_tested():
    assert set(MERGES) == {*ELEMENTWISE, "subtract", "concatenate"}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("op", MERGES)
def test_merge_matches_numpy(engine, rng, op, dtype):
    inputs = [a.astype(dtype) for a in host_inputs(rng, op)]
    Y = engine.merge(op, device(engine, inputs, dtype))
    got = engine.to_numpy(Y)
    assert got.dtype == np.dtype(dtype)
    expected = reference(op, [a.astype(np.float64) for a in inputs])
    np.testing.assert_allclose(got, expected, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])


@pytest.mark.parametrize("op", MERGES)
def test_backprop_merge_matches_finite_differences(engine, rng, op):
    inputs = host_inputs(rng, op)
    upstream = rng.standard_normal(reference(op, inputs).shape)
    d_inputs = device(engine, inputs)
    Y = engine.merge(op, d_inputs)
    grads = engine.backprop_merge(op, engine.asarray(upstream, dtype="float64"), d_inputs, Y)
    assert len(grads) == len(inputs)
    for k, (grad, X) in enumerate(zip(grads, inputs)):

        def objective(v, k=k):
            return float(np.sum(upstream * reference(op, [*inputs[:k], v, *inputs[k + 1 :]])))

        got = engine.to_numpy(grad)
        assert got.shape == X.shape
        np.testing.assert_allclose(got, numerical_gradient(objective, X.copy()), atol=1e-7)


@pytest.mark.parametrize("op", ["maximum", "minimum"])
def test_ties_send_the_gradient_to_the_first_equal_input(engine, rng, op):
    X0, X1, X2 = (rng.standard_normal((3, 17)) for _ in range(3))
    X1[0] = X0[0]  # a tie of the first two, whatever the third
    X2[1] = X1[1]  # a tie of the last two
    X1[2], X2[2] = X0[2], X0[2]  # all three equal
    inputs = [X0, X1, X2]
    upstream = rng.standard_normal((3, 17))
    d_inputs = device(engine, inputs)
    Y = engine.merge(op, d_inputs)
    grads = engine.backprop_merge(op, engine.asarray(upstream, dtype="float64"), d_inputs, Y)
    best = reference(op, inputs)
    first = np.argmax(np.stack([X == best for X in inputs]), axis=0)
    for k, grad in enumerate(grads):
        np.testing.assert_array_equal(engine.to_numpy(grad), np.where(first == k, upstream, 0.0))
    total = sum(engine.to_numpy(grad) for grad in grads)
    np.testing.assert_array_equal(total, upstream)  # every element goes to exactly one input


@pytest.mark.parametrize("op", [*ELEMENTWISE, "concatenate"])
def test_a_single_input_passes_through(engine, rng, op):
    X = rng.standard_normal((N, 3))
    upstream = rng.standard_normal((N, 3))
    d_X = engine.asarray(X, dtype="float64")
    Y = engine.merge(op, [d_X])
    np.testing.assert_array_equal(engine.to_numpy(Y), X)
    engine.assign(Y, engine.asarray(np.zeros((N, 3)), dtype="float64"))
    np.testing.assert_array_equal(engine.to_numpy(d_X), X)  # Y was not the input itself
    (grad,) = engine.backprop_merge(op, engine.asarray(upstream, dtype="float64"), [d_X], d_X)
    np.testing.assert_array_equal(engine.to_numpy(grad), upstream)


@pytest.mark.parametrize("with_workspace", [False, True], ids=["new", "workspace"])
@pytest.mark.parametrize("op", MERGES)
def test_gradients_share_memory_with_nothing(engine, rng, op, with_workspace):
    inputs = host_inputs(rng, op)
    upstream = rng.standard_normal(reference(op, inputs).shape)
    workspace = Workspace(engine) if with_workspace else None
    d_inputs = device(engine, inputs)
    dY = engine.asarray(upstream, dtype="float64")
    Y = engine.merge(op, d_inputs, workspace=workspace)
    merged = engine.to_numpy(Y)
    grads = engine.backprop_merge(op, dY, d_inputs, Y, workspace=workspace)
    for k, grad in enumerate(grads):
        engine.assign(grad, engine.asarray(np.full(grad.shape, 100.0 + k), dtype="float64"))
    np.testing.assert_array_equal(engine.to_numpy(dY), upstream)
    np.testing.assert_array_equal(engine.to_numpy(Y), merged)
    for X, d_X in zip(inputs, d_inputs):
        np.testing.assert_array_equal(engine.to_numpy(d_X), X)
    for k, (grad, X) in enumerate(zip(grads, inputs)):
        np.testing.assert_array_equal(engine.to_numpy(grad), np.full(X.shape, 100.0 + k))


@pytest.mark.parametrize("op", MERGES)
def test_a_workspace_gives_the_same_results_and_is_reused(engine, rng, op):
    inputs = host_inputs(rng, op)
    upstream = rng.standard_normal(reference(op, inputs).shape)
    d_inputs = device(engine, inputs)
    dY = engine.asarray(upstream, dtype="float64")
    Y = engine.merge(op, d_inputs)
    fresh = [engine.to_numpy(Y)] + [
        engine.to_numpy(g) for g in engine.backprop_merge(op, dY, d_inputs, Y)
    ]
    workspace = Workspace(engine)
    runs = []
    for _ in range(2):
        Y = engine.merge(op, d_inputs, workspace=workspace)
        runs.append([Y, *engine.backprop_merge(op, dY, d_inputs, Y, workspace=workspace)])
        for got, expected in zip(runs[-1], fresh):
            np.testing.assert_array_equal(engine.to_numpy(got), expected)
    if type(engine).merge is not ArrayAPIEngine.merge:  # the generic engine allocates
        assert all(a is b for a, b in zip(*runs))


@pytest.mark.parametrize("shape", [(N, 17), (7,)], ids=str)
def test_accumulate_adds_in_place(engine, rng, shape):
    dst, src = rng.standard_normal(shape), rng.standard_normal(shape)
    # a copy: the NumPy engine may share memory with what it is given
    d_dst = engine.asarray(dst.copy(), dtype="float64")
    d_src = engine.asarray(src, dtype="float64")
    engine.accumulate(d_dst, d_src)
    engine.accumulate(d_dst, d_src)
    np.testing.assert_allclose(engine.to_numpy(d_dst), dst + 2 * src, rtol=1e-15, atol=1e-15)
    np.testing.assert_array_equal(engine.to_numpy(d_src), src)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("with_workspace", [False, True], ids=["new", "workspace"])
def test_scale_returns_a_new_array(engine, rng, dtype, with_workspace):
    A = rng.standard_normal((N, 3)).astype(dtype)
    d_A = engine.asarray(A, dtype=dtype)
    workspace = Workspace(engine) if with_workspace else None
    scaled = engine.scale(d_A, -0.3, workspace=workspace)
    got = engine.to_numpy(scaled)
    assert got.dtype == np.dtype(dtype)
    expected = -0.3 * A.astype(np.float64)
    np.testing.assert_allclose(got, expected, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])
    np.testing.assert_array_equal(engine.to_numpy(d_A), A)
    engine.assign(scaled, engine.asarray(np.zeros((N, 3)), dtype=dtype))
    np.testing.assert_array_equal(engine.to_numpy(d_A), A)
