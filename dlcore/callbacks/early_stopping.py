"""The :class:`EarlyStopping` callback: stop training when a log value stops improving."""

from __future__ import annotations

import sys
import warnings

import numpy as np

from dlcore.callbacks.base import Callback, Logs
from dlcore.callbacks.monitor import (
    check_mode,
    diverged,
    finite_weights,
    is_better,
    monitor_direction,
)


class EarlyStopping(Callback):
    """Stops training when a monitored quantity has stopped improving.

    At the end of every epoch the monitored value is compared with the best
    seen so far; a change smaller than ``min_delta`` is not an improvement.
    After ``patience`` epochs without improvement, ``model.stop_training`` is
    set and ``fit`` ends after the current epoch.

    An epoch is never the best when its monitored value or its training ``loss`` is
    NaN or infinite, or (with ``restore_best_weights``) when its weights are: a
    diverged model is neither kept nor restored.

    Args:
        monitor: Log key to watch, e.g. ``"val_loss"`` or ``"accuracy"``.
        min_delta: Smallest change that counts as an improvement (its absolute
            value is used).
        patience: Number of epochs without improvement after which training stops.
        verbose: 1 prints a line when training is stopped and when weights are
            restored; 0 is silent.
        mode: ``"min"``, ``"max"``, or ``"auto"`` to infer the direction from
            the name (losses are minimized, accuracies maximized).
        baseline: If given, the wait counter is only reset by epochs that also
            beat this value, so training stops after ``patience`` epochs unless
            the model gets past it.
        restore_best_weights: Restore at the end of training the weights of the
            epoch with the best monitored value (even when training was not
            stopped early); otherwise the last weights are kept.
        start_from_epoch: Number of warm-up epochs that are not monitored.

    Attributes:
        stopped_epoch: 0-based epoch at which training was stopped, 0 if it was not.
        best: Best monitored value seen, ``None`` before the first monitored epoch.
        best_epoch: 0-based epoch of ``best``.
        best_weights: Host copies of that epoch's weights when
            ``restore_best_weights=True``.
        wait: Epochs counted since the last improvement.

    Example:

    >>> stop = EarlyStopping(monitor="val_loss", patience=3, restore_best_weights=True)
    >>> history = model.fit(x, y, validation_split=0.2, epochs=100, callbacks=[stop])
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        min_delta: float = 0.0,
        patience: int = 0,
        verbose: int = 0,
        mode: str = "auto",
        baseline: float | None = None,
        restore_best_weights: bool = False,
        start_from_epoch: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(monitor, str):
            raise TypeError(
                f"EarlyStopping expected monitor to be a log name such as 'val_loss', "
                f"received {monitor!r}"
            )
        check_mode(mode, "EarlyStopping")
        if not isinstance(patience, (int, np.integer)) or patience < 0:
            raise ValueError(
                "EarlyStopping expected patience to be an integer >= 0, "
                f"received patience={patience!r}"
            )
        if not isinstance(start_from_epoch, (int, np.integer)) or start_from_epoch < 0:
            raise ValueError(
                "EarlyStopping expected start_from_epoch to be an integer >= 0, "
                f"received start_from_epoch={start_from_epoch!r}"
            )
        if not isinstance(min_delta, (int, float, np.integer, np.floating)):
            raise TypeError(
                f"EarlyStopping expected min_delta to be a number, received min_delta={min_delta!r}"
            )
        self.monitor = monitor
        self.min_delta = abs(float(min_delta))
        self.patience = int(patience)
        self.verbose = verbose
        self.mode = mode
        self.baseline = None if baseline is None else float(baseline)
        self.restore_best_weights = restore_best_weights
        self.start_from_epoch = int(start_from_epoch)
        self._direction = monitor_direction(monitor, mode, "EarlyStopping")
        self.wait = 0
        self.stopped_epoch = 0
        self.best: float | None = None
        self.best_epoch = 0
        self.best_weights: list[np.ndarray] | None = None

    def on_train_begin(self, logs: Logs | None = None) -> None:
        """Resets the state, so one instance can serve several ``fit`` calls."""
        self.wait = 0
        self.stopped_epoch = 0
        self.best = None
        self.best_epoch = 0
        self.best_weights = None

    def _improves(self, value: float, reference: float | None) -> bool:
        return is_better(value, reference, self._direction, self.min_delta)

    def _snapshot(self) -> list[np.ndarray]:
        # Copied so that a model returning views of its live buffer cannot change the snapshot.
        return [np.array(w, copy=True) for w in self.model.get_weights()]

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        """Updates the best value and the wait counter; stops training when patience runs out."""
        current = self._monitor_value(logs)
        if current is None or epoch < self.start_from_epoch:
            return
        self.wait += 1
        if self._improves(current, self.best) and not diverged(logs or {}):
            snapshot = self._snapshot() if self.restore_best_weights else None
            if snapshot is None or finite_weights(snapshot):
                self._record_best(current, epoch, snapshot)
                return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def _record_best(self, current: float, epoch: int, snapshot: list[np.ndarray] | None) -> None:
        """Keeps ``current`` as the best value (and ``snapshot`` as its weights)."""
        self.best = current
        self.best_epoch = epoch
        if snapshot is not None:
            self.best_weights = snapshot
        if self.baseline is None or self._improves(current, self.baseline):
            self.wait = 0

    def on_train_end(self, logs: Logs | None = None) -> None:
        """Reports the stop and restores the best weights if asked."""
        if self.stopped_epoch > 0 and self.verbose > 0:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping", file=sys.stdout)
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose > 0:
                print(
                    "Restoring model weights from the end of the best epoch: "
                    f"{self.best_epoch + 1}.",
                    file=sys.stdout,
                )
            self.model.set_weights(self.best_weights)

    def _monitor_value(self, logs: Logs | None) -> float | None:
        logs = logs or {}
        value = logs.get(self.monitor)
        if value is None:
            available = ", ".join(logs) or "none"
            warnings.warn(
                f"EarlyStopping is conditioned on metric '{self.monitor}', which is not "
                f"available; available metrics: {available}. Pass one of them as monitor=, "
                "or pass validation data to fit to get the val_ metrics.",
                stacklevel=3,
            )
            return None
        return float(value)
