"""The :class:`ModelCheckpoint` callback: save the model or its weights every epoch."""

from __future__ import annotations

import math
import os
import string
import sys
import warnings

from dlcore.callbacks.base import Callback, Logs
from dlcore.callbacks.monitor import (
    check_mode,
    diverged,
    finite_weights,
    is_better,
    monitor_direction,
)


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

    A diverged model is never written: in any mode, an epoch whose weights hold NaN
    or infinity is skipped with a warning naming the epoch and the file, and a file
    already at that path keeps its bytes. With ``save_best_only``, so is an epoch
    whose training ``loss`` is not finite, and a NaN monitored value is never an
    improvement: the NaN epoch that :class:`~dlcore.callbacks.TerminateOnNaN` stops
    is not taken as the best, even when its NaN outputs still score some accuracy.

    Attributes:
        best: Best monitored value so far (``inf``/``-inf`` before the first save).

    Example:

    >>> ckpt = ModelCheckpoint("best.keras", monitor="val_accuracy", save_best_only=True)
    >>> model.fit(x, y, validation_split=0.2, epochs=20, callbacks=[ckpt])
    """

    chief_only = True

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
        check_mode(mode, "ModelCheckpoint")
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
            monitor_direction(monitor, mode, "ModelCheckpoint")
            if save_best_only
            else ("min" if mode == "auto" else mode)
        )
        if initial_value_threshold is not None:
            self.best = float(initial_value_threshold)
        else:
            self.best = math.inf if self._direction == "min" else -math.inf

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        """Saves to the formatted path if this epoch should be kept and its weights are
        finite; otherwise warns and leaves any file already there untouched."""
        logs = logs or {}
        filepath = self._format_path(epoch, logs)
        save, improved, line = self._decide(epoch, logs, filepath)
        problem = self._divergence(logs) if save else ""
        if problem:
            warnings.warn(_refusal(epoch, filepath, problem), stacklevel=2)
            return
        if improved is not None:
            self.best = improved
        if self.verbose > 0 and line:
            print(line, file=sys.stdout)
        if save:
            self._write(filepath)

    def _write(self, filepath: str) -> None:
        """Saves the model, or its weights, to ``filepath``, creating its directory."""
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

    def _divergence(self, logs: Logs) -> str:
        """Why this epoch must not be saved, or ``""``: weights that are not finite, or
        (as the best) an epoch whose training loss is not."""
        if self.save_best_only and diverged(logs):
            return f"its loss is {float(logs['loss'])}"
        if not finite_weights(self.model.get_weights()):
            return "the model's weights hold NaN or infinite values"
        return ""

    def _decide(self, epoch: int, logs: Logs, filepath: str) -> tuple[bool, float | None, str]:
        """Whether to save this epoch, the new best value if it improves, and the line
        ``verbose=1`` prints; changes nothing, so a refused save keeps the old best."""
        if not self.save_best_only:
            return True, None, f"\nEpoch {epoch + 1}: saving model to {filepath}"
        current = logs.get(self.monitor)
        if current is None:
            warnings.warn(
                f"ModelCheckpoint can save the best model only with '{self.monitor}' in the "
                f"logs; available: {', '.join(logs) or 'none'}. Saving this epoch anyway.",
                stacklevel=3,
            )
            return True, None, ""
        current = float(current)
        if is_better(current, self.best, self._direction, 0.0):
            return (
                True,
                current,
                (
                    f"\nEpoch {epoch + 1}: {self.monitor} improved from {self.best:.5f} to "
                    f"{current:.5f}, saving model to {filepath}"
                ),
            )
        return (
            False,
            None,
            (f"\nEpoch {epoch + 1}: {self.monitor} did not improve from {self.best:.5f}"),
        )


def _refusal(epoch: int, filepath: str, problem: str) -> str:
    """The warning for an epoch of a diverged model: nothing is written."""
    kept = "the file there is left as it was" if os.path.exists(filepath) else "no file was written"
    return (
        f"ModelCheckpoint did not save epoch {epoch + 1} to {filepath!r}: {problem} "
        f"(training diverged), so {kept}. Lower the learning rate; TerminateOnNaN() stops "
        "training at the first NaN batch"
    )


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
