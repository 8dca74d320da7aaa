"""Gaussian noise and alpha dropout drawn on the device from dropout's generators.

The random states are ``dropout.DropoutGenerator``'s: one xoroshiro128+ generator per
thread of a fixed grid, each thread drawing in order for the elements of its
grid-stride range and writing its state back once, so dropout and these layers
continue one sequence per seed. A standard normal draw is Marsaglia's polar method:
uniform ``u, v`` in ``[-1, 1)``, each made of the top 24 (float32, float16) or 53
(float64) bits of a draw, until ``0 < s = u**2 + v**2 < 1``, then
``u * sqrt(-2 log s / s)``, all in the kernel's dtype: no trigonometry, whose float64
argument reduction would need a stack frame.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from typing import Any

import numba
import numpy as np
from numba import cuda

from .common import (
    FLOAT_DTYPES,
    HALF_DTYPES,
    PtxVariant,
    array,
    compute_dtype,
    device_function,
    grid_for,
    launch,
    numba_type,
    scratch,
)
from .dropout import (
    DropoutGenerator,
    _quiet_simulator,
    keep_threshold,
    xoroshiro128p_dtype,
    xoroshiro128p_next,
)

MULTIPLICATIVE = "multiplicative"
ADDITIVE = "additive"


@functools.cache
def _normal(dtype: Any) -> Any:
    """A device function ``normal(state) -> float``: one standard normal draw of
    ``dtype`` from the local one-element state array, by Marsaglia's polar method (two
    uniform draws per try; a try is kept with probability pi / 4)."""
    f = compute_dtype(dtype).type
    wide = compute_dtype(dtype) == np.dtype(np.float64)
    bits = 53 if wide else 24
    shift = np.uint32(64 - bits)
    # the top bits as an integer that converts to the float in one instruction
    narrow = numba.uint64 if wide else numba.uint32
    scale, one, zero, minus_two = f(2.0 ** (1 - bits)), f(1.0), f(0.0), f(-2.0)

    @device_function
    def normal(state):
        while True:
            u = f(narrow(xoroshiro128p_next(state, 0) >> shift)) * scale - one  # [-1, 1)
            v = f(narrow(xoroshiro128p_next(state, 0) >> shift)) * scale - one
            s = u * u + v * v
            if zero < s < one:
                return u * math.sqrt(minus_two * math.log(s) / s)

    return normal


@functools.cache
def _gaussian_kernel(dtype: Any, mode: str) -> Any:
    f = compute_dtype(dtype).type
    one = f(1.0)
    normal = _normal(dtype)
    multiplicative = mode == MULTIPLICATIVE

    @cuda.jit
    def gaussian_kernel(states, X, Y, mask, stddev):
        """Additive: Y = X + stddev * n. Multiplicative: mask = 1 + stddev * n, Y = X * mask."""
        start = cuda.grid(1)
        if start >= X.size:
            return
        state = cuda.local.array(1, xoroshiro128p_dtype)
        state[0]["s0"] = states[start]["s0"]
        state[0]["s1"] = states[start]["s1"]
        for i in range(start, X.size, cuda.gridsize(1)):
            x = f(X[i])  # loaded before the stores, which may alias X
            n = normal(state)
            if multiplicative:
                m = one + stddev * n
                mask[i] = m
                Y[i] = x * m
            else:
                Y[i] = x + stddev * n
        states[start]["s0"] = state[0]["s0"]
        states[start]["s1"] = state[0]["s1"]

    return gaussian_kernel


@functools.cache
def _alpha_kernels(dtype: Any) -> tuple[Any, Any]:
    f = compute_dtype(dtype).type
    zero = f(0.0)
    shift = np.uint32(64 - 53)  # dropout's 53-bit uniform draw, compared as an integer

    @cuda.jit
    def draw_kept_kernel(states, kept, threshold, a):
        """kept = a where the 53-bit draw >= threshold, else 0, over the noise shape."""
        start = cuda.grid(1)
        if start >= kept.size:
            return
        state = cuda.local.array(1, xoroshiro128p_dtype)
        state[0]["s0"] = states[start]["s0"]
        state[0]["s1"] = states[start]["s1"]
        for i in range(start, kept.size, cuda.gridsize(1)):
            kept[i] = a if xoroshiro128p_next(state, 0) >> shift >= threshold else zero
        states[start]["s0"] = state[0]["s0"]
        states[start]["s1"] = state[0]["s1"]

    @cuda.jit
    def alpha_apply_kernel(X, Y, mask, kept, width, noise_rows, noise_cols, a, b, dropped):
        """mask = kept broadcast from (noise_rows, noise_cols) to X (N, width);
        Y = a * x + b where kept, else the dropped value a * alpha_p + b."""
        for i in range(cuda.grid(1), X.size, cuda.gridsize(1)):
            row = i // width
            col = i - row * width
            j = (row if noise_rows > 1 else 0) * noise_cols + (col if noise_cols > 1 else 0)
            m = f(kept[j])
            x = f(X[i])
            mask[i] = m
            Y[i] = a * x + b if m != zero else dropped

    return draw_kept_kernel, alpha_apply_kernel


def gaussian(
    generator: DropoutGenerator, X: Any, Y: Any, mask: Any, *, stddev: float, mode: str
) -> None:
    """Gaussian noise in one kernel, ``n`` standard normal per element.

    ``mode=ADDITIVE``: ``Y = X + stddev * n`` (``mask`` is not written);
    ``mode=MULTIPLICATIVE``: ``mask = 1 + stddev * n`` and ``Y = X * mask``.

    Args:
        generator: the random states; they advance, so the next call draws anew.
        X: C-contiguous float16, float32 or float64 device array of any shape.
        Y, mask: device arrays of the shape and dtype of ``X``.
        stddev: the noise's standard deviation, ``>= 0``.
    """
    if Y.size == 0:  # nothing to write: launch nothing
        return
    s = compute_dtype(X.dtype).type(stddev)
    flat = (X.reshape(X.size), Y.reshape(Y.size), mask.reshape(mask.size))
    with _quiet_simulator():
        launch(
            _gaussian_kernel(X.dtype, mode),
            (generator.blocks, generator.threads_per_block),
            generator.states,
            *flat,
            s,
        )


def alpha_dropout(
    generator: DropoutGenerator,
    X: Any,
    Y: Any,
    mask: Any,
    *,
    rate: float,
    noise_shape: tuple[int, int],
    constants: tuple[float, float, float],
) -> None:
    """Alpha dropout of ``X`` ``(N, F)`` into ``Y`` and ``mask`` (same shape and dtype).

    ``kept`` is drawn at ``noise_shape`` ``(N or 1, F or 1)`` (uniform ``u >= rate``,
    as dropout decides) and broadcast: ``mask = a * kept`` and ``Y = a * x + b`` where
    kept, ``a * alpha_p + b`` elsewhere, with ``constants = (a, b, alpha_p)``.
    """
    if Y.size == 0:  # nothing to write: launch nothing
        return
    f = compute_dtype(X.dtype).type
    a, b, alpha_p = constants
    rows, cols = noise_shape
    kept = scratch("alpha_dropout_kept", rows * cols, compute_dtype(X.dtype))
    draw, apply = _alpha_kernels(X.dtype)
    with _quiet_simulator():
        launch(
            draw,
            (generator.blocks, generator.threads_per_block),
            generator.states,
            kept,
            keep_threshold(rate),
            f(a),
        )
    flat = (X.reshape(X.size), Y.reshape(Y.size), mask.reshape(mask.size))
    width = X.shape[1]
    launch(apply, grid_for(X.size), *flat, kept, width, rows, cols, f(a), f(b), f(a * alpha_p + b))


def ptx_variants() -> Iterator[PtxVariant]:
    """The noise kernels, for each dtype (float16 included), as launched."""
    states = numba.types.Array(numba.from_dtype(xoroshiro128p_dtype), 1, "C")
    i64 = numba.types.int64
    for dtype in (*FLOAT_DTYPES, *HALF_DTYPES):
        flat, s = array(dtype, 1), numba_type(compute_dtype(dtype))
        kept = array(compute_dtype(dtype), 1)
        short = dtype.name.replace("float", "f")
        for mode in (ADDITIVE, MULTIPLICATIVE):
            argtypes = (states, flat, flat, flat, s)
            yield f"gaussian[{mode},{short}]", _gaussian_kernel(dtype, mode), argtypes
        draw, apply = _alpha_kernels(dtype)
        yield f"draw_kept[{short}]", draw, (states, kept, numba.types.uint64, s)
        yield (
            f"alpha_apply[{short}]",
            apply,
            (flat, flat, flat, kept, i64, i64, i64, s, s, s),
        )
