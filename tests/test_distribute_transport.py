"""The transports of data-parallel training (dlcore.distribute): ``MPICommunicator``
under ``mpiexec -n 2`` and ``-n 3`` (scripts in tests/distribute_scripts/), the abort
that ends every process when one fails, ``check_same``'s message, and
``NCCLCommunicator`` driven by a fake NCCL module in this process (no GPU here).

Nothing here initialises MPI in the test process: everything that needs MPI runs in the
scripts' processes.
"""

from __future__ import annotations

import io
import subprocess
import sys
import time
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from mpi_run import run_mpi

from dlcore.distribute import failure
from dlcore.distribute.communicator import Communicator, PendingSum, SingleProcess
from dlcore.distribute.failure import check_same, install_abort_on_exception
from dlcore.distribute.nccl import NCCLCommunicator, import_nccl

# -- MPI, between processes ----------------------------------------------------------


def _written(folder):
    """What each process wrote to ``folder/rank<r>.txt``, by rank."""
    return {int(p.stem[4:]): p.read_text() for p in folder.glob("rank*.txt")}


@pytest.mark.parametrize("n", [2, 3])
def test_collectives_under_mpiexec(n, tmp_path):
    result = run_mpi(n, "collectives.py", str(tmp_path), timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert _written(tmp_path) == {r: "OK" for r in range(n)}, output


@pytest.mark.parametrize("n", [2, 3])
def test_check_same_raises_the_same_message_on_every_process(n, tmp_path):
    result = run_mpi(n, "check_same.py", str(tmp_path), timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    messages = _written(tmp_path)
    last = n - 1
    expected = (
        f"fit(): rank {last} has input shape (None, 5), rank 0 has (None, 4); "
        f"rank {last} has loss mse, rank 0 has no loss: every process must build the same "
        "model and pass data of the same shape"
    )
    assert messages == {r: expected for r in range(n)}


def test_an_exception_on_one_process_ends_every_process():
    start = time.monotonic()
    result = run_mpi(3, "raise_on_rank1.py", timeout=20)
    elapsed = time.monotonic() - start
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert elapsed < 20
    assert output.count("deliberate failure on rank 1") == 1, output
    assert "[rank 1] RuntimeError: deliberate failure on rank 1" in output
    assert "was never aborted" not in output


def test_importing_dlcore_imports_neither_mpi4py_nor_cupy():
    code = (
        "import sys, dlcore, dlcore.distribute.mpi, dlcore.distribute.nccl, "
        "dlcore.distribute.failure\n"
        "print(sorted(m for m in ('mpi4py', 'cupy') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"


def test_missing_mpi4py_names_the_extra(monkeypatch):
    from dlcore.distribute.mpi import MPICommunicator

    monkeypatch.setitem(sys.modules, "mpi4py", None)
    with pytest.raises(ImportError, match=r"pip install dlcore\[mpi\]"):
        MPICommunicator()


def test_missing_cupy_names_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)
    monkeypatch.setitem(sys.modules, "cupy.cuda", None)
    with pytest.raises(ImportError, match=r"pip install dlcore\[mpi,cuda12\]"):
        import_nccl()


# -- the abort hook and check_same, in this process -----------------------------------


class _Recorder(SingleProcess):
    """A world of ``size`` processes seen from ``rank`` that records what is asked of
    it; its collectives answer as if every process had the same values, unless
    ``others`` gives them."""

    def __init__(self, rank: int = 0, size: int = 2, others: list[Any] | None = None):
        self.rank, self.size, self.local_rank = rank, size, rank
        self.others = others
        self.calls: list[tuple[Any, ...]] = []

    def allreduce_sum(self, engine, A):
        self.calls.append(("allreduce_sum", A))

    def start_allreduce_sum(self, engine, A):
        self.calls.append(("start_allreduce_sum", A))
        return super().start_allreduce_sum(engine, A)

    def broadcast_object(self, value, root=0):
        self.calls.append(("broadcast_object", value, root))
        return value if value is not None else "uid of rank 0"

    def broadcast_array(self, engine, A, root=0):
        self.calls.append(("broadcast_array", A, root))

    def gather_objects(self, value):
        self.calls.append(("gather_objects", value))
        return [value, *(self.others or [value] * (self.size - 1))]

    def abort(self, code=1):
        self.calls.append(("abort", code))


def test_abort_hook_prints_the_traceback_with_the_rank_then_aborts(monkeypatch):
    comm = _Recorder(rank=3, size=4)
    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)
    install_abort_on_exception(comm)
    install_abort_on_exception(comm)  # again: still one hook, one traceback
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    try:
        raise KeyError("lost key")
    except KeyError as error:
        sys.excepthook(type(error), error, error.__traceback__)
    lines = stderr.getvalue().splitlines()
    assert lines[0] == "[rank 3] Traceback (most recent call last):"
    assert lines[-1] == "[rank 3] KeyError: 'lost key'"
    assert all(line.startswith("[rank 3] ") for line in lines)
    assert stderr.getvalue().count("KeyError: 'lost key'") == 1
    assert comm.calls == [("abort", 1)]
    failure.uninstall_abort_on_exception()
    assert sys.excepthook is sys.__excepthook__


def test_abort_hook_in_a_world_of_one_only_prints(monkeypatch):
    comm = _Recorder(size=1)
    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    install_abort_on_exception(comm)
    error = ValueError("x")
    sys.excepthook(ValueError, error, None)
    assert comm.calls == []
    with pytest.raises(TypeError, match="takes a dlcore.distribute Communicator; got int"):
        install_abort_on_exception(3)  # type: ignore[arg-type]


def test_check_same_names_the_first_differing_rank_and_keys():
    same = {"input shape": (None, 4), "optimizer": "adam"}
    check_same(_Recorder(size=3), "agree", same)  # nothing differs
    check_same(SingleProcess(), "agree", same)
    others = [same, {"input shape": (None, 4)}, {"optimizer": "sgd", "input shape": (None, 4)}]
    with pytest.raises(
        ValueError,
        match=r"^compile\(\): rank 2 has no optimizer, rank 0 has adam: every process must "
        r"agree on it$",
    ):
        check_same(_Recorder(size=4, others=others), "compile()", same, must="agree on it")
    with pytest.raises(TypeError, match="takes a dict of the settings to compare; got list"):
        check_same(SingleProcess(), "agree", [1])  # type: ignore[arg-type]


# -- NCCL, with a fake module ---------------------------------------------------------


class _DeviceArray:
    """What NCCL sees of a device array: its ``__cuda_array_interface__``."""

    def __init__(self, pointer, shape, typestr="<f4", strides=None):
        self.__cuda_array_interface__ = {
            "shape": shape,
            "typestr": typestr,
            "data": (pointer, False),
            "strides": strides,
            "version": 3,
        }


def _fakes():
    log: list[tuple[Any, ...]] = []

    class NcclCommunicator:
        def __init__(self, size, uid, rank):
            log.append(("NcclCommunicator", size, uid, rank))

        def allReduce(self, send, recv, count, datatype, op, stream):  # noqa: N802
            log.append(("allReduce", send, recv, count, datatype, op, stream))

    nccl = SimpleNamespace(
        get_unique_id=lambda: log.append(("get_unique_id",)) or "uid of rank 0",
        NcclCommunicator=NcclCommunicator,
        NCCL_FLOAT32=7,
        NCCL_FLOAT64=8,
        NCCL_SUM=0,
    )

    class Stream:
        def __init__(self, non_blocking=False, ptr=500):
            self.ptr = ptr
            log.append(("Stream", non_blocking))

        def wait_event(self, event):
            log.append(("wait_event", self.ptr, event.name))

    class Event:
        made = 0

        def __init__(self, disable_timing=False):
            Event.made += 1
            self.name = f"event{Event.made}"

        def record(self, stream):
            log.append(("record", self.name, stream.ptr))

    class Device:
        def __init__(self, index):
            self.index = index

        def use(self):
            log.append(("Device.use", self.index))

    cuda = SimpleNamespace(
        Device=Device,
        Stream=Stream,
        Event=Event,
        ExternalStream=lambda ptr: SimpleNamespace(
            ptr=ptr, wait_event=lambda e: log.append(("wait_event", ptr, e.name))
        ),
    )
    return nccl, cuda, log


class _NumbaLikeEngine:
    """An engine with a Numba stream (``handle.value`` is its ``cudaStream_t``)."""

    stream = SimpleNamespace(handle=SimpleNamespace(value=777))


def test_nccl_sums_device_arrays_in_place_on_the_engine_stream():
    nccl, cuda, log = _fakes()
    mpi = _Recorder(rank=1, size=2)
    comm = NCCLCommunicator(mpi, nccl, cuda=cuda)
    assert (comm.rank, comm.size, comm.local_rank) == (1, 2, 1)
    # the GPU of local rank 1; rank 0's id, received through MPI
    assert log[:3] == [
        ("Device.use", 1),
        ("NcclCommunicator", 2, "uid of rank 0", 1),
        ("Stream", True),
    ]
    assert mpi.calls == [("broadcast_object", None, 0)]
    del log[:]

    comm.allreduce_sum(_NumbaLikeEngine(), _DeviceArray(0x1000, (3, 5), "<f4"))
    comm.allreduce_sum(SimpleNamespace(), _DeviceArray(0x2000, (4,), "<f8"))  # no stream
    assert log == [
        ("allReduce", 0x1000, 0x1000, 15, 7, 0, 777),
        ("allReduce", 0x2000, 0x2000, 4, 8, 0, 0),
    ]


def test_nccl_start_queues_the_sum_on_a_second_stream():
    nccl, cuda, log = _fakes()
    comm = NCCLCommunicator(_Recorder(rank=0, size=2), nccl, cuda=cuda)
    assert ("get_unique_id",) in log
    del log[:]
    pending = comm.start_allreduce_sum(_NumbaLikeEngine(), _DeviceArray(0x3000, (6,)))
    assert isinstance(pending, PendingSum)
    # the side stream (ptr 500) waits for the compute stream (777), then sums
    record, wait, reduce = log
    assert record[0] == "record" and record[2] == 777
    assert wait == ("wait_event", 500, record[1])
    assert reduce == ("allReduce", 0x3000, 0x3000, 6, 7, 0, 500)
    del log[:]
    pending.wait()  # the compute stream waits for the side stream
    record, wait = log
    assert record[0] == "record" and record[2] == 500
    assert wait == ("wait_event", 777, record[1])


def test_nccl_delegates_everything_but_device_sums_to_mpi():
    nccl, cuda, log = _fakes()
    mpi = _Recorder(rank=0, size=2)
    comm = NCCLCommunicator(mpi, nccl, cuda=cuda)
    del log[:], mpi.calls[:]
    host = np.zeros(3)
    comm.allreduce_sum(None, host)
    comm.start_allreduce_sum(None, host).wait()
    device = _DeviceArray(0x10, (2,))
    comm.broadcast_array(None, device, root=1)
    assert comm.broadcast_object("v", root=1) == "v"
    assert comm.gather_objects(5) == [5, 5]
    comm.abort(3)
    assert [c[0] for c in mpi.calls] == [
        "allreduce_sum",
        "start_allreduce_sum",
        "broadcast_array",
        "broadcast_object",
        "gather_objects",
        "abort",
    ]
    assert mpi.calls[0][1] is host and mpi.calls[2][1] is device
    assert log == []  # no NCCL call


def test_nccl_refuses_what_it_cannot_sum():
    nccl, cuda, _ = _fakes()
    comm = NCCLCommunicator(_Recorder(), nccl, cuda=cuda)
    with pytest.raises(TypeError, match=r"float16, float32 and float64 .* got typestr '<i8'"):
        comm.allreduce_sum(None, _DeviceArray(0x10, (2,), "<i8"))
    with pytest.raises(ValueError, match=r"C-contiguous .* shape \(2, 3\) with strides"):
        comm.allreduce_sum(None, _DeviceArray(0x10, (2, 3), "<f4", strides=(4, 8)))
    comm.allreduce_sum(None, _DeviceArray(0x10, (2, 3), "<f4", strides=(12, 4)))  # contiguous
    with pytest.raises(TypeError, match="takes the communicator .* got str"):
        NCCLCommunicator("world", nccl, cuda=cuda)  # type: ignore[arg-type]
    assert isinstance(comm, Communicator)
