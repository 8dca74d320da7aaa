"""``Model`` (the Functional API) and ``Sequential``: the layer graph, its weights, config
and summary.

A model is a graph of nodes (layer calls) from its input tensors to its output
tensors; ``Sequential`` is a chain of the same graph, made when the input width
is known. The model owns one flat parameter buffer and one flat gradient buffer
on its engine; every layer's weights are views into them, so an optimizer step
is one fused pass over one buffer whatever the number of layers. Training,
evaluation and prediction live in ``dlcore.training`` (``Trainer``), saving and
loading in ``dlcore.saving``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from dlcore import backends, config, custom, mixed_precision, saving
from dlcore.backends.base import Engine, Workspace
from dlcore.layers import LAYER_CLASSES, CallState, InputLayer, KerasTensor, Layer, Node
from dlcore.layers.base import assign_weights, unique_name
from dlcore.training import Trainer, _WeightCast


class Model(Trainer):
    """A model built from the layer graph between ``inputs`` and ``outputs`` (Keras's
    Functional API).

    Args:
        inputs: a tensor made by ``Input(shape=(features,))``, a list of them, or a
            dict of them by name (then ``fit``/``predict`` take a dict of arrays).
        outputs: a layer's output tensor, a list of them, or a dict of them by
            output name (the names of losses, metrics and history keys).
        name: the model's name in ``summary()``.

    Example:
        >>> inputs = Input(shape=(16,))
        >>> hidden = Dense(32, activation="relu")(inputs)
        >>> outputs = Dense(3, activation="softmax")(Add()([hidden, Dense(32)(inputs)]))
        >>> model = Model(inputs, outputs)
        >>> model.compile(optimizer="adam", loss="categorical_crossentropy")

    Raises:
        ValueError: an output does not depend on the given inputs, an input is not
            used by any output, or the graph has a cycle (the message names the layer).
    """

    def __init__(
        self,
        inputs: Any = None,
        outputs: Any = None,
        name: str | None = None,
        trainable: bool = True,
        dtype: Any = None,
        **kwargs: Any,
    ) -> None:
        if kwargs:
            raise TypeError(f"Model got unexpected keyword argument(s): {', '.join(kwargs)}")
        if inputs is None or outputs is None:
            raise TypeError(
                "Model(inputs, outputs) needs the input and output tensors of a layer graph, "
                "e.g. inputs = Input(shape=(8,)); outputs = Dense(1)(inputs); "
                "Model(inputs, outputs). Subclassing Model is not supported; use Sequential "
                "for a plain stack of layers"
            )
        super().__init__()
        self.dtype_policy = mixed_precision.get(dtype)
        self.name = name or unique_name("functional")
        input_list, self._input_keys = _flatten(inputs, "inputs")
        output_list, self._output_keys = _flatten(outputs, "outputs")
        self._set_graph(input_list, output_list)
        if not trainable:
            self.trainable = False
        self._build_weights()

    # ------------------------------------------------------------------ graph
    def _set_graph(self, inputs: list[KerasTensor], outputs: list[KerasTensor]) -> None:
        """Walk the graph from ``outputs`` back to ``inputs``, in topological order."""
        for tensor in inputs:
            if tensor.input_layer is None:
                made_by = tensor.node.layer.name if tensor.node else "?"
                raise ValueError(
                    f"model inputs must be tensors made by Input(...); {tensor.name!r} is "
                    f"the output of layer {made_by!r}"
                )
        input_ids = {id(t): i for i, t in enumerate(inputs)}
        if len(input_ids) != len(inputs):
            raise ValueError("the same Input tensor is given twice in the model's inputs")
        nodes: list[Node] = []  # post-order: each node after the nodes it reads from
        walked: list[Any] = []  # the same, with the model's input tensors where reached
        first_reached: dict[int, int] = {}  # layer -> the order the walk first reached it
        status: dict[int, str] = {}

        def reach(layer: Layer) -> None:
            first_reached.setdefault(id(layer), len(first_reached))

        def visit(tensor: KerasTensor) -> None:
            if id(tensor) in input_ids:
                if status.get(id(tensor)) != "done":
                    status[id(tensor)] = "done"
                    reach(tensor.input_layer)  # type: ignore[arg-type]
                    walked.append(tensor)
                return
            node = tensor.node
            if node is None:
                raise ValueError(
                    f"the model's outputs depend on the input {tensor.name!r}, which is not "
                    "among the model's inputs; add it to Model(inputs=[...])"
                )
            key = id(node)
            if status.get(key) == "done":
                return
            if status.get(key) == "visiting":
                raise ValueError(f"the layer graph has a cycle through layer {node.layer.name!r}")
            status[key] = "visiting"
            reach(node.layer)
            for source in node.inputs:
                visit(source)
            status[key] = "done"
            nodes.append(node)
            walked.append(node)

        for tensor in outputs:
            if not isinstance(tensor, KerasTensor):
                raise TypeError(f"model outputs must be layer output tensors, received {tensor!r}")
            visit(tensor)
        for tensor in inputs:
            if status.get(id(tensor)) != "done":
                raise ValueError(
                    f"input {tensor.name!r} is not connected to any output; remove it from the "
                    "model's inputs or use it in the graph"
                )
        layers = _layers_by_depth(walked, input_ids, first_reached)
        self._inputs = list(inputs)
        self._outputs = list(outputs)
        self._nodes = nodes
        self._graph_layers = layers
        self._slots = {id(t): i for i, t in enumerate(inputs)}
        for node in nodes:
            self._slots[id(node.output)] = len(self._slots)
        self._param_layers: list[Layer] = []
        for layer in layers:
            if layer.parameter_shapes() and layer not in self._param_layers:
                self._param_layers.append(layer)
        self.output_names = self._output_keys or [_producer_name(t) for t in outputs]
        if len(set(self.output_names)) != len(self.output_names):
            raise ValueError(
                f"the model's outputs need distinct names, received {self.output_names}; "
                "give the output layers distinct names or pass outputs as a dict"
            )
        self.input_names = self._input_keys or [t.name for t in inputs]

    @property
    def layers(self) -> list[Layer]:
        """The model's layers in the order of the graph (``InputLayer`` s included)."""
        return list(self._graph_layers)

    @property
    def inputs(self) -> list[KerasTensor]:
        return list(self._inputs)

    @property
    def outputs(self) -> list[KerasTensor]:
        return list(self._outputs)

    @property
    def input(self) -> Any:
        return self._inputs[0] if len(self._inputs) == 1 else list(self._inputs)

    @property
    def output(self) -> Any:
        return self._outputs[0] if len(self._outputs) == 1 else list(self._outputs)

    @property
    def input_shape(self) -> Any:
        """``(None, features)`` per input, as Keras reports it."""
        shapes = [t.shape for t in self._inputs]
        return shapes[0] if len(shapes) == 1 else shapes

    @property
    def output_shape(self) -> Any:
        """``(None, units)`` per output, as Keras reports it."""
        shapes = [t.shape for t in self._outputs]
        return shapes[0] if len(shapes) == 1 else shapes

    @property
    def output_units(self) -> int:
        """Width of the first output."""
        return self._outputs[0].features

    def get_layer(self, name: str | None = None, index: int | None = None) -> Layer:
        """The layer called ``name``, or at position ``index`` of ``layers``."""
        if (name is None) == (index is None):
            raise ValueError("get_layer needs exactly one of name= and index=")
        layers = self.layers
        if index is not None:
            if not isinstance(index, int) or not -len(layers) <= index < len(layers):
                raise ValueError(
                    f"get_layer(index={index!r}) is out of range for a model of "
                    f"{len(layers)} layers"
                )
            return layers[index]
        for layer in layers:
            if layer.name == name:
                return layer
        raise ValueError(
            f"no layer named {name!r} in model {self.name!r}; its layers are "
            f"{[layer.name for layer in layers]}"
        )

    @property
    def trainable(self) -> bool:
        return all(layer.trainable for layer in self._param_layers) if self._param_layers else True

    @trainable.setter
    def trainable(self, value: bool) -> None:
        for layer in self._graph_layers:
            layer.trainable = bool(value)

    # ------------------------------------------------------------------ weights
    def _build_weights(self) -> None:
        """Give every layer its weights: initial values drawn on the host from the seeded
        generator, in ``floatx``, for the layers that have none yet (a layer shared with
        another model, or copied, keeps its values). The weights move to an engine,
        the one current then, when the model is first used (``_claim_layers``)."""
        dtype = config.floatx()
        rng = config.rng()
        for layer in self._param_layers:
            values = layer.host_values()
            shapes = [tuple(s) for s in layer.parameter_shapes()]
            if values is None or [v.shape for v in values] != shapes:
                layer.carry([np.asarray(v, dtype=dtype) for v in layer.initial_values(rng, dtype)])
        self.dtype = dtype
        self.built = True
        if self.engine is not None:
            self._place(self.engine, self._host_flat())

    def _host_flat(self) -> np.ndarray:
        """The current values of every weight, on the host, as one flat array."""
        parts = []
        for layer in self._param_layers:
            values = layer.host_values()
            if values is None:  # a layer whose model was dropped before it was placed
                values = [np.zeros(s, dtype=self.dtype) for s in layer.parameter_shapes()]
            parts += [np.asarray(v).reshape(-1) for v in values]
        dtype = self._built_dtype()
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)

    def _activation_names(self) -> list[str]:
        names = [getattr(layer, "activation", None) for layer in self._graph_layers]
        return [name for name in names if isinstance(name, str)]

    def _place(self, engine: Engine, flat_host: np.ndarray) -> None:
        """Put the flat parameters on ``engine`` and hand every layer its views."""
        self.engine = engine
        self._plan = None
        self._workspace = Workspace(engine)
        self._params = engine.asarray(flat_host, dtype=self.dtype)
        self._grads = engine.zeros((flat_host.size,), dtype=self.dtype)
        shapes = [shape for layer in self._param_layers for shape in layer.parameter_shapes()]
        weights = engine.split_views(self._params, shapes)
        gradients = engine.split_views(self._grads, shapes)
        self._layer_ranges: dict[int, tuple[int, int]] = {}
        self._weight_casts = []
        dtype = self._built_dtype()
        start = view = 0
        for layer in self._param_layers:
            count = len(layer.parameter_shapes())
            size = layer.count_params()
            masters, master_grads = weights[view : view + count], gradients[view : view + count]
            run_dtype, product_dtype = mixed_precision.dtypes_on(engine, layer.dtype_policy, dtype)
            if run_dtype == dtype:
                layer.bind(
                    engine, masters, master_grads, dtype, owner=self, product_dtype=product_dtype
                )
            else:
                cast = _WeightCast(
                    layer,
                    engine.slice_rows(self._params, start, start + size),
                    engine.slice_rows(self._grads, start, start + size),
                    engine.zeros((size,), dtype=run_dtype),
                    engine.zeros((size,), dtype=run_dtype),
                )
                self._weight_casts.append(cast)
                layer.bind(
                    engine,
                    engine.split_views(cast.params, layer.parameter_shapes()),
                    engine.split_views(cast.grads, layer.parameter_shapes()),
                    dtype,
                    owner=self,
                    run_dtype=run_dtype,
                    variables=masters,
                    variable_grads=master_grads,
                )
            self._layer_ranges[id(layer)] = (start, start + size)
            view += count
            start += size
        for layer in self._graph_layers:
            if not layer.parameter_shapes():
                run_dtype, _ = mixed_precision.dtypes_on(engine, layer.dtype_policy, dtype)
                layer.bind(engine, [], [], dtype, owner=self, run_dtype=run_dtype)
        self._states = [CallState(engine) for _ in self._nodes]
        self._idle_states = []  # the predictions' states of the previous placement retire
        self._reset_plan()

    def _claim_layers(self) -> None:
        """Put the weights on the current engine if they are on none yet, and make this
        model's buffer hold its layers' weights again if another model sharing a layer
        has taken them since (the values move along). Threads that call it at once place
        the weights once."""
        if not self.built:
            return
        with self._lock:
            if self.engine is None:
                engine = config.get_backend()
                if not engine.supports_dtype(self._built_dtype()):
                    raise RuntimeError(f"engine {engine.name!r} does not support {self.dtype}")
                custom.check_engine(engine, activations=self._activation_names())
                self._place(engine, self._host_flat())
            elif not all(layer._owner is self for layer in self._graph_layers):
                self._place(self.engine, self._host_flat())

    @property
    def weights(self) -> list[Any]:
        """Every weight as a ``Variable``, layer by layer."""
        self._claim_layers()
        return [w for layer in self._param_layers for w in layer.weights]

    @property
    def trainable_weights(self) -> list[Any]:
        self._claim_layers()
        return [w for layer in self._param_layers for w in layer.trainable_weights]

    @property
    def non_trainable_weights(self) -> list[Any]:
        self._claim_layers()
        return [w for layer in self._param_layers for w in layer.non_trainable_weights]

    def get_weights(self) -> list[np.ndarray]:
        """Host copies of every parameter in Keras's order: per layer kernel ``(in, out)``, bias."""
        self._ensure_built("get_weights()")
        self._claim_layers()
        engine = self._built_engine()
        return [engine.to_numpy(w) for layer in self._param_layers for w in layer._variables]

    def set_weights(self, weights: Sequence[Any]) -> None:
        """Replace every parameter; ``weights`` as returned by ``get_weights``.

        Shapes are checked for all arrays before any is written.
        """
        self._ensure_built("set_weights()")
        self._claim_layers()
        assign_weights(
            self._built_engine(),
            [w for layer in self._param_layers for w in layer._variables],
            [shape for layer in self._param_layers for shape in layer.parameter_shapes()],
            weights,
            self._built_dtype(),
            "set_weights",
        )

    def count_params(self) -> int:
        """Number of scalars in the model's weights, trainable or not."""
        self._ensure_built("count_params()")
        return sum(layer.count_params() for layer in self._param_layers)

    def to(self, engine_name: str) -> Model:
        """Move the weights and the optimizer state to another engine; returns ``self``."""
        engine = backends.get(engine_name)
        if not self.built:
            raise ValueError("to(): the model is not built yet; build it or fit it first")
        if not engine.supports_dtype(self.dtype):
            raise RuntimeError(f"engine {engine.name!r} does not support {self.dtype}")
        custom.check_engine(engine, activations=self._activation_names())
        self._claim_layers()
        self._place(engine, self._host_flat())
        if self.optimizer is not None and self.optimizer.built:
            self.optimizer.to_engine(engine)
        return self

    def _set_flat(self, flat: np.ndarray) -> None:
        engine = self._built_engine()
        engine.assign(self._params, engine.asarray(flat, dtype=self.dtype))

    def _ensure_built(self, what: str) -> None:
        if not self.built:
            try:
                self.build()
            except ValueError as error:
                raise ValueError(f"{what}: {error}") from None

    def build(self, input_shape: Any = None) -> None:
        """Create the weights (a functional model has them from the start)."""
        if not self.built:
            self._build_weights()

    # ------------------------------------------------------------------ description
    def summary(self, print_fn: Callable[[str], Any] | None = None) -> None:
        """Print the layers, their output shapes, parameter counts and, for a functional
        model, what each layer is connected to; then the totals."""
        self._ensure_built("summary()")
        print_fn = print_fn or print
        connected = self._shows_connections()
        widths = (29, 26, 12, 26) if connected else (29, 26, 12)
        rule = "_" * sum(widths)
        header = ["Layer (type)", "Output Shape", "Param #"] + (
            ["Connected to"] if connected else []
        )
        lines = [f'Model: "{self.name}"', rule, _row(header, widths), "=" * sum(widths)]
        for i, layer in enumerate(self.layers):
            if i:
                lines.append("")
            sources = self._sources_of(layer) if connected else []
            cells = [
                f"{layer.name} ({type(layer).__name__})",
                str(layer.output_shape),
                f"{layer.count_params():,}",
            ]
            if connected:
                cells.append(sources[0] if sources else "-")
            lines.append(_row(cells, widths))
            for more in sources[1:]:
                lines.append(_row(["", "", "", more], widths))
        lines.append("=" * sum(widths))
        itemsize = np.dtype(self.dtype).itemsize
        total = self.count_params()
        trainable = sum(layer.count_trainable_params() for layer in self._param_layers)
        lines += [
            f"Total params: {total:,} ({_human_bytes(total * itemsize)})",
            f"Trainable params: {trainable:,} ({_human_bytes(trainable * itemsize)})",
            f"Non-trainable params: {total - trainable:,} "
            f"({_human_bytes((total - trainable) * itemsize)})",
            rule,
        ]
        for line in lines:
            print_fn(line)

    def _shows_connections(self) -> bool:
        """Whether ``summary`` needs the "Connected to" column: not for a plain chain of
        single-input layers, which Keras prints as it prints a ``Sequential``."""
        if len(self._inputs) != 1 or len(self._outputs) != 1:
            return True
        previous = self._inputs[0]
        for node in self._nodes:
            if node.merges or node.inputs[0] is not previous:
                return True
            previous = node.output
        return previous is not self._outputs[0]

    def _sources_of(self, layer: Layer) -> list[str]:
        """``"dense[0][0]"`` for each tensor each of the layer's calls in this model reads."""
        indices = self._node_indices()
        out = []
        for node in self._nodes:
            if node.layer is layer:
                out += [self._tensor_ref(t, indices) + "," for t in node.inputs]
        if out:
            out[-1] = out[-1].rstrip(",")
        return out

    def _node_indices(self) -> dict[int, int]:
        """Each node's index among this model's calls of its layer."""
        counts: dict[int, int] = {}
        indices = {}
        for node in self._nodes:
            indices[id(node)] = counts.get(id(node.layer), 0)
            counts[id(node.layer)] = indices[id(node)] + 1
        return indices

    def _tensor_ref(self, tensor: KerasTensor, indices: dict[int, int]) -> str:
        name, node_index, _ = self._tensor_key(tensor, indices)
        return f"{name}[{node_index}][0]"

    def _tensor_key(self, tensor: KerasTensor, indices: dict[int, int]) -> list[Any]:
        source = tensor.input_layer
        if source is not None:
            return [source.name, 0, 0]
        node = tensor.node
        assert node is not None  # every tensor but an Input's has its node
        return [node.layer.name, indices[id(node)], 0]

    def get_config(self) -> dict[str, Any]:
        """The graph as JSON-serialisable data: each layer with the tensors each of its
        calls reads, and the model's input and output tensors (Keras's layout)."""
        indices = self._node_indices()
        layers = []
        for layer in self._graph_layers:
            calls = [node for node in self._nodes if node.layer is layer]
            layers.append(
                {
                    "class_name": type(layer).__name__,
                    "name": layer.name,
                    "config": layer.get_config(),
                    "inbound_nodes": [
                        [self._tensor_key(t, indices) for t in node.inputs] for node in calls
                    ],
                    "merges": [node.merges for node in calls],
                }
            )
        return {
            "name": self.name,
            "layers": layers,
            "input_layers": [self._tensor_key(t, indices) for t in self._inputs],
            "output_layers": [self._tensor_key(t, indices) for t in self._outputs],
            "input_keys": self._input_keys,
            "output_keys": self._output_keys,
        }

    @classmethod
    def from_config(
        cls, config_dict: Mapping[str, Any], custom_objects: Mapping[str, Any] | None = None
    ) -> Model:
        """A new model (fresh weights on the current engine) from ``get_config``'s output."""
        with custom.custom_object_scope(custom_objects or {}):
            built: dict[str, Layer] = {}
            pending = []
            tensors: dict[tuple[str, int], KerasTensor] = {}
            for entry in config_dict["layers"]:
                layer = layer_from_config(entry, custom_objects)
                if layer.name in built:
                    raise ValueError(f"two layers are named {layer.name!r}")
                built[layer.name] = layer
                if isinstance(layer, InputLayer):
                    tensors[(layer.name, 0)] = layer.output
                merges = entry.get("merges") or [False] * len(entry.get("inbound_nodes", []))
                for index, (refs, merge) in enumerate(zip(entry.get("inbound_nodes", []), merges)):
                    pending.append((layer, index, refs, merge))
            while pending:
                remaining = []
                for layer, index, refs, merge in pending:
                    keys = [(ref[0], int(ref[1])) for ref in refs]
                    ready = all(key in tensors for key in keys) and (
                        index == 0 or (layer.name, index - 1) in tensors
                    )
                    if not ready:
                        remaining.append((layer, index, refs, merge))
                        continue
                    sources = [tensors[key] for key in keys]
                    tensors[(layer.name, index)] = layer(sources if merge else sources[0])
                if len(remaining) == len(pending):
                    names = sorted({item[0].name for item in remaining})
                    raise ValueError(
                        f"the layer graph cannot be rebuilt: layers {names} read "
                        "tensors that no layer makes"
                    )
                pending = remaining
            inputs = [tensors[(ref[0], int(ref[1]))] for ref in config_dict["input_layers"]]
            outputs = [tensors[(ref[0], int(ref[1]))] for ref in config_dict["output_layers"]]
            input_keys, output_keys = config_dict.get("input_keys"), config_dict.get("output_keys")
            return cls(
                dict(zip(input_keys, inputs)) if input_keys else inputs,
                dict(zip(output_keys, outputs)) if output_keys else outputs,
                name=config_dict.get("name"),
            )

    def to_json(self, **kwargs: Any) -> str:
        """The architecture as a JSON string; ``model_from_json`` reads it back."""
        return json.dumps({"class_name": self._class_key(), "config": self.get_config()}, **kwargs)

    def export(
        self,
        filepath: Any,
        format: str | None = None,  # noqa: A002  (Keras's name)
        verbose: bool | None = None,
        input_signature: Any = None,
        **kwargs: Any,
    ) -> None:
        """Write the inference graph to ``filepath`` as ONNX (``format="onnx"``, or
        ``None`` with a ``.onnx`` suffix); ``opset_version=`` picks the opset (17).
        See ``dlcore.onnx_export.export``; needs ``pip install dlcore[onnx]``."""
        from dlcore import onnx_export  # the onnx package is imported only when exporting

        opset_version = kwargs.pop("opset_version", None)
        if kwargs:
            raise TypeError(f"export() got unsupported argument(s) {', '.join(kwargs)}")
        onnx_export.export(
            self, filepath, format, verbose, input_signature, opset_version=opset_version
        )

    @classmethod
    def _class_key(cls) -> str:
        return "Functional"

    # ------------------------------------------------------------------ copying
    def __reduce__(self) -> tuple[Any, ...]:
        # engines hold modules and device memory: a copy is the model's file, in memory
        model_config, arrays = saving.model_state(self)
        return (saving.restore_model, (model_config, arrays))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name!r}>"


