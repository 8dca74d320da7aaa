"""The :class:`History` callback, which ``fit`` always adds and returns."""

from __future__ import annotations

from typing import Any

from dlcore import plot
from dlcore.callbacks.base import Callback, Logs


class History(Callback):
    """Records every epoch's logs; ``fit`` returns it and sets it as ``model.history``.

    Attributes:
        history: Dict mapping each log name (``"loss"``, ``"val_accuracy"``, ...)
            to the list of its values, one per epoch, as Python floats.
        epoch: The 0-based indices of the recorded epochs.
    """

    def __init__(self) -> None:
        super().__init__()
        self.history: dict[str, list[Any]] = {}
        self.epoch: list[int] = []

    def on_train_begin(self, logs: Logs | None = None) -> None:
        """Starts a new list of epoch indices (values accumulate, as in Keras)."""
        self.epoch = []

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        """Appends this epoch's values."""
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(value)

    def plot(self, metrics: list[str] | None = None, path: str | None = None) -> Any:
        """The learning curves: a matplotlib ``Figure`` with one panel per metric
        (``loss`` first, then each metric), the training and validation values over
        the epochs, axes labelled and a legend; saved as a PNG at ``path`` when given.

        Needs matplotlib (``pip install 'dlcore[plot]'``); see ``dlcore.plot``.
        """
        return plot.history_figure(self, metrics=metrics, path=path)
