"""Data that comes in batches: Python generators and iterators, and ``Sequence``.

``fit``, ``evaluate`` and ``predict`` take, besides arrays, an iterator of batches
(a generator yielding ``(x, y)`` or ``(x, y, sample_weight)``; ``x`` alone for
``predict``) or a ``Sequence`` (``__len__``, ``__getitem__``, ``on_epoch_end``, like
Keras's ``PyDataset``). Only the batches in flight are in memory: a background thread
reads the next batch from the user's source while the current step runs (the user's
code, and any file reading it does, overlaps the training step; the copy to the engine
happens on the training thread).
"""

from __future__ import annotations

import abc
import itertools
import queue
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from dlcore import config


class Sequence(abc.ABC):
    """Base class of datasets read batch by batch, as Keras's ``PyDataset``.

    Subclasses implement ``__len__`` (the number of batches) and ``__getitem__(index)``
    (batch ``index``: ``(x, y)``, ``(x, y, sample_weight)``, or ``x`` for ``predict``);
    ``on_epoch_end`` runs after every epoch (reshuffle files there). ``fit(shuffle=True)``
    visits the batches in a new random order every epoch.

    Args:
        workers, use_multiprocessing, max_queue_size: Keras's ``PyDataset`` arguments,
            accepted so that Keras code runs; dlcore reads one batch ahead on one thread.
    """

    def __init__(
        self, workers: int = 1, use_multiprocessing: bool = False, max_queue_size: int = 10
    ) -> None:
        self.workers = workers
        self.use_multiprocessing = use_multiprocessing
        self.max_queue_size = max_queue_size

    @abc.abstractmethod
    def __len__(self) -> int:
        """The number of batches."""

    @abc.abstractmethod
    def __getitem__(self, index: int) -> Any:
        """Batch ``index``: ``(x, y)``, ``(x, y, sample_weight)``, or ``x`` for ``predict``."""

    def on_epoch_end(self) -> None:  # noqa: B027  (a hook to override, as in Keras)
        """Called after each epoch; does nothing by default."""

    @property
    def num_batches(self) -> int:
        """The number of batches, ``len(self)``."""
        return len(self)


def is_batch_source(data: Any) -> bool:
    """Whether ``data`` is a ``Sequence``-like object or an iterator of batches (not arrays,
    lists or dicts, which are the data itself)."""
    if isinstance(data, Sequence):
        return True
    if isinstance(data, (np.ndarray, list, tuple, dict, str, bytes)) or data is None:
        return False
    if hasattr(data, "__getitem__") and hasattr(data, "__len__") and hasattr(data, "on_epoch_end"):
        return True  # a keras.utils.PyDataset or another Sequence-like class
    return isinstance(data, Iterator)


class BatchSource:
    """The batches of one ``fit``, ``evaluate`` or ``predict`` call, epoch by epoch.

    Args:
        data: a ``Sequence``-like object or an iterator of batches.
        steps: batches per epoch; ``None``: the whole ``Sequence``, or an iterator until
            it is exhausted.
        shuffle: visit a ``Sequence``'s batches in a random order each epoch.
        what: how messages name the argument (``"x"``, ``"validation_data"``).

    Raises:
        ValueError: ``steps`` is not a positive integer, or exceeds a ``Sequence``'s length.
    """

    def __init__(self, data: Any, steps: int | None, shuffle: bool, what: str) -> None:
        self.what = what
        self._sequence = None if isinstance(data, Iterator) else data
        self._iterator: Iterator[Any] | None = data if isinstance(data, Iterator) else None
        if steps is not None and (
            isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1
        ):
            raise ValueError(f"steps for {what} must be a positive integer, received {steps!r}")
        if self._sequence is not None:
            length = len(self._sequence)
            if steps is not None and steps > length:
                raise ValueError(
                    f"{what} is a Sequence of {length} batches, but {steps} steps per epoch "
                    f"were asked for; ask for at most {length}, or None for all of them"
                )
            steps = length if steps is None else steps
        self.steps: int | None = None if steps is None else int(steps)
        self._shuffle = shuffle
        self.exhausted = False

    def peek(self) -> Any:
        """The first batch, read now so that the model can be built and checked before
        training starts; the next ``epoch`` still yields it.

        Raises:
            ValueError: an empty ``Sequence``, or an iterator that is already exhausted.
        """
        if self._sequence is not None:
            if len(self._sequence) == 0:
                raise ValueError(f"{self.what} is a Sequence of 0 batches: there is no data")
            return self._sequence[0]
        assert self._iterator is not None
        try:
            first = next(self._iterator)
        except StopIteration:
            raise ValueError(
                f"{self.what} is an iterator that yields no batch (is it already exhausted? "
                "a generator runs once: make a new one for each call)"
            ) from None
        self._iterator = itertools.chain([first], self._iterator)
        return first

    def epoch(self) -> Iterator[tuple[int, Any]]:
        """``(index, batch)`` for each batch of the next epoch, read one ahead on a thread.

        An iterator that runs out before its first batch of an epoch sets ``exhausted``.
        """
        if self._sequence is not None:
            sequence = self._sequence
            order = np.arange(len(sequence))
            if self._shuffle:
                order = config.rng().permutation(order)
            items: Iterator[Any] = (sequence[int(i)] for i in order[: self.steps])
        else:
            assert self._iterator is not None
            items = _take(self._iterator, self.steps)
        count = 0
        for count, item in enumerate(_read_ahead(items), start=1):
            yield count - 1, item
        if count == 0:
            self.exhausted = True

    def end_epoch(self) -> None:
        """The ``Sequence``'s ``on_epoch_end``, after each epoch."""
        if self._sequence is not None and hasattr(self._sequence, "on_epoch_end"):
            self._sequence.on_epoch_end()


def _take(iterator: Iterator[Any], steps: int | None) -> Iterator[Any]:
    """The next ``steps`` items of ``iterator`` (all that remain for ``None``)."""
    count = 0
    while steps is None or count < steps:
        try:
            item = next(iterator)
        except StopIteration:
            return
        count += 1
        yield item


_DONE = object()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def _read_ahead(items: Iterator[Any]) -> Iterator[Any]:
    """``items``, produced on a background thread one item ahead of the consumer.

    The user's code runs on that thread; an exception it raises is re-raised here, at the
    item it failed to produce. Stopping early (``close``) stops the thread after at most
    one more item.
    """
    channel: queue.Queue[Any] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        channel.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            channel.put(_DONE)
        except BaseException as error:  # handed to the consumer, which raises it
            channel.put(_Failure(error))

    thread = threading.Thread(target=produce, name="dlcore-batches", daemon=True)
    thread.start()
    try:
        while True:
            item = channel.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()


def unpacked(batch: Any, index: int, what: str, *, targets: bool) -> tuple[Any, Any, Any]:
    """``(x, y, sample_weight)`` of a batch; for ``predict`` (``targets=False``) ``x`` may
    come alone.

    Raises:
        ValueError: a batch of another structure, naming the batch.
    """
    if isinstance(batch, tuple) and len(batch) in (2, 3):
        x, y, *w = batch
        return x, y, (w[0] if w else None)
    if isinstance(batch, tuple) and len(batch) == 1:
        return batch[0], None, None
    if not targets and not isinstance(batch, tuple):
        return batch, None, None
    received = f"a tuple of {len(batch)}" if isinstance(batch, tuple) else type(batch).__name__
    raise ValueError(
        f"batch {index} of {what}: expected a tuple (x, y) or (x, y, sample_weight), "
        f"received {received}"
    )
