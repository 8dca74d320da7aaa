"""Training progress display for ``fit``: a live Keras-style bar, or one line per epoch.

``verbose=1`` draws, per epoch::

    Epoch 3/10
    38/38 [==============================] - 1s 3ms/step - loss: 0.1234 - accuracy: 0.9500

with the bar and the running logs updated in place while the epoch runs (this
needs the optional ``tqdm`` package and a terminal: when ``sys.stdout`` is not one, a
file or a pipe, only the bar's final state is printed, one clean line per epoch, as
Keras does). ``verbose=2`` prints only the final line::

    Epoch 3/10
    38/38 - 1s - 3ms/step - loss: 0.1234 - accuracy: 0.9500 - val_loss: 0.2000 - ...
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from time import perf_counter
from typing import Any

from dlcore.callbacks.base import Callback, Logs

BAR_WIDTH = 30  # characters between the brackets, as in Keras 2

_bar_class: type | None = None
_tqdm_hint_shown = False


class ProgbarLogger(Callback):
    """Prints the epoch number, progress and logs of ``fit`` to ``sys.stdout``.

    ``fit`` adds one automatically for ``verbose`` 1 or 2. The display follows
    Keras: an ``Epoch i/n`` line (left out when ``fit`` runs a single epoch),
    then the step count, the elapsed time, the time per step and each log
    value, with four decimals, or in ``.4e`` notation when its magnitude is at
    most 1e-3.

    With ``verbose=1`` a live bar is redrawn while the epoch runs, no more often
    than tqdm's default (every 0.1 s); the batch logs are read only when it is
    redrawn, so a lazily-synced logs mapping costs one read per redraw. When
    ``sys.stdout`` is not a terminal (output redirected to a file or a pipe),
    nothing is drawn during the epoch and its end prints the bar's final line
    once, ``38/38 [====...] - 1s 3ms/step - loss: ...``, so a log file gets one
    clean line per epoch. If tqdm is not installed, ``verbose=1`` prints like
    ``verbose=2`` and says once how to get the live bar. With ``verbose=2``
    nothing happens per batch, so ``fit`` need not read batch logs from the engine
    at all.
    """

    chief_only = True

    def __init__(self) -> None:
        super().__init__()
        self.verbose: int = 1
        self.epochs: int = 1
        self.target: int | None = None
        self._live_bar: type | None = None
        self._drawing = False
        self._bar: Any = None
        self._logs: Logs = {}
        self._seen = 0
        self._final = False
        self._epoch_start = 0.0
        self._first_step_done: float | None = None

    def set_params(self, params: Mapping[str, Any]) -> None:
        """Reads ``verbose``, ``epochs`` and ``steps``; sets up the live bar for ``verbose=1``."""
        super().set_params(params)
        verbose = params.get("verbose", 1)
        self.verbose = 1 if verbose == "auto" else int(verbose)
        self.epochs = params.get("epochs", 1)
        self.target = params.get("steps")
        self._live_bar = _load_live_bar() if self.verbose == 1 else None
        self._drawing = self._live_bar is not None and _interactive()
        # The batch hook lives on the instance so that only a bar asks fit for batch logs
        # (it reads them only to redraw; without a terminal it only counts the steps).
        if self._live_bar is not None:
            self.on_train_batch_end = self._advance  # type: ignore[method-assign]
        else:
            self.__dict__.pop("on_train_batch_end", None)

    def on_epoch_begin(self, epoch: int, logs: Logs | None = None) -> None:
        """Prints ``Epoch i/n`` and starts the epoch's bar and clock."""
        if self.verbose and self.epochs > 1:
            print(f"Epoch {epoch + 1}/{self.epochs}", file=sys.stdout, flush=True)
        self._seen = 0
        self._final = False
        self._logs = {}
        self._first_step_done = None
        self._epoch_start = perf_counter()
        if self._drawing:
            assert self._live_bar is not None
            self._bar = self._live_bar(self)

    def _advance(self, batch: int, logs: Logs | None = None) -> None:
        """Moves the live bar to ``batch + 1`` steps; tqdm decides whether to redraw."""
        self._seen = batch + 1
        if batch == 0:
            self._first_step_done = perf_counter()
        if logs is not None:
            self._logs = logs
        if self._bar is not None:
            self._bar.update(self._seen - self._bar.n)

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        """Prints the epoch's final line, validation logs included."""
        logs = logs or {}
        if self._bar is not None:
            self._logs = logs
            self._final = True
            if self.target is None:
                self._bar.total = self._seen
            self._bar.n = self._bar.total
            self._bar.close()  # redraws once more with the final line, then ends it
            self._bar = None
        elif self._live_bar is not None:  # a bar, but no terminal to redraw it on
            self._logs = logs
            self._final = True
            print(self._bar_line(), file=sys.stdout, flush=True)
        elif self.verbose:
            print(self._summary_line(logs), file=sys.stdout, flush=True)

    def on_train_end(self, logs: Logs | None = None) -> None:
        """Closes a bar left open by an epoch that did not finish."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _summary_line(self, logs: Logs) -> str:
        """The ``verbose=2`` line: ``38/38 - 1s - 3ms/step - loss: ...``."""
        elapsed = perf_counter() - self._epoch_start
        parts = []
        if self.target:
            parts += [_count(self.target, self.target), f"{elapsed:.0f}s"]
            parts.append(_per_step(elapsed / self.target))
        else:
            parts.append(f"{elapsed:.0f}s")
        parts += _log_items(logs)
        return " - ".join(parts)

    def _bar_line(self) -> str:
        """The live bar's current text, ``12/38 [=======>......] - ETA: 2s - loss: ...``."""
        now = perf_counter()
        target = self.target if self.target is not None else max(self._seen, 1)
        current = target if self._final else self._seen
        line = f"{_count(current, target)} [{_bar(current, target)}]"
        # The count ends at the target as in Keras; the time per step uses the steps that ran.
        step_time = self._step_time(self._seen or current, now)
        if self._final:
            line += f" - {now - self._epoch_start:.0f}s {_per_step(step_time)}"
        elif current:
            line += f" - ETA: {_eta(step_time * (target - current))}"
        return " - ".join([line, *_log_items(self._logs)])

    def _step_time(self, current: int, now: float) -> float:
        # Like Keras, leave out the first step (allocation, warm-up) once there are others.
        if current > 1 and self._first_step_done is not None:
            return (now - self._first_step_done) / (current - 1)
        return (now - self._epoch_start) / current if current else 0.0


