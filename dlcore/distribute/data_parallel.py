"""``DataParallel``: what ``fit``, ``evaluate`` and ``predict`` do differently when
several processes train one model.

Every process holds the whole model. A step's global batch is split into contiguous
shares, one per rank (``shares``); each process computes the gradient of its share's
loss into the flat gradient buffer, weights it by its share of the batch
(``count / global count``, so that the sum is the gradient of the global batch's mean
loss, penalties included), and the processes sum the buffer (``GradientSync``). The
epoch's numbers are sums too (``EpochTotals.reduced_logs``), so every process logs the
global ones.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dlcore import config
from dlcore.backends.base import Array, Engine, Workspace, dtype_name
from dlcore.distribute.communicator import Communicator, PendingSum, shares


@dataclass(frozen=True)
class StepRows:
    """One training step of one process: its rows ``start:stop`` of its (shuffled) data,
    where they sit in the step's global batch (``offset``) and the global batch's size."""

    start: int
    stop: int
    offset: int
    global_count: int

    @property
    def count(self) -> int:
        return self.stop - self.start


class DataParallel:
    """Data parallelism over ``communicator``'s processes (made by ``distribute.init``).

    Args:
        communicator: the processes and their transport.
        auto_shard_dataset: whether every process passes the whole data set.
        bucket_bytes: the size of the gradient buckets, or ``None`` for one sum per step.
    """

    def __init__(
        self,
        communicator: Communicator,
        *,
        auto_shard_dataset: bool = True,
        bucket_bytes: int | None = None,
    ) -> None:
        self.communicator = communicator
        self.auto_shard_dataset = auto_shard_dataset
        self.bucket_bytes = bucket_bytes

    def __repr__(self) -> str:
        comm = self.communicator
        return (
            f"DataParallel(rank={comm.rank}, size={comm.size}, "
            f"auto_shard_dataset={self.auto_shard_dataset}, bucket_bytes={self.bucket_bytes})"
        )

    # ------------------------------------------------------------------ checks
    def check_same_setup(self, model: Any, samples: int, caller: str) -> None:
        """Refuse, on every process, a run whose processes built different models or
        pass data of different shapes: the first rank that differs from rank 0 is named."""
        from dlcore.distribute import failure

        # the layers' classes and weight shapes, not their names: a process that made
        # another model first numbers its layers' default names differently
        layers = [
            (type(layer).__name__, [list(shape) for shape in layer.parameter_shapes()])
            for layer in model.layers
        ]
        architecture = json.dumps(layers)
        setup = {
            "model": hashlib.sha256(architecture.encode()).hexdigest()[:16],
            "parameters": int(model.count_params()),
            "dtype": str(model.dtype),
            "engine": model.engine.name,
            "input shapes": str([tuple(t.dims) for t in model._inputs]),
        }
        if self.auto_shard_dataset:
            setup["samples"] = int(samples)
        failure.check_same(self.communicator, caller, setup)

    # ------------------------------------------------------------------ start
    def share_random_state(self) -> None:
        """Rank 0's host random generator, on every process (shuffling, dropout's seed)."""
        generator = config.rng()
        generator.bit_generator.state = self.communicator.broadcast_object(
            generator.bit_generator.state
        )

    def start_from_chief(self, model: Any, initial_epoch: int) -> int:
        """Rank 0's weights, optimizer state, random generator and first epoch on every
        process; returns the first epoch."""
        comm = self.communicator
        engine = model._built_engine()
        comm.broadcast_array(engine, model._params)
        optimizer = model._compiled_optimizer()
        state = comm.broadcast_object(optimizer.get_state() if comm.rank == 0 else None)
        if comm.rank != 0:
            optimizer.set_state(engine, state, model._built_dtype())
        self.share_random_state()
        return int(comm.broadcast_object(initial_epoch))

    def share_untrained(self, model: Any) -> None:
        """Rank 0's values of the weights no gradient updates (BatchNormalization's moving
        statistics, which each process moves with its own share's statistics), on every
        process: once per epoch, so that every process evaluates the same model."""
        plan = model._plan
        if plan is None or plan.segments is None:
            return  # every weight is trained: the same update keeps them equal
        engine, params = model._built_engine(), model._params
        cursor = 0
        for start, stop in [*plan.segments, (int(params.shape[0]), int(params.shape[0]))]:
            if start > cursor:
                self.communicator.broadcast_array(engine, engine.slice_rows(params, cursor, start))
            cursor = max(cursor, stop)

    # ------------------------------------------------------------------ batches
    def steps(self, samples: int, batch_size: int, max_steps: int | None = None) -> list[StepRows]:
        """This process's rows of every step of an epoch over ``samples`` rows (its own
        shard's size without ``auto_shard_dataset``)."""
        comm = self.communicator
        if self.auto_shard_dataset:
            plan = []
            for start in range(0, samples, batch_size):
                stop = min(start + batch_size, samples)
                offset, count = shares(stop - start, comm.size)[comm.rank]
                plan.append(StepRows(start + offset, start + offset + count, offset, stop - start))
            return plan[:max_steps]
        sizes = [int(n) for n in comm.gather_objects(int(samples))]
        per_rank = [count for _, count in shares(batch_size, comm.size)]
        total_steps = max(
            (math.ceil(n / share) if share else 0 for n, share in zip(sizes, per_rank)),
            default=0,
        )
        plan = []
        for step in range(total_steps):
            counts = [max(0, min(share, n - step * share)) for n, share in zip(sizes, per_rank)]
            start = min(step * per_rank[comm.rank], sizes[comm.rank])
            offset = sum(counts[: comm.rank])
            plan.append(StepRows(start, start + counts[comm.rank], offset, sum(counts)))
        return plan[:max_steps]

    def evaluation_rows(self, samples: int) -> tuple[int, int, bool]:
        """This process's rows ``(start, stop)`` of ``samples`` for evaluate and predict,
        and whether the results are to be combined over the processes: a contiguous share
        with ``auto_shard_dataset`` (all of them on every process when there are fewer
        samples than processes, combining nothing), else all of its own shard."""
        comm = self.communicator
        if not self.auto_shard_dataset:
            return 0, samples, True
        if samples < comm.size:
            return 0, samples, False
        offset, count = shares(samples, comm.size)[comm.rank]
        return offset, offset + count, True

    # ------------------------------------------------------------------ gradients
    def gradient_sync(self, engine: Engine, grads: Array, ranges: Sequence[tuple[int, int]]):
        """The ``GradientSync`` of one ``fit`` over the flat gradient buffer ``grads``."""
        return GradientSync(self.communicator, engine, grads, ranges, self.bucket_bytes)


