"""The :class:`TensorBoard` callback: scalars and weight histograms as TensorBoard event files.

Events are written with the ``tensorboard`` package's own event-file writer and protocol
buffers (as PyTorch's ``SummaryWriter`` does); TensorFlow is never imported. The package is
optional (``pip install dlcore[tensorboard]``) and imported only when a callback is made.
"""

from __future__ import annotations

import importlib
import os
import time
import warnings
from typing import Any

import numpy as np

from dlcore.callbacks.base import Callback, Logs

#: the number of equal-width buckets of a weight histogram, as TensorFlow's default
HISTOGRAM_BUCKETS = 30
_INSTALL_HINT = "pip install dlcore[tensorboard]"


def _load_tensorboard() -> dict[str, Any]:
    """The writer class and the protocol buffers, or ImportError saying how to get them."""
    try:
        # by name: tensorboard is optional and untyped, and mypy need not follow it
        event_pb2 = importlib.import_module("tensorboard.compat.proto.event_pb2")
        summary_pb2 = importlib.import_module("tensorboard.compat.proto.summary_pb2")
        writer_module = importlib.import_module("tensorboard.summary.writer.event_file_writer")
    except ImportError as error:
        raise ImportError(
            f"the TensorBoard callback writes event files with the tensorboard package, which "
            f"could not be imported ({error}); {_INSTALL_HINT} (or pip install tensorboard)"
        ) from None
    return {"writer": writer_module.EventFileWriter, "event": event_pb2, "summary": summary_pb2}


