"""The normalization operations written against the array API: the reference of
``Engine.batch_moments`` ... ``Engine.standardize`` (their docstrings in
``backends/base.py`` state the shapes and formulas).

Every function takes the namespace ``xp`` first and allocates its results.
"""

from __future__ import annotations

from typing import Any

Array = Any

#: the floor of ``sqrt(variance)`` in ``standardize``: Keras's ``backend.epsilon()``
STANDARDIZE_FLOOR = 1e-7


def batch_moments(xp: Any, X: Array) -> tuple[Array, Array]:
    """Column means and biased variances of ``X`` ``(N, F)``: two ``(F,)`` arrays."""
    mean = xp.mean(X, axis=0)
    centered = X - mean
    return mean, xp.mean(centered * centered, axis=0)


def _inverse_std(xp: Any, variance: Array, epsilon: float) -> Array:
    return 1.0 / xp.sqrt(variance + epsilon)


def batch_normalize(
    xp: Any,
    X: Array,
    mean: Array,
    variance: Array,
    gamma: Array | None,
    beta: Array | None,
    epsilon: float,
) -> tuple[Array, Array]:
    """``(gamma * Xhat + beta, Xhat)`` with ``Xhat = (X - mean) / sqrt(variance + epsilon)``."""
    Xhat = (X - mean) * _inverse_std(xp, variance, epsilon)
    Y = Xhat if gamma is None else Xhat * gamma
    if beta is not None:
        Y = Y + beta
    return Y, Xhat


def backprop_batch_normalize(
    xp: Any,
    dY: Array,
    Xhat: Array,
    variance: Array,
    gamma: Array | None,
    epsilon: float,
    batch_statistics: bool,
    dgamma: Array | None,
    dbeta: Array | None,
    need_dX: bool,
) -> Array | None:
    """Writes ``dgamma`` and ``dbeta`` (unless ``None``), returns ``dX`` or ``None``."""
    sum_dy = xp.sum(dY, axis=0)
    sum_dy_xhat = xp.sum(dY * Xhat, axis=0)
    if dgamma is not None:
        dgamma[...] = sum_dy_xhat
    if dbeta is not None:
        dbeta[...] = sum_dy
    if not need_dX:
        return None
    factor = _inverse_std(xp, variance, epsilon)
    if gamma is not None:
        factor = factor * gamma
    if not batch_statistics:
        return dY * factor
    n = dY.shape[0]
    return (factor / n) * (n * dY - sum_dy - Xhat * sum_dy_xhat)


def update_moving_average(xp: Any, moving: Array, value: Array, momentum: float) -> None:
    """``moving = moving * momentum + value * (1 - momentum)`` in place."""
    moving[...] = moving * momentum + value * (1.0 - momentum)


def layer_normalize(
    xp: Any, X: Array, gamma: Array | None, beta: Array | None, epsilon: float
) -> tuple[Array, Array, Array]:
    """``(Y, Xhat, inv_std)`` of each row normalized over its features."""
    mean = xp.mean(X, axis=1, keepdims=True)
    centered = X - mean
    inv_std = _inverse_std(xp, xp.mean(centered * centered, axis=1, keepdims=True), epsilon)
    Xhat = centered * inv_std
    Y = Xhat if gamma is None else Xhat * gamma
    if beta is not None:
        Y = Y + beta
    return Y, Xhat, xp.reshape(inv_std, (-1,))


def backprop_layer_normalize(
    xp: Any,
    dY: Array,
    Xhat: Array,
    inv_std: Array,
    gamma: Array | None,
    dgamma: Array | None,
    dbeta: Array | None,
    need_dX: bool,
) -> Array | None:
    """Writes ``dgamma`` and ``dbeta`` (unless ``None``), returns ``dX`` or ``None``."""
    if dgamma is not None:
        dgamma[...] = xp.sum(dY * Xhat, axis=0)
    if dbeta is not None:
        dbeta[...] = xp.sum(dY, axis=0)
    if not need_dX:
        return None
    G = dY if gamma is None else dY * gamma
    f = G.shape[1]
    row_g = xp.sum(G, axis=1, keepdims=True)
    row_g_xhat = xp.sum(G * Xhat, axis=1, keepdims=True)
    return (xp.reshape(inv_std, (-1, 1)) / f) * (f * G - row_g - Xhat * row_g_xhat)


def standardize(xp: Any, X: Array, mean: Array | None, variance: Array, invert: bool) -> Array:
    """``(X - mean) / d`` or, with ``invert``, ``mean + X * d``; ``d = max(sqrt(var), 1e-7)``."""
    root = xp.sqrt(variance)
    d = xp.maximum(root, xp.full_like(root, STANDARDIZE_FLOOR))
    if invert:
        return X * d if mean is None else mean + X * d
    return X / d if mean is None else (X - mean) / d
