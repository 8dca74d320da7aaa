"""Data-parallel training across processes, GPUs and machines: one line in a script.

    import dlcore

    dlcore.distribute.init()   # the one line; then run: mpiexec -n 4 python train.py

After ``init()``, ``fit`` trains every process on its share of every global batch:
``batch_size`` stays the global batch size, the weights, the optimizer's state and the
random generator come from rank 0, the gradients of all processes are summed in one
all-reduce over the model's flat gradient buffer per step (or in buckets overlapped
with the backward pass, ``bucket_bytes``), and every process applies the same update.
The epoch's losses and metrics, validation included, are the global ones, so callbacks
decide the same everywhere; only rank 0 prints progress and writes files.
``evaluate`` and ``predict`` share the samples out and gather the results in order.

The API follows Horovod's (``hvd.init()``, ``rank()``, ``size()``, ``local_rank()``),
which MPI users know and which needs no change to the model code, with Keras 3's
``keras.distribution.DataParallel`` semantics: one global batch split across replicas,
the data set sharded automatically unless told otherwise (``auto_shard_dataset``).
The transport is MPI (``mpi4py``) between processes, and NCCL between GPUs where CuPy
has it (``dlcore.distribute.nccl``); see ``Communicator``.
"""

from __future__ import annotations

from dlcore.distribute.communicator import Communicator, PendingSum, SingleProcess, shares
from dlcore.distribute.data_parallel import DataParallel, StepRows

#: the default size of the gradient buckets overlapped with the backward pass
DEFAULT_BUCKET_BYTES = 25 * 2**20

_active: list[DataParallel] = []


def init(
    communicator: Communicator | None = None,
    *,
    auto_shard_dataset: bool = True,
    bucket_bytes: int | None = DEFAULT_BUCKET_BYTES,
    abort_on_exception: bool = True,
) -> DataParallel:
    """Make ``fit``, ``evaluate`` and ``predict`` data-parallel over the processes that
    ``mpiexec`` started (or over ``communicator``'s).

    Args:
        communicator: the processes and their transport; by default MPI's world, with
            NCCL for the gradients on the GPU engines when CuPy has it (else MPI with
            the gradients staged through the host, said once as a warning).
        auto_shard_dataset: ``True`` (default): every process passes the whole data set
            and takes its share of each batch, so a run equals a one-process run of the
            same global batch size and seed. ``False``: each process passes only its own
            shard; ``batch_size`` is still the global batch, of which each process takes
            its share from its own shard, and an epoch lasts as long as the longest shard.
        bucket_bytes: gradients are summed in buckets of about this many bytes as the
            backward pass produces them, last layer first, overlapping communication
            with the rest of the backward pass; ``None`` sums the whole flat gradient
            buffer once after it (the same numbers).
        abort_on_exception: an uncaught exception on one process prints its traceback
            once and ends every process, instead of leaving the others waiting forever
            in an all-reduce.

    Returns:
        The ``DataParallel`` distribution now in force (also ``distribution()``).

    Raises:
        ImportError: mpi4py is missing (``pip install dlcore[mpi]``).
        ValueError: a bad ``bucket_bytes``.
    """
    if bucket_bytes is not None and (
        isinstance(bucket_bytes, bool) or not isinstance(bucket_bytes, int) or bucket_bytes < 1
    ):
        raise ValueError(
            f"bucket_bytes must be a positive int or None (one all-reduce per step), "
            f"received {bucket_bytes!r}"
        )
    if communicator is None:
        import numpy as np

        from dlcore import config
        from dlcore.distribute import nccl

        probe = config.get_backend().zeros((1,), dtype="float32")
        communicator = nccl.make_communicator(not isinstance(probe, np.ndarray))
    if abort_on_exception and communicator.size > 1:
        from dlcore.distribute import failure

        failure.install_abort_on_exception(communicator)
    parallel = DataParallel(
        communicator, auto_shard_dataset=bool(auto_shard_dataset), bucket_bytes=bucket_bytes
    )
    _active[:] = [parallel]
    return parallel


def shutdown() -> None:
    """Back to one process: ``fit`` no longer communicates."""
    _active.clear()


def distribution() -> DataParallel | None:
    """The data-parallel distribution ``init`` set, or ``None``."""
    return _active[0] if _active else None


def rank() -> int:
    """This process's rank (0 without ``init``)."""
    parallel = distribution()
    return 0 if parallel is None else parallel.communicator.rank


def size() -> int:
    """The number of processes (1 without ``init``)."""
    parallel = distribution()
    return 1 if parallel is None else parallel.communicator.size


def local_rank() -> int:
    """This process's rank on its machine: the GPU it uses (0 without ``init``)."""
    parallel = distribution()
    return 0 if parallel is None else parallel.communicator.local_rank


def is_chief() -> bool:
    """Whether this process prints progress and writes files (rank 0, or no ``init``)."""
    return rank() == 0


__all__ = [
    "Communicator",
    "DataParallel",
    "PendingSum",
    "SingleProcess",
    "StepRows",
    "distribution",
    "init",
    "is_chief",
    "local_rank",
    "rank",
    "shares",
    "shutdown",
    "size",
]
