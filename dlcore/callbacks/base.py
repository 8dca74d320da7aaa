"""The :class:`Callback` base class, the epoch-logs type and the names of the hooks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

Logs = Mapping[str, Any]

HOOK_NAMES: tuple[str, ...] = (
    "on_train_begin",
    "on_train_end",
    "on_epoch_begin",
    "on_epoch_end",
    "on_train_batch_begin",
    "on_train_batch_end",
    "on_batch_begin",
    "on_batch_end",
    "on_test_begin",
    "on_test_end",
    "on_test_batch_begin",
    "on_test_batch_end",
    "on_predict_begin",
    "on_predict_end",
    "on_predict_batch_begin",
    "on_predict_batch_end",
)


class Callback:
    """Base class for objects that hook into training, evaluation and prediction.

    Subclasses override the hooks they need. ``fit`` calls ``set_model`` and
    ``set_params`` before training, so inside a hook ``self.model`` is the model
    being trained and ``self.params`` holds ``{"verbose", "epochs", "steps"}``.

    As in Keras, the default ``on_train_batch_begin``/``on_train_batch_end``
    call ``on_batch_begin``/``on_batch_end``, so either spelling can be
    overridden. A callback that overrides a batch-end hook makes ``fit`` read
    the running loss and metrics from the engine after every batch; one that
    does not costs nothing per batch.

    Attributes:
        model: The model the callback is attached to, or ``None`` before ``fit``.
        params: Training parameters: ``verbose``, ``epochs`` and ``steps``
            (batches per epoch).
    """

    #: whether only the chief process (rank 0) of a data-parallel run runs it: the
    #: callbacks that print or write files
    chief_only: bool = False

    def __init__(self) -> None:
        self.model: Any = None
        self.params: dict[str, Any] = {}

    def set_params(self, params: Mapping[str, Any]) -> None:
        """Stores the training parameters (``verbose``, ``epochs``, ``steps``)."""
        self.params = dict(params)

    def set_model(self, model: Any) -> None:
        """Attaches the model being trained."""
        self.model = model

    def on_train_begin(self, logs: Logs | None = None) -> None:
        """Called once at the start of ``fit``."""

    def on_train_end(self, logs: Logs | None = None) -> None:
        """Called once at the end of ``fit`` with the last epoch's logs."""

    def on_epoch_begin(self, epoch: int, logs: Logs | None = None) -> None:
        """Called at the start of epoch ``epoch`` (0-based)."""

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        """Called at the end of epoch ``epoch`` with its loss and metrics, ``val_`` ones too."""

    def on_train_batch_begin(self, batch: int, logs: Logs | None = None) -> None:
        """Called before training batch ``batch`` (0-based within the epoch)."""
        self.on_batch_begin(batch, logs=logs)

    def on_train_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        """Called after training batch ``batch``; logs hold running averages over the epoch."""
        self.on_batch_end(batch, logs=logs)

    def on_batch_begin(self, batch: int, logs: Logs | None = None) -> None:
        """Keras 2 spelling of ``on_train_batch_begin``; called for training batches."""

    def on_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        """Keras 2 spelling of ``on_train_batch_end``; called for training batches."""

    def on_test_begin(self, logs: Logs | None = None) -> None:
        """Called at the start of evaluation."""

    def on_test_end(self, logs: Logs | None = None) -> None:
        """Called at the end of evaluation."""

    def on_test_batch_begin(self, batch: int, logs: Logs | None = None) -> None:
        """Called before evaluation batch ``batch``."""

    def on_test_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        """Called after evaluation batch ``batch``."""

    def on_predict_begin(self, logs: Logs | None = None) -> None:
        """Called at the start of prediction."""

    def on_predict_end(self, logs: Logs | None = None) -> None:
        """Called at the end of prediction."""

    def on_predict_batch_begin(self, batch: int, logs: Logs | None = None) -> None:
        """Called before prediction batch ``batch``."""

    def on_predict_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        """Called after prediction batch ``batch``."""
