"""``NCCLCommunicator``: device arrays summed between GPUs with NCCL, the rest over MPI;
``make_communicator`` picks it, or MPI alone.

NCCL comes from CuPy (``cupy.cuda.nccl``); both are imported when a communicator is
made, never when dlcore is. A device array is anything with ``__cuda_array_interface__``
(a CuPy array, a Numba device array): its memory is summed in place on the GPU, on the
engine's CUDA stream, and never crosses to the host.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from dlcore.backends.base import Array, Engine

from .communicator import Communicator, PendingSum
from .mpi import MPICommunicator

_INSTALL = "pip install dlcore[mpi,cuda12]"

# the NCCL datatype constant for each ``__cuda_array_interface__`` typestr (minus the
# byte order)
_NCCL_TYPES = {"f2": "NCCL_FLOAT16", "f4": "NCCL_FLOAT32", "f8": "NCCL_FLOAT64"}


def import_nccl() -> tuple[Any, Any]:
    """``(cupy.cuda.nccl, cupy.cuda)``.

    Raises:
        ImportError: CuPy or its NCCL binding is missing, naming what to install.
    """
    try:
        import cupy.cuda
        from cupy.cuda import nccl
    except Exception as error:  # CuPy raises more than ImportError without CUDA
        raise ImportError(
            f"summing gradients between GPUs with NCCL needs CuPy with NCCL ({error}): "
            f"{_INSTALL}, and `python -m cupyx.tools.install_library --library nccl` "
            "if CuPy does not find NCCL"
        ) from error
    if not getattr(nccl, "available", True):
        raise ImportError(
            f"CuPy was built without NCCL: {_INSTALL}, then "
            "`python -m cupyx.tools.install_library --library nccl`"
        )
    return nccl, cupy.cuda


def _device_interface(A: Array) -> dict[str, Any] | None:
    return getattr(A, "__cuda_array_interface__", None)


def _stream_pointer(stream: Any) -> int:
    """The ``cudaStream_t`` of a Numba stream (``handle.value``) or a CuPy stream
    (``ptr``); 0, the default stream, for ``None``."""
    if stream is None:
        return 0
    if hasattr(stream, "ptr"):
        return int(stream.ptr)
    handle = getattr(stream, "handle", None)
    value = getattr(handle, "value", handle)
    if value is None:
        return 0
    return int(value)


class _PendingDevice(PendingSum):
    """An NCCL sum queued on the side stream; ``wait`` makes the compute stream wait
    for it (the host does not block)."""

    def __init__(self, cuda: Any, side: Any, compute: Any, A: Array) -> None:
        self._cuda = cuda
        self._side = side
        self._compute = compute
        self._A = A  # kept alive until the sum is waited for

    def wait(self) -> None:
        done = self._cuda.Event(disable_timing=True)
        done.record(self._side)
        self._compute.wait_event(done)


class NCCLCommunicator(Communicator):
    """The processes of ``mpi``, whose device arrays are summed with NCCL.

    Each process uses the GPU numbered by its ``local_rank``. ``allreduce_sum`` and
    ``start_allreduce_sum`` of a device array (``__cuda_array_interface__``, float16,
    float32 or float64, C-contiguous) run NCCL's all-reduce in place; every other
    operation, and the sum of an array that is not on a device, is ``mpi``'s.

    Args:
        mpi: the communicator that joins the processes (an ``MPICommunicator``): it
            broadcasts NCCL's id and carries everything that is not a device sum.
        nccl: the NCCL module (default ``cupy.cuda.nccl``); tests pass a fake with the
            same names.
        cuda: the CUDA runtime module with ``Device``, ``Stream``, ``ExternalStream``
            and ``Event`` (default ``cupy.cuda``); tests pass a fake.

    Raises:
        ImportError: CuPy or NCCL is missing.
        TypeError: ``mpi`` is not a ``Communicator``.
    """

    def __init__(self, mpi: Communicator, nccl: Any = None, *, cuda: Any = None) -> None:
        if not isinstance(mpi, Communicator):
            raise TypeError(
                "NCCLCommunicator(mpi=) takes the communicator that joins the processes, "
                f"an MPICommunicator; got {type(mpi).__name__}"
            )
        if nccl is None or cuda is None:
            default_nccl, default_cuda = import_nccl()
            nccl = default_nccl if nccl is None else nccl
            cuda = default_cuda if cuda is None else cuda
        self.mpi = mpi
        self.rank = mpi.rank
        self.size = mpi.size
        self.local_rank = mpi.local_rank
        self._nccl = nccl
        self._cuda = cuda
        cuda.Device(self.local_rank).use()
        uid = nccl.get_unique_id() if self.rank == 0 else None
        uid = mpi.broadcast_object(uid, root=0)
        self._comm = nccl.NcclCommunicator(self.size, uid, self.rank)
        self._side = cuda.Stream(non_blocking=True)

    def __repr__(self) -> str:
        return f"NCCLCommunicator(rank={self.rank}, size={self.size}, gpu={self.local_rank})"

    def _compute_stream(self, engine: Engine) -> int:
        """The engine's stream (Numba's ``handle.value``), else the current CuPy stream."""
        stream = getattr(engine, "stream", None)
        if stream is None:
            current = getattr(self._cuda, "get_current_stream", None)
            return _stream_pointer(current()) if current is not None else 0
        return _stream_pointer(stream)

    def _operands(self, A: Array) -> tuple[int, int, int]:
        """``(pointer, count, NCCL datatype)`` of the device array ``A``."""
        interface = _device_interface(A)
        assert interface is not None
        shape = tuple(interface["shape"])
        strides = interface.get("strides")
        typestr = str(interface["typestr"])
        itemsize = int(typestr[2:])
        if strides is not None and tuple(strides) != _c_strides(shape, itemsize):
            raise ValueError(
                f"NCCL sums C-contiguous arrays in place; got shape {shape} with strides "
                f"{tuple(strides)}: pass a contiguous view (a slice of the flat gradient "
                "buffer is one)"
            )
        name = _NCCL_TYPES.get(typestr[1:])
        if name is None or not hasattr(self._nccl, name):
            raise TypeError(
                f"NCCL sums float16, float32 and float64 arrays here; got typestr {typestr!r}"
            )
        count = int(np.prod(shape, dtype=np.int64))
        return int(interface["data"][0]), count, int(getattr(self._nccl, name))

    def allreduce_sum(self, engine: Engine, A: Array) -> None:
        """Sum ``A`` over every process in place: NCCL on the engine's stream for a
        device array, ``mpi`` otherwise."""
        if _device_interface(A) is None:
            self.mpi.allreduce_sum(engine, A)
            return
        pointer, count, datatype = self._operands(A)
        stream = self._compute_stream(engine)
        self._comm.allReduce(pointer, pointer, count, datatype, self._nccl.NCCL_SUM, stream)

    def start_allreduce_sum(self, engine: Engine, A: Array) -> PendingSum:
        """Queue the sum of a device array on a second stream, after the work already
        queued on the engine's stream; ``wait`` makes the engine's stream wait for it."""
        if _device_interface(A) is None:
            return self.mpi.start_allreduce_sum(engine, A)
        pointer, count, datatype = self._operands(A)
        compute = self._cuda.ExternalStream(self._compute_stream(engine))
        ready = self._cuda.Event(disable_timing=True)
        ready.record(compute)
        self._side.wait_event(ready)
        self._comm.allReduce(
            pointer, pointer, count, datatype, self._nccl.NCCL_SUM, _stream_pointer(self._side)
        )
        return _PendingDevice(self._cuda, self._side, compute, A)

    def sum_host(self, values: np.ndarray) -> np.ndarray:
        return self.mpi.sum_host(values)

    def broadcast_array(self, engine: Engine, A: Array, root: int = 0) -> None:
        self.mpi.broadcast_array(engine, A, root=root)

    def broadcast_object(self, value: Any, root: int = 0) -> Any:
        return self.mpi.broadcast_object(value, root=root)

    def gather_objects(self, value: Any) -> list[Any]:
        return self.mpi.gather_objects(value)

    def gather_rows(self, rows: np.ndarray) -> np.ndarray:
        return self.mpi.gather_rows(rows)

    def abort(self, code: int = 1) -> None:
        self.mpi.abort(code)


def _c_strides(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    strides, step = [], itemsize
    for extent in reversed(shape):
        strides.append(step)
        step *= extent
    return tuple(reversed(strides))


_warned_staging = False


def _gpu_nccl() -> bool:
    """Whether CuPy's NCCL imports and this machine has a CUDA GPU."""
    try:
        _, cuda = import_nccl()
        return int(cuda.runtime.getDeviceCount()) > 0
    except Exception:  # no CuPy, no NCCL, no driver: all mean "not here"
        return False


def make_communicator(engine_needs_device_sum: bool, *, comm: Any = None) -> Communicator:
    """The communicator of this process's run over ``comm`` (default ``MPI.COMM_WORLD``).

    ``engine_needs_device_sum`` is whether the engine's arrays live on a GPU. Then NCCL
    sums them when CuPy's NCCL imports and a GPU is present; otherwise MPI carries
    everything, and device gradients are staged through the host, which is said once
    per process with a ``UserWarning``.

    Raises:
        ImportError: mpi4py is missing (``pip install dlcore[mpi]``).
    """
    global _warned_staging
    mpi = MPICommunicator(comm)
    if not engine_needs_device_sum:
        return mpi
    if _gpu_nccl():
        return NCCLCommunicator(mpi)
    if not _warned_staging:
        _warned_staging = True
        warnings.warn(
            "NCCL is not available (it needs CuPy with NCCL and a GPU: "
            f"{_INSTALL}), so the GPU gradients are summed over MPI through host "
            "copies each step, which is slower",
            UserWarning,
            stacklevel=2,
        )
    return mpi
