"""Metrics by name, resolved against the loss and the output layer as Keras does.

A metric is either an accuracy (the engine counts correct predictions) or a
loss function used as a metric (``"mae"``, ``"categorical_crossentropy"``, ...).
Per batch the engine returns one 0-d array per metric; ``EpochTotals`` turns
them into the averages Keras reports.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dlcore import losses
from dlcore.backends.base import Array, Engine, Workspace

_ACCURACY_NAMES = {
    "accuracy": None,
    "acc": None,
    "binary_accuracy": "binary",
    "categorical_accuracy": "categorical",
    "sparse_categorical_accuracy": "sparse",
}


@dataclass(frozen=True)
class Metric:
    """One metric of a compiled model.

    Attributes:
        key: its name in the logs and in ``History.history`` (as the user wrote it).
        accuracy_kind: ``"binary"``, ``"categorical"`` or ``"sparse"`` for an
            accuracy, else ``None``.
        loss: for a loss used as a metric, that loss.
    """

    key: str
    accuracy_kind: str | None = None
    loss: losses.Loss | None = None

    def batch_value(
        self, engine: Engine, Y_pred: Array, Y_true: Array, workspace: Workspace | None = None
    ) -> Array:
        """The engine's 0-d result for one batch: a count or a batch-mean loss; the
        engine takes its temporaries from ``workspace`` when one is given."""
        if self.accuracy_kind is not None:
            return engine.count_correct(self.accuracy_kind, Y_pred, Y_true, workspace=workspace)
        loss = self.loss
        if loss is None:
            # AttributeError, as the attribute access on None raised before this check
            raise AttributeError(f"metric {self.key!r} has neither an accuracy kind nor a loss")
        return engine.loss(
            loss.name, Y_pred, Y_true, from_logits=loss.from_logits, workspace=workspace
        )

    def per_sample_divisor(self, units: int) -> int:
        """Counts of binary accuracy are per output element, others per sample."""
        return units if self.accuracy_kind == "binary" else 1


def check_names(metrics: Any) -> list[str]:
    """Validate ``compile(metrics=...)``: a list of metric names."""
    if metrics is None:
        return []
    if isinstance(metrics, str):
        metrics = [metrics]
    if not isinstance(metrics, (list, tuple)):
        raise TypeError(
            f"metrics must be a list of names such as ['accuracy'], received {metrics!r}"
        )
    names = []
    for metric in metrics:
        if not isinstance(metric, str):
            raise TypeError(
                f"metrics are given by name (e.g. 'accuracy', 'mae'); received {metric!r}"
            )
        if metric.lower() not in _ACCURACY_NAMES:
            try:
                losses.canonical_name(metric)
            except ValueError:
                valid = sorted(set(_ACCURACY_NAMES) | set(losses.NAMES) | set(losses.ALIASES))
                raise ValueError(
                    f"unknown metric {metric!r}; available: {', '.join(valid)}"
                ) from None
        names.append(metric)
    return names


def resolve(names: Sequence[str], loss: losses.Loss, units: int) -> list[Metric]:
    """Turn metric names into ``Metric`` objects for a loss and an output width.

    ``"accuracy"`` (or ``"acc"``) is resolved as Keras 3 does, from the shapes
    the loss implies: binary accuracy for one output unit, sparse accuracy for
    integer labels (``sparse_categorical_crossentropy``), categorical accuracy
    otherwise, including several sigmoid outputs trained with binary
    cross-entropy.
    """
    sparse_targets = loss.name == "sparse_categorical_crossentropy"
    resolved = []
    for name in names:
        key = name.lower()
        if key in _ACCURACY_NAMES:
            kind = _ACCURACY_NAMES[key]
            if kind is None:
                if units == 1:
                    kind = "binary"
                else:
                    kind = "sparse" if sparse_targets else "categorical"
            if (kind == "sparse") != sparse_targets:
                wanted = "integer labels" if kind == "sparse" else "one-hot or binary targets"
                given = "integer labels" if sparse_targets else "one-hot or binary targets"
                raise ValueError(
                    f"metric {name!r} needs {wanted} but the loss {loss.name!r} takes {given}; "
                    "use metrics=['accuracy'], which picks the matching kind"
                )
            resolved.append(Metric(name, accuracy_kind=kind))
        else:
            metric_loss = losses.Loss(name, from_logits=False)
            if (metric_loss.name == "sparse_categorical_crossentropy") != sparse_targets:
                raise ValueError(
                    f"metric {name!r} does not take the same kind of targets as the loss "
                    f"{loss.name!r}; choose a metric that matches the loss"
                )
            if metric_loss.name == loss.name:
                metric_loss = loss
            resolved.append(Metric(name, loss=metric_loss))
    return resolved


class EpochTotals:
    """Batch-size-weighted averages of the loss and metrics over an epoch.

    Engine scalars are kept until ``logs()`` is called, which moves them to the
    host in one transfer; call it once per epoch, or per batch only when a
    callback or the progress bar needs the running values.
    """

    def __init__(self, engine: Engine, metrics: Sequence[Metric], units: int) -> None:
        self._engine = engine
        self._metrics = list(metrics)
        self._units = units
        self._pending: list[Array] = []
        self._pending_sizes: list[int] = []
        self._per_batch = 0
        self._sums = np.zeros(1 + len(self._metrics))
        self._samples = 0

    def add(self, batch_size: int, loss_terms: Sequence[Array], metric_values: Sequence[Array]):
        """Record one batch: its mean loss terms (loss and penalties) and metric scalars."""
        values = list(loss_terms) + list(metric_values)
        if self._per_batch == 0:
            self._per_batch = len(values)
            self._loss_terms = len(loss_terms)
        self._pending.extend(values)
        self._pending_sizes.append(batch_size)

    def logs(self) -> dict[str, float]:
        """Averages over all batches recorded so far."""
        if self._pending:
            host = self._engine.scalars_to_numpy(self._pending).reshape(-1, self._per_batch)
            sizes = np.asarray(self._pending_sizes, dtype=np.float64)
            losses_per_batch = host[:, : self._loss_terms].sum(axis=1)
            self._sums[0] += float(losses_per_batch @ sizes)
            for j, metric in enumerate(self._metrics):
                column = host[:, self._loss_terms + j]
                if metric.accuracy_kind is not None:
                    self._sums[1 + j] += float(column.sum())
                else:
                    self._sums[1 + j] += float(column @ sizes)
            self._samples += int(sizes.sum())
            self._pending.clear()
            self._pending_sizes.clear()
        if self._samples == 0:
            return {}
        logs = {"loss": self._sums[0] / self._samples}
        for j, metric in enumerate(self._metrics):
            divisor = self._samples * metric.per_sample_divisor(self._units)
            logs[metric.key] = self._sums[1 + j] / divisor
        return {key: float(value) for key, value in logs.items()}


class LazyLogs(Mapping):
    """Batch logs that are read from the engine only when a callback looks at them.

    The progress bar redraws a few times a second, so with ``verbose=1`` the
    per-batch scalars cross to the host a few times a second, not every batch.
    """

    def __init__(self, read: Callable[[], dict[str, float]]) -> None:
        self._read = read
        self._values: dict[str, float] | None = None

    def _logs(self) -> dict[str, float]:
        if self._values is None:
            self._values = self._read()
        return self._values

    def __getitem__(self, key: str) -> float:
        return self._logs()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._logs())

    def __len__(self) -> int:
        return len(self._logs())

    def __repr__(self) -> str:
        return f"LazyLogs({self._values if self._values is not None else 'unread'})"