def _interactive() -> bool:
    """Whether ``sys.stdout`` is a terminal, where a bar can be redrawn in place."""
    isatty = getattr(sys.stdout, "isatty", None)
    try:
        return bool(isatty is not None and isatty())
    except (ValueError, OSError):  # a closed or detached stream
        return False


def format_value(value: Any) -> str:
    """Formats a log value as Keras does: ``0.1234``, or ``1.2340e-04`` when ``|value| <= 1e-3``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{number:.4f}" if abs(number) > 1e-3 else f"{number:.4e}"


def _log_items(logs: Logs) -> list[str]:
    return [f"{key}: {format_value(value)}" for key, value in logs.items()]


def _count(current: int, target: int) -> str:
    return f"{current:>{len(str(target))}d}/{target}"


def _bar(current: int, target: int) -> str:
    filled = BAR_WIDTH * current // target if target else BAR_WIDTH
    if filled == 0:
        return "." * BAR_WIDTH
    head = "=" if current >= target else ">"
    return "=" * (filled - 1) + head + "." * (BAR_WIDTH - filled)


def _per_step(seconds: float) -> str:
    if seconds >= 1 or seconds == 0:
        return f"{seconds:.0f}s/step"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.0f}ms/step"
    return f"{seconds * 1e6:.0f}us/step"


def _eta(seconds: float) -> str:
    seconds = int(seconds)
    if seconds > 3600:
        return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
    if seconds > 60:
        return f"{seconds // 60}:{seconds % 60:02d}"
    return f"{seconds}s"


def _load_live_bar() -> type | None:
    """The tqdm-based bar class, or None (after a one-time hint) when tqdm is missing."""
    global _bar_class, _tqdm_hint_shown
    if _bar_class is not None:
        return _bar_class
    try:
        from tqdm import tqdm
    except ImportError:
        if not _tqdm_hint_shown:
            _tqdm_hint_shown = True
            print(
                "dlcore: pip install tqdm for a live progress bar; printing one line per epoch.",
                file=sys.stdout,
            )
        return None

    class _LiveBar(tqdm):
        """tqdm's rate limiting and in-place redraw, with the text drawn by a ProgbarLogger."""

        # No monitor thread: the text reads the batch logs, which belong to the training thread.
        monitor_interval = 0

        def __init__(self, logger: ProgbarLogger) -> None:
            self._logger = logger
            super().__init__(total=logger.target, file=sys.stdout, leave=True, position=0)

        def __str__(self) -> str:
            return self._logger._bar_line()

    _bar_class = _LiveBar
    return _bar_class
