"""The :class:`CallbackList`, which drives the callbacks of ``fit``, ``evaluate`` and ``predict``.

It adds the :class:`~dlcore.callbacks.History` and, for ``verbose`` 1 or 2, the
:class:`~dlcore.callbacks.ProgbarLogger`, so it imports them; they do not import it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dlcore import distribute
from dlcore.callbacks.base import Callback, Logs
from dlcore.callbacks.history import History
from dlcore.callbacks.progress import ProgbarLogger


def _overrides(callback: Callback, name: str) -> bool:
    """Whether ``callback`` replaces ``Callback.<name>``, in its class or on the instance."""
    hook = getattr(callback, name)
    # Instance attributes (LambdaCallback's functions) have no __func__ and count as overrides.
    return getattr(hook, "__func__", None) is not getattr(Callback, name)


class CallbackList(Callback):
    """Drives a list of callbacks for ``fit``, adding the History and progress display.

    The callbacks run in Keras 3's order: the user's callbacks in order, then a
    new :class:`History` (unless ``callbacks`` holds one, which is used where it
    is), then for ``verbose`` 1 or 2 a :class:`~dlcore.callbacks.ProgbarLogger`
    (unless one is already given). So a callback's ``on_epoch_end`` runs before
    the History records that epoch, as in Keras.
    Batch hooks are only forwarded to the callbacks that override them.

    Args:
        callbacks: List of :class:`Callback` instances, or ``None``.
        model: The model being trained; gets ``model.history`` set to the History.
        verbose: 0 (silent), 1 (live progress bar), 2 (one line per epoch) or "auto" (1).
        epochs: Number of epochs of the ``fit`` call.
        steps: Number of batches per epoch, or ``None`` if unknown.
        add_history: ``False`` for ``evaluate`` and ``predict``: no History is
            added and ``model.history`` is left alone.

    Attributes:
        callbacks: All callbacks, in the order they are called.
        history: The :class:`History` instance.
        wants_batch_logs: True when some callback overrides ``on_train_batch_end``
            or ``on_batch_end``, i.e. reads the per-batch logs; ``fit`` skips
            reading them from the engine otherwise.
    """

    def __init__(
        self,
        callbacks: Sequence[Callback] | None = None,
        *,
        model: Any = None,
        verbose: int | str = 1,
        epochs: int = 1,
        steps: int | None = None,
        add_history: bool = True,
    ) -> None:
        super().__init__()
        user = _check_callbacks(callbacks)
        if verbose == "auto":
            verbose = 1
        if verbose not in (0, 1, 2):
            raise ValueError(f"verbose must be 0, 1, 2 or 'auto', received verbose={verbose!r}")
        if not distribute.is_chief():  # data-parallel: rank 0 alone prints and writes
            user = [cb for cb in user if not cb.chief_only]
            verbose = 0
        history = next((cb for cb in user if isinstance(cb, History)), None)
        self.history: History = history if history is not None else History()
        self._add_history = add_history
        # Keras 3's order: the user's callbacks (a History among them stays where it is),
        # then a new History, then the progress bar.
        self.callbacks: list[Callback] = list(user)
        if add_history and history is None:
            self.callbacks.append(self.history)
        if verbose and not any(isinstance(cb, ProgbarLogger) for cb in user):
            self.callbacks.append(ProgbarLogger())
        self._batch_begin_targets: list[Callback] = []
        self._batch_end_targets: list[Callback] = []
        self.wants_batch_logs = False
        self.has_batch_hooks = False
        if model is not None:
            self.set_model(model)
        self.set_params({"verbose": verbose, "epochs": epochs, "steps": steps})

    def append(self, callback: Callback) -> None:
        """Adds ``callback`` at the end of the list."""
        _check_callbacks([callback])
        self.callbacks.append(callback)
        self._find_batch_targets()

    def _find_batch_targets(self) -> None:
        # Base batch hooks do nothing, so skipping callbacks that keep them changes nothing.
        self._batch_begin_targets = [
            cb
            for cb in self.callbacks
            if _overrides(cb, "on_train_batch_begin") or _overrides(cb, "on_batch_begin")
        ]
        self._batch_end_targets = [
            cb
            for cb in self.callbacks
            if _overrides(cb, "on_train_batch_end") or _overrides(cb, "on_batch_end")
        ]
        self.wants_batch_logs = bool(self._batch_end_targets)
        # a callback that may set model.stop_training within an epoch (the progress bar
        # only reads): data-parallel processes then agree after every step
        self.has_batch_hooks = any(
            not isinstance(cb, ProgbarLogger)
            for cb in self._batch_begin_targets + self._batch_end_targets
        )

    def set_params(self, params: Mapping[str, Any]) -> None:
        """Passes ``params`` to every callback."""
        super().set_params(params)
        for callback in self.callbacks:
            callback.set_params(params)
        # A callback may install or drop batch hooks depending on params (ProgbarLogger).
        self._find_batch_targets()

    def set_model(self, model: Any) -> None:
        """Attaches ``model`` to every callback and sets ``model.history``."""
        super().set_model(model)
        if self._add_history:
            model.history = self.history
        for callback in self.callbacks:
            callback.set_model(model)

    def on_train_begin(self, logs: Logs | None = None) -> None:
        """Forwards to every callback."""
        logs = logs or {}
        for callback in self.callbacks:
            callback.on_train_begin(logs)

    def on_train_end(self, logs: Logs | None = None) -> None:
        """Forwards to every callback."""
        logs = logs or {}
        for callback in self.callbacks:
            callback.on_train_end(logs)

    def on_epoch_begin(self, epoch: int, logs: Logs | None = None) -> None:
        """Forwards to every callback."""
        logs = logs or {}
        for callback in self.callbacks:
            callback.on_epoch_begin(epoch, logs)

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        """Forwards to every callback."""
        logs = logs or {}
        for callback in self.callbacks:
            callback.on_epoch_end(epoch, logs)

    def on_train_batch_begin(self, batch: int, logs: Logs | None = None) -> None:
        """Forwards to the callbacks that override a batch-begin hook."""
        for callback in self._batch_begin_targets:
            callback.on_train_batch_begin(batch, logs={} if logs is None else logs)

    def on_train_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        """Forwards to the callbacks that override a batch-end hook."""
        for callback in self._batch_end_targets:
            callback.on_train_batch_end(batch, logs={} if logs is None else logs)

    def on_batch_begin(self, batch: int, logs: Logs | None = None) -> None:
        """Forwards to every callback."""
        for callback in self.callbacks:
            callback.on_batch_begin(batch, logs=logs or {})

    def on_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        """Forwards to every callback."""
        for callback in self.callbacks:
            callback.on_batch_end(batch, logs={} if logs is None else logs)

    def on_test_begin(self, logs: Logs | None = None) -> None:
        """Forwards to every callback."""
        for callback in self.callbacks:
            callback.on_test_begin(logs or {})

    def on_test_end(self, logs: Logs | None = None) -> None:
        """Forwards to every callback."""
        for callback in self.callbacks:
            callback.on_test_end(logs or {})

    def on_test_batch_begin(self, batch: int, logs: Logs | None = None) -> None:
        """Forwards to every callback."""
        for callback in self.callbacks:
            callback.on_test_batch_begin(batch, logs={} if logs is None else logs)

    def on_test_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        """Forwards to every callback."""
        for callback in self.callbacks:
            callback.on_test_batch_end(batch, logs={} if logs is None else logs)

    def on_predict_begin(self, logs: Logs | None = None) -> None:
        """Forwards to every callback."""
        for callback in self.callbacks:
            callback.on_predict_begin(logs or {})

    def on_predict_end(self, logs: Logs | None = None) -> None:
        """Forwards to every callback."""
        for callback in self.callbacks:
            callback.on_predict_end(logs or {})

    def on_predict_batch_begin(self, batch: int, logs: Logs | None = None) -> None:
        """Forwards to every callback."""
        for callback in self.callbacks:
            callback.on_predict_batch_begin(batch, logs=logs or {})

    def on_predict_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        """Forwards to every callback."""
        for callback in self.callbacks:
            callback.on_predict_batch_end(batch, logs={} if logs is None else logs)


def _check_callbacks(callbacks: Any) -> list[Callback]:
    """Returns ``callbacks`` as a list, or raises TypeError naming the first bad entry."""
    if callbacks is None:
        return []
    if isinstance(callbacks, Callback):
        raise TypeError(
            "callbacks expected a list of Callback instances, received a single "
            f"{type(callbacks).__name__}; wrap it in a list: callbacks=[...]"
        )
    if not isinstance(callbacks, (list, tuple)):
        raise TypeError(
            f"callbacks expected a list of Callback instances, received {type(callbacks).__name__}"
        )
    for index, callback in enumerate(callbacks):
        if isinstance(callback, type) and issubclass(callback, Callback):
            raise TypeError(
                f"callbacks[{index}] is the class {callback.__name__}, not an instance; "
                f"create one: {callback.__name__}(...)"
            )
        if not isinstance(callback, Callback):
            raise TypeError(
                f"callbacks[{index}] expected a Callback instance, "
                f"received {type(callback).__name__}; subclass dlcore.callbacks.Callback "
                "or use LambdaCallback"
            )
    return list(callbacks)
