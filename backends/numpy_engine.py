"""The NumPy engine: the reference operations on the host CPU, tuned for a training step.

The generic array API code allocates a new array for every intermediate result.
This engine overrides the operations of a training step so that, given a
``Workspace``, they write into arrays they reuse (``out=`` everywhere): the dense
forward and backward passes, categorical cross-entropy and its fused softmax
gradient, the row gather of a shuffled batch, and Adam, which runs in cache-sized
chunks on every core (``cpu_chunks``). Matrix products go to NumPy's BLAS, which
uses every core already.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from . import cpu_bf16, cpu_chunks, cpu_gemm, cpu_jit, xp_activations
from .base import Array, Workspace
from .generic import ArrayAPIEngine
from .names import EPSILON

# Activations computed in place of Z whose derivative follows from Y alone.
_IN_PLACE = ("relu", "tanh", "softmax")

# The ufunc that folds the inputs of a merge, two at a time (average: add, then scale).
_MERGE_UFUNCS: dict[str, np.ufunc] = {
    "add": np.add,
    "average": np.add,
    "multiply": np.multiply,
    "maximum": np.maximum,
    "minimum": np.minimum,
}


class NumpyEngine(ArrayAPIEngine):
    """Runs on the CPU with NumPy (whose main namespace follows the array API)."""

    name = "numpy"

    def __init__(self) -> None:
        super().__init__()
        self.xp = np
        self._device = "cpu"
        self._chunks = cpu_chunks.ChunkRunner()
        self._empty_arrays: dict[np.dtype, np.ndarray] = {}
        # what dense_stack reads as "no one-hot targets" and "no integer labels"
        self._no_targets = {np.dtype(t): np.empty((0, 0), dtype=t) for t in ("float32", "float64")}
        self._no_labels = np.empty(0, dtype=np.int64)

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        return True, f"CPU ({os.cpu_count()} cores), NumPy {np.__version__}"

    @property
    def device(self) -> str:
        return "cpu"

    def asarray(self, data: np.ndarray, *, dtype: str) -> Array:
        return np.asarray(data, dtype=dtype)

    def to_numpy(self, A: Array) -> np.ndarray:
        return np.array(A, copy=True)

    def scalars_to_numpy(self, values: Sequence[Array]) -> np.ndarray:
        # already host scalars: one conversion, not a cast and a stack per value
        return np.array(values, dtype=np.float64)

    def synchronize(self) -> None:
        return None

    def take_rows(self, A: Array, indices: Array, *, out: Array | None = None) -> Array:
        if out is None:
            return np.take(A, indices, axis=0)
        # mode="raise" would gather into a temporary first; the indices are the model's own
        return np.take(A, indices, axis=0, out=out, mode="clip")

    # ------------------------------------------------------------------ dense layers
    def dense_forward(
        self,
        X: Array,
        W: Array,
        b: Array | None,
        activation: str,
        *,
        workspace: Workspace | None = None,
        product_dtype: str | None = None,
    ) -> tuple[Array, Array]:
        shape = (X.shape[0], W.shape[1])
        Z = self._matmul(X, W, _buffer(workspace, "Z", shape, X.dtype), product_dtype, workspace)
        if b is not None:
            Z += b
        if activation == "linear":
            return Z, Z
        if activation in _IN_PLACE:
            _activate_in_place(activation, Z, workspace)
            return Z, Z
        return Z, xp_activations.forward(np, activation, Z)

    def dense_backward(
        self,
        dY: Array,
        X: Array,
        W: Array,
        Z: Array,
        Y: Array,
        activation: str,
        *,
        dW: Array | None,
        db: Array | None,
        need_dX: bool = True,
        workspace: Workspace | None = None,
        product_dtype: str | None = None,
    ) -> Array | None:
        if dW is None and not need_dX:
            return None
        if activation == "linear":
            dZ = dY
        elif workspace is not None and activation in ("relu", "tanh", "sigmoid"):
            dZ = workspace.array("dZ", dY.shape, dY.dtype)
            _activation_gradient(activation, dY, Z, Y, dZ, workspace)
        else:
            dZ = self.backprop_activation(activation, dY, Z, Y)
        if dW is not None:
            self._matmul(X.T, dZ, dW, product_dtype, workspace)
            if db is not None:
                np.sum(dZ, axis=0, out=db)
        if not need_dX:
            return None
        dX = _buffer(workspace, "dX", X.shape, X.dtype)
        return self._matmul(dZ, W.T, dX, product_dtype, workspace)

    def products_in(self, dtype: str) -> tuple[bool, str]:
        if dtype != "bfloat16":
            return False, ""
        return cpu_bf16.status()

    def _matmul(
        self,
        A: np.ndarray,
        B: np.ndarray,
        out: np.ndarray | None,
        product_dtype: str | None,
        workspace: Workspace | None,
    ) -> np.ndarray:
        """``A @ B`` (into ``out`` when given), the operands rounded to ``product_dtype``
        when one is given: by the compiled step's bfloat16 product where Numba is
        installed, rounding into the workspace's scratch; else through ``cpu_bf16``."""
        if product_dtype is None:
            return np.matmul(A, B, out=out)
        _bfloat16_layers([product_dtype], A.dtype)
        if out is None:
            out = np.empty((A.shape[0], B.shape[1]), dtype=np.float32)
        if not cpu_jit.stack_available():
            return cpu_bf16.matmul(A, B, out)
        scratch = cpu_gemm.NO_SCRATCH
        if workspace is not None:
            scratch = _scratch(workspace, A.size + B.size)
        address = cpu_gemm.addresses()[cpu_gemm.ONEDNN_GEMM_BF16]
        cpu_gemm.compiled_bfloat16_product()(address, A, B, out, scratch)
        return out

    def dense_stack_step(
        self,
        X: Array,
        Y_true: Array,
        weights: Sequence[Array],
        biases: Sequence[Array],
        weight_grads: Sequence[Array],
        bias_grads: Sequence[Array],
        activations: Sequence[str],
        *,
        workspaces: Sequence[Workspace],
        product_dtypes: Sequence[str | None] | None = None,
    ) -> tuple[Array, Array]:
        bfloat16_layers = _bfloat16_layers(product_dtypes, X.dtype)
        # a hidden activation without a compiled loop (a custom one) runs operation by operation
        if not cpu_jit.stack_available() or any(
            name not in cpu_jit.ACTIVATION_CODES for name in activations
        ):
            return super().dense_stack_step(
                X,
                Y_true,
                weights,
                biases,
                weight_grads,
                bias_grads,
                activations,
                workspaces=workspaces,
                product_dtypes=product_dtypes,
            )
        N, dtype = X.shape[0], X.dtype
        # the kernel's arguments but the batch, made once per batch size (the workspaces
        # belong to the layers, whose weights and gradients are fixed views)
        key = ("dense_stack", N, tuple(activations))
        arguments = workspaces[-1].memo.get(key)
        if arguments is None:
            layer_outputs, deltas = [], []
            for W, workspace in zip(weights, workspaces):
                layer_outputs.append(workspace.array("A", (N, W.shape[1]), dtype))
                deltas.append(workspace.array("delta", (N, W.shape[1]), dtype))
            codes = np.array(
                [cpu_jit.ACTIVATION_CODES[name] for name in activations] + [0], dtype=np.int64
            )
            arguments = (
                tuple(layer_outputs),
                tuple(weights),
                tuple(biases),
                tuple(weight_grads),
                tuple(bias_grads),
                tuple(deltas),
                codes,
            )
            workspaces[-1].memo[key] = arguments
        outputs = (X, *arguments[0])
        sparse = Y_true.ndim == 1
        targets = (
            self._no_targets[dtype] if sparse else Y_true,
            Y_true if sparse else self._no_labels,
        )
        plan_key = ("dense_stack_plan", N, tuple(activations), bfloat16_layers)
        plan = workspaces[-1].memo.get(plan_key)
        if plan is None:  # the first step of this batch size chooses the products' libraries
            _, kernels, bias_vectors, kernel_grads, bias_vector_grads, delta_arrays, codes = (
                arguments
            )
            plan = cpu_jit.gemm_plan(
                outputs,
                kernels,
                bias_vectors,
                kernel_grads,
                bias_vector_grads,
                delta_arrays,
                codes,
                *targets,
                bfloat16_layers=bfloat16_layers,
            )
            workspaces[-1].memo[plan_key] = plan
        scratch = _bfloat16_scratch(workspaces[-1], N, weights, bfloat16_layers)
        loss = cpu_jit.kernel("dense_stack")(
            outputs, *arguments[1:], *targets, plan, cpu_gemm.addresses(), scratch
        )
        return dtype.type(loss), outputs[-1]

    def dense_stack_epoch(
        self,
        X: Array,
        Y_true: Array,
        order: Array | None,
        batch_size: int,
        weights: Sequence[Array],
        biases: Sequence[Array],
        weight_grads: Sequence[Array],
        bias_grads: Sequence[Array],
        activations: Sequence[str],
        rule: str,
        params: Array,
        grads: Array,
        slots: Sequence[Array | None],
        hyperparameters: Sequence[Mapping[str, float]],
        *,
        count: bool,
        workspaces: Sequence[Workspace],
        product_dtypes: Sequence[str | None] | None = None,
    ) -> tuple[Array, Array | None] | None:
        bfloat16_layers = _bfloat16_layers(product_dtypes, X.dtype)
        # large buffers: the per-step updates run on every core, which one loop would not
        if (
            not cpu_jit.stack_available()
            or any(name not in cpu_jit.ACTIVATION_CODES for name in activations)
            or rule not in self._JIT_STEPS
            or params.shape[0] >= cpu_chunks.SPLIT_MIN_ELEMENTS
        ):
            return None
        # each step's kernel and scalars, as optimizer_step would pass them
        recorder = _StepRecorder(self)
        for h in hyperparameters:
            self._JIT_STEPS[rule](recorder, params, grads, slots, h)
        kernels = {name for name, _, _ in recorder.calls}
        if len(kernels) != 1 or not kernels <= cpu_jit.EPOCH_RULES.keys():
            return None
        steps, dtype, n = len(hyperparameters), X.dtype, X.shape[0]
        arrays = recorder.calls[0][1]
        slot_arrays = [*arrays[2:], *[self._absent(None, params)] * cpu_jit.EPOCH_SLOTS]
        table = np.zeros((steps, cpu_jit.EPOCH_SCALARS), dtype=dtype)
        for s, (_, _, scalars) in enumerate(recorder.calls):
            table[s, : len(scalars)] = scalars
        sparse = Y_true.ndim == 1
        sets = {}
        for rows in {min(batch_size, n - s * batch_size) for s in range(steps)}:
            layer_outputs, deltas = [], []
            for W, workspace in zip(weights, workspaces):
                layer_outputs.append(workspace.array("A", (rows, W.shape[1]), dtype))
                deltas.append(workspace.array("delta", (rows, W.shape[1]), dtype))
            loss_space = workspaces[-1]
            sets[rows] = (
                (loss_space.array("epoch_x", (rows, X.shape[1]), dtype), *layer_outputs),
                tuple(deltas),
                self._no_targets[dtype]
                if sparse
                else loss_space.array("epoch_y", (rows, Y_true.shape[1]), Y_true.dtype),
                loss_space.array("epoch_labels", (rows,), Y_true.dtype)
                if sparse
                else self._no_labels,
            )
        codes = np.array(
            [cpu_jit.ACTIVATION_CODES[name] for name in activations] + [0], dtype=np.int64
        )
        rows_order = np.arange(n, dtype=np.int64) if order is None else order
        rule_code = cpu_jit.EPOCH_RULES[kernels.pop()]
        targets = (
            self._no_targets[dtype] if sparse else Y_true,
            Y_true if sparse else self._no_labels,
        )
        plans = {}
        for rows, (outputs, row_deltas, Y_batch, labels_batch) in sets.items():
            key = ("dense_stack_plan", rows, tuple(activations), bfloat16_layers)
            plan = workspaces[-1].memo.get(key)
            if plan is None:  # timed on a real batch, as the first step would see it
                np.take(X, rows_order[:rows], axis=0, out=outputs[0])
                if sparse:
                    np.take(Y_true, rows_order[:rows], out=labels_batch)
                else:
                    np.take(Y_true, rows_order[:rows], axis=0, out=Y_batch)
                timer = None
                if rows == batch_size and all(_within(A, params) for A in (*weights, *biases)):
                    timer = _EpochTimer(
                        (X, *targets, rows_order, batch_size),
                        (outputs, row_deltas, Y_batch, labels_batch),
                        (tuple(weights), tuple(biases), tuple(weight_grads), tuple(bias_grads)),
                        codes,
                        (rule_code, params, grads, slot_arrays[: cpu_jit.EPOCH_SLOTS], table),
                    ).seconds_per_step
                plan = cpu_jit.gemm_plan(
                    outputs,
                    tuple(weights),
                    tuple(biases),
                    tuple(weight_grads),
                    tuple(bias_grads),
                    row_deltas,
                    codes,
                    Y_batch,
                    labels_batch,
                    time_step=timer,
                    bfloat16_layers=bfloat16_layers,
                )
                workspaces[-1].memo[key] = plan
            plans[rows] = (outputs, row_deltas, Y_batch, labels_batch, plan)
        last = plans[min(plans)]
        losses = np.empty(steps, dtype=np.float64)
        correct = np.zeros(steps, dtype=np.int64)
        cpu_jit.epoch_kernel()(
            X,
            *targets,
            rows_order,
            batch_size,
            plans.get(batch_size, last),
            last,
            tuple(weights),
            tuple(biases),
            tuple(weight_grads),
            tuple(bias_grads),
            codes,
            rule_code,
            params,
            grads,
            *slot_arrays[: cpu_jit.EPOCH_SLOTS],
            table,
            count,
            losses,
            correct,
            cpu_gemm.addresses(),
            _bfloat16_scratch(workspaces[-1], max(sets), weights, bfloat16_layers),
        )
        # rounded as dense_stack_step and count_correct round their results
        return losses.astype(dtype), correct.astype(dtype) if count else None

    # ------------------------------------------------------------------ merges
    # With a workspace the results go into its arrays (names prefixed "merge_");
    # without one, the generic code computes the same in the same order.
    def merge(
        self, op: str, inputs: Sequence[Array], *, workspace: Workspace | None = None
    ) -> Array:
        if workspace is None:
            return super().merge(op, inputs)
        X0 = inputs[0]
        if op == "concatenate":
            width = sum(X.shape[1] for X in inputs)
            Y = workspace.array("merge_Y", (X0.shape[0], width), X0.dtype)
            return np.concatenate(inputs, axis=-1, out=Y)
        Y = workspace.array("merge_Y", X0.shape, X0.dtype)
        if op == "subtract":
            return np.subtract(X0, inputs[1], out=Y)
        combine = _MERGE_UFUNCS[op]
        if len(inputs) == 1:
            np.copyto(Y, X0)
        else:
            combine(X0, inputs[1], out=Y)
        for X in inputs[2:]:
            combine(Y, X, out=Y)
        if op == "average":
            Y *= 1.0 / len(inputs)
        return Y

    def backprop_merge(
        self,
        op: str,
        dY: Array,
        inputs: Sequence[Array],
        Y: Array,
        *,
        workspace: Workspace | None = None,
    ) -> list[Array]:
        if workspace is None:
            return super().backprop_merge(op, dY, inputs, Y)
        grads = [workspace.array(f"merge_d{i}", X.shape, X.dtype) for i, X in enumerate(inputs)]
        if op == "concatenate":
            start = 0
            for grad in grads:
                np.copyto(grad, dY[:, start : start + grad.shape[1]])
                start += grad.shape[1]
        elif op == "add":
            for grad in grads:
                np.copyto(grad, dY)
        elif op == "average":
            for grad in grads:
                np.multiply(dY, 1.0 / len(inputs), out=grad)
        elif op == "subtract":
            np.copyto(grads[0], dY)
            np.negative(dY, out=grads[1])
        elif op == "multiply":
            for i, grad in enumerate(grads):
                np.copyto(grad, dY)
                for j, X in enumerate(inputs):
                    if j != i:
                        grad *= X
        else:  # maximum, minimum
            _route_to_first_matches(dY, inputs, Y, grads, workspace)
        return grads

    def cast(self, A: Array, dtype: str, *, out: Array | None = None) -> Array:
        if out is None:
            return A.astype(dtype)
        np.copyto(out, A, casting="unsafe")
        return out

    def all_finite(self, A: Array) -> bool:
        return bool(np.isfinite(A).all())

    def scale(self, A: Array, factor: float, *, workspace: Workspace | None = None) -> Array:
        if workspace is None:
            return super().scale(A, factor)
        return np.multiply(A, factor, out=workspace.array("scaled", A.shape, A.dtype))

    # ------------------------------------------------------------------ losses
    def loss(
        self,
        name: str,
        Y_pred: Array,
        Y_true: Array,
        *,
        from_logits: bool = False,
        workspace: Workspace | None = None,
    ) -> Array:
        if (
            workspace is None
            or name != "categorical_crossentropy"
            or from_logits
            or Y_true.ndim != 2
        ):
            return super().loss(name, Y_pred, Y_true, from_logits=from_logits)
        # Keras: rows renormalised to sum 1, clipped to [eps, 1 - eps], then -sum(y log q)
        rows = workspace.array("row_sums", (Y_pred.shape[0], 1), Y_pred.dtype)
        Q = workspace.array("Q", Y_pred.shape, Y_pred.dtype)
        np.sum(Y_pred, axis=-1, keepdims=True, out=rows)
        np.divide(Y_pred, rows, out=Q)
        np.clip(Q, EPSILON, 1.0 - EPSILON, out=Q)
        np.log(Q, out=Q)
        Q *= Y_true
        return -np.sum(Q) / Y_pred.shape[0]

    def backprop_softmax_crossentropy(
        self, P: Array, Y_true: Array, *, workspace: Workspace | None = None
    ) -> Array:
        if workspace is None or Y_true.ndim != 2:
            return super().backprop_softmax_crossentropy(P, Y_true)
        dZ = workspace.array("dP", P.shape, P.dtype)
        np.subtract(P, Y_true, out=dZ)
        dZ *= 1.0 / P.shape[0]
        return dZ

    def count_correct(
        self,
        kind: str,
        Y_pred: Array,
        Y_true: Array,
        *,
        workspace: Workspace | None = None,
    ) -> Array:
        if workspace is None:
            return super().count_correct(kind, Y_pred, Y_true)
        hits = workspace.array(
            "hits", Y_pred.shape if kind == "binary" else Y_true.shape[:1], "bool"
        )
        if kind == "binary":
            predicted = workspace.array("predicted", Y_pred.shape, "bool")
            np.greater(Y_pred, 0.5, out=predicted)
            np.greater(Y_true, 0.5, out=hits)
            np.equal(predicted, hits, out=hits)
        else:
            predicted = workspace.array("predicted_class", Y_pred.shape[:1], "int64")
            np.argmax(Y_pred, axis=-1, out=predicted)
            if kind == "categorical":
                labels = workspace.array("true_class", Y_true.shape[:1], "int64")
                np.argmax(Y_true, axis=-1, out=labels)
            else:
                labels = Y_true
            np.equal(predicted, labels, out=hits)
        return Y_pred.dtype.type(np.count_nonzero(hits))

    # ------------------------------------------------------------------ optimizers
    # With Numba, a rule in _JIT_STEPS is one compiled loop over all cores (cpu_jit);
    # without it, one in _CHUNKED_STEPS runs in cache-sized chunks (cpu_chunks); any
    # other rule runs the generic code.
    def optimizer_step(
        self,
        rule: str,
        params: Array,
        grads: Array,
        slots: Sequence[Array | None],
        hyperparameters: Mapping[str, float],
    ) -> None:
        fast = (self._JIT_STEPS if cpu_jit.available() else self._CHUNKED_STEPS).get(rule)
        if fast is None:
            super().optimizer_step(rule, params, grads, slots, hyperparameters)
        else:
            fast(self, params, grads, slots, hyperparameters)

    # Each fast step rounds its hyperparameters to the buffers' dtype, as NumPy does
    # with a Python float it combines with an array, and passes them to its loop.
    def _sgd_jit(self, params, grads, slots, h) -> None:
        (velocity,) = slots
        scalar = params.dtype.type
        if velocity is None:
            self._jit("sgd", [params, grads], scalar(h["learning_rate"]))
        else:
            self._jit(
                "sgd_momentum",
                [params, grads, velocity],
                scalar(h["learning_rate"]),
                scalar(h["momentum"]),
                bool(h["nesterov"]),
            )

    def _adam_jit(self, params, grads, slots, h) -> None:
        m, v, v_max = slots
        scalar = params.dtype.type
        self._jit(
            "adam",
            [params, grads, m, v, self._absent(v_max, params)],
            scalar(h["alpha"]),
            scalar(1.0 - h["beta_1"]),
            scalar(1.0 - h["beta_2"]),
            scalar(h["epsilon"]),
        )

    def _adam_chunked(self, params, grads, slots, h) -> None:
        m, v, v_max = slots
        arrays = [params, grads, m, v] + ([v_max] if v_max is not None else [])
        self._chunks.run(
            cpu_chunks.adam_chunk,
            arrays,
            scratch=2,
            args=(h["alpha"], 1.0 - h["beta_1"], 1.0 - h["beta_2"], h["epsilon"]),
        )

    def _rmsprop_jit(self, params, grads, slots, h) -> None:
        velocity, average_grad, momentum_buffer = slots
        scalar = params.dtype.type
        rho = h["rho"]
        self._jit(
            "rmsprop",
            [
                params,
                grads,
                velocity,
                self._absent(average_grad, params),
                self._absent(momentum_buffer, params),
            ],
            scalar(h["learning_rate"]),
            scalar(rho),
            scalar(1.0 - rho),
            scalar(h["momentum"]),
            scalar(h["epsilon"]),
        )

    def _adagrad_jit(self, params, grads, slots, h) -> None:
        scalar = params.dtype.type
        self._jit(
            "adagrad",
            [params, grads, slots[0]],
            scalar(h["learning_rate"]),
            scalar(h["epsilon"]),
        )

    def _adamax_jit(self, params, grads, slots, h) -> None:
        m, u = slots
        scalar = params.dtype.type
        self._jit(
            "adamax",
            [params, grads, m, u],
            scalar(h["learning_rate"]),
            scalar(1.0 - h["beta_1"]),
            scalar(h["beta_2"]),
            scalar(h["bias_correction"]),
            scalar(h["epsilon"]),
        )

    def _nadam_jit(self, params, grads, slots, h) -> None:
        m, v = slots
        scalar = params.dtype.type
        self._jit(
            "nadam",
            [params, grads, m, v],
            scalar(h["learning_rate"]),
            scalar(1.0 - h["beta_1"]),
            scalar(1.0 - h["beta_2"]),
            scalar(h["m_weight"]),
            scalar(h["g_weight"]),
            scalar(h["v_correction"]),
            scalar(h["epsilon"]),
        )

    def _adamw_jit(self, params, grads, slots, h) -> None:
        m, v, v_max = slots
        scalar = params.dtype.type
        self._jit(
            "adamw",
            [params, grads, m, v, self._absent(v_max, params)],
            scalar(h["alpha"]),
            scalar(1.0 - h["beta_1"]),
            scalar(1.0 - h["beta_2"]),
            scalar(h["epsilon"]),
            scalar(h["decay"]),
        )

    def _adadelta_jit(self, params, grads, slots, h) -> None:
        scalar = params.dtype.type
        self._jit(
            "adadelta",
            [params, grads, *slots],
            scalar(h["learning_rate"]),
            scalar(h["rho"]),
            scalar(1.0 - h["rho"]),
            scalar(h["epsilon"]),
        )

    def _lion_jit(self, params, grads, slots, h) -> None:
        scalar = params.dtype.type
        self._jit(
            "lion",
            [params, grads, slots[0]],
            scalar(h["learning_rate"]),
            scalar(h["beta_1"]),
            scalar(1.0 - h["beta_1"]),
            scalar(h["beta_2"]),
            scalar(1.0 - h["beta_2"]),
        )

    def _ftrl_jit(self, params, grads, slots, h) -> None:
        scalar = params.dtype.type
        self._jit(
            "ftrl",
            [params, grads, *slots],
            scalar(h["learning_rate"]),
            scalar(h["power"]),
            scalar(h["l1"]),
            scalar(2.0 * h["l2"]),
            scalar(h["shrinkage"]),
        )

    # The fast version of each rule of names.OPTIMIZER_RULES that has one.
    _JIT_STEPS: ClassVar[dict[str, Callable[..., None]]] = {
        "sgd": _sgd_jit,
        "adam": _adam_jit,
        "rmsprop": _rmsprop_jit,
        "adagrad": _adagrad_jit,
        "adamax": _adamax_jit,
        "nadam": _nadam_jit,
        "adamw": _adamw_jit,
        "adadelta": _adadelta_jit,
        "lion": _lion_jit,
        "ftrl": _ftrl_jit,
    }
    _CHUNKED_STEPS: ClassVar[dict[str, Callable[..., None]]] = {"adam": _adam_chunked}

    def _jit(self, name: str, arrays: list[np.ndarray], *scalars: Any) -> None:
        """Run the compiled update ``name`` over ``arrays`` (flat, one length, or empty for
        an absent optional one), split over the engine's threads when they are large."""
        self._chunks.split(cpu_jit.kernel(name), arrays, scalars)

    def _absent(self, optional: np.ndarray | None, like: np.ndarray) -> np.ndarray:
        """``optional``, or an empty array of ``like``'s dtype that a kernel reads as absent."""
        if optional is not None:
            return optional
        empty = self._empty_arrays.get(like.dtype)
        if empty is None:
            empty = self._empty_arrays[like.dtype] = np.empty(0, dtype=like.dtype)
        return empty


