"""The :class:`LearningRateScheduler` callback: the learning rate as a function of the epoch."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from dlcore.callbacks.base import Callback, Logs
from dlcore.callbacks.reduce_lr_on_plateau import record_learning_rate


def _takes_learning_rate(schedule: Callable[..., Any]) -> bool | None:
    """Whether ``schedule`` is called as ``schedule(epoch, lr)`` (True) or
    ``schedule(epoch)`` (False); ``None`` when Python cannot tell (some builtins).

    Raises:
        TypeError: ``schedule`` accepts neither call.
    """
    try:
        signature = inspect.signature(schedule)
    except (TypeError, ValueError):
        return None
    for arguments, answer in (((0, 0.1), True), ((0,), False)):
        try:
            signature.bind(*arguments)
        except TypeError:
            continue
        return answer
    raise TypeError(
        "LearningRateScheduler expected schedule to accept (epoch, lr) or (epoch), received "
        f"{getattr(schedule, '__name__', type(schedule).__name__)}{signature}; define it as "
        "def schedule(epoch, lr): ..."
    )


class LearningRateScheduler(Callback):
    """Sets the optimizer's learning rate at the start of every epoch from ``schedule``.

    ``schedule(epoch, lr)`` gets the 0-based epoch index and the current learning rate
    (a float) and returns the new one, a float (an ``int`` is refused, as in Keras 3);
    a function of the epoch alone, ``schedule(epoch)``, works too. As in Keras 3,
    every epoch's logs get the ``learning_rate`` it trained with, so
    ``history.history["learning_rate"]`` records it.

    Args:
        schedule: The function, ``(epoch, lr) -> lr`` or ``(epoch) -> lr``.
        verbose: 1 prints the rate set at each epoch; 0 is silent.

    Example:

    >>> def schedule(epoch, lr):
    ...     return lr if epoch < 10 else lr * math.exp(-0.1)
    >>> model.fit(x, y, epochs=15, callbacks=[LearningRateScheduler(schedule)])
    """

    def __init__(self, schedule: Callable[..., Any], verbose: int = 0) -> None:
        super().__init__()
        if not callable(schedule):
            raise TypeError(
                "LearningRateScheduler expected schedule to be a function (epoch, lr) -> lr, "
                f"received {type(schedule).__name__} {schedule!r}"
            )
        self._with_lr = _takes_learning_rate(schedule)
        self.schedule = schedule
        self.verbose = verbose

    def _next_rate(self, epoch: int, current: float) -> Any:
        if self._with_lr is None:  # unknown signature: Keras's fallback
            try:
                return self.schedule(epoch, current)
            except TypeError:
                return self.schedule(epoch)
        return self.schedule(epoch, current) if self._with_lr else self.schedule(epoch)

    def on_epoch_begin(self, epoch: int, logs: Logs | None = None) -> None:
        """Calls ``schedule`` and sets the optimizer's learning rate to its result."""
        optimizer = self.model.optimizer
        learning_rate = self._next_rate(epoch, float(optimizer.learning_rate))
        if isinstance(learning_rate, bool) or not isinstance(learning_rate, (float, np.floating)):
            raise ValueError(
                "LearningRateScheduler: the output of the schedule function should be a float, "
                f"received {learning_rate!r} ({type(learning_rate).__name__}) at epoch {epoch}; "
                "return e.g. float(value)"
            )
        optimizer.learning_rate = float(learning_rate)
        if self.verbose > 0:
            print(
                f"\nEpoch {epoch + 1}: LearningRateScheduler setting learning rate to "
                f"{learning_rate}.",
                file=sys.stdout,
            )

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        """Adds ``learning_rate`` to the epoch's logs."""
        record_learning_rate(self.model, logs)
