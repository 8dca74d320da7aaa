"""``sample_weight`` and ``class_weight``: checked on the host and turned into one weight
per sample and output, as Keras 3 uses them.

A sample's weight multiplies its loss: the weighted loss of a batch is
``sum(w * loss) / N``, Keras's ``"sum_over_batch_size"`` reduction, and its gradient
rows are scaled alike; ``weighted_metrics`` report ``sum(w * value) / sum(w)``.
``class_weight`` gives each sample the weight of its class (the label, or the argmax of
a one-hot row, or the rounded value of a single binary output).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def checked_weights(
    sample_weight: Any,
    class_weight: Any,
    ys: Sequence[np.ndarray],
    output_names: Sequence[str],
    dtype: str,
    caller: str,
    name: str = "sample_weight",
) -> list[np.ndarray] | None:
    """One weight per sample for each output, or ``None`` when neither argument is given.

    Args:
        sample_weight: ``None``; one array ``(N,)`` or ``(N, 1)`` of non-negative finite
            numbers for every output; or a list (one per output) or a dict by output name.
        class_weight: ``None``, or a dict ``{class index: weight}`` for a model with one
            output; every class in the targets needs a weight.
        ys: the checked targets, one array per output, ``N`` rows each.
        output_names: the model's output names (the keys of a dict of weights).
        dtype: the model's float dtype, the dtype of the returned arrays.
        caller: the method the arguments were given to, for the messages.
        name: the argument's name in the messages (``sample_weight``, ``w_val``).

    Returns:
        ``None``, or a list with one ``(N,)`` array of ``dtype`` per output (the same
        array for every output when one was given for all).

    Raises:
        ValueError: both arguments are given; a weight is negative, not finite, of the
            wrong length or shape; a class of the targets has no weight.
        TypeError: an argument is of the wrong type.
    """
    if sample_weight is not None and class_weight is not None:
        raise ValueError(
            f"{caller}: give sample_weight or class_weight, not both (as in Keras); to "
            "combine them, multiply each sample's weight by its class's weight yourself "
            "and pass sample_weight"
        )
    n = len(ys[0])
    if class_weight is not None:
        if len(ys) != 1:
            raise ValueError(
                f"{caller}: class_weight is supported for models with one output (as in "
                f"Keras); this model has {len(ys)}: give sample_weight per output instead"
            )
        return [_class_weights(class_weight, ys[0], dtype, caller)]
    if sample_weight is None:
        return None
    names = list(output_names)
    if isinstance(sample_weight, Mapping):
        unknown = [key for key in sample_weight if key not in names]
        missing = [key for key in names if key not in sample_weight]
        if unknown or missing:
            raise ValueError(
                f"{caller}: {name} as a dict expected one entry per output {names}; "
                f"unknown: {unknown}, missing: {missing}"
            )
        given = [sample_weight[key] for key in names]
    elif isinstance(sample_weight, (list, tuple)) and len(names) > 1:
        if len(sample_weight) != len(names):
            raise ValueError(
                f"{caller}: {name} as a list expected one array per output ({len(names)}: "
                f"{names}), received {len(sample_weight)}"
            )
        given = list(sample_weight)
    else:
        one = _one_weight(sample_weight, n, dtype, caller, name)
        return [one] * len(names)
    return [
        _one_weight(value, n, dtype, caller, f"{name}[{key!r}]") for value, key in zip(given, names)
    ]


def _one_weight(value: Any, n: int, dtype: str, caller: str, name: str) -> np.ndarray:
    """``value`` as a ``(n,)`` array of ``dtype`` if it is ``n`` non-negative finite numbers."""
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise TypeError(
            f"{caller}: {name} expected real numbers, one per sample, received dtype {array.dtype}"
        )
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1 or array.shape[0] != n:
        raise ValueError(
            f"{caller}: {name} expected shape ({n},) (one weight per sample; (N, 1) is "
            f"accepted too), received shape {array.shape}"
        )
    weights = array.astype(np.float64)
    if not np.isfinite(weights).all():
        first = int(np.flatnonzero(~np.isfinite(weights))[0])
        raise ValueError(
            f"{caller}: {name} expected finite numbers, received {weights[first]!r} at "
            f"sample {first}"
        )
    if (weights < 0).any():
        first = int(np.flatnonzero(weights < 0)[0])
        raise ValueError(
            f"{caller}: {name} expected non-negative weights, received {weights[first]!r} at "
            f"sample {first}; a weight scales its sample's loss: use 0 to ignore a sample"
        )
    return np.ascontiguousarray(weights, dtype=dtype)


def _class_weights(class_weight: Any, y: np.ndarray, dtype: str, caller: str) -> np.ndarray:
    """Each sample's weight, the weight of its class in ``class_weight``."""
    if not isinstance(class_weight, Mapping):
        raise TypeError(
            f"{caller}: class_weight expected a dict {{class index: weight}}, e.g. "
            f"{{0: 1.0, 1: 5.0}}, received {type(class_weight).__name__}"
        )
    table: dict[int, float] = {}
    for key, weight in class_weight.items():
        if isinstance(key, (bool, np.bool_)) or not isinstance(key, numbers.Integral) or key < 0:
            raise ValueError(
                f"{caller}: class_weight expected class indices (integers >= 0) as keys, "
                f"received {key!r}"
            )
        if (
            isinstance(weight, (bool, np.bool_))
            or not isinstance(weight, numbers.Real)
            or not math.isfinite(float(weight))
            or weight < 0
        ):
            raise ValueError(
                f"{caller}: class_weight expected a non-negative finite weight for each "
                f"class, received {weight!r} for class {key!r}"
            )
        table[int(key)] = float(weight)
    labels = _class_labels(y)
    classes = np.unique(labels)
    missing = [int(c) for c in classes if int(c) not in table]
    if missing:
        raise ValueError(
            f"{caller}: class_weight has no weight for class(es) {missing[:10]} found in "
            f"the targets; give every class a weight, e.g. "
            f"{ {int(c): table.get(int(c), 1.0) for c in classes[:10]} }"
        )
    lookup = np.zeros(int(classes.max()) + 1 if classes.size else 1, dtype=np.float64)
    for c in classes:
        lookup[int(c)] = table[int(c)]
    return np.ascontiguousarray(lookup[labels], dtype=dtype)


def _class_labels(y: np.ndarray) -> np.ndarray:
    """The class index of each sample: the label, the argmax of a one-hot row, or the
    rounded value of a single binary output, as Keras reads them."""
    if y.ndim > 1 and y.shape[-1] != 1:
        return np.argmax(y.reshape(len(y), -1), axis=-1)
    labels = np.round(y.reshape(len(y)).astype(np.float64))
    return labels.astype(np.int64)
