"""The layer base class, symbolic tensors and the nodes that connect layers into a graph.

A layer declares the shapes of its parameters; the model owns one flat
parameter buffer and one flat gradient buffer on the engine and hands each
layer views into them (``bind``). Calling a layer on symbolic tensors
(``KerasTensor``, made by ``Input``) records a ``Node``: the layer, the tensors
it read and the tensor it made. A model walks those nodes. Each node keeps its
own ``CallState`` (the arrays its forward pass kept for the backward pass and
its workspace), so one layer called twice shares its weights but not its
intermediate results.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from dlcore import config as config_module
from dlcore import data_checks, mixed_precision
from dlcore.backends.base import Array, Engine, Workspace

_name_counters: dict[str, itertools.count] = {}


def unique_name(prefix: str) -> str:
    """``prefix``, then ``prefix_1``, ``prefix_2``, ... as Keras names layers and models."""
    counter = _name_counters.setdefault(prefix, itertools.count())
    index = next(counter)
    return prefix if index == 0 else f"{prefix}_{index}"


def snake_case(class_name: str) -> str:
    """``"PReLU"`` -> ``"p_re_lu"``-free Keras-style names: ``"Dense"`` -> ``"dense"``."""
    out = []
    for i, char in enumerate(class_name):
        if char.isupper() and i and not class_name[i - 1].isupper():
            out.append("_")
        out.append(char.lower())
    return "".join(out)


def dims_from_shape(input_shape: Any, input_dim: Any, owner: str) -> tuple[int, ...] | None:
    """The per-sample shape of ``input_shape=(d1, ..., dk)`` or ``input_dim=features``."""
    if input_shape is not None and input_dim is not None:
        raise ValueError(f"{owner}: give input_shape or input_dim, not both")
    if input_dim is not None:
        input_shape = (input_dim,)
    if input_shape is None:
        return None
    if isinstance(input_shape, numbers.Integral):
        input_shape = (input_shape,)
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else None
    if (
        not shape
        or any(isinstance(d, bool) or not isinstance(d, numbers.Integral) for d in shape)
        or any(d < 1 for d in shape)
    ):
        raise ValueError(
            f"{owner} expected input_shape=(features,) or a per-sample shape such as "
            f"(28, 28) of positive integers (the batch size left out); received "
            f"input_shape={input_shape!r}"
        )
    return tuple(int(d) for d in shape)


def features_from_shape(input_shape: Any, input_dim: Any, owner: str) -> int | None:
    """The feature count of ``input_shape=(features,)`` or ``input_dim=features``; for a
    per-sample shape ``(d1, ..., dk)``, the number of values of a sample, ``d1 * ... * dk``
    (samples reach the engine as flat rows)."""
    dims = dims_from_shape(input_shape, input_dim, owner)
    return None if dims is None else math.prod(dims)


def shape_text(dims: Sequence[int]) -> str:
    """``"(None, 28, 28)"``: a batch of samples of per-sample shape ``dims``."""
    return "(" + ", ".join(["None", *(str(d) for d in dims)]) + ")"


class KerasTensor:
    """A symbolic batch, shape ``(None, *dims)``: what ``Input`` returns and what calling
    a layer on symbolic tensors returns. ``features`` is the number of values of one
    sample (``prod(dims)``): on the engine a batch is ``(N, features)``, each sample a
    row-major flat row; ``dims`` is ``(features,)`` unless a multi-dimensional ``Input``
    or a ``Reshape`` made it."""

    def __init__(
        self,
        features: int,
        node: Node | None,
        name: str,
        input_layer: Layer | None = None,
        dims: tuple[int, ...] | None = None,
    ) -> None:
        self.features = features
        self.node = node  # the node that made this tensor; set for every tensor but Input's
        self.name = name
        self.input_layer = input_layer  # the InputLayer that made it, for an Input's tensor
        self.dims: tuple[int, ...] = (features,) if dims is None else tuple(dims)

    @property
    def shape(self) -> tuple[int | None, ...]:
        return (None, *self.dims)

    def __repr__(self) -> str:
        return f"<KerasTensor shape={self.shape}, name={self.name}>"


class Node:
    """One call of a layer in a graph: ``outputs = layer(inputs)``."""

    def __init__(self, layer: Layer, inputs: list[KerasTensor], merges: bool) -> None:
        self.layer = layer
        self.inputs = inputs
        self.merges = merges  # the layer was called on a list of tensors
        self.index = len(layer.inbound_nodes)  # this call's number among the layer's calls
        self.output: KerasTensor = KerasTensor(0, self, "")


class CallState:
    """What one node keeps between its forward and backward pass of a training step."""

    __slots__ = ("cache", "workspace")

    def __init__(self, engine: Engine) -> None:
        self.cache: Any = None
        self.workspace = Workspace(engine)

    def kept(self, layer: Layer) -> Any:
        """What ``forward(training=True)`` kept for ``backward``."""
        if self.cache is None:
            raise RuntimeError(
                f"layer {layer.name!r}: backward() needs a forward(..., training=True) call first"
            )
        return self.cache


class Variable:
    """A layer's weight as Keras exposes it: ``.numpy()``, ``.assign()``, ``.shape``, ``.path``.

    It reads and writes the layer's view into its model's flat parameter buffer.
    """

    def __init__(self, layer: Layer, index: int, name: str) -> None:
        self._layer = layer
        self._index = index
        self.name = name

    @property
    def path(self) -> str:
        return f"{self._layer.name}/{self.name}"

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._layer.parameter_shapes()[self._index])

    @property
    def dtype(self) -> str:
        carried = self._layer._carried
        return str(carried[self._index].dtype) if carried is not None else self._layer.dtype

    @property
    def trainable(self) -> bool:
        return self._layer.weight_trainable()[self._index]

    @property
    def value(self) -> Array:
        """The engine array (a view into the model's flat buffer)."""
        return self._layer.bound_variables()[self._index]

    def numpy(self) -> np.ndarray:
        """A host copy, ``shape`` in the model's float dtype."""
        return self._layer.get_weights()[self._index]

    def assign(self, value: Any) -> None:
        """Overwrite the weight; ``value`` must have this weight's shape."""
        layer = self._layer
        if layer._carried is not None:
            values = layer.get_weights()
            values[self._index] = value
            layer.set_weights(values)
            return
        assign_weights(
            layer.bound_engine(), [self.value], [self.shape], [value], layer.dtype, self.path
        )

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        array = self.numpy()
        return array if dtype is None else array.astype(dtype)

    def __repr__(self) -> str:
        return f"<Variable path={self.path}, shape={self.shape}, dtype={self.dtype}>"


class Layer:
    """Base class of layers.

    Args:
        name: the layer's name in ``summary()`` and in ``get_layer``; unique if omitted.
        input_shape: ``(features,)``, on a ``Sequential`` model's first layer (Keras style).
        input_dim: ``features``, the Keras 2 spelling of ``input_shape``.
        trainable: whether ``fit`` updates the layer's weights.
        dtype: the layer's dtype policy (``dlcore.mixed_precision``): a name such as
            ``"mixed_float16"`` or ``"float32"``, a ``DTypePolicy``, or ``None`` for
            the global policy.
    """

    weight_names: tuple[str, ...] = ()
    #: weights that no gradient reaches and no optimizer updates, even when the layer is
    #: trainable (BatchNormalization's moving statistics): the layer sets them itself
    non_trainable_names: tuple[str, ...] = ()

    def __init__(
        self,
        *,
        name: str | None = None,
        input_shape: Any = None,
        input_dim: int | None = None,
        trainable: bool = True,
        dtype: Any = None,
        **kwargs: Any,
    ) -> None:
        cls = type(self).__name__
        if kwargs:
            raise TypeError(f"{cls} got unexpected keyword argument(s): {', '.join(kwargs)}")
        if name is not None and (not isinstance(name, str) or not name or "/" in name):
            raise ValueError(f"{cls} expected a non-empty name without '/', received {name!r}")
        self.name = name or unique_name(snake_case(cls))
        # the per-sample shape of the input, when known and the layer takes one tensor
        self.input_dims: tuple[int, ...] | None = dims_from_shape(input_shape, input_dim, cls)
        # the input width: an int, or one per input (a list) for a merging layer
        self.input_features: Any = None if self.input_dims is None else math.prod(self.input_dims)
        self.units: int | None = None  # output features once the input width is known
        self.trainable = bool(trainable)
        self.inbound_nodes: list[Node] = []
        self.engine: Engine | None = None
        self.dtype_policy = mixed_precision.get(dtype)
        self.dtype = "float32"  # the model's dtype (its weights'), set by bind
        # the dtype this layer computes in on its engine, set by bind: the policy's
        # compute dtype, or the model's where the engine has no kernels for it
        self.run_dtype = "float32"
        # the dtype the layer's matrix products round their operands to, where the
        # engine computes run_dtype arrays with products in the policy's compute dtype
        self.product_dtype: str | None = None
        # the views forward and backward use; the master weights and their gradients
        # (_variables, _variable_grads) are the same arrays unless run_dtype differs
        # from dtype, when these are copies in run_dtype
        self._params: list[Array] = []
        self._grads: list[Array] = []
        self._variables: list[Array] = []
        self._variable_grads: list[Array] = []
        self._owner: Any = None  # the model whose buffer the views belong to
        self._carried: list[np.ndarray] | None = None  # values a copied layer brings along

    # -------------------------------------------------------------- structure
    def output_features(self, input_features: Any) -> int:
        """Fix the input width (an int, or a list for merging layers); returns the output width.

        Raises ``ValueError`` naming the layer when the width conflicts with the one it
        was built with (a shared layer called on tensors of another width).
        """
        if self.input_features is not None and self.input_features != input_features:
            raise ValueError(
                f"layer {self.name!r} expects inputs with {self.input_features} features, "
                f"received {input_features}"
            )
        self.input_features = input_features
        self.units = self._width_after(input_features)
        return self.units

    def _width_after(self, input_features: Any) -> int:
        return int(input_features)

    def parameter_shapes(self) -> list[tuple[int, ...]]:
        """Shapes of the parameters, in Keras's ``get_weights`` order (empty until built)."""
        return []

    def initial_values(self, rng: np.random.Generator, dtype: str) -> list[np.ndarray]:
        """Host initial values of the parameters, one per ``parameter_shapes`` entry."""
        return []

    @property
    def compute_dtype(self) -> str:
        """The policy's compute dtype (Keras's ``layer.compute_dtype``)."""
        return self.dtype_policy.compute_dtype

    @property
    def variable_dtype(self) -> str:
        """The policy's variable dtype (Keras's ``layer.variable_dtype``)."""
        return self.dtype_policy.variable_dtype

    def bind(
        self,
        engine: Engine,
        params: list[Array],
        grads: list[Array],
        dtype: str,
        owner: Any = None,
        *,
        run_dtype: str | None = None,
        variables: list[Array] | None = None,
        variable_grads: list[Array] | None = None,
        product_dtype: str | None = None,
    ) -> None:
        """Attach the layer to its views into ``owner``'s flat buffers (of ``dtype``).

        ``params`` and ``grads`` are what ``forward`` and ``backward`` use, in
        ``run_dtype`` (default ``dtype``); when that differs, ``variables`` and
        ``variable_grads`` are the master weights and gradients in ``dtype``, which
        the owner keeps in step with them. ``product_dtype``: what the layer's matrix
        products round their operands to (``mixed_precision.dtypes_on``).
        """
        self.engine = engine
        self._params = params
        self._grads = grads
        self._variables = params if variables is None else variables
        self._variable_grads = grads if variable_grads is None else variable_grads
        self.dtype = dtype
        self.run_dtype = dtype if run_dtype is None else run_dtype
        self.product_dtype = product_dtype
        self._owner = owner
        self._carried = None

    def bound_engine(self) -> Engine:
        """The engine given by ``bind``; the layer must belong to a built model."""
        if self.engine is None:
            raise RuntimeError(
                f"layer {self.name!r} has no weights yet: they are made when a model holding "
                "it is built (give the first layer input_shape=(features,), start with "
                "Input(shape=(features,)), or fit/predict the model)"
            )
        return self.engine

    def bound_params(self) -> list[Array]:
        """The weights as ``forward`` reads them, in ``run_dtype``."""
        self.bound_engine()
        return self._params

    def bound_variables(self) -> list[Array]:
        """The master weights, in the model's dtype."""
        self.bound_engine()
        return self._variables

    def carry(self, values: list[np.ndarray]) -> None:
        """Hold ``values`` on the host until a model puts the layer on an engine."""
        self._carried = values

    def host_values(self) -> list[np.ndarray] | None:
        """Host copies of the current parameter values, or ``None`` when the layer has none yet."""
        if self._carried is not None:
            return [value.copy() for value in self._carried]
        if self.engine is None or not self._variables:
            return None
        return [self.engine.to_numpy(param) for param in self._variables]

    # -------------------------------------------------------------- weights
    @property
    def built(self) -> bool:
        """Whether the input width, hence every parameter shape, is known."""
        return self.input_features is not None

    @property
    def weights(self) -> list[Variable]:
        """Every weight of the layer as a ``Variable`` (Dense: kernel, then bias)."""
        if self.engine is None and self._carried is None:
            return []
        return [Variable(self, i, name) for i, name in enumerate(self._weight_names())]

    def _weight_names(self) -> list[str]:
        return list(self.weight_names[: len(self.parameter_shapes())])

    def weight_trainable(self) -> list[bool]:
        """Per weight, in ``parameter_shapes`` order: whether ``fit`` updates it (the layer
        is trainable and the weight is not one of ``non_trainable_names``)."""
        return [
            self.trainable and name not in self.non_trainable_names for name in self._weight_names()
        ]

    @property
    def trainable_weights(self) -> list[Variable]:
        return [w for w, flag in zip(self.weights, self.weight_trainable()) if flag]

    @property
    def non_trainable_weights(self) -> list[Variable]:
        return [w for w, flag in zip(self.weights, self.weight_trainable()) if not flag]

    def get_weights(self) -> list[np.ndarray]:
        """Host copies of this layer's parameters (Dense: kernel ``(in, out)``, then bias);
        empty for a layer without weights, or whose input width is not known yet."""
        if not self.parameter_shapes():
            return []
        if self._carried is not None:
            return [value.copy() for value in self._carried]
        engine = self.bound_engine()
        return [engine.to_numpy(param) for param in self._variables]

    def set_weights(self, weights: Sequence[Any]) -> None:
        """Replace this layer's parameters; every shape is checked before any is written."""
        if self._carried is not None:
            self._carried = checked_arrays(
                self.parameter_shapes(), weights, f"{self.name}.set_weights", self._carried
            )
            return
        assign_weights(
            self.bound_engine(),
            self._variables,
            self.parameter_shapes(),
            weights,
            self.dtype,
            f"{self.name}.set_weights",
        )

    def count_params(self) -> int:
        """Number of scalars in the layer's parameters (0 before the layer is built)."""
        return sum(int(np.prod(shape)) for shape in self.parameter_shapes())

    def count_trainable_params(self) -> int:
        """Number of scalars in the weights ``fit`` updates (``weight_trainable``)."""
        return sum(
            int(np.prod(shape))
            for shape, flag in zip(self.parameter_shapes(), self.weight_trainable())
            if flag
        )

    @property
    def output_shape(self) -> tuple[int | None, ...]:
        """``(None, *dims)`` of the layer's output (its first call's), as ``summary`` shows it."""
        if self.inbound_nodes:
            return self.inbound_nodes[0].output.shape
        output = getattr(self, "output", None)  # an InputLayer's tensor
        if isinstance(output, KerasTensor):
            return output.shape
        return (None, self.units)

    @property
    def output_activation(self) -> str:
        """The activation applied last by this layer (``"linear"`` when none)."""
        return "linear"

    @property
    def fused_output_ok(self) -> bool:
        """Whether ``backward_from_preactivation`` is implemented (the fused
        softmax/sigmoid cross-entropy gradient can enter the layer before its activation)."""
        return False

    # -------------------------------------------------------------- graph
    def __call__(self, inputs: Any) -> KerasTensor:
        """Call the layer on symbolic tensors (``Input(...)`` or another layer's output)."""
        merges = isinstance(inputs, (list, tuple))
        tensors = list(inputs) if merges else [inputs]
        if not tensors or not all(isinstance(t, KerasTensor) for t in tensors):
            raise TypeError(
                f"layer {self.name!r} must be called on symbolic tensors made by "
                f"dlcore.layers.Input(shape=(features,)) or by another layer, received "
                f"{inputs!r}; to compute on arrays, build a Model and call predict"
            )
        self._check_call(tensors, merges)
        in_dims = [t.dims for t in tensors]
        declared = self.input_dims
        # a flat width that differs is output_features's error, as before
        multi = declared is not None and len(declared) + len(in_dims[0]) > 2
        if not merges and multi and declared is not None and declared != in_dims[0]:
            raise ValueError(
                f"layer {self.name!r} expects inputs of shape {shape_text(declared)}, "
                f"received {shape_text(in_dims[0])}"
            )
        widths = [t.features for t in tensors]
        out_dims = self.output_dims(in_dims)
        features = self.output_features(widths if merges else widths[0])
        if not merges:
            self.input_dims = in_dims[0]
        node = Node(self, tensors, merges)
        node.output = KerasTensor(
            features,
            node,
            f"{self.name}_{node.index}",
            dims=out_dims if out_dims is not None else (features,),
        )
        self.inbound_nodes.append(node)
        return node.output

    # Whether each output value depends on the input value at the same position only,
    # so the layer keeps a multi-dimensional per-sample shape (Dropout, ReLU); a layer
    # that computes on whole feature rows (Dense, softmax, merges) takes flat features.
    elementwise = False

    def output_dims(self, input_dims: list[tuple[int, ...]]) -> tuple[int, ...] | None:
        """The per-sample shape of the output for inputs of per-sample shapes ``input_dims``;
        ``None`` means flat, ``(output_features,)``.

        Raises ``ValueError`` when a layer that is not ``elementwise`` gets a
        multi-dimensional input: dlcore computes on flat rows and would not compute what
        Keras computes on the last axis.
        """
        if all(len(dims) == 1 for dims in input_dims):
            return None
        if self.elementwise and len(input_dims) == 1:
            return input_dims[0]
        received = ", ".join(shape_text(dims) for dims in input_dims)
        raise ValueError(
            f"{type(self).__name__} expects flat features (None, n), received {received}: "
            "add Flatten() before it"
        )

    def _check_call(self, tensors: list[KerasTensor], merges: bool) -> None:
        if merges:
            raise TypeError(
                f"layer {self.name!r} ({type(self).__name__}) takes one tensor, received a "
                f"list of {len(tensors)}; merge them first, e.g. with Concatenate()"
            )

    # -------------------------------------------------------------- computation
    def forward(self, X: Any, *, training: bool, state: CallState | None = None) -> Array:
        """``(N, input_features)`` to ``(N, units)``, float; with ``training``, keeps in
        ``state`` what ``backward`` needs."""
        return X

    def backward(
        self,
        dY: Array,
        *,
        state: CallState,
        need_dX: bool,
        param_grads: list[Array] | None,
    ) -> Any:
        """Gradient with respect to the input (a list for merging layers, ``None`` without
        ``need_dX``); writes the parameter gradients into ``param_grads`` unless it is
        ``None`` (a frozen layer)."""
        return dY

    def backward_from_preactivation(
        self,
        dZ: Array,
        *,
        state: CallState,
        need_dX: bool,
        param_grads: list[Array] | None,
    ) -> Any:
        """Like ``backward`` when the caller already has the gradient with respect
        to the input of ``output_activation`` (the fused softmax/cross-entropy path);
        only layers whose ``fused_output_ok`` is true take it."""
        raise TypeError(
            f"layer {self.name!r} ({type(self).__name__}) takes no gradient before its "
            "activation: the trainer asks only layers whose fused_output_ok is true"
        )

    def penalties(self) -> list[Array]:
        """Regularization penalties of this layer's trainable weights, as 0-d engine arrays,
        computed on the master weights."""
        return []

    def backprop_penalties(self, scale: float = 1.0) -> None:
        """Add ``scale`` times the gradients of ``penalties`` to the master weight gradients
        (``scale`` is the loss scale those gradients carry)."""

    @property
    def regularized(self) -> bool:
        return False

    # -------------------------------------------------------------- description
    def get_config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments; ``from_config`` reverses it."""
        config: dict[str, Any] = {"name": self.name, "trainable": self.trainable}
        if self.dtype_policy.name != config_module.floatx():
            config["dtype"] = self.dtype_policy.name
        if self.input_dims is not None:
            config["input_shape"] = list(self.input_dims)
        elif isinstance(self.input_features, int):
            config["input_shape"] = [self.input_features]
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Layer:
        """Recreate a layer from ``get_config``'s output."""
        return cls(**config)

    def __getstate__(self) -> dict[str, Any]:
        # engines hold modules and device memory: a copy carries host values instead
        state = dict(self.__dict__)
        state.update(
            engine=None,
            _params=[],
            _grads=[],
            _owner=None,
            _carried=self.host_values(),
            inbound_nodes=[],
        )
        return state

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name!r}>"


def checked_arrays(
    shapes: Sequence[tuple[int, ...]],
    weights: Sequence[Any],
    caller: str,
    like: Sequence[np.ndarray] | None = None,
) -> list[np.ndarray]:
    """``weights`` as host arrays, each checked (count, numbers, finite, shape) against
    ``shapes``; in the dtypes of ``like`` when given."""
    weights = list(weights)
    if len(weights) != len(shapes):
        raise ValueError(
            f"{caller} expected a list of {len(shapes)} arrays (shapes {list(shapes)}), "
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
        arrays.append(array if like is None else array.astype(like[i].dtype))
    return arrays


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
    arrays = checked_arrays(shapes, weights, caller)
    for target, array in zip(targets, arrays):
        engine.assign(target, engine.asarray(array, dtype=dtype))


def serialize(obj: Any) -> Any:
    """``{"class_name", "config"}`` of an initializer or regularizer, ``None`` for none."""
    if obj is None:
        return None
    return {"class_name": type(obj).__name__, "config": obj.get_config()}