class Sequential(Model):
    """A linear stack of layers with Keras's ``compile``/``fit``/``evaluate``/``predict``.

    The stack becomes a chain of the layer graph as soon as its input width is
    known (``input_shape=`` on the first layer, an ``Input`` first, or ``build``),
    and its weights are made then; otherwise the first ``fit``/``predict`` makes
    them from the data.

    Args:
        layers: optional list of layers (an ``Input`` may come first).
        name: the model's name in ``summary()``.

    Example:
        >>> model = Sequential([Dense(50, activation="relu", input_shape=(64,)),
        ...                     Dense(10, activation="softmax")])
        >>> model.compile(optimizer="adam", loss="categorical_crossentropy",
        ...               metrics=["accuracy"])
        >>> history = model.fit(x, y, epochs=10, validation_split=0.3)
    """

    def __init__(
        self,
        layers: Sequence[Any] | None = None,
        name: str | None = None,
        trainable: bool = True,
        dtype: Any = None,
    ) -> None:
        Trainer.__init__(self)
        self.dtype_policy = mixed_precision.get(dtype)
        self.name = name or unique_name("sequential")
        self._stack_layers: list[Layer] = []
        self._input_layer: InputLayer | None = None
        self._inputs, self._outputs, self._nodes = [], [], []
        self._graph_layers, self._param_layers = [], []
        self._input_keys = self._output_keys = None
        self.output_names = []
        if layers is not None:
            if not isinstance(layers, (list, tuple)):
                raise TypeError(f"Sequential expected a list of layers, received {layers!r}")
            for layer in layers:
                self.add(layer)
        if not trainable:
            self.trainable = False

    @property
    def layers(self) -> list[Layer]:
        """The stacked layers (the ``InputLayer`` is not listed, as in Keras)."""
        return list(self._stack_layers)

    @property
    def input_features(self) -> int | None:
        """The input width, once known."""
        return self._input_layer.units if self._input_layer is not None else None

    @property
    def trainable(self) -> bool:
        layers = [layer for layer in self._stack_layers if layer.parameter_shapes()]
        return all(layer.trainable for layer in layers) if layers else True

    @trainable.setter
    def trainable(self, value: bool) -> None:
        for layer in self._stack_layers:
            layer.trainable = bool(value)

    def add(self, layer: Any) -> None:
        """Append a layer (or, first of all, an ``Input``); rebuilds the graph when the
        input width is known, keeping the weights the other layers have."""
        source = layer.input_layer if isinstance(layer, KerasTensor) else layer
        if isinstance(source, InputLayer):
            if self._stack_layers or self._input_layer is not None:
                raise ValueError("Input(...) must come before every other layer of the model")
            self._input_layer = source
            return
        if not isinstance(layer, Layer):
            raise TypeError(
                f"Sequential.add expected a layer such as Dense(10), received {layer!r}"
            )
        if any(existing is layer for existing in self._stack_layers):
            raise ValueError(f"layer {layer.name!r} is already in this model")
        declared = layer.input_features if isinstance(layer.input_features, int) else None
        if self._stack_layers and declared is not None:
            previous = self._stack_layers[-1]
            if previous.units is not None and previous.units != declared:
                raise ValueError(
                    f"layer {layer.name!r} declares input_shape=({declared},) but "
                    f"the layer before it outputs {previous.units} features"
                )
        if not self._stack_layers and declared is not None and self._input_layer is None:
            self._input_layer = InputLayer(shape=layer.input_dims or (declared,))
        self._stack_layers.append(layer)
        if self._input_layer is not None:
            try:
                self._chain()
            except ValueError:
                self._stack_layers.pop()
                raise

    def pop(self) -> Layer:
        """Remove and return the last layer; the others keep their weights."""
        if not self._stack_layers:
            raise ValueError("pop(): the model has no layers to remove")
        layer = self._stack_layers.pop()
        if self._stack_layers and self._input_layer is not None:
            self._chain()
        else:
            self._inputs, self._outputs, self._nodes = [], [], []
            self._graph_layers, self._param_layers = [], []
            self.built = False
        return layer

    def _chain(self) -> None:
        """Call the layers one after another from the input: the model's graph."""
        assert self._input_layer is not None  # the callers check it
        tensor = self._input_layer.output
        for layer in self._stack_layers:
            tensor = layer(tensor)
        self._set_graph([self._input_layer.output], [tensor])
        self._graph_layers = [self._input_layer, *self._stack_layers]
        if self.built and self.optimizer is not None and self.optimizer.built:
            self.optimizer = type(self.optimizer).from_config(self.optimizer.get_config())
        self._build_weights()

    def build(self, input_shape: Any = None) -> None:
        """Create the weights for ``input_shape=(None, features)`` on the current engine.

        Called by ``fit``/``predict``/``summary`` when needed; weights come from
        the layers' initializers, drawn on the host from the seeded generator so
        that the same seed gives the same weights on every engine.
        """
        if input_shape is not None:
            shape = tuple(input_shape)  # (None, *dims): the batch size, then a sample's shape
            dims = tuple(int(d) for d in shape[1:]) if len(shape) > 1 else (int(shape[-1]),)
            if self._input_layer is not None and self._input_layer.output.dims != dims:
                raise ValueError(
                    f"the model's input shape is {self._input_layer.output.shape}, "
                    f"build received input_shape={shape}"
                )
            if self._input_layer is None:
                self._input_layer = InputLayer(shape=dims)
        if self.built:
            return
        if self._input_layer is None:
            raise ValueError(
                "the model has no input shape yet: give the first layer input_shape=(features,), "
                "start with Input(shape=(features,)), or call fit/predict, which build it from "
                "the data"
            )
        if not self._stack_layers:
            raise ValueError("the model has no layers; add some with model.add(Dense(...))")
        self._chain()

    def _unbuilt_state(self) -> Any:
        layers = [
            (layer, layer.input_features, layer.units, list(layer.inbound_nodes), layer._carried)
            for layer in self._stack_layers
        ]
        return dict(self.__dict__), layers

    def _restore_unbuilt(self, state: Any) -> None:
        attributes, layers = state
        self.__dict__.clear()
        self.__dict__.update(attributes)
        for layer, input_features, units, inbound_nodes, carried in layers:
            layer.input_features, layer.units = input_features, units
            layer.inbound_nodes[:] = inbound_nodes
            layer._carried = carried

    def _shows_connections(self) -> bool:
        return False

    @property
    def input_shape(self) -> tuple[int | None, ...]:
        """``(None, features)`` (``(None, *dims)`` for a multi-dimensional input), as Keras
        reports it; the model must know its input width."""
        if self._input_layer is None:
            raise ValueError(
                "the model has no input shape yet: give the first layer input_shape=(features,)"
            )
        return self._input_layer.output.shape

    @property
    def output_units(self) -> int:
        """Number of output features (the last layer's width); the model must be built."""
        self._ensure_built("output_units")
        return self._outputs[0].features

    def get_config(self) -> dict[str, Any]:
        """The stack as JSON-serialisable data."""
        return {
            "name": self.name,
            "input_features": self.input_features,
            "input_shape": (
                None if self._input_layer is None else list(self._input_layer.output.dims)
            ),
            "layers": [
                {"class_name": type(layer).__name__, "config": layer.get_config()}
                for layer in self._stack_layers
            ],
        }

    @classmethod
    def from_config(
        cls, config_dict: Mapping[str, Any], custom_objects: Mapping[str, Any] | None = None
    ) -> Sequential:
        """A new stack (fresh weights, built when the input width is known)."""
        with custom.custom_object_scope(custom_objects or {}):
            layers: list[Any] = []
            features = config_dict.get("input_features")
            dims = config_dict.get("input_shape")  # a sample's shape, when not flat
            if features is not None:
                layers.append(InputLayer(shape=tuple(dims) if dims else (features,)))
            layers += [layer_from_config(entry, custom_objects) for entry in config_dict["layers"]]
            return cls(layers, name=config_dict.get("name"))

    @classmethod
    def _class_key(cls) -> str:
        return "Sequential"


