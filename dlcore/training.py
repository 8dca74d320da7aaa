"""Training, evaluation and prediction: ``Trainer``, the part of a model that runs it.

``compile`` fixes one loss (and optional metrics and loss weight) per output.
``fit`` moves the data to the engine once, then runs the per-step plan chosen
once per call: a chain of biased Dense layers ending in softmax trained with
categorical cross-entropy is one ``engine.dense_stack_step`` call; any other
graph runs node by node, forward in the graph's order and backward in reverse,
skipping the weight gradients of frozen layers and every gradient nothing
trainable needs. During training only scalars (losses, metric counts) come back
to the host, once per epoch unless a callback or the progress bar asks for them
per batch.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import math
import numbers
import os
import threading
import time
import typing
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from dlcore import (
    batch_sources,
    config,
    custom,
    data_checks,
    distribute,
    engine_data,
    losses,
    mixed_precision,
    optimizers,
    sample_weights,
    saving,
)
from dlcore import callbacks as callbacks_module
from dlcore import metrics as metrics_module
from dlcore import step_graphs as step_graphs_module
from dlcore.backends.base import Array, Engine, Workspace, dtype_name
from dlcore.layers import CallState, Dense, KerasTensor, Layer, Node

_FIT_OPTIONS = (
    "x, y, batch_size, epochs, verbose, callbacks, validation_split, validation_data, "
    "shuffle, class_weight, sample_weight, initial_epoch, steps_per_epoch, validation_steps, "
    "validation_batch_size, validation_freq"
)
_CROSSENTROPIES = ("categorical_crossentropy", "sparse_categorical_crossentropy")
# compile() options of Keras that change nothing here: dlcore runs every step eagerly
_NO_OP_COMPILE_OPTIONS = ("run_eagerly", "jit_compile", "steps_per_execution")


# a call's data on the host: inputs, targets and each output's sample weights (or None)
_Data = tuple[list[np.ndarray], list[np.ndarray], "list[np.ndarray] | None"]


class _WeightCast(NamedTuple):
    """A layer that computes in another dtype than the model's weights: its flat range of
    the master buffers and the copies in its compute dtype that it runs on."""

    layer: Layer
    master_params: Array  # (size,) view of the model's parameters, the model's dtype
    master_grads: Array  # (size,) view of the model's gradients
    params: Array  # (size,) the weights cast to the layer's run dtype
    grads: Array  # (size,) the layer's weight gradients in its run dtype


@dataclass(frozen=True)
class _DenseStack:
    """A model's Dense layers as ``Engine.dense_stack_step`` takes them."""

    activations: list[str]
    weights: list[Array]
    biases: list[Array]
    weight_grads: list[Array]
    bias_grads: list[Array]
    workspaces: list[Workspace]
    product_dtypes: list[str | None]


@dataclass
class _NodePlan:
    """How one node takes part in a training step."""

    in_slots: list[int]
    out_slot: int
    active: bool  # something trainable at or before it: its backward pass runs
    need_dX: bool
    trains: bool  # its layer's weights get gradients
    fused_output: bool  # its output's loss gradient enters before its activation
    sum_workspace: Workspace


@dataclass
class _Plan:
    stack: _DenseStack | None
    nodes: list[_NodePlan]
    needs_grad: list[bool]
    segments: list[tuple[int, int]] | None
    updates: bool  # some weight is trainable
    trained_layers: list[Any]
    fused_outputs: list[str | None]  # per output: the fused loss gradient it takes, if any
    loss_workspaces: list[Workspace]  # of the outputs after the first
    # id of a trained layer -> the node after whose backward its gradients are complete
    ready_at: dict[int, int] = dataclasses.field(default_factory=dict)


