"""The metric kernels: per-sample accuracies and confusion counts at thresholds.

``accuracy_values`` runs one thread per row and writes one float64 accuracy per
sample (binary, categorical, sparse, top-k, sparse top-k), which
``reductions.map_sum`` then weights and sums. ``confusion_counts`` runs one block
per (threshold, label): its threads walk the block's elements with a stride, each
summing its true/false positive/negative weights in float64, and the block sums
its threads through shared memory in a fixed order, so the counts repeat bit for
bit (no atomics). A batch's histogram of ``T`` thresholds is then ``T`` blocks, and
the model's epoch total is accumulated on the device by the caller.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import numpy as np
from numba import cuda, types

from .common import (
    FLOAT_DTYPES,
    WARP,
    PtxVariant,
    array,
    device_function,
    grid_for,
    launch,
    scalar,
)

ACCURACY_KINDS = ("binary", "categorical", "sparse", "top_k", "sparse_top_k")
_KIND_CODES = {kind: code for code, kind in enumerate(ACCURACY_KINDS)}

# Threads of a confusion-count block: enough to walk a batch's elements in a few strides.
CONFUSION_THREADS = 128

# |y_pred| at or below this is "no prediction" for the row-maximum rule (F1Score).
ROW_MAX_EPSILON = 1e-9

_F64 = np.dtype(np.float64)


@functools.cache
def _accuracy_kernel(dtype: Any, kind: str, label_dtype: Any) -> Any:
    f = scalar(dtype)
    neg_inf = f(-np.inf)
    code = _KIND_CODES[kind]

    @device_function
    def argmax(X, i, O):
        best, index = X[i, 0], 0
        for j in range(1, O):
            value = X[i, j]
            if value > best or (value != value and best == best):
                best, index = value, j
        return index

    @cuda.jit
    def accuracy_kernel(P, Y, k, threshold, out):
        """out[i] = the accuracy of row i of P against Y (one thread per row)."""
        i = cuda.grid(1)
        N, O = P.shape
        if i >= N:
            return
        if code == 0:  # binary: the row's share of elements agreeing with the label
            agree = 0.0
            for j in range(O):
                predicted = f(1.0) if P[i, j] > threshold else f(0.0)
                if predicted == Y[i, j]:
                    agree += 1.0
            out[i] = agree / O
            return
        if code == 1 or code == 3:
            target = argmax(Y, i, O)
        else:
            target = Y[i]
        if code <= 2:
            out[i] = 1.0 if argmax(P, i, O) == target else 0.0
            return
        at_target = P[i, target]
        if at_target != at_target:
            at_target = neg_inf
        greater = 0
        for j in range(O):
            if P[i, j] > at_target:
                greater += 1
        out[i] = 1.0 if greater < k else 0.0

    return accuracy_kernel


def accuracy_values(
    kind: str, Y_pred: Any, Y_true: Any, out: Any, *, k: int = 1, threshold: float = 0.5
) -> None:
    """Write ``out[i]``, the accuracy of sample ``i`` (``Engine.accuracy_values``).

    Args:
        kind: one of ``ACCURACY_KINDS``.
        Y_pred: C-contiguous float32 or float64 device array ``(N, O)``.
        Y_true: float device array like ``Y_pred``, or int64 labels ``(N,)`` for the
            sparse kinds.
        out: float64 device array ``(N,)``.
        k: for the top-k kinds.
        threshold: for ``"binary"``.

    Raises:
        KeyError: ``kind`` is not one of ``ACCURACY_KINDS``.
    """
    if kind not in _KIND_CODES:
        raise KeyError(f"unknown accuracy kind {kind!r}; available: {', '.join(ACCURACY_KINDS)}")
    N = Y_pred.shape[0]
    if N == 0:
        return
    kernel = _accuracy_kernel(Y_pred.dtype, kind, Y_true.dtype)
    launch(kernel, grid_for(N), Y_pred, Y_true, k, scalar(Y_pred.dtype)(threshold), out)


@functools.cache
def _confusion_kernel(dtype: Any) -> Any:
    f = scalar(dtype)
    neg_inf = f(-np.inf)
    epsilon = f(ROW_MAX_EPSILON)
    zero64 = np.float64(0.0)

    @device_function
    def kept(P, n, c, O, top_k):
        """P[n, c], or -inf when it is outside its row's top_k (top_k 0: all kept)."""
        value = P[n, c]
        if top_k > 0:
            rank = 0
            for j in range(O):
                other = P[n, j]
                if other > value or (other == value and j < c):
                    rank += 1
            if rank >= top_k:
                value = neg_inf
        return value

    @cuda.jit
    def confusion_kernel(P, Y, thresholds, W, weighted, per_label, class_id, top_k, row_max, out):
        """out[:, t, l] = the weighted counts of block (t, l) (class_id -1: none; top_k 0:
        none)."""
        s = cuda.shared.array((4, CONFUSION_THREADS), types.float64)
        t, label = cuda.blockIdx.x, cuda.blockIdx.y
        lane, width = cuda.threadIdx.x, cuda.blockDim.x
        N, O = P.shape
        if class_id >= 0:
            first, columns = class_id, 1
        elif per_label != 0:
            first, columns = label, 1
        else:
            first, columns = 0, O
        threshold = thresholds[t]
        tp, fp, tn, fn = zero64, zero64, zero64, zero64
        for e in range(lane, N * columns, width):
            n = e // columns
            c = first + e - n * columns
            value = kept(P, n, c, O, top_k)
            if row_max != 0:
                largest = kept(P, n, 0, O, top_k)
                for j in range(1, O):
                    largest = max(largest, kept(P, n, j, O, top_k))
                positive = value >= largest and abs(value) > epsilon
            else:
                positive = value > threshold
            w = np.float64(W[n]) if weighted != 0 else np.float64(1.0)
            if Y[n, c] != 0:
                if positive:
                    tp += w
                else:
                    fn += w
            elif positive:
                fp += w
            else:
                tn += w
        s[0, lane], s[1, lane], s[2, lane], s[3, lane] = tp, fp, tn, fn
        cuda.syncthreads()
        stride = width // 2
        while stride > 0:
            if lane < stride:
                for q in range(4):
                    s[q, lane] += s[q, lane + stride]
            cuda.syncthreads()
            stride //= 2
        if lane < 4:
            out[lane, t, label] = s[lane, 0]

    return confusion_kernel


