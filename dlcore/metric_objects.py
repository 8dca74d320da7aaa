"""Keras 3's metric classes: objects with arguments, usable in ``compile(metrics=[...])``.

Two kinds of state, both accumulated on the engine over an epoch:

* **means** (``MeanSquaredError``, the accuracies, ...): per batch the weighted sum
  of one value per sample and the sum of the weights (0-d engine arrays), averaged
  over the epoch as Keras's ``MeanMetricWrapper`` does;
* **confusion counts** (``AUC``, ``Precision``, ``Recall``, ``F1Score``): per batch
  ``Engine.confusion_counts`` at the metric's thresholds, float64 ``(4, T, L)``,
  summed on the engine; the result is computed on the host from the epoch's counts.

Names follow Keras 3: a metric made without ``name`` takes its class's snake-case
name, and for ``AUC``, ``Precision`` and ``Recall`` (whose Keras names are made
unique per process) the second one made is ``auc_1``, then ``auc_2``, ...
"""

from __future__ import annotations

import abc
import math
from collections import defaultdict
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from dlcore.backends.base import Array, Engine, Workspace, dtype_name

# Keras's backend.epsilon(): the margin of AUC's end thresholds and F1Score's guards.
EPSILON = 1e-7

_name_counts: defaultdict[str, int] = defaultdict(int)


def _unique_name(prefix: str) -> str:
    """``prefix``, then ``prefix_1``, ``prefix_2``, ... (Keras's ``auto_name``)."""
    count = _name_counts[prefix]
    _name_counts[prefix] += 1
    return prefix if count == 0 else f"{prefix}_{count}"


def _check_name(name: Any) -> None:
    if name is not None and (not isinstance(name, str) or not name):
        raise ValueError(f"a metric's name must be a non-empty string, received name={name!r}")


class MetricObject:
    """The base of the metric classes.

    Attributes:
        name: the key of its value in the logs and in ``History.history``.
    """

    #: the name without ``name=`` (uniquified per process when ``auto_named``)
    default_name: ClassVar[str]
    auto_named: ClassVar[bool] = False
    #: the kind of targets it takes: ``"dense"`` (the output's shape) or ``"sparse"`` (labels)
    targets: ClassVar[str] = "dense"
    #: the accuracy kind whose engine count equals the unweighted sum of its values
    accuracy_kind: ClassVar[str | None] = None

    def __init__(self, name: str | None = None) -> None:
        _check_name(name)
        if name is None:
            name = _unique_name(self.default_name) if self.auto_named else self.default_name
        self.name = name

    def get_config(self) -> dict[str, Any]:
        """The constructor's arguments, as ``from_config`` takes them."""
        return {"name": self.name}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> MetricObject:
        return cls(**dict(config))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name}>"

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_engine_thresholds", None)
        return state


class MeanMetric(MetricObject, abc.ABC):
    """A metric whose epoch value is the (weighted) mean of per-sample values."""

    @abc.abstractmethod
    def per_sample(
        self, engine: Engine, Y_pred: Array, Y_true: Array, workspace: Workspace | None
    ) -> Array:
        """One value per sample, float ``(N,)``."""

    def finish(self, mean: float) -> float:
        """The reported value of the epoch's weighted mean."""
        return mean


class CountMetric(MetricObject, abc.ABC):
    """A metric computed from the epoch's confusion counts at thresholds."""

    @abc.abstractmethod
    def counts(
        self, engine: Engine, Y_pred: Array, Y_true: Array, sample_weight: Array | None
    ) -> Array:
        """The batch's confusion counts, float64 ``(4, T, L)``."""

    @abc.abstractmethod
    def result(self, counts: np.ndarray) -> Any:
        """The value of the epoch's counts ``(4, T, L)``: a float, or an array."""

    def _thresholds_on(self, engine: Engine, dtype: Any, values: np.ndarray) -> Array:
        cache: dict[tuple[int, str], Array] = self.__dict__.setdefault("_engine_thresholds", {})
        key = (id(engine), str(dtype))
        if key not in cache:
            cache.clear()
            cache[key] = engine.asarray(values, dtype=dtype_name(dtype))
        return cache[key]


