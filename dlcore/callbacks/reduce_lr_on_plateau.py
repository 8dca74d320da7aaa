"""The :class:`ReduceLROnPlateau` callback: lower the learning rate when a log value stalls."""

from __future__ import annotations

import sys
import warnings
from collections.abc import MutableMapping
from typing import Any

import numpy as np

from dlcore.callbacks.base import Callback, Logs
from dlcore.callbacks.monitor import check_mode, is_better, monitor_direction

_NUMBER = (int, float, np.integer, np.floating)


def record_learning_rate(model: Any, logs: Logs | None) -> None:
    """Adds the optimizer's current ``learning_rate`` to the epoch ``logs``, as Keras 3's
    learning-rate callbacks do, so that the History and the progress bar show it."""
    if isinstance(logs, MutableMapping):
        logs["learning_rate"] = float(model.optimizer.learning_rate)


def _check_count(owner: str, name: str, value: Any) -> int:
    """``value`` as an int, or ValueError unless it is an integer >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(
            f"{owner} expected {name} to be an integer >= 0, received {name}={value!r}"
        )
    return int(value)


def _check_number(owner: str, name: str, value: Any) -> float:
    """``value`` as a float, or TypeError unless it is a real number."""
    if isinstance(value, bool) or not isinstance(value, _NUMBER):
        raise TypeError(f"{owner} expected {name} to be a number, received {name}={value!r}")
    return float(value)


class ReduceLROnPlateau(Callback):
    """Multiplies the learning rate by ``factor`` when a monitored value stops improving.

    At the end of every epoch the monitored value is compared with the best seen so
    far (a change smaller than ``min_delta`` is not an improvement). After
    ``patience`` epochs without improvement the optimizer's ``learning_rate`` becomes
    ``max(learning_rate * factor, min_lr)``, unless it is already at ``min_lr``;
    then ``cooldown`` epochs pass before epochs without improvement are counted again.
    As in Keras 3, every epoch's logs get the ``learning_rate`` that epoch trained
    with (before any reduction), so ``history.history["learning_rate"]`` records it.

    Args:
        monitor: Log key to watch, e.g. ``"val_loss"`` or ``"accuracy"``.
        factor: Number in (0, 1) that multiplies the learning rate.
        patience: Epochs without improvement after which the rate is reduced.
        verbose: 1 prints a line at each reduction; 0 is silent.
        mode: ``"min"``, ``"max"``, or ``"auto"`` to infer the direction from the
            name (losses are minimized, accuracies maximized).
        min_delta: Smallest change that counts as an improvement (absolute value used).
        cooldown: Epochs after a reduction during which no epoch counts as a stall.
        min_lr: Lower bound of the learning rate, >= 0.

    Attributes:
        best: Best monitored value so far, ``None`` before the first epoch.
        wait: Epochs counted without improvement.
        cooldown_counter: Epochs of cooldown left.

    Example:

    >>> reduce_lr = ReduceLROnPlateau(monitor="val_loss", factor=0.2, patience=5, min_lr=1e-3)
    >>> model.fit(x, y, validation_split=0.2, epochs=50, callbacks=[reduce_lr])
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        factor: float = 0.1,
        patience: int = 10,
        verbose: int = 0,
        mode: str = "auto",
        min_delta: float = 1e-4,
        cooldown: int = 0,
        min_lr: float = 0.0,
    ) -> None:
        super().__init__()
        owner = "ReduceLROnPlateau"
        if not isinstance(monitor, str):
            raise TypeError(
                f"{owner} expected monitor to be a log name such as 'val_loss', "
                f"received {monitor!r}"
            )
        check_mode(mode, owner)
        factor = _check_number(owner, "factor", factor)
        if factor >= 1.0:
            raise ValueError(
                f"ReduceLROnPlateau does not support a factor >= 1.0, received factor={factor}; "
                "the new learning rate is lr * factor, so pass a factor in (0, 1) such as 0.1"
            )
        if not factor > 0.0:
            raise ValueError(
                f"{owner} expected factor to be in (0, 1), received factor={factor}; "
                "the new learning rate is lr * factor, which must stay positive"
            )
        min_lr = _check_number(owner, "min_lr", min_lr)
        if not min_lr >= 0.0:
            raise ValueError(f"{owner} expected min_lr >= 0, received min_lr={min_lr}")
        self.monitor = monitor
        self.factor = factor
        self.patience = _check_count(owner, "patience", patience)
        self.verbose = verbose
        self.mode = mode
        self.min_delta = abs(_check_number(owner, "min_delta", min_delta))
        self.cooldown = _check_count(owner, "cooldown", cooldown)
        self.min_lr = min_lr
        self._direction = monitor_direction(monitor, mode, owner)
        self.best: float | None = None
        self.wait = 0
        self.cooldown_counter = 0

    def on_train_begin(self, logs: Logs | None = None) -> None:
        """Resets the best value and the counters, so one instance serves several fits."""
        self.best = None
        self.wait = 0
        self.cooldown_counter = 0

    def in_cooldown(self) -> bool:
        """Whether a reduction happened less than ``cooldown`` epochs ago."""
        return self.cooldown_counter > 0

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        """Logs the learning rate, then counts the stall and reduces the rate when due."""
        record_learning_rate(self.model, logs)
        logs = logs or {}
        current = logs.get(self.monitor)
        if current is None:
            warnings.warn(
                f"Learning rate reduction is conditioned on metric '{self.monitor}', which "
                f"is not available; available metrics: {', '.join(logs) or 'none'}. Pass one "
                "of them as monitor=, or pass validation data to fit to get the val_ metrics.",
                stacklevel=2,
            )
            return
        if self.in_cooldown():
            self.cooldown_counter -= 1
            self.wait = 0
        if is_better(float(current), self.best, self._direction, self.min_delta):
            self.best = float(current)
            self.wait = 0
        elif not self.in_cooldown():
            self.wait += 1
            if self.wait >= self.patience and self._reduce(epoch):
                self.cooldown_counter = self.cooldown
                self.wait = 0

    def _reduce(self, epoch: int) -> bool:
        """Lowers the optimizer's rate unless it is at ``min_lr``; whether it did."""
        optimizer = self.model.optimizer
        old_lr = float(optimizer.learning_rate)
        # Keras compares with min_lr rounded to float32, its variables' dtype.
        if not old_lr > np.float32(self.min_lr):
            return False
        new_lr = max(old_lr * self.factor, self.min_lr)
        optimizer.learning_rate = new_lr
        if self.verbose > 0:
            print(
                f"\nEpoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to {new_lr}.",
                file=sys.stdout,
            )
        return True
