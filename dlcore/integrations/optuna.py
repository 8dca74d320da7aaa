"""Optuna hyperparameter search: :class:`PruningCallback` reports a monitored log value to
an Optuna trial at the end of every epoch and stops a trial that the study's pruner gives up.

Optuna is imported when a callback is made, not when this module is imported; without it
the constructor raises ImportError saying ``pip install dlcore[optuna]``.

Example:

>>> def objective(trial):
...     model = build_model(units=trial.suggest_int("units", 16, 128))
...     history = model.fit(x, y, validation_split=0.2, epochs=50,
...                         callbacks=[PruningCallback(trial, monitor="val_loss")])
...     return history.history["val_loss"][-1]
>>> optuna.create_study(pruner=optuna.pruners.MedianPruner()).optimize(objective, n_trials=20)
"""

from __future__ import annotations

import numbers
import warnings
from types import ModuleType
from typing import Any

from dlcore.callbacks.base import Callback, Logs


def import_optuna() -> ModuleType:
    """The ``optuna`` module; ImportError naming the extra that installs it when it is absent."""
    try:
        import optuna
    except ImportError:
        raise ImportError(
            "dlcore.integrations.optuna needs Optuna, which is not installed: "
            "pip install 'dlcore[optuna]'"
        ) from None
    return optuna


class PruningCallback(Callback):
    """Reports ``logs[monitor]`` to an Optuna trial after each epoch and prunes the trial
    when its study's pruner says so.

    At the end of every ``interval``-th epoch the monitored value is passed to
    ``trial.report(value, step=epoch)`` (``epoch`` 0-based, as ``fit`` counts it). When
    ``trial.should_prune()`` is then true, the callback sets ``model.stop_training`` and
    raises ``optuna.TrialPruned``, which leaves ``fit`` at once (``on_train_end`` is not
    called) and which ``study.optimize`` records as a pruned trial. As in Keras, the
    ``History`` callback runs after the user's callbacks, so ``model.history`` holds the
    epochs before the pruned one; the trial's ``intermediate_values`` hold them all.

    The study's direction must match the monitored value: minimize a loss such as
    ``"val_loss"``, maximize an accuracy such as ``"val_accuracy"``; the pruners compare
    the reported values in that direction.

    A ``monitor`` that is not in the epoch's logs (a ``val_`` value without validation
    data, a misspelt name) is warned about once per ``fit``, naming the available keys;
    nothing is reported for that epoch and the trial is never pruned by this callback.

    Args:
        trial: The ``optuna.trial.Trial`` of the objective function being evaluated
            (anything with Optuna's ``report(value, step)`` and ``should_prune()``).
        monitor: Log key to report, e.g. ``"val_loss"`` or ``"val_accuracy"``.
        interval: Report and check every ``interval`` epochs (epochs ``interval - 1``,
            ``2 * interval - 1``, ...); 1 checks after every epoch.

    Attributes:
        pruned_epoch: 0-based epoch at which the trial was pruned, ``None`` if it was not.
    """

    def __init__(self, trial: Any, monitor: str = "val_loss", interval: int = 1) -> None:
        super().__init__()
        self._optuna = import_optuna()
        for method in ("report", "should_prune"):
            if not callable(getattr(trial, method, None)):
                raise TypeError(
                    "PruningCallback expected trial to be the optuna.trial.Trial passed to "
                    f"the objective function, received {trial!r}, which has no {method}() "
                    "method. Pass the objective's trial argument."
                )
        if not isinstance(monitor, str) or not monitor:
            raise TypeError(
                "PruningCallback expected monitor to be a log name such as 'val_loss', "
                f"received monitor={monitor!r}"
            )
        given: object = interval  # checked as the user may pass anything
        if isinstance(given, bool) or not isinstance(given, numbers.Integral) or given < 1:
            raise ValueError(
                "PruningCallback expected interval to be an integer >= 1 (1 checks after "
                f"every epoch), received interval={interval!r}"
            )
        self.trial = trial
        self.monitor = monitor
        self.interval = int(interval)
        self.pruned_epoch: int | None = None
        self._warned = False

    def on_train_begin(self, logs: Logs | None = None) -> None:
        """Resets the pruned epoch and the missing-key warning for this ``fit``."""
        self.pruned_epoch = None
        self._warned = False

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        """Reports the monitored value of epoch ``epoch``; raises ``optuna.TrialPruned``
        when the trial should be pruned."""
        if (epoch + 1) % self.interval != 0:
            return
        logs = logs or {}
        value = logs.get(self.monitor)
        if value is None:
            if not self._warned:
                self._warned = True
                available = ", ".join(logs) or "none"
                warnings.warn(
                    f"PruningCallback is conditioned on metric '{self.monitor}', which is "
                    f"not available; available metrics: {available}. Nothing is reported "
                    "to the trial: pass one of them as monitor=, or pass validation data "
                    "to fit to get the val_ metrics.",
                    stacklevel=2,
                )
            return
        self.trial.report(float(value), step=epoch)
        if self.trial.should_prune():
            self.pruned_epoch = epoch
            if self.model is not None:
                self.model.stop_training = True
            raise self._optuna.TrialPruned(f"Trial was pruned at epoch {epoch}.")
