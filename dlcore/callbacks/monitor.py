"""What callbacks that watch a log value share: its mode, direction and improvement test,
and the tests that keep a diverged model (NaN loss or weights) from counting as the best.

:class:`~dlcore.callbacks.EarlyStopping` and
:class:`~dlcore.callbacks.ModelCheckpoint` use these.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from dlcore import losses
from dlcore.callbacks.base import Logs

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


def check_mode(mode: str, owner: str) -> None:
    """Raises ValueError, naming ``owner``, unless ``mode`` is one of :data:`MODES`."""
    if mode not in MODES:
        raise ValueError(
            f"{owner} expected mode to be one of {', '.join(map(repr, MODES))}, "
            f"received mode={mode!r}"
        )


def monitor_direction(monitor: str, mode: str, owner: str) -> str:
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


def is_better(value: float, reference: float | None, direction: str, min_delta: float) -> bool:
    """Keras's improvement test: ``value`` beats ``reference`` by more than ``min_delta``.

    A NaN or infinite ``value`` is never an improvement: it comes from a model that has
    diverged, whose weights no callback should keep.
    """
    if not math.isfinite(value):
        return False
    if reference is None:
        return True
    if direction == "min":
        return value + min_delta < reference
    return value - min_delta > reference


def diverged(logs: Logs) -> bool:
    """Whether the epoch's training ``loss`` is NaN or infinite: such an epoch is never
    an improvement, whatever other value is monitored (a NaN model still scores some
    accuracy, by the argmax of its NaN outputs)."""
    loss = logs.get("loss")
    return loss is not None and not math.isfinite(float(loss))


def finite_weights(weights: Sequence[np.ndarray]) -> bool:
    """Whether every value of ``weights`` (a model's ``get_weights()``) is finite."""
    return all(bool(np.isfinite(w).all()) for w in weights)