class Trainer(abc.ABC):
    """compile / fit / evaluate / predict and their per-batch versions, for ``Model``.

    ``Model`` provides the graph these run: the attributes declared here and
    ``_claim_layers``, which puts the weights on the engine before they are used.
    """

    _inputs: list[KerasTensor]
    _outputs: list[KerasTensor]
    _nodes: list[Node]
    _states: list[CallState]
    _slots: dict[int, int]  # id of a tensor -> its index in a step's list of values
    _param_layers: list[Layer]
    _layer_ranges: dict[int, tuple[int, int]]  # id of a layer -> its range of the buffers
    _output_keys: list[str] | None
    output_names: list[str]
    input_names: list[str]
    name: str

    @abc.abstractmethod
    def build(self, input_shape: Any = None) -> None:
        """Create the weights; a model that does not know its input width yet takes it
        from ``input_shape`` (the data's, on first use)."""

    @abc.abstractmethod
    def _claim_layers(self) -> None:
        """Put the weights on the engine, owned by this model, before they are used."""

    def __init__(self) -> None:
        self.built = False
        self.engine: Engine | None = None
        self.dtype: str | None = None
        self.optimizer: optimizers.Optimizer | None = None
        self.loss: Any = None
        self._losses: list[losses.Loss] = []
        self._loss_weights: list[float] = []
        self._metric_names: list[list[str]] = []
        self.stop_training = False
        # the epoch a callback (BackupAndRestore) sets in on_train_begin to resume a fit at
        self._initial_epoch: int | None = None
        # whether the call being prepared has sample weights (no fused stack, no graphs)
        self._sample_weighted = False
        self.history: callbacks_module.History | None = None
        self._params: Array = None
        self._grads: Array = None
        # data parallelism's sum of the gradients, during a data-parallel fit
        self._gradient_sync: Any = None
        self._workspace: Workspace | None = None
        self._plan: _Plan | None = None
        # Keras's model.dtype_policy: under "mixed_float16" compile adds loss scaling
        self.dtype_policy = mixed_precision.global_policy()
        self._weight_casts: list[_WeightCast] = []
        # Threads: the lock serialises building, placing the weights and refreshing their
        # cast copies; predictions borrow node states from _idle_states, one set per
        # concurrent call; _training_thread is the thread inside fit or train_on_batch.
        self._lock = threading.RLock()
        self._idle_states: list[list[CallState]] = []
        self._training_thread: threading.Thread | None = None

    # What build() and compile() set; the public methods build or check first.
    def _built_engine(self) -> Engine:
        if self.engine is None:
            raise RuntimeError("the model is not built yet: it has no engine")
        return self.engine

    def _built_dtype(self) -> str:
        if self.dtype is None:
            raise RuntimeError("the model is not built yet: it has no dtype")
        return self.dtype

    def _compiled_optimizer(self) -> optimizers.Optimizer:
        if self.optimizer is None:
            raise RuntimeError("the model is not compiled yet: it has no optimizer")
        return self.optimizer

    def _reset_plan(self) -> None:
        self._plan = None

    @property
    def _stack(self) -> _DenseStack | None:
        """The fused dense-stack step of the current plan, if the model trains through it."""
        return self._plan.stack if self._plan is not None else None

    # ------------------------------------------------------------------ compile
    def compile(
        self,
        optimizer: Any = "rmsprop",
        loss: Any = None,
        metrics: Any = None,
        loss_weights: Any = None,
        auto_scale_loss: bool = True,
        weighted_metrics: Any = None,
        **kwargs: Any,
    ) -> None:
        """Configure training.

        Args:
            optimizer: a name (``"adam"``, ``"sgd"``, ...) or an optimizer object.
            loss: a loss name (Keras 3 or Keras 2 spelling), a loss object or a
                registered custom loss function; for several outputs, a list (one
                per output) or a dict by output name, or one loss for all.
            metrics: metric names (``"accuracy"``/``"acc"``, the specific accuracies,
                any loss name, Keras's metric class names such as ``"auc"``), metric
                objects (``metrics.AUC(...)``, ...) or registered custom metric
                functions; for several outputs, a list of lists or a dict by output
                name. They ignore sample weights, as in Keras 3.
            weighted_metrics: like ``metrics``, but weighing each sample by the
                ``sample_weight`` given to ``fit`` / ``evaluate``: ``sum(w * v) / sum(w)``
                (without weights, the same values as ``metrics``). A name already
                taken by ``metrics`` is logged as ``weighted_<name>``.
            loss_weights: for several outputs, a list or a dict of floats: the total
                loss is the weighted sum of the outputs' losses (default 1 each).
            auto_scale_loss: when the model's dtype policy is ``"mixed_float16"``, wrap
                the optimizer in a ``LossScaleOptimizer`` (as Keras 3 does).
        """
        unknown = [key for key in kwargs if key not in _NO_OP_COMPILE_OPTIONS]
        if unknown:
            raise TypeError(
                f"compile() got unsupported argument(s) {', '.join(unknown)}; "
                "dlcore supports optimizer, loss, metrics, weighted_metrics and loss_weights"
            )
        names = self._compile_output_names()
        new_optimizer = optimizers.get(optimizer)
        if (
            auto_scale_loss
            and self.dtype_policy.name == "mixed_float16"
            and not isinstance(new_optimizer, optimizers.LossScaleOptimizer)
        ):
            new_optimizer = optimizers.LossScaleOptimizer(new_optimizer)
        per_output_loss = _per_output(loss, names, "loss", allow_single=True)
        new_losses = [losses.get(item) for item in per_output_loss]
        if (
            len(names) > 1
            and isinstance(loss_weights, (list, tuple, Mapping))
            and not isinstance(loss, (list, tuple, Mapping))
        ):
            raise ValueError(
                f"loss_weights must match the number of losses: got 1 loss ({loss!r}) and "
                f"{len(loss_weights)} weights; give one loss per output, e.g. "
                f"loss={[loss] * len(names)!r}"
            )
        weights = (
            [1.0] * len(names)
            if loss_weights is None
            else [
                _loss_weight(w, name)
                for w, name in zip(_per_output(loss_weights, names, "loss_weights"), names)
            ]
        )
        new_metrics = _metrics_per_output(metrics, names)
        checked = [metrics_module.check_names(item) for item in new_metrics]
        checked_weighted = [
            metrics_module.check_names(item)
            for item in _metrics_per_output(weighted_metrics, names)
        ]
        if self.built:
            units = self._output_widths()
            for loss_k, names_k, weighted_k, units_k in zip(
                new_losses, checked, checked_weighted, units
            ):
                metrics_module.resolve(names_k, loss_k, units_k)
                metrics_module.resolve(weighted_k, loss_k, units_k, weighted=True)
        if self.engine is not None:
            custom.check_engine(
                self.engine,
                losses=new_losses,
                metrics=[m for group in checked + checked_weighted for m in group],
            )
        self.optimizer = new_optimizer
        self._losses, self._loss_weights, self._metric_names = new_losses, weights, checked
        self._weighted_metric_names = checked_weighted
        self.loss = new_losses[0] if len(new_losses) == 1 else list(new_losses)
        self._plan = None

    def _compile_output_names(self) -> list[str]:
        names = getattr(self, "output_names", None)
        return list(names) if names else ["output"]

    @property
    def compiled(self) -> bool:
        return bool(self._losses)

    @property
    def metric_names(self) -> list[str]:
        """The metric names given to ``compile`` (the first output's, for several); a metric
        object by its name."""
        if not self._metric_names:
            return []
        return [getattr(item, "name", item) for item in self._metric_names[0]]

    @property
    def metrics_names(self) -> list[str]:
        """The names of the values ``evaluate`` returns, in order: ``loss``, each output's
        loss (several outputs), then the metrics."""
        if not self.compiled or not self.built:
            return ["loss"] if self.compiled else []
        return list(self._log_keys())

    def _require_compiled(self, what: str) -> None:
        if not self.compiled:
            raise RuntimeError(
                f"you must compile the model before {what}, e.g. "
                "model.compile(optimizer='adam', loss='categorical_crossentropy', "
                "metrics=['accuracy'])"
            )

    def _output_widths(self) -> list[int]:
        return [t.features for t in self._outputs]

    def _resolved_metrics(self) -> list[list[metrics_module.Metric]]:
        """Each output's metrics, then its weighted metrics, named as Keras 3 logs them:
        ``<output>_`` before each name for several outputs, ``_1``, ``_2``, ... after a
        repeated name, and ``weighted_`` before a weighted metric's name already taken."""
        prefix = len(self._losses) > 1
        weighted_names = getattr(self, "_weighted_metric_names", None) or [[] for _ in self._losses]
        plain, weighted = [], []
        for loss, group, weighted_group, units in zip(
            self._losses, self._metric_names, weighted_names, self._output_widths()
        ):
            plain.append(metrics_module.resolve(group, loss, units))
            weighted.append(metrics_module.resolve(weighted_group, loss, units, weighted=True))
        taken: dict[str, int] = {}
        for k, metrics_k in enumerate(plain):
            out = f"{self.output_names[k]}_" if prefix else ""
            for i, metric in enumerate(metrics_k):
                key = out + metric.key
                if key in taken:
                    taken[key] += 1
                    key = f"{key}_{taken[key] - 1}"
                else:
                    taken[key] = 1
                metrics_k[i] = _renamed(metric, key)
        for k, metrics_k in enumerate(weighted):
            out = f"{self.output_names[k]}_" if prefix else ""
            for i, metric in enumerate(metrics_k):
                key = out + metric.key
                if key in taken:
                    key = f"{out}weighted_{metric.key}"
                    if key in taken:
                        taken[key] += 1
                        key = f"{key}_{taken[key] - 1}"
                taken.setdefault(key, 1)
                metrics_k[i] = _renamed(metric, key)
        return [p + w for p, w in zip(plain, weighted)]

    def _log_keys(self) -> list[str]:
        keys = ["loss"]
        if len(self._losses) > 1:
            keys += [f"{name}_loss" for name in self.output_names]
        keys += [metric.key for group in self._resolved_metrics() for metric in group]
        return keys

    # ------------------------------------------------------------------ data
    def _data_dtype(self) -> str:
        """The float dtype data will have on the engine: the model's, or floatx before build."""
        return self.dtype or config.floatx()

    def _check_inputs(self, x: Any, name: str = "x") -> list[Any]:
        """The model's inputs as checked ``(N, features)`` arrays, in the inputs' order:
        NumPy arrays, or ``EngineData`` for data already on the engine's device."""
        expected = [t.features for t in self._inputs] if self.built else None
        keys = self.input_names if self.built else None
        count = len(expected) if expected is not None else 1
        arrays = _structured(x, count, keys, name, "input")
        checked: list[Any] = []
        sample_dims = None  # a multi-dimensional sample shape, to build from
        engine = self.engine or config.get_backend()
        for i, array in enumerate(arrays):
            label = name if count == 1 else f"{name}[{keys[i] if keys else i}]"
            dims = self._inputs[i].dims if self.built else None
            on_engine = engine_data.on_engine(array, engine)
            if on_engine is not None:  # already on the engine's device: checked there
                inputs, sample_dims = engine_data.check_features(
                    on_engine,
                    dims,
                    expected[i] if expected is not None else None,
                    dtype=self._data_dtype(),
                    name=label,
                )
                checked.append(inputs)
                continue
            array, sample_dims = data_checks.flatten_samples(array, dims, name=label)
            checked.append(
                data_checks.check_features(
                    array,
                    expected[i] if expected is not None else None,
                    dtype=self._data_dtype(),
                    name=label,
                )
            )
        if not self.built:
            with self._lock:  # threads predicting at once build it once
                if not self.built:
                    self.build(input_shape=(None, *(sample_dims or checked[0].shape[1:])))
        if any(len(array) != len(checked[0]) for array in checked[1:]):
            raise ValueError(
                f"every input must hold the same number of samples; received "
                f"{[len(a) for a in checked]}"
            )
        return checked

    def _check_targets(self, y: Any, name: str = "y") -> list[Any]:
        """The targets checked per output (NumPy arrays, or ``EngineData``)."""
        names = self.output_names
        arrays = _structured(y, len(names), names, name, "output")
        engine = self.engine or config.get_backend()
        checked: list[Any] = []
        for array, loss, units, out in zip(arrays, self._losses, self._output_widths(), names):
            label = name if len(names) == 1 else f"{name}[{out}]"
            on_engine = engine_data.on_engine(array, engine)
            if on_engine is not None:  # already on the engine's device: checked there
                checked.append(
                    engine_data.check_targets(
                        on_engine, loss.name, units, dtype=self._data_dtype(), name=label
                    )
                )
            else:
                checked.append(
                    data_checks.check_targets(
                        array, loss.name, units, dtype=self._data_dtype(), name=label
                    )
                )
        return checked

    def _target_dtype(self, k: int) -> str:
        if self._losses[k].name == "sparse_categorical_crossentropy":
            return "int64"
        return self._built_dtype()

    def _checked_pair(
        self, x: Any, y: Any, caller: str, x_name: str = "x", y_name: str = "y"
    ) -> tuple[list[Any], list[Any]]:
        # A model built from x here is unbuilt again if y is refused: a failed call
        # leaves the model as it found it.
        unbuilt = None if self.built else self._unbuilt_state()
        try:
            xs = self._check_inputs(x, x_name)
            if y is None:
                raise ValueError(
                    f"{caller} needs targets {y_name} for the loss; received {y_name}=None"
                )
            ys = self._check_targets(y, y_name)
            for target in ys:
                data_checks.check_sample_counts(xs[0], target, x_name=x_name, y_name=y_name)
        except Exception:
            if unbuilt is not None:
                self._restore_unbuilt(unbuilt)
            raise
        return xs, ys

    def _checked_weighted(
        self,
        x: Any,
        y: Any,
        sample_weight: Any,
        class_weight: Any,
        caller: str,
        x_name: str = "x",
        y_name: str = "y",
        w_name: str = "sample_weight",
    ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray] | None]:
        """``_checked_pair`` and each output's sample weights (``sample_weights``), or
        ``None`` when neither ``sample_weight`` nor ``class_weight`` is given."""
        unbuilt = None if self.built else self._unbuilt_state()
        xs, ys = self._checked_pair(x, y, caller, x_name, y_name)
        if class_weight is not None:  # classes are looked up on the host
            labels = [y.to_numpy() if isinstance(y, engine_data.EngineData) else y for y in ys]
        else:
            labels = ys
        try:
            ws = sample_weights.checked_weights(
                sample_weight,
                class_weight,
                labels,
                self._compile_output_names(),
                self._built_dtype(),
                caller,
                w_name,
            )
        except Exception:
            if unbuilt is not None:
                self._restore_unbuilt(unbuilt)
            raise
        return xs, ys, ws

    def _weights_to_engine(self, ws: list[np.ndarray] | None) -> list[Array] | None:
        """Each output's weights on the engine; an array shared by outputs is moved once."""
        if ws is None:
            return None
        engine, dtype = self._built_engine(), self._built_dtype()
        moved: dict[int, Array] = {}
        for w in ws:
            if id(w) not in moved:
                moved[id(w)] = engine.asarray(w, dtype=dtype)
        return [moved[id(w)] for w in ws]

    def _unbuilt_state(self) -> Any:
        """What ``_restore_unbuilt`` needs to undo a build from the data; ``None`` for a
        model that is built from its construction (a functional model)."""
        return None

    def _restore_unbuilt(self, state: Any) -> None:
        """Undo the build ``_unbuilt_state`` was taken before."""
        return None

    def _to_engine(self, xs: list[np.ndarray], ys: list[np.ndarray] | None) -> tuple[list, list]:
        """The checked data on the engine; data already there (``EngineData``, converted
        to the model's dtypes by its checks) as it is."""
        engine, dtype = self._built_engine(), self._built_dtype()

        def moved(data: Any, dtype: str) -> Array:
            if isinstance(data, engine_data.EngineData):
                return data.array
            return engine.asarray(data, dtype=dtype)

        X = [moved(x, dtype) for x in xs]
        Y = [] if ys is None else [moved(y, self._target_dtype(k)) for k, y in enumerate(ys)]
        return X, Y

    # ------------------------------------------------------------------ fit
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
        class_weight: Mapping[int, float] | None = None,
        sample_weight: Any = None,
        initial_epoch: int = 0,
        steps_per_epoch: int | None = None,
        validation_steps: int | None = None,
        validation_batch_size: int | None = None,
        validation_freq: int | Sequence[int] = 1,
        **kwargs: Any,
    ) -> callbacks_module.History:
        """Train the model on inputs ``x`` and targets ``y``.

        ``x`` is an ``(N, features)`` array, or a list (dict by input name) of them
        for several inputs; ``y`` is ``(N, units)`` (one-hot for categorical
        cross-entropy) or int labels ``(N,)`` for sparse categorical cross-entropy,
        or a list (dict by output name) for several outputs. ``validation_split``
        holds out the *last* fraction of the samples, before shuffling, as Keras
        does; the last batch may be smaller than ``batch_size``. Keras 2's
        ``nb_epoch`` is accepted for ``epochs``.

        ``sample_weight`` (``(N,)`` non-negative floats, or one per output) scales each
        sample's loss: a batch's loss is ``sum(w * loss) / batch size``, as Keras 3
        reduces it, and ``weighted_metrics`` average with the weights; ``class_weight``
        (``{class: weight}``, one output) gives each sample its class's weight.
        ``validation_data`` may be ``(x_val, y_val, w_val)``.

        ``x`` may also be data that comes in batches (``y`` is then ``None``): a Python
        generator or iterator of ``(x, y)`` or ``(x, y, sample_weight)`` batches, or a
        ``dlcore.utils.Sequence``; an epoch is ``steps_per_epoch`` batches (default: the
        whole ``Sequence``, or the iterator until it is exhausted). ``validation_data``
        may be one too (``validation_steps`` batches). ``validation_freq`` validates
        every that many epochs, or at the epochs (from 1) in a list.

        Returns:
            A ``History`` whose ``history`` dict maps ``loss``, each output's loss
            (several outputs), the metrics and their ``val_`` versions to one value
            per epoch.
        """
        if "nb_epoch" in kwargs:
            epochs = kwargs.pop("nb_epoch")
        if kwargs:
            raise TypeError(
                f"fit() got unsupported argument(s) {', '.join(kwargs)}; supported: {_FIT_OPTIONS}"
            )
        self._require_compiled("fit()")
        batch_size = data_checks.check_positive_int(batch_size, "batch_size", allow_none=True) or 32
        epochs = _check_count(epochs, "epochs")
        initial_epoch = _check_count(initial_epoch, "initial_epoch")
        verbose = _check_verbose(verbose)
        if (
            isinstance(validation_split, bool)
            or not isinstance(validation_split, (float, numbers.Real))
            or not (0 <= validation_split < 1)
        ):
            raise ValueError(
                f"validation_split must be a fraction in [0, 1), received {validation_split!r}"
            )
        validation_batch_size = (
            data_checks.check_positive_int(
                validation_batch_size, "validation_batch_size", allow_none=True
            )
            or batch_size
        )
        validation_epochs = _validation_epochs(validation_freq)
        if batch_sources.is_batch_source(x):
            return self._fit_batch_source(
                x,
                y,
                sample_weight,
                class_weight,
                validation_split,
                validation_data,
                epochs,
                initial_epoch,
                verbose,
                callbacks,
                shuffle,
                steps_per_epoch,
                validation_steps,
                validation_batch_size,
                validation_epochs,
            )
        with self._training_alone("fit()"):
            xs, ys, ws = self._checked_weighted(x, y, sample_weight, class_weight, "fit()")
            val: _Data | None = None
            if validation_data is not None and batch_sources.is_batch_source(validation_data):
                val = validation_data
            elif validation_data is not None:
                if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (
                    2,
                    3,
                ):
                    raise ValueError(
                        "validation_data must be a tuple (x_val, y_val) or (x_val, y_val, "
                        f"w_val), received {_described(validation_data)}"
                    )
                x_val, y_val, *w_val = validation_data
                val = self._checked_weighted(
                    x_val,
                    y_val,
                    w_val[0] if w_val else None,
                    None,
                    "fit()",
                    x_name="x_val",
                    y_name="y_val",
                    w_name="w_val",
                )
            elif validation_split:
                n = len(xs[0])
                split_at = int(math.floor(n * (1.0 - validation_split)))
                if split_at == 0 or split_at == n:
                    raise ValueError(
                        f"validation_split={validation_split} of {n} samples leaves "
                        f"{split_at} for training and {n - split_at} for validation; "
                        "both need at least one sample"
                    )
                val = (
                    [a[split_at:] for a in xs],
                    [a[split_at:] for a in ys],
                    None if ws is None else [w[split_at:] for w in ws],
                )
                xs, ys = [a[:split_at] for a in xs], [a[:split_at] for a in ys]
                ws = None if ws is None else [w[:split_at] for w in ws]
            parallel = distribute.distribution()
            if parallel is None or parallel.auto_shard_dataset:
                steps = math.ceil(len(xs[0]) / batch_size)
            else:  # each process's own shard: an epoch lasts as long as the longest
                steps = len(parallel.steps(len(xs[0]), batch_size))
            if steps_per_epoch is not None:
                steps_per_epoch = _positive(steps_per_epoch, "steps_per_epoch")
                if steps_per_epoch > steps:
                    raise ValueError(
                        f"steps_per_epoch={steps_per_epoch} asks for more batches than the "
                        f"{len(xs[0])} samples make in batches of {batch_size} ({steps}); "
                        f"give at most {steps}, or None"
                    )
                steps = steps_per_epoch
            callback_list = callbacks_module.CallbackList(
                callbacks, model=self, verbose=verbose, epochs=epochs, steps=steps
            )
            metric_groups = self._resolved_metrics()
            self._sample_weighted = ws is not None
            self._prepare()
            return self._fit_loop(
                (xs, ys, ws),
                _Validation(val, validation_steps, validation_batch_size, validation_epochs),
                batch_size,
                epochs,
                initial_epoch,
                shuffle,
                metric_groups,
                callback_list,
            )

    def _fit_batch_source(
        self,
        x: Any,
        y: Any,
        sample_weight: Any,
        class_weight: Any,
        validation_split: float,
        validation_data: Any,
        epochs: int,
        initial_epoch: int,
        verbose: int,
        callbacks: Sequence[callbacks_module.Callback] | None,
        shuffle: bool,
        steps_per_epoch: int | None,
        validation_steps: int | None,
        validation_batch_size: int,
        validation_epochs: int | frozenset[int],
    ) -> callbacks_module.History:
        """``fit`` on a generator, an iterator or a ``Sequence`` of batches."""
        for name, value in (("y", y), ("sample_weight", sample_weight)):
            if value is not None:
                raise ValueError(
                    f"fit(): x is a generator or Sequence, so its batches carry the targets "
                    f"and sample weights; {name} must be None, received {type(value).__name__}"
                )
        if validation_split:
            raise ValueError(
                "fit(): validation_split cannot split a generator or Sequence; pass the "
                "validation batches as validation_data"
            )
        source = batch_sources.BatchSource(x, steps_per_epoch, shuffle, "x")
        with self._training_alone("fit()"):
            first = source.peek()
            *_, ws = self._checked_batch(first, 0, "x", class_weight)
            val: Any = None
            if validation_data is not None and not batch_sources.is_batch_source(validation_data):
                x_val, y_val, *w_val = validation_data
                val = self._checked_weighted(
                    x_val,
                    y_val,
                    w_val[0] if w_val else None,
                    None,
                    "fit()",
                    "x_val",
                    "y_val",
                    "w_val",
                )
            elif validation_data is not None:
                val = validation_data
            validation = _Validation(
                val, validation_steps, validation_batch_size, validation_epochs
            )
            callback_list = callbacks_module.CallbackList(
                callbacks, model=self, verbose=verbose, epochs=epochs, steps=source.steps
            )
            metric_groups = self._resolved_metrics()
            self._sample_weighted = ws is not None or class_weight is not None
            self._prepare()
            engine = self._built_engine()
            validation.to_engine(self)
            engine.seed(int(config.rng().integers(2**63 - 1)))
            self.stop_training = False
            self.history = callback_list.history
            initial_epoch = self._begin_training(callback_list, initial_epoch)
            epoch_logs: dict[str, float] = {}
            for epoch in range(initial_epoch, epochs):
                callback_list.on_epoch_begin(epoch)
                totals = self._totals(engine, metric_groups)
                for step, batch in source.epoch():
                    callback_list.on_train_batch_begin(step)
                    xs, ys, ws = self._checked_batch(batch, step, "x", class_weight)
                    X, Y = self._to_engine(xs, ys)
                    loss_terms, values = self._train_step(
                        X, Y, metric_groups, self._weights_to_engine(ws)
                    )
                    totals.add(len(xs[0]), loss_terms, values)
                    callback_list.on_train_batch_end(
                        step,
                        metrics_module.LazyLogs(totals.logs)
                        if callback_list.wants_batch_logs
                        else None,
                    )
                    if self.stop_training:
                        break
                if source.exhausted:
                    warnings.warn(
                        f"fit(): x ran out of batches at epoch {epoch + 1} of {epochs}; training "
                        "stops here. Give steps_per_epoch so that the generator yields "
                        "steps_per_epoch * epochs batches, or make it loop forever",
                        stacklevel=3,
                    )
                    break
                epoch_logs = totals.logs()
                epoch_logs.update(validation.logs(self, epoch, metric_groups, callback_list))
                source.end_epoch()
                callback_list.on_epoch_end(epoch, epoch_logs)
                if self.stop_training:
                    break
            self._compiled_optimizer().finalize_variable_values(engine, self._params)
            callback_list.on_train_end(epoch_logs)
            return callback_list.history

    def _begin_training(
        self, callback_list: callbacks_module.CallbackList, initial_epoch: int
    ) -> int:
        """``on_train_begin``; returns the epoch to start at: ``initial_epoch``, or a later
        one where a callback (``BackupAndRestore``) resumes an interrupted fit by setting
        ``_initial_epoch``."""
        self._initial_epoch = None
        callback_list.on_train_begin()
        resumed = typing.cast("int | None", self._initial_epoch)  # a callback may have set it
        return initial_epoch if resumed is None else max(initial_epoch, resumed)

    def _checked_batch(
        self, batch: Any, index: int, what: str, class_weight: Any = None
    ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray] | None]:
        """``_checked_weighted`` of batch ``index`` of a batch source; a refused batch's
        error names it."""
        x, y, w = batch_sources.unpacked(batch, index, what, targets=True)
        try:
            return self._checked_weighted(x, y, w, class_weight, f"batch {index} of {what}")
        except (ValueError, TypeError) as error:
            raise type(error)(f"batch {index} of {what}: {error}") from error

    def _evaluate_batch_source(
        self,
        source: batch_sources.BatchSource,
        metric_groups: Sequence[Sequence[metrics_module.Metric]],
        hooks: callbacks_module.CallbackList,
    ) -> dict[str, float]:
        """Loss and metrics over one epoch of a batch source, with the ``on_test_*`` hooks."""
        engine = self._built_engine()
        totals = self._totals(engine, metric_groups)
        penalties = [penalty for layer in self._trained_layers() for penalty in layer.penalties()]
        hooks.on_test_begin()
        for step, batch in source.epoch():
            hooks.on_test_batch_begin(step)
            xs, ys, ws = self._checked_batch(batch, step, source.what)
            X, Y = self._to_engine(xs, ys)
            loss_terms, values = self._test_batch(X, Y, metric_groups, self._weights_to_engine(ws))
            totals.add(len(xs[0]), loss_terms + penalties, values)
            hooks.on_test_batch_end(step, metrics_module.LazyLogs(totals.logs))
        source.end_epoch()
        logs = totals.logs()
        hooks.on_test_end(logs)
        return logs

    @contextlib.contextmanager
    def _training_alone(self, caller: str) -> Iterator[None]:
        """Hold the model for training in this thread for the block; refuse a second
        training call (another thread's, or one made from a callback) while one runs.

        Raises:
            RuntimeError: the model is already training.
        """
        current = threading.current_thread()
        with self._lock:
            holder = self._training_thread
            if holder is not None:
                raise RuntimeError(
                    f"{caller}: model {self.name!r} is already training in thread "
                    f"{holder.name!r} (this call is in thread {current.name!r}); one model "
                    "trains in one thread at a time: wait for that call to return, or "
                    "train a copy of the model (copy.deepcopy)"
                )
            self._training_thread = current
        try:
            yield
        finally:
            with self._lock:
                self._training_thread = None

    def _prepare(self) -> None:
        """Everything a training step needs, before the first one: weights owned by this
        model, the optimizer's state, the plan."""
        self._claim_layers()
        engine, dtype = self._built_engine(), self._built_dtype()
        custom.check_engine(
            engine,
            losses=self._losses,
            metrics=[m for group in self._metric_names for m in group],
        )
        optimizer = self._compiled_optimizer()
        if not optimizer.built:
            optimizer.build(engine, int(self._params.shape[0]), dtype)
        elif optimizer._size != int(self._params.shape[0]):
            optimizer.build(engine, int(self._params.shape[0]), dtype)  # says what is wrong
        self._plan = self._make_plan()
        # the range of each trained weight in the flat buffers (clipnorm clips each one)
        self._trained_variable_ranges: list[tuple[int, int]] = []
        for layer in self._param_layers:
            start = self._layer_ranges[id(layer)][0]
            for shape, trained in zip(layer.parameter_shapes(), layer.weight_trainable()):
                stop = start + math.prod(shape)
                if trained and start < stop:  # never the moving statistics
                    self._trained_variable_ranges.append((start, stop))
                start = stop

    def _fit_loop(
        self,
        data: _Data,
        validation: _Validation,
        batch_size: int,
        epochs: int,
        initial_epoch: int,
        shuffle: bool,
        metric_groups: list[list[metrics_module.Metric]],
        callback_list: callbacks_module.CallbackList,
    ) -> callbacks_module.History:
        engine = self._built_engine()
        xs, ys, ws = data
        X, Y = self._to_engine(xs, ys)
        W = self._weights_to_engine(ws)
        validation.to_engine(self)
        parallel = distribute.distribution()
        if parallel is not None:
            parallel.check_same_setup(self, len(xs[0]), "fit()")
            parallel.share_random_state()
        rng = config.rng()
        engine.seed(int(rng.integers(2**63 - 1)))
        n = len(xs[0])
        max_steps = callback_list.params.get("steps")
        if parallel is None:
            steps = [
                distribute.StepRows(
                    start, min(start + batch_size, n), 0, min(batch_size, n - start)
                )
                for start in range(0, n, batch_size)
            ][:max_steps]
        else:
            steps = parallel.steps(n, batch_size, max_steps)
            callback_list.params["steps"] = len(steps)
        self.stop_training = False
        self.history = callback_list.history
        initial_epoch = self._begin_training(callback_list, initial_epoch)
        if parallel is not None:
            initial_epoch = parallel.start_from_chief(self, initial_epoch)
            plan = self._plan
            assert plan is not None  # _prepare made it
            self._gradient_sync = parallel.gradient_sync(
                engine, self._grads, plan.segments or [(0, int(self._grads.shape[0]))]
            )
        epoch_logs: dict[str, float] = {}
        workspace = self._model_workspace()
        graphs = None if parallel is not None else self._step_graphs(engine)
        # data-parallel: whether a callback may stop training within an epoch on some
        # process, so that the processes must agree after every step
        batch_stops = parallel is not None and bool(
            parallel.communicator.sum_host(np.asarray([float(callback_list.has_batch_hooks)]))[0]
        )
        try:
            for epoch in range(initial_epoch, epochs):
                callback_list.on_epoch_begin(epoch)
                totals = self._totals(engine, metric_groups)
                order = engine.asarray(rng.permutation(n), dtype="int64") if shuffle else None
                at_once = (
                    parallel is None
                    and graphs is None
                    and self._epoch_in_one_call(
                        X, Y, W, order, batch_size, steps, metric_groups, totals, callback_list
                    )
                )
                for step, rows in enumerate([] if at_once else steps):
                    callback_list.on_train_batch_begin(step)
                    # a process without rows in a short last batch steps on a stand-in row
                    # with weight 0, so that every process draws the same random numbers
                    start = rows.start if rows.count else min(rows.start, n - 1)
                    stop = max(rows.stop, start + 1)
                    W_batch = None
                    if order is None:
                        X_batch = [engine.slice_rows(A, start, stop) for A in X]
                        Y_batch = [engine.slice_rows(A, start, stop) for A in Y]
                        if W is not None:
                            W_batch = [engine.slice_rows(A, start, stop) for A in W]
                        if graphs is not None and graphs.may_capture:  # read at fixed addresses
                            X_batch = _staged_rows(engine, workspace, "x", X_batch)
                            Y_batch = _staged_rows(engine, workspace, "y", Y_batch)
                    else:
                        picked = engine.slice_rows(order, start, stop)
                        X_batch = _shuffled_rows(engine, workspace, "x", X, picked, stop - start)
                        Y_batch = _shuffled_rows(engine, workspace, "y", Y, picked, stop - start)
                        if W is not None:
                            W_batch = _shuffled_weights(engine, workspace, W, picked, stop - start)
                    if parallel is not None:
                        loss_terms, metric_values = self._parallel_train_step(
                            rows, X_batch, Y_batch, metric_groups, W_batch
                        )
                    elif graphs is None:
                        loss_terms, metric_values = self._train_step(
                            X_batch, Y_batch, metric_groups, W_batch
                        )
                    else:
                        loss_terms, metric_values = self._graph_train_step(
                            graphs, X_batch, Y_batch, metric_groups
                        )
                    if rows.count:
                        totals.add(rows.count, loss_terms, metric_values)
                    batch_logs = (
                        metrics_module.LazyLogs(totals.logs)
                        if callback_list.wants_batch_logs
                        else None
                    )
                    callback_list.on_train_batch_end(step, batch_logs)
                    if self._stops(parallel, batch_stops):
                        break
                if parallel is None:
                    epoch_logs = totals.logs()
                else:
                    parallel.share_untrained(self)
                    epoch_logs = totals.reduced_logs(parallel.communicator.sum_host)
                epoch_logs.update(validation.logs(self, epoch, metric_groups, callback_list))
                callback_list.on_epoch_end(epoch, epoch_logs)
                if self._stops(parallel):
                    break
        finally:
            self._gradient_sync = None
            if graphs is not None:
                graphs.release()
        self._compiled_optimizer().finalize_variable_values(engine, self._params)
        callback_list.on_train_end(epoch_logs)
        return callback_list.history

    def _epoch_in_one_call(
        self,
        X: list[Array],
        Y: list[Array],
        W: list[Array] | None,
        order: Array | None,
        batch_size: int,
        steps: list[distribute.StepRows],
        metric_groups: list[list[metrics_module.Metric]],
        totals: metrics_module.EpochTotals,
        callback_list: callbacks_module.CallbackList,
    ) -> bool:
        """Run an epoch's ``steps`` as one ``engine.dense_stack_epoch`` call and record them
        in ``totals``, when nothing needs Python between steps: a dense stack, no sample
        weights, no batch callbacks, only accuracies as metrics, an optimizer whose steps
        are its rule alone. ``False``, with nothing run, otherwise."""
        plan = self._plan
        stack = None if plan is None else plan.stack
        engine = self._built_engine()
        if stack is None or W is not None or self.stop_training:
            return False
        if type(engine).dense_stack_epoch is Engine.dense_stack_epoch:  # never supported
            return False
        if callback_list.has_batch_hooks or callback_list.wants_batch_logs:
            return False
        kind = "sparse" if Y[0].ndim == 1 else "categorical"
        metrics = metric_groups[0]
        if any(
            metric.accuracy_kind != kind
            or not (
                metric.metric_object is None
                or isinstance(metric.metric_object, metrics_module.MeanMetric)
            )
            for metric in metrics
        ):
            return False
        run = self._compiled_optimizer().epoch_steps(len(steps))
        if run is None:
            return False
        result = engine.dense_stack_epoch(
            X[0],
            Y[0],
            order,
            batch_size,
            stack.weights,
            stack.biases,
            stack.weight_grads,
            stack.bias_grads,
            stack.activations,
            run.rule,
            self._params,
            self._grads,
            run.slots,
            run.hyperparameters,
            count=bool(metrics),
            workspaces=stack.workspaces,
            product_dtypes=stack.product_dtypes,
        )
        if result is None:
            return False
        run.commit()
        losses, correct = result
        for s, rows in enumerate(steps):
            counts = [] if correct is None else [correct[s]] * len(metrics)
            totals.add(rows.count, [losses[s]], counts)
        return True

    def _stops(self, parallel: distribute.DataParallel | None, agree: bool = True) -> bool:
        """Whether ``fit`` stops now: ``stop_training`` set by a callback; data-parallel
        and ``agree``, set on any process (one process's callback stops them all at the
        same step). Every process passes the same ``agree``."""
        if parallel is None or not agree:
            return self.stop_training
        asked = parallel.communicator.sum_host(np.asarray([float(self.stop_training)]))
        self.stop_training = bool(asked[0] > 0)
        return self.stop_training

    def _parallel_train_step(
        self,
        rows: distribute.StepRows,
        X: list[Array],
        Y: list[Array],
        metric_groups: Sequence[Sequence[metrics_module.Metric]],
        W: list[Array] | None,
    ) -> tuple[list[Array], list[Array]]:
        """``_train_step`` on this process's share ``rows`` of a global batch: its gradient,
        weighted by its share of the batch, summed over every process; then the same
        update everywhere. Random draws (dropout) are this share's rows of those a single
        process would make for the whole batch. A process without rows in this batch
        steps on a stand-in row whose gradient counts 0."""
        engine = self._built_engine()
        sync = self._gradient_sync
        sync.begin(rows.count / rows.global_count)
        engine.set_random_rows(rows.offset if rows.count else 0, rows.global_count)
        try:
            loss_terms, metric_values = self._gradient_step(X, Y, metric_groups, W)
        finally:
            engine.set_random_rows(0, None)
        sync.finish()
        self._apply_update()
        return loss_terms, metric_values

    def _step_graphs(self, engine: Engine) -> step_graphs_module.StepGraphs | None:
        """The fit's CUDA graphs of its training steps, or ``None`` for plain steps: when
        ``config.cuda_graphs()`` is off (the default), and for a ``LossScaleOptimizer``,
        whose loss scale is a host number inside the step (a graph would freeze it) and
        which decides on the host whether to apply each step."""
        if not config.cuda_graphs() or self._sample_weighted:
            return None
        if isinstance(self.optimizer, optimizers.LossScaleOptimizer):
            return None
        return step_graphs_module.StepGraphs(engine)

    def _graph_train_step(
        self,
        graphs: step_graphs_module.StepGraphs,
        X: list[Array],
        Y: list[Array],
        metric_groups: Sequence[Sequence[metrics_module.Metric]],
    ) -> tuple[list[Array], list[Array]]:
        """``_train_step`` with the gradient computation run, captured or replayed by
        ``graphs``, and the optimizer's update launched after it."""

        def step() -> tuple[list[Array], list[Array]]:
            self._forget_step_caches()
            return self._gradient_step(X, Y, metric_groups)

        loss_terms, metric_values = graphs.run(self._plan, [*X, *Y], step)
        self._apply_update()
        return loss_terms, metric_values

    def _forget_step_caches(self) -> None:
        """Drop what each node kept of the last step it ran for its backward pass.

        Replays do not run the step's Python code, so when a batch shape runs after
        other shapes' replays the nodes still hold the arrays of the last step that ran
        plainly; dropping them first lets the engine reuse their memory instead of
        allocating more (an allocation would fail the capture of that shape).
        """
        for state in self._states:
            state.cache = None

    def _totals(
        self, engine: Engine, metric_groups: Sequence[Sequence[metrics_module.Metric]]
    ) -> metrics_module.EpochTotals:
        return metrics_module.EpochTotals(
            engine,
            metric_groups,
            self._output_widths(),
            loss_weights=self._loss_weights,
            output_names=self.output_names if len(self._losses) > 1 else (),
        )

    def _model_workspace(self) -> Workspace:
        if self._workspace is None:
            raise RuntimeError("the model is not built yet: it has no workspace")
        return self._workspace

    # ------------------------------------------------------------------ the plan
    def _make_plan(self) -> _Plan:
        nodes = self._nodes
        slots = self._slots
        outputs = self._outputs
        engine = self._built_engine()
        needs_grad = [False] * len(slots)
        consumers: dict[int, int] = {}
        for node in nodes:
            for tensor in node.inputs:
                consumers[slots[id(tensor)]] = consumers.get(slots[id(tensor)], 0) + 1
        for tensor in outputs:
            consumers[slots[id(tensor)]] = consumers.get(slots[id(tensor)], 0) + 1
        node_plans = []
        trained: list[Any] = []
        for node in nodes:
            layer = node.layer
            in_slots = [slots[id(t)] for t in node.inputs]
            out_slot = slots[id(node.output)]
            trains = layer.trainable and bool(layer.parameter_shapes())
            need_dX = any(needs_grad[s] for s in in_slots)
            needs_grad[out_slot] = trains or need_dX
            if trains and layer not in trained:
                trained.append(layer)
            node_plans.append(
                _NodePlan(
                    in_slots,
                    out_slot,
                    needs_grad[out_slot],
                    need_dX,
                    trains,
                    False,
                    Workspace(engine),
                )
            )
        fused_outputs: list[str | None] = [None] * len(outputs)
        for k, tensor in enumerate(outputs):
            slot = slots[id(tensor)]
            if tensor.node is None or consumers.get(slot, 0) != 1:
                continue
            index = nodes.index(tensor.node)
            fused_outputs[k] = self._fused_gradient(k) if node_plans[index].active else None
            node_plans[index].fused_output = fused_outputs[k] is not None
        param_layers = self._param_layers
        ranges = self._layer_ranges
        segments: list[tuple[int, int]] = []
        for layer in param_layers:
            # each trainable weight's range; a layer's non-trainable weights (moving
            # statistics) are left out, so the optimizer never touches them
            start = ranges[id(layer)][0]
            for shape, flag in zip(layer.parameter_shapes(), layer.weight_trainable()):
                stop = start + int(np.prod(shape, dtype=np.int64))
                if flag and start < stop:
                    if segments and segments[-1][1] == start:
                        segments[-1] = (segments[-1][0], stop)
                    else:
                        segments.append((start, stop))
                start = stop
        total = int(self._params.shape[0])
        whole = segments == [(0, total)]
        ready_at: dict[int, int] = {}
        for index, node_plan in enumerate(node_plans):
            if node_plan.trains:  # the backward pass meets a layer's first node last
                ready_at.setdefault(id(nodes[index].layer), index)
        return _Plan(
            stack=None if self._sample_weighted else self._dense_stack(),
            nodes=node_plans,
            needs_grad=needs_grad,
            segments=None if whole else segments,
            updates=bool(segments),
            trained_layers=trained,
            fused_outputs=fused_outputs,
            loss_workspaces=[Workspace(engine) for _ in outputs[1:]],
            ready_at=ready_at,
        )

    def _fused_gradient(self, k: int) -> str | None:
        """The fused loss gradient of output ``k``, entering before its layer's activation:
        softmax or sigmoid with their cross-entropy on probabilities; else ``None``."""
        tensor = self._outputs[k]
        loss = self._losses[k]
        if tensor.node is None or loss.from_logits or not tensor.node.layer.fused_output_ok:
            return None
        activation = tensor.node.layer.output_activation
        if activation == "softmax" and loss.name in _CROSSENTROPIES:
            return "softmax"
        if activation == "sigmoid" and loss.name == "binary_crossentropy":
            return "sigmoid"
        return None

    def _dense_stack(self) -> _DenseStack | None:
        """What ``engine.dense_stack_step`` needs when the model is a chain of biased,
        unregularised, trainable Dense layers ending in softmax, with one output trained
        with categorical cross-entropy on probabilities; ``None`` for any other model."""
        engine = self._built_engine()
        nodes = self._nodes
        if len(self._losses) != 1 or len(self._inputs) != 1:
            return None
        loss = self._losses[0]
        if loss.from_logits or loss.name not in _CROSSENTROPIES or self._loss_weights[0] != 1.0:
            return None
        if not nodes or self._outputs[0] is not nodes[-1].output:
            return None
        if self._weight_casts or self._loss_scale() != 1.0:
            return None
        if any(node.layer.run_dtype != self.dtype for node in nodes):
            return None
        previous = self._inputs[0]
        layers = []
        for node in nodes:
            layer = node.layer
            if (
                type(layer) is not Dense
                or node.merges
                or node.inputs[0] is not previous
                or layer in layers
                or not layer.trainable
                or not layer.use_bias
                or layer.regularized
            ):
                return None
            layers.append(layer)
            previous = node.output
        if layers[-1].activation != "softmax" or any(
            layer.activation not in engine.STACK_ACTIVATIONS for layer in layers[:-1]
        ):
            return None
        states = self._states
        return _DenseStack(
            activations=[layer.activation for layer in layers[:-1]],
            weights=[layer._params[0] for layer in layers],
            biases=[layer._params[1] for layer in layers],
            weight_grads=[layer._grads[0] for layer in layers],
            bias_grads=[layer._grads[1] for layer in layers],
            workspaces=[state.workspace for state in states] + [self._model_workspace()],
            product_dtypes=[layer.product_dtype for layer in layers],
        )

    # ------------------------------------------------------------------ one step
    def _train_step(
        self,
        X: list[Array],
        Y: list[Array],
        metric_groups: Sequence[Sequence[metrics_module.Metric]],
        W: list[Array] | None = None,
    ) -> tuple[list[Array], list[Array]]:
        """One training step: the gradients, then the optimizer's update; returns the loss
        terms and metric values (0-d engine arrays). ``W``: each output's sample weights."""
        loss_terms, metric_values = self._gradient_step(X, Y, metric_groups, W)
        self._apply_update()
        return loss_terms, metric_values

    def _apply_update(self) -> None:
        """The optimizer's step over the trained ranges of the buffers, from the gradients
        ``_gradient_step`` wrote."""
        plan = self._plan
        assert plan is not None  # _prepare made it
        variables = self._trained_variable_ranges
        if plan.stack is not None:
            self._compiled_optimizer().apply(
                self._built_engine(), self._params, self._grads, variables=variables
            )
        elif plan.updates:
            self._compiled_optimizer().apply(
                self._built_engine(),
                self._params,
                self._grads,
                segments=plan.segments,
                variables=variables,
            )

    def _gradient_step(
        self,
        X: list[Array],
        Y: list[Array],
        metric_groups: Sequence[Sequence[metrics_module.Metric]],
        W: list[Array] | None = None,
    ) -> tuple[list[Array], list[Array]]:
        """Forward pass, losses, metrics and backward pass of a training step: the weight
        gradients written, the loss terms and metric values returned; no update.
        ``W``: each output's sample weights ``(N,)``, or ``None``."""
        engine = self._built_engine()
        plan = self._plan
        assert plan is not None  # _prepare made it
        stack = plan.stack
        workspace = self._model_workspace()
        if stack is not None and W is None:
            loss_value, output = engine.dense_stack_step(
                X[0],
                Y[0],
                stack.weights,
                stack.biases,
                stack.weight_grads,
                stack.bias_grads,
                stack.activations,
                workspaces=stack.workspaces,
                product_dtypes=stack.product_dtypes,
            )
            metric_values = [
                metric.batch_value(engine, output, Y[0], workspace) for metric in metric_groups[0]
            ]
            return [loss_value], metric_values
        values = self._run_graph(X, training=True)
        outputs = self._in_model_dtype([values[self._slots[id(t)]] for t in self._outputs])
        loss_terms = []
        metric_values = []
        gradients: list[list[Array]] = [[] for _ in values]
        for k, (output, target) in enumerate(zip(outputs, Y)):
            slot = self._slots[id(self._outputs[k])]
            loss_value, values, gradient = self._output_terms(
                k,
                output,
                target,
                metric_groups[k],
                plan.needs_grad[slot],
                None if W is None else W[k],
            )
            loss_terms.append(loss_value)
            metric_values += values
            if gradient is not None:
                gradients[slot].append(gradient)
        loss_terms += [penalty for layer in plan.trained_layers for penalty in layer.penalties()]
        self._backward(plan, gradients)
        return loss_terms, metric_values

    def _output_terms(
        self,
        k: int,
        output: Array,
        target: Array,
        metrics: Sequence[metrics_module.Metric],
        needs_grad: bool,
        w: Array | None = None,
    ) -> tuple[Array, list[Array], Array | None]:
        """Output ``k``'s batch loss (weighted by the sample weights ``w`` when given), its
        metrics' values and, when ``needs_grad``, its weighted loss gradient
        (``_loss_gradient``)."""
        engine = self._built_engine()
        plan = self._plan
        assert plan is not None  # _prepare made it
        workspace = self._loss_workspace(k)
        if needs_grad and plan.fused_outputs[k] == "softmax" and w is None:
            return self._softmax_crossentropy_terms(k, output, target, metrics, workspace)
        loss_value = self._batch_loss(k, output, target, w, workspace)
        values = [
            metric.batch_value(engine, output, target, workspace, sample_weight=w)
            for metric in metrics
        ]
        gradient = self._loss_gradient(k, output, target, workspace, w) if needs_grad else None
        return loss_value, values, gradient

    def _batch_loss(
        self, k: int, output: Array, target: Array, w: Array | None, workspace: Workspace | None
    ) -> Array:
        """Output ``k``'s loss over a batch: the mean of the per-sample losses, or with sample
        weights ``w`` their weighted sum over the batch size (Keras's
        ``"sum_over_batch_size"``)."""
        engine, loss = self._built_engine(), self._losses[k]
        if w is None:
            return engine.loss(
                loss.name, output, target, from_logits=loss.from_logits, workspace=workspace
            )
        values = engine.per_sample_loss(
            loss.name, output, target, from_logits=loss.from_logits, workspace=workspace
        )
        n = int(output.shape[0])
        return engine.weighted_sum(values, w, scale=1.0 / n if n else math.nan)

    def _softmax_crossentropy_terms(
        self,
        k: int,
        output: Array,
        target: Array,
        metrics: Sequence[metrics_module.Metric],
        workspace: Workspace,
    ) -> tuple[Array, list[Array], Array]:
        """``_output_terms`` of a softmax output trained with categorical cross-entropy:
        the loss, the gradient and its accuracy counts from one engine call."""
        engine = self._built_engine()
        kind = "sparse" if target.ndim == 1 else "categorical"
        counted = [metric.accuracy_kind == kind for metric in metrics]
        loss_value, correct, gradient = engine.softmax_crossentropy_batch(
            output, target, with_count=any(counted), workspace=workspace
        )
        values = [
            correct if is_count else metric.batch_value(engine, output, target, workspace)
            for metric, is_count in zip(metrics, counted)
        ]
        weight = self._loss_weights[k] * self._loss_scale()
        if weight != 1.0:
            gradient = engine.scale(gradient, weight, workspace=workspace)
        return loss_value, values, gradient

    def _loss_workspace(self, k: int) -> Workspace:
        """Where output ``k``'s loss and its gradient take their arrays from."""
        if k == 0:
            return self._model_workspace()
        plan = self._plan
        assert plan is not None  # _prepare made it
        return plan.loss_workspaces[k - 1]

    def _loss_gradient(
        self, k: int, output: Array, target: Array, workspace: Workspace, w: Array | None = None
    ) -> Array:
        """Gradient of output ``k``'s weighted loss (each row times its sample weight in
        ``w`` when given); with the fused path, with respect to the output layer's
        pre-activation."""
        engine, loss = self._built_engine(), self._losses[k]
        plan = self._plan
        assert plan is not None  # _prepare made it
        fused = plan.fused_outputs[k]
        if fused == "softmax":
            gradient = engine.backprop_softmax_crossentropy(output, target, workspace=workspace)
        elif fused == "sigmoid":
            gradient = engine.backprop_sigmoid_crossentropy(output, target)
        else:
            gradient = engine.backprop_loss(loss.name, output, target, from_logits=loss.from_logits)
        if w is not None:
            gradient = engine.scale_rows(gradient, w, workspace=workspace)
        weight = self._loss_weights[k] * self._loss_scale()
        if weight != 1.0:
            gradient = engine.scale(gradient, weight, workspace=workspace)
        return gradient

    def _run_graph(
        self, X: list[Array], *, training: bool, states: list[CallState] | None = None
    ) -> list[Array]:
        """Every tensor's value for the inputs ``X``, in slot order; the nodes keep what
        they need in ``states`` (the model's own, for training, by default)."""
        with self._lock if self._weight_casts else contextlib.nullcontext():
            # the cast copies are shared: refreshing them and reading them is serialised
            return self._run_nodes(X, training, self._states if states is None else states)

    def _run_nodes(self, X: list[Array], training: bool, states: list[CallState]) -> list[Array]:
        """``_run_graph``'s work: the weights' cast copies refreshed, then every node."""
        values: list[Any] = [None] * len(self._slots)
        values[: len(X)] = X
        slots = self._slots
        engine = self._built_engine()
        for cast in self._weight_casts:
            engine.cast(cast.master_params, cast.layer.run_dtype, out=cast.params)
        for node, state in zip(self._nodes, states):
            args = [values[slots[id(t)]] for t in node.inputs]
            run_dtype = node.layer.run_dtype
            for j, arg in enumerate(args):
                if dtype_name(arg.dtype) != run_dtype:  # Keras casts a layer's inputs
                    out = state.workspace.array(f"input{j}_as_{run_dtype}", arg.shape, run_dtype)
                    args[j] = engine.cast(arg, run_dtype, out=out)
            values[slots[id(node.output)]] = node.layer.forward(
                args if node.merges else args[0], training=training, state=state
            )
        return values

    def _backward(self, plan: _Plan, gradients: list[list[Array]]) -> None:
        """Backpropagate the output gradients through the active nodes, in reverse order."""
        engine = self._built_engine()
        seen: set[int] = set()
        finished: set[int] = set()
        nodes, states = self._nodes, self._states
        for i in range(len(nodes) - 1, -1, -1):
            node_plan = plan.nodes[i]
            if not node_plan.active:
                continue
            contributions = gradients[node_plan.out_slot]
            if not contributions:
                continue
            run_dtype = nodes[i].layer.run_dtype
            contributions = [
                c
                if dtype_name(c.dtype) == run_dtype
                else engine.cast(
                    c,
                    run_dtype,
                    out=states[i].workspace.array(f"dY{k}_as_{run_dtype}", c.shape, run_dtype),
                )
                for k, c in enumerate(contributions)
            ]
            if len(contributions) == 1:
                dY = contributions[0]
            else:
                dY = engine.merge("add", contributions, workspace=node_plan.sum_workspace)
            layer, state = nodes[i].layer, states[i]
            param_grads = None
            accumulate = False
            if node_plan.trains:
                if id(layer) in seen:
                    param_grads = [
                        state.workspace.array(f"shared_grad{j}", tuple(shape), g.dtype)
                        for j, (shape, g) in enumerate(zip(layer.parameter_shapes(), layer._grads))
                    ]
                    accumulate = True
                else:
                    param_grads = layer._grads
                    seen.add(id(layer))
            backward = (
                layer.backward_from_preactivation if node_plan.fused_output else layer.backward
            )
            dX = backward(dY, state=state, need_dX=node_plan.need_dX, param_grads=param_grads)
            if accumulate and param_grads is not None:
                for total, part in zip(layer._grads, param_grads):
                    engine.accumulate(total, part)
            if node_plan.trains and plan.ready_at.get(id(layer)) == i:
                self._finish_gradients(layer)
                finished.add(id(layer))
            if not node_plan.need_dX:
                continue
            parts = dX if nodes[i].merges else [dX]
            for slot, part in zip(node_plan.in_slots, parts):
                if plan.needs_grad[slot]:
                    gradients[slot].append(part)
        for layer in plan.trained_layers:
            if id(layer) not in finished:  # no gradient reached it: its penalty's still counts
                self._finish_gradients(layer)

    def _finish_gradients(self, layer: Layer) -> None:
        """Complete a trained layer's gradients once the backward pass is done with it:
        the float32 master copy of half-precision ones, the penalties' gradients; then
        hand its range of the flat buffer to data parallelism's sum."""
        engine = self._built_engine()
        for cast in self._weight_casts:
            if cast.layer is layer:
                engine.cast(cast.grads, self._built_dtype(), out=cast.master_grads)
        if layer.regularized:
            layer.backprop_penalties(self._loss_scale())
        if self._gradient_sync is not None:
            self._gradient_sync.ready(*self._layer_ranges[id(layer)])

    def _loss_scale(self) -> float:
        """The factor the loss gradients carry: the ``LossScaleOptimizer``'s scale, else 1."""
        optimizer = self.optimizer
        if isinstance(optimizer, optimizers.LossScaleOptimizer):
            return optimizer.loss_scale
        return 1.0

    def _in_model_dtype(self, outputs: list[Array]) -> list[Array]:
        """``outputs`` cast to the model's float dtype, where losses and metrics are
        computed (Keras computes them in ``floatx``)."""
        engine, dtype = self._built_engine(), self._built_dtype()
        return [
            out
            if dtype_name(out.dtype) == dtype
            else engine.cast(
                out, dtype, out=self._model_workspace().array(f"output{k}", out.shape, dtype)
            )
            for k, out in enumerate(outputs)
        ]

    # ------------------------------------------------------------------ evaluate
    def _evaluate_engine_arrays(
        self,
        X: list[Array],
        Y: list[Array],
        batch_size: int,
        metric_groups: Sequence[Sequence[metrics_module.Metric]],
        hooks: callbacks_module.CallbackList,
        W: list[Array] | None = None,
    ) -> dict[str, float]:
        """Loss and metrics over engine arrays in batches, with the ``on_test_*`` hooks;
        ``W``: each output's sample weights, or ``None``."""
        engine = self._built_engine()
        totals = self._totals(engine, metric_groups)
        penalties = [penalty for layer in self._trained_layers() for penalty in layer.penalties()]
        n = int(X[0].shape[0])
        parallel = distribute.distribution()
        first, last, combined = (0, n, False) if parallel is None else parallel.evaluation_rows(n)
        hooks.on_test_begin()
        for step, start in enumerate(range(first, last, batch_size)):
            hooks.on_test_batch_begin(step)
            stop = min(start + batch_size, last)
            loss_terms, values = self._test_batch(
                [engine.slice_rows(A, start, stop) for A in X],
                [engine.slice_rows(A, start, stop) for A in Y],
                metric_groups,
                None if W is None else [engine.slice_rows(A, start, stop) for A in W],
            )
            totals.add(stop - start, loss_terms + penalties, values)
            hooks.on_test_batch_end(step, metrics_module.LazyLogs(totals.logs))
        if combined:
            assert parallel is not None
            logs = totals.reduced_logs(parallel.communicator.sum_host)
        else:
            logs = totals.logs()
        hooks.on_test_end(logs)
        return logs

    def _trained_layers(self) -> list[Any]:
        seen: list[Any] = []
        for layer in self._param_layers:
            if layer.trainable and layer not in seen:
                seen.append(layer)
        return seen

    def _test_batch(
        self,
        X: list[Array],
        Y: list[Array],
        metric_groups: Sequence[Sequence[metrics_module.Metric]],
        W: list[Array] | None = None,
    ) -> tuple[list[Array], list[Array]]:
        engine = self._built_engine()
        outputs = self._in_model_dtype(self._forward(X))
        loss_terms, values = [], []
        for k, (output, target) in enumerate(zip(outputs, Y)):
            w = None if W is None else W[k]
            loss_terms.append(self._batch_loss(k, output, target, w, None))
            values += [
                metric.batch_value(engine, output, target, sample_weight=w)
                for metric in metric_groups[k]
            ]
        return loss_terms, values

    def _forward(self, X: list[Array]) -> list[Array]:
        """The outputs for the inputs ``X``, in inference mode, on node states of its own
        so that threads predicting at once do not share them."""
        with self._borrowed_states() as states:
            values = self._run_graph(X, training=False, states=states)
        return [values[self._slots[id(t)]] for t in self._outputs]

    @contextlib.contextmanager
    def _borrowed_states(self) -> Iterator[list[CallState]]:
        """A set of node states that no other call uses during the block: an idle one,
        else a new one, given back afterwards (unless the weights moved meanwhile)."""
        with self._lock:
            pool = self._idle_states
            engine = self._built_engine()
            states = pool.pop() if pool else [CallState(engine) for _ in self._nodes]
        try:
            yield states
        finally:
            with self._lock:
                if pool is self._idle_states:
                    pool.append(states)

    def evaluate(
        self,
        x: Any = None,
        y: Any = None,
        batch_size: int | None = None,
        verbose: int | str = "auto",
        sample_weight: Any = None,
        steps: int | None = None,
        return_dict: bool = False,
        callbacks: Sequence[callbacks_module.Callback] | None = None,
        **kwargs: Any,
    ) -> float | list[float] | dict[str, float]:
        """Loss (and metrics) on ``x``, ``y`` in batches; ``callbacks`` get the
        ``on_test_*`` hooks; ``sample_weight`` weighs the loss and ``weighted_metrics``
        as in ``fit``.

        Returns:
            The loss as a float when the model has one output and no metrics, else
            ``[loss, <output>_loss..., metric, ...]`` in the order of ``metrics_names``;
            a dict keyed by those names with ``return_dict``.
        """
        if kwargs:
            raise TypeError(f"evaluate() got unsupported argument(s) {', '.join(kwargs)}")
        self._require_compiled("evaluate()")
        batch_size = data_checks.check_positive_int(batch_size, "batch_size", allow_none=True) or 32
        verbose = _check_verbose(verbose)
        if batch_sources.is_batch_source(x):
            return self._evaluate_source(
                x, y, sample_weight, steps, verbose, return_dict, callbacks
            )
        xs, ys, ws = self._checked_weighted(x, y, sample_weight, None, "evaluate()")
        if steps is not None:  # the first steps batches, as Keras
            rows = _positive(steps, "steps") * batch_size
            xs, ys = [a[:rows] for a in xs], [a[:rows] for a in ys]
            ws = None if ws is None else [w[:rows] for w in ws]
        self._claim_layers()
        metric_groups = self._resolved_metrics()
        steps = math.ceil(len(xs[0]) / batch_size)
        hooks = callbacks_module.CallbackList(
            callbacks, model=self, verbose=0, steps=steps, add_history=False
        )
        started = time.perf_counter()
        X, Y = self._to_engine(xs, ys)
        W = self._weights_to_engine(ws)
        logs = self._evaluate_engine_arrays(X, Y, batch_size, metric_groups, hooks, W)
        if verbose and distribute.is_chief():
            _print_summary_line(steps, time.perf_counter() - started, logs)
        return self._returned(logs, return_dict)

    def _evaluate_source(
        self,
        x: Any,
        y: Any,
        sample_weight: Any,
        steps: int | None,
        verbose: int,
        return_dict: bool,
        callbacks: Sequence[callbacks_module.Callback] | None,
    ) -> Any:
        """``evaluate`` on a generator, an iterator or a ``Sequence`` of batches."""
        for name, value in (("y", y), ("sample_weight", sample_weight)):
            if value is not None:
                raise ValueError(
                    f"evaluate(): x is a generator or Sequence, so its batches carry the "
                    f"targets and sample weights; {name} must be None"
                )
        source = batch_sources.BatchSource(x, steps, False, "x")
        self._checked_batch(source.peek(), 0, "x")  # builds the model from the first batch
        self._claim_layers()
        metric_groups = self._resolved_metrics()
        hooks = callbacks_module.CallbackList(
            callbacks, model=self, verbose=0, steps=source.steps, add_history=False
        )
        started = time.perf_counter()
        logs = self._evaluate_batch_source(source, metric_groups, hooks)
        if verbose:
            _print_summary_line(source.steps or 0, time.perf_counter() - started, logs)
        return self._returned(logs, return_dict)

    def _returned(self, logs: dict[str, float], return_dict: bool) -> Any:
        if return_dict:
            return logs
        keys = self._log_keys()
        if len(keys) == 1:
            return logs["loss"]
        return [logs[key] for key in keys]

    def predict(
        self,
        x: Any,
        batch_size: int | None = None,
        verbose: int | str = 0,
        callbacks: Sequence[callbacks_module.Callback] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Outputs of the model for ``x``: a NumPy array ``(N, units)`` in the model's
        float dtype, or a list (dict, when the outputs were given as a dict) of them for
        several outputs; computed in batches of ``batch_size`` (32).

        ``callbacks`` get the ``on_predict_*`` hooks, each batch's outputs in
        ``logs["outputs"]``. ``output="engine"`` returns the engine's own arrays instead
        of host copies (NumPy arrays on numpy, device arrays on a GPU engine), for data
        that stays on the device; the default ``output="numpy"`` copies to the host.
        """
        steps = kwargs.pop("steps", None)
        output = kwargs.pop("output", "numpy")
        if output not in ("numpy", "engine"):
            raise ValueError(
                f"predict(output=...) must be 'numpy' (host arrays) or 'engine' (the engine's "
                f"arrays, e.g. on the GPU); received output={output!r}"
            )
        if kwargs:
            raise TypeError(f"predict() got unsupported argument(s) {', '.join(kwargs)}")
        batch_size = data_checks.check_positive_int(batch_size, "batch_size", allow_none=True) or 32
        verbose = _check_verbose(verbose)
        if batch_sources.is_batch_source(x):
            source = batch_sources.BatchSource(x, steps, False, "x")
            parts = []
            for index, batch in source.epoch():
                inputs = batch_sources.unpacked(batch, index, "x", targets=False)[0]
                try:
                    parts.append(self.predict(inputs, batch_size=batch_size, callbacks=callbacks))
                except (ValueError, TypeError) as error:
                    raise type(error)(f"batch {index} of x: {error}") from error
            source.end_epoch()
            if not parts:
                raise ValueError("predict(): x yielded no batch")
            return _joined_predictions(parts)
        xs = self._check_inputs(x)
        if steps is not None:  # the first steps batches, as Keras
            rows = _positive(steps, "steps") * batch_size
            xs = [a[:rows] for a in xs]
        parallel = distribute.distribution()
        first, last, combined = (
            (0, len(xs[0]), False) if parallel is None else parallel.evaluation_rows(len(xs[0]))
        )
        if combined:  # data-parallel: this process's share, the rest gathered below
            xs = [a[first:last] for a in xs]
        elif output == "engine":
            return self._predict_on_engine(xs, batch_size, callbacks)
        self._claim_layers()
        hooks = callbacks_module.CallbackList(callbacks, model=self, verbose=0, add_history=False)
        started = time.perf_counter()
        engine = self._built_engine()
        X, _ = self._to_engine(xs, None)
        n = len(xs[0])
        batches: list[list[np.ndarray]] = []
        hooks.on_predict_begin()
        for step, start in enumerate(range(0, n, batch_size)):
            hooks.on_predict_batch_begin(step)
            stop = min(start + batch_size, n)
            outputs = self._forward([engine.slice_rows(A, start, stop) for A in X])
            batches.append([engine.to_numpy(out) for out in outputs])
            hooks.on_predict_batch_end(step, {"outputs": self._structure(batches[-1])})
        hooks.on_predict_end()
        if verbose and distribute.is_chief():
            _print_summary_line(len(batches), time.perf_counter() - started, {})
        joined = [np.concatenate(parts, axis=0) for parts in zip(*batches)]
        if combined:
            assert parallel is not None
            joined = [parallel.communicator.gather_rows(part) for part in joined]
        # an output of a multi-dimensional per-sample shape (a Reshape) as (N, *dims)
        joined = [part.reshape(len(part), *t.dims) for part, t in zip(joined, self._outputs)]
        if output == "engine":  # gathered through the host
            joined = [engine.asarray(part, dtype=part.dtype.name) for part in joined]
        return self._structure(joined)

    def _predict_on_engine(self, xs: list[np.ndarray], batch_size: int, callbacks: Any) -> Any:
        """``predict(output="engine")``: each output gathered batch by batch into one engine
        array ``(N, *dims)`` in the output's dtype, never copied to the host."""
        self._claim_layers()
        hooks = callbacks_module.CallbackList(callbacks, model=self, verbose=0, add_history=False)
        engine = self._built_engine()
        X, _ = self._to_engine(xs, None)
        n = len(xs[0])
        flats: list[Array] = []
        hooks.on_predict_begin()
        for step, start in enumerate(range(0, n, batch_size)):
            hooks.on_predict_batch_begin(step)
            stop = min(start + batch_size, n)
            outputs = self._forward([engine.slice_rows(A, start, stop) for A in X])
            for k, out in enumerate(outputs):
                width = int(np.prod(out.shape[1:], dtype=np.int64))
                if len(flats) <= k:
                    flats.append(engine.zeros((n * width,), dtype=dtype_name(out.dtype)))
                rows = engine.split_views(flats[k], [(start * width,), tuple(out.shape)])[1]
                engine.assign(rows, out)
            hooks.on_predict_batch_end(step, {"outputs": self._structure(list(outputs))})
        hooks.on_predict_end()
        joined = [engine.split_views(f, [(n, *t.dims)])[0] for f, t in zip(flats, self._outputs)]
        return self._structure(joined)

    def _structure(self, arrays: list[np.ndarray]) -> Any:
        keys = self._output_keys
        if keys:
            return dict(zip(keys, arrays))
        return arrays[0] if len(arrays) == 1 else arrays

    def __call__(self, x: Any) -> Any:
        """``predict(x)`` on the whole input at once (``predict_on_batch``)."""
        return self.predict_on_batch(x)

    # ------------------------------------------------------------------ per batch
    def train_on_batch(
        self,
        x: Any,
        y: Any = None,
        sample_weight: Any = None,
        class_weight: Mapping[int, float] | None = None,
        return_dict: bool = False,
    ) -> Any:
        """One training step on the whole of ``x``, ``y`` as one batch (with sample or class
        weights as in ``fit``).

        Returns:
            That batch's loss, or ``[loss, ...]`` / a dict as ``evaluate`` returns them.
        """
        self._require_compiled("train_on_batch()")
        with self._training_alone("train_on_batch()"):
            xs, ys, ws = self._checked_weighted(
                x, y, sample_weight, class_weight, "train_on_batch()"
            )
            metric_groups = self._resolved_metrics()
            self._sample_weighted = ws is not None
            self._prepare()
            X, Y = self._to_engine(xs, ys)
            totals = self._totals(self._built_engine(), metric_groups)
            loss_terms, values = self._train_step(X, Y, metric_groups, self._weights_to_engine(ws))
            totals.add(len(xs[0]), loss_terms, values)
            return self._returned(totals.logs(), return_dict)

    def test_on_batch(
        self, x: Any, y: Any = None, sample_weight: Any = None, return_dict: bool = False
    ) -> Any:
        """Loss (and metrics) of ``x``, ``y`` as one batch, without training."""
        self._require_compiled("test_on_batch()")
        xs, ys, ws = self._checked_weighted(x, y, sample_weight, None, "test_on_batch()")
        self._claim_layers()
        X, Y = self._to_engine(xs, ys)
        metric_groups = self._resolved_metrics()
        totals = self._totals(self._built_engine(), metric_groups)
        penalties = [penalty for layer in self._trained_layers() for penalty in layer.penalties()]
        loss_terms, values = self._test_batch(X, Y, metric_groups, self._weights_to_engine(ws))
        totals.add(len(xs[0]), loss_terms + penalties, values)
        return self._returned(totals.logs(), return_dict)

    def predict_on_batch(self, x: Any) -> Any:
        """The model's outputs for ``x`` as one batch (NumPy arrays, as ``predict``)."""
        xs = self._check_inputs(x)
        # x as given: predict checks it again, in its per-sample shape
        return self.predict(x, batch_size=len(xs[0]))

    # ------------------------------------------------------------------ saving
    def save(
        self, filepath: str | os.PathLike, overwrite: bool = True, save_format: str | None = None
    ) -> None:
        """Save the architecture, the weights, and the compile settings with the
        optimizer state to one file; a ``.keras`` name also makes it a Keras 3 file that
        ``keras.saving.load_model`` opens (see ``dlcore.saving.save_model``)."""
        saving.save_model(self, filepath, overwrite=overwrite, save_format=save_format)

    def save_weights(self, filepath: str | os.PathLike, overwrite: bool = True) -> None:
        """Save only the weights (read back by ``load_weights`` into the same architecture)."""
        saving.save_weights(self, filepath, overwrite=overwrite)

    def load_weights(self, filepath: str | os.PathLike) -> None:
        """Load weights saved by ``save_weights`` (or a whole model saved by ``save``)."""
        saving.load_weights(self, filepath)


# ---------------------------------------------------------------------- helpers
def _renamed(metric: metrics_module.Metric, key: str) -> metrics_module.Metric:
    return dataclasses.replace(metric, key=key)


def _shuffled_rows(
    engine: Engine, workspace: Workspace, prefix: str, arrays: list[Array], rows: Array, count: int
) -> list[Array]:
    """The rows ``rows`` of each array, gathered into workspace arrays reused every batch."""
    return [
        engine.take_rows(
            A, rows, out=workspace.array(f"{prefix}{i}", (count, *A.shape[1:]), A.dtype)
        )
        for i, A in enumerate(arrays)
    ]


def _shuffled_weights(
    engine: Engine, workspace: Workspace, W: list[Array], rows: Array, count: int
) -> list[Array]:
    """``_shuffled_rows`` of each output's sample weights, an array shared by outputs
    gathered once."""
    unique = list({id(w): w for w in W}.values())
    gathered = dict(
        zip(map(id, unique), _shuffled_rows(engine, workspace, "w", unique, rows, count))
    )
    return [gathered[id(w)] for w in W]


def _positive(value: Any, name: str) -> int:
    """``value`` as a positive int (a count of steps), or a ValueError naming ``name``."""
    checked = data_checks.check_positive_int(value, name)
    assert checked is not None  # None is refused without allow_none
    return checked


def _joined_predictions(parts: list[Any]) -> Any:
    """The predictions of several batches joined along the samples, in their structure."""
    first = parts[0]
    if isinstance(first, dict):
        return {key: np.concatenate([part[key] for part in parts]) for key in first}
    if isinstance(first, list):
        return [np.concatenate(column) for column in zip(*parts)]
    return np.concatenate(parts)


def _validation_epochs(validation_freq: Any) -> int | frozenset[int]:
    """``validation_freq`` checked: every that many epochs, or the epochs (from 1) listed."""
    if isinstance(validation_freq, (int, np.integer)) and not isinstance(validation_freq, bool):
        if validation_freq >= 1:
            return int(validation_freq)
    elif isinstance(validation_freq, (list, tuple, set, frozenset, range)) and all(
        isinstance(e, (int, np.integer)) and not isinstance(e, bool) and e >= 1
        for e in validation_freq
    ):
        return frozenset(int(e) for e in validation_freq)
    raise ValueError(
        "validation_freq expected a positive integer (validate every that many epochs) or a "
        f"list of epochs counted from 1, e.g. [1, 5, 10], received {validation_freq!r}"
    )


class _Validation:
    """What ``fit`` validates on and when: host arrays (moved to the engine once), a batch
    source, or nothing.

    Args:
        data: ``None``, ``(xs, ys, ws)`` checked host arrays, or a generator or Sequence.
        steps: at most that many validation batches (``validation_steps``), or ``None``.
        batch_size: the batch size of array validation data.
        epochs: ``_validation_epochs``'s rule.
    """

    def __init__(
        self, data: Any, steps: int | None, batch_size: int, epochs: int | frozenset[int]
    ) -> None:
        self._source = None
        self._arrays: _Data | None = None
        self._engine_arrays: tuple[list[Array], list[Array], list[Array] | None] | None = None
        if data is not None and batch_sources.is_batch_source(data):
            self._source = batch_sources.BatchSource(data, steps, False, "validation_data")
        elif data is not None:
            xs, ys, ws = data
            if steps is not None:
                rows = _positive(steps, "validation_steps") * batch_size
                xs, ys = [a[:rows] for a in xs], [a[:rows] for a in ys]
                ws = None if ws is None else [w[:rows] for w in ws]
            self._arrays = (xs, ys, ws)
        self._batch_size = batch_size
        self._epochs = epochs

    def to_engine(self, model: Trainer) -> None:
        """Move array validation data to the model's engine, once per ``fit``."""
        if self._arrays is not None:
            xs, ys, ws = self._arrays
            self._engine_arrays = (*model._to_engine(xs, ys), model._weights_to_engine(ws))

    def logs(
        self,
        model: Trainer,
        epoch: int,
        metric_groups: Sequence[Sequence[metrics_module.Metric]],
        hooks: callbacks_module.CallbackList,
    ) -> dict[str, float]:
        """The ``val_`` logs of epoch ``epoch`` (from 0), or none when it does not validate."""
        due = (
            (epoch + 1) % self._epochs == 0
            if isinstance(self._epochs, int)
            else epoch + 1 in self._epochs
        )
        if not due:
            return {}
        if self._source is not None:
            logs = model._evaluate_batch_source(self._source, metric_groups, hooks)
        elif self._engine_arrays is not None:
            X, Y, W = self._engine_arrays
            logs = model._evaluate_engine_arrays(X, Y, self._batch_size, metric_groups, hooks, W)
        else:
            return {}
        return {f"val_{key}": value for key, value in logs.items()}


def _described(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} items"
    return type(value).__name__


def _staged_rows(
    engine: Engine, workspace: Workspace, prefix: str, batches: list[Array]
) -> list[Array]:
    """Each batch copied into the workspace arrays ``_shuffled_rows`` gathers into, so that
    unshuffled batches, too, are read from the same arrays at every step."""
    staged = []
    for i, batch in enumerate(batches):
        out = workspace.array(f"{prefix}{i}", tuple(batch.shape), batch.dtype)
        engine.assign(out, batch)
        staged.append(out)
    return staged


def _per_output(value: Any, names: list[str], what: str, allow_single: bool = True) -> list[Any]:
    """``value`` given once, as a list (one per output) or a dict by output name."""
    count = len(names)
    if isinstance(value, Mapping):
        unknown = [key for key in value if key not in names]
        missing = [name for name in names if name not in value]
        if unknown or missing:
            raise ValueError(
                f"{what} given as a dict must have one entry per output {names}; "
                f"received keys {list(value)}"
                + (f" (unknown: {unknown})" if unknown else "")
                + (f" (missing: {missing})" if missing else "")
            )
        return [value[name] for name in names]
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise ValueError(
                f"{what} given as a list must have one entry per output ({count}: {names}); "
                f"received {len(value)}"
            )
        return list(value)
    if count > 1 and not allow_single:
        raise ValueError(f"{what} must be a list or a dict with one entry per output {names}")
    return [value] * count


def _loss_weight(value: Any, name: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(
            f"loss_weights must be non-negative numbers; received {value!r} for output {name!r}"
        )
    return float(value)


def _metrics_per_output(metrics: Any, names: list[str]) -> list[Any]:
    """``compile(metrics=...)`` as one list of metrics per output (Keras 3's rules)."""
    if metrics is None:
        return [[] for _ in names]
    if len(names) == 1:
        if isinstance(metrics, Mapping):
            return [_per_output(metrics, names, "metrics")[0]]
        if (
            isinstance(metrics, (list, tuple))
            and len(metrics) == 1
            and isinstance(metrics[0], (list, tuple))
        ):
            return [list(metrics[0])]
        return [metrics]
    if isinstance(metrics, Mapping):
        unknown = [key for key in metrics if key not in names]
        if unknown:
            raise ValueError(
                f"metrics given as a dict are keyed by output name {names}; unknown: {unknown}"
            )
        return [metrics.get(name) or [] for name in names]
    if isinstance(metrics, (list, tuple)) and len(metrics) == len(names):
        # one entry per output: a list of metrics, or a single one
        return [
            list(item) if isinstance(item, (list, tuple)) else ([] if item is None else [item])
            for item in metrics
        ]
    raise ValueError(
        f"a model with several outputs {names} takes metrics as a dict by output name or a "
        f"list with one entry per output, e.g. metrics={{{names[0]!r}: ['accuracy']}}; "
        f"received metrics={metrics!r}"
    )


def _structured(data: Any, count: int, keys: list[str] | None, name: str, what: str) -> list[Any]:
    """The arrays of ``data`` in the model's order: one array, a list, or a dict by name."""
    if isinstance(data, Mapping):
        if keys is None:
            raise ValueError(f"{name} given as a dict needs a built model to know its {what} names")
        unknown = [key for key in data if key not in keys]
        missing = [key for key in keys if key not in data]
        if unknown or missing:
            raise ValueError(
                f"{name} given as a dict must have one array per model {what} {keys}; "
                f"received keys {list(data)}"
            )
        return [data[key] for key in keys]
    if isinstance(data, (list, tuple)) and count > 1:
        if len(data) != count:
            raise ValueError(
                f"the model has {count} {what}s {keys}; {name} must be a list of {count} "
                f"arrays, received {len(data)}"
            )
        return list(data)
    if count > 1:
        raise ValueError(
            f"the model has {count} {what}s {keys}; pass {name} as a list or a dict of arrays"
        )
    if isinstance(data, (list, tuple)) and len(data) == 1 and np.ndim(data[0]) == 2:
        return [data[0]]
    return [data]


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
