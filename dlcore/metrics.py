"""Metrics by name, resolved against the loss and the output layer as Keras does.

A metric is an accuracy (the engine counts correct predictions), a loss
function used as a metric (``"mae"``, ``"categorical_crossentropy"``, ...), or
a function written in Python and registered with ``register``. Per batch the
engine returns one 0-d array per metric; ``EpochTotals`` turns them into the
averages Keras reports.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dlcore import custom, losses, metric_objects
from dlcore.backends import custom as engine_custom
from dlcore.backends import names
from dlcore.backends.base import Array, Engine, Workspace
from dlcore.metric_objects import (  # noqa: F401  (metrics.AUC(...) and so on)
    AUC,
    BinaryAccuracy,
    CategoricalAccuracy,
    CountMetric,
    F1Score,
    MeanAbsoluteError,
    MeanMetric,
    MeanSquaredError,
    MetricObject,
    Precision,
    Recall,
    RootMeanSquaredError,
    SparseCategoricalAccuracy,
    SparseTopKCategoricalAccuracy,
    TopKCategoricalAccuracy,
)

ACCURACY_NAMES = names.ACCURACY_NAMES


@dataclass(frozen=True)
class Metric:
    """One metric of a compiled model.

    Attributes:
        key: its name in the logs and in ``History.history`` (as the user wrote it).
        accuracy_kind: ``"binary"``, ``"categorical"`` or ``"sparse"`` for an
            accuracy, else ``None``.
        loss: for a loss used as a metric, that loss.
        function: for a custom metric or loss (``register``, ``losses.register``),
            its registered name.
        metric_object: for a metric class (``AUC``, ``Precision``, ...), the object.
        weighted: from ``compile(weighted_metrics=...)``: it weighs samples by the
            ``sample_weight`` given to ``batch_value`` (``metrics=`` ignore it, as in Keras 3).
    """

    key: str
    accuracy_kind: str | None = None
    loss: losses.Loss | None = None
    function: str | None = None
    metric_object: MetricObject | None = None
    weighted: bool = False

    @property
    def counts_state(self) -> bool:
        """Whether its batch values are confusion counts summed on the engine."""
        return isinstance(self.metric_object, CountMetric)

    @property
    def sums(self) -> bool:
        """Whether its unweighted 0-d batch value is a sum over the batch (counts and
        metric objects) rather than a batch mean (losses, custom functions)."""
        return self.accuracy_kind is not None or self.metric_object is not None

    def batch_value(
        self,
        engine: Engine,
        Y_pred: Array,
        Y_true: Array,
        workspace: Workspace | None = None,
        *,
        sample_weight: Array | None = None,
    ) -> Any:
        """The engine's result for one batch, which ``EpochTotals.add`` takes.

        Unweighted: a 0-d count or sum (accuracies, metric objects) or a batch mean
        (losses, custom functions). With ``sample_weight`` (float ``(N,)``) and
        ``weighted``: ``(sum of weight * value, sum of weight)``, two 0-d arrays; metrics
        given as ``metrics=`` ignore ``sample_weight``, as in Keras 3. Confusion-count
        metrics: float64 ``(4, T, L)`` either way. The engine takes its temporaries
        from ``workspace`` when one is given.
        """
        weights = sample_weight if self.weighted else None
        obj = self.metric_object
        if isinstance(obj, CountMetric):
            return obj.counts(engine, Y_pred, Y_true, weights)
        if isinstance(obj, MeanMetric):
            if weights is None and obj.accuracy_kind is not None:
                return engine.count_correct(obj.accuracy_kind, Y_pred, Y_true, workspace=workspace)
            values = obj.per_sample(engine, Y_pred, Y_true, workspace)
            if weights is None:
                return engine.weighted_sum(values)
            return engine.weighted_sum(values, weights), engine.weighted_sum(weights)
        if weights is not None:
            if self.accuracy_kind is not None:
                values = engine.accuracy_values(
                    self.accuracy_kind, Y_pred, Y_true, workspace=workspace
                )
            else:
                name = self.function
                from_logits = False
                if name is None:
                    assert self.loss is not None
                    name, from_logits = self.loss.name, self.loss.from_logits
                values = engine.per_sample_loss(
                    name, Y_pred, Y_true, from_logits=from_logits, workspace=workspace
                )
            return engine.weighted_sum(values, weights), engine.weighted_sum(weights)
        if self.accuracy_kind is not None:
            return engine.count_correct(self.accuracy_kind, Y_pred, Y_true, workspace=workspace)
        if self.function is not None:  # the batch mean of its per-sample values
            return engine.loss(self.function, Y_pred, Y_true, workspace=workspace)
        loss = self.loss
        if loss is None:
            raise AttributeError(f"metric {self.key!r} has neither an accuracy kind nor a loss")
        return engine.loss(
            loss.name, Y_pred, Y_true, from_logits=loss.from_logits, workspace=workspace
        )

    def per_sample_divisor(self, units: int) -> int:
        """Counts of binary accuracy are per output element, others per sample."""
        return units if self.accuracy_kind == "binary" and self.metric_object is None else 1


def register(
    function: Callable[..., Any] | None = None, *, name: str | None = None
) -> Callable[..., Any]:
    """Register a metric written as a Python function, under a name.

    Its per-sample values are averaged over all the samples of an epoch, as
    Keras's ``MeanMetricWrapper`` does, and reported under its name in the logs
    and in ``History.history``. The function uses the functions of the array API
    namespace ``xp`` it is given (NumPy, CuPy's, ``array_api_strict``), so the
    numpy, cupy and array_api_strict engines run it; the numba engine cannot call
    Python and refuses it. A metric needs no gradient. A saved model refers to it
    by its name. Registering a name again replaces its function.

    Args:
        function: ``function(y_true, y_pred, xp) -> values``, one value per sample:
            ``(N,)`` in the dtype of ``y_pred``. Leave it out to use ``register`` as
            a decorator.
        name: the name to register and report under; ``function.__name__`` by default.

    Returns:
        ``function`` itself, which ``compile(metrics=[function])`` then accepts, as
        it accepts the name; without ``function``, a decorator that registers the
        function it decorates and returns it.

    Raises:
        TypeError: ``function`` is not a function.
        ValueError: the name is not a Python identifier, or is a built-in metric
            or loss name.

    Example:
        >>> @register
        ... def mean_error(y_true, y_pred, xp):
        ...     return xp.mean(y_pred - y_true, axis=-1)
        >>> check_names([mean_error])
        ['mean_error']
    """
    if function is None:
        return lambda decorated: register(decorated, name=name)
    key = custom.checked_name("metric", function, name, losses.reserved_names())
    engine_custom.PER_SAMPLE[key] = engine_custom.PerSample(key, function, None, "metric")
    return function


def check_names(metrics: Any) -> list[Any]:
    """Validate ``compile(metrics=...)``: a list of metric names, metric objects (``AUC()``,
    ...) or classes, and registered functions.

    Returns:
        The names: as given, or for a function (or a name that an enclosing
        ``custom.custom_object_scope`` maps to one) its registered name; metric objects
        as they are (a class: an object of it with its defaults).
    """
    if metrics is None:
        return []
    if isinstance(metrics, (str, MetricObject)) or callable(metrics):
        metrics = [metrics]
    if not isinstance(metrics, (list, tuple)):
        raise TypeError(
            f"metrics must be a list of names such as ['accuracy'], received {metrics!r}"
        )
    return [_checked_name(metric) for metric in metrics]


def _checked_name(metric: Any) -> Any:
    if isinstance(metric, MetricObject):
        return metric
    if isinstance(metric, type) and issubclass(metric, MetricObject):
        return metric()
    if not isinstance(metric, str):
        if callable(metric):
            return _registered_name(metric)
        raise TypeError(
            "metrics are given by name (e.g. 'accuracy', 'mae') or as functions registered "
            f"with dlcore.metrics.register; received {metric!r}"
        )
    key = metric.lower()
    if key in ACCURACY_NAMES or losses.ALIASES.get(key, key) in losses.NAMES:
        return metric
    if metric in metric_objects.STRING_NAMES:
        return metric
    function = custom.scoped(metric)
    if function is not None:
        return _registered_name(function)
    if metric in engine_custom.PER_SAMPLE:
        return metric
    valid = sorted(
        set(ACCURACY_NAMES)
        | set(losses.NAMES)
        | set(losses.ALIASES)
        | set(engine_custom.PER_SAMPLE)
        | set(metric_objects.STRING_NAMES)
    )
    hint = custom.unknown_hint("metric", metric, "dlcore.metrics.register(fn)")
    raise ValueError(f"unknown metric {metric!r}; available: {', '.join(valid)}{hint}")


def _registered_name(function: Callable[..., Any]) -> str:
    """The name ``function`` was last registered under as a metric or a loss."""
    for entry in reversed(engine_custom.PER_SAMPLE.values()):
        if entry.function is function:
            return entry.name
    raise TypeError(
        "metrics are given by name (e.g. 'accuracy', 'mae') or as functions registered "
        f"with dlcore.metrics.register; {engine_custom.describe(function)} is not registered"
    )


def resolve(
    names: Sequence[Any], loss: losses.Loss, units: int, *, weighted: bool = False
) -> list[Metric]:
    """Turn metric names and metric objects into ``Metric`` objects for a loss and an
    output width; ``weighted`` for ``compile(weighted_metrics=...)``.

    ``"accuracy"`` (or ``"acc"``) is resolved as Keras 3 does, from the shapes
    the loss implies: binary accuracy for one output unit, sparse accuracy for
    integer labels (``sparse_categorical_crossentropy``), categorical accuracy
    otherwise, including several sigmoid outputs trained with binary
    cross-entropy.
    """
    sparse_targets = loss.name == "sparse_categorical_crossentropy"
    resolved = []
    for name in names:
        if isinstance(name, MetricObject) or (
            name in metric_objects.STRING_NAMES
            and name.lower() not in ACCURACY_NAMES
            and losses.ALIASES.get(name.lower(), name.lower()) not in losses.NAMES
        ):
            resolved.append(_object_metric(name, sparse_targets, loss, weighted))
            continue
        key = name.lower()
        if key in ACCURACY_NAMES:
            kind = ACCURACY_NAMES[key]
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
            resolved.append(Metric(name, accuracy_kind=kind, weighted=weighted))
        elif name in engine_custom.PER_SAMPLE:
            resolved.append(Metric(name, function=name, weighted=weighted))
        else:
            metric_loss = losses.Loss(name, from_logits=False)
            if (metric_loss.name == "sparse_categorical_crossentropy") != sparse_targets:
                raise ValueError(
                    f"metric {name!r} does not take the same kind of targets as the loss "
                    f"{loss.name!r}; choose a metric that matches the loss"
                )
            if metric_loss.name == loss.name:
                metric_loss = loss
            resolved.append(Metric(name, loss=metric_loss, weighted=weighted))
    return resolved


def _object_metric(item: Any, sparse_targets: bool, loss: losses.Loss, weighted: bool) -> Metric:
    """The ``Metric`` of a metric object, or of a string naming a metric class."""
    obj = metric_objects.from_string(item) if isinstance(item, str) else item
    if (obj.targets == "sparse") != sparse_targets:
        wanted = "integer labels" if obj.targets == "sparse" else "targets of the output's shape"
        given = "integer labels" if sparse_targets else "targets of the output's shape"
        raise ValueError(
            f"metric {obj.name!r} ({type(obj).__name__}) needs {wanted} but the loss "
            f"{loss.name!r} takes {given}; choose a metric that matches the loss"
        )
    return Metric(obj.name, accuracy_kind=obj.accuracy_kind, metric_object=obj, weighted=weighted)


class EpochTotals:
    """Batch-size-weighted averages of the losses and metrics over an epoch.

    Per batch it keeps each output's mean loss, the penalties and the metric values
    as engine scalars, and moves them to the host in one transfer when ``logs()`` is
    called: once per epoch, or per batch only when a callback or the progress bar
    needs the running values. ``loss`` is the weighted sum of the outputs' losses
    plus the penalties, as Keras reports it; with ``output_names``, each output's
    own (unweighted) loss is logged as ``<name>_loss`` too.

    Args:
        engine: the engine of the scalars.
        metric_groups: the metrics of each output.
        units: each output's width.
        loss_weights: each output's loss weight (1 each by default).
        output_names: the names of the outputs' ``_loss`` keys; empty for one output.
    """

    def __init__(
        self,
        engine: Engine,
        metric_groups: Sequence[Sequence[Metric]],
        units: Sequence[int],
        *,
        loss_weights: Sequence[float] | None = None,
        output_names: Sequence[str] = (),
    ) -> None:
        self._engine = engine
        self._outputs = len(units)
        weights = [1.0] * self._outputs if loss_weights is None else list(loss_weights)
        self._weights = np.asarray(weights, dtype=np.float64)
        self._names = list(output_names)
        self._metrics = [
            (metric, width) for group, width in zip(metric_groups, units) for metric in group
        ]
        self._pending: list[Array] = []  # loss terms, batch after batch
        self._sizes: list[int] = []
        self._width = 0
        self._terms = 0
        self._sums = np.zeros(1 + self._outputs)
        self._samples = 0
        # metrics: the numerators' engine scalars, the metric and host factor of each, and
        # the denominators known on the host; confusion counts summed on the engine
        self._metric_pending: list[Array] = []
        self._metric_targets: list[int] = []
        self._metric_factors: list[float] = []
        self._numerators = np.zeros(len(self._metrics))
        self._denominators = np.zeros(len(self._metrics))
        self._counts: list[Array | None] = [None] * len(self._metrics)

    def add(self, batch_size: int, loss_terms: Sequence[Array], metric_values: Sequence[Any]):
        """Record one batch: each output's mean loss, then the penalties; the metric values
        as ``Metric.batch_value`` returns them."""
        if self._width == 0:
            self._width = self._terms = len(loss_terms)
        self._pending.extend(loss_terms)
        self._sizes.append(batch_size)
        for j, ((metric, width), value) in enumerate(zip(self._metrics, metric_values)):
            if metric.counts_state:
                total = self._counts[j]
                if total is None:
                    total = self._counts[j] = self._engine.zeros(
                        tuple(int(n) for n in value.shape), dtype="float64"
                    )
                self._engine.accumulate(total, value)
            elif isinstance(value, tuple):  # (weighted sum, sum of weights)
                self._metric_pending.extend(value)
                self._metric_targets += [j, -1 - j]
                self._metric_factors += [1.0, 1.0]
            else:
                self._metric_pending.append(value)
                self._metric_targets.append(j)
                self._metric_factors.append(1.0 if metric.sums else float(batch_size))
                self._denominators[j] += batch_size * metric.per_sample_divisor(width)

    def logs(self) -> dict[str, Any]:
        """Averages over all batches recorded so far (a metric whose value is a vector,
        such as ``F1Score(average=None)``, as a float64 array)."""
        if self._pending or self._metric_pending:
            host = self._engine.scalars_to_numpy(self._pending + self._metric_pending)
            host = host.reshape(-1)
            terms = host[: len(self._pending)].reshape(-1, self._width)
            sizes = np.asarray(self._sizes, dtype=np.float64)
            per_output = terms[:, : self._outputs]
            penalties = terms[:, self._outputs : self._terms].sum(axis=1)
            self._sums[0] += float((per_output @ self._weights + penalties) @ sizes)
            for k in range(self._outputs):
                self._sums[1 + k] += float(per_output[:, k] @ sizes)
            values = host[len(self._pending) :] * np.asarray(self._metric_factors)
            targets = np.asarray(self._metric_targets, dtype=np.int64)
            numerator = targets >= 0
            np.add.at(self._numerators, targets[numerator], values[numerator])
            np.add.at(self._denominators, -1 - targets[~numerator], values[~numerator])
            self._samples += int(sizes.sum())
            self._pending.clear()
            self._sizes.clear()
            self._metric_pending.clear()
            self._metric_targets.clear()
            self._metric_factors.clear()
        if self._samples == 0:
            return {}
        logs: dict[str, Any] = {"loss": float(self._sums[0] / self._samples)}
        for k, name in enumerate(self._names):
            logs[f"{name}_loss"] = float(self._sums[1 + k] / self._samples)
        for j, (metric, _) in enumerate(self._metrics):
            logs[metric.key] = self._metric_result(j, metric)
        return logs

    def reduced_logs(self, sum_host: Callable[[np.ndarray], np.ndarray]) -> dict[str, Any]:
        """``logs()`` over the batches of every data-parallel process: the sums behind the
        averages (losses, metric numerators and denominators, sample counts, confusion
        counts) are summed over the processes with ``sum_host`` (float64 vector -> its sum
        over processes), so every process gets the same, global, numbers."""
        self.logs()  # folds the pending batches into the host sums
        counts = [
            None if total is None else self._engine.to_numpy(total).astype(np.float64)
            for total in self._counts
        ]
        local = np.concatenate(
            [
                self._sums,
                [float(self._samples)],
                self._numerators,
                self._denominators,
                *[c.reshape(-1) for c in counts if c is not None],
            ]
        )
        total = sum_host(local)
        sizes = [len(self._sums), 1, len(self._numerators), len(self._denominators)]
        sums, samples, numerators, denominators, rest = np.split(total, np.cumsum(sizes))
        self._sums, self._numerators, self._denominators = sums, numerators, denominators
        self._samples = int(round(float(samples[0])))
        for j, count in enumerate(counts):
            if count is not None:
                self._counts[j] = self._engine.asarray(
                    rest[: count.size].reshape(count.shape), dtype="float64"
                )
                rest = rest[count.size :]
        return self.logs()

    def _metric_result(self, j: int, metric: Metric) -> Any:
        obj = metric.metric_object
        counts = self._counts[j]
        if metric.counts_state:
            assert isinstance(obj, CountMetric)
            if counts is None:
                return 0.0
            result = obj.result(self._engine.to_numpy(counts).astype(np.float64))
            return float(result) if np.ndim(result) == 0 else np.asarray(result, np.float64)
        denominator = self._denominators[j]
        mean = self._numerators[j] / denominator if denominator != 0 else 0.0
        return float(obj.finish(mean) if isinstance(obj, MeanMetric) else mean)


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
