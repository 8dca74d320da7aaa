"""Layers of a dense network: Dense, Activation, Dropout, PReLU, and the Input marker.

A layer declares the shapes of its parameters; the model owns one flat
parameter buffer and one flat gradient buffer on the engine and hands each
layer views into them (``bind``). ``forward`` keeps what ``backward`` needs;
``backward`` writes the parameter gradients into the gradient views and
returns the gradient with respect to the layer's input. Layers call engine
operations only, so the same layer runs on every engine.
"""

from __future__ import annotations

import itertools
import numbers
from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np

from dlcore import activations, data_checks, initializers, regularizers
from dlcore.backends.base import Array, Engine, Workspace

_name_counters: dict[str, itertools.count] = {}
_Cache = TypeVar("_Cache")


def _unique_name(prefix: str) -> str:
    counter = _name_counters.setdefault(prefix, itertools.count())
    index = next(counter)
    return prefix if index == 0 else f"{prefix}_{index}"


def _snake_case(class_name: str) -> str:
    out = []
    for i, char in enumerate(class_name):
        if char.isupper() and i and not class_name[i - 1].isupper():
            out.append("_")
        out.append(char.lower())
    return "".join(out)


def _input_features(input_shape: Any, input_dim: Any, layer: str) -> int | None:
    if input_shape is not None and input_dim is not None:
        raise ValueError(f"{layer}: give input_shape or input_dim, not both")
    if input_dim is not None:
        input_shape = (input_dim,)
    if input_shape is None:
        return None
    if isinstance(input_shape, numbers.Integral):
        input_shape = (input_shape,)
    shape = tuple(input_shape)
    if len(shape) != 1 or not isinstance(shape[0], numbers.Integral) or shape[0] < 1:
        raise ValueError(
            f"{layer} expected input_shape=(features,) with a positive integer, for dense "
            f"networks on flat feature vectors; received input_shape={input_shape!r}"
        )
    return int(shape[0])


class Layer:
    """Base class: a step of a ``Sequential`` model.

    Args:
        name: the layer's name in ``summary()``; a unique one is made if omitted.
        input_shape: ``(features,)``, only on a model's first layer (Keras style).
        input_dim: ``features``, the Keras 2 spelling of ``input_shape``.
    """

    def __init__(
        self,
        *,
        name: str | None = None,
        input_shape: Any = None,
        input_dim: int | None = None,
        **kwargs: Any,
    ) -> None:
        cls = type(self).__name__
        if kwargs:
            raise TypeError(f"{cls} got unexpected keyword argument(s): {', '.join(kwargs)}")
        self.name = name or _unique_name(_snake_case(cls))
        self.input_features = _input_features(input_shape, input_dim, cls)
        self.units: int | None = None  # output features once built
        self.engine: Engine | None = None
        self.trainable_weights: list[Array] = []
        self.gradients: list[Array] = []
        self.dtype = "float32"  # the model's dtype, set by bind

    # -------------------------------------------------------------- structure
    def build(self, input_features: int) -> int:
        """Fix the input width; returns the output width (features)."""
        self.input_features = input_features
        self.units = input_features
        return self.units

    def parameter_shapes(self) -> list[tuple[int, ...]]:
        """Shapes of the trainable parameters, in Keras's ``get_weights`` order."""
        return []

    def initial_values(self, rng: np.random.Generator, dtype: str) -> list[np.ndarray]:
        """Host initial values of the parameters, one per ``parameter_shapes`` entry."""
        return []

    def bind(
        self, engine: Engine, weights: list[Array], gradients: list[Array], dtype: str
    ) -> None:
        """Attach the layer to its views into the model's flat buffers (of ``dtype``)."""
        self.engine = engine
        # the arrays of training steps, reused from one step to the next
        self.workspace = Workspace(engine)
        self.trainable_weights = weights
        self.gradients = gradients
        self.dtype = dtype

    def get_weights(self) -> list[np.ndarray]:
        """Host copies of this layer's parameters (Dense: kernel ``(in, out)``, then bias)."""
        engine = self._bound_engine()
        return [engine.to_numpy(weight) for weight in self.trainable_weights]

    def set_weights(self, weights: Sequence[Any]) -> None:
        """Replace this layer's parameters; every shape is checked before any is written."""
        assign_weights(
            self._bound_engine(),
            self.trainable_weights,
            self.parameter_shapes(),
            weights,
            self.dtype,
            f"{self.name}.set_weights",
        )

    def _bound_engine(self) -> Engine:
        """The engine given by ``bind``; the layer must belong to a built model."""
        if self.engine is None:
            # AttributeError, as the attribute access on None raised before this check
            raise AttributeError(
                f"layer {self.name!r} has no engine yet: it gets one when the Sequential "
                "model holding it is built"
            )
        return self.engine

    @property
    def output_activation(self) -> str:
        """The activation applied last by this layer (``"linear"`` when none)."""
        return "linear"

    # -------------------------------------------------------------- computation
    def forward(self, X: Array, *, training: bool) -> Array:
        """``(N, input_features)`` to ``(N, units)``, float."""
        return X

    def backward(self, dY: Array, *, need_dX: bool) -> Array | None:
        """Gradient with respect to the input; writes the parameter gradients."""
        return dY

    def backward_from_preactivation(self, dZ: Array, *, need_dX: bool) -> Array | None:
        """Like ``backward`` when the caller already has the gradient with respect
        to the input of ``output_activation`` (the fused softmax/cross-entropy path)."""
        return dZ

    def penalties(self) -> list[Array]:
        """Regularization penalties of this layer, as 0-d engine arrays."""
        return []

    # -------------------------------------------------------------- description
    def get_config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments; ``from_config`` reverses it."""
        config: dict[str, Any] = {"name": self.name}
        if self.input_features is not None:
            config["input_shape"] = [self.input_features]
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Layer:
        """Recreate a layer from ``get_config``'s output."""
        return cls(**config)

    def count_params(self) -> int:
        """Number of trainable scalars (0 before the layer is built)."""
        return sum(int(np.prod(shape)) for shape in self.parameter_shapes())

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name!r}>"


