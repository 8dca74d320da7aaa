"""What every kernel module shares: dtype handling, grid sizing and PTX signatures.

Kernels are specialised per dtype (and per activation where one is fused in) by
cached factory functions: a kernel closes over its constants, typed in its own
dtype, so a float32 kernel never computes in float64 by way of a Python float
literal. Each kernel module also offers ``ptx_variants()``, the kernels it
launches with their argument types, which ``ptx_report`` compiles for the real
chips.

Every launcher launches through ``launch`` on ``stream()``, the library's one
non-default CUDA stream, so everything the kernels and the engine queue is ordered
on it, and ``scratch`` buffers can be reused from call to call.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

import numpy as np
from numba import config as numba_config
from numba import cuda, types

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

# Half precision is a storage format here: a float16 kernel loads float16, computes in
# float32 (``compute_dtype``) and rounds once when it stores (mixed precision's layers).
HALF_DTYPES = (np.dtype(np.float16),)

# Elementwise and row kernels: 256 threads is 8 warps, enough to hide memory
# latency with several blocks per SM, and a multiple of every warp-size tile.
THREADS = 256

# Threads are scheduled in warps of 32: the smallest block worth launching.
WARP = 32

# A grid-stride loop needs no more blocks than keep every SM busy: 132 SMs on an
# H100 times 16 resident blocks of 256 threads (2048 threads per SM) is 2112.
MAX_BLOCKS = 2112


def compute_dtype(dtype: Any) -> np.dtype:
    """The dtype a kernel on ``dtype`` arrays computes in: float32 for float16 storage,
    else ``dtype`` itself."""
    dtype = np.dtype(dtype)
    return np.dtype(np.float32) if dtype in HALF_DTYPES else dtype


def scalar(dtype: Any) -> Callable[[float], Any]:
    """The NumPy scalar type of ``dtype`` (``np.float32`` or ``np.float64``), for constants."""
    return np.dtype(dtype).type


def numba_type(dtype: Any) -> types.Type:
    """The Numba scalar type of a NumPy dtype."""
    return {
        "float16": types.float16,
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


# ---------------------------------------------------------------------- the stream
# The library's stream: created on the current device at the first launch, one per
# process (launchers take no stream, and asking the driver for the current device at
# every launch would cost a driver call each; the engines are per-process singletons
# on one device). ``use_stream`` replaces it, e.g. by CuPy's stream for interop.
_stream: Any = None


def stream() -> Any:
    """The CUDA stream every launcher launches on: a non-default ``numba.cuda`` stream
    (a ``FakeCUDAStream`` in the simulator), created at the first call.

    It is created without the non-blocking flag, so work that other code queues on the
    legacy default stream still waits for it (and the other way round).
    """
    global _stream
    if _stream is None:
        _stream = cuda.stream()
    return _stream


def use_stream(new: Any) -> Any:
    """Launch on ``new`` from now on; return the stream used until now.

    ``new`` is a ``numba.cuda`` stream: ``cuda.stream()``, or another library's stream
    wrapped by ``cuda.external_stream(pointer)`` (CuPy's: ``cuda.external_stream(
    cupy_stream.ptr)``; the caller keeps that stream alive). The old stream is
    synchronized first, so the scratch buffers and recycled memory its kernels were
    still using are free before any kernel on ``new`` reuses them.
    """
    global _stream
    old = stream()
    old.synchronize()
    _stream = new
    return old


def launch(kernel: Any, config: tuple[Any, Any], *args: Any) -> None:
    """Launch ``kernel`` with ``config = (griddim, blockdim)`` on the library's stream.

    The one launch site of every launcher: ``kernel[grid, block](*args)`` is written
    ``launch(kernel, (grid, block), *args)``. On a GPU a kernel already compiled for
    the arguments' types goes straight to the driver with arguments prepared once
    (``PreparedLaunches``); the first launch of each signature, anything the cache
    does not handle, and every launch in the simulator take numba-cuda's dispatcher.
    """
    if _observer is not None and _observer(kernel, config, args):
        return
    prepared = _prepared_launches()
    if prepared is None or not prepared.launch(kernel, config, args):
        kernel[config[0], config[1], stream()](*args)


# ---------------------------------------------------------------------- launch observers
LaunchObserver = Callable[[Any, tuple[Any, Any], tuple[Any, ...]], bool]
"""``observer(kernel, (grid, block), args) -> taken``: shown each launch before it is made;
``True`` means the observer took the launch and ``launch`` makes none."""

# The step capture in progress (``kernels/graphs.py``) sees every launch; None otherwise.
_observer: LaunchObserver | None = None


def observe_launches(observer: LaunchObserver | None) -> LaunchObserver | None:
    """Show every ``launch`` to ``observer`` from now on (``None``: to no one); return the
    observer replaced.

    A CUDA graph capture (``kernels/graphs.py``) records the arrays each launch of the
    captured step uses, to keep them allocated while the graph lives; the simulator's
    stand-in for a capture also takes the launches, to make them again at each replay.
    """
    global _observer
    previous = _observer
    _observer = observer
    return previous


# ---------------------------------------------------------------------- prepared launches
# A kernel argument's numba type by the Python type of a scalar argument (as numba's
# typeof gives it for the values the launchers pass), and how the driver receives it.
_SCALAR_TYPES: dict[type, types.Type] = {
    float: types.float64,
    int: types.int64,
    bool: types.boolean,
    np.float32: types.float32,
    np.float64: types.float64,
    np.int32: types.int32,
    np.int64: types.int64,
    np.uint64: types.uint64,
}
_CTYPES: dict[types.Type, Callable[[Any], Any]] = {
    types.float32: ctypes.c_float,
    types.float64: ctypes.c_double,
    types.int32: ctypes.c_int32,
    types.int64: ctypes.c_int64,
    types.uint64: ctypes.c_uint64,
    types.boolean: bool,
}

# Distinct device arrays remembered before the memory is cleared (a few hundred in a fit).
MAX_PREPARED_ARRAYS = 4096


def _dims(dims: Any) -> tuple[int, int, int]:
    """A grid or block size (an int or a tuple of up to three) as three ints."""
    as_tuple = tuple(dims) if isinstance(dims, tuple) else (dims,)
    return tuple(int(n) for n in as_tuple) + (1,) * (3 - len(as_tuple))  # type: ignore[return-value]


class PreparedLaunches:
    """Kernel launches that skip numba-cuda's dispatcher once a kernel is compiled.

    ``kernel[grid, block, stream](*args)`` types every argument, selects the compiled
    overload, wraps every array in a memory view and converts it to the driver's
    arguments, and builds a launch configuration, at every launch: about 20 us of host
    time for three arrays. This remembers, by ``(kernel, argument types)``, the
    compiled overload and its driver function; by ``(pointer, shape, strides, dtype)``,
    each device array's numba type and driver arguments (what they are made of, so a
    new view of the same memory, or new memory at a freed address, reuses them
    correctly); and each ``(grid, block)``'s launch configuration. A workspace passes
    the same arrays every step, so a step's launches after the first prepare nothing.

    Args:
        driver_launch: ``cuda.core.launch(stream, config, kernel, *args)``.
        make_config: ``(grid, block)`` as 3-tuples to a launch configuration.
        core_stream: a ``numba.cuda`` stream to the stream ``driver_launch`` takes.
        array_types: the classes of device arrays whose arguments may be remembered.
    """

    def __init__(
        self,
        driver_launch: Callable[..., Any],
        make_config: Callable[[tuple[int, int, int], tuple[int, int, int]], Any],
        core_stream: Callable[[Any], Any],
        array_types: tuple[type, ...],
    ) -> None:
        self._driver_launch = driver_launch
        self._make_config = make_config
        self._core_stream = core_stream
        self._array_types = array_types
        self._overloads: dict[tuple[Any, tuple[types.Type, ...]], tuple[Any, Any]] = {}
        self._arrays: dict[tuple[Any, ...], list[Any]] = {}
        self._configs: dict[tuple[Any, Any], Any] = {}
        self._stream: tuple[Any, Any] = (None, None)

    def launch(self, kernel: Any, config: tuple[Any, Any], args: tuple[Any, ...]) -> bool:
        """Launch ``kernel[config](*args)`` on ``stream()`` if it is compiled for these
        argument types and every argument is a device array or a plain scalar; return
        whether it did (if not, the caller launches through the dispatcher)."""
        argtypes, arrays = self._argument_types(kernel, args)
        if argtypes is None:
            return False
        resolved = self._overloads.get((kernel, argtypes))
        if resolved is None:
            resolved = self._resolve(kernel, argtypes)
            if resolved is None:
                return False
        function, overload = resolved
        kernelargs = self._kernel_arguments(overload, argtypes, arrays, args)
        if kernelargs is None:
            return False
        self._driver_launch(self._current_stream(), self._config(config), function, *kernelargs)
        return True

    def _argument_types(
        self, kernel: Any, args: tuple[Any, ...]
    ) -> tuple[tuple[types.Type, ...] | None, list[Any]]:
        """Each argument's numba type, and each array's remembered entry (None for scalars)."""
        argtypes, arrays = [], []
        for arg in args:
            scalar_type = _SCALAR_TYPES.get(type(arg))
            if scalar_type is not None:
                argtypes.append(scalar_type)
                arrays.append(None)
                continue
            if type(arg) not in self._array_types:
                return None, arrays
            key = (arg.device_ctypes_pointer.value, arg.shape, arg.strides, arg.dtype)
            entry = self._arrays.get(key)
            if entry is None:
                if len(self._arrays) >= MAX_PREPARED_ARRAYS:
                    self._arrays.clear()
                entry = self._arrays[key] = [kernel.typeof_pyval(arg), None]
            argtypes.append(entry[0])
            arrays.append(entry)
        return tuple(argtypes), arrays

    def _resolve(self, kernel: Any, argtypes: tuple[types.Type, ...]) -> tuple[Any, Any] | None:
        """The driver function and overload of ``kernel`` compiled for ``argtypes``, or None
        where the dispatcher must launch (not compiled yet, or launched in a way that
        this does not reproduce: extensions, launch-configuration-specialised kernels,
        debug or cooperative kernels)."""
        if (
            kernel.targetoptions.get("extensions")
            or getattr(kernel, "_launch_config_sensitive", True)
            or getattr(kernel, "specialized", True)
        ):
            return None
        overload = kernel.overloads.get(argtypes)
        if overload is None or overload.debug or overload.cooperative:
            return None
        resolved = (overload._codelibrary.get_cufunc().kernel, overload)
        self._overloads[kernel, argtypes] = resolved
        return resolved

    def _kernel_arguments(
        self, overload: Any, argtypes: tuple[types.Type, ...], arrays: list[Any], args: tuple
    ) -> list[Any] | None:
        """The driver's argument list: arrays' remembered parts, scalars converted."""
        kernelargs: list[Any] = []
        for argtype, entry, arg in zip(argtypes, arrays, args):
            if entry is None:
                kernelargs.append(_CTYPES[argtype](arg))
                continue
            if entry[1] is None:
                parts: list[Any] = []
                copies_back: list[Any] = []
                overload._prepare_args(argtype, arg, self._current_stream(), copies_back, parts)
                if copies_back:  # not device memory after all: the dispatcher copies it
                    return None
                entry[1] = parts
            kernelargs.extend(entry[1])
        return kernelargs

    def _config(self, config: tuple[Any, Any]) -> Any:
        made = self._configs.get(config)
        if made is None:
            made = self._configs[config] = self._make_config(_dims(config[0]), _dims(config[1]))
        return made

    def _current_stream(self) -> Any:
        library_stream = stream()
        if self._stream[0] is not library_stream:
            self._stream = (library_stream, self._core_stream(library_stream))
        return self._stream[1]


_prepared: list[PreparedLaunches | None] = []  # empty until the first launch decides


def _prepared_launches() -> PreparedLaunches | None:
    """The process's ``PreparedLaunches``, or None in the simulator (which has no compiled
    kernels to call) or where numba-cuda's internals differ from what it was written for."""
    if not _prepared:
        _prepared.append(None if numba_config.ENABLE_CUDASIM else _make_prepared_launches())
    return _prepared[0]