# -------------------------------------------------------------------- means
class _LossMean(MeanMetric):
    loss_name: ClassVar[str]

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name)

    def per_sample(
        self, engine: Engine, Y_pred: Array, Y_true: Array, workspace: Workspace | None
    ) -> Array:
        return engine.per_sample_loss(self.loss_name, Y_pred, Y_true, workspace=workspace)


class MeanSquaredError(_LossMean):
    """The mean of ``(y_true - y_pred)**2`` over the outputs, averaged over the samples."""

    default_name = "mean_squared_error"
    loss_name = "mean_squared_error"


class MeanAbsoluteError(_LossMean):
    """The mean of ``|y_true - y_pred|`` over the outputs, averaged over the samples."""

    default_name = "mean_absolute_error"
    loss_name = "mean_absolute_error"


class RootMeanSquaredError(_LossMean):
    """The square root of the epoch's mean squared error (not a mean of batch roots)."""

    default_name = "root_mean_squared_error"
    loss_name = "mean_squared_error"

    def finish(self, mean: float) -> float:
        return math.sqrt(mean)


class _Accuracy(MeanMetric):
    kind: ClassVar[str]

    def per_sample(
        self, engine: Engine, Y_pred: Array, Y_true: Array, workspace: Workspace | None
    ) -> Array:
        return engine.accuracy_values(self.kind, Y_pred, Y_true, workspace=workspace)


class BinaryAccuracy(_Accuracy):
    """The share of outputs where ``y_pred > threshold`` equals ``y_true``, per sample.

    Args:
        threshold: in ``[0, 1]``, 0.5 by default.
        name: the key in the logs, ``"binary_accuracy"`` by default.
    """

    default_name = "binary_accuracy"
    kind = "binary"

    def __init__(self, name: str | None = None, threshold: float = 0.5) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise TypeError(f"threshold must be a number in [0, 1], received {threshold!r}")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], received threshold={threshold}")
        super().__init__(name)
        self.threshold = float(threshold)

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "threshold": self.threshold}

    def per_sample(
        self, engine: Engine, Y_pred: Array, Y_true: Array, workspace: Workspace | None
    ) -> Array:
        return engine.accuracy_values(
            "binary", Y_pred, Y_true, threshold=self.threshold, workspace=workspace
        )


class CategoricalAccuracy(_Accuracy):
    """1 where the argmax of the prediction is the argmax of the one-hot target."""

    default_name = "categorical_accuracy"
    kind = "categorical"
    accuracy_kind = "categorical"


class SparseCategoricalAccuracy(_Accuracy):
    """1 where the argmax of the prediction is the integer label."""

    default_name = "sparse_categorical_accuracy"
    kind = "sparse"
    targets = "sparse"
    accuracy_kind = "sparse"


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an integer >= 1, received k={k!r}")
    if k < 1:
        raise ValueError(f"k must be an integer >= 1, received k={k}; use k=1 or more")
    return int(k)


class TopKCategoricalAccuracy(_Accuracy):
    """1 where the target class (argmax of the one-hot target) is among the ``k``
    highest scores (fewer than ``k`` scores are greater than its own).

    Args:
        k: at least 1, 5 by default.
        name: ``"top_k_categorical_accuracy"`` by default.
    """

    default_name = "top_k_categorical_accuracy"
    kind = "top_k"

    def __init__(self, k: int = 5, name: str | None = None) -> None:
        self.k = _check_k(k)
        super().__init__(name)

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "k": self.k}

    def per_sample(
        self, engine: Engine, Y_pred: Array, Y_true: Array, workspace: Workspace | None
    ) -> Array:
        return engine.accuracy_values(self.kind, Y_pred, Y_true, k=self.k, workspace=workspace)


class SparseTopKCategoricalAccuracy(TopKCategoricalAccuracy):
    """``TopKCategoricalAccuracy`` for integer labels."""

    default_name = "sparse_top_k_categorical_accuracy"
    kind = "sparse_top_k"
    targets = "sparse"