def layer_from_config(
    entry: Mapping[str, Any], custom_objects: Mapping[str, Any] | None = None
) -> Layer:
    """A layer from ``{"class_name", "config"}``; custom layer classes come from
    ``custom_objects``."""
    name = str(entry.get("class_name"))
    cls = LAYER_CLASSES.get(name) or (custom_objects or {}).get(name)
    if not (isinstance(cls, type) and issubclass(cls, Layer)):
        raise ValueError(
            f"unknown layer type {name!r}; pass its class in custom_objects={{{name!r}: cls}}"
        )
    return cls.from_config(dict(entry["config"]))


MODEL_CLASSES: dict[str, type[Model]] = {
    "Functional": Model,
    "Model": Model,
    "Sequential": Sequential,
}


def model_from_config(
    config_dict: Mapping[str, Any], custom_objects: Mapping[str, Any] | None = None
) -> Model:
    """A model from ``{"class_name": "Sequential" | "Functional", "config": ...}``."""
    if not isinstance(config_dict, Mapping) or "config" not in config_dict:
        raise ValueError("a model config is a dict with 'class_name' and 'config'")
    cls = MODEL_CLASSES.get(config_dict.get("class_name"))  # type: ignore[arg-type]
    if cls is None:
        raise ValueError(
            f"unknown model class {config_dict.get('class_name')!r}; "
            f"known: {', '.join(MODEL_CLASSES)}"
        )
    return cls.from_config(config_dict["config"], custom_objects)


