"""Checks of the arrays users pass to fit, evaluate and predict.

Each check runs on the host before any work starts and raises an exception
that says what was expected, what was received and how to fix it.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np


def as_numeric(data: Any, name: str) -> np.ndarray:
    """``data`` as a NumPy array of numbers, or a TypeError/ValueError that says why not."""
    if data is None:
        raise ValueError(f"{name} is None; pass a NumPy array (or nested lists) of numbers")
    try:
        array = np.asarray(data)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"{name} could not be converted to a numeric array ({error}); "
            "pass a rectangular NumPy array of numbers"
        ) from None
    if array.dtype.kind not in "biuf":
        if array.dtype.kind == "O":
            try:
                return as_numeric(array.astype(np.float64), name)
            except (ValueError, TypeError):
                pass
        raise TypeError(
            f"{name} must hold numbers; received an array of dtype {array.dtype} "
            f"(e.g. {array.reshape(-1)[:1].tolist()}). Convert it with "
            f"np.asarray({name}, dtype='float32') after encoding any text as numbers"
        )
    if array.size == 0:
        raise ValueError(f"{name} is empty (shape {array.shape}); pass at least one sample")
    # A sum is finite only if every term is; only when it is not does the exact test
    # (a boolean array as large as the data) run, to say where and to rule out overflow.
    if array.dtype.kind == "f" and not np.isfinite(np.sum(array)) and not np.isfinite(array).all():
        bad = np.argwhere(~np.isfinite(array))[0]
        count = int(np.count_nonzero(~np.isfinite(array)))
        raise ValueError(
            f"{name} contains {count} NaN or infinite value(s), the first at index "
            f"{tuple(int(i) for i in bad)}; remove or impute them before training"
        )
    return array


def check_range(array: np.ndarray, dtype: str, name: str) -> None:
    """Raise when finite values of ``array`` would overflow to infinity in ``dtype``."""
    limit = float(np.finfo(dtype).max)
    if array.dtype.kind != "f" or array.dtype.itemsize <= np.dtype(dtype).itemsize:
        return  # integers and floats no wider than dtype always fit
    largest = max(abs(float(np.max(array))), abs(float(np.min(array))))
    if largest > limit:
        raise ValueError(
            f"{name} holds values up to {largest:g}, beyond the range of the model's {dtype} "
            f"(largest {limit:g}); rescale them or use dlcore.set_floatx('float64') before "
            "building the model"
        )


def check_features(
    x: Any, features: int | None, *, dtype: str = "float64", name: str = "x"
) -> np.ndarray:
    """Validate model inputs: a finite numeric ``(N, features)`` array.

    Args:
        x: the user's inputs.
        features: the model's input width, or ``None`` when the model is not built yet.
        dtype: the model's float dtype; values beyond its range are rejected.

    Returns:
        ``x`` as a NumPy array of shape ``(N, F)``.
    """
    array = as_numeric(x, name)
    if array.ndim == 1 and features == 1:
        array = array.reshape(-1, 1)
    if array.ndim != 2:
        if array.ndim > 2:
            hint = f" (use {name}.reshape(len({name}), -1) to flatten each sample)"
        elif features is not None and len(array) == features:
            hint = f" (use {name}.reshape(1, -1) for a single sample)"
        else:
            hint = f" (use {name}.reshape(-1, 1) for one feature per sample)"
        raise ValueError(
            f"expected {name} of shape (samples, features), received {name}.shape={array.shape}"
            + hint
        )
    if features is not None and array.shape[1] != features:
        raise ValueError(
            f"the model expects inputs with {features} features (input_shape=({features},)), "
            f"received {name}.shape={array.shape}"
        )
    check_range(array, dtype, name)
    return array


def check_sample_counts(x: np.ndarray, y: np.ndarray, *, x_name: str = "x", y_name: str = "y"):
    """Raise when ``x`` and ``y`` do not hold the same number of samples."""
    if len(x) != len(y):
        raise ValueError(
            f"{x_name} and {y_name} must hold the same number of samples; received "
            f"{x_name}.shape={x.shape} and {y_name}.shape={y.shape}"
        )


def check_targets(
    y: Any, loss_name: str, units: int, *, dtype: str = "float64", name: str = "y"
) -> np.ndarray:
    """Validate targets for ``loss_name`` and an output layer of ``units`` units.

    Returns:
        int64 labels ``(N,)`` for ``sparse_categorical_crossentropy``, else a
        float64 array ``(N, units)``.
    """
    array = as_numeric(y, name)
    if loss_name == "sparse_categorical_crossentropy":
        if array.ndim == 2 and array.shape[1] == 1:
            array = array[:, 0]
        if array.ndim != 1:
            raise ValueError(
                f"sparse_categorical_crossentropy expects integer class labels of shape "
                f"(samples,), received {name}.shape={array.shape}; for one-hot targets use "
                "loss='categorical_crossentropy'"
            )
        if array.dtype.kind == "f" and not np.all(array == np.round(array)):
            raise ValueError(
                f"sparse_categorical_crossentropy expects integer class labels, received "
                f"non-integer values such as {array[array != np.round(array)][0].item()!r}"
            )
        labels = array.astype(np.int64)
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= units:
            bad = low if low < 0 else high
            raise ValueError(
                f"label {bad} in {name} is out of range for the output layer of {units} "
                f"units (valid labels 0..{units - 1}); give the last Dense layer as many "
                "units as there are classes"
            )
        return labels
    if array.ndim == 1:
        if units == 1:
            array = array.reshape(-1, 1)
        elif loss_name == "categorical_crossentropy" and np.all(array == np.round(array)):
            raise ValueError(
                f"categorical_crossentropy expects one-hot targets of shape (samples, {units}), "
                f"received integer labels {name}.shape={array.shape}; convert them with "
                f"dlcore.utils.to_categorical({name}, {units}) or use "
                "loss='sparse_categorical_crossentropy'"
            )
    if array.ndim != 2 or array.shape[1] != units:
        raise ValueError(
            f"the model's output layer has {units} units, so {loss_name} expects {name} of "
            f"shape (samples, {units}); received {name}.shape={array.shape}"
        )
    if loss_name == "binary_crossentropy" and (array.min() < 0 or array.max() > 1):
        raise ValueError(
            f"binary_crossentropy expects targets in [0, 1], received values from "
            f"{array.min().item()!r} to {array.max().item()!r}"
        )
    if loss_name == "categorical_crossentropy" and array.min() < 0:
        raise ValueError(
            f"categorical_crossentropy expects non-negative (one-hot) targets, received "
            f"a minimum of {array.min().item()!r}"
        )
    check_range(array, dtype, name)
    return array.astype(np.float64, copy=False)


def check_positive_int(value: Any, name: str, *, allow_none: bool = False) -> int | None:
    """``value`` as a positive int, or a ValueError naming ``name``."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, received {name}={value!r}")
    return int(value)
