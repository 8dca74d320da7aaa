"""Whole-array reductions to one float64 number, and the accuracy counts.

Whole arrays (``sum_all``, ``mean_all``, ``penalty``, the ``"binary"`` accuracy
count, ``count_nonbinary``) go through one kernel: each thread maps its
grid-stride share of the elements to float64 and sums it, and each block sums
its threads by a shared-memory tree into one partial. An array of at most
``THREADS * ITEMS_PER_THREAD`` elements takes one block, which writes the result
itself (with just enough warps for ``ITEMS_PER_THREAD`` elements a thread); a
larger one writes a partial per block into a float64 scratch vector
(``common.scratch``, allocated once and reused), which the same kernel, on one
block, then sums into ``out``. The grid depends
only on the size and every sum runs in a fixed order, so a result is
bit-identical from run to run (no atomics).

Row kernels (here the argmax accuracy counts) use the layout and the group
reductions of ``rows.py``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
from numba import cuda, types

from .common import (
    FLOAT_DTYPES,
    THREADS,
    PtxVariant,
    array,
    blocks_for,
    device_function,
    grid_for,
    launch,
    numba_type,
    scalar,
    scratch,
)
from .rows import block_threads, first_max, group_reductions, row_grid

# Each thread sums at least this many elements before the block's tree: arrays of
# up to 2048 elements (a batch's per-sample losses) then take one block and one
# launch, and large arrays leave few partials for the second pass.
ITEMS_PER_THREAD = 8

ACCURACY_KINDS = ("binary", "categorical", "sparse")

# What the whole-array kernel sums, per element pair (a, b) and float64 constants (c1, c2).
_MAPS = ("sum", "penalty", "nonbinary", "agree", "product", "outside", "outside_whole")
#: the maps that count data that fails a check; they also run on int64 labels
COUNT_MAPS = ("outside", "outside_whole")

_F64 = np.dtype(np.float64)


@functools.cache
def _reduce_kernel(dtype: Any, mapping: str) -> Any:
    f = scalar(dtype)
    zero, half, one = f(0.0), f(0.5), f(1.0)
    zero64, one64 = np.float64(0.0), np.float64(1.0)
    group_sum = group_reductions(_F64)[0]

    if mapping == "sum":

        def term(a, b, c1, c2):
            return a

    elif mapping == "penalty":

        def term(a, b, c1, c2):
            return c1 * abs(a) + c2 * a * a  # c1, c2 are float64: so is the arithmetic

    elif mapping == "nonbinary":

        def term(a, b, c1, c2):
            return zero64 if a == zero or a == one else one64

    elif mapping == "agree":

        def term(a, b, c1, c2):
            return one64 if (a > half) == (b > half) else zero64

    elif mapping == "product":

        def term(a, b, c1, c2):
            return np.float64(a) * np.float64(b)

    elif mapping == "outside":

        def term(a, b, c1, c2):
            return zero64 if c1 <= a and a <= c2 else one64  # NaN compares false: outside

    elif mapping == "outside_whole":

        def term(a, b, c1, c2):
            return zero64 if c1 <= a and a <= c2 and math.floor(a) == a else one64

    else:
        raise KeyError(f"unknown reduction {mapping!r}; available: {', '.join(_MAPS)}")
    term = device_function(term)

    @cuda.jit
    def reduce_kernel(A, B, c1, c2, scale, out):
        """out[block] = scale * sum of term(A[k], B[k]) over the block's share of flat arrays."""
        s = cuda.shared.array(THREADS, types.float64)
        t = cuda.threadIdx.x
        total = zero64
        for k in range(cuda.grid(1), A.size, cuda.gridsize(1)):
            total += term(A[k], B[k], c1, c2)
        total = group_sum(s, t, t, cuda.blockDim.x, total)
        if t == 0:
            out[cuda.blockIdx.x] = scale * total

    return reduce_kernel


@functools.cache
def _argmax_match_kernel(dtype: Any, sparse: bool) -> Any:
    neg_inf = scalar(dtype)(-np.inf)
    zero64, one64 = np.float64(0.0), np.float64(1.0)
    element = numba_type(dtype)
    group_argmax = group_reductions(dtype)[3]

    @device_function
    def row_argmax(X, i, N, O, s, si, t, lane, width):
        best, at = neg_inf, O  # O: after every real index, so any element beats it
        if i < N:
            for j in range(lane, O, width):
                if first_max(X[i, j], j, best, at):
                    best, at = X[i, j], j
        return group_argmax(s, si, t, lane, width, best, at)[1]

    if sparse:

        @device_function
        def expected_index(Y, i, N, O, s, si, t, lane, width):
            return Y[i] if i < N else O

    else:
        expected_index = row_argmax

    @cuda.jit
    def argmax_match_kernel(P, Y, width, hits):
        """hits[i] = 1.0 where argmax(P[i]) equals argmax(Y[i]) (or label Y[i]), else 0.0."""
        s = cuda.shared.array(THREADS, element)
        si = cuda.shared.array(THREADS, types.int64)
        N, O = P.shape
        t = cuda.threadIdx.x
        lane, group = t % width, t // width
        rows = cuda.blockDim.x // width
        # The loop bounds are the same for the whole block, so every thread
        # reaches every syncthreads; rows past N only contribute identities.
        for first in range(cuda.blockIdx.x * rows, N, cuda.gridDim.x * rows):
            i = first + group
            predicted = row_argmax(P, i, N, O, s, si, t, lane, width)
            expected = expected_index(Y, i, N, O, s, si, t, lane, width)
            if i < N and lane == 0:
                hits[i] = one64 if predicted == expected else zero64

    return argmax_match_kernel


