"""Loss values and their gradients for the generic engine, written against the array API.

Every function takes the array namespace ``xp`` first, so the same code serves NumPy,
CuPy (through ``array_api_compat``) and ``array_api_strict``. The definitions follow
Keras 3: a per-sample loss (a mean or a sum over the ``O`` outputs of a row), then the
``"sum_over_batch_size"`` reduction, a mean over the ``N`` rows of the batch.

Each loss is a pair of private functions of ``(xp, P, Y)`` on float ``(N, O)`` arrays:
one in ``_VALUES`` returning the per-sample loss ``(N,)``, one in ``_GRADIENTS``
returning its exact gradient with respect to ``P``, ``(N, O)``. Where Keras clips, the
gradient is zero for the clipped elements. Only the cross-entropies accept logits;
their logit forms live in ``_LOGIT_VALUES`` and ``_LOGIT_GRADIENTS``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import ModuleType

from . import custom
from .base import Array
from .names import EPSILON

_EPS = EPSILON
_LOG2 = math.log(2.0)


# ---------------------------------------------------------------------- helpers
def _log_softmax(xp, Z: Array) -> Array:
    shifted = Z - xp.max(Z, axis=-1, keepdims=True)
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=-1, keepdims=True))


def _sigmoid(xp, Z: Array) -> Array:
    # exp(-|z|) never overflows; the two branches are the same function.
    e = xp.exp(-xp.abs(Z))
    return xp.where(Z >= 0.0, 1.0 / (1.0 + e), e / (1.0 + e))


def _softplus(xp, X: Array) -> Array:
    return xp.clip(X, min=0.0) + xp.log1p(xp.exp(-xp.abs(X)))


def _mask(xp, condition: Array, like: Array) -> Array:
    return xp.astype(condition, like.dtype)


def _one_hot(xp, labels: Array, like: Array) -> Array:
    """Float ``(N, O)`` one-hot rows of int64 ``labels`` ``(N,)``, dtype and device of ``like``."""
    classes = xp.arange(like.shape[-1], device=like.device)
    return xp.astype(labels[:, None] == classes[None, :], like.dtype)


def _inside(xp, X: Array, low: float, high: float) -> Array:
    """1.0 where ``clip(X, low, high)`` leaves ``X`` unchanged (and passes its gradient)."""
    return _mask(xp, xp.logical_and(X >= low, X <= high), X)


def _hinge_labels(xp, Y: Array) -> Array:
    # Keras turns 0/1 labels into -1/1 when every label is 0 or 1; a 0-d condition in
    # `where` keeps that decision on the engine (no device-to-host sync).
    is_binary = xp.all(xp.logical_or(Y == 0.0, Y == 1.0))
    return xp.where(is_binary, 2.0 * Y - 1.0, Y)


def _l2_normalize(xp, X: Array) -> tuple[Array, Array, Array]:
    """Keras's ``l2_normalize`` of each row: ``X * rsqrt(max(sum(X**2), eps**2))``.

    Returns the normalised rows, the ``(N, 1)`` inverse norms and whether each row's
    norm is at or above the clamp (``(N, 1)`` bool).
    """
    square_sum = xp.sum(X * X, axis=-1, keepdims=True)
    inv_norm = 1.0 / xp.sqrt(xp.clip(square_sum, min=_EPS * _EPS))
    return X * inv_norm, inv_norm, square_sum >= _EPS * _EPS


# ---------------------------------------------------------------------- per-sample values
def _mse(xp, P, Y):
    return xp.mean((Y - P) ** 2, axis=-1)


def _mae(xp, P, Y):
    return xp.mean(xp.abs(Y - P), axis=-1)


def _mape(xp, P, Y):
    return 100.0 * xp.mean(xp.abs(Y - P) / xp.clip(xp.abs(Y), min=_EPS), axis=-1)


def _msle(xp, P, Y):
    diff = xp.log1p(xp.clip(P, min=_EPS)) - xp.log1p(xp.clip(Y, min=_EPS))
    return xp.mean(diff * diff, axis=-1)


def _hinge(xp, P, Y):
    return xp.mean(xp.clip(1.0 - _hinge_labels(xp, Y) * P, min=0.0), axis=-1)


def _squared_hinge(xp, P, Y):
    margin = xp.clip(1.0 - _hinge_labels(xp, Y) * P, min=0.0)
    return xp.mean(margin * margin, axis=-1)


def _categorical_hinge(xp, P, Y):
    pos = xp.sum(Y * P, axis=-1)
    neg = xp.max((1.0 - Y) * P, axis=-1)
    return xp.clip(neg - pos + 1.0, min=0.0)


def _log_cosh(xp, P, Y):
    X = P - Y
    return xp.mean(X + _softplus(xp, -2.0 * X) - _LOG2, axis=-1)


def _cce(xp, P, Y):
    Q = xp.clip(P / xp.sum(P, axis=-1, keepdims=True), min=_EPS, max=1.0 - _EPS)
    return -xp.sum(Y * xp.log(Q), axis=-1)


def _cce_logits(xp, Z, Y):
    return -xp.sum(Y * _log_softmax(xp, Z), axis=-1)


def _bce(xp, P, Y):
    C = xp.clip(P, min=_EPS, max=1.0 - _EPS)
    return -xp.mean(Y * xp.log(C) + (1.0 - Y) * xp.log(1.0 - C), axis=-1)


def _bce_logits(xp, Z, Y):
    return xp.mean(xp.clip(Z, min=0.0) - Z * Y + xp.log1p(xp.exp(-xp.abs(Z))), axis=-1)


def _kl(xp, P, Y):
    Yc = xp.clip(Y, min=_EPS, max=1.0)
    Pc = xp.clip(P, min=_EPS, max=1.0)
    return xp.sum(Yc * xp.log(Yc / Pc), axis=-1)


def _poisson(xp, P, Y):
    return xp.mean(P - Y * xp.log(P + _EPS), axis=-1)


def _cosine(xp, P, Y):
    U, _, _ = _l2_normalize(xp, Y)
    V, _, _ = _l2_normalize(xp, P)
    return -xp.sum(U * V, axis=-1)


# ---------------------------------------------------------------------- per-sample gradients
def _mse_grad(xp, P, Y):
    return (2.0 / P.shape[-1]) * (P - Y)


def _mae_grad(xp, P, Y):
    return xp.sign(P - Y) / P.shape[-1]


def _mape_grad(xp, P, Y):
    return (100.0 / P.shape[-1]) * xp.sign(P - Y) / xp.clip(xp.abs(Y), min=_EPS)


def _msle_grad(xp, P, Y):
    diff = xp.log1p(xp.clip(P, min=_EPS)) - xp.log1p(xp.clip(Y, min=_EPS))
    return (2.0 / P.shape[-1]) * diff * _mask(xp, P >= _EPS, P) / (1.0 + P)


def _hinge_grad(xp, P, Y):
    Y = _hinge_labels(xp, Y)
    return -Y * _mask(xp, Y * P < 1.0, P) / P.shape[-1]


def _squared_hinge_grad(xp, P, Y):
    Y = _hinge_labels(xp, Y)
    return (-2.0 / P.shape[-1]) * Y * xp.clip(1.0 - Y * P, min=0.0)


def _categorical_hinge_grad(xp, P, Y):
    negatives = (1.0 - Y) * P
    pos = xp.sum(Y * P, axis=-1, keepdims=True)
    neg = xp.max(negatives, axis=-1, keepdims=True)
    # The max picks one element (the first on ties); only it carries the gradient of `neg`.
    picked = _one_hot(xp, xp.argmax(negatives, axis=-1), P)
    return _mask(xp, neg - pos + 1.0 > 0.0, P) * (picked * (1.0 - Y) - Y)


def _log_cosh_grad(xp, P, Y):
    return xp.tanh(P - Y) / P.shape[-1]


def _cce_grad(xp, P, Y):
    total = xp.sum(P, axis=-1, keepdims=True)
    Q = P / total
    # dL/dQ through the clip, then through Q = P / sum(P): (G - sum(G * Q)) / sum(P).
    G = -Y / xp.clip(Q, min=_EPS, max=1.0 - _EPS) * _inside(xp, Q, _EPS, 1.0 - _EPS)
    return (G - xp.sum(G * Q, axis=-1, keepdims=True)) / total


def _cce_logits_grad(xp, Z, Y):
    softmax = xp.exp(_log_softmax(xp, Z))
    return softmax * xp.sum(Y, axis=-1, keepdims=True) - Y


def _bce_grad(xp, P, Y):
    C = xp.clip(P, min=_EPS, max=1.0 - _EPS)
    G = (1.0 - Y) / (1.0 - C) - Y / C
    return G * _inside(xp, P, _EPS, 1.0 - _EPS) / P.shape[-1]


def _bce_logits_grad(xp, Z, Y):
    return (_sigmoid(xp, Z) - Y) / Z.shape[-1]


def _kl_grad(xp, P, Y):
    Yc = xp.clip(Y, min=_EPS, max=1.0)
    Pc = xp.clip(P, min=_EPS, max=1.0)
    return -Yc / Pc * _inside(xp, P, _EPS, 1.0)


def _poisson_grad(xp, P, Y):
    return (1.0 - Y / (P + _EPS)) / P.shape[-1]


def _cosine_grad(xp, P, Y):
    U, _, _ = _l2_normalize(xp, Y)
    V, inv_norm, unclamped = _l2_normalize(xp, P)
    # d(P / |P|) removes the component along P; below the clamp the norm is a constant.
    projection = xp.sum(U * V, axis=-1, keepdims=True) * V * _mask(xp, unclamped, P)
    return (projection - U) * inv_norm


_PerSample = Callable[[object, Array, Array], Array]

_VALUES: dict[str, _PerSample] = {
    "mean_squared_error": _mse,
    "mean_absolute_error": _mae,
    "mean_absolute_percentage_error": _mape,
    "mean_squared_logarithmic_error": _msle,
    "squared_hinge": _squared_hinge,
    "hinge": _hinge,
    "categorical_hinge": _categorical_hinge,
    "log_cosh": _log_cosh,
    "categorical_crossentropy": _cce,
    "sparse_categorical_crossentropy": _cce,
    "binary_crossentropy": _bce,
    "kl_divergence": _kl,
    "poisson": _poisson,
    "cosine_similarity": _cosine,
}

_GRADIENTS: dict[str, _PerSample] = {
    "mean_squared_error": _mse_grad,
    "mean_absolute_error": _mae_grad,
    "mean_absolute_percentage_error": _mape_grad,
    "mean_squared_logarithmic_error": _msle_grad,
    "squared_hinge": _squared_hinge_grad,
    "hinge": _hinge_grad,
    "categorical_hinge": _categorical_hinge_grad,
    "log_cosh": _log_cosh_grad,
    "categorical_crossentropy": _cce_grad,
    "sparse_categorical_crossentropy": _cce_grad,
    "binary_crossentropy": _bce_grad,
    "kl_divergence": _kl_grad,
    "poisson": _poisson_grad,
    "cosine_similarity": _cosine_grad,
}

_LOGIT_VALUES: dict[str, _PerSample] = {
    "categorical_crossentropy": _cce_logits,
    "sparse_categorical_crossentropy": _cce_logits,
    "binary_crossentropy": _bce_logits,
}

_LOGIT_GRADIENTS: dict[str, _PerSample] = {
    "categorical_crossentropy": _cce_logits_grad,
    "sparse_categorical_crossentropy": _cce_logits_grad,
    "binary_crossentropy": _bce_logits_grad,
}


def _select(
    name: str, from_logits: bool, plain: dict[str, _PerSample], logits: dict[str, _PerSample]
) -> _PerSample:
    if from_logits and name in logits:
        return logits[name]
    return plain[name]


def _dense_targets(xp, name: str, Y_pred: Array, Y_true: Array) -> Array:
    if name == "sparse_categorical_crossentropy":
        return _one_hot(xp, Y_true, Y_pred)
    return Y_true


# ---------------------------------------------------------------------- public functions
def loss(
    xp: ModuleType, name: str, Y_pred: Array, Y_true: Array, *, from_logits: bool = False
) -> Array:
    """Mean over the batch of the per-sample loss ``name`` (Keras 3 semantics).

    Args:
        xp: the array namespace of the arrays.
        name: a canonical loss name from ``names.LOSSES``, or the name of a custom loss
            or metric (``custom.PER_SAMPLE``), whose per-sample values are averaged alike.
        Y_pred: float ``(N, O)``, the model's output (logits when ``from_logits``).
        Y_true: float ``(N, O)`` of the dtype of ``Y_pred``; int64 labels ``(N,)`` for
            ``"sparse_categorical_crossentropy"``.
        from_logits: for the three cross-entropies, ``Y_pred`` holds logits; ignored by
            the other losses, as in Keras.

    Returns:
        A 0-d float array of the dtype of ``Y_pred``.

    Raises:
        KeyError: ``name`` is neither a canonical loss name nor a custom one.
    """
    if name not in _VALUES:
        return xp.asarray(xp.mean(custom.values(xp, name, Y_pred, Y_true)))
    per_sample = _select(name, from_logits, _VALUES, _LOGIT_VALUES)
    # NumPy's mean returns a scalar, not a 0-d array; asarray makes it one (no copy elsewhere).
    return xp.asarray(xp.mean(per_sample(xp, Y_pred, _dense_targets(xp, name, Y_pred, Y_true))))


def per_sample_loss(
    xp: ModuleType, name: str, Y_pred: Array, Y_true: Array, *, from_logits: bool = False
) -> Array:
    """The per-sample values of the loss ``name`` whose batch mean ``loss`` returns.

    Args: as ``loss``.

    Returns:
        float ``(N,)`` of the dtype of ``Y_pred``.
    """
    if name not in _VALUES:
        return custom.values(xp, name, Y_pred, Y_true)
    per_sample = _select(name, from_logits, _VALUES, _LOGIT_VALUES)
    return per_sample(xp, Y_pred, _dense_targets(xp, name, Y_pred, Y_true))


def backprop_loss(
    xp: ModuleType, name: str, Y_pred: Array, Y_true: Array, *, from_logits: bool = False
) -> Array:
    """Gradient of ``loss(xp, name, Y_pred, Y_true, from_logits=...)`` with respect to ``Y_pred``.

    The gradient is exact, including the ``1 / N`` of the batch mean, the
    normalisation of probability rows in ``categorical_crossentropy`` and zeros
    where a clip changes an element of ``Y_pred``.

    Args:
        xp: the array namespace of the arrays.
        name: a canonical loss name from ``names.LOSSES`` or of a custom loss
            (``custom.PER_SAMPLE``).
        Y_pred: float ``(N, O)``.
        Y_true: float ``(N, O)``, or int64 ``(N,)`` for ``"sparse_categorical_crossentropy"``.
        from_logits: as in ``loss``.

    Returns:
        float ``(N, O)`` of the dtype of ``Y_pred``.

    Raises:
        KeyError: ``name`` is neither a canonical loss name nor a custom loss.
    """
    if name not in _GRADIENTS:
        return custom.gradient(xp, name, Y_pred, Y_true) * (1.0 / Y_pred.shape[0])
    gradient = _select(name, from_logits, _GRADIENTS, _LOGIT_GRADIENTS)
    dense = _dense_targets(xp, name, Y_pred, Y_true)
    return gradient(xp, Y_pred, dense) * (1.0 / Y_pred.shape[0])


def softmax_crossentropy_gradient(xp: ModuleType, P: Array, Y_true: Array) -> Array:
    """Fused gradient ``(P - Y) / N`` of softmax followed by categorical cross-entropy.

    Args:
        xp: the array namespace of the arrays.
        P: float ``(N, O)``, the softmax probabilities.
        Y_true: float one-hot ``(N, O)``, or int64 labels ``(N,)``.

    Returns:
        float ``(N, O)``: the gradient of the batch-mean loss with respect to the
        softmax's input.
    """
    Y = _one_hot(xp, Y_true, P) if Y_true.ndim == 1 else Y_true
    return (P - Y) * (1.0 / P.shape[0])


def sigmoid_crossentropy_gradient(xp: ModuleType, P: Array, Y_true: Array) -> Array:
    """Fused gradient ``(P - Y) / (N * O)`` of sigmoid followed by binary cross-entropy.

    Args:
        xp: the array namespace of the arrays.
        P: float ``(N, O)``, the sigmoid outputs.
        Y_true: float ``(N, O)``, targets in ``[0, 1]``.

    Returns:
        float ``(N, O)``: the gradient of the batch-mean loss with respect to the
        sigmoid's input.
    """
    return (P - Y_true) * (1.0 / (P.shape[0] * P.shape[1]))
