"""Export of a model's inference graph to an ONNX file (``Model.export(path)``).

The graph mirrors what ``predict`` computes: each node of the model becomes one or a
few ONNX operators (opset 17 by default), the weights float32 initializers. As on the
engines, every tensor inside the graph is a batch of flat rows ``(batch, features)``:
an input of a multi-dimensional per-sample shape is flattened first, ``Flatten`` and
``Reshape`` change nothing, and an output of such a shape is reshaped last. Inputs and
outputs keep the model's names and a dynamic batch dimension named ``"batch"``.

Layers that behave differently in training (``Dropout``, the noise layers,
``BatchNormalization``) are exported in their inference form. A layer or activation
that ONNX cannot express (a custom activation, a layer dlcore does not know) is
refused by its name before anything is written.

The ``onnx`` package (``pip install dlcore[onnx]``) is imported only here, inside the
functions, so importing dlcore never needs it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from dlcore.backends.names import ELU_ALPHA, LEAKY_RELU_NEGATIVE_SLOPE, SELU_ALPHA, SELU_SCALE
from dlcore.backends.xp_normalization import STANDARDIZE_FLOOR
from dlcore.layers import (
    ELU,
    Activation,
    Add,
    AlphaDropout,
    Average,
    BatchNormalization,
    Concatenate,
    Dense,
    Dropout,
    Flatten,
    GaussianDropout,
    GaussianNoise,
    Layer,
    LayerNormalization,
    LeakyReLU,
    Maximum,
    Minimum,
    Multiply,
    Normalization,
    PReLU,
    ReLU,
    Reshape,
    Softmax,
    Subtract,
)

#: the opset written unless ``opset_version=`` asks for another (17: LayerNormalization)
DEFAULT_OPSET = 17
MIN_OPSET = 17
BATCH_DIM = "batch"

# the activations with one ONNX operator of the same formula, and its attributes
_ONE_OPERATOR: dict[str, tuple[str, dict[str, Any]]] = {
    "relu": ("Relu", {}),
    "sigmoid": ("Sigmoid", {}),
    "tanh": ("Tanh", {}),
    "softmax": ("Softmax", {"axis": -1}),
    "leaky_relu": ("LeakyRelu", {"alpha": LEAKY_RELU_NEGATIVE_SLOPE}),
    "elu": ("Elu", {"alpha": ELU_ALPHA}),
    "selu": ("Selu", {"alpha": SELU_ALPHA, "gamma": SELU_SCALE}),
    "softplus": ("Softplus", {}),
    "softsign": ("Softsign", {}),
    # dlcore's hard_sigmoid is clip(x / 6 + 1/2, 0, 1), Keras 3's
    "hard_sigmoid": ("HardSigmoid", {"alpha": 1.0 / 6.0, "beta": 0.5}),
    "exponential": ("Exp", {}),
}

#: every activation name the export writes (the rest, custom ones, are refused)
EXPORTABLE_ACTIVATIONS: tuple[str, ...] = ("linear", "swish", "gelu", *_ONE_OPERATOR)


def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError as error:
        raise ImportError(
            "exporting to ONNX needs the onnx package: pip install dlcore[onnx]"
        ) from error
    return onnx


class _GraphBuilder:
    """The nodes, initializers and value names of the ONNX graph being written."""

    def __init__(self, onnx: Any, reserved: list[str]) -> None:
        self.helper = onnx.helper
        self.numpy_helper = onnx.numpy_helper
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._taken: set[str] = set(reserved)

    def fresh(self, hint: str) -> str:
        """A value name not used yet, ``hint`` itself if free, else ``hint_1``, ..."""
        name, k = hint, 0
        while name in self._taken:
            k += 1
            name = f"{hint}_{k}"
        self._taken.add(name)
        return name

    def constant(self, hint: str, value: Any, dtype: Any = np.float32) -> str:
        """An initializer holding ``value`` (float32 unless ``dtype``); its name."""
        name = self.fresh(hint)
        array = np.asarray(value, dtype=dtype)
        self.initializers.append(self.numpy_helper.from_array(array, name=name))
        return name

    def op(
        self, op_type: str, inputs: list[str], hint: str, *, output: str | None = None, **attrs: Any
    ) -> str:
        """Append the operator ``op_type`` on ``inputs``; the name of its output
        (``output`` when given, which the caller has reserved)."""
        out = output if output is not None else self.fresh(hint)
        self.nodes.append(self.helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out


# ---------------------------------------------------------------------- activations
def _activation(graph: _GraphBuilder, name: str, x: str, hint: str, owner: Layer) -> str:
    """The ONNX operators of the activation ``name`` applied to the value ``x``."""
    if name == "linear":
        return x
    if name in _ONE_OPERATOR:
        op_type, attrs = _ONE_OPERATOR[name]
        return graph.op(op_type, [x], f"{hint}/{name}", **attrs)
    if name == "swish":
        s = graph.op("Sigmoid", [x], f"{hint}/sigmoid")
        return graph.op("Mul", [x, s], f"{hint}/swish")
    if name == "gelu":  # the exact form, 0.5 x (1 + erf(x / sqrt(2)))
        scaled = graph.op("Mul", [x, graph.constant(f"{hint}/inv_sqrt2", 1 / math.sqrt(2))], hint)
        erf = graph.op("Erf", [scaled], f"{hint}/erf")
        one_plus = graph.op("Add", [erf, graph.constant(f"{hint}/one", 1.0)], hint)
        half_x = graph.op("Mul", [x, graph.constant(f"{hint}/half", 0.5)], hint)
        return graph.op("Mul", [half_x, one_plus], f"{hint}/gelu")
    raise _activation_refused(owner, name)


def _activation_refused(owner: Layer, name: str) -> ValueError:
    return ValueError(
        f"layer {owner.name!r} ({type(owner).__name__}) uses the activation {name!r}, which "
        "the ONNX export cannot express (a custom activation is Python code); exportable "
        f"activations: {', '.join(sorted(EXPORTABLE_ACTIVATIONS))}"
    )


# ---------------------------------------------------------------------- layers
# Each converter takes the graph, the layer, the names of its input values (flat rows
# (batch, features)) and the layer's weights (float32, Keras's order), and returns the
# name of its output value.
_Converter = Callable[[_GraphBuilder, Any, list[str], list[np.ndarray]], str]


def _dense(graph: _GraphBuilder, layer: Dense, xs: list[str], weights: list[np.ndarray]) -> str:
    kernel = graph.constant(f"{layer.name}/kernel", weights[0])
    if layer.use_bias:
        bias = graph.constant(f"{layer.name}/bias", weights[1])
        z = graph.op("Gemm", [xs[0], kernel, bias], f"{layer.name}/gemm")
    else:
        z = graph.op("MatMul", [xs[0], kernel], f"{layer.name}/matmul")
    return _activation(graph, layer.activation, z, layer.name, layer)


def _activation_layer(
    graph: _GraphBuilder, layer: Activation, xs: list[str], weights: list[np.ndarray]
) -> str:
    return _activation(graph, layer.activation, xs[0], layer.name, layer)


def _identity(graph: _GraphBuilder, layer: Layer, xs: list[str], weights: list[np.ndarray]) -> str:
    return xs[0]  # inference form of dropout and noise; the flat rows of Flatten/Reshape


def _prelu(graph: _GraphBuilder, layer: PReLU, xs: list[str], weights: list[np.ndarray]) -> str:
    alpha = graph.constant(f"{layer.name}/alpha", weights[0])
    return graph.op("PRelu", [xs[0], alpha], layer.name)


def _relu_family(
    graph: _GraphBuilder, layer: ReLU, xs: list[str], weights: list[np.ndarray]
) -> str:
    x, name = xs[0], layer.name
    slope, ceiling, threshold = layer.negative_slope, layer.max_value, layer.threshold
    if ceiling is None and threshold == 0:
        if slope == 0:
            return graph.op("Relu", [x], name)
        return graph.op("LeakyRelu", [x], name, alpha=slope)
    # min(x, max_value) where x > threshold, else negative_slope * (x - threshold)
    t = graph.constant(f"{name}/threshold", threshold)
    above = graph.op("Greater", [x, t], f"{name}/above")
    upper = (
        x
        if ceiling is None
        else graph.op("Min", [x, graph.constant(f"{name}/max_value", ceiling)], f"{name}/upper")
    )
    shifted = graph.op("Sub", [x, t], f"{name}/shifted")
    lower = graph.op("Mul", [shifted, graph.constant(f"{name}/slope", slope)], f"{name}/lower")
    return graph.op("Where", [above, upper, lower], name)


def _elu(graph: _GraphBuilder, layer: ELU, xs: list[str], weights: list[np.ndarray]) -> str:
    return graph.op("Elu", [xs[0]], layer.name, alpha=layer.alpha)


def _softmax(graph: _GraphBuilder, layer: Softmax, xs: list[str], weights: list[np.ndarray]) -> str:
    return graph.op("Softmax", [xs[0]], layer.name, axis=-1)


def _variadic(op_type: str) -> _Converter:
    def convert(
        graph: _GraphBuilder, layer: Layer, xs: list[str], weights: list[np.ndarray]
    ) -> str:
        return graph.op(op_type, list(xs), layer.name)

    return convert


def _multiply(graph: _GraphBuilder, layer: Layer, xs: list[str], weights: list[np.ndarray]) -> str:
    product = xs[0]
    for k, x in enumerate(xs[1:], start=1):  # ONNX's Mul takes two inputs
        product = graph.op("Mul", [product, x], f"{layer.name}/mul{k}")
    return product


def _concatenate(
    graph: _GraphBuilder, layer: Concatenate, xs: list[str], weights: list[np.ndarray]
) -> str:
    return graph.op("Concat", list(xs), layer.name, axis=1)


def _affine_parts(
    graph: _GraphBuilder, layer: Any, weights: list[np.ndarray]
) -> tuple[str, str | None]:
    """``gamma`` (ones without ``scale``) and ``beta`` (``None`` without ``center``)."""
    features = int(layer.input_features)
    gamma = weights[0] if layer.scale else np.ones(features, dtype=np.float32)
    beta = weights[int(layer.scale)] if layer.center else None
    return (
        graph.constant(f"{layer.name}/gamma", gamma),
        None if beta is None else graph.constant(f"{layer.name}/beta", beta),
    )


def _batch_normalization(
    graph: _GraphBuilder, layer: BatchNormalization, xs: list[str], weights: list[np.ndarray]
) -> str:
    gamma, beta = _affine_parts(graph, layer, weights)
    if beta is None:
        beta = graph.constant(f"{layer.name}/beta", np.zeros(int(layer.input_features)))
    mean = graph.constant(f"{layer.name}/moving_mean", weights[-2])
    variance = graph.constant(f"{layer.name}/moving_variance", weights[-1])
    return graph.op(
        "BatchNormalization",
        [xs[0], gamma, beta, mean, variance],
        layer.name,
        epsilon=layer.epsilon,
    )


def _layer_normalization(
    graph: _GraphBuilder, layer: LayerNormalization, xs: list[str], weights: list[np.ndarray]
) -> str:
    gamma, beta = _affine_parts(graph, layer, weights)
    inputs = [xs[0], gamma] + ([] if beta is None else [beta])
    return graph.op("LayerNormalization", inputs, layer.name, axis=-1, epsilon=layer.epsilon)


def _normalization(
    graph: _GraphBuilder, layer: Normalization, xs: list[str], weights: list[np.ndarray]
) -> str:
    mean_values, variance = weights
    if not layer.ready:
        raise ValueError(
            f"Normalization layer {layer.name!r} has no statistics yet: call "
            "layer.adapt(data) (or give mean= and variance=) before exporting the model"
        )
    # the divisor max(sqrt(variance), 1e-7), rounded to float32 as the engines compute it
    root = np.sqrt(variance.astype(np.float32))
    divisor = graph.constant(
        f"{layer.name}/divisor", np.maximum(root, np.float32(STANDARDIZE_FLOOR))
    )
    mean = graph.constant(f"{layer.name}/mean", mean_values)
    if layer.invert:  # mean + x * d
        scaled = graph.op("Mul", [xs[0], divisor], f"{layer.name}/scaled")
        return graph.op("Add", [mean, scaled], layer.name)
    centered = graph.op("Sub", [xs[0], mean], f"{layer.name}/centered")
    return graph.op("Div", [centered, divisor], layer.name)


# exact classes: a user's subclass may compute something else, so it is refused
_CONVERTERS: dict[type, _Converter] = {
    Dense: _dense,
    Activation: _activation_layer,
    Dropout: _identity,
    GaussianNoise: _identity,
    GaussianDropout: _identity,
    AlphaDropout: _identity,
    Flatten: _identity,
    Reshape: _identity,
    PReLU: _prelu,
    ReLU: _relu_family,
    LeakyReLU: _relu_family,
    ELU: _elu,
    Softmax: _softmax,
    Add: _variadic("Sum"),
    Subtract: _variadic("Sub"),
    Multiply: _multiply,
    Average: _variadic("Mean"),
    Maximum: _variadic("Max"),
    Minimum: _variadic("Min"),
    Concatenate: _concatenate,
    BatchNormalization: _batch_normalization,
    LayerNormalization: _layer_normalization,
    Normalization: _normalization,
}


def _converter(layer: Layer) -> _Converter:
    convert = _CONVERTERS.get(type(layer))
    if convert is None:
        known = ", ".join(sorted(cls.__name__ for cls in _CONVERTERS))
        raise ValueError(
            f"layer {layer.name!r} ({type(layer).__name__}) has no ONNX form, so the model "
            f"cannot be exported; exportable layers: {known}"
        )
    return convert


# ---------------------------------------------------------------------- the model
def _check_opset(opset_version: Any, onnx: Any) -> int:
    newest = int(onnx.defs.onnx_opset_version())
    if opset_version is None:
        return DEFAULT_OPSET
    if (
        isinstance(opset_version, bool)
        or not isinstance(opset_version, (int, np.integer))
        or not MIN_OPSET <= opset_version <= newest
    ):
        raise ValueError(
            f"export expected opset_version, an integer from {MIN_OPSET} (LayerNormalization) "
            f"to {newest} (the newest this onnx package knows), received "
            f"opset_version={opset_version!r}"
        )
    return int(opset_version)


def to_onnx(model: Any, opset_version: int | None = None) -> Any:
    """The ONNX model (an ``onnx.ModelProto``) of ``model``'s inference graph.

    Args:
        model: a built ``Model`` or ``Sequential`` of exportable layers.
        opset_version: the ONNX opset, ``None`` for 17; at least 17.

    Returns:
        An ``onnx.ModelProto``: inputs named ``model.input_names``, float32
        ``(batch, *per-sample shape)``; outputs named ``model.output_names``, float32
        ``(batch, *per-sample shape)``; ``batch`` a dynamic dimension.

    Raises:
        ValueError: a layer or activation has no ONNX form (named in the message), the
            model is not built, or ``opset_version`` is out of range.
        ImportError: the ``onnx`` package is missing (``pip install dlcore[onnx]``).
    """
    onnx = _import_onnx()
    opset = _check_opset(opset_version, onnx)
    model._ensure_built("export()")
    for node in model._nodes:  # refused by name before any weight is read
        _converter(node.layer)
        activation = getattr(node.layer, "activation", None)
        if isinstance(activation, str) and activation not in EXPORTABLE_ACTIVATIONS:
            raise _activation_refused(node.layer, activation)
    flat = model.get_weights()
    weights: dict[int, list[np.ndarray]] = {}
    start = 0
    for layer in model._param_layers:
        count = len(layer.parameter_shapes())
        weights[id(layer)] = [w.astype(np.float32) for w in flat[start : start + count]]
        start += count

    helper, TensorProto = onnx.helper, onnx.TensorProto
    input_names, output_names = list(model.input_names), list(model.output_names)
    graph = _GraphBuilder(onnx, input_names + output_names)
    values: dict[int, str] = {}
    graph_inputs = []
    for tensor, name in zip(model.inputs, input_names):
        graph_inputs.append(
            helper.make_tensor_value_info(name, TensorProto.FLOAT, [BATCH_DIM, *tensor.dims])
        )
        values[id(tensor)] = (
            graph.op("Flatten", [name], f"{name}/flat", axis=1) if len(tensor.dims) > 1 else name
        )
    for node in model._nodes:
        layer = node.layer
        xs = [values[id(t)] for t in node.inputs]
        values[id(node.output)] = _converter(layer)(graph, layer, xs, weights.get(id(layer), []))
    graph_outputs = []
    for tensor, name in zip(model.outputs, output_names):
        source = values[id(tensor)]
        if len(tensor.dims) > 1:
            shape = graph.constant(f"{name}/shape", [-1, *tensor.dims], dtype=np.int64)
            graph.op("Reshape", [source, shape], name, output=name)
        else:
            graph.op("Identity", [source], name, output=name)
        graph_outputs.append(
            helper.make_tensor_value_info(name, TensorProto.FLOAT, [BATCH_DIM, *tensor.dims])
        )
    onnx_graph = helper.make_graph(
        graph.nodes, model.name, graph_inputs, graph_outputs, initializer=graph.initializers
    )
    opsets = [helper.make_opsetid("", opset)]
    proto = helper.make_model(
        onnx_graph,
        opset_imports=opsets,
        producer_name="dlcore",
        ir_version=helper.find_min_ir_version_for(opsets),
    )
    onnx.checker.check_model(proto)
    return proto


def _check_format(filepath: Any, format: Any) -> None:  # noqa: A002  (Keras's name)
    if format is None:
        if not str(os.fspath(filepath)).lower().endswith(".onnx"):
            raise ValueError(
                "export could not tell the format from the file name: dlcore exports "
                f"format='onnx'; received filepath={os.fspath(filepath)!r}; pass "
                "format='onnx' or a path ending in .onnx"
            )
        return
    if format != "onnx":
        raise ValueError(
            f"dlcore exports only format='onnx', received format={format!r} (Keras's "
            "'tf_saved_model', 'openvino', 'litert' and 'torch' need their own runtimes); "
            "pass format='onnx'"
        )


def export(
    model: Any,
    filepath: str | os.PathLike[str],
    format: str | None = None,  # noqa: A002  (Keras's name)
    verbose: bool | None = None,
    input_signature: Any = None,
    opset_version: int | None = None,
) -> None:
    """Write ``model``'s inference graph to ``filepath`` as ONNX (``Model.export``).

    Args:
        model: a built ``Model`` or ``Sequential`` of exportable layers.
        filepath: str or path-like, the file to write.
        format: ``"onnx"``, or ``None`` to infer it from a ``.onnx`` suffix; other
            formats are refused.
        verbose: print the path written.
        input_signature: only ``None``: the inputs are the model's, float32
            ``(batch, *per-sample shape)``.
        opset_version: the ONNX opset (``None``: 17).
    """
    if not isinstance(filepath, (str, os.PathLike)):
        raise TypeError(f"export expected a file path (str or os.PathLike), received {filepath!r}")
    _check_format(filepath, format)
    if input_signature is not None:
        raise ValueError(
            "export takes the model's own inputs (float32, batch dimension dynamic); "
            f"input_signature is not supported, received input_signature={input_signature!r}; "
            "pass None"
        )
    proto = to_onnx(model, opset_version=opset_version)
    onnx = _import_onnx()
    onnx.save_model(proto, os.fspath(filepath))
    if verbose:
        print(f"Saved artifact at '{os.fspath(filepath)}'.")