def _make_prepared_launches() -> PreparedLaunches | None:
    try:
        from cuda.core import LaunchConfig
        from cuda.core import launch as driver_launch
        from numba.cuda.cudadrv.devicearray import DeviceNDArray
        from numba.cuda.cudadrv.driver import _to_core_stream
    except ImportError:
        return None

    def make_config(grid: tuple[int, int, int], block: tuple[int, int, int]) -> Any:
        return LaunchConfig(grid=grid, block=block, shmem_size=0)

    return PreparedLaunches(driver_launch, make_config, _to_core_stream, (DeviceNDArray,))


def set_prepared_launches(enabled: bool) -> None:
    """Turn the prepared-launch path on (the default on a GPU) or off (every launch through
    numba-cuda's dispatcher, to compare or to rule it out)."""
    _prepared.clear()
    if not enabled:
        _prepared.append(None)


# Scratch buffers by (purpose, dtype, device), each grown to the largest size asked for.
_scratch: dict[tuple[str, str, int], Any] = {}


def scratch(purpose: str, size: int, dtype: Any) -> Any:
    """A device vector of ``size`` elements of ``dtype`` for a launcher's temporaries.

    One buffer per ``purpose``, dtype and device, allocated at the first request and
    again only when a larger one is asked for, so repeated calls allocate nothing (a
    fresh ``cuda.device_array`` per call would make numba-cuda free memory every few
    calls, and each ``cuMemFree`` synchronizes the device). Every launch goes to the
    library's one stream (``stream()``), in order, so a call's kernels have read the
    buffer before the next call's kernels overwrite it; ``use_stream`` synchronizes
    the old stream before switching, which keeps that true across a switch. A
    launcher must not hold two live uses of one ``purpose``.
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
