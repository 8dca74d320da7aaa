"""Normalization layers: ``BatchNormalization``, ``LayerNormalization`` and the
preprocessing layer ``Normalization`` (with ``adapt``).

Inputs are batches of feature vectors ``(N, features)``. ``BatchNormalization``
normalizes each feature over the batch, ``LayerNormalization`` each sample over
its features, ``Normalization`` each feature with a fixed mean and variance
(given, or computed by ``adapt`` on the host). Their statistics are weights that
no gradient reaches and no optimizer updates (``Layer.non_trainable_names``), so
they are saved and loaded with the model.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

import numpy as np

from dlcore import data_checks, initializers, regularizers
from dlcore.backends.base import Array

from .base import CallState, Layer, serialize


def _check_axis(axis: Any, owner: str) -> int:
    """``axis`` as given (-1 or 1, a one-element list of them for LayerNormalization)."""
    value = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value not in (-1, 1):
        raise ValueError(
            f"{owner} expected axis=-1 (the features of (N, features) inputs, the only "
            f"axis dlcore's flat inputs have besides the batch), received axis={axis!r}"
        )
    return int(value)


def _check_epsilon(epsilon: Any, owner: str) -> float:
    if (
        isinstance(epsilon, bool)
        or not isinstance(epsilon, (float, numbers.Real))
        or not math.isfinite(epsilon)
        or epsilon <= 0
    ):
        raise ValueError(
            f"{owner} expected a positive finite epsilon (it keeps 1 / sqrt(variance + "
            f"epsilon) finite), received epsilon={epsilon!r}; Keras's default is 1e-3"
        )
    return float(epsilon)


def _check_constraint(constraint: Any, name: str, owner: str) -> None:
    if constraint is not None:
        raise ValueError(
            f"{owner} does not support weight constraints, received {name}={constraint!r}; "
            "pass None"
        )


def _feature_count(layer: Layer) -> int:
    features = layer.input_features
    if features is None:
        raise ValueError(
            f"layer {layer.name!r} is not built yet: the shape of its weights, "
            "(features,), is unknown until the model holding it is built"
        )
    return int(features)


class _AffineNormalization(Layer):
    """What BatchNormalization and LayerNormalization share: optional ``gamma`` and
    ``beta`` of shape ``(features,)``, their initializers and regularizers."""

    def __init__(
        self,
        *,
        axis: Any,
        epsilon: Any,
        center: bool,
        scale: bool,
        beta_initializer: Any,
        gamma_initializer: Any,
        beta_regularizer: Any,
        gamma_regularizer: Any,
        beta_constraint: Any,
        gamma_constraint: Any,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        owner = type(self).__name__
        self.axis = _check_axis(axis, owner)
        self.epsilon = _check_epsilon(epsilon, owner)
        self.center = bool(center)
        self.scale = bool(scale)
        self.beta_initializer = initializers.get(beta_initializer)
        self.gamma_initializer = initializers.get(gamma_initializer)
        self.beta_regularizer = regularizers.get(beta_regularizer)
        self.gamma_regularizer = regularizers.get(gamma_regularizer)
        _check_constraint(beta_constraint, "beta_constraint", owner)
        _check_constraint(gamma_constraint, "gamma_constraint", owner)
        if self.input_features is not None:
            self.units = self.input_features

    def _affine_names(self) -> list[str]:
        return (["gamma"] if self.scale else []) + (["beta"] if self.center else [])

    def _weight_names(self) -> list[str]:
        return self._affine_names() if self.input_features is not None else []

    def parameter_shapes(self) -> list[tuple[int, ...]]:
        if self.input_features is None:
            return []
        return [(int(self.input_features),)] * len(self._weight_names())

    def _initializer(self, name: str) -> Any:
        return {"gamma": self.gamma_initializer, "beta": self.beta_initializer}[name]

    def initial_values(self, rng: np.random.Generator, dtype: str) -> list[np.ndarray]:
        shape = (_feature_count(self),)
        return [
            self._initializer(name)(shape, dtype=dtype, rng=rng) for name in self._weight_names()
        ]

    def _gamma_beta(self, params: list[Array]) -> tuple[Array | None, Array | None]:
        gamma = params[0] if self.scale else None
        beta = params[int(self.scale)] if self.center else None
        return gamma, beta

    def _affine_grads(self, param_grads: list[Array] | None) -> tuple[Array | None, Array | None]:
        if param_grads is None:
            return None, None
        return self._gamma_beta(param_grads)

    # -------------------------------------------------------------- regularization
    def _regularized_pairs(self) -> list[tuple[Any, int]]:
        pairs = []
        if self.scale and self.gamma_regularizer is not None:
            pairs.append((self.gamma_regularizer, 0))
        if self.center and self.beta_regularizer is not None:
            pairs.append((self.beta_regularizer, int(self.scale)))
        return pairs

    @property
    def regularized(self) -> bool:
        return bool(self._regularized_pairs())

    def penalties(self) -> list[Array]:
        if not self.trainable:
            return []
        engine = self.bound_engine()
        return [
            engine.penalty(self._variables[i], l1=reg.l1, l2=reg.l2)
            for reg, i in self._regularized_pairs()
        ]

    def backprop_penalties(self, scale: float = 1.0) -> None:
        engine = self.bound_engine()
        for reg, i in self._regularized_pairs():
            engine.backprop_penalty(
                self._variables[i], self._variable_grads[i], l1=reg.l1 * scale, l2=reg.l2 * scale
            )

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            axis=self.axis,
            epsilon=self.epsilon,
            center=self.center,
            scale=self.scale,
            beta_initializer=serialize(self.beta_initializer),
            gamma_initializer=serialize(self.gamma_initializer),
            beta_regularizer=serialize(self.beta_regularizer),
            gamma_regularizer=serialize(self.gamma_regularizer),
            beta_constraint=None,
            gamma_constraint=None,
        )
        return config


class BatchNormalization(_AffineNormalization):
    """Normalizes each feature over the batch: ``gamma * (x - mean) / sqrt(var + epsilon)
    + beta``.

    In training (``fit``, ``train_on_batch``) ``mean`` and ``var`` are the batch's own
    (the biased variance) and the moving statistics move towards them in place:
    ``moving = moving * momentum + batch * (1 - momentum)``. At inference
    (``predict``, ``evaluate``), and whenever the layer is frozen
    (``trainable=False``, as in Keras 3), the moving statistics are used.

    Args:
        axis: the feature axis, ``-1`` (or ``1``): inputs are ``(N, features)``.
        momentum: float in ``[0, 1]``, the moving statistics' momentum.
        epsilon: positive float added to the variance.
        center, scale: whether the layer has ``beta`` and ``gamma``.
        beta_initializer, gamma_initializer, moving_mean_initializer,
            moving_variance_initializer: initializers of the four weights.
        beta_regularizer, gamma_regularizer: optional regularizers.
        beta_constraint, gamma_constraint: only ``None``.

    Weights, in Keras's order: ``gamma``, ``beta`` (trainable; each only with
    ``scale``/``center``), ``moving_mean``, ``moving_variance`` (non-trainable), all
    ``(features,)``.
    """

    non_trainable_names = ("moving_mean", "moving_variance")

    def __init__(
        self,
        axis: int = -1,
        momentum: float = 0.99,
        epsilon: float = 1e-3,
        center: bool = True,
        scale: bool = True,
        beta_initializer: Any = "zeros",
        gamma_initializer: Any = "ones",
        moving_mean_initializer: Any = "zeros",
        moving_variance_initializer: Any = "ones",
        beta_regularizer: Any = None,
        gamma_regularizer: Any = None,
        beta_constraint: Any = None,
        gamma_constraint: Any = None,
        renorm: bool = False,
        synchronized: bool = False,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("renorm_clipping", None)
        kwargs.pop("renorm_momentum", None)
        super().__init__(
            axis=axis,
            epsilon=epsilon,
            center=center,
            scale=scale,
            beta_initializer=beta_initializer,
            gamma_initializer=gamma_initializer,
            beta_regularizer=beta_regularizer,
            gamma_regularizer=gamma_regularizer,
            beta_constraint=beta_constraint,
            gamma_constraint=gamma_constraint,
            **kwargs,
        )
        if (
            isinstance(momentum, bool)
            or not isinstance(momentum, (float, numbers.Real))
            or not 0 <= momentum <= 1
        ):
            raise ValueError(
                f"BatchNormalization expected a momentum in [0, 1], received "
                f"momentum={momentum!r}; Keras's default is 0.99"
            )
        if renorm or synchronized:
            raise ValueError(
                "BatchNormalization does not support renorm=True or synchronized=True, "
                f"received renorm={renorm!r}, synchronized={synchronized!r}; pass False"
            )
        self.momentum = float(momentum)
        self.moving_mean_initializer = initializers.get(moving_mean_initializer)
        self.moving_variance_initializer = initializers.get(moving_variance_initializer)

    def _weight_names(self) -> list[str]:
        if self.input_features is None:
            return []
        return [*self._affine_names(), "moving_mean", "moving_variance"]

    def _initializer(self, name: str) -> Any:
        if name == "moving_mean":
            return self.moving_mean_initializer
        if name == "moving_variance":
            return self.moving_variance_initializer
        return super()._initializer(name)

    def forward(self, X: Any, *, training: bool, state: CallState | None = None) -> Array:
        engine = self.bound_engine()
        params = self.bound_params()
        gamma, beta = self._gamma_beta(params)
        keep = training and state is not None
        workspace = state.workspace if keep and state is not None else None
        batch_statistics = training and self.trainable  # a frozen layer runs in inference mode
        if batch_statistics:
            mean, variance = engine.batch_moments(X, workspace=workspace)
            self._update_moving_statistics(mean, variance, workspace)
        else:
            mean, variance = params[-2], params[-1]
        Y, Xhat = engine.batch_normalize(
            X, mean, variance, gamma, beta, epsilon=self.epsilon, workspace=workspace
        )
        if keep and state is not None:
            state.cache = (Xhat, variance, batch_statistics)
        return Y

    def _update_moving_statistics(self, mean: Array, variance: Array, workspace: Any) -> None:
        """Move the master moving statistics (the model's dtype) towards the batch's."""
        engine = self.bound_engine()
        moving = self._variables[-2:]
        for k, (target, value) in enumerate(zip(moving, (mean, variance))):
            if self.run_dtype != self.dtype:  # a mixed-precision layer's statistics
                out = (
                    None
                    if workspace is None
                    else workspace.array(f"moving_update{k}", tuple(target.shape), self.dtype)
                )
                value = engine.cast(value, self.dtype, out=out)
            engine.update_moving_average(target, value, self.momentum)

    def backward(self, dY, *, state, need_dX, param_grads):
        if param_grads is None and not need_dX:
            return None
        Xhat, variance, batch_statistics = state.kept(self)
        gamma, _ = self._gamma_beta(self._params)
        dgamma, dbeta = self._affine_grads(param_grads)
        return self.bound_engine().backprop_batch_normalize(
            dY,
            Xhat,
            variance,
            gamma,
            epsilon=self.epsilon,
            batch_statistics=batch_statistics,
            dgamma=dgamma,
            dbeta=dbeta,
            need_dX=need_dX,
            workspace=state.workspace,
        )

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            momentum=self.momentum,
            moving_mean_initializer=serialize(self.moving_mean_initializer),
            moving_variance_initializer=serialize(self.moving_variance_initializer),
        )
        return config


class LayerNormalization(_AffineNormalization):
    """Normalizes each sample over its features: ``gamma * (x - mean) / sqrt(var +
    epsilon) + beta`` with the row's mean and biased variance, the same in training and
    at inference.

    Args:
        axis: ``-1`` (or ``1``, or ``[-1]``): the features of ``(N, features)`` inputs.
        epsilon: positive float added to the variance (Keras's default 1e-3).
        center, scale: whether the layer has ``beta`` and ``gamma`` ``(features,)``.
        beta_initializer, gamma_initializer: their initializers.
        beta_regularizer, gamma_regularizer: optional regularizers.
        beta_constraint, gamma_constraint: only ``None``.
        rms_scaling: only ``False`` (deprecated in Keras 3, whose RMSNormalization is
            the layer to use).
    """

    def __init__(
        self,
        axis: Any = -1,
        epsilon: float = 1e-3,
        center: bool = True,
        scale: bool = True,
        beta_initializer: Any = "zeros",
        gamma_initializer: Any = "ones",
        beta_regularizer: Any = None,
        gamma_regularizer: Any = None,
        beta_constraint: Any = None,
        gamma_constraint: Any = None,
        rms_scaling: bool = False,
        **kwargs: Any,
    ) -> None:
        if rms_scaling:
            raise ValueError(
                "LayerNormalization does not support rms_scaling=True (deprecated in "
                "Keras 3: it scales by the variance, not the root mean square), received "
                f"rms_scaling={rms_scaling!r}; pass False"
            )
        super().__init__(
            axis=axis,
            epsilon=epsilon,
            center=center,
            scale=scale,
            beta_initializer=beta_initializer,
            gamma_initializer=gamma_initializer,
            beta_regularizer=beta_regularizer,
            gamma_regularizer=gamma_regularizer,
            beta_constraint=beta_constraint,
            gamma_constraint=gamma_constraint,
            **kwargs,
        )
        self.rms_scaling = False

    def forward(self, X: Any, *, training: bool, state: CallState | None = None) -> Array:
        keep = training and state is not None
        gamma, beta = self._gamma_beta(self.bound_params())
        Y, Xhat, inv_std = self.bound_engine().layer_normalize(
            X,
            gamma,
            beta,
            epsilon=self.epsilon,
            workspace=state.workspace if keep and state is not None else None,
        )
        if keep and state is not None:
            state.cache = (Xhat, inv_std)
        return Y

    def backward(self, dY, *, state, need_dX, param_grads):
        if param_grads is None and not need_dX:
            return None
        Xhat, inv_std = state.kept(self)
        gamma, _ = self._gamma_beta(self._params)
        dgamma, dbeta = self._affine_grads(param_grads)
        return self.bound_engine().backprop_layer_normalize(
            dY,
            Xhat,
            inv_std,
            gamma,
            dgamma=dgamma,
            dbeta=dbeta,
            need_dX=need_dX,
            workspace=state.workspace,
        )

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["rms_scaling"] = self.rms_scaling
        return config


class Normalization(Layer):
    """Standardizes each feature with a fixed mean and variance: ``(x - mean) /
    max(sqrt(variance), 1e-7)``, or ``mean + x * max(sqrt(variance), 1e-7)`` with
    ``invert``.

    Give ``mean`` and ``variance`` (scalars or ``(features,)``), or call ``adapt(data)``
    before using the layer: it computes each feature's mean and (biased) variance on the
    host in float64, over one array ``(N, features)`` or an iterable of such batches.
    Both are non-trainable weights ``mean`` and ``variance`` ``(features,)`` (Keras's
    ``count`` is not kept), so they are saved and loaded with the model.

    Args:
        axis: ``-1`` (or ``1``): one mean and variance per feature.
        mean, variance: both or neither; finite numbers, variances not negative.
        invert: whether to undo a normalization instead.
        adapted: whether the weights already hold statistics (``get_config`` sets it
            after ``adapt`` so that a saved model loads ready to use).
    """

    weight_names = ("mean", "variance")
    non_trainable_names = ("mean", "variance")

    def __init__(
        self,
        axis: Any = -1,
        mean: Any = None,
        variance: Any = None,
        invert: bool = False,
        adapted: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.axis = _check_axis(axis, "Normalization")
        if (mean is None) != (variance is None):
            raise ValueError(
                "Normalization expected both mean and variance, or neither (then call "
                f"adapt(data)); received mean={mean!r}, variance={variance!r}"
            )
        self.input_mean: np.ndarray | None = None
        self.input_variance: np.ndarray | None = None
        if mean is not None:
            m = data_checks.as_numeric(mean, "Normalization mean").astype(np.float64)
            v = data_checks.as_numeric(variance, "Normalization variance").astype(np.float64)
            if m.shape != v.shape or m.ndim > 1:
                raise ValueError(
                    "Normalization expected mean and variance of one shape, scalars or "
                    f"(features,), received shapes {m.shape} and {v.shape}"
                )
            if np.any(v < 0):
                raise ValueError(
                    f"Normalization expected variances >= 0, received variance={variance!r}"
                )
            if m.ndim == 1:
                self.output_features(int(m.shape[0]))
            self.input_mean, self.input_variance = m, v
        self.invert = bool(invert)
        self.adapted = bool(adapted)
        self._adapted_values: list[np.ndarray] | None = None
        if self.input_features is not None:
            self.units = self.input_features

    def _weight_names(self) -> list[str]:
        return list(self.weight_names) if self.input_features is not None else []

    def parameter_shapes(self) -> list[tuple[int, ...]]:
        if self.input_features is None:
            return []
        return [(int(self.input_features),)] * 2

    def initial_values(self, rng: np.random.Generator, dtype: str) -> list[np.ndarray]:
        shape = (_feature_count(self),)
        if self._adapted_values is not None:
            return [value.astype(dtype) for value in self._adapted_values]
        if self.input_mean is not None and self.input_variance is not None:
            return [
                np.broadcast_to(value, shape).astype(dtype)
                for value in (self.input_mean, self.input_variance)
            ]
        return [np.zeros(shape, dtype=dtype), np.ones(shape, dtype=dtype)]

    @property
    def ready(self) -> bool:
        """Whether the layer has statistics: given ``mean``/``variance``, or adapted."""
        return self.input_mean is not None or self.adapted

    def adapt(self, data: Any) -> None:
        """Compute each feature's mean and biased variance from ``data`` and store them.

        Args:
            data: an array ``(N, features)`` of finite numbers, or an iterable of such
                batches (each ``(N_i, features)``), combined exactly in float64.
        """
        if isinstance(data, np.ndarray) or not isinstance(data, Iterable) or _is_nested_rows(data):
            batches: Iterable[Any] = [data]
        else:
            batches = data
        count = 0
        total_mean: np.ndarray | None = None
        total_m2: np.ndarray | None = None
        for k, batch in enumerate(batches):
            array = data_checks.as_numeric(batch, f"Normalization.adapt batch {k}")
            if array.ndim != 2:
                raise ValueError(
                    f"Normalization.adapt expected batches of shape (N, features), received "
                    f"batch {k} of shape {array.shape}"
                )
            array = array.astype(np.float64)
            features = self.input_features if total_mean is None else total_mean.shape[0]
            if features is not None and array.shape[1] != features:
                raise ValueError(
                    f"Normalization.adapt expected batches of {features} features (the "
                    f"layer's width), received batch {k} of shape {array.shape}"
                )
            n = array.shape[0]
            batch_mean = array.mean(axis=0)
            batch_m2 = ((array - batch_mean) ** 2).sum(axis=0)
            if total_mean is None or total_m2 is None:
                total_mean, total_m2 = batch_mean, batch_m2
            else:  # Chan et al.'s exact merge of two groups' sums of squared deviations
                delta = batch_mean - total_mean
                total_m2 = total_m2 + batch_m2 + delta**2 * (count * n / (count + n))
                total_mean = total_mean + delta * (n / (count + n))
            count += n
        if total_mean is None or total_m2 is None:
            raise ValueError(
                "Normalization.adapt received no batches; pass an array (N, features) or "
                "a non-empty iterable of them"
            )
        self.output_features(int(total_mean.shape[0]))
        values = [total_mean, total_m2 / count]
        if self.engine is not None or self._carried is not None:
            self.set_weights([value.astype(self.dtype) for value in values])
        self._adapted_values = values
        self.adapted = True

    def forward(self, X: Any, *, training: bool, state: CallState | None = None) -> Array:
        if not self.ready:
            raise ValueError(
                f"Normalization layer {self.name!r} has no statistics yet: call "
                "layer.adapt(data) on the training data, or create it with "
                "Normalization(mean=..., variance=...)"
            )
        params = self.bound_params()
        return self.bound_engine().standardize(X, params[0], params[1], invert=self.invert)

    def backward(self, dY, *, state, need_dX, param_grads):
        if not need_dX:
            return None
        return self.bound_engine().standardize(dY, None, self._params[1], invert=self.invert)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            axis=self.axis,
            invert=self.invert,
            mean=None if self.input_mean is None else self.input_mean.tolist(),
            variance=None if self.input_variance is None else self.input_variance.tolist(),
        )
        if self.adapted:
            config["adapted"] = True
        return config


def _is_nested_rows(data: Any) -> bool:
    """Whether ``data`` is one batch as nested lists of numbers (``[[1, 2], [3, 4]]``)
    rather than a list of batches."""
    if not isinstance(data, (list, tuple)) or not data:
        return False
    first = data[0]
    return isinstance(first, (list, tuple)) and bool(first) and isinstance(first[0], numbers.Number)
