"""The tiled gemm and dense-forward kernels against NumPy, in the CUDA simulator on a CPU.

Shapes cross the production tile edges (64 x 64 outputs per block, K-slabs of 16
in float32 and 8 in float64): several blocks along M or N, several K-slabs, and
dimensions of 1. The simulator runs every thread as an OS thread, so each test
launches one kernel on a few blocks only.
"""

from __future__ import annotations

import numpy as np
import pytest
from dlcore.backends import xp_activations
from dlcore.kernels import gemm
from numba import cuda

MODES = [(False, False), (False, True), (True, False), (True, True)]
MODE_IDS = ["NN", "NT", "TN", "TT"]


def _operands(rng: np.random.Generator, M: int, N: int, K: int, trans_a: bool, trans_b: bool):
    """A and B as stored for the mode, in float64."""
    A = rng.standard_normal((K, M) if trans_a else (M, K))
    B = rng.standard_normal((N, K) if trans_b else (K, N))
    return A, B


def test_thin_products_get_the_small_tile_and_the_tests_cover_both():
    assert gemm.tile_for(17, 65, np.float32) == gemm.SMALL_TILE
    assert gemm.tile_for(65, 33, np.float32) == gemm.TILES[np.dtype(np.float32)]
    assert gemm.tile_for(65, 33, np.float64) == gemm.TILES[np.dtype(np.float64)]


def _run_gemm(A: np.ndarray, B: np.ndarray, M: int, N: int, dtype, trans_a: bool, trans_b: bool):
    C = cuda.to_device(np.full((M, N), np.nan, dtype))  # every element must be overwritten
    gemm.gemm(
        cuda.to_device(A.astype(dtype)),
        cuda.to_device(B.astype(dtype)),
        C,
        trans_a=trans_a,
        trans_b=trans_b,
    )
    return C.copy_to_host()


@pytest.mark.parametrize(("trans_a", "trans_b"), MODES, ids=MODE_IDS)
@pytest.mark.parametrize(("M", "N", "K"), [(1, 1, 1), (3, 17, 1), (65, 33, 17)])
def test_gemm_float64_matches_numpy(rng, M, N, K, trans_a, trans_b):
    A, B = _operands(rng, M, N, K, trans_a, trans_b)
    expected = (A.T if trans_a else A) @ (B.T if trans_b else B)
    C = _run_gemm(A, B, M, N, np.float64, trans_a, trans_b)
    scale = (np.abs(A.T if trans_a else A) @ np.abs(B.T if trans_b else B)).max()
    np.testing.assert_allclose(C, expected, rtol=1e-12, atol=1e-12 * scale)


@pytest.mark.parametrize(("trans_a", "trans_b"), MODES, ids=MODE_IDS)
@pytest.mark.parametrize(("M", "N", "K"), [(3, 1, 17), (17, 65, 33), (65, 33, 17)])
def test_gemm_float32_matches_float64_reference(rng, M, N, K, trans_a, trans_b):
    A, B = _operands(rng, M, N, K, trans_a, trans_b)
    A, B = A.astype(np.float32).astype(np.float64), B.astype(np.float32).astype(np.float64)
    expected = (A.T if trans_a else A) @ (B.T if trans_b else B)
    C = _run_gemm(A, B, M, N, np.float32, trans_a, trans_b)
    assert C.dtype == np.float32
    scale = (np.abs(A.T if trans_a else A) @ np.abs(B.T if trans_b else B)).max()
    np.testing.assert_allclose(C, expected, rtol=0, atol=1e-5 * scale)


def _run_dense(rng, dtype, shape, activation, *, bias: bool, y_is_z: bool):
    """Z, Y from the kernel and from NumPy (float64) for X (N, I) @ W (I, O) + b."""
    N, O, I = shape
    X = rng.standard_normal((N, I)).astype(dtype)
    W = (rng.standard_normal((I, O)) / np.sqrt(I)).astype(dtype)
    b = rng.standard_normal(O).astype(dtype) if bias else None
    Z = cuda.to_device(np.full((N, O), np.nan, dtype))
    Y = Z if y_is_z else cuda.to_device(np.full((N, O), np.nan, dtype))
    gemm.dense_forward(
        cuda.to_device(X),
        cuda.to_device(W),
        None if b is None else cuda.to_device(b),
        activation,
        Z,
        Y,
    )
    Z_expected = X.astype(np.float64) @ W.astype(np.float64)
    if b is not None:
        Z_expected = Z_expected + b.astype(np.float64)
    Y_expected = xp_activations.forward(np, activation, Z_expected)
    scale = 1.0 + (np.abs(X.astype(np.float64)) @ np.abs(W.astype(np.float64))).max()
    return Z.copy_to_host(), Y.copy_to_host(), Z_expected, Y_expected, scale


@pytest.mark.parametrize(
    ("dtype", "shape", "activation"),
    [
        (np.float64, (65, 33, 17), "relu"),
        (np.float32, (17, 65, 33), "gelu"),
        (np.float64, (3, 17, 1), "sigmoid"),
    ],
)
def test_dense_forward_with_bias(rng, dtype, shape, activation):
    Z, Y, Z_expected, Y_expected, scale = _run_dense(
        rng, dtype, shape, activation, bias=True, y_is_z=False
    )
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(Z, Z_expected, rtol=0, atol=tol * scale)
    np.testing.assert_allclose(Y, Y_expected, rtol=0, atol=tol * scale)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_dense_forward_linear_without_bias_writes_z_once(rng, dtype):
    Z, Y, Z_expected, _, scale = _run_dense(
        rng, dtype, (65, 33, 17), "linear", bias=False, y_is_z=True
    )
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(Z, Z_expected, rtol=0, atol=tol * scale)


def test_dense_forward_loops_over_row_tiles_when_the_grid_is_capped(rng, monkeypatch):
    # One block row covers M = 65 (two row tiles) as a grid of more than 65535
    # block rows would; the staged epilogue's shared tile is reused across them.
    monkeypatch.setattr(gemm, "MAX_ROW_BLOCKS", 1)
    Z, Y, Z_expected, Y_expected, scale = _run_dense(
        rng, np.float64, (65, 17, 9), "tanh", bias=True, y_is_z=False
    )
    np.testing.assert_allclose(Z, Z_expected, rtol=0, atol=1e-12 * scale)
    np.testing.assert_allclose(Y, Y_expected, rtol=0, atol=1e-12 * scale)