def _bfloat16_layers(
    product_dtypes: Sequence[str | None] | None, dtype: np.dtype
) -> tuple[int, ...]:
    """The layers whose products run in bfloat16 (float32 arrays only); raises
    ``ValueError`` for another product dtype, ``RuntimeError`` where bfloat16 products are
    not available here."""
    layers = []
    for layer, product_dtype in enumerate(product_dtypes or ()):
        if product_dtype is None:
            continue
        if product_dtype != "bfloat16" or dtype != np.float32:
            raise ValueError(
                f"the numpy engine runs float32 products in bfloat16 only, not {dtype} "
                f"products in {product_dtype}; pass product_dtypes=None"
            )
        layers.append(layer)
    ready, why = cpu_bf16.status()
    if layers and not ready:
        raise RuntimeError(f"bfloat16 products are not available here: {why}")
    return tuple(layers)


def _bfloat16_scratch(
    workspace: Workspace, rows: int, weights: Sequence[np.ndarray], bfloat16_layers: tuple[int, ...]
) -> np.ndarray:
    """The uint16 array the compiled step's bfloat16 products round their operands into,
    for batches of up to ``rows`` (made once per workspace, rows and layers)."""
    if not bfloat16_layers:
        return cpu_gemm.NO_SCRATCH
    key = ("bfloat16_step_scratch", rows, bfloat16_layers)
    scratch = workspace.memo.get(key)
    if scratch is None:
        widths = [weights[0].shape[0], *(W.shape[1] for W in weights)]
        size = cpu_gemm.scratch_elements(cpu_gemm.products(rows, widths), bfloat16_layers)
        scratch = workspace.memo[key] = _scratch(workspace, size)
    return scratch


