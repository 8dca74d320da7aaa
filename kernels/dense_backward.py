"""The first half of a dense layer's backward pass: ``dZ = act'(Z) * dY`` and ``db = sum(dZ)``.

One kernel computes ``dZ`` and its column sums together, so ``dZ`` is read
from memory once. Layout: a block is ``STRIP`` consecutive columns by
``ROW_THREADS`` rows of threads (``threadIdx.x`` along the columns, so each
warp reads 32 consecutive elements of one row: coalesced). Block row ``y`` of
``R`` block rows walks rows ``y * ROW_THREADS + threadIdx.y``, stepping by
``R * ROW_THREADS``; each thread adds its rows in order, then the block folds
its ``ROW_THREADS`` partial sums through shared memory in a fixed order and
writes one partial row. With ``R == 1`` that row is ``db`` itself; otherwise a
second pass sums the ``R`` partial rows per column, in order. No atomics, so
the same input gives bit-identical sums on every run.

Softmax's Jacobian couples a row's elements, so ``softmax_gradient_and_bias``
is two kernels: the row pass of ``softmax.py``, then the column sums.

Float16 is a storage format here: a float16 kernel loads float16, converts to
float32 (``common.compute_dtype``) and computes in float32, the activation's
derivative, the running sums, the fold's shared buffer and the partial rows
(a float32 scratch buffer) included; ``dZ`` and ``db`` are each rounded to
float16 once, when stored.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

from numba import cuda

from . import activations, softmax
from .activations import ELEMENTWISE, scalar_functions
from .common import (
    FLOAT_DTYPES,
    HALF_DTYPES,
    MAX_BLOCKS,
    PtxVariant,
    array,
    compute_dtype,
    device_function,
    launch,
    numba_type,
    scalar,
    scratch,
)

# Columns per block: one warp reads 32 consecutive elements of a row, a whole
# 128-byte line in float32 (two in float64).
STRIP = 32
# Rows of threads per block: 32 x 8 = 256 threads, as common.THREADS; the fold
# buffer is 8 x 32 elements, 1 KiB (float32) or 2 KiB (float64) of shared memory.
ROW_THREADS = 8
# At least this many rows per block row (8 per thread), so the fold and the
# partial row a block writes cost little next to the rows it reads.
MIN_ROWS_PER_BLOCK = 64
# At most this many block rows: the partials then hold at most 256 rows, and the
# second pass adds at most 256 / ROW_THREADS = 32 of them per thread.
MAX_ROW_BLOCKS = 256


def row_blocks(N: int, O: int) -> int:
    """Block rows for a column reduction over ``(N, O)``: enough to fill the GPU, at least 1."""
    strips = -(-O // STRIP)
    wanted = -(-N // MIN_ROWS_PER_BLOCK)
    return max(1, min(wanted, MAX_ROW_BLOCKS, MAX_BLOCKS // max(1, strips)))


@functools.cache
def strip_fold(dtype: Any) -> Any:
    """Device function ``fold(acc, partial, j)``: a block's column partial sums, in fixed order.

    Every thread of a ``(STRIP, ROW_THREADS)`` block passes its running sum
    ``acc`` for column ``j``; the threads of row 0 add the other rows' sums in
    order and write ``partial[blockIdx.y, j]``, rounded to ``partial``'s dtype. The
    sums are of ``compute_dtype(dtype)`` (float32 for float16). All threads must call
    it: it holds ``cuda.syncthreads()``.
    """
    element = numba_type(compute_dtype(dtype))

    def fold(acc, partial, j):
        s = cuda.shared.array((ROW_THREADS, STRIP), element)
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        s[ty, tx] = acc
        cuda.syncthreads()
        if ty == 0 and j < partial.shape[1]:
            for k in range(1, ROW_THREADS):
                acc += s[k, tx]
            partial[cuda.blockIdx.y, j] = acc

    return device_function(fold)


@functools.cache
def _column_sum_kernel(dtype: Any) -> Any:
    zero = scalar(compute_dtype(dtype))(0.0)
    widen = scalar(compute_dtype(dtype))  # float16 loads to float32; a no-op otherwise
    fold = strip_fold(dtype)

    @cuda.jit
    def column_sum_kernel(A, partial):
        """partial[y, j] = sum of A[:, j] over the rows of block row y, for (N, O) A of
        ``dtype``; ``partial`` is of ``dtype`` or of its compute dtype."""
        N, O = A.shape
        j = cuda.blockIdx.x * STRIP + cuda.threadIdx.x
        acc = zero
        if j < O:
            step = cuda.gridDim.y * ROW_THREADS
            for i in range(cuda.blockIdx.y * ROW_THREADS + cuda.threadIdx.y, N, step):
                acc += widen(A[i, j])
        fold(acc, partial, j)

    return column_sum_kernel


@functools.cache
def _activation_bias_kernel(dtype: Any, name: str) -> Any:
    compute = compute_dtype(dtype)
    function = scalar_functions(compute)[name]
    zero = scalar(compute)(0.0)
    widen = scalar(compute)
    fold = strip_fold(dtype)

    @cuda.jit
    def activation_gradient_bias_kernel(dY, Z, dZ, partial):
        """dZ = f'(Z) * dY over (N, O); partial[y, j] = its column sums over block row y.

        The sums add the unrounded products, not the stored (for float16, rounded) dZ."""
        N, O = Z.shape
        j = cuda.blockIdx.x * STRIP + cuda.threadIdx.x
        acc = zero
        if j < O:
            step = cuda.gridDim.y * ROW_THREADS
            for i in range(cuda.blockIdx.y * ROW_THREADS + cuda.threadIdx.y, N, step):
                g = widen(dY[i, j]) * function(widen(Z[i, j]))[1]
                dZ[i, j] = g
                acc += g
        fold(acc, partial, j)

    return activation_gradient_bias_kernel


def _partials_buffer(dtype: Any, R: int, O: int) -> Any:
    """The first pass's ``(R, O)`` partial sums of a ``dtype`` reduction, in the compute
    dtype (float32 for float16), in a scratch buffer reused by every call."""
    return scratch("column_partials", R * O, compute_dtype(dtype)).reshape(R, O)


def launch_with_column_sums(kernel: Any, args: tuple[Any, ...], shape: Any, out: Any) -> None:
    """Launch a strip kernel ``kernel(*args, partial)`` and reduce its partials into ``out``.

    Args:
        kernel: a kernel over an ``(N, O)`` array in ``(STRIP, ROW_THREADS)``
            blocks that ends with ``strip_fold(...)(acc, partial, j)``.
        args: its arguments before ``partial``.
        shape: ``(N, O)``, the rows and columns it walks.
        out: float device array ``(O,)``; receives the column sums (zeros when
            ``N == 0``). Nothing is launched when ``O == 0``. For a float16 ``out`` the
            partial rows between the passes are float32 (the kernel must accept a
            float32 ``partial``) and only the final sums are rounded to float16.
    """
    N, O = shape
    if O == 0:  # a (0, R) grid is invalid on a GPU; out and the kernel's outputs are empty
        return
    R = row_blocks(N, O)
    strips = -(-O // STRIP)
    threads = (STRIP, ROW_THREADS)
    final = out.reshape(1, O)
    partial = final if R == 1 else _partials_buffer(out.dtype, R, O)
    launch(kernel, ((strips, R), threads), *args, partial)
    if R > 1:
        launch(_column_sum_kernel(partial.dtype), ((strips, 1), threads), partial, final)


def column_sums(A: Any, out: Any) -> None:
    """Write ``out = sum(A, axis=0)``, deterministically (two passes when ``A`` is tall).

    Args:
        A: float16, float32 or float64 device array ``(N, O)``, C-contiguous (float16
            summed in float32, each sum rounded to float16 once).
        out: device array ``(O,)`` of the dtype of ``A``.
    """
    launch_with_column_sums(_column_sum_kernel(A.dtype), (A,), A.shape, out)


def activation_gradient_and_bias(activation: str, dY: Any, Z: Any, dZ: Any, db: Any | None) -> None:
    """Write ``dZ = activation'(Z) * dY`` and, unless ``db`` is None, ``db = sum(dZ, axis=0)``.

    Args:
        activation: a name in ``activations.ELEMENTWISE``.
        dY: float16, float32 or float64 device array ``(N, O)``, the gradient of the
            activation's output (float16 is computed in float32, ``dZ`` and ``db``
            rounded once; ``db`` sums the float32 products, not the rounded ``dZ``).
        Z: the activation's input, shape and dtype of ``dY``.
        dZ: device array of that shape and dtype; may be ``dY`` itself (for
            ``"linear"`` nothing is then written to it).
        db: device array ``(O,)`` of that dtype, or None.
    """
    if db is None:
        if not (activation == "linear" and dZ is dY):
            activations.backward(activation, dY, Z, dZ)
    elif activation == "linear" and dZ is dY:
        column_sums(dY, db)
    else:
        kernel = _activation_bias_kernel(Z.dtype, activation)
        launch_with_column_sums(kernel, (dY, Z, dZ), Z.shape, db)


def softmax_gradient_and_bias(dY: Any, Y: Any, dZ: Any, db: Any | None) -> None:
    """Write ``dZ = Y * (dY - rowsum(dY * Y))`` and, unless ``db`` is None, ``db = sum(dZ)``.

    Two kernels (the softmax row pass, then the column sums), as the row sum
    must be complete before any element of ``dZ`` is known.

    Args:
        dY: float16, float32 or float64 device array ``(N, O)``, the gradient of the
            softmax output (float16: as ``softmax.softmax_backward`` and ``column_sums``).
        Y: the softmax output, shape and dtype of ``dY``.
        dZ: device array of that shape and dtype (may be ``dY`` itself).
        db: device array ``(O,)`` of that dtype, or None.
    """
    softmax.softmax_backward(dY, Y, dZ)
    if db is not None:
        column_sums(dZ, db)


def ptx_variants() -> Iterator[PtxVariant]:
    """Every kernel the launchers here launch, for each dtype (float16 included) and
    activation. A float16 strip kernel is launched with float16 ``partial`` (``db`` itself,
    one block row) or float32 partial rows; the float32 column-sum kernel then sums those
    into the float16 ``db`` (``column_sums[partials,f16]``)."""
    for dtype in (*FLOAT_DTYPES, *HALF_DTYPES):
        flat, rows = array(dtype, 1), array(dtype, 2)
        short = dtype.name.replace("float", "f")
        yield f"column_sums[{short}]", _column_sum_kernel(dtype), (rows, rows)
        for name in ELEMENTWISE:
            yield (
                f"activation_gradient_and_bias[{name},{short}]",
                _activation_bias_kernel(dtype, name),
                (rows, rows, rows, rows),
            )
            # Without db the launcher runs the elementwise backward kernel of activations.py.
            yield (
                f"activation_gradient[{name},{short}]",
                activations._backward_kernel(dtype, name),
                (flat, flat, flat),
            )
    yield from _half_partials_variants()


def _half_partials_variants() -> Iterator[PtxVariant]:
    """The float16 strip kernels writing float32 partial rows (more than one block row),
    and the float32 sum of those rows into a float16 ``db``."""
    for dtype in HALF_DTYPES:
        compute = compute_dtype(dtype)
        rows, partials = array(dtype, 2), array(compute, 2)
        short = dtype.name.replace("float", "f")
        yield f"column_sums[{short},partials]", _column_sum_kernel(dtype), (rows, partials)
        yield (
            f"column_sums[partials,{short}]",
            _column_sum_kernel(compute),
            (partials, rows),
        )
        for name in ELEMENTWISE:
            yield (
                f"activation_gradient_and_bias[{name},{short},partials]",
                _activation_bias_kernel(dtype, name),
                (rows, rows, rows, partials),
            )
