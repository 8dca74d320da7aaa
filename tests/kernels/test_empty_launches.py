"""Launchers given arrays with a zero-sized dimension launch no empty grid.

A grid with a zero dimension is invalid on a GPU (the launch fails) but runs nothing
in the simulator, so each launch here is recorded and its grid checked; where the
output is empty nothing is launched at all, and where it is not (sums over no rows,
a product over ``K = 0``), it still holds the empty result.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from dlcore.kernels import (
    activations,
    dense_backward,
    dropout,
    gemm,
    losses,
    memory,
    merges,
    optimizers,
    prelu,
    reductions,
    softmax,
)
from numba import config as numba_config
from numba import cuda

pytestmark = pytest.mark.skipif(
    not numba_config.ENABLE_CUDASIM, reason="records launches through the simulator's kernels"
)


@pytest.fixture
def launches(monkeypatch):
    """The grid of every kernel launched during the test, as 3-tuples."""
    from numba.cuda.simulator import kernel

    grids: list[tuple[int, ...]] = []
    configure = kernel.FakeCUDAKernel.__getitem__

    def recording(self, configuration):
        configured = configure(self, configuration)
        grids.append(tuple(self.grid_dim))
        return configured

    monkeypatch.setattr(kernel.FakeCUDAKernel, "__getitem__", recording)
    yield grids
    assert all(min(grid) >= 1 for grid in grids), grids


def device(shape, dtype=np.float64, fill=1.0):
    return cuda.to_device(np.full(shape, fill, dtype=dtype))


SHAPES = [(0, 3), (4, 0), (0, 0)]


@pytest.mark.parametrize("shape", SHAPES)
def test_column_sums(shape, launches):
    out = device(shape[1], fill=np.nan)
    dense_backward.column_sums(device(shape), out)
    np.testing.assert_array_equal(out.copy_to_host(), np.zeros(shape[1]))
    if shape[1] == 0:
        assert launches == []


@pytest.mark.parametrize("shape", SHAPES)
def test_fused_column_sums(shape, launches):
    N, O = shape
    db = device(O, fill=np.nan)
    dZ = device(shape)
    dense_backward.activation_gradient_and_bias("tanh", device(shape), device(shape), dZ, db)
    np.testing.assert_array_equal(db.copy_to_host(), np.zeros(O))
    dense_backward.softmax_gradient_and_bias(device(shape), device(shape), dZ, db)
    np.testing.assert_array_equal(db.copy_to_host(), np.zeros(O))
    dalpha = device(O, fill=np.nan)
    prelu.prelu_backward(device(shape), device(shape), device(O), dZ, dalpha)
    np.testing.assert_array_equal(dalpha.copy_to_host(), np.zeros(O))


@pytest.mark.parametrize("shape", SHAPES)
def test_elementwise_and_row_launchers(shape, launches):
    N, O = shape
    X, Y = device(shape), device(shape)
    activations.forward("relu", X, Y)
    activations.backward("relu", X, X, Y)
    softmax.softmax(X, Y)
    softmax.log_softmax(X, Y)
    softmax.softmax_backward(X, X, Y)
    softmax.softmax_crossentropy_gradient(X, X, Y)
    softmax.softmax_crossentropy_gradient(X, cuda.to_device(np.zeros(N, np.int64)), Y)
    softmax.sigmoid_crossentropy_gradient(X, X, Y)
    prelu.prelu_forward(X, device(O), Y)
    prelu.prelu_backward(X, X, device(O), Y, None)
    memory.fill(X, 2.0)
    memory.copy(X, Y)
    memory.take_rows(X, cuda.to_device(np.zeros(N, np.int64)), Y)
    merges.merge("add", [X, X], Y)
    merges.merge_backward("maximum", X, [X, X], Y, [device(shape), device(shape)])
    merges.merge("concatenate", [X, X], device((N, 2 * O)))
    merges.scale(X, 2.0, Y)
    merges.accumulate(X, Y)
    reductions.backprop_penalty(X, Y, l1=0.1, l2=0.1)
    generator = dropout.DropoutGenerator(1, threads=32)
    dropout.dropout(generator, X, Y, device(shape), rate=0.5)
    dropout.backprop_dropout(X, X, Y)
    for name in ("mean_squared_error", "hinge", "categorical_crossentropy"):
        losses.loss_gradient(name, X, X, Y)
    assert launches == []  # every output above is empty


@pytest.mark.parametrize("shape", SHAPES)
def test_reductions_write_the_empty_result(shape, launches):
    N, O = shape
    X = device(shape)
    out = device(1, fill=np.nan)
    reductions.sum_all(X, out)
    assert out.copy_to_host()[0] == 0.0
    reductions.penalty(X, out, l1=0.1, l2=0.1)
    assert out.copy_to_host()[0] == 0.0
    reductions.count_correct("binary", X, X, out)
    assert out.copy_to_host()[0] == 0.0
    reductions.mean_all(X, out)
    assert math.isnan(out.copy_to_host()[0])
    if N == 0:
        reductions.count_correct("categorical", X, X, out)
        assert out.copy_to_host()[0] == 0.0
        losses.loss("mean_squared_error", X, X, out)
        assert math.isnan(out.copy_to_host()[0])  # the mean over no samples


@pytest.mark.parametrize(("M", "N", "K"), [(0, 3, 2), (3, 0, 2), (3, 2, 0)])
def test_gemm(M, N, K, launches):
    A, B = device((M, K)), device((K, N))
    C = device((M, N), fill=np.nan)
    gemm.gemm(A, B, C)
    np.testing.assert_array_equal(C.copy_to_host(), np.zeros((M, N)))
    Z, Y = device((M, N), fill=np.nan), device((M, N), fill=np.nan)
    gemm.dense_forward(A, B, device(N, fill=0.0), "relu", Z, Y)
    np.testing.assert_array_equal(Y.copy_to_host(), np.zeros((M, N)))
    if M * N == 0:
        assert launches == []


@pytest.mark.parametrize("rule", sorted(optimizers.LAUNCHERS))
def test_optimizers_on_an_empty_buffer(rule, launches):
    from test_optimizer_kernels import NEWER_RULES, OPTIMIZERS, step_hyperparameters

    if rule in NEWER_RULES:
        n_state, _, h = NEWER_RULES[rule]
        present = (True,) * n_state
    else:
        n_state, _, hyper = OPTIMIZERS[rule]
        present = (True,) * n_state
        h = {**step_hyperparameters(rule, hyper, present, 1), "nesterov": False}
    optimizers.LAUNCHERS[rule](device(0), device(0), [device(0) for _ in present], h)
    assert launches == []