# -------------------------------------------------------------------- confusion counts
def _divide_no_nan(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    safe = np.where(b == 0, 1.0, b)
    return np.where(b == 0, 0.0, a / safe)


def _check_thresholds(thresholds: Any) -> list[float] | None:
    if thresholds is None:
        return None
    values = [thresholds] if isinstance(thresholds, (int, float)) else thresholds
    try:
        values = [float(v) for v in values]
    except (TypeError, ValueError):
        raise TypeError(
            f"thresholds must be a number or a list of numbers in [0, 1], received {thresholds!r}"
        ) from None
    if not values or not all(0.0 <= v <= 1.0 for v in values):
        raise ValueError(f"threshold values must be in [0, 1], received thresholds={thresholds!r}")
    return values


class _PrecisionRecall(CountMetric):
    auto_named = True

    def __init__(
        self,
        thresholds: Any = None,
        top_k: int | None = None,
        class_id: int | None = None,
        name: str | None = None,
    ) -> None:
        self.init_thresholds = _check_thresholds(thresholds)
        if top_k is not None:
            top_k = _check_k(top_k)
        if class_id is not None and (
            isinstance(class_id, bool)
            or not isinstance(class_id, (int, np.integer))
            or class_id < 0
        ):
            raise ValueError(
                f"class_id must be a column index >= 0, received class_id={class_id!r}"
            )
        super().__init__(name)
        self.top_k = top_k
        self.class_id = None if class_id is None else int(class_id)
        default = 0.5 if top_k is None else -1e10
        self.thresholds = self.init_thresholds if self.init_thresholds is not None else [default]
        if isinstance(thresholds, (int, float)):
            self.init_thresholds = float(thresholds)  # type: ignore[assignment]

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "thresholds": self.init_thresholds,
            "top_k": self.top_k,
            "class_id": self.class_id,
        }

    def counts(
        self, engine: Engine, Y_pred: Array, Y_true: Array, sample_weight: Array | None
    ) -> Array:
        thresholds = self._thresholds_on(engine, Y_pred.dtype, np.asarray(self.thresholds))
        return engine.confusion_counts(
            Y_pred,
            Y_true,
            thresholds,
            sample_weight=sample_weight,
            class_id=self.class_id,
            top_k=self.top_k,
        )

    def _value(self, tp: np.ndarray, other: np.ndarray) -> Any:
        value = _divide_no_nan(tp, tp + other)
        return float(value[0]) if len(self.thresholds) == 1 else value


class Precision(_PrecisionRecall):
    """``tp / (tp + fp)`` over the epoch at each threshold (a float for one threshold,
    else an array).

    Args:
        thresholds: a number or a list in ``[0, 1]``; a prediction is positive above it.
            0.5 by default (without ``top_k``).
        top_k: count only each row's ``top_k`` highest predictions as positive.
        class_id: count only this output column.
        name: ``"precision"`` by default (``"precision_1"`` for the second, ...).
    """

    default_name = "precision"

    def result(self, counts: np.ndarray) -> Any:
        return self._value(counts[0, :, 0], counts[1, :, 0])


class Recall(_PrecisionRecall):
    """``tp / (tp + fn)`` over the epoch at each threshold (arguments: ``Precision``'s;
    ``"recall"`` by default)."""

    default_name = "recall"

    def result(self, counts: np.ndarray) -> Any:
        return self._value(counts[0, :, 0], counts[3, :, 0])


