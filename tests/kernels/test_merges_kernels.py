"""Merge kernels, their gradients, accumulate and scale against float64 NumPy formulas.

Blocks are the next power of two of the columns (at most 32) by enough rows for a
warp: 1, 3 and 17 columns take blocks 1, 4 and 32 wide; with ``MAX_BLOCKS`` patched
to 1 the block rows stride over the rows. Shapes stay tiny: the simulator runs one
OS thread per CUDA thread.

Float16 kernels compute in float32 and round once per store; a fold of ``n`` inputs stores
``n - 1`` partial results, so its tolerance (``half_atol``) counts each of them.
"""

from __future__ import annotations

import numpy as np
import pytest
from dlcore.kernels import merges
from half_rounding import half_atol
from numba import cuda

TOLERANCE = {np.float64: 1e-13, np.float32: 2e-6}
DTYPES = [np.float64, np.float32, np.float16]
ELEMENTWISE = ("add", "multiply", "average", "maximum", "minimum")


def dtype_id(value) -> str:
    return getattr(value, "__name__", str(value))


def close(actual: np.ndarray, expected: np.ndarray, dtype, stored=None) -> None:
    """Within the dtype's tolerance; in float16, one rounding per value in ``stored``
    (default: the output alone) on top of the float32 tolerance."""
    if dtype == np.float16:
        float32_atol = TOLERANCE[np.float32] * (1 + np.abs(expected))
        atol = half_atol(*(stored or [expected]), float32_atol=float32_atol)
        np.testing.assert_array_less(np.abs(actual - expected), atol)
        return
    rtol = TOLERANCE[dtype]
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol)


