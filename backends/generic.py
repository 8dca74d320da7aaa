"""The reference engine, written once against a Python array API namespace.

``ArrayAPIEngine`` implements every operation of ``base.Engine`` with functions
of the array API standard only, so the same code serves NumPy, CuPy and
``array_api_strict``. Concrete engines say which namespace and device they
use and how arrays cross to and from the host; they may override an operation
with a faster way of computing the same thing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from . import (
    xp_activations,
    xp_losses,
    xp_merges,
    xp_metrics,
    xp_normalization,
    xp_optimizers,
)
from .base import EXTERNAL_DTYPES, Array, Engine, Workspace, dtype_name


def _namespace(data: Any) -> Any:
    """The array API namespace ``data`` belongs to, or ``None``."""
    try:
        return data.__array_namespace__()
    except (AttributeError, TypeError, ValueError):
        return None


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
        self._random_rows: tuple[int, int | None] = (0, None)

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

    def from_external(self, data: Any) -> Array | None:
        if _namespace(data) is self.xp:
            A = data  # one of the engine's own arrays
        else:
            from_dlpack = getattr(self.xp, "from_dlpack", None)
            if from_dlpack is None or not hasattr(data, "__dlpack__"):
                return None
            try:
                A = from_dlpack(data)
            except (BufferError, RuntimeError, TypeError, ValueError):
                return None  # on another device, or of a dtype the namespace lacks
        try:
            dtype = dtype_name(A.dtype)
        except TypeError:
            return None
        if getattr(A, "device", self._device) != self._device or dtype not in EXTERNAL_DTYPES:
            return None
        flags = getattr(A, "flags", None)  # NumPy and CuPy arrays tell their layout
        if flags is not None and not (flags.c_contiguous and getattr(flags, "writeable", True)):
            return None  # the numpy engine's compiled paths take writable arrays only
        return A

    def reshape(self, A: Array, shape: tuple[int, ...]) -> Array:
        return self.xp.reshape(A, shape)

    def count_outside(self, A: Array, low: float, high: float, *, whole: bool = False) -> int:
        xp = self.xp
        if xp.isdtype(A.dtype, "integral"):
            info = xp.iinfo(A.dtype)
            low_bound = max(math.ceil(low), info.min) if math.isfinite(low) else info.min
            high_bound = min(math.floor(high), info.max) if math.isfinite(high) else info.max
            if low_bound > high_bound:
                return int(A.size)
            inside = (A >= low_bound) & (A <= high_bound)
        else:
            largest = float(xp.finfo(A.dtype).max)  # bounds beyond it would round to inf
            inside = (A >= max(low, -largest)) & (A <= min(high, largest))  # False for NaN
            if whole:
                inside = inside & (A == xp.round(A))
        count = xp.sum(xp.astype(xp.logical_not(inside), xp.int64))
        return int(self.scalars_to_numpy([count])[0])

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

    def set_random_rows(self, offset: int, total: int | None) -> None:
        self._random_rows = (int(offset), None if total is None else int(total))

    def _drawn(self, draw: Any, shape: tuple[int, ...]) -> np.ndarray:
        """``draw(shape)`` from the host generator, as rows of a batch of the size
        ``set_random_rows`` gave."""
        offset, total = self._random_rows
        if total is None or not shape:
            return draw(shape)
        return draw((total, *shape[1:]))[offset : offset + shape[0]]

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
        product_dtype: str | None = None,
    ) -> tuple[Array, Array]:
        self.refuse_product_dtype(product_dtype)
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
        product_dtype: str | None = None,
    ) -> Array | None:
        self.refuse_product_dtype(product_dtype)
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

    # ------------------------------------------------------------------ normalization
    def batch_moments(self, X: Array, *, workspace: Workspace | None = None) -> tuple[Array, Array]:
        return xp_normalization.batch_moments(self.xp, X)

    def batch_normalize(
        self,
        X: Array,
        mean: Array,
        variance: Array,
        gamma: Array | None,
        beta: Array | None,
        *,
        epsilon: float,
        workspace: Workspace | None = None,
    ) -> tuple[Array, Array]:
        return xp_normalization.batch_normalize(self.xp, X, mean, variance, gamma, beta, epsilon)

    def backprop_batch_normalize(
        self,
        dY: Array,
        Xhat: Array,
        variance: Array,
        gamma: Array | None,
        *,
        epsilon: float,
        batch_statistics: bool,
        dgamma: Array | None,
        dbeta: Array | None,
        need_dX: bool = True,
        workspace: Workspace | None = None,
    ) -> Array | None:
        return xp_normalization.backprop_batch_normalize(
            self.xp, dY, Xhat, variance, gamma, epsilon, batch_statistics, dgamma, dbeta, need_dX
        )

    def update_moving_average(self, moving: Array, value: Array, momentum: float) -> None:
        xp_normalization.update_moving_average(self.xp, moving, value, momentum)

    def layer_normalize(
        self,
        X: Array,
        gamma: Array | None,
        beta: Array | None,
        *,
        epsilon: float,
        workspace: Workspace | None = None,
    ) -> tuple[Array, Array, Array]:
        return xp_normalization.layer_normalize(self.xp, X, gamma, beta, epsilon)

    def backprop_layer_normalize(
        self,
        dY: Array,
        Xhat: Array,
        inv_std: Array,
        gamma: Array | None,
        *,
        dgamma: Array | None,
        dbeta: Array | None,
        need_dX: bool = True,
        workspace: Workspace | None = None,
    ) -> Array | None:
        return xp_normalization.backprop_layer_normalize(
            self.xp, dY, Xhat, inv_std, gamma, dgamma, dbeta, need_dX
        )

    def standardize(
        self,
        X: Array,
        mean: Array | None,
        variance: Array,
        *,
        invert: bool,
        workspace: Workspace | None = None,
    ) -> Array:
        return xp_normalization.standardize(self.xp, X, mean, variance, invert)

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

    def per_sample_loss(
        self,
        name: str,
        Y_pred: Array,
        Y_true: Array,
        *,
        from_logits: bool = False,
        workspace: Workspace | None = None,
    ) -> Array:
        return xp_losses.per_sample_loss(self.xp, name, Y_pred, Y_true, from_logits=from_logits)

    def weighted_sum(
        self, values: Array, weights: Array | None = None, *, scale: float = 1.0
    ) -> Array:
        xp = self.xp
        total = (
            xp.sum(values) if weights is None else xp.sum(values * xp.astype(weights, values.dtype))
        )
        return xp.asarray(total * scale)

    def scale_rows(self, A: Array, w: Array, *, workspace: Workspace | None = None) -> Array:
        return A * self.xp.reshape(w, (-1, 1))

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

    def gradient_norm_scale(
        self,
        grads: Array,
        segments: Sequence[tuple[int, int]],
        clipnorm: float,
        out: Array,
        *,
        each: bool = False,
    ) -> None:
        xp_optimizers.gradient_norm_scale(self.xp, grads, segments, clipnorm, out, each)

    def clip_and_decay(
        self,
        params: Array,
        grads: Array,
        out: Array | None,
        *,
        scale: Array | None = None,
        clipvalue: float | None = None,
        decay: float = 0.0,
    ) -> None:
        xp_optimizers.clip_and_decay(self.xp, params, grads, out, scale, clipvalue, decay)

    def moving_average(self, average: Array, values: Array, momentum: float) -> None:
        xp_optimizers.moving_average(self.xp, average, values, momentum)

    # ------------------------------------------------------------------ dropout, metrics
    def dropout(self, X: Array, *, rate: float) -> tuple[Array, Array]:
        keep = self._drawn(self._rng.random, tuple(X.shape)) >= rate
        mask = self.asarray(keep / (1.0 - rate), dtype=dtype_name(X.dtype))
        return X * mask, mask

    def backprop_dropout(self, dY: Array, mask: Array) -> Array:
        return dY * mask

    # ------------------------------------------------------------------ parameterised
    # activations and noise (drawn from the host generator, as dropout's masks)
    def relu_family(
        self, Z: Array, *, negative_slope: float, max_value: float | None, threshold: float
    ) -> Array:
        return xp_activations.relu_family(self.xp, Z, negative_slope, max_value, threshold)

    def backprop_relu_family(
        self,
        dY: Array,
        Z: Array,
        *,
        negative_slope: float,
        max_value: float | None,
        threshold: float,
    ) -> Array:
        return xp_activations.backprop_relu_family(
            self.xp, dY, Z, negative_slope, max_value, threshold
        )

    def elu(self, Z: Array, *, alpha: float) -> Array:
        return xp_activations.elu(self.xp, Z, alpha)

    def backprop_elu(self, dY: Array, Z: Array, *, alpha: float) -> Array:
        return xp_activations.backprop_elu(self.xp, dY, Z, alpha)

    def gaussian_noise(self, X: Array, *, stddev: float) -> Array:
        noise = self._drawn(self._rng.standard_normal, tuple(X.shape)) * stddev
        return X + self.asarray(noise, dtype=dtype_name(X.dtype))

    def gaussian_dropout(self, X: Array, *, rate: float) -> tuple[Array, Array]:
        normal = self._drawn(self._rng.standard_normal, tuple(X.shape))
        noise = 1.0 + normal * np.sqrt(rate / (1.0 - rate))
        mask = self.asarray(noise, dtype=dtype_name(X.dtype))
        return X * mask, mask

    def alpha_dropout(
        self, X: Array, *, rate: float, noise_shape: tuple[int, int]
    ) -> tuple[Array, Array]:
        a, b, alpha_p = xp_activations.alpha_dropout_constants(rate)
        if tuple(noise_shape) == tuple(X.shape):  # one draw per value: rows of the batch
            kept = self._drawn(self._rng.random, tuple(noise_shape)) >= rate
        else:
            kept = self._rng.random(tuple(noise_shape)) >= rate
        mask = self.xp.zeros_like(X) + self.asarray(kept * a, dtype=dtype_name(X.dtype))
        return self.xp.where(mask != 0.0, a * X + b, a * alpha_p + b), mask

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

    def accuracy_values(
        self,
        kind: str,
        Y_pred: Array,
        Y_true: Array,
        *,
        k: int = 1,
        threshold: float = 0.5,
        workspace: Workspace | None = None,
    ) -> Array:
        return xp_metrics.accuracy_values(self.xp, kind, Y_pred, Y_true, k=k, threshold=threshold)

    def confusion_counts(
        self,
        Y_pred: Array,
        Y_true: Array,
        thresholds: Array,
        *,
        sample_weight: Array | None = None,
        per_label: bool = False,
        class_id: int | None = None,
        top_k: int | None = None,
        row_max: bool = False,
        workspace: Workspace | None = None,
    ) -> Array:
        return xp_metrics.confusion_counts(
            self.xp,
            Y_pred,
            Y_true,
            thresholds,
            sample_weight=sample_weight,
            per_label=per_label,
            class_id=class_id,
            top_k=top_k,
            row_max=row_max,
        )
