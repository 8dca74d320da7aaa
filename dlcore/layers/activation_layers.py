"""Activation layers with their own constants: ``ReLU``, ``LeakyReLU``, ``Softmax``, ``ELU``.

Each computes one engine operation (``relu_family``, ``elu``, the softmax activation)
and its gradient; the elementwise ones keep a multi-dimensional per-sample shape.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any

from dlcore.backends.base import Array

from .base import CallState, Layer


def _real(value: Any, name: str, owner: str, *, minimum: float | None = 0.0) -> float:
    """``value`` as a float, refused unless a finite real number ``>= minimum``."""
    # float is listed for mypy, which does not know that float is a numbers.Real
    ok = not isinstance(value, bool) and isinstance(value, (float, numbers.Real))
    if ok and not math.isfinite(float(value)):
        ok = False
    if ok and minimum is not None and value < minimum:
        ok = False
    if not ok:
        bound = "" if minimum is None else f" >= {minimum:g}"
        raise ValueError(
            f"{owner} expected {name} to be a finite number{bound}, received {name}={value!r}"
        )
    return float(value)


class _Elementwise(Layer):
    """A layer without weights whose output has its input's shape."""

    elementwise = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.input_features is not None:
            self.units = self.input_features


class ReLU(_Elementwise):
    """Rectified linear unit with Keras's options: ``min(x, max_value)`` where
    ``x > threshold``, else ``negative_slope * (x - threshold)``.

    Args:
        max_value: ``None`` (no ceiling) or a float ``>= 0``, the largest output.
        negative_slope: float ``>= 0``, the slope below ``threshold``.
        threshold: float ``>= 0``, below which values are damped.
        name, input_shape, trainable, dtype: see ``Layer``.

    Example:
        >>> ReLU(max_value=6.0)  # ReLU6
    """

    def __init__(
        self,
        max_value: float | None = None,
        negative_slope: float = 0.0,
        threshold: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.max_value = None if max_value is None else _real(max_value, "max_value", "ReLU")
        self.negative_slope = _real(negative_slope, "negative_slope", "ReLU")
        self.threshold = _real(threshold, "threshold", "ReLU")

    def _constants(self) -> dict[str, Any]:
        return {
            "negative_slope": self.negative_slope,
            "max_value": self.max_value,
            "threshold": self.threshold,
        }

    def forward(self, X: Any, *, training: bool, state: CallState | None = None) -> Array:
        if training and state is not None:
            state.cache = X
        return self.bound_engine().relu_family(X, **self._constants())

    def backward(self, dY, *, state, need_dX, param_grads):
        if not need_dX:
            return None
        return self.bound_engine().backprop_relu_family(dY, state.kept(self), **self._constants())

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(self._constants())
        return config


class LeakyReLU(ReLU):
    """``x`` where ``x >= 0``, else ``negative_slope * x``.

    Args:
        negative_slope: float ``>= 0``, 0.3 by default as in Keras 3. Keras 2's
            ``alpha=`` is accepted with a warning, as Keras 3 does.
        name, input_shape, trainable, dtype: see ``Layer``.
    """

    def __init__(self, negative_slope: float = 0.3, **kwargs: Any) -> None:
        if "alpha" in kwargs:
            negative_slope = kwargs.pop("alpha")
            warnings.warn(
                "LeakyReLU: the argument alpha is deprecated (Keras 2); use negative_slope",
                UserWarning,
                stacklevel=2,
            )
        negative_slope = _real(negative_slope, "negative_slope", "LeakyReLU")
        super().__init__(negative_slope=negative_slope, **kwargs)

    def get_config(self) -> dict[str, Any]:
        config = Layer.get_config(self)
        config["negative_slope"] = self.negative_slope
        return config


class ELU(_Elementwise):
    """Exponential linear unit: ``x`` where ``x > 0``, else ``alpha * (exp(x) - 1)``.

    Args:
        alpha: finite float, the scale of the negative part (1.0).
        name, input_shape, trainable, dtype: see ``Layer``.
    """

    def __init__(self, alpha: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.alpha = _real(alpha, "alpha", "ELU", minimum=None)

    def forward(self, X: Any, *, training: bool, state: CallState | None = None) -> Array:
        if training and state is not None:
            state.cache = X
        return self.bound_engine().elu(X, alpha=self.alpha)

    def backward(self, dY, *, state, need_dX, param_grads):
        if not need_dX:
            return None
        return self.bound_engine().backprop_elu(dY, state.kept(self), alpha=self.alpha)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["alpha"] = self.alpha
        return config


class Softmax(Layer):
    """Softmax over the features of each sample, ``exp(x) / sum(exp(x))``.

    Args:
        axis: the feature axis, ``-1`` (or ``1``, the same axis of a ``(None, n)``
            tensor); dlcore's tensors are flat rows, so no other axis exists.
        name, input_shape, trainable, dtype: see ``Layer``.
    """

    def __init__(self, axis: Any = -1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        axes = list(axis) if isinstance(axis, (list, tuple)) else [axis]
        if len(axes) != 1 or isinstance(axes[0], bool) or axes[0] not in (-1, 1):
            raise ValueError(
                "Softmax computes over the features of (None, n) tensors: expected axis=-1 "
                f"(or 1), received axis={axis!r}"
            )
        self.axis = axis
        if self.input_features is not None:
            self.units = self.input_features

    @property
    def output_activation(self) -> str:
        return "softmax"

    def forward(self, X: Any, *, training: bool, state: CallState | None = None) -> Array:
        Y = self.bound_engine().activation("softmax", X)
        if training and state is not None:
            state.cache = (X, Y)
        return Y

    def backward(self, dY, *, state, need_dX, param_grads):
        if not need_dX:
            return None
        X, Y = state.kept(self)
        return self.bound_engine().backprop_activation("softmax", dY, X, Y)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["axis"] = list(self.axis) if isinstance(self.axis, tuple) else self.axis
        return config
