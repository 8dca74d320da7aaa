"""The register-blocked matrix products compiled by Numba (``backends/cpu_small_gemm.py``)
against NumPy in float64: the three products of a dense layer's step, any strides through
``matmul``, every edge of the tiling, ``C`` overwritten, and calls from compiled code."""

from __future__ import annotations

import numpy as np
import pytest
from dlcore.backends import cpu_small_gemm

numba = pytest.importorskip("numba")

DTYPES = (np.float32, np.float64)
# a dense layer's products at 32 rows, and odd sizes that leave every kind of edge
SHAPES = (
    (1, 1, 1),
    (5, 3, 7),
    (3, 5, 70),
    (4, 4, 16),
    (33, 785, 51),
    (32, 784, 50),
    (32, 50, 50),
    (32, 50, 10),
)


def _operands(M, K, N, dtype, seed=0):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((M, K)).astype(dtype)
    B = rng.standard_normal((K, N)).astype(dtype)
    return A, B


def _assert_product(C, A, B):
    """``C`` is ``A @ B`` within the rounding of ``K`` fused multiply-adds in ``C``'s dtype:
    ``4 sqrt(K) eps |A| |B|`` of the product computed in float64."""
    A64, B64 = A.astype(np.float64), B.astype(np.float64)
    K = A.shape[1]
    bound = 4 * np.sqrt(max(K, 1)) * np.finfo(C.dtype).eps * (np.abs(A64) @ np.abs(B64))
    error = np.abs(C.astype(np.float64) - A64 @ B64)
    assert np.all(error <= bound), f"max error {error.max()} over bound {bound.max()}"


def _nan_filled(M, N, dtype):
    return np.full((M, N), np.nan, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_the_three_products_match_numpy(shape, dtype):
    M, K, N = shape
    A, B = _operands(M, K, N, dtype)
    C = _nan_filled(M, N, dtype)
    cpu_small_gemm.compiled("matmul_nn")(A, B, C)
    _assert_product(C, A, B)
    # the weight gradient's operand comes C-contiguous, (K, M)
    A_rows = np.ascontiguousarray(A.T)
    C = _nan_filled(M, N, dtype)
    cpu_small_gemm.compiled("matmul_tn")(A_rows, B, C)
    _assert_product(C, A, B)
    # the input gradient's operand comes C-contiguous, (N, K)
    B_rows = np.ascontiguousarray(B.T)
    C = _nan_filled(M, N, dtype)
    cpu_small_gemm.compiled("matmul_nt")(A, B_rows, C)
    _assert_product(C, A, B)


@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_takes_transposed_views_as_np_dot_does(dtype):
    """``matmul(X.T, D, C)`` and ``matmul(D, W.T, C)``: what the compiled step passes to
    ``np.dot``, the same values as the kernel for that layout."""
    matmul = cpu_small_gemm.compiled("matmul")
    rng = np.random.default_rng(1)
    X = rng.standard_normal((32, 50)).astype(dtype)
    D = rng.standard_normal((32, 10)).astype(dtype)
    W = rng.standard_normal((70, 10)).astype(dtype)
    weight_grad = _nan_filled(50, 10, dtype)
    matmul(X.T, D, weight_grad)
    _assert_product(weight_grad, X.T, D)
    expected = _nan_filled(50, 10, dtype)
    cpu_small_gemm.compiled("matmul_tn")(X, D, expected)
    np.testing.assert_array_equal(weight_grad, expected)

    input_grad = _nan_filled(32, 70, dtype)
    matmul(D, W.T, input_grad)
    _assert_product(input_grad, D, W.T)
    expected = _nan_filled(32, 70, dtype)
    cpu_small_gemm.compiled("matmul_nt")(D, W, expected)
    np.testing.assert_array_equal(input_grad, expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_takes_any_strides(dtype):
    """Every-other-element views, reversed rows and a transposed output: nothing
    contiguous, still ``A @ B``."""
    matmul = cpu_small_gemm.compiled("matmul")
    A, B = _operands(37, 29, 45, dtype, seed=2)
    A_strided = np.repeat(A, 2, axis=1)[::-1, ::2][::-1]
    B_strided = np.repeat(B, 3, axis=0)[::3, ::-1][:, ::-1]
    C_transposed = _nan_filled(45, 37, dtype).T
    matmul(A_strided, B_strided, C_transposed)
    _assert_product(C_transposed, A, B)
    both_transposed = _nan_filled(37, 45, dtype)
    matmul(np.ascontiguousarray(A.T).T, np.ascontiguousarray(B.T).T, both_transposed)
    _assert_product(both_transposed, A, B)


def test_every_edge_of_the_tiling():
    """Rows around the 4-row tiles, columns around every tile width and the 64-column
    panels, and depths around the 4 steps of ``k``, in place and copied (``B.T``)."""
    matmul = cpu_small_gemm.compiled("matmul")
    widths = (*range(1, 26), 31, 32, 33, 47, 49, 55, 57, 63, 64, 65, 71, 100, 129)
    for dtype in DTYPES:
        for M in (1, 2, 3, 4, 5, 7, 9):
            for K in (0, 1, 3, 4, 6):
                for N in widths:
                    A, B = _operands(M, K, N, dtype, seed=M * 1000 + K * 100 + N)
                    for B_view in (B, np.ascontiguousarray(B.T).T):
                        C = _nan_filled(M, N, dtype)
                        matmul(A, B_view, C)
                        _assert_product(C, A, B)


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_wide_layer_matches_numpy(dtype):
    """128 x 784 x 256: several row tiles and column panels in every product."""
    matmul = cpu_small_gemm.compiled("matmul")
    X, W = _operands(128, 784, 256, dtype)
    D = np.random.default_rng(3).standard_normal((128, 256)).astype(dtype)
    cases = ((X, W, (128, 256)), (X.T, D, (784, 256)), (D, W.T, (128, 784)))
    for A, B, shape in cases:
        C = _nan_filled(*shape, dtype)
        matmul(A, B, C)
        _assert_product(C, A, B)


def test_callable_from_compiled_code():
    """The kernels are called from the Numba-compiled training step."""
    matmul = cpu_small_gemm.compiled("matmul")

    @numba.njit
    def weight_gradient(X, D, out):
        matmul(X.T, D, out)

    rng = np.random.default_rng(4)
    X = rng.standard_normal((32, 50)).astype(np.float32)
    D = rng.standard_normal((32, 10)).astype(np.float32)
    out = _nan_filled(50, 10, np.float32)
    weight_gradient(X, D, out)
    _assert_product(out, X.T, D)


def test_an_unknown_kernel_names_the_available_ones():
    with pytest.raises(ValueError, match="unknown kernel 'matmul_tt'; available: matmul, "):
        cpu_small_gemm.compiled("matmul_tt")
