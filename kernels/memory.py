"""Memory kernels: fill, copy and row gathers that stay on the stream.

These kernels do no arithmetic and close over no constants, so each is one
dispatcher that Numba specialises per argument dtype; ``ptx_variants`` lists
the dtypes the engine launches them with. Float16 arrays (mixed precision's
layers) are filled and copied, and converted to and from float32 and float64
by the copy (``NumbaEngine.cast``), rounding to nearest as NumPy's ``astype``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
from numba import cuda

from .common import (
    FLOAT_DTYPES,
    HALF_DTYPES,
    PtxVariant,
    array,
    compute_dtype,
    grid_for,
    launch,
    numba_type,
    scalar,
)

# Every dtype the engine fills or copies: float buffers, int64 labels and indices.
_DTYPES = (*FLOAT_DTYPES, np.dtype(np.int64))


@cuda.jit
def fill_kernel(A, value):
    """A[i] = value over a flat array."""
    for i in range(cuda.grid(1), A.size, cuda.gridsize(1)):
        A[i] = value


@cuda.jit
def copy_kernel(src, dst):
    """dst[i] = src[i] over flat arrays of one size and dtype."""
    for i in range(cuda.grid(1), src.size, cuda.gridsize(1)):
        dst[i] = src[i]


@cuda.jit
def take_rows_kernel(A, indices, out):
    """out[k] = A[indices[k // F], k % F] for the flat (M * F,) out of an (N, F) A."""
    n_cols = A.shape[1]
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    if start >= out.size:
        return  # also when n_cols == 0, before dividing by it
    # Walk (row, col) along with the flat index instead of dividing every step:
    # a step of ``stride`` elements is row_step rows and col_step columns.
    row = start // n_cols
    col = start - row * n_cols
    row_step = stride // n_cols
    col_step = stride - row_step * n_cols
    for k in range(start, out.size, stride):
        out[k] = A[indices[row], col]
        col += col_step
        row += row_step
        if col >= n_cols:
            col -= n_cols
            row += 1


@cuda.jit
def take_kernel(A, indices, out):
    """out[k] = A[indices[k]] for 1-D A and out."""
    for k in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        out[k] = A[indices[k]]


def _flat(A: Any) -> Any:
    return A.reshape(A.size)


def fill(A: Any, value: float) -> None:
    """Set every element of ``A`` to ``value``.

    Args:
        A: C-contiguous device array of any shape and dtype.
        value: converted to ``A``'s dtype (as NumPy converts it) before launch; a float16
            value is passed as the float32 of that float16, which the kernel stores exactly.
    """
    if A.size == 0:  # nothing to write: launch nothing
        return
    value = scalar(compute_dtype(A.dtype))(A.dtype.type(value))
    launch(fill_kernel, grid_for(A.size), _flat(A), value)


def copy(src: Any, dst: Any) -> None:
    """Copy ``src`` into ``dst`` with a kernel, so the copy is ordered on the stream.

    Args:
        src: C-contiguous device array of any shape and dtype.
        dst: device array of the shape of ``src``, of its dtype or, for a conversion
            (``NumbaEngine.cast``), of another float dtype (float16, float32, float64):
            values round to nearest, once.
    """
    if dst.size == 0:  # nothing to write: launch nothing
        return
    launch(copy_kernel, grid_for(src.size), _flat(src), _flat(dst))


def take_rows(A: Any, indices: Any, out: Any) -> None:
    """Gather rows: ``out[k] = A[indices[k]]``.

    Consecutive threads copy consecutive elements of ``out``, so both the
    reads within a row of ``A`` and the writes are coalesced.

    Args:
        A: C-contiguous device array ``(N,)`` or ``(N, ...)`` (a row is
            everything after the first axis), float32, float64 or int64.
        indices: int64 device array ``(M,)``, each in ``[0, N)``.
        out: device array ``(M,)`` or ``(M, ...)``, the dtype and row shape of ``A``.
    """
    if out.size == 0:  # nothing to write: launch nothing
        return
    grid = grid_for(out.size)
    if A.ndim == 1:
        launch(take_kernel, grid, A, indices, out)
        return
    row_size = math.prod(A.shape[1:])
    launch(take_rows_kernel, grid, A.reshape(A.shape[0], row_size), indices, _flat(out))


def _conversions() -> Iterator[tuple[np.dtype, np.dtype]]:
    """Every ``(source, target)`` pair of distinct float dtypes ``NumbaEngine.cast`` copies
    between: float32 and float64 both ways, and float16 to and from each."""
    floats = (*FLOAT_DTYPES, *HALF_DTYPES)
    for source in floats:
        for target in floats:
            if source != target:
                yield source, target


def ptx_variants() -> Iterator[PtxVariant]:
    """Fill, copy and both gathers, for float32, float64 and int64, as launched; fill and
    copy for float16; and the converting copies of ``NumbaEngine.cast``."""
    index = array(np.int64, 1)
    for dtype in _DTYPES:
        flat, rows = array(dtype, 1), array(dtype, 2)
        short = dtype.name.replace("float", "f").replace("int", "i")
        yield f"fill[{short}]", fill_kernel, (flat, numba_type(dtype))
        yield f"copy[{short}]", copy_kernel, (flat, flat)
        yield f"take_rows[{short}]", take_rows_kernel, (rows, index, flat)
        yield f"take[{short}]", take_kernel, (flat, index, flat)
    for dtype in HALF_DTYPES:  # mixed precision's layers: no gathers of float16
        flat = array(dtype, 1)
        short = dtype.name.replace("float", "f")
        yield f"fill[{short}]", fill_kernel, (flat, numba_type(compute_dtype(dtype)))
        yield f"copy[{short}]", copy_kernel, (flat, flat)
    # the engine's cast: a copy between the float dtypes, converting as it stores
    for source, target in _conversions():
        names = (source.name.replace("float", "f"), target.name.replace("float", "f"))
        yield f"copy[{names[0]}->{names[1]}]", copy_kernel, (array(source, 1), array(target, 1))
