"""``Sequential``: a stack of layers trained with the Keras workflow, and ``load_model``.

The model owns one flat parameter buffer and one flat gradient buffer on its
engine; every layer's weights are views into them, so an optimizer step is one
fused pass over one buffer whatever the number of layers. Data moves to the
engine once per call of ``fit``/``evaluate``/``predict``; during training only
scalars (loss, metric counts) come back, once per epoch unless a callback or the
progress bar asks for them per batch.
"""

from __future__ import annotations

import math
import numbers
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dlcore import archive, backends, config, data_checks, losses, optimizers
from dlcore import callbacks as callbacks_module
from dlcore import metrics as metrics_module
from dlcore.backends.base import Array, Engine, Workspace
from dlcore.layers import LAYER_CLASSES, Dense, Input, Layer, _unique_name, assign_weights

MODEL_FORMAT = "dlcore.Sequential"
_FIT_OPTIONS = (
    "x, y, batch_size, epochs, verbose, callbacks, validation_split, validation_data, "
    "shuffle, initial_epoch"
)


class Sequential:
    """A linear stack of layers with Keras's ``compile``/``fit``/``evaluate``/``predict``.

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

    def __init__(self, layers: Sequence[Any] | None = None, name: str | None = None) -> None:
        self.name = name or _unique_name("sequential")
        self.layers: list[Layer] = []
        self.input_features: int | None = None
        self.built = False
        self.engine: Engine | None = None
        self.dtype: str | None = None
        self.optimizer: optimizers.Optimizer | None = None
        self.loss: losses.Loss | None = None
        self.metric_names: list[str] = []
        self.stop_training = False
        self.history: callbacks_module.History | None = None
        self._params: Array = None
        self._grads: Array = None
        self._workspace: Workspace | None = None
        self._stack: _DenseStack | None = None
        self._first_trainable = 0
        if layers is not None:
            if not isinstance(layers, (list, tuple)):
                raise TypeError(f"Sequential expected a list of layers, received {layers!r}")
            for layer in layers:
                self.add(layer)

    # ------------------------------------------------------------------ structure
    def add(self, layer: Layer | Input) -> None:
        """Append a layer (or, first of all, an ``Input``)."""
        if self.built:
            raise ValueError(
                f"cannot add {layer!r}: the model is already built with its weights; "
                "create a new Sequential with all its layers instead"
            )
        if isinstance(layer, Input):
            if self.layers:
                raise ValueError("Input(...) must come before every other layer of the model")
            self.input_features = layer.features
            return
        if not isinstance(layer, Layer):
            raise TypeError(
                f"Sequential.add expected a layer such as Dense(10), received {layer!r}"
            )
        if any(existing is layer for existing in self.layers):
            raise ValueError(f"layer {layer.name!r} is already in this model")
        if not self.layers and layer.input_features is not None:
            self.input_features = layer.input_features
        elif self.layers and layer.input_features is not None:
            previous = self.layers[-1]
            if previous.units is not None and previous.units != layer.input_features:
                raise ValueError(
                    f"layer {layer.name!r} declares input_shape=({layer.input_features},) but "
                    f"the layer before it outputs {previous.units} features"
                )
        self.layers.append(layer)

    def build(self, input_shape: Any = None) -> None:
        """Create the weights on the current engine for ``input_shape=(None, features)``.

        Called by ``fit``/``predict``/``summary`` when needed; weights come from
        the layers' initializers, drawn on the host from the seeded generator so
        that the same seed gives the same weights on every engine.
        """
        if self.built:
            return
        if input_shape is not None:
            shape = tuple(input_shape)
            self.input_features = int(shape[-1])
        if self.input_features is None:
            raise ValueError(
                "the model has no input shape yet: give the first layer input_shape=(features,), "
                "start with Input(shape=(features,)), or call fit/predict, which build it from "
                "the data"
            )
        if not self.layers:
            raise ValueError("the model has no layers; add some with model.add(Dense(...))")
        engine = config.get_backend()
        dtype = config.floatx()
        if not engine.supports_dtype(dtype):
            raise RuntimeError(f"engine {engine.name!r} does not support {dtype}")
        width = self.input_features
        for layer in self.layers:
            width = layer.build(width)
        rng = config.rng()
        host_values = [value for layer in self.layers for value in layer.initial_values(rng, dtype)]
        flat = (
            np.concatenate([value.reshape(-1) for value in host_values]).astype(dtype)
            if host_values
            else np.zeros(0, dtype=dtype)
        )
        self.dtype = dtype
        self._place(engine, flat)
        # backprop stops at the first layer with parameters: nothing before it needs a gradient
        self._first_trainable = next(
            (i for i, layer in enumerate(self.layers) if layer.parameter_shapes()), len(self.layers)
        )
        self.built = True

    def _place(self, engine: Engine, flat_host: np.ndarray) -> None:
        """Put the flat parameters on ``engine`` and hand every layer its views."""
        self.engine = engine
        self._workspace = Workspace(engine)  # the batch and the loss gradient of training steps
        self._stack = None  # made again by the next fit, from the new views
        self._params = engine.asarray(flat_host, dtype=self.dtype)
        self._grads = engine.zeros((flat_host.size,), dtype=self.dtype)
        shapes = [shape for layer in self.layers for shape in layer.parameter_shapes()]
        weights = engine.split_views(self._params, shapes)
        gradients = engine.split_views(self._grads, shapes)
        start = 0
        for layer in self.layers:
            count = len(layer.parameter_shapes())
            layer.bind(
                engine,
                weights[start : start + count],
                gradients[start : start + count],
                self._built_dtype(),
            )
            start += count

    def _ensure_built(self, what: str) -> None:
        if not self.built:
            try:
                self.build()
            except ValueError as error:
                raise ValueError(f"{what}: {error}") from None

    # What build() and compile() set. The public methods build the model or check that it
    # is compiled before they use these, so the raises are reached only by misuse of the
    # private helpers; AttributeError, as the attribute access on None raised before.
    def _built_engine(self) -> Engine:
        if self.engine is None:
            raise AttributeError("the model is not built yet: it has no engine")
        return self.engine

    def _built_dtype(self) -> str:
        if self.dtype is None:
            raise AttributeError("the model is not built yet: it has no dtype")
        return self.dtype

    def _compiled_loss(self) -> losses.Loss:
        if self.loss is None:
            raise AttributeError("the model is not compiled yet: it has no loss")
        return self.loss

    def _compiled_optimizer(self) -> optimizers.Optimizer:
        if self.optimizer is None:
            raise AttributeError("the model is not compiled yet: it has no optimizer")
        return self.optimizer

    @property
    def input_shape(self) -> tuple[None, int]:
        """``(None, features)``, as Keras reports it; the model must know its input width."""
        if self.input_features is None:
            raise ValueError(
                "the model has no input shape yet: give the first layer input_shape=(features,)"
            )
        return (None, self.input_features)

    @property
    def output_shape(self) -> tuple[None, int]:
        """``(None, units)`` of the last layer, as Keras reports it."""
        return (None, self.output_units)

    @property
    def output_units(self) -> int:
        """Number of output features (the last layer's width); the model must be built."""
        self._ensure_built("output_units")
        units = self.layers[-1].units
        if units is None:  # every layer has its width once built
            raise RuntimeError(f"layer {self.layers[-1].name!r} has no output width")
        return units

    def count_params(self) -> int:
        """Number of trainable scalars in the model."""
        self._ensure_built("count_params()")
        return sum(layer.count_params() for layer in self.layers)

    def summary(self, print_fn: Callable[[str], Any] | None = None) -> None:
        """Print the layers, their output shapes and parameter counts, with totals."""
        self._ensure_built("summary()")
        print_fn = print_fn or print
        widths = (29, 26, 12)
        rule = "_" * sum(widths)
        lines = [f'Model: "{self.name}"', rule]
        lines.append(_row(("Layer (type)", "Output Shape", "Param #"), widths))
        lines.append("=" * sum(widths))
        for i, layer in enumerate(self.layers):
            if i:
                lines.append("")
            cells = (
                f"{layer.name} ({type(layer).__name__})",
                f"(None, {layer.units})",
                f"{layer.count_params():,}",
            )
            lines.append(_row(cells, widths))
        lines.append("=" * sum(widths))
        total = self.count_params()
        size = _human_bytes(total * np.dtype(self.dtype).itemsize)
        lines += [
            f"Total params: {total:,} ({size})",
            f"Trainable params: {total:,} ({size})",
            "Non-trainable params: 0 (0.00 B)",
            rule,
        ]
        for line in lines:
            print_fn(line)

    # ------------------------------------------------------------------ weights
    def get_weights(self) -> list[np.ndarray]:
        """Host copies of every parameter in Keras's order: per layer kernel ``(in, out)``, bias."""
        self._ensure_built("get_weights()")
        engine = self._built_engine()
        return [engine.to_numpy(w) for layer in self.layers for w in layer.trainable_weights]

    def set_weights(self, weights: Sequence[Any]) -> None:
        """Replace every parameter; ``weights`` as returned by ``get_weights``.

        Shapes are checked for all arrays before any is written.
        """
        self._ensure_built("set_weights()")
        assign_weights(
            self._built_engine(),
            [w for layer in self.layers for w in layer.trainable_weights],
            [shape for layer in self.layers for shape in layer.parameter_shapes()],
            weights,
            self._built_dtype(),
            "set_weights",
        )

    def to(self, engine_name: str) -> Sequential:
        """Move the weights and the optimizer state to another engine; returns ``self``."""
        engine = backends.get(engine_name)
        if not self.built:
            raise ValueError("to(): the model is not built yet; build it or fit it first")
        if not engine.supports_dtype(self.dtype):
            raise RuntimeError(f"engine {engine.name!r} does not support {self.dtype}")
        flat = self._built_engine().to_numpy(self._params)
        self._place(engine, flat)
        if self.optimizer is not None and self.optimizer.built:
            self.optimizer.to_engine(engine)
        return self

    # ------------------------------------------------------------------ compile
    def compile(
        self,
        optimizer: Any = "rmsprop",
        loss: Any = None,
        metrics: Any = None,
        **kwargs: Any,
    ) -> None:
        """Configure training.

        Args:
            optimizer: a name (``"adam"``, ``"sgd"``, ...) or an optimizer object.
            loss: a loss name (Keras 3 or Keras 2 spelling) or a loss object.
            metrics: list of metric names: ``"accuracy"``/``"acc"``, the specific
                accuracies, or any loss name (``"mae"``, ``"mse"``, ...).
        """
        if kwargs:
            raise TypeError(
                f"compile() got unsupported argument(s) {', '.join(kwargs)}; "
                "dlcore supports optimizer, loss and metrics"
            )
        new_optimizer = optimizers.get(optimizer)
        new_loss = losses.get(loss)
        new_metric_names = metrics_module.check_names(metrics)
        if self.built:
            metrics_module.resolve(new_metric_names, new_loss, self.output_units)
        self.optimizer, self.loss, self.metric_names = new_optimizer, new_loss, new_metric_names

    @property
    def compiled(self) -> bool:
        return self.loss is not None

    def _require_compiled(self, what: str) -> None:
        if not self.compiled:
            raise RuntimeError(
                f"you must compile the model before {what}, e.g. "
                "model.compile(optimizer='adam', loss='categorical_crossentropy', "
                "metrics=['accuracy'])"
            )

    # ------------------------------------------------------------------ training
    def fit(
        self,
        x: Any = None,
        y: Any = None,
        batch_size: int | None = None,
        epochs: int = 1,
        verbose: int | str = "auto",
        callbacks: Sequence[callbacks_module.Callback] | None = None,
        validation_split: float = 0.0,
        validation_data: Any = None,
        shuffle: bool = True,
        initial_epoch: int = 0,
        **kwargs: Any,
    ) -> callbacks_module.History:
        """Train the model on ``x`` ``(N, features)`` and targets ``y``.

        ``y`` is ``(N, units)`` (one-hot for categorical cross-entropy), or int
        labels ``(N,)`` for sparse categorical cross-entropy. ``validation_split``
        holds out the *last* fraction of the samples, before shuffling, as Keras
        does; the last batch may be smaller than ``batch_size``. Keras 2's
        ``nb_epoch`` is accepted for ``epochs``.

        Returns:
            A ``History`` whose ``history`` dict maps ``loss``, the metrics and
            their ``val_`` versions to one value per epoch.
        """
        if "nb_epoch" in kwargs:
            epochs = kwargs.pop("nb_epoch")
        if kwargs:
            raise TypeError(
                f"fit() got unsupported argument(s) {', '.join(kwargs)}; supported: {_FIT_OPTIONS}"
            )
        self._require_compiled("fit()")
        loss = self._compiled_loss()
        batch_size = data_checks.check_positive_int(batch_size, "batch_size", allow_none=True) or 32
        epochs = _check_count(epochs, "epochs")
        initial_epoch = _check_count(initial_epoch, "initial_epoch")
        verbose = _check_verbose(verbose)
        if (
            isinstance(validation_split, bool)
            # float is listed for mypy, which does not know that float is a numbers.Real
            or not isinstance(validation_split, (float, numbers.Real))
            or not (0 <= validation_split < 1)
        ):
            raise ValueError(
                f"validation_split must be a fraction in [0, 1), received {validation_split!r}"
            )
        x = data_checks.check_features(x, self.input_features, dtype=self._data_dtype())
        if y is None:
            raise ValueError("fit() needs targets y for the loss; received y=None")
        y_checked = data_checks.check_targets(
            y, loss.name, self._units_for(x), dtype=self._data_dtype()
        )
        data_checks.check_sample_counts(x, y_checked)
        x_val = y_val = None
        if validation_data is not None:
            x_val, y_val = self._check_validation_data(validation_data)
        elif validation_split:
            split_at = int(math.floor(len(x) * (1.0 - validation_split)))
            if split_at == 0 or split_at == len(x):
                raise ValueError(
                    f"validation_split={validation_split} of {len(x)} samples leaves "
                    f"{split_at} for training and {len(x) - split_at} for validation; "
                    "both need at least one sample"
                )
            x, x_val = x[:split_at], x[split_at:]
            y_checked, y_val = y_checked[:split_at], y_checked[split_at:]
        callback_list = callbacks_module.CallbackList(
            callbacks,
            model=self,
            verbose=verbose,
            epochs=epochs,
            steps=math.ceil(len(x) / batch_size),
        )
        self.build()
        metric_list = metrics_module.resolve(self.metric_names, loss, self.output_units)
        return self._fit_loop(
            x,
            y_checked,
            x_val,
            y_val,
            batch_size,
            epochs,
            initial_epoch,
            shuffle,
            metric_list,
            callback_list,
        )

    def _data_dtype(self) -> str:
        """The float dtype data will have on the engine: the model's, or floatx before build."""
        return self.dtype or config.floatx()

    def _units_for(self, x: np.ndarray) -> int:
        if not self.built:
            self.build(input_shape=(None, x.shape[1]))
        return self.output_units

    def _check_validation_data(self, validation_data: Any) -> tuple[np.ndarray, np.ndarray]:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise ValueError(
                "validation_data must be a tuple (x_val, y_val); sample weights are not supported"
            )
        x_val = data_checks.check_features(
            validation_data[0], self.input_features, dtype=self._data_dtype(), name="x_val"
        )
        y_val = data_checks.check_targets(
            validation_data[1],
            self._compiled_loss().name,
            self.output_units,
            dtype=self._data_dtype(),
            name="y_val",
        )
        data_checks.check_sample_counts(x_val, y_val, x_name="x_val", y_name="y_val")
        return x_val, y_val

    def _target_dtype(self) -> str:
        if self._compiled_loss().name == "sparse_categorical_crossentropy":
            return "int64"
        return self._built_dtype()

    def _fit_loop(
        self,
        x,
        y,
        x_val,
        y_val,
        batch_size,
        epochs,
        initial_epoch,
        shuffle,
        metric_list,
        callback_list,
    ) -> callbacks_module.History:
        engine = self._built_engine()
        dtype = self._built_dtype()
        optimizer = self._compiled_optimizer()
        X = engine.asarray(x, dtype=dtype)
        Y = engine.asarray(y, dtype=self._target_dtype())
        X_val = Y_val = None
        if x_val is not None:
            X_val = engine.asarray(x_val, dtype=dtype)
            Y_val = engine.asarray(y_val, dtype=self._target_dtype())
        if not optimizer.built:
            optimizer.build(engine, int(self._params.shape[0]), dtype)
        rng = config.rng()
        engine.seed(int(rng.integers(2**63 - 1)))
        self._stack = self._dense_stack()
        n = len(x)
        starts = range(0, n, batch_size)
        self.stop_training = False
        self.history = callback_list.history
        callback_list.on_train_begin()
        epoch_logs: dict[str, float] = {}
        for epoch in range(initial_epoch, epochs):
            callback_list.on_epoch_begin(epoch)
            totals = metrics_module.EpochTotals(engine, metric_list, self.output_units)
            order = engine.asarray(rng.permutation(n), dtype="int64") if shuffle else None
            for step, start in enumerate(starts):
                callback_list.on_train_batch_begin(step)
                stop = min(start + batch_size, n)
                if order is None:
                    X_batch = engine.slice_rows(X, start, stop)
                    Y_batch = engine.slice_rows(Y, start, stop)
                else:
                    rows = engine.slice_rows(order, start, stop)
                    X_batch = engine.take_rows(
                        X, rows, out=self._batch_buffer("x", X, stop - start)
                    )
                    Y_batch = engine.take_rows(
                        Y, rows, out=self._batch_buffer("y", Y, stop - start)
                    )
                loss_terms, metric_values = self._train_step(X_batch, Y_batch, metric_list)
                totals.add(stop - start, loss_terms, metric_values)
                batch_logs = (
                    metrics_module.LazyLogs(totals.logs) if callback_list.wants_batch_logs else None
                )
                callback_list.on_train_batch_end(step, batch_logs)
                if self.stop_training:
                    break
            epoch_logs = totals.logs()
            if X_val is not None:
                val_logs = self._evaluate_engine_arrays(
                    X_val, Y_val, batch_size, metric_list, callback_list
                )
                epoch_logs.update({f"val_{key}": value for key, value in val_logs.items()})
            callback_list.on_epoch_end(epoch, epoch_logs)
            if self.stop_training:
                break
        callback_list.on_train_end(epoch_logs)
        return callback_list.history

    def _batch_buffer(self, name: str, data: Array, rows: int) -> Array:
        """The workspace array that receives ``rows`` shuffled rows of ``data``."""
        return self._training_workspace().array(name, (rows, *data.shape[1:]), data.dtype)

    def _training_workspace(self) -> Workspace:
        if self._workspace is None:
            raise AttributeError("the model is not built yet: it has no workspace")
        return self._workspace

    def _loss_gradient(self, output: Array, Y: Array) -> tuple[Array, bool]:
        """Gradient of the loss for backprop, and whether it is already taken through
        the last layer's activation (the fused softmax/sigmoid cross-entropy path)."""
        engine, loss = self._built_engine(), self._compiled_loss()
        last_activation = self.layers[-1].output_activation
        if not loss.from_logits:
            if last_activation == "softmax" and loss.name in (
                "categorical_crossentropy",
                "sparse_categorical_crossentropy",
            ):
                gradient = engine.backprop_softmax_crossentropy(
                    output, Y, workspace=self._training_workspace()
                )
                return gradient, True
            if last_activation == "sigmoid" and loss.name == "binary_crossentropy":
                return engine.backprop_sigmoid_crossentropy(output, Y), True
        return engine.backprop_loss(loss.name, output, Y, from_logits=loss.from_logits), False

    def _dense_stack(self) -> _DenseStack | None:
        """What ``engine.dense_stack_step`` needs when the model is a stack of biased,
        unregularised Dense layers ending in softmax and trained with categorical
        cross-entropy on probabilities; ``None`` for any other model."""
        engine, loss = self._built_engine(), self._compiled_loss()
        if loss.from_logits or loss.name not in (
            "categorical_crossentropy",
            "sparse_categorical_crossentropy",
        ):
            return None
        dense = [layer for layer in self.layers if type(layer) is Dense]
        if (
            not dense
            or len(dense) != len(self.layers)
            or dense[-1].activation != "softmax"
            or any(layer.activation not in engine.STACK_ACTIVATIONS for layer in dense[:-1])
            or any(
                not layer.use_bias
                or layer.kernel_regularizer is not None
                or layer.bias_regularizer is not None
                for layer in dense
            )
        ):
            return None
        return _DenseStack(
            activations=[layer.activation for layer in dense[:-1]],
            weights=[layer.trainable_weights[0] for layer in dense],
            biases=[layer.trainable_weights[1] for layer in dense],
            weight_grads=[layer.gradients[0] for layer in dense],
            bias_grads=[layer.gradients[1] for layer in dense],
            workspaces=[layer.workspace for layer in dense] + [self._training_workspace()],
        )

    def _train_step(
        self, X: Array, Y: Array, metric_list: Sequence[metrics_module.Metric]
    ) -> tuple[list[Array], list[Array]]:
        engine, loss = self._built_engine(), self._compiled_loss()
        stack = self._stack
        if stack is not None:
            loss_value, output = engine.dense_stack_step(
                X,
                Y,
                stack.weights,
                stack.biases,
                stack.weight_grads,
                stack.bias_grads,
                stack.activations,
                workspaces=stack.workspaces,
            )
            metric_values = [
                metric.batch_value(engine, output, Y, self._training_workspace())
                for metric in metric_list
            ]
            self._compiled_optimizer().apply(engine, self._params, self._grads)
            return [loss_value], metric_values
        output = X
        for layer in self.layers:
            output = layer.forward(output, training=True)
        loss_terms = [
            engine.loss(
                loss.name,
                output,
                Y,
                from_logits=loss.from_logits,
                workspace=self._training_workspace(),
            )
        ]
        loss_terms += [penalty for layer in self.layers for penalty in layer.penalties()]
        metric_values = [
            metric.batch_value(engine, output, Y, self._training_workspace())
            for metric in metric_list
        ]
        gradient, fused = self._loss_gradient(output, Y)
        first_trainable = self._first_trainable
        for i in range(len(self.layers) - 1, first_trainable - 1, -1):
            layer = self.layers[i]
            need_dX = i > first_trainable
            if fused and i == len(self.layers) - 1:
                gradient = layer.backward_from_preactivation(gradient, need_dX=need_dX)
            else:
                gradient = layer.backward(gradient, need_dX=need_dX)
        if first_trainable < len(self.layers):
            self._compiled_optimizer().apply(engine, self._params, self._grads)
        return loss_terms, metric_values

    # ------------------------------------------------------------------ inference
    def _forward(self, X: Array) -> Array:
        for layer in self.layers:
            X = layer.forward(X, training=False)
        return X

    def _evaluate_engine_arrays(
        self,
        X: Array,
        Y: Array,
        batch_size: int,
        metric_list: Sequence[metrics_module.Metric],
        hooks: callbacks_module.CallbackList,
    ) -> dict[str, float]:
        """Loss and metrics over engine arrays in batches, with the ``on_test_*`` hooks."""
        engine, compiled_loss = self._built_engine(), self._compiled_loss()
        totals = metrics_module.EpochTotals(engine, metric_list, self.output_units)
        penalties = [penalty for layer in self.layers for penalty in layer.penalties()]
        n = int(X.shape[0])
        hooks.on_test_begin()
        for step, start in enumerate(range(0, n, batch_size)):
            hooks.on_test_batch_begin(step)
            stop = min(start + batch_size, n)
            output = self._forward(engine.slice_rows(X, start, stop))
            Y_batch = engine.slice_rows(Y, start, stop)
            loss = engine.loss(
                compiled_loss.name, output, Y_batch, from_logits=compiled_loss.from_logits
            )
            values = [metric.batch_value(engine, output, Y_batch) for metric in metric_list]
            totals.add(stop - start, [loss, *penalties], values)
            hooks.on_test_batch_end(step, metrics_module.LazyLogs(totals.logs))
        logs = totals.logs()
        hooks.on_test_end(logs)
        return logs

    def evaluate(
        self,
        x: Any = None,
        y: Any = None,
        batch_size: int | None = None,
        verbose: int | str = "auto",
        return_dict: bool = False,
        callbacks: Sequence[callbacks_module.Callback] | None = None,
        **kwargs: Any,
    ) -> float | list[float] | dict[str, float]:
        """Loss (and metrics) on ``x``, ``y`` in batches; ``callbacks`` get the
        ``on_test_*`` hooks.

        Returns:
            The loss as a float when the model has no metrics, else
            ``[loss, metric, ...]``; a dict keyed by name with ``return_dict``.
        """
        if kwargs:
            raise TypeError(f"evaluate() got unsupported argument(s) {', '.join(kwargs)}")
        self._require_compiled("evaluate()")
        loss = self._compiled_loss()
        batch_size = data_checks.check_positive_int(batch_size, "batch_size", allow_none=True) or 32
        verbose = _check_verbose(verbose)
        x = data_checks.check_features(x, self.input_features, dtype=self._data_dtype())
        if y is None:
            raise ValueError("evaluate() needs targets y; received y=None")
        y_checked = data_checks.check_targets(
            y, loss.name, self._units_for(x), dtype=self._data_dtype()
        )
        data_checks.check_sample_counts(x, y_checked)
        metric_list = metrics_module.resolve(self.metric_names, loss, self.output_units)
        steps = math.ceil(len(x) / batch_size)
        hooks = callbacks_module.CallbackList(
            callbacks, model=self, verbose=0, steps=steps, add_history=False
        )
        started = time.perf_counter()
        engine = self._built_engine()
        X = engine.asarray(x, dtype=self.dtype)
        Y = engine.asarray(y_checked, dtype=self._target_dtype())
        logs = self._evaluate_engine_arrays(X, Y, batch_size, metric_list, hooks)
        if verbose:
            _print_summary_line(steps, time.perf_counter() - started, logs)
        if return_dict:
            return logs
        if not metric_list:
            return logs["loss"]
        return [logs["loss"]] + [logs[metric.key] for metric in metric_list]

    def predict(
        self,
        x: Any,
        batch_size: int | None = None,
        verbose: int | str = 0,
        callbacks: Sequence[callbacks_module.Callback] | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Outputs of the model for ``x`` ``(N, features)``: a NumPy array ``(N, units)``
        in the model's float dtype, computed in batches of ``batch_size`` (32).

        ``callbacks`` get the ``on_predict_*`` hooks, each batch's outputs in
        ``logs["outputs"]``.
        """
        if kwargs:
            raise TypeError(f"predict() got unsupported argument(s) {', '.join(kwargs)}")
        batch_size = data_checks.check_positive_int(batch_size, "batch_size", allow_none=True) or 32
        verbose = _check_verbose(verbose)
        x = data_checks.check_features(x, self.input_features, dtype=self._data_dtype())
        self._units_for(x)
        hooks = callbacks_module.CallbackList(callbacks, model=self, verbose=0, add_history=False)
        started = time.perf_counter()
        engine = self._built_engine()
        X = engine.asarray(x, dtype=self.dtype)
        outputs = []
        hooks.on_predict_begin()
        for step, start in enumerate(range(0, len(x), batch_size)):
            hooks.on_predict_batch_begin(step)
            stop = min(start + batch_size, len(x))
            outputs.append(engine.to_numpy(self._forward(engine.slice_rows(X, start, stop))))
            hooks.on_predict_batch_end(step, {"outputs": outputs[-1]})
        hooks.on_predict_end()
        if verbose:
            _print_summary_line(len(outputs), time.perf_counter() - started, {})
        return np.concatenate(outputs, axis=0)

    def __call__(self, x: Any) -> np.ndarray:
        """``predict(x)`` on the whole input at once."""
        x = data_checks.check_features(x, self.input_features, dtype=self._data_dtype())
        return self.predict(x, batch_size=len(x))

    # ------------------------------------------------------------------ saving
    def get_config(self) -> dict[str, Any]:
        """The model's architecture as JSON-serialisable data."""
        return {
            "name": self.name,
            "input_features": self.input_features,
            "layers": [
                {"class_name": type(layer).__name__, "config": layer.get_config()}
                for layer in self.layers
            ],
        }

    def save(self, filepath: str | os.PathLike, overwrite: bool = True) -> None:
        """Save architecture, weights, and compile settings with optimizer state to one file.

        Any file name works (``model.h5``, ``model.keras``, ``model.dlcore``); the
        format is dlcore's own safe archive, read back by ``load_model``. The file
        is written to a temporary name first and renamed, so an interrupted save
        never damages an existing file.
        """
        self._ensure_built("save()")
        path = os.fspath(filepath)
        if not overwrite and os.path.exists(path):
            raise FileExistsError(f"{path} exists and overwrite=False; choose another name")
        model_config: dict[str, Any] = {
            "format": MODEL_FORMAT,
            "dtype": self.dtype,
            "model": self.get_config(),
            "compile": None,
        }
        arrays = {"params": self._built_engine().to_numpy(self._params)}
        if self.compiled:
            optimizer = self._compiled_optimizer()
            model_config["compile"] = {
                "loss": self._compiled_loss().get_config(),
                "metrics": self.metric_names,
                "optimizer": {
                    "class_name": type(optimizer).__name__,
                    "config": optimizer.get_config(),
                },
                "optimizer_built": optimizer.built,
            }
            if optimizer.built:
                for key, value in optimizer.get_state().items():
                    arrays[f"optimizer/{key}"] = value
        archive.write_archive(path, model_config, arrays)

    def save_weights(self, filepath: str | os.PathLike, overwrite: bool = True) -> None:
        """Save only the weights (read back by ``load_weights`` into the same architecture)."""
        self._ensure_built("save_weights()")
        path = os.fspath(filepath)
        if not overwrite and os.path.exists(path):
            raise FileExistsError(f"{path} exists and overwrite=False; choose another name")
        shapes = [list(s) for layer in self.layers for s in layer.parameter_shapes()]
        archive.write_archive(
            path,
            {"format": "dlcore.weights", "shapes": shapes},
            {"params": self._built_engine().to_numpy(self._params)},
        )

    def load_weights(self, filepath: str | os.PathLike) -> None:
        """Load weights saved by ``save_weights`` (or a whole model saved by ``save``)."""
        self._ensure_built("load_weights()")
        file_config, arrays = archive.read_archive(os.fspath(filepath))
        if file_config.get("format") == MODEL_FORMAT:
            layer_shapes = _shapes_of(file_config)
        elif file_config.get("format") == "dlcore.weights":
            layer_shapes = [tuple(s) for s in file_config["shapes"]]
        else:
            raise ValueError(f"{os.fspath(filepath)} holds no dlcore weights")
        own = [tuple(s) for layer in self.layers for s in layer.parameter_shapes()]
        if layer_shapes != own:
            raise ValueError(
                f"the weights in {os.fspath(filepath)} have shapes {layer_shapes}, "
                f"this model has {own}"
            )
        try:
            params = _checked_params(arrays, int(self._params.shape[0]))
        except (KeyError, ValueError) as error:
            raise ValueError(
                f"the weights file {os.fspath(filepath)} is damaged: {error}"
            ) from None
        self._set_flat(params)

    def _set_flat(self, flat: np.ndarray) -> None:
        engine = self._built_engine()
        engine.assign(self._params, engine.asarray(flat, dtype=self.dtype))


@dataclass(frozen=True)
class _DenseStack:
    """A model's Dense layers as ``Engine.dense_stack_step`` takes them."""

    activations: list[str]
    weights: list[Array]
    biases: list[Array]
    weight_grads: list[Array]
    bias_grads: list[Array]
    workspaces: list[Workspace]


def _shapes_of(model_config: dict[str, Any]) -> list[tuple[int, ...]]:
    model = _model_from_config(model_config["model"])
    # read from the file unchecked: a damaged file may hold None (or worse) here, and the
    # caller's comparison of the shapes then reports the mismatch
    width: Any = model.input_features
    shapes = []
    for layer in model.layers:
        width = layer.build(width)
        shapes += [tuple(s) for s in layer.parameter_shapes()]
    return shapes


def _model_from_config(config_dict: dict[str, Any]) -> Sequential:
    layers = []
    for entry in config_dict["layers"]:
        cls = LAYER_CLASSES.get(entry.get("class_name"))
        if cls is None:
            raise ValueError(f"unknown layer type {entry.get('class_name')!r} in the model file")
        layers.append(cls.from_config(dict(entry["config"])))
    model = Sequential(layers, name=config_dict.get("name"))
    model.input_features = config_dict["input_features"]
    return model


def load_model(filepath: str | os.PathLike, compile: bool = True) -> Sequential:
    """Load a model written by ``Sequential.save`` onto the current engine.

    A compiled model comes back compiled with its optimizer state, so ``fit``
    continues where it stopped. Nothing in the file is unpickled or executed.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a dlcore model, is corrupt, or does not match
            its own description.
    """
    path = os.fspath(filepath)
    file_config, arrays = archive.read_archive(path)
    if file_config.get("format") != MODEL_FORMAT:
        raise ValueError(
            f"{path} is a dlcore file but not a saved model (format "
            f"{file_config.get('format')!r}); load weights with model.load_weights"
        )
    try:
        model = _model_from_config(file_config["model"])
        dtype = file_config["dtype"]
        previous = config.floatx()
        config.set_floatx(dtype)
        try:
            model.build()
        finally:
            config.set_floatx(previous)
        model._set_flat(_checked_params(arrays, int(model._params.shape[0])))
        compile_config = file_config.get("compile")
        if compile and compile_config:
            model.compile(
                optimizer=optimizers.get(compile_config["optimizer"]),
                loss=losses.get(compile_config["loss"]),
                metrics=compile_config["metrics"],
            )
            if compile_config.get("optimizer_built"):
                state = {
                    key.split("/", 1)[1]: value
                    for key, value in arrays.items()
                    if key.startswith("optimizer/")
                }
                size = int(model._params.shape[0])
                optimizer, engine = model._compiled_optimizer(), model._built_engine()
                optimizer.build(engine, size, dtype)
                optimizer.set_state(engine, state, dtype)
    except KeyError as error:
        raise ValueError(f"{path} is not a valid dlcore model file: missing {error}") from None
    except (TypeError, ValueError, AttributeError) as error:
        raise ValueError(f"{path} is not a valid dlcore model file: {error}") from None
    return model


def _checked_params(arrays: dict[str, np.ndarray], expected: int) -> np.ndarray:
    """The flat ``params`` array of a file, checked against the size the architecture needs."""
    params = arrays["params"]
    if params.dtype.kind != "f":
        raise ValueError(f"params must hold real floats, found dtype {params.dtype}")
    if params.shape != (expected,):
        raise ValueError(
            f"params has shape {params.shape}; the architecture needs ({expected},): "
            f"the file holds {params.size} parameters but its architecture needs {expected}"
        )
    return params


# ---------------------------------------------------------------------- helpers
def _row(cells: Sequence[str], widths: Sequence[int]) -> str:
    return "".join(f" {cell:<{width - 1}}" for cell, width in zip(cells, widths)).rstrip()


def _human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.2f} {unit}"
        value /= 1024
    return f"{value:.2f} GB"


def _check_count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, received {name}={value!r}")
    return int(value)


def _check_verbose(verbose: Any) -> int:
    if verbose == "auto":
        return 1
    if verbose in (0, 1, 2):  # Keras accepts verbose=False/True too
        return int(verbose)
    raise ValueError(f"verbose must be 'auto', 0, 1 or 2; received {verbose!r}")


def _print_summary_line(steps: int, seconds: float, logs: dict[str, float]) -> None:
    per_step = 1000 * seconds / max(steps, 1)
    parts = [f"{steps}/{steps}", f"{seconds:.0f}s {per_step:.0f}ms/step"]
    parts += [f"{key}: {value:.4f}" for key, value in logs.items()]
    print(" - ".join(parts))


__all__ = ["Sequential", "load_model"]
