"""What data parallelism asks of the processes' transport: ``Communicator``.

``fit`` sums the flat gradient buffer across processes, agrees on the epoch's numbers,
starts every process from rank 0's weights and gathers predictions, all through this
small interface. ``MPICommunicator`` (``dlcore.distribute.mpi``) implements it with
mpi4py between processes and machines; ``NCCLCommunicator``
(``dlcore.distribute.nccl``) sums device arrays between GPUs with NCCL and uses MPI
for the rest; ``SingleProcess`` is the world of one process, where every operation
returns at once.

Arrays given to ``allreduce_sum`` and ``start_allreduce_sum`` are engine arrays (a
view of the flat gradient buffer), summed in place; everything else crosses as host
NumPy arrays or small Python objects.
"""

from __future__ import annotations

import abc
from typing import Any

import numpy as np

from dlcore.backends.base import Array, Engine


class PendingSum(abc.ABC):
    """A sum started by ``Communicator.start_allreduce_sum``; ``wait`` completes it."""

    @abc.abstractmethod
    def wait(self) -> None:
        """Block until the array holds the sum over every process."""


class Communicator(abc.ABC):
    """The processes of one data-parallel run and the collective operations ``fit``
    needs. Every process calls the same operations in the same order."""

    #: this process's rank, ``0 .. size - 1``
    rank: int
    #: the number of processes
    size: int
    #: this process's rank among the processes of its machine (picks its GPU)
    local_rank: int

    @abc.abstractmethod
    def allreduce_sum(self, engine: Engine, A: Array) -> None:
        """Replace the engine array ``A`` (C-contiguous, float) by its sum over every
        process, in place."""

    @abc.abstractmethod
    def start_allreduce_sum(self, engine: Engine, A: Array) -> PendingSum:
        """Start ``allreduce_sum(engine, A)`` without waiting for it (non-blocking:
        MPI's ``Iallreduce``, NCCL on a second stream); ``A`` must not be read or
        written until the returned sum's ``wait()``."""

    @abc.abstractmethod
    def sum_host(self, values: np.ndarray) -> np.ndarray:
        """The elementwise sum over every process of a host float64 array (the same
        shape on each), as a new array."""

    @abc.abstractmethod
    def broadcast_array(self, engine: Engine, A: Array, root: int = 0) -> None:
        """Overwrite the engine array ``A`` on every process with ``root``'s, in place."""

    @abc.abstractmethod
    def broadcast_object(self, value: Any, root: int = 0) -> Any:
        """``root``'s ``value`` (a small picklable object), on every process."""

    @abc.abstractmethod
    def gather_objects(self, value: Any) -> list[Any]:
        """Every process's ``value`` (small, picklable), in rank order, on every process."""

    @abc.abstractmethod
    def gather_rows(self, rows: np.ndarray) -> np.ndarray:
        """Every process's host ``rows`` ``(n_r, ...)``, concatenated in rank order, on
        every process (``n_r`` may differ, and be 0)."""

    @abc.abstractmethod
    def abort(self, code: int = 1) -> None:
        """End every process of the run now (after an exception on this one)."""


class _Done(PendingSum):
    def wait(self) -> None:
        return None


class SingleProcess(Communicator):
    """The world of one process: every collective is the identity."""

    rank = 0
    size = 1
    local_rank = 0

    def allreduce_sum(self, engine: Engine, A: Array) -> None:
        return None

    def start_allreduce_sum(self, engine: Engine, A: Array) -> PendingSum:
        return _Done()

    def sum_host(self, values: np.ndarray) -> np.ndarray:
        return np.array(values, dtype=np.float64)

    def broadcast_array(self, engine: Engine, A: Array, root: int = 0) -> None:
        return None

    def broadcast_object(self, value: Any, root: int = 0) -> Any:
        return value

    def gather_objects(self, value: Any) -> list[Any]:
        return [value]

    def gather_rows(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(rows)

    def abort(self, code: int = 1) -> None:
        raise SystemExit(code)


def shares(total: int, size: int) -> list[tuple[int, int]]:
    """How ``total`` rows are split among ``size`` processes: ``(offset, count)`` per rank,
    contiguous and in rank order, the first ``total % size`` ranks one row more.

    Example:
        >>> shares(10, 3)
        [(0, 4), (4, 3), (7, 3)]
    """
    base, extra = divmod(total, size)
    out, offset = [], 0
    for rank in range(size):
        count = base + (1 if rank < extra else 0)
        out.append((offset, count))
        offset += count
    return out