class Input:
    """Declares the input width of a ``Sequential`` model: ``Input(shape=(784,))``."""

    def __init__(
        self, shape: Any = None, *, batch_size: int | None = None, name: str | None = None
    ):
        self.features = _input_features(shape, None, "Input")
        if self.features is None:
            raise ValueError("Input expected shape=(features,), received shape=None")
        self.name = name or _unique_name("input_layer")


def _forward_cache(layer: Layer, cache: _Cache | None) -> _Cache:
    """What ``forward(training=True)`` kept for ``backward``."""
    if cache is None:
        # TypeError, as unpacking the missing cache raised before this check
        raise TypeError(
            f"layer {layer.name!r}: backward() needs a forward(..., training=True) call first"
        )
    return cache


class Dense(Layer):
    """A fully connected layer: ``activation(x @ kernel + bias)``.

    Args:
        units: positive int, the number of output features.
        activation: an activation name, or ``None`` for linear.
        use_bias: whether the layer adds a bias vector.
        kernel_initializer, bias_initializer: names or initializer objects.
        kernel_regularizer, bias_regularizer: ``None``, ``"l1"``, ``"l2"``,
            ``"l1_l2"`` or a regularizer object such as ``l2(0.01)``.
        input_shape, input_dim, name: see ``Layer``.

    Example:
        >>> Dense(50, activation="relu", input_shape=(784,))
    """

    units: int  # fixed by the constructor, unlike the base class's

    def __init__(
        self,
        units: int,
        activation: str | None = None,
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
        self._cache: tuple[Array, Array, Array] | None = None

    def build(self, input_features: int) -> int:
        self.input_features = input_features
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
    def output_activation(self) -> str:
        return self.activation

    def _bias(self) -> Array | None:
        return self.trainable_weights[1] if self.use_bias else None

    def _bias_gradient(self) -> Array | None:
        return self.gradients[1] if self.use_bias else None

    def forward(self, X: Array, *, training: bool) -> Array:
        Z, Y = self._bound_engine().dense_forward(
            X,
            self.trainable_weights[0],
            self._bias(),
            self.activation,
            workspace=self.workspace if training else None,
        )
        if training:
            self._cache = (X, Z, Y)
        return Y

    def _backward(self, dY: Array, activation: str, need_dX: bool) -> Array | None:
        X, Z, Y = _forward_cache(self, self._cache)
        engine = self._bound_engine()
        kernel, dkernel = self.trainable_weights[0], self.gradients[0]
        dX = engine.dense_backward(
            dY,
            X,
            kernel,
            Z,
            Y,
            activation,
            dW=dkernel,
            db=self._bias_gradient(),
            need_dX=need_dX,
            workspace=self.workspace,
        )
        if self.kernel_regularizer is not None:
            reg = self.kernel_regularizer
            engine.backprop_penalty(kernel, dkernel, l1=reg.l1, l2=reg.l2)
        if self.bias_regularizer is not None and self.use_bias:
            reg = self.bias_regularizer
            engine.backprop_penalty(self._bias(), self._bias_gradient(), l1=reg.l1, l2=reg.l2)
        return dX

    def backward(self, dY: Array, *, need_dX: bool) -> Array | None:
        return self._backward(dY, self.activation, need_dX)

    def backward_from_preactivation(self, dZ: Array, *, need_dX: bool) -> Array | None:
        return self._backward(dZ, "linear", need_dX)

    def penalties(self) -> list[Array]:
        out = []
        if self.kernel_regularizer is not None:
            reg = self.kernel_regularizer
            out.append(
                self._bound_engine().penalty(self.trainable_weights[0], l1=reg.l1, l2=reg.l2)
            )
        if self.bias_regularizer is not None and self.use_bias:
            reg = self.bias_regularizer
            out.append(self._bound_engine().penalty(self._bias(), l1=reg.l1, l2=reg.l2))
        return out

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            units=self.units,
            activation=self.activation,
            use_bias=self.use_bias,
            kernel_initializer=_serialize(self.kernel_initializer),
            bias_initializer=_serialize(self.bias_initializer),
            kernel_regularizer=_serialize(self.kernel_regularizer),
            bias_regularizer=_serialize(self.bias_regularizer),
        )
        return config


