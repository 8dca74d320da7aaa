"""Inverted dropout drawn from Numba's xoroshiro128+ generators on the device.

A ``DropoutGenerator`` owns one xoroshiro128+ state per thread of a fixed grid,
created once per seed. Each thread draws, in order, for the elements of its
grid-stride range, so element ``i`` of a tensor is decided by thread
``i % threads``: the masks depend on the seed and the number of threads only,
never on the tensor's size beyond that, and the states are the same few MB
whatever is dropped. A thread keeps its state in registers while it draws and
writes it back once, so the next call continues the sequence.

In Numba's CUDA simulator, ``numba.cuda.random`` works but runs in pure
Python and warns: importing it asks for object mode (a
``NumbaDeprecationWarning``), ``create_xoroshiro128p_states`` falls back to
object mode (a ``NumbaWarning``) and takes about 2.5 ms per state, and every
draw computes with NumPy uint64 scalars whose intended wrap-around NumPy
reports as an overflow ``RuntimeWarning``. These warnings are silenced here,
where they arise, and the simulator's default grid is small.
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from collections.abc import Iterator
from typing import Any

import numba
import numpy as np
from numba import config, cuda

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
    stream,
)

_SIMULATED = bool(config.ENABLE_CUDASIM)

with warnings.catch_warnings():
    # In the simulator the module asks for object mode, which Numba deprecates.
    warnings.filterwarnings("ignore", category=numba.NumbaDeprecationWarning)
    from numba.cuda.random import (
        create_xoroshiro128p_states,
        xoroshiro128p_dtype,
        xoroshiro128p_next,
    )

# One full wave of an H100: 132 SMs times 2048 resident threads. Enough threads
# in flight to saturate memory bandwidth; the states take 16 B each (4.3 MB)
# and take about 40 ms to create on the host.
GPU_THREADS = 132 * 2048

# The simulator runs a thread as an OS thread and creates a state in ~2.5 ms.
SIMULATOR_THREADS = 64

DEFAULT_THREADS = SIMULATOR_THREADS if _SIMULATED else GPU_THREADS


@contextlib.contextmanager
def _quiet_simulator() -> Iterator[None]:
    """Silence the simulator's warnings about the generator (see the module docstring)."""
    if not _SIMULATED:
        yield
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "overflow encountered", RuntimeWarning)
        warnings.filterwarnings("ignore", category=numba.NumbaWarning)
        yield