class AUC(CountMetric):
    """The area under the ROC or precision-recall curve, by a Riemann sum over thresholds.

    Args:
        num_thresholds: at least 2, 200 by default: ``-1e-7``, ``num_thresholds - 2``
            evenly spaced in ``(0, 1)``, ``1 + 1e-7``.
        curve: ``"ROC"`` or ``"PR"``.
        summation_method: ``"interpolation"`` (trapezoids; PR uses Davis & Goadrich's
            interpolation), ``"minoring"`` or ``"majoring"``.
        multi_label: one curve per output column, their AUCs averaged, instead of one
            curve over all the outputs' elements.
        from_logits: apply a sigmoid to the predictions first.
        name: ``"auc"`` by default (``"auc_1"`` for the second, ...).
    """

    default_name = "auc"
    auto_named = True

    def __init__(
        self,
        num_thresholds: int = 200,
        curve: str = "ROC",
        summation_method: str = "interpolation",
        name: str | None = None,
        multi_label: bool = False,
        from_logits: bool = False,
    ) -> None:
        if isinstance(num_thresholds, bool) or not isinstance(num_thresholds, (int, np.integer)):
            raise TypeError(f"num_thresholds must be an integer > 1, received {num_thresholds!r}")
        if num_thresholds <= 1:
            raise ValueError(
                f"num_thresholds must be an integer > 1, received num_thresholds={num_thresholds}"
            )
        if not isinstance(curve, str) or curve.upper() not in ("ROC", "PR"):
            raise ValueError(f"curve must be 'ROC' or 'PR', received curve={curve!r}")
        methods = ("interpolation", "minoring", "majoring")
        if not isinstance(summation_method, str) or summation_method.lower() not in methods:
            raise ValueError(
                f"summation_method must be one of {methods}, received "
                f"summation_method={summation_method!r}"
            )
        super().__init__(name)
        self.num_thresholds = int(num_thresholds)
        self.curve = curve.upper()
        self.summation_method = summation_method.lower()
        self.multi_label = bool(multi_label)
        self.from_logits = bool(from_logits)
        inner = [(i + 1) / (self.num_thresholds - 1) for i in range(self.num_thresholds - 2)]
        self.thresholds = np.asarray([0.0 - EPSILON, *inner, 1.0 + EPSILON])

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "num_thresholds": self.num_thresholds,
            "curve": self.curve,
            "summation_method": self.summation_method,
            "multi_label": self.multi_label,
            "from_logits": self.from_logits,
        }

    def counts(
        self, engine: Engine, Y_pred: Array, Y_true: Array, sample_weight: Array | None
    ) -> Array:
        if self.from_logits:
            Y_pred = engine.activation("sigmoid", Y_pred)
        thresholds = self._thresholds_on(engine, Y_pred.dtype, self.thresholds)
        return engine.confusion_counts(
            Y_pred, Y_true, thresholds, sample_weight=sample_weight, per_label=self.multi_label
        )

    def result(self, counts: np.ndarray) -> float:
        tp, fp, tn, fn = counts  # each (T, L)
        if self.curve == "PR" and self.summation_method == "interpolation":
            terms = _interpolated_pr_terms(tp, fp, fn)
        else:
            recall = _divide_no_nan(tp, tp + fn)
            if self.curve == "ROC":
                x, y = _divide_no_nan(fp, fp + tn), recall
            else:
                x, y = recall, _divide_no_nan(tp, tp + fp)
            if self.summation_method == "interpolation":
                heights = (y[:-1] + y[1:]) / 2.0
            elif self.summation_method == "minoring":
                heights = np.minimum(y[:-1], y[1:])
            else:
                heights = np.maximum(y[:-1], y[1:])
            terms = (x[:-1] - x[1:]) * heights
        return float(np.mean(np.sum(terms, axis=0)))


