"""What every kernel module shares: dtype handling, grid sizing and PTX signatures.

Kernels are specialised per dtype (and per activation where one is fused in) by
cached factory functions: a kernel closes over its constants, typed in its own
dtype, so a float32 kernel never computes in float64 by way of a Python float
literal. Each kernel module also offers ``ptx_variants()``, the kernels it
launches with their argument types, which ``ptx_report`` compiles for the real
chips.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numba import config as numba_config
from numba import cuda, types

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

# Elementwise and row kernels: 256 threads is 8 warps, enough to hide memory
# latency with several blocks per SM, and a multiple of every warp-size tile.
THREADS = 256

# Threads are scheduled in warps of 32: the smallest block worth launching.
WARP = 32

# A grid-stride loop needs no more blocks than keep every SM busy: 132 SMs on an
# H100 times 16 resident blocks of 256 threads (2048 threads per SM) is 2112.
MAX_BLOCKS = 2112


def scalar(dtype: Any) -> Callable[[float], Any]:
    """The NumPy scalar type of ``dtype`` (``np.float32`` or ``np.float64``), for constants."""
    return np.dtype(dtype).type


def numba_type(dtype: Any) -> types.Type:
    """The Numba scalar type of a NumPy dtype."""
    return {
        "float32": types.float32,
        "float64": types.float64,
        "int64": types.int64,
        "int32": types.int32,
        "uint8": types.uint8,
    }[np.dtype(dtype).name]


def array(dtype: Any, ndim: int) -> types.Array:
    """The Numba type of a C-contiguous device array, for ``compile_ptx`` signatures."""
    return types.Array(numba_type(dtype), ndim, "C")


def blocks_for(n: int, threads: int = THREADS) -> int:
    """Blocks of ``threads`` for a grid-stride loop over ``n`` items (at least 1)."""
    return max(1, min(MAX_BLOCKS, -(-n // threads)))


def grid_for(n: int) -> tuple[int, int]:
    """``(blocks, threads)`` for a grid-stride loop over ``n`` items.

    Up to ``THREADS`` items take one block of just enough warps (no idle warps for
    a small batch's arrays, and a CUDA simulator run creates that many threads,
    not ``THREADS``); more take blocks of ``THREADS``.
    """
    if n <= THREADS:
        return 1, max(WARP, -(-n // WARP) * WARP)
    return blocks_for(n), THREADS


# Scratch buffers by (purpose, dtype, device), each grown to the largest size asked for.
_scratch: dict[tuple[str, str, int], Any] = {}


def scratch(purpose: str, size: int, dtype: Any) -> Any:
    """A device vector of ``size`` elements of ``dtype`` for a launcher's temporaries.

    One buffer per ``purpose``, dtype and device, allocated at the first request and
    again only when a larger one is asked for, so repeated calls allocate nothing (a
    fresh ``cuda.device_array`` per call would make numba-cuda free memory every few
    calls, and each ``cuMemFree`` synchronizes the device). Every launch goes to the
    default stream, so a call's kernels have read the buffer before the next call's
    kernels overwrite it; a launcher must not hold two live uses of one ``purpose``.
    """
    device = getattr(cuda.get_current_device(), "id", 0)
    key = (purpose, np.dtype(dtype).str, device)
    buffer = _scratch.get(key)
    if buffer is None or buffer.size < size:
        buffer = _scratch[key] = cuda.device_array(max(size, 1), dtype=np.dtype(dtype))
    return buffer[:size]


def device_function(function: Callable) -> Any:
    """Compile ``function`` as a CUDA device function (inlined by the compiler)."""
    return cuda.jit(device=True)(function)


PtxVariant = tuple[str, Any, tuple[types.Type, ...]]
"""``(label, kernel dispatcher, argument types)``: one kernel as it is launched."""


def _lock_simulator_shared_arrays() -> None:
    """Make the CUDA simulator's ``cuda.shared.array`` safe for the threads of a block.

    The simulator runs each CUDA thread as an OS thread and creates a block's
    shared array when the first thread reaches it, by a lookup and an insert that
    are not atomic: two threads switched between the two each get an array of
    their own, and a block reduction then adds up the wrong values. This wraps
    that lookup and insert in a lock (keyed, as the simulator keys it, by the
    calling line).
    """
    import sys
    import threading

    from numba.cuda.simulator import kernelapi
    from numba.np import numpy_support

    shared = kernelapi.FakeCUDAShared
    if getattr(shared.array, "locked", False):
        return
    dynamic = shared.array
    lock = threading.Lock()

    def array(self: Any, shape: Any, dtype: Any) -> np.ndarray:
        if shape == 0:
            return dynamic(self, shape, dtype)
        if isinstance(dtype, types.Type):
            dtype = numpy_support.as_dtype(dtype)
        frame = sys._getframe(1)
        caller = (frame.f_code.co_filename, frame.f_lineno)
        with lock:
            allocation = self._allocations.get(caller)
            if allocation is None:
                allocation = self._allocations[caller] = np.empty(shape, dtype)
        return allocation

    array.locked = True  # type: ignore[attr-defined]
    array.unlocked = dynamic  # type: ignore[attr-defined]
    shared.array = array


if numba_config.ENABLE_CUDASIM:
    _lock_simulator_shared_arrays()