class GradientSync:
    """Sums a step's gradients over the processes: weighted by this process's share of the
    batch, in buckets of ``bucket_bytes`` started as the backward pass finishes each
    layer (last layer first), or all at once in ``finish`` (``bucket_bytes=None``, or a
    step whose gradients come from one fused call).

    Args:
        communicator: the processes.
        engine: the engine of ``grads``.
        grads: the flat gradient buffer ``(P,)``.
        ranges: the ``(start, stop)`` ranges of ``grads`` that the optimizer updates.
        bucket_bytes: the bucket size, or ``None``.
    """

    def __init__(
        self,
        communicator: Communicator,
        engine: Engine,
        grads: Array,
        ranges: Sequence[tuple[int, int]],
        bucket_bytes: int | None,
    ) -> None:
        self._comm = communicator
        self._engine = engine
        self._grads = grads
        self._ranges = sorted(ranges)
        itemsize = np.dtype(dtype_name(grads.dtype)).itemsize
        self._bucket_items = None if bucket_bytes is None else max(1, bucket_bytes // itemsize)
        self._weight = 1.0
        self._open: list[int] | None = None  # the bucket being filled: [start, stop)
        self._pending: list[PendingSum] = []
        self._sent: list[tuple[int, int]] = []
        self._workspaces: dict[tuple[int, int], Workspace] = {}

    @property
    def overlaps(self) -> bool:
        """Whether buckets start during the backward pass."""
        return self._bucket_items is not None

    def begin(self, weight: float) -> None:
        """A new step, whose gradients count ``weight`` (this share / the global batch)."""
        self._weight = weight
        self._open = None
        self._pending.clear()
        self._sent.clear()

    def ready(self, start: int, stop: int) -> None:
        """The gradients ``grads[start:stop]`` are final for this step: bucket them."""
        if self._bucket_items is None or stop <= start:
            return
        if self._open is not None and stop == self._open[0]:
            self._open[0] = start  # the layer below, adjacent: the same bucket
        else:
            self._flush()
            self._open = [start, stop]
        if self._open[1] - self._open[0] >= self._bucket_items:
            self._flush()

    def _flush(self) -> None:
        if self._open is None:
            return
        start, stop = self._open
        self._open = None
        view = self._weighted(start, stop)
        self._pending.append(self._comm.start_allreduce_sum(self._engine, view))
        self._sent.append((start, stop))

    def _weighted(self, start: int, stop: int) -> Array:
        engine = self._engine
        view = engine.slice_rows(self._grads, start, stop)
        if self._weight != 1.0:
            workspace = self._workspaces.get((start, stop))
            if workspace is None:  # one per range: the steps after the first allocate nothing
                workspace = self._workspaces[(start, stop)] = Workspace(engine)
            engine.assign(view, engine.scale(view, self._weight, workspace=workspace))
        return view

    def finish(self) -> None:
        """Sum what no bucket has sent yet, then wait for every sum of the step."""
        self._flush()
        for start, stop in self._unsent():
            self._comm.allreduce_sum(self._engine, self._weighted(start, stop))
        for pending in self._pending:
            pending.wait()
        self._pending.clear()

    def _unsent(self) -> Iterator[tuple[int, int]]:
        """The updated ranges (merged where adjacent) that no bucket covered."""
        sent = sorted(self._sent)
        merged: list[list[int]] = []
        for start, stop in self._ranges:
            if merged and merged[-1][1] == start:
                merged[-1][1] = stop
            else:
                merged.append([start, stop])
        for start, stop in merged:
            cursor = start
            for sent_start, sent_stop in sent:
                if sent_stop <= cursor or sent_start >= stop:
                    continue
                if sent_start > cursor:
                    yield cursor, sent_start
                cursor = max(cursor, sent_stop)
            if cursor < stop:
                yield cursor, stop