def _scratch(workspace: Workspace, size: int) -> np.ndarray:
    """A uint16 ``(size,)`` array for bfloat16 operands, made once per workspace and size."""
    key = ("bfloat16_scratch", size)
    scratch = workspace.memo.get(key)
    if scratch is None:
        scratch = workspace.memo[key] = np.empty(size, dtype=np.uint16)
    return scratch


def _within(A: np.ndarray, buffer: np.ndarray) -> bool:
    """Whether ``A`` is a C-contiguous view lying inside the flat ``buffer``."""
    start = A.__array_interface__["data"][0] - buffer.__array_interface__["data"][0]
    return (
        A.flags.c_contiguous
        and A.dtype == buffer.dtype
        and 0 <= start
        and start + A.nbytes <= buffer.nbytes
        and start % buffer.itemsize == 0
    )


class _EpochTimer:
    """Seconds per step of the epoch loop with a given plan of matrix products: the first
    ``STEPS`` steps of the epoch, run on copies of the parameters and of the optimizer's
    slots (the gradients are scratch), so that choosing a plan leaves the model as it was.

    Args:
        data: ``(X, Y, labels, order, batch_size)`` as the epoch loop takes them.
        batch: ``(outputs, deltas, Y_batch, labels_batch)`` of a full batch.
        layers: ``(weights, biases, weight_grads, bias_grads)``, views of the flat
            ``params`` and ``grads``.
        codes: the activation codes.
        update: ``(rule, params, grads, slots, table)``: the rule's code, the flat
            buffers, its three slot arrays and the steps' scalars.
    """

    #: steps per timed call: enough that the optimizer and the batch gather between the
    #: products weigh as they do in the epoch
    STEPS = 4

    def __init__(
        self,
        data: tuple[Any, ...],
        batch: tuple[Any, ...],
        layers: tuple[tuple[np.ndarray, ...], ...],
        codes: np.ndarray,
        update: tuple[Any, ...],
    ) -> None:
        self._given = (data, batch, layers, codes, update)
        self._arguments: tuple[Any, ...] | None = None
        self._steps = 1

    def _copies(self) -> tuple[Any, ...]:
        """The epoch loop's arguments but the plan, on copies of the parameters and slots:
        made at the first timing only (a plan found in the cache times nothing)."""
        data, batch, layers, codes, update = self._given
        X, Y, labels, order, batch_size = data
        rule, params, grads, slots, table = update
        steps = min(self.STEPS, table.shape[0], order.shape[0] // batch_size)
        copy = params.copy()

        def on_copy(A: np.ndarray) -> np.ndarray:
            start = A.__array_interface__["data"][0] - params.__array_interface__["data"][0]
            start //= params.itemsize
            return copy[start : start + A.size].reshape(A.shape)

        weights, biases, weight_grads, bias_grads = layers
        self._steps = max(steps, 1)
        return (
            (X, Y, labels, order[: steps * batch_size], batch_size),
            batch,
            (
                tuple(on_copy(W) for W in weights),
                tuple(on_copy(b) for b in biases),
                weight_grads,
                bias_grads,
                codes,
                rule,
                copy,
                grads,
                *(slot.copy() for slot in slots),
                table[:steps],
                False,
                np.empty(steps, dtype=np.float64),
                np.zeros(steps, dtype=np.int64),
                cpu_gemm.addresses(),
                cpu_gemm.NO_SCRATCH,  # bfloat16 plans are not timed
            ),
        )

    def seconds_per_step(self, plan: np.ndarray) -> float:
        if self._arguments is None:
            self._arguments = self._copies()
        data, batch, rest = self._arguments
        kernel = cpu_jit.epoch_kernel()
        start = time.perf_counter()
        kernel(*data, (*batch, plan), (*batch, plan), *rest)
        return (time.perf_counter() - start) / self._steps


class _StepRecorder:
    """Stands in for the engine in its ``_JIT_STEPS`` methods to record the kernel each
    step would run and the scalars it would pass, rounded as the step rounds them."""

    def __init__(self, engine: NumpyEngine) -> None:
        self._engine = engine
        self.calls: list[tuple[str, list[np.ndarray], tuple[Any, ...]]] = []

    def _jit(self, name: str, arrays: list[np.ndarray], *scalars: Any) -> None:
        self.calls.append((name, arrays, scalars))

    def _absent(self, optional: np.ndarray | None, like: np.ndarray) -> np.ndarray:
        return self._engine._absent(optional, like)


def _buffer(workspace: Workspace | None, name: str, shape: tuple[int, ...], dtype) -> Array:
    """The workspace's array ``name``, or ``None`` (NumPy then allocates the result)."""
    return None if workspace is None else workspace.array(name, shape, dtype)


def _activate_in_place(name: str, Z: np.ndarray, workspace: Workspace | None) -> None:
    """Overwrite ``Z`` ``(N, O)`` with ``name(Z)`` for the names in ``_IN_PLACE``."""
    if name == "relu":
        np.maximum(Z, 0.0, out=Z)
    elif name == "tanh":
        np.tanh(Z, out=Z)
    else:  # softmax, shifted by the row maximum as xp_activations.softmax does
        row = _buffer(workspace, "row", (Z.shape[0], 1), Z.dtype)
        row = np.max(Z, axis=-1, keepdims=True, out=row)
        Z -= row
        np.exp(Z, out=Z)
        row = np.sum(Z, axis=-1, keepdims=True, out=row)
        Z /= row


def _route_to_first_matches(
    dY: np.ndarray,
    inputs: Sequence[np.ndarray],
    Y: np.ndarray,
    grads: list[np.ndarray],
    workspace: Workspace,
) -> None:
    """``grads[i] = dY`` where ``inputs[i] == Y`` and no earlier input equals ``Y``, else 0."""
    hit = workspace.array("merge_hit", Y.shape, "bool")
    # what is not yet routed to an input; it ends as the last input's gradient
    remaining = grads[-1]
    np.copyto(remaining, dY)
    for X, grad in zip(inputs[:-1], grads[:-1]):
        np.equal(X, Y, out=hit)
        grad.fill(0.0)
        np.copyto(grad, remaining, where=hit)
        np.copyto(remaining, 0.0, where=hit)
    np.not_equal(inputs[-1], Y, out=hit)
    np.copyto(remaining, 0.0, where=hit)


def _activation_gradient(
    name: str, dY: np.ndarray, Z: np.ndarray, Y: np.ndarray, dZ: np.ndarray, workspace: Workspace
) -> None:
    """``dZ = name'(Z) * dY`` into ``dZ`` with workspace temporaries, for relu, tanh, sigmoid."""
    if name == "relu":
        positive = workspace.array("positive", Z.shape, "bool")
        np.greater(Z, 0.0, out=positive)
        np.multiply(dY, positive, out=dZ)
        return
    if name == "tanh":
        np.multiply(Y, Y, out=dZ)
        np.subtract(1.0, dZ, out=dZ)
    else:  # sigmoid
        np.subtract(1.0, Y, out=dZ)
        dZ *= Y
    dZ *= dY