def model_from_json(json_string: str, custom_objects: Mapping[str, Any] | None = None) -> Model:
    """A model (fresh weights) from the architecture written by ``to_json``."""
    try:
        description = json.loads(json_string)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"model_from_json expected a JSON string from to_json(): {error}"
        ) from None
    return model_from_config(description, custom_objects)


def load_model(
    filepath: Any, custom_objects: Mapping[str, Any] | None = None, compile: bool = True
) -> Model:
    """Load a model written by ``save`` onto the current engine (see ``dlcore.saving``)."""
    return saving.load_model(filepath, custom_objects=custom_objects, compile=compile)


def _layers_by_depth(
    walked: list[Any], input_ids: dict[int, int], first_reached: dict[int, int]
) -> list[Layer]:
    """The layers in Keras's order: the farthest from the outputs first (a layer's depth
    is the longest path from any of its calls to an output), ties in the order a walk
    from the outputs first reached them. ``walked`` holds the nodes and input tensors in
    post-order."""
    depth: dict[int, int] = {}
    layer_depth: dict[int, int] = {}
    layers: dict[int, Layer] = {}
    for item in reversed(walked):
        if isinstance(item, KerasTensor):
            layer: Layer = item.input_layer  # type: ignore[assignment]
            parents: list[Any] = []
        else:
            layer = item.layer
            parents = [t if id(t) in input_ids else t.node for t in item.inputs]
        here = max(depth.get(id(item), 0), layer_depth.get(id(layer), 0))
        layer_depth[id(layer)] = here
        layers[id(layer)] = layer
        for parent in parents:
            depth[id(parent)] = max(here + 1, depth.get(id(parent), 0))
    return sorted(layers.values(), key=lambda lay: (-layer_depth[id(lay)], first_reached[id(lay)]))