def _check_frequency(name: str, value: Any) -> int:
    """``value`` as an int, or TypeError / ValueError unless it is an integer >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(
            f"TensorBoard expected {name} to be an integer number of epochs (0 turns it off), "
            f"received {name}={value!r}"
        )
    if value < 0:
        raise ValueError(
            f"TensorBoard expected {name} >= 0 (0 turns it off), received {name}={value!r}"
        )
    return int(value)


def _check_update_freq(value: Any) -> str | int:
    """``"epoch"``, or the positive number of batches between batch-level writes."""
    if value == "epoch":
        return "epoch"
    if value == "batch":
        return 1
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(
            "TensorBoard expected update_freq to be 'epoch', 'batch' or a positive number of "
            f"batches, received update_freq={value!r}"
        )
    return int(value)


class TensorBoard(Callback):
    """Writes the training logs, and optionally weight histograms, for TensorBoard.

    The layout and tags are Keras 3's: under ``log_dir``, ``train/`` holds one scalar
    per training log and epoch, tagged ``epoch_<name>`` (``epoch_loss``,
    ``epoch_accuracy``, ... and ``epoch_learning_rate``), and ``validation/`` holds
    the ``val_`` logs without their prefix (``epoch_loss`` there is the validation
    loss), plus ``evaluation_<name>_vs_iterations`` at each validation, at the
    optimizer's step count. Scalars are float32 ``simple_value`` summaries with the
    0-based epoch as their step. With an integer ``update_freq``, ``train/`` also gets
    the running training logs as ``batch_<name>`` every ``update_freq`` batches, the
    step being the 1-based count of batches since the start of ``fit``. With
    ``histogram_freq=k``, every k-th epoch (0, k, 2k, ...) writes a histogram of each
    weight to ``train/`` under ``<model name>/<layer name>/<weight name>/histogram``.

    View with ``tensorboard --logdir <log_dir>``.

    Args:
        log_dir: Directory of the event files (made if missing).
        histogram_freq: Epochs between weight histograms; 0 writes none.
        write_graph: Accepted for Keras compatibility; dlcore writes no graph.
        write_images: Not supported: ``True`` warns and writes no images.
        write_steps_per_second: Also log ``steps_per_second`` per epoch (and
            ``batch_steps_per_second`` per written batch).
        update_freq: ``"epoch"`` (scalars once per epoch), ``"batch"`` (also every
            batch) or an integer number of batches.
        profile_batch: Not supported: only 0 (no profiling) is accepted.
        embeddings_freq: Not supported (dlcore has no embedding layers): only 0.
        embeddings_metadata: Accepted for Keras compatibility; ignored.

    Raises:
        ImportError: the ``tensorboard`` package is not installed.

    Example:

    >>> board = TensorBoard(log_dir="logs/run1", histogram_freq=1)
    >>> model.fit(x, y, validation_split=0.2, epochs=10, callbacks=[board])
    """

    chief_only = True

    def __init__(
        self,
        log_dir: str | os.PathLike[str] = "logs",
        histogram_freq: int = 0,
        write_graph: bool = True,
        write_images: bool = False,
        write_steps_per_second: bool = False,
        update_freq: str | int = "epoch",
        profile_batch: int = 0,
        embeddings_freq: int = 0,
        embeddings_metadata: Any = None,
    ) -> None:
        super().__init__()
        if not isinstance(log_dir, (str, os.PathLike)):
            raise TypeError(
                f"TensorBoard expected log_dir to be a str or os.PathLike, received "
                f"{type(log_dir).__name__}"
            )
        self.histogram_freq = _check_frequency("histogram_freq", histogram_freq)
        self.update_freq = _check_update_freq(update_freq)
        if _check_frequency("embeddings_freq", embeddings_freq):
            raise ValueError(
                "TensorBoard: dlcore has no embedding layers to project; "
                f"received embeddings_freq={embeddings_freq}, pass 0"
            )
        if profile_batch not in (0, None):
            raise ValueError(
                f"TensorBoard: profiling is not supported by dlcore; received "
                f"profile_batch={profile_batch!r}, pass 0"
            )
        if write_images:
            warnings.warn(
                "TensorBoard: write_images=True is not supported by dlcore; weights are "
                "written as histograms only (histogram_freq)",
                stacklevel=2,
            )
        self._tb = _load_tensorboard()
        self.log_dir = os.fspath(log_dir)
        self.write_graph = write_graph
        self.write_images = write_images
        self.write_steps_per_second = bool(write_steps_per_second)
        self.embeddings_metadata = embeddings_metadata
        self._writers: dict[str, Any] = {}
        self._global_train_batch = 0
        self._batch_start = 0.0
        self._epoch_start = 0.0
        self._epoch_iterations = 0
        # Batch hooks live on the instance, so that fit reads batch logs only when they are written.
        if self.update_freq != "epoch":
            self.on_train_batch_begin = self._batch_begin  # type: ignore[method-assign]
            self.on_train_batch_end = self._batch_end  # type: ignore[method-assign]

    # ------------------------------------------------------------------ writing
    def _writer(self, which: str) -> Any:
        """The event-file writer of ``train`` or ``validation``, opened on first use."""
        if which not in self._writers:
            directory = os.path.join(self.log_dir, which)
            os.makedirs(directory, exist_ok=True)
            self._writers[which] = self._tb["writer"](directory)
        return self._writers[which]

    def _write(self, which: str, step: int, value: Any) -> None:
        """Adds one event holding the summary ``value`` at ``step``."""
        summary = self._tb["summary"].Summary(value=[value])
        event = self._tb["event"].Event(wall_time=time.time(), step=int(step), summary=summary)
        self._writer(which).add_event(event)

    def _scalar(self, which: str, tag: str, value: Any, step: int) -> None:
        self._write(
            which, step, self._tb["summary"].Summary.Value(tag=tag, simple_value=float(value))
        )

    def _histogram(self, tag: str, values: np.ndarray, step: int) -> None:
        values = np.asarray(values, dtype=np.float64).ravel()
        if values.size == 0:
            return
        counts, edges = np.histogram(values, bins=HISTOGRAM_BUCKETS)
        proto = self._tb["summary"].HistogramProto(
            min=float(values.min()),
            max=float(values.max()),
            num=float(values.size),
            sum=float(values.sum()),
            sum_squares=float(np.dot(values, values)),
            bucket_limit=edges[1:].tolist(),  # the right edge of each bucket
            bucket=counts.astype(np.float64).tolist(),
        )
        self._write("train", step, self._tb["summary"].Summary.Value(tag=tag, histo=proto))

    def _close_writers(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers = {}

    # ------------------------------------------------------------------ hooks
    def on_train_begin(self, logs: Logs | None = None) -> None:
        """Starts counting batches from 0."""
        self._global_train_batch = 0

    def on_train_end(self, logs: Logs | None = None) -> None:
        """Flushes and closes the event files."""
        self._close_writers()

    def on_epoch_begin(self, epoch: int, logs: Logs | None = None) -> None:
        """Starts the epoch's clock for ``steps_per_second``."""
        self._epoch_start = time.perf_counter()
        self._epoch_iterations = self._iterations()

    def _batch_begin(self, batch: int, logs: Logs | None = None) -> None:
        """Counts the batch and starts its clock."""
        self._global_train_batch += 1
        self._batch_start = time.perf_counter()

    def _batch_end(self, batch: int, logs: Logs | None = None) -> None:
        """Writes the running logs as ``batch_<name>`` every ``update_freq`` batches."""
        step = self._global_train_batch
        if step % int(self.update_freq):
            return
        if self.write_steps_per_second:
            elapsed = time.perf_counter() - self._batch_start
            if elapsed > 0:
                self._scalar("train", "batch_steps_per_second", 1.0 / elapsed, step)
        for name, value in (logs or {}).items():
            self._scalar("train", f"batch_{name}", value, step)

    def on_test_end(self, logs: Logs | None = None) -> None:
        """Writes each validation value as ``evaluation_<name>_vs_iterations``."""
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is None:
            return
        for name, value in (logs or {}).items():
            self._scalar(
                "validation", f"evaluation_{name}_vs_iterations", value, optimizer.iterations
            )

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        """Writes the epoch's scalars, and the weight histograms when due."""
        logs = logs or {}
        train = {key: value for key, value in logs.items() if not key.startswith("val_")}
        validation = {key[4:]: value for key, value in logs.items() if key.startswith("val_")}
        optimizer = getattr(self.model, "optimizer", None)
        if logs and optimizer is not None:
            train["learning_rate"] = float(optimizer.learning_rate)
        if logs and self.write_steps_per_second:
            elapsed = time.perf_counter() - self._epoch_start
            steps = self._iterations() - self._epoch_iterations
            train["steps_per_second"] = steps / elapsed if elapsed > 0 else 0.0
        for name, value in train.items():
            self._scalar("train", f"epoch_{name}", value, epoch)
        for name, value in validation.items():
            self._scalar("validation", f"epoch_{name}", value, epoch)
        if self.histogram_freq and epoch % self.histogram_freq == 0:
            for weight in self.model.weights:
                tag = f"{self.model.name}/{weight.path.replace(':', '_')}/histogram"
                self._histogram(tag, weight.numpy(), epoch)
        for writer in self._writers.values():
            writer.flush()

    def _iterations(self) -> int:
        optimizer = getattr(self.model, "optimizer", None)
        return int(optimizer.iterations) if optimizer is not None else 0
