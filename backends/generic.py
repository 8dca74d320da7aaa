"""The reference engine, written once against a Python array API namespace.

``ArrayAPIEngine`` implements every operation of ``base.Engine`` with functions
of the array API standard only, so the same code serves NumPy, CuPy and
``array_api_strict``. Concrete engines say which namespace and device they
use and how arrays cross to and from the host; they may override an operation
with a faster way of computing the same thing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from . import xp_activations, xp_losses, xp_merges, xp_optimizers
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

    def cast(self, A: Array, dtype: str, *, out: Array | None = None) -> Array:
        converted = self.xp.astype(A, getattr(self.xp, dtype))
        if out is None:
            return converted
        out[...] = converted
        return out

    def all_finite(self, A: Array) -> bool:
        xp = self.xp
        return bool(self.to_numpy(xp.all(xp.isfinite(A))))

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
        dW: Array | None,
        db: Array | None,
        need_dX: bool = True,
        workspace: Workspace | None = None,
    ) -> Array | None:
        xp = self.xp
        if dW is None and not need_dX:
            return None
        dZ = dY if activation == "linear" else xp_activations.backward(xp, activation, dY, Z, Y)
        if dW is not None:
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

    def backprop_prelu(self, dY: Array, X: Array, alpha: Array, *, dalpha: Array | None) -> Array:
        xp = self.xp
        positive = X > 0
        if dalpha is not None:
            dalpha[...] = xp.sum(xp.where(positive, xp.zeros_like(X), dY * X), axis=0)
        return xp.where(positive, dY, alpha * dY)

    # ------------------------------------------------------------------ merges
    def merge(
        self, op: str, inputs: Sequence[Array], *, workspace: Workspace | None = None
    ) -> Array:
        return xp_merges.forward(self.xp, op, inputs)

    def backprop_merge(
        self,
        op: str,
        dY: Array,
        inputs: Sequence[Array],
        Y: Array,
        *,
        workspace: Workspace | None = None,
    ) -> list[Array]:
        return xp_merges.backward(self.xp, op, dY, inputs, Y)

    def accumulate(self, dst: Array, src: Array) -> None:
        dst += src

    def scale(self, A: Array, factor: float, *, workspace: Workspace | None = None) -> Array:
        return factor * A

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
    def optimizer_step(
        self,
        rule: str,
        params: Array,
        grads: Array,
        slots: Sequence[Array | None],
        hyperparameters: Mapping[str, float],
    ) -> None:
        xp_optimizers.STEPS[rule](self.xp, params, grads, slots, hyperparameters)

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