def map_sum(
    mapping: str,
    A: Any,
    B: Any,
    out: Any,
    *,
    c1: float = 0.0,
    c2: float = 0.0,
    scale: float = 1.0,
) -> None:
    """Write ``out[0] = scale * sum(term(A, B))``, summed in float64, deterministically.

    ``term`` is ``mapping``: ``"sum"`` (``A``), ``"penalty"`` (``c1 * |A| + c2 * A**2``),
    ``"nonbinary"`` (1 where ``A`` is neither 0 nor 1), ``"agree"`` (1 where
    ``A > 0.5`` equals ``B > 0.5``), ``"product"`` (``A * B``, a weighted sum; ``B``
    may have another float dtype), ``"outside"`` (1 where ``A`` is NaN or outside
    ``[c1, c2]``; ``A`` may be int64) or ``"outside_whole"`` (also 1 where ``A`` is not
    a whole number). Arrays above ``THREADS * ITEMS_PER_THREAD``
    elements need a float64 scratch of one partial per block (at most ``MAX_BLOCKS``),
    the reused ``common.scratch("reduce_partials")``: nothing is allocated per call.

    Args:
        mapping: one of the seven above.
        A: C-contiguous float device array of any shape.
        B: device array of the shape of ``A``, read by ``"agree"`` only (pass ``A``).
        out: float64 device array ``(1,)``.
        c1, c2: the constants of ``"penalty"``.
        scale: the factor of the sum (``1 / A.size`` for a mean).
    """
    a, b = A.reshape(A.size), B.reshape(B.size)
    c1, c2, scale = np.float64(c1), np.float64(c2), np.float64(scale)
    kernel = _reduce_kernel(A.dtype, mapping)
    blocks = blocks_for(A.size, THREADS * ITEMS_PER_THREAD)
    if blocks == 1:
        launch(kernel, (1, block_threads(-(-A.size // ITEMS_PER_THREAD))), a, b, c1, c2, scale, out)
        return
    partials = scratch("reduce_partials", blocks, _F64)
    launch(kernel, (blocks, THREADS), a, b, c1, c2, np.float64(1.0), partials)
    zero = np.float64(0.0)
    threads = block_threads(-(-blocks // ITEMS_PER_THREAD))
    launch(_reduce_kernel(_F64, "sum"), (1, threads), partials, partials, zero, zero, scale, out)


def sum_all(A: Any, out: Any) -> None:
    """Write ``out[0] = sum(A)`` over every element, accumulated in float64.

    Args:
        A: C-contiguous float32 or float64 device array of any shape.
        out: float64 device array ``(1,)``.

    Large arrays use a reused float64 scratch (see ``map_sum``).
    """
    map_sum("sum", A, A, out)


def mean_all(A: Any, out: Any) -> None:
    """Write ``out[0] = mean(A)`` over every element, accumulated in float64 (NaN if empty).

    Args:
        A: C-contiguous float32 or float64 device array of any shape.
        out: float64 device array ``(1,)``.

    Large arrays use a reused float64 scratch (see ``map_sum``).
    """
    map_sum("sum", A, A, out, scale=1.0 / A.size if A.size else math.nan)


def penalty(W: Any, out: Any, *, l1: float, l2: float) -> None:
    """Write ``out[0] = l1 * sum(|W|) + l2 * sum(W**2)``, the weight penalty, in float64.

    Args:
        W: C-contiguous float32 or float64 device array of any shape.
        out: float64 device array ``(1,)``.
        l1, l2: the penalty's factors.

    Large arrays use a reused float64 scratch (see ``map_sum``).
    """
    map_sum("penalty", W, W, out, c1=l1, c2=l2)


def count_nonbinary(A: Any, out: Any) -> None:
    """Write ``out[0]`` = the number of elements of ``A`` that are neither 0 nor 1.

    Args:
        A: C-contiguous float32 or float64 device array of any shape.
        out: float64 device array ``(1,)``.

    Large arrays use a reused float64 scratch (see ``map_sum``).
    """
    map_sum("nonbinary", A, A, out)


@functools.cache
def _penalty_gradient_kernel(dtype: Any) -> Any:
    f = scalar(dtype)
    zero, one = f(0.0), f(1.0)

    @cuda.jit
    def penalty_gradient_kernel(W, dW, l1, two_l2):
        """dW += l1 * sign(W) + 2 * l2 * W over flat float arrays of one size (sign(0) = 0)."""
        for k in range(cuda.grid(1), W.size, cuda.gridsize(1)):
            w = W[k]
            sign = one if w > zero else (-one if w < zero else zero)
            dW[k] = dW[k] + l1 * sign + two_l2 * w

    return penalty_gradient_kernel


def backprop_penalty(W: Any, dW: Any, *, l1: float, l2: float) -> None:
    """Add the penalty's gradient to ``dW`` in place: ``dW += l1 * sign(W) + 2 * l2 * W``.

    Args:
        W: C-contiguous float32 or float64 device array of any shape.
        dW: device array of the shape and dtype of ``W``.
        l1, l2: the penalty's factors.
    """
    if dW.size == 0:  # nothing to write: launch nothing
        return
    f = scalar(W.dtype)
    w, dw = W.reshape(W.size), dW.reshape(dW.size)
    launch(_penalty_gradient_kernel(W.dtype), grid_for(W.size), w, dw, f(l1), f(2.0 * l2))


def count_correct(kind: str, Y_pred: Any, Y_true: Any, out: Any, *, hits: Any = None) -> None:
    """Write ``out[0]`` = the number of correct predictions, as a float64.

    Args:
        kind: ``"binary"`` (elements where ``Y_pred > 0.5`` equals ``Y_true > 0.5``),
            ``"categorical"`` (rows whose argmaxes agree, the first index on ties,
            as ``numpy.argmax``) or ``"sparse"`` (rows whose argmax is the label).
        Y_pred: C-contiguous float32 or float64 device array, ``(N, O)`` for the
            row kinds, any shape for ``"binary"``.
        Y_true: float device array of the shape and dtype of ``Y_pred``, or int64
            labels ``(N,)`` for ``"sparse"``.
        out: float64 device array ``(1,)``.
        hits: float64 device array ``(N,)`` for the row kinds' per-row hits, or
            ``None`` for a reused scratch (``common.scratch``).

    The row kinds write per-row hits into ``hits``, then sum it.

    Raises:
        KeyError: ``kind`` is not one of ``ACCURACY_KINDS``.
    """
    if kind == "binary":
        map_sum("agree", Y_pred, Y_true, out)
        return
    if kind not in ACCURACY_KINDS:
        raise KeyError(f"unknown accuracy kind {kind!r}; available: {', '.join(ACCURACY_KINDS)}")
    N, O = Y_pred.shape
    if hits is None:
        hits = scratch("row_hits", N, _F64)
    blocks, threads, width = row_grid(N, O)
    launch(
        _argmax_match_kernel(Y_pred.dtype, kind == "sparse"),
        (blocks, threads),
        Y_pred,
        Y_true,
        width,
        hits,
    )
    sum_all(hits, out)


def ptx_variants() -> Iterator[PtxVariant]:
    """Every kernel this module launches, for each dtype, with its argument types."""
    f64, i64 = types.float64, types.int64
    flat64 = array(_F64, 1)
    labels = array(np.int64, 1)
    yield (
        "reduce[outside,i64]",
        _reduce_kernel(np.dtype(np.int64), "outside"),
        (labels, labels, f64, f64, f64, flat64),
    )
    for dtype in FLOAT_DTYPES:
        flat, rows, scalar_type = array(dtype, 1), array(dtype, 2), numba_type(dtype)
        short = dtype.name.replace("float", "f")
        for mapping in _MAPS:
            yield (
                f"reduce[{mapping},{short}]",
                _reduce_kernel(dtype, mapping),
                (flat, flat, f64, f64, f64, flat64),
            )
        yield (  # a weighted sum of float64 per-sample values with weights of this dtype
            f"reduce[product,f64x{short}]",
            _reduce_kernel(_F64, "product"),
            (flat64, flat, f64, f64, f64, flat64),
        )
        yield (
            f"penalty_gradient[{short}]",
            _penalty_gradient_kernel(dtype),
            (flat, flat, scalar_type, scalar_type),
        )
        yield (
            f"argmax_match[categorical,{short}]",
            _argmax_match_kernel(dtype, False),
            (rows, rows, i64, flat64),
        )
        yield (
            f"argmax_match[sparse,{short}]",
            _argmax_match_kernel(dtype, True),
            (rows, array(np.int64, 1), i64, flat64),
        )
