"""Merges of several layers' outputs (add, subtract, multiply, average, maximum, minimum,
concatenate), their gradients, and the elementwise ``accumulate`` and ``scale``.

A merge of ``n`` inputs folds them two at a time: the first launch writes
``op(X0, X1)`` into the output and each further launch combines the output with
the next input in place (average: adds, then one scale by ``1 / n``), so one
kernel serves any number of inputs at ``n - 1`` launches. Concatenation and its
gradient are column-block copies. Maximum and minimum route each element of
``dY`` to the first input equal to ``Y`` there: the gradient not yet routed is
carried in the last input's gradient array, which keeps what is left at the end.

Layout of the ``(N, F)`` kernels: a 2-D grid, ``threadIdx.x`` along the columns
(a warp reads consecutive elements of a row: coalesced), block rows striding
over the rows. ``accumulate`` and ``scale`` run over flat arrays of any shape.

Float16 arrays (a mixed-precision layer's) are loaded into float32, combined in float32
and rounded once per store: a fold of ``n`` inputs rounds its ``n - 1`` partial results,
as the same fold in NumPy's float16 does.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import Any

from numba import cuda

from .common import (
    FLOAT_DTYPES,
    HALF_DTYPES,
    MAX_BLOCKS,
    THREADS,
    WARP,
    PtxVariant,
    array,
    compute_dtype,
    device_function,
    grid_for,
    launch,
    numba_type,
    scalar,
)
from .rows import row_width

# The elementwise combinations of two inputs a merge folds with.
PAIR_OPS = ("add", "subtract", "multiply", "maximum", "minimum")

# Columns per block at most: one warp reads 32 consecutive elements of a row, a whole
# 128-byte line in float32 (two in float64); narrower arrays take narrower blocks.
STRIP = 32


def grid_2d(N: int, F: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(blocks, threads)`` of a launch over an ``(N, F)`` array, both as ``(x, y)``.

    A block is the next power of two of ``F`` columns (at most ``STRIP``) by enough
    rows for at least one warp and at most ``THREADS`` threads; block rows stride
    over the rows, so at most ``MAX_BLOCKS`` blocks are launched unless the columns
    alone need more.
    """
    tx = min(STRIP, row_width(F))
    ty = max(WARP // tx, min(THREADS // tx, row_width(N)))
    bx = max(1, -(-F // tx))
    by = max(1, min(-(-N // ty), MAX_BLOCKS // bx))
    return (bx, by), (tx, ty)


@functools.cache
def _pair_function(op: str) -> Any:
    """Device function ``f(a, b)`` of the elementwise merge ``op``."""

    def add(a, b):
        return a + b

    def subtract(a, b):
        return a - b

    def multiply(a, b):
        return a * b

    # a NaN in either input gives NaN, as NumPy's maximum and minimum do
    def maximum(a, b):
        return a if a >= b or a != a else b

    def minimum(a, b):
        return a if a <= b or a != a else b

    table = {
        "add": add,
        "subtract": subtract,
        "multiply": multiply,
        "maximum": maximum,
        "minimum": minimum,
    }
    return device_function(table[op])


@functools.cache
def _pair_kernel(dtype: Any, op: str) -> Any:
    combine = _pair_function(op)
    widen = scalar(compute_dtype(dtype))  # float16 loads to float32; a no-op otherwise

    @cuda.jit
    def merge_pair_kernel(A, B, Y):
        """Y = op(A, B) over (N, F); Y may be A."""
        N, F = Y.shape
        j, start = cuda.grid(2)
        if j < F:
            for i in range(start, N, cuda.gridsize(2)[1]):
                Y[i, j] = combine(widen(A[i, j]), widen(B[i, j]))

    return merge_pair_kernel


@functools.cache
def _columns_into_kernel(dtype: Any) -> Any:
    @cuda.jit
    def columns_into_kernel(X, Y, offset):
        """Y[:, offset + j] = X[:, j] for the (N, F) X: a column block of the wider Y."""
        N, F = X.shape
        j, start = cuda.grid(2)
        if j < F:
            for i in range(start, N, cuda.gridsize(2)[1]):
                Y[i, offset + j] = X[i, j]

    return columns_into_kernel


@functools.cache
def _columns_from_kernel(dtype: Any) -> Any:
    @cuda.jit
    def columns_from_kernel(dY, offset, dX):
        """dX[:, j] = dY[:, offset + j] for the (N, F) dX: a column block of the wider dY."""
        N, F = dX.shape
        j, start = cuda.grid(2)
        if j < F:
            for i in range(start, N, cuda.gridsize(2)[1]):
                dX[i, j] = dY[i, offset + j]

    return columns_from_kernel


@functools.cache
def _route_kernel(dtype: Any) -> Any:
    widen = scalar(compute_dtype(dtype))  # compared as float32: IEEE's == for float16 too
    zero = scalar(compute_dtype(dtype))(0.0)

    @cuda.jit
    def route_first_match_kernel(G, X, Y, dX, R):
        """Where X == Y: dX = G, R = 0; elsewhere dX = 0, R = G. G may be R, not dX."""
        N, F = Y.shape
        j, start = cuda.grid(2)
        if j < F:
            for i in range(start, N, cuda.gridsize(2)[1]):
                g = G[i, j]
                if widen(X[i, j]) == widen(Y[i, j]):
                    dX[i, j] = g
                    R[i, j] = zero
                else:
                    dX[i, j] = zero
                    R[i, j] = g

    return route_first_match_kernel


@functools.cache
def _keep_matches_kernel(dtype: Any) -> Any:
    widen = scalar(compute_dtype(dtype))
    zero = scalar(compute_dtype(dtype))(0.0)

    @cuda.jit
    def keep_matches_kernel(G, X, Y, dX):
        """dX = where(X == Y, G, 0) over (N, F); dX may be G."""
        N, F = Y.shape
        j, start = cuda.grid(2)
        if j < F:
            for i in range(start, N, cuda.gridsize(2)[1]):
                dX[i, j] = G[i, j] if widen(X[i, j]) == widen(Y[i, j]) else zero

    return keep_matches_kernel


@functools.cache
def _scale_kernel(dtype: Any) -> Any:
    widen = scalar(compute_dtype(dtype))

    @cuda.jit
    def scale_kernel(A, factor, Y):
        """Y = factor * A over flat arrays of one size; Y may be A."""
        for k in range(cuda.grid(1), A.size, cuda.gridsize(1)):
            Y[k] = factor * widen(A[k])

    return scale_kernel


@functools.cache
def _scale_rows_kernel(dtype: Any) -> Any:
    widen = scalar(compute_dtype(dtype))

    @cuda.jit
    def scale_rows_kernel(A, w, Y):
        """Y[i, j] = A[i, j] * w[i] over (N, F); Y may be A."""
        N, F = Y.shape
        j, start = cuda.grid(2)
        if j < F:
            for i in range(start, N, cuda.gridsize(2)[1]):
                Y[i, j] = widen(A[i, j]) * widen(w[i])

    return scale_rows_kernel


@functools.cache
def _accumulate_kernel(dtype: Any) -> Any:
    widen = scalar(compute_dtype(dtype))

    @cuda.jit
    def accumulate_kernel(dst, src):
        """dst += src over flat arrays of one size."""
        for k in range(cuda.grid(1), dst.size, cuda.gridsize(1)):
            dst[k] = widen(dst[k]) + widen(src[k])

    return accumulate_kernel


def _pair(op: str, A: Any, B: Any, Y: Any) -> None:
    if Y.size == 0:  # nothing to write: launch nothing
        return
    blocks, threads = grid_2d(*Y.shape)
    launch(_pair_kernel(Y.dtype, op), (blocks, threads), A, B, Y)


def _copy_columns_into(X: Any, Y: Any, offset: int) -> None:
    if X.size == 0:  # nothing to write: launch nothing
        return
    blocks, threads = grid_2d(*X.shape)
    launch(_columns_into_kernel(X.dtype), (blocks, threads), X, Y, offset)


def _copy_columns_from(dY: Any, offset: int, dX: Any) -> None:
    if dX.size == 0:  # nothing to write: launch nothing
        return
    blocks, threads = grid_2d(*dX.shape)
    launch(_columns_from_kernel(dX.dtype), (blocks, threads), dY, offset, dX)


def scale_rows(A: Any, w: Any, out: Any) -> None:
    """Write ``out = A * w[:, None]``: each row of ``A`` times its weight.

    Args:
        A: C-contiguous float device array ``(N, O)``.
        w: float device array ``(N,)`` of the dtype of ``A``.
        out: device array of the shape and dtype of ``A`` (may be ``A`` itself).
    """
    if out.size == 0:  # nothing to write: launch nothing
        return
    blocks, threads = grid_2d(*out.shape)
    launch(_scale_rows_kernel(A.dtype), (blocks, threads), A, w, out)


def scale(A: Any, factor: float, out: Any) -> None:
    """Write ``out = factor * A`` elementwise, ``factor`` rounded to the dtype ``A`` is
    computed in (float32 for float16).

    Args:
        A: C-contiguous float16, float32 or float64 device array of any shape.
        factor: the multiplier.
        out: device array of the shape and dtype of ``A`` (may be ``A`` itself).
    """
    if out.size == 0:  # nothing to write: launch nothing
        return
    grid = grid_for(A.size)
    factor = scalar(compute_dtype(A.dtype))(factor)
    launch(_scale_kernel(A.dtype), grid, A.reshape(A.size), factor, out.reshape(out.size))


def accumulate(dst: Any, src: Any) -> None:
    """Add ``src`` into ``dst`` in place.

    Args:
        dst: C-contiguous float16, float32 or float64 device array of any shape.
        src: device array of the shape and dtype of ``dst``.
    """
    if dst.size == 0:  # nothing to write: launch nothing
        return
    launch(
        _accumulate_kernel(dst.dtype),
        grid_for(dst.size),
        dst.reshape(dst.size),
        src.reshape(src.size),
    )


def merge(op: str, inputs: Sequence[Any], Y: Any) -> None:
    """Write the merge ``op`` of ``inputs`` into ``Y``.

    Args:
        op: ``"concatenate"``, ``"average"`` or one of ``PAIR_OPS``.
        inputs: float16, float32 or float64 device arrays ``(N, F)`` of one dtype, at least one
            (``"subtract"``: exactly two); for ``"concatenate"`` ``(N, F_i)``.
        Y: device array ``(N, F)`` (``(N, sum of F_i)`` for ``"concatenate"``) of that
            dtype, none of the inputs.
    """
    if op == "concatenate":
        offset = 0
        for X in inputs:
            _copy_columns_into(X, Y, offset)
            offset += X.shape[1]
        return
    if len(inputs) == 1:
        _copy_columns_into(inputs[0], Y, 0)
    else:
        combine = "add" if op == "average" else op
        _pair(combine, inputs[0], inputs[1], Y)
        for X in inputs[2:]:
            _pair(combine, Y, X, Y)
    if op == "average":
        scale(Y, 1.0 / len(inputs), Y)


def merge_backward(op: str, dY: Any, inputs: Sequence[Any], Y: Any, grads: Sequence[Any]) -> None:
    """Write the gradient of the merge ``op`` with respect to each input into ``grads``.

    Args:
        op: the name given to ``merge``.
        dY: float device array, the shape of ``Y``: the gradient of the merge's output.
        inputs: the arrays given to ``merge``.
        Y: what ``merge`` wrote for them.
        grads: one device array per input, of its shape and dtype, distinct from each
            other, from ``dY`` and from the inputs. ``"maximum"`` and ``"minimum"``
            give all of ``dY`` to the first input equal to ``Y``, zero to the others.
    """
    n = len(inputs)
    if op == "concatenate":
        offset = 0
        for grad in grads:
            _copy_columns_from(dY, offset, grad)
            offset += grad.shape[1]
    elif op == "add":
        for grad in grads:
            _copy_columns_from(dY, 0, grad)
    elif op == "average":
        for grad in grads:
            scale(dY, 1.0 / n, grad)
    elif op == "subtract":
        _copy_columns_from(dY, 0, grads[0])
        scale(dY, -1.0, grads[1])
    elif op == "multiply":
        for i, grad in enumerate(grads):
            others = [X for j, X in enumerate(inputs) if j != i]
            if not others:
                _copy_columns_from(dY, 0, grad)
                continue
            _pair("multiply", dY, others[0], grad)
            for X in others[1:]:
                _pair("multiply", grad, X, grad)
    else:  # maximum, minimum
        _route_to_first_matches(dY, inputs, Y, grads)


def _route_to_first_matches(dY: Any, inputs: Sequence[Any], Y: Any, grads: Sequence[Any]) -> None:
    if Y.size == 0:  # nothing to write: launch nothing
        return
    blocks, threads = grid_2d(*Y.shape)
    remaining = grads[-1]  # what is not yet routed; it ends as the last input's gradient
    source = dY
    for X, grad in zip(inputs[:-1], grads[:-1]):
        launch(_route_kernel(Y.dtype), (blocks, threads), source, X, Y, grad, remaining)
        source = remaining
    launch(_keep_matches_kernel(Y.dtype), (blocks, threads), source, inputs[-1], Y, remaining)


def ptx_variants() -> Iterator[PtxVariant]:
    """Every kernel this module launches, for each dtype, float16 included (and each pair op)."""
    index = numba_type("int64")
    for dtype in (*FLOAT_DTYPES, *HALF_DTYPES):
        flat, rows = array(dtype, 1), array(dtype, 2)
        short = dtype.name.replace("float", "f")
        for op in PAIR_OPS:
            yield f"merge_pair[{op},{short}]", _pair_kernel(dtype, op), (rows, rows, rows)
        yield f"columns_into[{short}]", _columns_into_kernel(dtype), (rows, rows, index)
        yield f"columns_from[{short}]", _columns_from_kernel(dtype), (rows, index, rows)
        yield (
            f"route_first_match[{short}]",
            _route_kernel(dtype),
            (rows, rows, rows, rows, rows),
        )
        yield f"keep_matches[{short}]", _keep_matches_kernel(dtype), (rows, rows, rows, rows)
        factor = numba_type(compute_dtype(dtype))  # float16 is scaled by a float32 factor
        yield f"scale[{short}]", _scale_kernel(dtype), (flat, factor, flat)
        yield f"accumulate[{short}]", _accumulate_kernel(dtype), (flat, flat)
        yield f"scale_rows[{short}]", _scale_rows_kernel(dtype), (rows, flat, rows)
