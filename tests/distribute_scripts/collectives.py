"""Every collective of ``MPICommunicator`` checked against values each process computes
on its own; run by tests/test_distribute_transport.py under ``mpiexec -n 2`` and ``-n 3``.

Each process writes ``OK`` to ``<argv[1]>/rank<r>.txt`` at the end (a file each: lines
printed by several processes can interleave); a failed check ends every process
(``install_abort_on_exception``) with the check's traceback.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

from dlcore import backends
from dlcore.distribute.failure import install_abort_on_exception
from dlcore.distribute.mpi import MPICommunicator
from dlcore.distribute.nccl import make_communicator

comm = MPICommunicator()
install_abort_on_exception(comm)
rank, size = comm.rank, comm.size
ranks = np.arange(size)
assert comm.local_rank == rank, (comm.local_rank, rank)  # one machine


class Untouchable:
    """An engine that fails when used: host arrays must be summed without it (no copy)."""

    def __getattr__(self, name: str) -> None:
        raise AssertionError(f"the engine's {name} was used on a host array")


def engine_arrays(name: str) -> None:
    engine = backends.get(name)
    for dtype in ("float32", "float64"):
        base = np.arange(6, dtype=np.float64)
        A = engine.asarray(base * (rank + 1), dtype=dtype)
        address = A.ctypes.data if isinstance(A, np.ndarray) else None
        comm.allreduce_sum(Untouchable() if address else engine, A)
        expected = base * (ranks + 1).sum()
        got = engine.to_numpy(A)
        assert got.dtype == np.dtype(dtype), got.dtype
        np.testing.assert_array_equal(got, expected)
        if address is not None:  # the numpy engine: summed in the same memory
            assert A.ctypes.data == address

        B = engine.asarray(base - rank, dtype=dtype)
        pending = comm.start_allreduce_sum(Untouchable() if address else engine, B)
        pending.wait()
        np.testing.assert_array_equal(engine.to_numpy(B), size * base - ranks.sum())

        C = engine.asarray(np.full((2, 3), float(rank)), dtype=dtype)
        comm.broadcast_array(Untouchable() if address else engine, C, root=size - 1)
        np.testing.assert_array_equal(engine.to_numpy(C), np.full((2, 3), size - 1.0))

    # a view of a flat buffer (how the gradients arrive): only the view is summed
    flat = np.arange(10, dtype=np.float32) + rank
    view = flat[2:7]
    comm.allreduce_sum(backends.get("numpy"), view)
    np.testing.assert_array_equal(view, np.arange(2, 7) * size + ranks.sum())
    np.testing.assert_array_equal(flat[:2], np.arange(2) + rank)
    np.testing.assert_array_equal(flat[7:], np.arange(7, 10) + rank)


engine_arrays("numpy")
try:  # refused before any message is sent, so only this process need see it
    comm.allreduce_sum(backends.get("numpy"), np.zeros((4, 4))[:, 0])
except ValueError as error:
    assert "C-contiguous" in str(error), error
else:
    raise AssertionError("a strided view was summed")
engine_arrays("array_api_strict")

values = np.array([float(rank), 1.0, 0.5])
total = comm.sum_host(values)
assert total is not values and total.dtype == np.float64
np.testing.assert_array_equal(total, [ranks.sum(), size, 0.5 * size])
np.testing.assert_array_equal(values, [float(rank), 1.0, 0.5])  # left as it was

got = comm.broadcast_object({"rank": rank, "name": f"from {rank}"}, root=size - 1)
assert got == {"rank": size - 1, "name": f"from {size - 1}"}, got
assert comm.gather_objects(("r", rank)) == [("r", r) for r in range(size)]

# rank r sends r rows (rank 0 none) of shape (2, 3), float32
rows = np.arange(rank * 6, dtype=np.float32).reshape(rank, 2, 3) + 100 * rank
gathered = comm.gather_rows(rows)
expected = np.concatenate(
    [np.arange(r * 6, dtype=np.float32).reshape(r, 2, 3) + 100 * r for r in range(size)]
)
assert gathered.dtype == np.float32 and gathered.shape == expected.shape, gathered.shape
np.testing.assert_array_equal(gathered, expected)
# int64 labels, the last rank sending none
labels = np.arange(rank + 1, dtype=np.int64) * 10 if rank < size - 1 else np.empty(0, np.int64)
want = np.concatenate([np.arange(r + 1, dtype=np.int64) * 10 for r in range(size - 1)])
got_labels = comm.gather_rows(labels)
assert got_labels.dtype == np.int64
np.testing.assert_array_equal(got_labels, want)
# nobody has rows: rank 0's trailing shape and dtype, no row
empty = comm.gather_rows(np.empty((0, 4), dtype=np.float64))
assert empty.shape == (0, 4) and empty.dtype == np.float64
# float64 rows on one rank and float32 on the others are refused, on every process
odd = np.ones((1, 2), dtype=np.float64 if rank == 1 else np.float32)
try:
    comm.gather_rows(odd)
except ValueError as error:
    assert "rank 1 has rows of shape (1, 2) and dtype float64, rank 0 has" in str(error), error
else:
    raise AssertionError("gather_rows took rows of different dtypes")

# no NCCL here: one warning that the gradients go through the host, then none
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    first = make_communicator(True)
    second = make_communicator(True)
    plain = make_communicator(False)
assert all(isinstance(c, MPICommunicator) for c in (first, second, plain))
assert len(caught) == 1 and "through host" in str(caught[0].message), [
    str(w.message) for w in caught
]

Path(sys.argv[1], f"rank{rank}.txt").write_text("OK")
