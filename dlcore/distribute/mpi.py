"""``MPICommunicator``: the processes of a data-parallel run joined by MPI (mpi4py).

Host NumPy arrays (the numpy engine's) are summed and broadcast in place, with no copy
(``MPI.IN_PLACE``); any other engine's arrays are staged through a host copy and copied
back. mpi4py is imported when a communicator is made, never when dlcore is.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dlcore.backends.base import Array, Engine, dtype_name

from .communicator import Communicator, PendingSum

_INSTALL = "pip install dlcore[mpi]"


def import_mpi() -> Any:
    """The ``mpi4py.MPI`` module (importing it initialises MPI).

    Raises:
        ImportError: mpi4py or an MPI library is missing, naming the extra to install.
    """
    try:
        from mpi4py import MPI
    except ImportError as error:
        raise ImportError(
            "data-parallel training over MPI needs mpi4py and an MPI library, which are "
            f"not installed ({error}): {_INSTALL} installs both (mpi4py and MPICH), "
            "then start the script with `mpiexec -n 4 python train.py`"
        ) from error
    return MPI


def _is_host(A: Array) -> bool:
    # the numpy engine's arrays are host memory, which MPI reads and writes directly
    return isinstance(A, np.ndarray)


def _contiguous(A: np.ndarray) -> np.ndarray:
    if not A.flags.c_contiguous:
        raise ValueError(
            f"MPI sums and broadcasts C-contiguous arrays in place; got an array of shape "
            f"{A.shape} with strides {A.strides}: pass a contiguous view (a slice of the "
            "flat gradient buffer is one)"
        )
    return A


class _PendingHost(PendingSum):
    """An ``Iallreduce`` in flight on a host array (kept alive until ``wait``)."""

    def __init__(self, request: Any, buffer: np.ndarray) -> None:
        self._request = request
        self._buffer = buffer

    def wait(self) -> None:
        self._request.Wait()


class _PendingStaged(PendingSum):
    """An ``Iallreduce`` in flight on the host copy of an engine array; ``wait`` copies
    the sum back into the engine array."""

    def __init__(self, request: Any, engine: Engine, A: Array, host: np.ndarray) -> None:
        self._request = request
        self._engine = engine
        self._A = A
        self._host = host
        self._done = False

    def wait(self) -> None:
        if self._done:
            return
        self._request.Wait()
        _copy_back(self._engine, self._A, self._host)
        self._done = True


def _copy_back(engine: Engine, A: Array, host: np.ndarray) -> None:
    engine.assign(A, engine.asarray(host, dtype=dtype_name(host.dtype)))


class MPICommunicator(Communicator):
    """Every process of ``comm`` (default ``MPI.COMM_WORLD``), joined by MPI.

    ``rank`` and ``size`` are ``comm``'s; ``local_rank`` is the rank among the processes
    of ``comm`` that share this machine's memory (``MPI.COMM_TYPE_SHARED``).

    Raises:
        ImportError: mpi4py is not installed (``pip install dlcore[mpi]``).
        TypeError: ``comm`` is not an ``mpi4py.MPI.Intracomm``.
    """

    def __init__(self, comm: Any = None) -> None:
        MPI = import_mpi()
        if comm is None:
            comm = MPI.COMM_WORLD
        if not isinstance(comm, MPI.Intracomm):
            raise TypeError(
                "MPICommunicator(comm=) takes an mpi4py intracommunicator such as "
                f"MPI.COMM_WORLD; got {type(comm).__name__}: pass None for COMM_WORLD"
            )
        self._MPI = MPI
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        #: the processes of ``comm`` on this machine
        self.node_comm = comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank = self.node_comm.Get_rank()

    def __repr__(self) -> str:
        return f"MPICommunicator(rank={self.rank}, size={self.size}, local_rank={self.local_rank})"

    # -- engine arrays ------------------------------------------------------------------

    def allreduce_sum(self, engine: Engine, A: Array) -> None:
        """Sum the engine array ``A`` (C-contiguous, float) over every process, in place:
        directly in a host NumPy array, through a host copy otherwise."""
        if _is_host(A):
            self.comm.Allreduce(self._MPI.IN_PLACE, _contiguous(A), op=self._MPI.SUM)
            return
        host = np.ascontiguousarray(engine.to_numpy(A))
        self.comm.Allreduce(self._MPI.IN_PLACE, host, op=self._MPI.SUM)
        _copy_back(engine, A, host)

    def start_allreduce_sum(self, engine: Engine, A: Array) -> PendingSum:
        """``allreduce_sum`` started with ``Iallreduce``; a staged array is copied back
        in ``wait``."""
        if _is_host(A):
            request = self.comm.Iallreduce(self._MPI.IN_PLACE, _contiguous(A), op=self._MPI.SUM)
            return _PendingHost(request, A)
        host = np.ascontiguousarray(engine.to_numpy(A))
        request = self.comm.Iallreduce(self._MPI.IN_PLACE, host, op=self._MPI.SUM)
        return _PendingStaged(request, engine, A, host)

    def broadcast_array(self, engine: Engine, A: Array, root: int = 0) -> None:
        """Overwrite the engine array ``A`` (any shape, C-contiguous) on every process
        with ``root``'s, in place."""
        if _is_host(A):
            self.comm.Bcast(_contiguous(A), root=root)
            return
        host = np.ascontiguousarray(engine.to_numpy(A))
        self.comm.Bcast(host, root=root)
        if self.rank != root:
            _copy_back(engine, A, host)

    # -- host values --------------------------------------------------------------------

    def sum_host(self, values: np.ndarray) -> np.ndarray:
        """The elementwise sum over every process of ``values`` (float64, the same shape
        on each), as a new float64 array."""
        send = np.ascontiguousarray(values, dtype=np.float64)
        out = np.empty_like(send)
        self.comm.Allreduce(send, out, op=self._MPI.SUM)
        return out

    def broadcast_object(self, value: Any, root: int = 0) -> Any:
        """``root``'s ``value`` (small, picklable) on every process."""
        return self.comm.bcast(value, root=root)

    def gather_objects(self, value: Any) -> list[Any]:
        """Every process's ``value`` (small, picklable), in rank order, on every process."""
        return list(self.comm.allgather(value))

    def gather_rows(self, rows: np.ndarray) -> np.ndarray:
        """Every process's ``rows`` ``(n_r, ...)`` concatenated in rank order, on every
        process.

        ``n_r`` may differ between processes and be 0. The processes with rows must agree
        on the trailing shape and the dtype (float32, float64, int64 or any other NumPy
        number); a process with no rows may send any, and when no process has rows the
        result has rank 0's trailing shape and dtype.

        Raises:
            ValueError: on every process, when two processes' rows differ in trailing
                shape or dtype.
        """
        from mpi4py.util import dtlib

        rows = np.ascontiguousarray(rows)
        if rows.ndim == 0:
            raise ValueError(
                "gather_rows takes an array of rows (n, ...); got a 0-d array: "
                "pass value.reshape(1)"
            )
        infos = self.comm.allgather((rows.shape, rows.dtype.str))
        with_rows = [r for r, (shape, _) in enumerate(infos) if shape[0] > 0]
        first = with_rows[0] if with_rows else 0
        trailing, dtype_str = tuple(infos[first][0][1:]), infos[first][1]
        for r in with_rows:
            shape, other = infos[r]
            if tuple(shape[1:]) != trailing or other != dtype_str:
                raise ValueError(
                    f"gather_rows: rank {r} has rows of shape {tuple(shape)} and dtype "
                    f"{np.dtype(other)}, rank {first} has {tuple(infos[first][0])} and "
                    f"{np.dtype(dtype_str)}: every process must send rows of the same "
                    "trailing shape and dtype"
                )
        dtype = np.dtype(dtype_str)
        width = int(np.prod(trailing, dtype=np.int64))
        counts = [int(shape[0]) * width if shape[0] > 0 else 0 for shape, _ in infos]
        displs = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int).tolist()
        total_rows = sum(int(shape[0]) for r, (shape, _) in enumerate(infos) if r in with_rows)
        out = np.empty((total_rows, *trailing), dtype=dtype)
        mpi_type = dtlib.from_numpy_dtype(dtype)
        send = rows if rows.shape[0] > 0 else np.empty(0, dtype=dtype)
        self.comm.Allgatherv([send, send.size, mpi_type], [out, (counts, displs), mpi_type])
        return out

    def abort(self, code: int = 1) -> None:
        """End every process of the run now (``MPI_Abort``)."""
        self.comm.Abort(code)
