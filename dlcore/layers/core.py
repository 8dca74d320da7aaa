"""The core layers: ``Input``, ``Dense``, ``Activation``, ``Dropout`` and ``PReLU``.

Layers call engine operations only, so the same layer runs on every engine.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from dlcore import activations, initializers, regularizers
from dlcore import config as config_module
from dlcore.backends.base import Array

from .base import CallState, KerasTensor, Layer, dims_from_shape, serialize, unique_name


class InputLayer(Layer):
    """The entry of a model: holds the input width ``(None, features)``, no weights.

    ``Input(shape=(features,))`` makes one and returns its symbolic tensor.
    """

    def __init__(
        self,
        shape: Any = None,
        *,
        batch_size: int | None = None,
        name: str | None = None,
        batch_shape: Any = None,
        **kwargs: Any,
    ) -> None:
        if batch_shape is not None and shape is None:
            shape = tuple(batch_shape)[1:]
        dims = dims_from_shape(shape, None, "Input")
        if dims is None:
            raise ValueError("Input expected shape=(features,), received shape=None")
        features = math.prod(dims)
        kwargs.pop("input_shape", None)
        kwargs.pop("dtype", None)  # inputs are given to the model in its float dtype
        super().__init__(
            name=name or unique_name("input_layer"), dtype=config_module.floatx(), **kwargs
        )
        self.input_features = features
        self.input_dims = dims
        self.units = features
        self.output = KerasTensor(features, None, self.name, input_layer=self, dims=dims)

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "batch_shape": [None, *self.output.dims]}


def Input(  # noqa: N802  (Keras's spelling: a function that returns a tensor)
    shape: Any = None,
    batch_size: int | None = None,
    name: str | None = None,
    **kwargs: Any,
) -> KerasTensor:
    """A symbolic input ``(None, features)`` for the Functional API or a ``Sequential``.

    Example:
        >>> inputs = Input(shape=(784,))
        >>> outputs = Dense(10, activation="softmax")(Dense(64, activation="relu")(inputs))
        >>> model = Model(inputs, outputs)
    """
    return InputLayer(shape, batch_size=batch_size, name=name, **kwargs).output


class Dense(Layer):
    """A fully connected layer: ``activation(x @ kernel + bias)``.

    Args:
        units: positive int, the number of output features.
        activation: an activation name, a registered custom activation, or ``None``
            for linear.
        use_bias: whether the layer adds a bias vector.
        kernel_initializer, bias_initializer: names or initializer objects.
        kernel_regularizer, bias_regularizer: ``None``, ``"l1"``, ``"l2"``,
            ``"l1_l2"`` or a regularizer object such as ``l2(0.01)``.
        input_shape, input_dim, name, trainable: see ``Layer``.

    Example:
        >>> Dense(50, activation="relu", input_shape=(784,))
    """

    weight_names = ("kernel", "bias")
    units: int  # fixed by the constructor, unlike other layers' output width

    def __init__(
        self,
        units: int,
        activation: Any = None,
        use_bias: bool = True,
        kernel_initializer: Any = "glorot_uniform",
        bias_initializer: Any = "zeros",
        kernel_regularizer: Any = None,
        bias_regularizer: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # int is listed for mypy, which does not know that int is a numbers.Integral
        if isinstance(units, bool) or not isinstance(units, (int, numbers.Integral)) or units < 1:
            raise ValueError(f"Dense expected a positive integer units, received units={units!r}")
        self.units = int(units)
        self.activation = activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)

    def _width_after(self, input_features: Any) -> int:
        return self.units

    def parameter_shapes(self) -> list[tuple[int, ...]]:
        if self.input_features is None:
            return []
        kernel = (self.input_features, self.units)
        return [kernel, (self.units,)] if self.use_bias else [kernel]

    def initial_values(self, rng: np.random.Generator, dtype: str) -> list[np.ndarray]:
        shapes = self.parameter_shapes()
        values = [self.kernel_initializer(shapes[0], dtype=dtype, rng=rng)]
        if self.use_bias:
            values.append(self.bias_initializer(shapes[1], dtype=dtype, rng=rng))
        return values

    @property
    def kernel(self):
        """The kernel ``(in, units)`` as a ``Variable``."""
        return self.weights[0]

    @property
    def bias(self):
        """The bias ``(units,)`` as a ``Variable``, or ``None`` without ``use_bias``."""
        return self.weights[1] if self.use_bias else None

    @property
    def output_activation(self) -> str:
        return self.activation

    @property
    def fused_output_ok(self) -> bool:
        return True

    @property
    def regularized(self) -> bool:
        return self.kernel_regularizer is not None or (
            self.use_bias and self.bias_regularizer is not None
        )

    def forward(self, X: Any, *, training: bool, state: CallState | None = None) -> Array:
        params = self.bound_params()
        Z, Y = self.bound_engine().dense_forward(
            X,
            params[0],
            params[1] if self.use_bias else None,
            self.activation,
            workspace=state.workspace if training and state is not None else None,
            product_dtype=self.product_dtype,
        )
        if training and state is not None:
            state.cache = (X, Z, Y)
        return Y

    def _backward(
        self,
        dY: Array,
        activation: str,
        state: CallState,
        need_dX: bool,
        param_grads: list[Array] | None,
    ) -> Array | None:
        if param_grads is None and not need_dX:
            return None
        X, Z, Y = state.kept(self)
        dW = db = None
        if param_grads is not None:
            dW = param_grads[0]
            db = param_grads[1] if self.use_bias else None
        return self.bound_engine().dense_backward(
            dY,
            X,
            self._params[0],
            Z,
            Y,
            activation,
            dW=dW,
            db=db,
            need_dX=need_dX,
            workspace=state.workspace,
            product_dtype=self.product_dtype,
        )

    def backward(self, dY, *, state, need_dX, param_grads):
        return self._backward(dY, self.activation, state, need_dX, param_grads)

    def backward_from_preactivation(self, dZ, *, state, need_dX, param_grads):
        return self._backward(dZ, "linear", state, need_dX, param_grads)

    def _regularized_pairs(self) -> list[tuple[Any, int]]:
        pairs = []
        if self.kernel_regularizer is not None:
            pairs.append((self.kernel_regularizer, 0))
        if self.bias_regularizer is not None and self.use_bias:
            pairs.append((self.bias_regularizer, 1))
        return pairs

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
                self._variables[i],
                self._variable_grads[i],
                l1=reg.l1 * scale,
                l2=reg.l2 * scale,
            )

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            units=self.units,
            activation=self.activation,
            use_bias=self.use_bias,
            kernel_initializer=serialize(self.kernel_initializer),
            bias_initializer=serialize(self.bias_initializer),
            kernel_regularizer=serialize(self.kernel_regularizer),
            bias_regularizer=serialize(self.bias_regularizer),
        )
        return config


class Activation(Layer):
    """Applies an activation function by name: ``Activation("softmax")``."""

    def __init__(self, activation: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.activation = activations.get(activation)
        if self.input_features is not None:
            self.units = self.input_features

    @property
    def output_activation(self) -> str:
        return self.activation

    @property
    def elementwise(self) -> bool:  # type: ignore[override]
        return self.activation != "softmax"  # softmax reads whole rows

    def forward(self, X: Any, *, training: bool, state: CallState | None = None) -> Array:
        Y = self.bound_engine().activation(self.activation, X)
        if training and state is not None:
            state.cache = (X, Y)
        return Y

    def backward(self, dY, *, state, need_dX, param_grads):
        if not need_dX:
            return None
        X, Y = state.kept(self)
        return self.bound_engine().backprop_activation(self.activation, dY, X, Y)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["activation"] = self.activation
        return config


class Dropout(Layer):
    """Sets a fraction ``rate`` of its inputs to 0 during training and scales the
    rest by ``1 / (1 - rate)``; the identity at inference.

    Args:
        rate: float in ``[0, 1)``, the fraction of units dropped.
        seed: accepted for Keras compatibility; masks are drawn from the
            engine's generator, which ``dlcore.set_random_seed`` seeds, so runs
            repeat exactly once the global seed is set.
    """

    elementwise = True

    def __init__(self, rate: float, **kwargs: Any) -> None:
        kwargs.pop("seed", None)  # masks come from dlcore.set_random_seed's stream
        super().__init__(**kwargs)
        # float is listed for mypy, which does not know that float is a numbers.Real
        if (
            isinstance(rate, bool)
            or not isinstance(rate, (float, numbers.Real))
            or not 0 <= rate < 1
        ):
            raise ValueError(f"Dropout expected a rate in [0, 1), received rate={rate!r}")
        self.rate = float(rate)
        if self.input_features is not None:
            self.units = self.input_features

    def forward(self, X: Any, *, training: bool, state: CallState | None = None) -> Array:
        if not training or self.rate == 0 or state is None:
            if state is not None:
                state.cache = None
            return X
        Y, state.cache = self.bound_engine().dropout(X, rate=self.rate)
        return Y

    def backward(self, dY, *, state, need_dX, param_grads):
        if not need_dX:
            return None
        if state.cache is None:
            return dY
        return self.bound_engine().backprop_dropout(dY, state.cache)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["rate"] = self.rate
        return config


class PReLU(Layer):
    """Parametric ReLU with a learned slope per unit: ``x if x > 0 else alpha * x``.

    Args:
        alpha_initializer: initializer of the slopes ``alpha`` (shape ``(units,)``),
            ``"zeros"`` by default as in Keras.
        alpha_regularizer: optional regularizer of ``alpha``.
    """

    weight_names = ("alpha",)

    def __init__(
        self, alpha_initializer: Any = "zeros", alpha_regularizer: Any = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.alpha_initializer = initializers.get(alpha_initializer)
        self.alpha_regularizer = regularizers.get(alpha_regularizer)
        if self.input_features is not None:
            self.units = self.input_features

    @property
    def alpha(self):
        """The slopes ``(units,)`` as a ``Variable``."""
        return self.weights[0]

    def parameter_shapes(self) -> list[tuple[int, ...]]:
        return [] if self.input_features is None else [(self.input_features,)]

    def initial_values(self, rng: np.random.Generator, dtype: str) -> list[np.ndarray]:
        features = self.input_features
        if features is None:
            raise ValueError(
                f"layer {self.name!r} is not built yet: the shape of alpha, (features,), "
                "is unknown until the model holding it is built"
            )
        return [self.alpha_initializer((features,), dtype=dtype, rng=rng)]

    @property
    def regularized(self) -> bool:
        return self.alpha_regularizer is not None

    def forward(self, X: Any, *, training: bool, state: CallState | None = None) -> Array:
        if training and state is not None:
            state.cache = X
        return self.bound_engine().prelu(X, self.bound_params()[0])

    def backward(self, dY, *, state, need_dX, param_grads):
        if param_grads is None and not need_dX:
            return None
        return self.bound_engine().backprop_prelu(
            dY,
            state.kept(self),
            self._params[0],
            dalpha=None if param_grads is None else param_grads[0],
        )

    def penalties(self) -> list[Array]:
        if self.alpha_regularizer is None or not self.trainable:
            return []
        reg = self.alpha_regularizer
        return [self.bound_engine().penalty(self._variables[0], l1=reg.l1, l2=reg.l2)]

    def backprop_penalties(self, scale: float = 1.0) -> None:
        if self.alpha_regularizer is not None:
            reg = self.alpha_regularizer
            self.bound_engine().backprop_penalty(
                self._variables[0], self._variable_grads[0], l1=reg.l1 * scale, l2=reg.l2 * scale
            )

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            alpha_initializer=serialize(self.alpha_initializer),
            alpha_regularizer=serialize(self.alpha_regularizer),
        )
        return config
