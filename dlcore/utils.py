"""Data helpers with Keras's names and behaviour: ``to_categorical``, ``normalize`` and
``Sequence`` (Keras's ``PyDataset``), the base class of datasets read batch by batch."""

from __future__ import annotations

from typing import Any

import numpy as np

from dlcore.batch_sources import Sequence

# Keras 3's name for it
PyDataset = Sequence


def to_categorical(y: Any, num_classes: int | None = None, dtype: str = "float32") -> np.ndarray:
    """Convert integer class labels to one-hot rows.

    As in Keras, a trailing axis of size 1 is dropped first, so labels of shape
    ``(N, 1)`` give ``(N, num_classes)``, like labels of shape ``(N,)``.

    Args:
        y: class labels, integers from 0 to ``num_classes - 1``, of any shape
            ``S`` (a list, or an array of an integer dtype, or floats holding
            whole numbers).
        num_classes: number of classes; ``None`` means ``max(y) + 1``.
        dtype: dtype of the result.

    Returns:
        A ``numpy.ndarray`` of shape ``S + (num_classes,)`` (``S`` without a
        trailing 1) and ``dtype``, with 1 at each label's index and 0 elsewhere.

    Example:

    >>> to_categorical([0, 2, 1])
    array([[1., 0., 0.],
           [0., 0., 1.],
           [0., 1., 0.]], dtype=float32)
    """
    try:
        labels = np.asarray(y)
    except (TypeError, ValueError) as e:
        raise ValueError(f"to_categorical expected an array of integer class labels: {e}") from None
    if labels.dtype.kind not in "biuf":
        raise ValueError(
            f"to_categorical expected integer class labels, received an array of dtype "
            f"{labels.dtype}; map the labels to integers 0..K-1 first, e.g. with "
            f"numpy.unique(y, return_inverse=True)"
        )
    if labels.size == 0:
        raise ValueError(
            f"to_categorical expected at least one label, received an empty array of "
            f"shape {labels.shape}"
        )
    if labels.dtype.kind == "f":
        not_whole = ~np.isfinite(labels) | (labels != np.round(labels))
        if not_whole.any():
            bad = float(labels[not_whole].flat[0])
            raise ValueError(
                f"to_categorical expected whole-number class labels, received the value {bad!r}; "
                f"use integer labels 0..K-1 (for probabilities or one-hot targets, "
                f"to_categorical is not needed)"
            )
    flat = labels.reshape(-1).astype(np.int64)
    lowest = int(flat.min())
    if lowest < 0:
        raise ValueError(
            f"to_categorical expected class labels >= 0, received the label {lowest}; "
            f"map the labels to 0..K-1 first, e.g. with numpy.unique(y, return_inverse=True)"
        )
    highest = int(flat.max())
    if num_classes is None:
        num_classes = highest + 1
    elif isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise ValueError(
            f"expected num_classes to be a positive int or None, received {num_classes!r}"
        )
    elif num_classes < 1:
        raise ValueError(f"expected num_classes >= 1, received num_classes={num_classes}")
    elif highest >= num_classes:
        raise ValueError(
            f"to_categorical received the label {highest}, which is out of range for "
            f"num_classes={num_classes} (labels must be in 0..{num_classes - 1}); pass "
            f"num_classes={highest + 1} or more, or leave num_classes=None to use max(y) + 1"
        )
    shape = labels.shape
    if len(shape) > 1 and shape[-1] == 1:
        shape = shape[:-1]
    out = np.zeros((flat.shape[0], int(num_classes)), dtype=dtype)
    out[np.arange(flat.shape[0]), flat] = 1
    return out.reshape(shape + (int(num_classes),))


def normalize(x: Any, axis: int | None = -1, order: Any = 2) -> np.ndarray:
    """Divide an array by its norm along an axis (vectors of norm 0 are left at 0).

    Args:
        x: a numeric array of any shape.
        axis: the axis holding the vectors to normalise; ``None`` normalises the
            whole array, flattened, as one vector.
        order: the vector norm's order, as ``numpy.linalg.norm``'s ``ord``
            (2, 1, ``numpy.inf``, ...).

    Returns:
        An array of ``x``'s shape; float ``x`` keeps its dtype, other numeric
        dtypes give float64.
    """
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"normalize expected a numeric array, received dtype {arr.dtype}")
    if axis is not None and not -arr.ndim <= axis < arr.ndim:
        raise ValueError(
            f"normalize received axis={axis} for an array of shape {arr.shape}; "
            f"expected an axis in [{-arr.ndim}, {arr.ndim - 1}] or None"
        )
    if axis is None:
        norm = np.linalg.norm(arr.reshape(-1), ord=order)
    else:
        norm = np.linalg.norm(arr, ord=order, axis=axis, keepdims=True)
    divisor = np.where(norm == 0, 1, norm)
    result = arr / divisor
    return result.astype(arr.dtype) if arr.dtype.kind == "f" else result