def _interpolated_pr_terms(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """The PR-AUC increments between successive thresholds with precision interpolated
    as Davis & Goadrich (2006) do (Keras's ``interpolate_pr_auc``)."""
    dtp = tp[:-1] - tp[1:]
    p = tp + fp
    dp = p[:-1] - p[1:]
    slope = _divide_no_nan(dtp, np.maximum(dp, 0))
    intercept = tp[1:] - slope * p[1:]
    both = (p[:-1] > 0) & (p[1:] > 0)
    ratio = np.where(both, _divide_no_nan(p[:-1], np.maximum(p[1:], 0)), 1.0)
    with np.errstate(divide="ignore"):
        log_ratio = np.log(np.where(ratio > 0, ratio, 1.0))
    return _divide_no_nan(slope * (dtp + intercept * log_ratio), np.maximum(tp[1:] + fn[1:], 0))


class F1Score(CountMetric):
    """The F1 score ``2 * precision * recall / (precision + recall)`` per class.

    A prediction is positive where it is its row's maximum (``threshold=None``) or
    above ``threshold``.

    Args:
        average: ``None`` (one score per class: an array), ``"micro"`` (one score of
            all the elements counted together), ``"macro"`` (the mean of the classes'
            scores) or ``"weighted"`` (their mean weighted by each class's positives).
        threshold: ``None`` or a float with ``0 < threshold <= 1``.
        name: ``"f1_score"`` by default.
    """

    default_name = "f1_score"
    AVERAGES: ClassVar[tuple[str | None, ...]] = (None, "micro", "macro", "weighted")

    def __init__(
        self, average: str | None = None, threshold: float | None = None, name: str | None = None
    ) -> None:
        if average not in self.AVERAGES:
            raise ValueError(
                "average must be one of None, 'micro', 'macro', 'weighted', received "
                f"average={average!r}"
            )
        if threshold is not None:
            if not isinstance(threshold, float):
                raise TypeError(
                    f"threshold must be a Python float or None, received threshold={threshold!r}"
                )
            if not 0.0 < threshold <= 1.0:
                raise ValueError(f"threshold must satisfy 0 < threshold <= 1, received {threshold}")
        super().__init__(name)
        self.average = average
        self.threshold = threshold

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "average": self.average, "threshold": self.threshold}

    def counts(
        self, engine: Engine, Y_pred: Array, Y_true: Array, sample_weight: Array | None
    ) -> Array:
        value = 0.0 if self.threshold is None else self.threshold
        thresholds = self._thresholds_on(engine, Y_pred.dtype, np.asarray([value]))
        return engine.confusion_counts(
            Y_pred,
            Y_true,
            thresholds,
            sample_weight=sample_weight,
            per_label=self.average != "micro",
            row_max=self.threshold is None,
        )

    def result(self, counts: np.ndarray) -> Any:
        tp, fp, _, fn = (counts[q, 0] for q in range(4))  # each (L,)
        precision = tp / (tp + fp + EPSILON)
        recall = tp / (tp + fn + EPSILON)
        f1 = 2.0 * precision * recall / (precision + recall + EPSILON)
        if self.average == "weighted":
            support = tp + fn
            return float(np.sum(f1 * support / (np.sum(support) + EPSILON)))
        if self.average is not None:
            return float(np.mean(f1))
        return f1


CLASSES: dict[str, type[MetricObject]] = {
    cls.__name__: cls
    for cls in (
        AUC,
        Precision,
        Recall,
        F1Score,
        TopKCategoricalAccuracy,
        SparseTopKCategoricalAccuracy,
        MeanSquaredError,
        MeanAbsoluteError,
        RootMeanSquaredError,
        BinaryAccuracy,
        CategoricalAccuracy,
        SparseCategoricalAccuracy,
    )
}

#: the strings ``compile(metrics=...)`` resolves to one of these classes (Keras's
#: ``metrics.get``: the class name or its snake-case name), other than the names that
#: ``dlcore.metrics`` resolves itself (accuracies and losses)
STRING_NAMES: dict[str, type[MetricObject]] = {
    **CLASSES,
    "auc": AUC,
    "precision": Precision,
    "recall": Recall,
    "f1_score": F1Score,
    "top_k_categorical_accuracy": TopKCategoricalAccuracy,
    "sparse_top_k_categorical_accuracy": SparseTopKCategoricalAccuracy,
    "root_mean_squared_error": RootMeanSquaredError,
}


def from_string(identifier: str) -> MetricObject:
    """The metric ``identifier`` names, with its defaults, reported under ``identifier``."""
    metric = STRING_NAMES[identifier]()
    metric.name = identifier
    return metric


def serialize(metric: Any) -> Any:
    """A name as it is; a metric object as ``{"class_name", "config"}``."""
    if isinstance(metric, MetricObject):
        return {"class_name": type(metric).__name__, "config": metric.get_config()}
    return metric


def deserialize(item: Any) -> Any:
    """``serialize``'s inverse."""
    if isinstance(item, Mapping):
        name = item.get("class_name")
        if name not in CLASSES:
            raise ValueError(
                f"unknown metric class {name!r} in the model file; known: {', '.join(CLASSES)}"
            )
        return CLASSES[name].from_config(item.get("config", {}))
    return item
