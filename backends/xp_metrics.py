"""The metric operations of the generic engine, written against the array API (``xp``).

``accuracy_values`` gives one accuracy per sample (what Keras's accuracy metrics
average), ``confusion_counts`` the weighted true/false positive/negative counts at
a set of thresholds (what AUC, Precision, Recall and F1Score accumulate). The numba
engine computes the same numbers in ``kernels/metrics.py``.
"""

from __future__ import annotations

from typing import Any

from .base import Array

ACCURACY_KINDS = ("binary", "categorical", "sparse", "top_k", "sparse_top_k")

# |y_pred| at or below this is "no prediction" for the row-maximum rule of F1Score.
ROW_MAX_EPSILON = 1e-9


def accuracy_values(
    xp: Any, kind: str, Y_pred: Array, Y_true: Array, *, k: int = 1, threshold: float = 0.5
) -> Array:
    """One accuracy per sample, float ``(N,)`` in the dtype of ``Y_pred``.

    ``"binary"``: the fraction of the row's elements where ``Y_pred > threshold``
    equals ``Y_true``; ``"categorical"`` / ``"sparse"``: 1 where the argmax of the row
    is the argmax of ``Y_true`` / the label; ``"top_k"`` / ``"sparse_top_k"``: 1 where
    fewer than ``k`` scores of the row are greater than the target class's score
    (NaN scores of the target count as the lowest).
    """
    dtype = Y_pred.dtype
    if kind == "binary":
        predicted = xp.astype(Y_pred > threshold, dtype)
        return xp.mean(xp.astype(predicted == Y_true, dtype), axis=-1)
    if kind == "categorical":
        hits = xp.argmax(Y_pred, axis=-1) == xp.argmax(Y_true, axis=-1)
        return xp.astype(hits, dtype)
    if kind == "sparse":
        return xp.astype(xp.argmax(Y_pred, axis=-1) == Y_true, dtype)
    if kind not in ACCURACY_KINDS:
        raise KeyError(f"unknown accuracy kind {kind!r}; available: {', '.join(ACCURACY_KINDS)}")
    target = xp.argmax(Y_true, axis=-1) if kind == "top_k" else Y_true
    columns = xp.arange(Y_pred.shape[-1], device=getattr(Y_pred, "device", None))
    at_target = xp.sum(
        xp.where(columns[None, :] == target[:, None], Y_pred, xp.zeros_like(Y_pred)), axis=-1
    )
    at_target = xp.where(xp.isnan(at_target), xp.full_like(at_target, -xp.inf), at_target)
    greater = xp.sum(xp.astype(Y_pred > at_target[:, None], xp.int64), axis=-1)
    return xp.astype(greater < k, dtype)


def confusion_counts(
    xp: Any,
    Y_pred: Array,
    Y_true: Array,
    thresholds: Array,
    *,
    sample_weight: Array | None = None,
    per_label: bool = False,
    class_id: int | None = None,
    top_k: int | None = None,
    row_max: bool = False,
) -> Array:
    """Weighted confusion counts, float64 ``(4, T, L)``: true positives, false positives,
    true negatives, false negatives at each threshold (see ``Engine.confusion_counts``)."""
    P, Y = Y_pred, Y_true
    if top_k is not None:
        P = _keep_top_k(xp, P, top_k)
    if row_max:
        largest = xp.max(P, axis=-1, keepdims=True)
        positive = ((P >= largest) & (xp.abs(P) > ROW_MAX_EPSILON))[None, ...]
    if class_id is not None:
        P, Y = P[:, class_id : class_id + 1], Y[:, class_id : class_id + 1]
        if row_max:
            positive = positive[:, :, class_id : class_id + 1]
    if not row_max:
        positive = P[None, ...] > xp.reshape(thresholds, (-1, 1, 1))
    labels = (Y != 0)[None, ...]
    if sample_weight is None:
        weights = xp.ones(P.shape, dtype=xp.float64, device=getattr(P, "device", None))
    else:
        weights = xp.astype(xp.reshape(sample_weight, (-1, 1)), xp.float64) * xp.ones(
            P.shape, dtype=xp.float64, device=getattr(P, "device", None)
        )
    zero = xp.zeros_like(weights)
    axes = (1,) if per_label else (1, 2)
    counts = []
    for predicted, actual in (
        (positive, labels),
        (positive, ~labels),
        (~positive, ~labels),
        (~positive, labels),
    ):
        summed = xp.sum(
            xp.where(predicted & actual, weights[None, ...], zero[None, ...]), axis=axes
        )
        counts.append(summed if per_label else xp.reshape(summed, (-1, 1)))
    return xp.stack(counts)


def _keep_top_k(xp: Any, P: Array, k: int) -> Array:
    """``P`` with every element outside its row's ``k`` largest set to ``-inf``; among equal
    scores the earlier column ranks higher (as a stable top-k)."""
    columns = xp.arange(P.shape[-1], device=getattr(P, "device", None))
    greater = P[:, None, :] > P[:, :, None]  # [n, i, j]: column j outranks i by score
    earlier = (columns[None, :] < columns[:, None])[None, ...]
    earlier_tie = (P[:, None, :] == P[:, :, None]) & earlier
    rank = xp.sum(xp.astype(greater | earlier_tie, xp.int64), axis=-1)
    return xp.where(rank < k, P, xp.full_like(P, -xp.inf))
