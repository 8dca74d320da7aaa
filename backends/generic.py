"""The reference engine, written once against a Python array API namespace.

``ArrayAPIEngine`` implements every operation of ``base.Engine`` with functions
of the array API standard only, so the same code serves NumPy, CuPy and
``array_api_strict``. Concrete engines say which namespace and device they
use and how arrays cross to and from the host; they may override an operation
with a faster way of computing the same thing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from . import xp_activations, xp_losses, xp_optimizers
from .base import Array, Engine, Workspace, dtype_name


class ArrayAPIEngine(Engine):
    """Every engine operation on an array API namespace ``xp``.

    Subclasses set ``xp`` and ``_device`` in ``__init__`` and implement
    ``availability``, ``device``, ``asarray``, ``to_numpy`` and ``synchronize``.
    Dropout masks come from a host NumPy generator, so every engine built on
    this class draws the same masks for the same seed.
    """

    xp: Any
    _device: Any

    def __init__(self) -> None:
        self._rng = np.random.default_rng()

    # ------------------------------------------------------------------ memory
    def supports_dtype(self, dtype: str) -> bool:
        return dtype in ("float32", "float64")

    def zeros(self, shape: tuple[int, ...], *, dtype: str) -> Array:
        return self.xp.zeros(shape, dtype=getattr(self.xp, dtype), device=self._device)

    def split_views(self, flat: Array, shapes: Sequence[tuple[int, ...]]) -> list[Array]:
        views = []
        start = 0
        for shape in shapes:
            size = int(np.prod(shape, dtype=np.int64))
            views.append(self.xp.reshape(flat[start : start + size], shape))
            start += size
        return views

    def assign(self, dst: Array, src: Array) -> None:
        dst[...] = src

    def slice_rows(self, A: Array, start: int, stop: int) -> Array:
        return A[start:stop, ...]

    def take_rows(self, A: Array, indices: Array, *, out: Array | None = None) -> Array:
        rows = self.xp.take(A, indices, axis=0)
        if out is None:
            return rows
        out[...] = rows
        return out

    def seed(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)

    def scalars_to_numpy(self, values: Sequence[Array]) -> np.ndarray:
        if not values:
            return np.zeros(0)
        xp = self.xp
        stacked = xp.stack([xp.astype(value, xp.float64) for value in values])
        return self.to_numpy(stacked)

    # ------------------------------------------------------------------ dense layers
    def gemm(self, A: Array, B: Array, *, trans_a: bool = False, trans_b: bool = False) -> Array:
        xp = self.xp
        return xp.matmul(
            xp.matrix_transpose(A) if trans_a else A, xp.matrix_transpose(B) if trans_b else B
        )

    # The array API has no out= arguments: this engine allocates whether or not it is
    # given a workspace, and the NumPy engine overrides the operations of a training step.
    def dense_forward(
        self,
        X: Array,
        W: Array,
        b: Array | None,
        activation: str,
        *,
        workspace: Workspace | None = None,
    ) -> tuple[Array, Array]:
        Z = self.xp.matmul(X, W)
        if b is not None:
            Z = Z + b
        if activation == "linear":
            return Z, Z
        return Z, xp_activations.forward(self.xp, activation, Z)

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
        xp = self.xp
        dZ = dY if activation == "linear" else xp_activations.backward(xp, activation, dY, Z, Y)
        dW[...] = xp.matmul(xp.matrix_transpose(X), dZ)
        if db is not None:
            db[...] = xp.sum(dZ, axis=0)
        return xp.matmul(dZ, xp.matrix_transpose(W)) if need_dX else None

    # ------------------------------------------------------------------ activations
    def activation(self, name: str, Z: Array) -> Array:
        return xp_activations.forward(self.xp, name, Z)

    def backprop_activation(self, name: str, dY: Array, Z: Array, Y: Array) -> Array:
        return xp_activations.backward(self.xp, name, dY, Z, Y)

    def prelu(self, X: Array, alpha: Array) -> Array:
        return self.xp.where(X > 0, X, alpha * X)

    def backprop_prelu(self, dY: Array, X: Array, alpha: Array, *, dalpha: Array) -> Array:
        xp = self.xp
        positive = X > 0
        dalpha[...] = xp.sum(xp.where(positive, xp.zeros_like(X), dY * X), axis=0)
        return xp.where(positive, dY, alpha * dY)

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
        return xp_losses.loss(self.xp, name, Y_pred, Y_true, from_logits=from_logits)

    def backprop_loss(
        self, name: str, Y_pred: Array, Y_true: Array, *, from_logits: bool = False
    ) -> Array:
        return xp_losses.backprop_loss(self.xp, name, Y_pred, Y_true, from_logits=from_logits)

    def backprop_softmax_crossentropy(
        self, P: Array, Y_true: Array, *, workspace: Workspace | None = None
    ) -> Array:
        return xp_losses.softmax_crossentropy_gradient(self.xp, P, Y_true)

    def backprop_sigmoid_crossentropy(self, P: Array, Y_true: Array) -> Array:
        return xp_losses.sigmoid_crossentropy_gradient(self.xp, P, Y_true)

    # ------------------------------------------------------------------ regularization
    def penalty(self, W: Array, *, l1: float, l2: float) -> Array:
        xp = self.xp
        total = xp.zeros((), dtype=W.dtype, device=self._device)
        if l1:
            total = total + l1 * xp.sum(xp.abs(W))
        if l2:
            total = total + l2 * xp.sum(W * W)
        return total

    def backprop_penalty(self, W: Array, dW: Array, *, l1: float, l2: float) -> None:
        if l1:
            dW += l1 * self.xp.sign(W)
        if l2:
            dW += (2.0 * l2) * W

    # ------------------------------------------------------------------ optimizers
    def sgd_update(self, params, grads, velocity, *, learning_rate, momentum, nesterov):
        xp_optimizers.sgd_update(
            self.xp,
            params,
            grads,
            velocity,
            learning_rate=learning_rate,
            momentum=momentum,
            nesterov=nesterov,
        )

    def adam_update(
        self, params, grads, m, v, v_max, *, learning_rate, beta_1, beta_2, epsilon, step
    ):
        xp_optimizers.adam_update(
            self.xp,
            params,
            grads,
            m,
            v,
            v_max,
            learning_rate=learning_rate,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=epsilon,
            step=step,
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
        xp_optimizers.rmsprop_update(
            self.xp,
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

    def adagrad_update(self, params, grads, accumulator, *, learning_rate, epsilon):
        xp_optimizers.adagrad_update(
            self.xp, params, grads, accumulator, learning_rate=learning_rate, epsilon=epsilon
        )

    def adamax_update(self, params, grads, m, u, *, learning_rate, beta_1, beta_2, epsilon, step):
        xp_optimizers.adamax_update(
            self.xp,
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
        xp_optimizers.nadam_update(
            self.xp,
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

    # ------------------------------------------------------------------ dropout, metrics
    def dropout(self, X: Array, *, rate: float) -> tuple[Array, Array]:
        keep = self._rng.random(tuple(X.shape)) >= rate
        mask = self.asarray(keep / (1.0 - rate), dtype=dtype_name(X.dtype))
        return X * mask, mask

    def backprop_dropout(self, dY: Array, mask: Array) -> Array:
        return dY * mask

    def count_correct(
        self,
        kind: str,
        Y_pred: Array,
        Y_true: Array,
        *,
        workspace: Workspace | None = None,
    ) -> Array:
        xp = self.xp
        if kind == "binary":
            hits = (Y_pred > 0.5) == (Y_true > 0.5)
        elif kind == "categorical":
            hits = xp.argmax(Y_pred, axis=-1) == xp.argmax(Y_true, axis=-1)
        else:
            hits = xp.argmax(Y_pred, axis=-1) == Y_true
        return xp.sum(xp.astype(hits, Y_pred.dtype))