class DropoutGenerator:
    """Random states for ``dropout``: one xoroshiro128+ generator per thread of a fixed grid.

    Args:
        seed: seeds the generators (0 to 2**64 - 1); the same seed gives the
            same sequence of masks.
        threads: threads of the grid, each with its own generator; rounded up
            to whole blocks of ``min(threads, 256)``.

    Attributes:
        states: the generators' states, a device array of ``xoroshiro128p_dtype``.
        blocks, threads_per_block: the grid ``dropout`` launches.
    """

    def __init__(self, seed: int, threads: int = DEFAULT_THREADS) -> None:
        if threads < 1:
            raise ValueError(f"DropoutGenerator expected threads >= 1, received threads={threads}")
        self.seed = seed
        self.threads_per_block = min(THREADS, threads)
        self.blocks = -(-threads // self.threads_per_block)
        with _quiet_simulator():
            self.states = create_xoroshiro128p_states(
                self.blocks * self.threads_per_block, seed, stream=stream()
            )


# xoroshiro128p_uniform_float64 is (x >> 11) * 2**-53 for the generator's next
# uint64 x. Comparing the 53-bit integer with a threshold on the host gives the
# same decision with no float arithmetic (the library's float32 uniform goes
# through float64), and the same mask pattern for float32 and float64.
UNIFORM_BITS = 53
_SHIFT = np.uint32(64 - UNIFORM_BITS)


def keep_threshold(rate: float) -> np.uint64:
    """The smallest 53-bit draw ``k`` kept: ``k * 2**-53 >= rate`` exactly when ``k >= this``."""
    return np.uint64(math.ceil(rate * 2.0**UNIFORM_BITS))


@functools.cache
def _dropout_kernel(dtype: Any) -> Any:
    widen = scalar(compute_dtype(dtype))  # float16 loads to float32; a no-op otherwise
    zero = scalar(compute_dtype(dtype))(0.0)

    @cuda.jit
    def dropout_kernel(states, X, Y, mask, threshold, scale):
        """mask = scale where the 53-bit draw >= threshold else 0; Y = X * mask, flat."""
        start = cuda.grid(1)
        if start >= X.size:
            return  # draws nothing: the state stays as it is
        # The state lives in registers for the loop: copied field by field (a
        # record copy would load it byte by byte) and written back once.
        state = cuda.local.array(1, xoroshiro128p_dtype)
        state[0]["s0"] = states[start]["s0"]
        state[0]["s1"] = states[start]["s1"]
        for i in range(start, X.size, cuda.gridsize(1)):
            x = widen(X[i])  # loaded before the stores, which may alias X
            m = scale if xoroshiro128p_next(state, 0) >> _SHIFT >= threshold else zero
            mask[i] = m
            Y[i] = x * m
        states[start]["s0"] = state[0]["s0"]
        states[start]["s1"] = state[0]["s1"]

    return dropout_kernel


@functools.cache
def _backprop_kernel(dtype: Any) -> Any:
    widen = scalar(compute_dtype(dtype))

    @cuda.jit
    def backprop_dropout_kernel(dY, mask, dX):
        """dX = dY * mask over flat float arrays of one size."""
        for i in range(cuda.grid(1), dY.size, cuda.gridsize(1)):
            dX[i] = widen(dY[i]) * widen(mask[i])

    return backprop_dropout_kernel


def dropout(generator: DropoutGenerator, X: Any, Y: Any, mask: Any, *, rate: float) -> None:
    """Inverted dropout: ``mask = (u >= rate) / (1 - rate)`` and ``Y = X * mask``, in one kernel.

    ``u`` is the generator's uniform float64 draw in ``[0, 1)``, one per element. The
    scale ``1 / (1 - rate)`` is rounded to ``X``'s dtype, so ``Y`` is exactly ``X * mask``
    rounded once (float16 is computed in float32).

    Args:
        generator: the random states; they advance, so the next call draws anew.
        X: C-contiguous float16, float32 or float64 device array of any shape.
        Y: device array of the shape and dtype of ``X`` (may be ``X`` itself).
        mask: device array of the shape and dtype of ``X``; receives ``0`` for a
            dropped element and ``1 / (1 - rate)`` for a kept one.
        rate: the probability of dropping an element, ``0 <= rate < 1``.
    """
    if Y.size == 0:  # nothing to write: launch nothing
        return
    scale = scalar(compute_dtype(X.dtype))(X.dtype.type(1.0 / (1.0 - rate)))
    kernel = _dropout_kernel(X.dtype)
    flat = (X.reshape(X.size), Y.reshape(Y.size), mask.reshape(mask.size))
    with _quiet_simulator():
        launch(
            kernel,
            (generator.blocks, generator.threads_per_block),
            generator.states,
            *flat,
            keep_threshold(rate),
            scale,
        )


def backprop_dropout(dY: Any, mask: Any, dX: Any) -> None:
    """``dX = dY * mask``, with the mask ``dropout`` wrote.

    Args:
        dY: C-contiguous float16, float32 or float64 device array of any shape.
        mask: device array of the shape and dtype of ``dY``.
        dX: device array of the shape and dtype of ``dY`` (may be ``dY`` itself).
    """
    if dX.size == 0:  # nothing to write: launch nothing
        return
    flat = (dY.reshape(dY.size), mask.reshape(mask.size), dX.reshape(dX.size))
    launch(_backprop_kernel(dY.dtype), grid_for(dY.size), *flat)


def ptx_variants() -> Iterator[PtxVariant]:
    """The dropout and backward kernels, for each dtype (float16 included), as launched."""
    states = numba.types.Array(numba.from_dtype(xoroshiro128p_dtype), 1, "C")
    for dtype in (*FLOAT_DTYPES, *HALF_DTYPES):
        flat, s = array(dtype, 1), numba_type(compute_dtype(dtype))
        short = dtype.name.replace("float", "f")
        argtypes = (states, flat, flat, flat, numba.types.uint64, s)
        yield f"dropout[{short}]", _dropout_kernel(dtype), argtypes
        yield f"backprop_dropout[{short}]", _backprop_kernel(dtype), (flat, flat, flat)