class Activation(Layer):
    """Applies an activation function by name: ``Activation("softmax")``."""

    def __init__(self, activation: str | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.activation = activations.get(activation)
        self._cache: tuple[Array, Array] | None = None

    @property
    def output_activation(self) -> str:
        return self.activation

    def forward(self, X: Array, *, training: bool) -> Array:
        Y = self._bound_engine().activation(self.activation, X)
        if training:
            self._cache = (X, Y)
        return Y

    def backward(self, dY: Array, *, need_dX: bool) -> Array | None:
        X, Y = _forward_cache(self, self._cache)
        return self._bound_engine().backprop_activation(self.activation, dY, X, Y)

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
        self._mask: Array | None = None

    def forward(self, X: Array, *, training: bool) -> Array:
        if not training or self.rate == 0:
            self._mask = None
            return X
        Y, self._mask = self._bound_engine().dropout(X, rate=self.rate)
        return Y

    def backward(self, dY: Array, *, need_dX: bool) -> Array | None:
        if self._mask is None:
            return dY
        return self._bound_engine().backprop_dropout(dY, self._mask)

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

    def __init__(
        self, alpha_initializer: Any = "zeros", alpha_regularizer: Any = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.alpha_initializer = initializers.get(alpha_initializer)
        self.alpha_regularizer = regularizers.get(alpha_regularizer)
        self._cache: Array | None = None

    def parameter_shapes(self) -> list[tuple[int, ...]]:
        return [] if self.input_features is None else [(self.input_features,)]

    def initial_values(self, rng: np.random.Generator, dtype: str) -> list[np.ndarray]:
        features = self.input_features
        if features is None:
            # ValueError, as the initializer raised for the shape (None,) before this check
            raise ValueError(
                f"layer {self.name!r} is not built yet: the shape of alpha, (features,), "
                "is unknown until the model holding it is built"
            )
        return [self.alpha_initializer((features,), dtype=dtype, rng=rng)]

    def forward(self, X: Array, *, training: bool) -> Array:
        if training:
            self._cache = X
        return self._bound_engine().prelu(X, self.trainable_weights[0])

    def backward(self, dY: Array, *, need_dX: bool) -> Array | None:
        alpha, dalpha = self.trainable_weights[0], self.gradients[0]
        engine = self._bound_engine()
        dX = engine.backprop_prelu(dY, self._cache, alpha, dalpha=dalpha)
        if self.alpha_regularizer is not None:
            reg = self.alpha_regularizer
            engine.backprop_penalty(alpha, dalpha, l1=reg.l1, l2=reg.l2)
        return dX

    def penalties(self) -> list[Array]:
        if self.alpha_regularizer is None:
            return []
        reg = self.alpha_regularizer
        return [self._bound_engine().penalty(self.trainable_weights[0], l1=reg.l1, l2=reg.l2)]

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            alpha_initializer=_serialize(self.alpha_initializer),
            alpha_regularizer=_serialize(self.alpha_regularizer),
        )
        return config


def assign_weights(
    engine: Engine,
    targets: Sequence[Array],
    shapes: Sequence[tuple[int, ...]],
    weights: Sequence[Any],
    dtype: str,
    caller: str,
) -> None:
    """Copy host ``weights`` into the engine arrays ``targets`` of ``shapes`` and ``dtype``.

    Every array is checked (count, numbers, finite, shape) before any is written,
    so a bad call leaves the parameters as they were.
    """
    weights = list(weights)
    if len(weights) != len(targets):
        raise ValueError(
            f"{caller} expected a list of {len(targets)} arrays (shapes {list(shapes)}), "
            f"received {len(weights)}"
        )
    arrays = []
    for i, (value, shape) in enumerate(zip(weights, shapes)):
        array = data_checks.as_numeric(value, f"weights[{i}]")
        if tuple(array.shape) != tuple(shape):
            raise ValueError(
                f"{caller}: weights[{i}] must have shape {tuple(shape)}, "
                f"received {tuple(array.shape)}"
            )
        arrays.append(array)
    for target, array in zip(targets, arrays):
        engine.assign(target, engine.asarray(array, dtype=dtype))


def _serialize(obj: Any) -> Any:
    if obj is None:
        return None
    return {"class_name": type(obj).__name__, "config": obj.get_config()}


LAYER_CLASSES: dict[str, type[Layer]] = {
    cls.__name__: cls for cls in (Dense, Activation, Dropout, PReLU)
}