def forward_stores(op: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """What ``merges.merge`` stores on the way to its output, in float64 (see ``half_atol``):
    each partial sum of a sum fold (and the mean), the product once per multiply."""
    X = [x.astype(np.float64) for x in inputs]
    if op in ("add", "average"):
        sums = list(np.cumsum(X, axis=0)[1:])
        return sums + [sums[-1] / len(X)] if op == "average" else sums
    if op == "multiply":
        return [np.prod(X, axis=0)] * (len(X) - 1)
    return [reference(op, inputs)]


def gradient_stores(op: str, n: int, expected: np.ndarray) -> list[np.ndarray]:
    """What ``merges.merge_backward`` stores on the way to one gradient: for multiply, the
    product of ``dY`` and the other ``n - 1`` inputs once per multiply."""
    return [expected] * (n - 1) if op == "multiply" and n > 1 else [expected]


def reference(op: str, inputs: list[np.ndarray]) -> np.ndarray:
    X = [x.astype(np.float64) for x in inputs]
    if op == "concatenate":
        return np.concatenate(X, axis=1)
    if op == "subtract":
        return X[0] - X[1]
    stacked = np.stack(X)
    return {
        "add": stacked.sum(axis=0),
        "multiply": stacked.prod(axis=0),
        "average": stacked.mean(axis=0),
        "maximum": stacked.max(axis=0),
        "minimum": stacked.min(axis=0),
    }[op]


def reference_gradients(op: str, dY: np.ndarray, inputs: list[np.ndarray]) -> list[np.ndarray]:
    dY = dY.astype(np.float64)
    X = [x.astype(np.float64) for x in inputs]
    n = len(X)
    if op == "concatenate":
        bounds = np.cumsum([0] + [x.shape[1] for x in X])
        return [dY[:, bounds[i] : bounds[i + 1]] for i in range(n)]
    if op == "add":
        return [dY] * n
    if op == "subtract":
        return [dY, -dY]
    if op == "average":
        return [dY / n] * n
    if op == "multiply":
        return [dY * np.prod([X[j] for j in range(n) if j != i], axis=0) for i in range(n)]
    Y = reference(op, inputs)
    first = np.argmax(np.stack([x == Y for x in X]), axis=0)  # the first input equal to Y
    return [np.where(first == i, dY, 0.0) for i in range(n)]


def make_inputs(rng, op: str, n: int, N: int, widths, dtype) -> list[np.ndarray]:
    if op != "concatenate":
        widths = [widths[0]] * n
    inputs = [rng.standard_normal((N, F)).astype(dtype) for F in widths]
    if op in ("maximum", "minimum") and n > 1:
        # ties: the first equal input takes the gradient
        inputs[1][0, :] = inputs[0][0, :]
        inputs[-1][-1, :] = inputs[0][-1, :]
    if op == "multiply":
        inputs[0][0, 0] = 0.0  # no division by an input: a zero is fine
    return inputs


def run(op: str, inputs: list[np.ndarray]):
    """Forward and backward on the device; host ``(Y, dY, grads)``."""
    N = inputs[0].shape[0]
    width = sum(x.shape[1] for x in inputs) if op == "concatenate" else inputs[0].shape[1]
    dtype = inputs[0].dtype
    d_inputs = [cuda.to_device(x) for x in inputs]
    d_Y = cuda.device_array((N, width), dtype=dtype)
    merges.merge(op, d_inputs, d_Y)
    dY = np.random.default_rng(7).standard_normal((N, width)).astype(dtype)
    grads = [cuda.device_array_like(x) for x in inputs]
    merges.merge_backward(op, cuda.to_device(dY), d_inputs, d_Y, grads)
    return d_Y.copy_to_host(), dY, [g.copy_to_host() for g in grads]


CASES = [(op, 3, (17,)) for op in ELEMENTWISE] + [
    ("subtract", 2, (3,)),
    ("concatenate", 3, (1, 3, 17)),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize(("op", "n", "widths"), CASES, ids=str)
def test_merge_and_its_gradient(op, n, widths, dtype, rng):
    inputs = make_inputs(rng, op, n, 5, widths, dtype)
    Y, dY, grads = run(op, inputs)
    close(Y, reference(op, inputs), dtype, forward_stores(op, inputs))
    for got, expected in zip(grads, reference_gradients(op, dY, inputs), strict=True):
        close(got, expected, dtype, gradient_stores(op, n, expected))


@pytest.mark.parametrize("op", [*ELEMENTWISE, "concatenate"])
def test_a_single_input(op, rng):
    inputs = make_inputs(rng, op, 1, 3, (3,), np.float64)
    Y, dY, grads = run(op, inputs)
    close(Y, inputs[0], np.float64)
    close(grads[0], dY, np.float64)


@pytest.mark.parametrize("op", ["add", "maximum"])
def test_two_inputs_of_one_column(op, rng):
    inputs = make_inputs(rng, op, 2, 3, (1,), np.float32)
    Y, dY, grads = run(op, inputs)
    close(Y, reference(op, inputs), np.float32)
    for got, expected in zip(grads, reference_gradients(op, dY, inputs), strict=True):
        close(got, expected, np.float32)


@pytest.mark.parametrize("op", ["minimum", "concatenate"])
def test_block_rows_stride_over_the_rows(op, rng, monkeypatch):
    monkeypatch.setattr(merges, "MAX_BLOCKS", 1)
    assert merges.grid_2d(65, 3) == ((1, 1), (4, 64))
    inputs = make_inputs(rng, op, 2, 65, (3, 2), np.float64)
    Y, dY, grads = run(op, inputs)
    close(Y, reference(op, inputs), np.float64)
    for got, expected in zip(grads, reference_gradients(op, dY, inputs), strict=True):
        close(got, expected, np.float64)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape", [(17,), (3, 17)], ids=str)
def test_accumulate_and_scale(shape, dtype, rng):
    dst, src = (rng.standard_normal(shape).astype(dtype) for _ in range(2))
    d_dst = cuda.to_device(dst)
    merges.accumulate(d_dst, cuda.to_device(src))
    close(d_dst.copy_to_host(), dst.astype(np.float64) + src.astype(np.float64), dtype)
    d_src, out = cuda.to_device(src), cuda.device_array(shape, dtype=dtype)
    merges.scale(d_src, -0.3, out)
    close(out.copy_to_host(), -0.3 * src.astype(np.float64), dtype)
    np.testing.assert_array_equal(d_src.copy_to_host(), src)
    merges.scale(d_src, 2.5, d_src)  # in place
    close(d_src.copy_to_host(), 2.5 * src.astype(np.float64), dtype)


def test_grid_2d():
    assert merges.grid_2d(1, 1) == ((1, 1), (1, 32))
    assert merges.grid_2d(5, 17) == ((1, 1), (32, 8))
    assert merges.grid_2d(100, 33) == ((2, 13), (32, 8))
    assert merges.grid_2d(10**6, 1) == ((1, merges.MAX_BLOCKS), (1, 256))
