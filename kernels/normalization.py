"""Batch, layer and fixed-statistics normalization of ``(N, F)`` arrays, and their gradients.

Column kernels (batch normalization) give each block a strip of ``STRIP`` = 32
adjacent columns and ``ROW_THREADS`` = 8 rows of threads: a warp reads 32
consecutive elements of a row, so every load is coalesced, and the block walks
all ``N`` rows. One kernel computes a strip's means and then its biased
variances from the centred values (two passes over the rows, the first reduced
and broadcast through shared memory), so the variance is as exact as NumPy's.
The backward kernel sums ``dY`` and ``dY * Xhat`` per column the same way,
writes them as ``dbeta`` and ``dgamma`` and then, in the same launch, the
closed-form input gradient. Sums are folded in a fixed order (no atomics), so
results repeat bit for bit. One block per strip limits a launch to ``F / 32``
blocks: ample for the widths of dense layers, and no partial rows to combine.

Row kernels (layer normalization) use the groups of ``rows.py``: ``width``
lanes per row reduce the row's mean, variance and, backward, its two sums.
``standardize`` (the ``Normalization`` layer) is elementwise.

Float16 arrays (a mixed-precision layer's) are loaded into float32, computed in
float32 and rounded once when stored.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from typing import Any

from numba import cuda, types

from .common import (
    FLOAT_DTYPES,
    HALF_DTYPES,
    THREADS,
    PtxVariant,
    array,
    compute_dtype,
    grid_for,
    launch,
    numba_type,
    scalar,
)
from .dense_backward import ROW_THREADS, STRIP
from .rows import group_reductions, row_grid

#: the floor of ``sqrt(variance)`` in ``standardize``: Keras's ``backend.epsilon()``
STANDARDIZE_FLOOR = 1e-7


def _strips(F: int) -> int:
    return -(-F // STRIP)


@functools.cache
def _moments_kernel(dtype: Any) -> Any:
    compute = compute_dtype(dtype)
    widen = scalar(compute)  # float16 loads to float32; a no-op otherwise
    zero = scalar(compute)(0.0)
    element = numba_type(compute)

    @cuda.jit
    def batch_moments_kernel(X, mean, variance):
        """mean[j] = sum_i X[i, j] / N; variance[j] = sum_i (X[i, j] - mean[j])**2 / N."""
        s = cuda.shared.array((ROW_THREADS, STRIP), element)
        N, F = X.shape
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        j = cuda.blockIdx.x * STRIP + tx
        count = widen(N)
        acc = zero
        if j < F:
            for i in range(ty, N, ROW_THREADS):
                acc += widen(X[i, j])
        s[ty, tx] = acc
        cuda.syncthreads()
        if ty == 0:
            for k in range(1, ROW_THREADS):
                acc += s[k, tx]
            s[0, tx] = acc / count
        cuda.syncthreads()
        m = s[0, tx]
        cuda.syncthreads()  # every thread has read the mean before s is reused
        acc = zero
        if j < F:
            for i in range(ty, N, ROW_THREADS):
                d = widen(X[i, j]) - m
                acc += d * d
        s[ty, tx] = acc
        cuda.syncthreads()
        if ty == 0 and j < F:
            for k in range(1, ROW_THREADS):
                acc += s[k, tx]
            mean[j] = m
            variance[j] = acc / count

    return batch_moments_kernel


@functools.cache
def _normalize_kernel(dtype: Any, has_gamma: bool, has_beta: bool) -> Any:
    compute = compute_dtype(dtype)
    widen = scalar(compute)
    one = scalar(compute)(1.0)

    @cuda.jit
    def batch_normalize_kernel(X, mean, variance, gamma, beta, epsilon, Y, Xhat):
        """Xhat = (X - mean) / sqrt(variance + epsilon); Y = gamma * Xhat + beta, flat."""
        N, F = X.shape
        start = cuda.grid(1)
        for k in range(start, N * F, cuda.gridsize(1)):
            i = k // F
            j = k - i * F
            xhat = (widen(X[i, j]) - widen(mean[j])) * (
                one / math.sqrt(widen(variance[j]) + epsilon)
            )
            Xhat[i, j] = xhat
            y = xhat
            if has_gamma:
                y = y * widen(gamma[j])
            if has_beta:
                y = y + widen(beta[j])
            Y[i, j] = y

    return batch_normalize_kernel


@functools.cache
def _backward_kernel(
    dtype: Any, has_gamma: bool, batch_statistics: bool, reduce: bool, write_dx: bool
) -> Any:
    compute = compute_dtype(dtype)
    widen = scalar(compute)
    zero = scalar(compute)(0.0)
    one = scalar(compute)(1.0)
    element = numba_type(compute)

    @cuda.jit
    def batch_normalize_backward_kernel(
        dY, Xhat, variance, gamma, epsilon, dgamma, dbeta, dX, write_grads
    ):
        """dbeta = sum_i dY, dgamma = sum_i dY * Xhat (when write_grads); then dX."""
        s = cuda.shared.array((ROW_THREADS, STRIP), element)
        s2 = cuda.shared.array((ROW_THREADS, STRIP), element)
        N, F = dY.shape
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        j = cuda.blockIdx.x * STRIP + tx
        sum_dy = zero
        sum_dy_xhat = zero
        if reduce:
            if j < F:
                for i in range(ty, N, ROW_THREADS):
                    dy = widen(dY[i, j])
                    sum_dy += dy
                    sum_dy_xhat += dy * widen(Xhat[i, j])
            s[ty, tx] = sum_dy
            s2[ty, tx] = sum_dy_xhat
            cuda.syncthreads()
            if ty == 0:
                for k in range(1, ROW_THREADS):
                    sum_dy += s[k, tx]
                    sum_dy_xhat += s2[k, tx]
                s[0, tx] = sum_dy
                s2[0, tx] = sum_dy_xhat
                if write_grads and j < F:
                    dbeta[j] = sum_dy
                    dgamma[j] = sum_dy_xhat
            cuda.syncthreads()
            sum_dy = s[0, tx]
            sum_dy_xhat = s2[0, tx]
        if write_dx and j < F:
            factor = one / math.sqrt(widen(variance[j]) + epsilon)
            if has_gamma:
                factor = factor * widen(gamma[j])
            count = widen(N)
            for i in range(ty, N, ROW_THREADS):
                dy = widen(dY[i, j])
                if batch_statistics:
                    dX[i, j] = (factor / count) * (
                        count * dy - sum_dy - widen(Xhat[i, j]) * sum_dy_xhat
                    )
                else:
                    dX[i, j] = factor * dy

    return batch_normalize_backward_kernel


@functools.cache
def _layer_norm_kernel(dtype: Any, has_gamma: bool, has_beta: bool) -> Any:
    compute = compute_dtype(dtype)
    widen = scalar(compute)
    zero = scalar(compute)(0.0)
    one = scalar(compute)(1.0)
    element = numba_type(compute)
    group_sum = group_reductions(compute)[0]

    @cuda.jit
    def layer_normalize_kernel(X, gamma, beta, epsilon, Y, Xhat, inv_std, width):
        """Each row: Xhat = (x - mean) / sqrt(var + epsilon), Y = gamma * Xhat + beta."""
        s = cuda.shared.array(THREADS, element)
        N, F = X.shape
        t = cuda.threadIdx.x
        lane, group = t % width, t // width
        rows = cuda.blockDim.x // width
        count = widen(F)
        # the loop bounds are the same for the whole block: every thread meets every barrier
        for first in range(cuda.blockIdx.x * rows, N, cuda.gridDim.x * rows):
            i = first + group
            total = zero
            if i < N:
                for j in range(lane, F, width):
                    total += widen(X[i, j])
            m = group_sum(s, t, lane, width, total) / count
            total = zero
            if i < N:
                for j in range(lane, F, width):
                    d = widen(X[i, j]) - m
                    total += d * d
            var = group_sum(s, t, lane, width, total) / count
            if i < N:
                r = one / math.sqrt(var + epsilon)
                if lane == 0:
                    inv_std[i] = r
                for j in range(lane, F, width):
                    xhat = (widen(X[i, j]) - m) * r
                    Xhat[i, j] = xhat
                    y = xhat
                    if has_gamma:
                        y = y * widen(gamma[j])
                    if has_beta:
                        y = y + widen(beta[j])
                    Y[i, j] = y

    return layer_normalize_kernel


@functools.cache
def _layer_norm_backward_kernel(dtype: Any, has_gamma: bool) -> Any:
    compute = compute_dtype(dtype)
    widen = scalar(compute)
    zero = scalar(compute)(0.0)
    element = numba_type(compute)
    group_sum2 = group_reductions(compute)[1]

    @cuda.jit
    def layer_normalize_backward_kernel(dY, Xhat, inv_std, gamma, dX, width):
        """G = gamma * dY; dX = inv_std / F * (F * G - rowsum(G) - Xhat * rowsum(G * Xhat))."""
        s = cuda.shared.array(THREADS, element)
        s2 = cuda.shared.array(THREADS, element)
        N, F = dY.shape
        t = cuda.threadIdx.x
        lane, group = t % width, t // width
        rows = cuda.blockDim.x // width
        count = widen(F)
        for first in range(cuda.blockIdx.x * rows, N, cuda.gridDim.x * rows):
            i = first + group
            total = zero
            total_x = zero
            if i < N:
                for j in range(lane, F, width):
                    g = widen(dY[i, j])
                    if has_gamma:
                        g = g * widen(gamma[j])
                    total += g
                    total_x += g * widen(Xhat[i, j])
            total, total_x = group_sum2(s, s2, t, lane, width, total, total_x)
            if i < N:
                scale = widen(inv_std[i]) / count
                for j in range(lane, F, width):
                    g = widen(dY[i, j])
                    if has_gamma:
                        g = g * widen(gamma[j])
                    dX[i, j] = scale * (count * g - total - widen(Xhat[i, j]) * total_x)

    return layer_normalize_backward_kernel


@functools.cache
def _standardize_kernel(dtype: Any, centered: bool, invert: bool) -> Any:
    compute = compute_dtype(dtype)
    widen = scalar(compute)
    floor = scalar(compute)(STANDARDIZE_FLOOR)

    @cuda.jit
    def standardize_kernel(X, mean, variance, Y):
        """d = max(sqrt(variance), 1e-7); Y = (X - mean) / d, or mean + X * d inverted."""
        N, F = X.shape
        start = cuda.grid(1)
        for k in range(start, N * F, cuda.gridsize(1)):
            i = k // F
            j = k - i * F
            d = max(math.sqrt(widen(variance[j])), floor)
            x = widen(X[i, j])
            if invert:
                y = x * d
                if centered:
                    y = widen(mean[j]) + y
            else:
                if centered:
                    x = x - widen(mean[j])
                y = x / d
            Y[i, j] = y

    return standardize_kernel


@functools.cache
def _moving_average_kernel(dtype: Any) -> Any:
    compute = compute_dtype(dtype)
    widen = scalar(compute)
    one = scalar(compute)(1.0)

    @cuda.jit
    def moving_average_kernel(moving, value, momentum):
        """moving = moving * momentum + value * (1 - momentum), in place over (F,)."""
        start = cuda.grid(1)
        for j in range(start, moving.size, cuda.gridsize(1)):
            moving[j] = widen(moving[j]) * momentum + widen(value[j]) * (one - momentum)

    return moving_average_kernel


def _epsilon(dtype: Any, epsilon: float) -> Any:
    """``epsilon`` as a scalar of the kernel's compute dtype (a Python float would make
    a float32 kernel compute in float64)."""
    return scalar(compute_dtype(dtype))(epsilon)


def batch_moments(X: Any, mean: Any, variance: Any) -> None:
    """Write the column means and biased variances of ``X``.

    Args:
        X: float16, float32 or float64 device array ``(N, F)``, C-contiguous.
        mean, variance: device arrays ``(F,)`` of its dtype. ``N >= 1`` (the engine
            operation's contract: a batch is never empty).
    """
    N, F = X.shape
    if F == 0:  # nothing to write: launch nothing
        return
    launch(_moments_kernel(X.dtype), ((_strips(F), 1), (STRIP, ROW_THREADS)), X, mean, variance)


def batch_normalize(
    X: Any,
    mean: Any,
    variance: Any,
    gamma: Any | None,
    beta: Any | None,
    epsilon: float,
    Y: Any,
    Xhat: Any,
) -> None:
    """Write ``Xhat = (X - mean) / sqrt(variance + epsilon)`` and ``Y = gamma * Xhat + beta``.

    Args:
        X: float device array ``(N, F)``; ``mean``, ``variance``, ``gamma``, ``beta``:
            ``(F,)`` of its dtype, ``gamma``/``beta`` ``None`` for 1 and 0.
        epsilon: added to the variance.
        Y, Xhat: device arrays of the shape and dtype of ``X``.
    """
    if Y.size == 0:  # nothing to write: launch nothing
        return
    kernel = _normalize_kernel(X.dtype, gamma is not None, beta is not None)
    args = (
        X,
        mean,
        variance,
        mean if gamma is None else gamma,  # an unread placeholder
        mean if beta is None else beta,
        _epsilon(X.dtype, epsilon),
        Y,
        Xhat,
    )
    launch(kernel, grid_for(X.size), *args)


def batch_normalize_backward(
    dY: Any,
    Xhat: Any,
    variance: Any,
    gamma: Any | None,
    epsilon: float,
    batch_statistics: bool,
    dgamma: Any | None,
    dbeta: Any | None,
    dX: Any | None,
) -> None:
    """Write ``dbeta = sum(dY, 0)`` and ``dgamma = sum(dY * Xhat, 0)`` (both or neither,
    ``None``) and ``dX`` (unless ``None``) in one launch.

    With ``batch_statistics``, ``dX = gamma / (N sqrt(variance + epsilon)) * (N dY -
    sum(dY) - Xhat sum(dY Xhat))``; otherwise ``dX = gamma dY / sqrt(variance + epsilon)``.

    Args:
        dY, Xhat: float device arrays ``(N, F)``; ``variance``, ``gamma`` ``(F,)``.
        dgamma, dbeta: device arrays ``(F,)`` or ``None``; zeros when ``N == 0``.
        dX: device array ``(N, F)`` or ``None``.
    """
    N, F = dY.shape
    write_grads = dgamma is not None and dbeta is not None
    reduce = write_grads or (dX is not None and batch_statistics)
    if F == 0 or not (reduce or dX is not None):  # nothing to write: launch nothing
        return
    kernel = _backward_kernel(dY.dtype, gamma is not None, batch_statistics, reduce, dX is not None)
    args = (
        dY,
        Xhat,
        variance,
        variance if gamma is None else gamma,  # placeholders are never read or written
        _epsilon(dY.dtype, epsilon),
        dgamma if write_grads else variance,
        dbeta if write_grads else variance,
        dY if dX is None else dX,
        write_grads,
    )
    launch(kernel, ((_strips(F), 1), (STRIP, ROW_THREADS)), *args)


def column_moment_sums(dY: Any, Xhat: Any, dgamma: Any, dbeta: Any) -> None:
    """Write ``dgamma = sum(dY * Xhat, 0)`` and ``dbeta = sum(dY, 0)``, ``(F,)`` each
    (layer normalization's weight gradients)."""
    N, F = dY.shape
    if F == 0:  # nothing to write: launch nothing
        return
    kernel = _backward_kernel(dY.dtype, False, False, True, False)
    one = _epsilon(dY.dtype, 1.0)
    args = (dY, Xhat, dgamma, dgamma, one, dgamma, dbeta, dY, True)
    launch(kernel, ((_strips(F), 1), (STRIP, ROW_THREADS)), *args)


def layer_normalize(
    X: Any,
    gamma: Any | None,
    beta: Any | None,
    epsilon: float,
    Y: Any,
    Xhat: Any,
    inv_std: Any,
) -> None:
    """Write each row's ``Xhat``, ``Y = gamma * Xhat + beta`` and ``inv_std`` ``(N,)``.

    Args:
        X: float device array ``(N, F)``; ``gamma``, ``beta``: ``(F,)`` or ``None``.
        Y, Xhat: device arrays like ``X``; inv_std: ``(N,)`` of its dtype.
    """
    if Y.size == 0:  # nothing to write: launch nothing (inv_std of empty rows is unused)
        return
    blocks, threads, width = row_grid(*X.shape)
    kernel = _layer_norm_kernel(X.dtype, gamma is not None, beta is not None)
    args = (
        X,
        inv_std if gamma is None else gamma,  # an unread placeholder
        inv_std if beta is None else beta,
        _epsilon(X.dtype, epsilon),
        Y,
        Xhat,
        inv_std,
        width,
    )
    launch(kernel, (blocks, threads), *args)


def layer_normalize_backward(dY: Any, Xhat: Any, inv_std: Any, gamma: Any | None, dX: Any) -> None:
    """Write ``dX`` of ``layer_normalize`` row by row (``G = gamma * dY``).

    Args:
        dY, Xhat: float device arrays ``(N, F)``; inv_std ``(N,)``; gamma ``(F,)`` or None.
        dX: device array like ``dY``.
    """
    if dX.size == 0:  # nothing to write: launch nothing
        return
    blocks, threads, width = row_grid(*dY.shape)
    kernel = _layer_norm_backward_kernel(dY.dtype, gamma is not None)
    placeholder = inv_std if gamma is None else gamma
    launch(kernel, (blocks, threads), dY, Xhat, inv_std, placeholder, dX, width)


def moving_average(moving: Any, value: Any, momentum: float) -> None:
    """Write ``moving = moving * momentum + value * (1 - momentum)`` in place.

    Args:
        moving, value: float device arrays ``(F,)`` of one dtype.
        momentum: rounded to the compute dtype of ``moving``.
    """
    if moving.size == 0:  # nothing to write: launch nothing
        return
    kernel = _moving_average_kernel(moving.dtype)
    launch(kernel, grid_for(moving.size), moving, value, _epsilon(moving.dtype, momentum))


def standardize(X: Any, mean: Any | None, variance: Any, invert: bool, Y: Any) -> None:
    """Write ``Y = (X - mean) / d`` (or ``mean + X * d`` with ``invert``), ``d =
    max(sqrt(variance), 1e-7)``; ``mean=None`` means 0.

    Args:
        X: float device array ``(N, F)``; mean, variance ``(F,)`` of its dtype.
        Y: device array like ``X`` (may be ``X`` itself).
    """
    if Y.size == 0:  # nothing to write: launch nothing
        return
    kernel = _standardize_kernel(X.dtype, mean is not None, invert)
    launch(kernel, grid_for(X.size), X, variance if mean is None else mean, variance, Y)


def ptx_variants() -> Iterator[PtxVariant]:
    """Every kernel this module launches, float16 included."""
    for dtype in (*FLOAT_DTYPES, *HALF_DTYPES):
        vector, rows = array(dtype, 1), array(dtype, 2)
        eps = numba_type(compute_dtype(dtype))
        short = dtype.name.replace("float", "f")
        yield f"batch_moments[{short}]", _moments_kernel(dtype), (rows, vector, vector)
        yield (
            f"batch_normalize[{short}]",
            _normalize_kernel(dtype, True, True),
            (rows, vector, vector, vector, vector, eps, rows, rows),
        )
        for batch in (True, False):
            yield (
                f"batch_normalize_backward[{short},{'batch' if batch else 'moving'}]",
                _backward_kernel(dtype, True, batch, True, True),
                (rows, rows, vector, vector, eps, vector, vector, rows, types.boolean),
            )
        yield (
            f"layer_normalize[{short}]",
            _layer_norm_kernel(dtype, True, True),
            (rows, vector, vector, eps, rows, rows, vector, types.int64),
        )
        yield (
            f"layer_normalize_backward[{short}]",
            _layer_norm_backward_kernel(dtype, True),
            (rows, rows, vector, vector, rows, types.int64),
        )
        yield (
            f"moving_average[{short}]",
            _moving_average_kernel(dtype),
            (vector, vector, eps),
        )
        for invert in (False, True):
            yield (
                f"standardize[{short},{'invert' if invert else 'forward'}]",
                _standardize_kernel(dtype, True, invert),
                (rows, vector, vector, rows),
            )