def _flatten(structure: Any, what: str) -> tuple[list[KerasTensor], list[str] | None]:
    """The tensors of ``inputs``/``outputs`` in order, and their keys when given as a dict."""
    if isinstance(structure, KerasTensor):
        return [structure], None
    if isinstance(structure, Mapping):
        keys = list(structure)
        if not keys or not all(isinstance(k, str) for k in keys):
            raise ValueError(f"{what} given as a dict must map names (str) to tensors")
        tensors = [structure[k] for k in keys]
    elif isinstance(structure, (list, tuple)) and structure:
        keys, tensors = None, list(structure)
    else:
        raise TypeError(
            f"Model {what} must be a tensor, a list or a dict of tensors, received {structure!r}"
        )
    for tensor in tensors:
        if not isinstance(tensor, KerasTensor):
            raise TypeError(
                f"Model {what} must be symbolic tensors (from Input(...) or a layer call), "
                f"received {tensor!r}"
            )
    return tensors, keys


def _producer_name(tensor: KerasTensor) -> str:
    source = tensor.input_layer
    if source is not None:
        return source.name
    assert tensor.node is not None  # every tensor but an Input's has its node
    return tensor.node.layer.name


def _row(cells: Sequence[str], widths: Sequence[int]) -> str:
    return "".join(f" {cell:<{width - 1}}" for cell, width in zip(cells, widths)).rstrip()


def _human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.2f} {unit}"
        value /= 1024
    return f"{value:.2f} GB"


saving.register_model_classes(MODEL_CLASSES, model_from_config)

__all__ = ["Model", "Sequential", "load_model", "model_from_config", "model_from_json"]
