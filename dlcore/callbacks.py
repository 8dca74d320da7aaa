"""Keras-style callbacks: hooks into ``fit``, and the built-in ones users ask for.

``Sequential.fit`` drives every callback through a :class:`CallbackList`, which
always holds a :class:`History` and, for ``verbose`` 1 or 2, a
:class:`~dlcore.progress.ProgbarLogger`. Epoch logs are plain dicts of Python
floats such as ``{"loss": 0.31, "accuracy": 0.9, "val_loss": 0.35, ...}``.
"""

from __future__ import annotations

import math
import os
import string
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from dlcore import losses

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

MODES: tuple[str, ...] = ("auto", "min", "max")

# Names whose direction "auto" mode can infer; Keras 3 reads it from the metric objects.
# dlcore's metrics are accuracies or losses; a loss used as a metric (cosine_similarity
# included, which is reported as the loss, i.e. negated) is minimized.
_MAXIMIZED_METRICS = frozenset(
    {"acc", "auc", "precision", "recall", "f1_score", "fbeta_score", "r2_score"}
)
_MINIMIZED_METRICS = frozenset(
    {"loss", "rmse", "root_mean_squared_error"} | set(losses.NAMES) | set(losses.ALIASES)
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


def _overrides(callback: Callback, name: str) -> bool:
    """Whether ``callback`` replaces ``Callback.<name>``, in its class or on the instance."""
    hook = getattr(callback, name)
    # Instance attributes (LambdaCallback's functions) have no __func__ and count as overrides.
    return getattr(hook, "__func__", None) is not getattr(Callback, name)


def _check_mode(mode: str, owner: str) -> None:
    if mode not in MODES:
        raise ValueError(
            f"{owner} expected mode to be one of {', '.join(map(repr, MODES))}, "
            f"received mode={mode!r}"
        )


def _direction(monitor: str, mode: str, owner: str) -> str:
    """Returns "min" or "max": ``mode`` itself, or in "auto" mode the direction of ``monitor``."""
    if mode != "auto":
        return mode
    name = monitor.removeprefix("val_").lower()
    if name.endswith("accuracy") or name in _MAXIMIZED_METRICS:
        return "max"
    if name in _MINIMIZED_METRICS:
        return "min"
    raise ValueError(
        f"{owner} received monitor={monitor!r} with mode='auto', but cannot tell whether "
        "it should be maximized or minimized. Pass mode='max' to track its highest "
        "value, or mode='min' to track its lowest."
    )


def _is_better(value: float, reference: float | None, direction: str, min_delta: float) -> bool:
    """Keras's improvement test: ``value`` beats ``reference`` by more than ``min_delta``."""
    if reference is None:
        return True
    if direction == "min":
        return value + min_delta < reference
    return value - min_delta > reference


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


class EarlyStopping(Callback):
    """Stops training when a monitored quantity has stopped improving.

    At the end of every epoch the monitored value is compared with the best
    seen so far; a change smaller than ``min_delta`` is not an improvement.
    After ``patience`` epochs without improvement, ``model.stop_training`` is
    set and ``fit`` ends after the current epoch.

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
        _check_mode(mode, "EarlyStopping")
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
        self._direction = _direction(monitor, mode, "EarlyStopping")
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
        return _is_better(value, reference, self._direction, self.min_delta)

    def _snapshot(self) -> list[np.ndarray]:
        # Copied so that a model returning views of its live buffer cannot change the snapshot.
        return [np.array(w, copy=True) for w in self.model.get_weights()]

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        """Updates the best value and the wait counter; stops training when patience runs out."""
        current = self._monitor_value(logs)
        if current is None or epoch < self.start_from_epoch:
            return
        self.wait += 1
        if self._improves(current, self.best):
            self.best = current
            self.best_epoch = epoch
            if self.restore_best_weights:
                self.best_weights = self._snapshot()
            if self.baseline is None or self._improves(current, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

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


class ModelCheckpoint(Callback):
    """Saves the model, or only its weights, at the end of every epoch.

    Args:
        filepath: Where to save. May contain named format fields filled from
            the 1-based epoch and the epoch's logs, e.g.
            ``"ckpt-{epoch:02d}-{val_loss:.2f}.keras"``. Missing directories
            are created.
        monitor: Log key compared across epochs when ``save_best_only=True``.
        verbose: 1 prints a line each time the callback saves or skips.
        save_best_only: Save only when ``monitor`` improves on the best value
            so far; with a fixed ``filepath`` the file then always holds the
            best model.
        save_weights_only: Save with ``model.save_weights`` instead of ``model.save``.
        mode: ``"min"``, ``"max"``, or ``"auto"`` to infer the direction from
            the name of ``monitor``.
        save_freq: Only ``"epoch"`` is supported.
        initial_value_threshold: Starting "best" value with
            ``save_best_only=True``: nothing is saved until ``monitor`` beats it.

    Attributes:
        best: Best monitored value so far (``inf``/``-inf`` before the first save).

    Example:

    >>> ckpt = ModelCheckpoint("best.keras", monitor="val_accuracy", save_best_only=True)
    >>> model.fit(x, y, validation_split=0.2, epochs=20, callbacks=[ckpt])
    """

    def __init__(
        self,
        filepath: str | os.PathLike[str],
        monitor: str = "val_loss",
        verbose: int = 0,
        save_best_only: bool = False,
        save_weights_only: bool = False,
        mode: str = "auto",
        save_freq: str | int = "epoch",
        initial_value_threshold: float | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(filepath, (str, os.PathLike)):
            raise TypeError(
                f"ModelCheckpoint expected filepath to be a str or os.PathLike, "
                f"received {type(filepath).__name__}"
            )
        self.filepath = os.fspath(filepath)
        _check_filepath_template(self.filepath)
        _check_mode(mode, "ModelCheckpoint")
        if save_freq != "epoch":
            raise ValueError(
                "ModelCheckpoint supports only save_freq='epoch' (one save per epoch), "
                f"received save_freq={save_freq!r}"
            )
        self.monitor = monitor
        self.verbose = verbose
        self.save_best_only = save_best_only
        self.save_weights_only = save_weights_only
        self.mode = mode
        self.save_freq = save_freq
        # The direction matters only when comparing, so an unknown name is fine otherwise.
        self._direction = (
            _direction(monitor, mode, "ModelCheckpoint")
            if save_best_only
            else ("min" if mode == "auto" else mode)
        )
        if initial_value_threshold is not None:
            self.best = float(initial_value_threshold)
        else:
            self.best = math.inf if self._direction == "min" else -math.inf

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        """Saves to the formatted path if this epoch should be kept."""
        logs = logs or {}
        filepath = self._format_path(epoch, logs)
        if self._should_save(epoch, logs, filepath):
            if os.path.isdir(filepath):
                raise ValueError(
                    f"ModelCheckpoint filepath {filepath!r} is an existing directory; "
                    "pass the path of a file inside it instead"
                )
            directory = os.path.dirname(filepath)
            if directory:
                os.makedirs(directory, exist_ok=True)
            if self.save_weights_only:
                self.model.save_weights(filepath)
            else:
                self.model.save(filepath)

    def _format_path(self, epoch: int, logs: Logs) -> str:
        try:
            return self.filepath.format(epoch=epoch + 1, **logs)
        except KeyError as err:
            raise KeyError(
                f"ModelCheckpoint could not fill filepath {self.filepath!r}: the logs have no "
                f"key {err.args[0]!r}; available keys: epoch, {', '.join(logs)}"
            ) from None

    def _should_save(self, epoch: int, logs: Logs, filepath: str) -> bool:
        if not self.save_best_only:
            if self.verbose > 0:
                print(f"\nEpoch {epoch + 1}: saving model to {filepath}", file=sys.stdout)
            return True
        current = logs.get(self.monitor)
        if current is None:
            warnings.warn(
                f"ModelCheckpoint can save the best model only with '{self.monitor}' in the "
                f"logs; available: {', '.join(logs) or 'none'}. Saving this epoch anyway.",
                stacklevel=3,
            )
            return True
        current = float(current)
        if _is_better(current, self.best, self._direction, 0.0):
            if self.verbose > 0:
                print(
                    f"\nEpoch {epoch + 1}: {self.monitor} improved from {self.best:.5f} to "
                    f"{current:.5f}, saving model to {filepath}",
                    file=sys.stdout,
                )
            self.best = current
            return True
        if self.verbose > 0:
            print(
                f"\nEpoch {epoch + 1}: {self.monitor} did not improve from {self.best:.5f}",
                file=sys.stdout,
            )
        return False


def _check_filepath_template(filepath: str) -> None:
    """Rejects a ModelCheckpoint path that ``str.format`` could never fill."""
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(filepath)]
    except ValueError as err:
        raise ValueError(
            f"ModelCheckpoint filepath {filepath!r} is not a valid format string ({err}); "
            "write fields like {epoch:02d} and double literal braces as {{ }}"
        ) from None
    for field in fields:
        if field is not None and (field == "" or field[0].isdigit()):
            raise ValueError(
                f"ModelCheckpoint filepath {filepath!r} has a positional field {{{field}}}; "
                "only named fields such as {epoch:02d} or {val_loss:.2f} can be filled"
            )


class TerminateOnNaN(Callback):
    """Stops training as soon as the running loss of a batch is NaN or infinite.

    Training then ends after the current epoch (or at once where ``fit``
    checks ``model.stop_training`` after every batch).

    Args:
        raise_error: Raise ``RuntimeError`` instead of stopping gracefully;
            other callbacks' ``on_train_end`` is then not called.
    """

    def __init__(self, raise_error: bool = False) -> None:
        super().__init__()
        self.raise_error = raise_error

    def on_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        """Checks the batch's ``loss`` log."""
        loss = (logs or {}).get("loss")
        if loss is None or math.isfinite(float(loss)):
            return
        if self.raise_error:
            raise RuntimeError(f"NaN or Inf loss encountered at batch {batch}: loss={loss}")
        print(f"Batch {batch}: Invalid loss, terminating training", file=sys.stdout)
        self.model.stop_training = True


class LambdaCallback(Callback):
    """A callback built from plain functions, one per hook.

    Functions are called as Keras calls them: ``on_epoch_begin(epoch, logs)``,
    ``on_epoch_end(epoch, logs)``, ``on_train_begin(logs)``,
    ``on_train_end(logs)``, ``on_train_batch_begin(batch, logs=logs)`` and
    ``on_train_batch_end(batch, logs=logs)``.

    Args:
        on_epoch_begin, on_epoch_end, on_train_begin, on_train_end,
        on_train_batch_begin, on_train_batch_end: The functions (or ``None``).
        on_batch_begin, on_batch_end: Keras 2 spellings of the batch hooks.
        **kwargs: Any other hook of :class:`Callback` by name, e.g.
            ``on_test_end=fn``.

    Example:

    >>> log = LambdaCallback(on_epoch_end=lambda epoch, logs: print(epoch, logs["loss"]))
    """

    def __init__(
        self,
        on_epoch_begin: Callable[..., Any] | None = None,
        on_epoch_end: Callable[..., Any] | None = None,
        on_train_begin: Callable[..., Any] | None = None,
        on_train_end: Callable[..., Any] | None = None,
        on_train_batch_begin: Callable[..., Any] | None = None,
        on_train_batch_end: Callable[..., Any] | None = None,
        on_batch_begin: Callable[..., Any] | None = None,
        on_batch_end: Callable[..., Any] | None = None,
        **kwargs: Callable[..., Any] | None,
    ) -> None:
        super().__init__()
        unknown = sorted(set(kwargs) - set(HOOK_NAMES))
        if unknown:
            raise TypeError(
                f"LambdaCallback got unexpected arguments {unknown}; the hooks are: "
                f"{', '.join(HOOK_NAMES)}"
            )
        hooks = {
            "on_epoch_begin": on_epoch_begin,
            "on_epoch_end": on_epoch_end,
            "on_train_begin": on_train_begin,
            "on_train_end": on_train_end,
            "on_train_batch_begin": on_train_batch_begin,
            "on_train_batch_end": on_train_batch_end,
            "on_batch_begin": on_batch_begin,
            "on_batch_end": on_batch_end,
            **kwargs,
        }
        for when in ("begin", "end"):
            both = hooks[f"on_train_batch_{when}"], hooks[f"on_batch_{when}"]
            if None not in both:
                raise ValueError(
                    f"LambdaCallback received both on_train_batch_{when} and on_batch_{when}, "
                    "which name the same hook; pass only one of them"
                )
        for name, function in hooks.items():
            if function is None:
                continue
            if not callable(function):
                raise TypeError(
                    f"LambdaCallback expected {name} to be callable, "
                    f"received {type(function).__name__}"
                )
            setattr(self, name, function)


class CallbackList(Callback):
    """Drives a list of callbacks for ``fit``, adding the History and progress display.

    A :class:`History` is put first (the one in ``callbacks`` if any), then the
    user's callbacks in order, then for ``verbose`` 1 or 2 a
    :class:`~dlcore.progress.ProgbarLogger` (unless one is already given).
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
        from dlcore.progress import ProgbarLogger  # progress imports this module

        super().__init__()
        user = _check_callbacks(callbacks)
        if verbose == "auto":
            verbose = 1
        if verbose not in (0, 1, 2):
            raise ValueError(f"verbose must be 0, 1, 2 or 'auto', received verbose={verbose!r}")
        history = next((cb for cb in user if isinstance(cb, History)), None)
        self.history: History = history if history is not None else History()
        self._add_history = add_history
        if add_history:
            self.callbacks: list[Callback] = [self.history]
            self.callbacks += [cb for cb in user if cb is not history]
        else:
            self.callbacks = list(user)
        if verbose and not any(isinstance(cb, ProgbarLogger) for cb in user):
            self.callbacks.append(ProgbarLogger())
        self._batch_begin_targets: list[Callback] = []
        self._batch_end_targets: list[Callback] = []
        self.wants_batch_logs = False
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


def __getattr__(name: str) -> Any:
    # keras.callbacks exports ProgbarLogger; it lives in dlcore.progress, which imports this module.
    if name == "ProgbarLogger":
        from dlcore.progress import ProgbarLogger

        return ProgbarLogger
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
