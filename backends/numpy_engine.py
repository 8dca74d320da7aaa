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

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import cpu_chunks, cpu_jit, xp_activations
from .base import Array, Workspace
from .generic import ArrayAPIEngine
from .names import EPSILON

# Activations computed in place of Z whose derivative follows from Y alone.
_IN_PLACE = ("relu", "tanh", "softmax")


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
    ) -> tuple[Array, Array]:
        shape = (X.shape[0], W.shape[1])
        Z = np.matmul(X, W, out=_buffer(workspace, "Z", shape, X.dtype))
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
        dW: Array,
        db: Array | None,
        need_dX: bool = True,
        workspace: Workspace | None = None,
    ) -> Array | None:
        if activation == "linear":
            dZ = dY
        elif workspace is not None and activation in ("relu", "tanh", "sigmoid"):
            dZ = workspace.array("dZ", dY.shape, dY.dtype)
            _activation_gradient(activation, dY, Z, Y, dZ, workspace)
        else:
            dZ = self.backprop_activation(activation, dY, Z, Y)
        np.matmul(X.T, dZ, out=dW)
        if db is not None:
            np.sum(dZ, axis=0, out=db)
        if not need_dX:
            return None
        return np.matmul(dZ, W.T, out=_buffer(workspace, "dX", X.shape, X.dtype))

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
    ) -> tuple[Array, Array]:
        if not cpu_jit.stack_available():
            return super().dense_stack_step(
                X,
                Y_true,
                weights,
                biases,
                weight_grads,
                bias_grads,
                activations,
                workspaces=workspaces,
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
        loss = cpu_jit.kernel("dense_stack")(
            outputs,
            *arguments[1:],
            self._no_targets[dtype] if sparse else Y_true,
            Y_true if sparse else self._no_labels,
        )
        return dtype.type(loss), outputs[-1]

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
    # With Numba, each update is one compiled loop over all cores (cpu_jit); without it,
    # Adam runs in cache-sized chunks (cpu_chunks) and the others as the generic code.
    def sgd_update(self, params, grads, velocity, *, learning_rate, momentum, nesterov):
        if not cpu_jit.available():
            return super().sgd_update(
                params,
                grads,
                velocity,
                learning_rate=learning_rate,
                momentum=momentum,
                nesterov=nesterov,
            )
        scalar = params.dtype.type
        if velocity is None:
            self._jit("sgd", [params, grads], scalar(learning_rate))
        else:
            self._jit(
                "sgd_momentum",
                [params, grads, velocity],
                scalar(learning_rate),
                scalar(momentum),
                bool(nesterov),
            )

    def adam_update(
        self, params, grads, m, v, v_max, *, learning_rate, beta_1, beta_2, epsilon, step
    ):
        # both bias corrections fold into one host scalar, as xp_optimizers does
        alpha = learning_rate * math.sqrt(1.0 - beta_2**step) / (1.0 - beta_1**step)
        if cpu_jit.available():
            scalar = params.dtype.type
            self._jit(
                "adam",
                [params, grads, m, v, self._absent(v_max, params)],
                scalar(alpha),
                scalar(1.0 - beta_1),
                scalar(1.0 - beta_2),
                scalar(epsilon),
            )
            return
        arrays = [params, grads, m, v] + ([v_max] if v_max is not None else [])
        self._chunks.run(
            cpu_chunks.adam_chunk,
            arrays,
            scratch=2,
            args=(alpha, 1.0 - beta_1, 1.0 - beta_2, epsilon),
        )

    def rmsprop_update(
        self,
        params,
        grads,
        velocity,
        average_grad,
        momentum_buffer,
        *,
        learning_rate,
        rho,
        momentum,
        epsilon,
    ):
        if not cpu_jit.available():
            return super().rmsprop_update(
                params,
                grads,
                velocity,
                average_grad,
                momentum_buffer,
                learning_rate=learning_rate,
                rho=rho,
                momentum=momentum,
                epsilon=epsilon,
            )
        scalar = params.dtype.type
        self._jit(
            "rmsprop",
            [
                params,
                grads,
                velocity,
                self._absent(average_grad, params),
                self._absent(momentum_buffer, params),
            ],
            scalar(learning_rate),
            scalar(rho),
            scalar(1.0 - rho),
            scalar(momentum),
            scalar(epsilon),
        )

    def adagrad_update(self, params, grads, accumulator, *, learning_rate, epsilon):
        if not cpu_jit.available():
            return super().adagrad_update(
                params, grads, accumulator, learning_rate=learning_rate, epsilon=epsilon
            )
        scalar = params.dtype.type
        self._jit("adagrad", [params, grads, accumulator], scalar(learning_rate), scalar(epsilon))

    def adamax_update(self, params, grads, m, u, *, learning_rate, beta_1, beta_2, epsilon, step):
        if not cpu_jit.available():
            return super().adamax_update(
                params,
                grads,
                m,
                u,
                learning_rate=learning_rate,
                beta_1=beta_1,
                beta_2=beta_2,
                epsilon=epsilon,
                step=step,
            )
        scalar = params.dtype.type
        self._jit(
            "adamax",
            [params, grads, m, u],
            scalar(learning_rate),
            scalar(1.0 - beta_1),
            scalar(beta_2),
            scalar(1.0 - beta_1**step),
            scalar(epsilon),
        )

    def nadam_update(
        self,
        params,
        grads,
        m,
        v,
        *,
        learning_rate,
        beta_1,
        beta_2,
        epsilon,
        step,
        mu_t,
        mu_next,
        mu_product,
        mu_product_next,
    ):
        if not cpu_jit.available():
            return super().nadam_update(
                params,
                grads,
                m,
                v,
                learning_rate=learning_rate,
                beta_1=beta_1,
                beta_2=beta_2,
                epsilon=epsilon,
                step=step,
                mu_t=mu_t,
                mu_next=mu_next,
                mu_product=mu_product,
                mu_product_next=mu_product_next,
            )
        scalar = params.dtype.type
        self._jit(
            "nadam",
            [params, grads, m, v],
            scalar(learning_rate),
            scalar(1.0 - beta_1),
            scalar(1.0 - beta_2),
            scalar(mu_next / (1.0 - mu_product_next)),
            scalar((1.0 - mu_t) / (1.0 - mu_product)),
            scalar(1.0 - beta_2**step),
            scalar(epsilon),
        )

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