def confusion_counts(
    Y_pred: Any,
    Y_true: Any,
    thresholds: Any,
    weights: Any,
    out: Any,
    *,
    weighted: bool,
    per_label: bool = False,
    class_id: int | None = None,
    top_k: int | None = None,
    row_max: bool = False,
) -> None:
    """Write the weighted confusion counts ``out`` (``Engine.confusion_counts``).

    Args:
        Y_pred: C-contiguous float32 or float64 device array ``(N, O)``.
        Y_true: float device array like ``Y_pred``.
        thresholds: device array ``(T,)`` of ``Y_pred``'s dtype.
        weights: float device array ``(N,)``: the sample weights when ``weighted``, else
            any array of the dtype (not read).
        out: float64 device array ``(4, T, L)``, written whole.
        weighted: whether ``weights`` are read.
        per_label, class_id, top_k, row_max: as ``Engine.confusion_counts``.
    """
    T, L = out.shape[1], out.shape[2]
    if T == 0 or L == 0:
        return
    work = Y_pred.shape[0] * (Y_pred.shape[1] if L == 1 else 1)
    threads = min(CONFUSION_THREADS, max(WARP, 1 << max(0, (work - 1).bit_length())))
    kernel = _confusion_kernel(Y_pred.dtype)
    launch(
        kernel,
        ((T, L), threads),
        Y_pred,
        Y_true,
        thresholds,
        weights,
        1 if weighted else 0,
        1 if per_label else 0,
        -1 if class_id is None else class_id,
        0 if top_k is None else top_k,
        1 if row_max else 0,
        out,
    )


def ptx_variants() -> Iterator[PtxVariant]:
    """Every kernel this module launches, for each dtype, with its argument types."""
    i64 = types.int64
    for dtype in FLOAT_DTYPES:
        flat, rows, f = array(dtype, 1), array(dtype, 2), types.float64
        short = dtype.name.replace("float", "f")
        for kind in ACCURACY_KINDS:
            sparse = kind.startswith("sparse")
            labels = array(np.dtype(np.int64), 1) if sparse else rows
            yield (
                f"accuracy[{kind},{short}]",
                _accuracy_kernel(dtype, kind, np.dtype(np.int64) if sparse else dtype),
                (
                    rows,
                    labels,
                    i64,
                    {np.dtype(np.float32): types.float32}.get(dtype, f),
                    array(_F64, 1),
                ),
            )
        yield (
            f"confusion[{short}]",
            _confusion_kernel(dtype),
            (rows, rows, flat, flat, i64, i64, i64, i64, i64, array(_F64, 3)),
        )
