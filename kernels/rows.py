"""The layout of row kernels, and the reductions within a row's group of threads.

Row kernels (softmax, the losses, the argmax accuracy counts) give each row a
group of ``width`` consecutive threads, the smallest power of two not below the
row length, capped at ``THREADS``: rows of 10 run 16 to a block, each group
reading its row's consecutive elements, so a warp reads two adjacent rows whole;
rows of 256 or more take a whole block and stride over their columns; a batch of
fewer rows than a block holds gets a block of just enough warps. Groups reduce
through shared memory with the ``group_*`` device functions below, in a fixed
order, so results repeat bit for bit.

Used by ``softmax.py``, ``losses.py`` and the accuracy counts of ``reductions.py``.
"""

from __future__ import annotations

import functools
from typing import Any

from numba import cuda

from .common import MAX_BLOCKS, THREADS, WARP, device_function


def block_threads(items: int) -> int:
    """Threads for one block over ``items`` work items: a power of two in ``[WARP, THREADS]``."""
    threads = WARP
    while threads < items and threads < THREADS:
        threads *= 2
    return threads


def row_width(O: int) -> int:
    """Threads per row for rows of ``O`` elements: the next power of two, at most ``THREADS``."""
    width = 1
    while width < O and width < THREADS:
        width *= 2
    return width


def row_grid(N: int, O: int) -> tuple[int, int, int]:
    """``(blocks, threads, width)`` for a row kernel over ``N`` rows of ``O`` elements."""
    width = row_width(O)
    threads = block_threads(max(N, 1) * width)
    rows_per_block = threads // width
    return max(1, min(MAX_BLOCKS, -(-N // rows_per_block))), threads, width


@device_function
def first_max(value, index, best, at):
    """Whether ``(value, index)`` beats ``(best, at)`` as in ``numpy.argmax`` (NaN wins)."""
    if value != value:
        return best == best or index < at
    if best != best:
        return False
    return value > best or (value == best and index < at)


@functools.cache
def group_reductions(dtype: Any) -> tuple[Any, Any, Any, Any]:
    """Device functions reducing one value per thread over its group of ``width`` lanes.

    ``group_sum(s, t, lane, width, value)`` and ``group_max(...)`` take the
    block's shared buffer of ``THREADS`` elements of ``dtype``, the thread's
    index in the block, its lane in its group and the group width (a power of
    two, the same for the whole block), and return the group's sum or maximum
    to every lane of the group. ``group_sum2(s, s2, t, lane, width, value,
    value2)`` sums two values at once through a second buffer, in the same
    barriers. ``group_argmax(s, si, t, lane, width, value, index)`` also takes
    an int64 shared buffer ``si`` and returns ``(maximum, index)``: the first
    index among equal maxima, NaN counted as the maximum, as ``numpy.argmax``.
    Every thread of the block must call them together: they hold
    ``cuda.syncthreads()``.
    """

    @device_function
    def group_sum(s, t, lane, width, value):
        s[t] = value
        cuda.syncthreads()
        stride = width // 2
        while stride > 0:
            if lane < stride:
                s[t] = s[t] + s[t + stride]
            cuda.syncthreads()
            stride //= 2
        result = s[t - lane]
        cuda.syncthreads()  # everyone has read the result before s is reused
        return result

    @device_function
    def group_sum2(s, s2, t, lane, width, value, value2):
        s[t] = value
        s2[t] = value2
        cuda.syncthreads()
        stride = width // 2
        while stride > 0:
            if lane < stride:
                s[t] = s[t] + s[t + stride]
                s2[t] = s2[t] + s2[t + stride]
            cuda.syncthreads()
            stride //= 2
        result, result2 = s[t - lane], s2[t - lane]
        cuda.syncthreads()
        return result, result2

    @device_function
    def group_max(s, t, lane, width, value):
        s[t] = value
        cuda.syncthreads()
        stride = width // 2
        while stride > 0:
            if lane < stride:
                s[t] = max(s[t], s[t + stride])
            cuda.syncthreads()
            stride //= 2
        result = s[t - lane]
        cuda.syncthreads()
        return result

    @device_function
    def group_argmax(s, si, t, lane, width, value, index):
        s[t] = value
        si[t] = index
        cuda.syncthreads()
        stride = width // 2
        while stride > 0:
            if lane < stride and first_max(s[t + stride], si[t + stride], s[t], si[t]):
                s[t] = s[t + stride]
                si[t] = si[t + stride]
            cuda.syncthreads()
            stride //= 2
        result, at = s[t - lane], si[t - lane]
        cuda.syncthreads()
        return result, at

    return group_sum, group_sum2, group_max, group_argmax
