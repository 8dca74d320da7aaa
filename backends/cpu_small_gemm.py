"""Matrix products for very small shapes: register-blocked loops compiled by Numba.

The NumPy engine's compiled training step runs three products per dense layer on
row-major arrays, ``C`` a fresh output that is overwritten: the forward ``A @ W``
(``matmul_nn``), the weight gradient ``A.T @ D`` (``matmul_tn``) and the input gradient
``D @ W.T`` (``matmul_nt``). At 32 rows a BLAS call's fixed costs weigh as much as its
arithmetic. These kernels are plain Python, compiled on first use by ``compiled(name)``
and callable from other Numba code; ``matmul`` takes its operands as ``np.dot(A, B, C)``
would, transposed views and any other strides included.

Tiling. ``C`` is computed in tiles of ``ROWS`` = 4 rows by a width of 16 to 64 columns
(``TILE_WIDTHS``, multiples of 8). A tile's sums build up in a scratch array ``T`` and
each pass over it applies 4 steps of ``k``: per element one load, four fused
multiply-adds and one store, the 16 scalars of ``A`` broadcast once per pass. The loop
over the width is innermost with a constant trip count, one compiled tile per width, so
that LLVM's loop vectoriser covers it with whole vectors and no remainder: 8 float32 a
vector for widths that are odd multiples of 8, 16 otherwise. (Sums held in registers
across ``k`` would need the SLP vectoriser, which Numba does not run, or aliasing
information Numba does not give LLVM.) Edges: the columns go in panels of 64; the last
panel is widened to a multiple of 8 and shifted left over columns already computed, or,
where ``C`` has fewer than 64 columns that are no multiple of 8 or fewer than 16, ``B``'s
panel is copied with zero columns added. The last row tile is shifted up over rows
already computed (shared rows and columns get identical values); fewer than 4 rows go
through a zero-padded copy; the last ``K % 4`` steps of ``k`` run one at a time. ``A`` is
read in place whatever its strides, ``B`` in place when it is C-contiguous and otherwise
a panel at a time into a copy (for ``D @ W.T`` the copy transposes ``W``).

Measured on one core of a shared 2-core AMD EPYC Zen 4 (AVX-512), the best of 9 runs of
repeated calls, GFLOP/s here (called from compiled code) / NumPy's OpenBLAS through
``np.dot`` from Python under ``threadpoolctl.threadpool_limits(1)``. A call from Python
adds about 0.45 us to either (``np.dot`` on 1 x 1 matrices takes 0.47 us), which is a
third of OpenBLAS's time at 32 x 50 x 10. Repeated runs vary by about 10 %.

=================  =============  ==============  ==============
float32 ``NxIxO``  ``A @ W``      ``A.T @ D``     ``D @ W.T``
=================  =============  ==============  ==============
32 x 784 x 50      78 / 77        67 / 79         61 / 55
32 x 50 x 50       60 / 76        57 / 76         49 / 43
32 x 50 x 10       22 / 34        20 / 28         28 / 25
128 x 784 x 256    105 / 102      81 / 101        81 / 90
=================  =============  ==============  ==============

In float64 (8 a vector) at 32 x 784 x 50: 42 / 38, 38 / 38, 35 / 41.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

import numpy as np

#: rows of ``C`` per tile: with 4 steps of ``k`` a pass broadcasts 16 scalars of ``A``,
#: which with the vectors of ``B`` and ``T`` in flight fit AVX-512's 32 vector registers
ROWS = 4
#: the widest tile: 4 vectors of 16 float32 per row, enough independent chains to keep
#: both FMA pipes busy while a pass waits on the previous pass's stores
MAX_WIDTH = 64
#: the compiled tile widths: multiples of 8 (LLVM unrolls an 8-iteration loop before it
#: vectorises, which leaves scalar code)
TILE_WIDTHS = (16, 24, 32, 40, 48, 56, 64)


def _make_tile(width: int) -> Callable[..., None]:
    """The tile kernel for ``width`` columns (one of ``TILE_WIDTHS``)."""

    def tile(A, top, B, b_first, C, c_first, columns, T):
        """``C[top + r, c_first + j] = sum_k A[top + r, k] * B[k, b_first + j]`` for
        ``r < 4``, ``j < columns <= width``.

        ``A (>= top + 4, K)`` any strides; ``B (K, >= b_first + width)`` C-contiguous;
        ``C`` written; ``T`` a ``(4 * width,)`` scratch array; one float dtype. The sums
        build up in ``T``, whose rows lie at distances LLVM can see: its loops then check
        ``T`` against ``B`` for overlap once, where four rows of ``C`` would take 22 checks.
        """
        K = A.shape[1]
        # offsets LLVM can see are not negative keep B[k, b_first + j] an affine access
        top = max(top, 0)
        b_first = max(b_first, 0)
        c_first = max(c_first, 0)
        r0, r1, r2, r3 = top, top + 1, top + 2, top + 3
        zero = T.dtype.type(0)
        for j in range(4 * width):
            T[j] = zero
        for step in range(K // 4):
            k = 4 * step
            a00, a01, a02, a03 = A[r0, k], A[r0, k + 1], A[r0, k + 2], A[r0, k + 3]
            a10, a11, a12, a13 = A[r1, k], A[r1, k + 1], A[r1, k + 2], A[r1, k + 3]
            a20, a21, a22, a23 = A[r2, k], A[r2, k + 1], A[r2, k + 2], A[r2, k + 3]
            a30, a31, a32, a33 = A[r3, k], A[r3, k + 1], A[r3, k + 2], A[r3, k + 3]
            for j in range(width):
                b0 = B[k, b_first + j]
                b1 = B[k + 1, b_first + j]
                b2 = B[k + 2, b_first + j]
                b3 = B[k + 3, b_first + j]
                T[j] = T[j] + a00 * b0 + a01 * b1 + a02 * b2 + a03 * b3
                t = width + j
                T[t] = T[t] + a10 * b0 + a11 * b1 + a12 * b2 + a13 * b3
                t = 2 * width + j
                T[t] = T[t] + a20 * b0 + a21 * b1 + a22 * b2 + a23 * b3
                t = 3 * width + j
                T[t] = T[t] + a30 * b0 + a31 * b1 + a32 * b2 + a33 * b3
        for k in range(K - K % 4, K):
            a0, a1, a2, a3 = A[r0, k], A[r1, k], A[r2, k], A[r3, k]
            for j in range(width):
                b = B[k, b_first + j]
                T[j] += a0 * b
                T[width + j] += a1 * b
                T[2 * width + j] += a2 * b
                T[3 * width + j] += a3 * b
        # a run-time trip count: LLVM would unroll a constant one into scalar copies
        for r in range(4):
            for j in range(columns):
                C[top + r, c_first + j] = T[r * width + j]

    tile.__name__ = tile.__qualname__ = f"_tile_{width}"
    return tile


_tile_16 = _make_tile(16)
_tile_24 = _make_tile(24)
_tile_32 = _make_tile(32)
_tile_40 = _make_tile(40)
_tile_48 = _make_tile(48)
_tile_56 = _make_tile(56)
_tile_64 = _make_tile(64)


def _tile(width, A, top, B, b_first, C, c_first, columns, T):
    """The tile of ``width`` columns (``_make_tile``)."""
    if width == 16:
        _tile_16(A, top, B, b_first, C, c_first, columns, T)
    elif width == 24:
        _tile_24(A, top, B, b_first, C, c_first, columns, T)
    elif width == 32:
        _tile_32(A, top, B, b_first, C, c_first, columns, T)
    elif width == 40:
        _tile_40(A, top, B, b_first, C, c_first, columns, T)
    elif width == 48:
        _tile_48(A, top, B, b_first, C, c_first, columns, T)
    elif width == 56:
        _tile_56(A, top, B, b_first, C, c_first, columns, T)
    else:
        _tile_64(A, top, B, b_first, C, c_first, columns, T)


def _round_up(columns):
    """``columns`` rounded up to a tile width: a multiple of 8, at least 16."""
    return max(16, (columns + 7) // 8 * 8)


def _next_panel(N, j, padded):
    """``(first, columns, width)``: the ``columns`` of ``C`` from ``first`` that follow
    column ``j`` of ``N`` (``first < j`` where they are shifted left over columns already
    computed), and the tile width that computes them. With ``padded``, ``B`` is copied with
    zero columns beyond ``N``; without, ``N >= 16``."""
    rest = N - j
    if rest >= MAX_WIDTH:
        return j, MAX_WIDTH, MAX_WIDTH
    width = _round_up(rest)
    if width <= N:
        return N - width, width, width
    if padded:
        return j, rest, width
    # fewer than 64 columns and no multiple of 8: two tiles, the second one shifted
    width = _round_up(width // 2)
    return j, width, width


def _pack(B, first, columns, width, panel):
    """``B[:, first:first + columns]`` copied into a C-contiguous ``(K, width)`` view of
    ``panel``, zero beyond ``columns``; returns the view."""
    K, N = B.shape
    size = B.itemsize
    packed = panel[: K * width].reshape((K, width))
    first = max(first, 0)
    if columns < width:
        packed[:] = 0
    if B.strides[1] == size and B.strides[0] == N * size:
        rows = np.ascontiguousarray(B)
        for k in range(K):
            for j in range(columns):
                packed[k, j] = rows[k, first + j]
    elif B.strides[0] == size and B.strides[1] == K * size:
        # the transposed view of a C-contiguous array: read along that array's rows
        rows = np.ascontiguousarray(B.T)
        for j in range(columns):
            for k in range(K):
                packed[k, j] = rows[first + j, k]
    else:
        for k in range(K):
            for j in range(columns):
                packed[k, j] = B[k, first + j]
    return packed


def _blocks(A, B, C):
    """``C = A @ B`` in tiles: ``A (M >= 4, K)`` any strides, ``B (K, N)``, ``C (M, N)``
    written; one float dtype."""
    M, K = A.shape
    N = B.shape[1]
    T = np.empty(ROWS * MAX_WIDTH, C.dtype)
    contiguous = B.strides[1] == B.itemsize and B.strides[0] == N * B.itemsize
    # In place, fewer than 64 columns that are no multiple of 8 take two tiles per 4 rows
    # (_next_panel); a copy of B padded with zeros takes one, and costs less.
    in_place = contiguous and N >= 16 and (N % 8 == 0 or N > MAX_WIDTH)
    # typed C-contiguous as the packed copies are, so that one compiled tile serves both
    B_rows = np.ascontiguousarray(B if in_place else B[:0])
    panel = np.empty(0 if in_place else K * MAX_WIDTH, C.dtype)
    j = 0
    while j < N:
        first, columns, width = _next_panel(N, j, not in_place)
        if in_place:
            source, source_first = B_rows, first
        else:
            source, source_first = _pack(B, first, columns, width, panel), 0
        for tile in range((M + ROWS - 1) // ROWS):
            # the last tile shifted up over rows already computed
            top = min(ROWS * tile, M - ROWS)
            _tile(width, A, top, source, source_first, C, first, columns, T)
        j = first + columns


def _gemm(A, B, C):
    """``C = A @ B`` for any strides: ``A (M, K)``, ``B (K, N)``, ``C (M, N)`` written;
    one float dtype. The tiles write a C-contiguous array: ``C`` itself, or a copy that
    then goes into ``C``; fewer than 4 rows go through copies padded with zero rows."""
    M, K = A.shape
    N = B.shape[1]
    if M == 0 or N == 0:
        return
    # typed C-contiguous whatever C's strides, so that the tiles compile for that type only
    out = np.ascontiguousarray(C)
    if M >= ROWS:
        _blocks(A, B, out)
    else:
        A_rows = np.zeros((ROWS, K), C.dtype)
        for i in range(M):
            for k in range(K):
                A_rows[i, k] = A[i, k]
        C_rows = np.empty((ROWS, N), C.dtype)
        _blocks(_any_layout(A_rows), B, C_rows)
        for i in range(M):
            for j in range(N):
                out[i, j] = C_rows[i, j]
    if out.ctypes.data != C.ctypes.data:
        # C is not C-contiguous: the tiles wrote a copy
        C[:, :] = out


def _any_layout(X):
    """The 2-D array ``X`` as a view Numba types with any layout ("A"), so that one
    compiled ``_gemm`` serves C-contiguous, transposed and strided operands alike."""
    step = X.shape[0] * 0 + 1  # a step Numba cannot see is 1 makes the view's layout "A"
    return X[::step]


def matmul_nn(A, B, C):
    """``C = A @ B``: ``A (M, K)`` and ``B (K, N)`` C-contiguous, ``C (M, N)`` overwritten;
    one float dtype (float32 or float64)."""
    _gemm(_any_layout(A), _any_layout(B), C)


def matmul_tn(A, B, C):
    """``C = A.T @ B``: ``A (K, M)`` and ``B (K, N)`` C-contiguous, ``C (M, N)``
    overwritten; one float dtype (float32 or float64)."""
    _gemm(_any_layout(A.T), _any_layout(B), C)


def matmul_nt(A, B, C):
    """``C = A @ B.T``: ``A (M, K)`` and ``B (N, K)`` C-contiguous, ``C (M, N)``
    overwritten; one float dtype (float32 or float64). ``B`` is transposed into a scratch
    panel, at most ``MAX_WIDTH`` of its rows at a time."""
    _gemm(_any_layout(A), _any_layout(B.T), C)


def matmul(A, B, C):
    """``np.dot(A, B, C)``: ``C (M, N) = A (M, K) @ B (K, N)``, overwritten; one float dtype.

    Any strides: ``A`` is read in place (the transposed view ``X.T`` of a C-contiguous
    ``X`` too, ``matmul_tn``'s case); ``B`` is read in place when it is C-contiguous and
    otherwise copied a tile's columns at a time (the transposed view ``W.T`` of a
    C-contiguous ``W`` is then transposed back, ``matmul_nt``'s case).
    """
    _gemm(_any_layout(A), _any_layout(B), C)


_HELPERS: dict[str, Callable[..., Any]] = {
    **{f"_tile_{width}": globals()[f"_tile_{width}"] for width in TILE_WIDTHS},
    "_tile": _tile,
    "_round_up": _round_up,
    "_next_panel": _next_panel,
    "_pack": _pack,
    "_blocks": _blocks,
    "_gemm": _gemm,
    "_any_layout": _any_layout,
}

KERNELS: dict[str, Callable[..., Any]] = {
    "matmul": matmul,
    "matmul_nn": matmul_nn,
    "matmul_tn": matmul_tn,
    "matmul_nt": matmul_nt,
}


@cache
def compiled(name: str) -> Callable[..., Any]:
    """The Numba-compiled kernel ``name`` (one of ``KERNELS``), compiled on first call per
    dtype and layout; callable from Python and from other compiled code."""
    if name not in KERNELS:
        raise ValueError(f"unknown kernel {name!r}; available: {', '.join(KERNELS)}")
    import numba

    # contract: a * b + c may become one fused multiply-add, which the tiles are built on.
    # No reassoc: no reduction needs it, and each element of C adds its terms in order of k.
    jit = numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
    # the helpers are looked up in this module's globals when a kernel compiles
    for helper, function in _HELPERS.items():
        if not hasattr(globals()[helper], "py_func"):
            globals()[helper] = jit(function)
    return jit(KERNELS[name])
