"""The numba engine's fused training step of a narrow dense stack (``kernels/fused_mlp.py``).

``NumbaEngine.dense_stack_step`` asks ``prepare`` for a ``FusedStep`` and runs it
with ``run``: the forward kernel, the batch mean of the per-sample losses and the
backward kernel (and, above one tile of rows, the fixed-order sum of the blocks'
gradient partials) instead of the ~15 launches of ``Engine.dense_stack_step``.
A stack the kernels do not take (a width above ``fused_mlp.MAX_WIDTH``, another
activation, mixed dtypes, an empty batch, a batch left in host memory) gets
``None`` and the engine falls back to the default.

Every array comes from the workspaces the trainer passes, under the names the
default uses (each layer's ``"Y"``, the last one ``P``; the loss workspace's
``"loss_per_sample"`` and ``"dP"``), and the kernels' arguments are made once
per batch size and stack and kept in the loss workspace's ``memo``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from dlcore.kernels import fused_mlp, reductions

from .base import Array, Workspace

_MISSING = object()


class FusedStep(NamedTuple):
    """What ``run`` launches for one stack and batch size."""

    plan: fused_mlp.Plan  # the kernels' argument tuples
    per_sample: Array  # float64 (N,)
    dP: Array  # (N, C): (P - Y) / N


def prepare(
    X: Array,
    Y_true: Array,
    weights: Sequence[Array],
    biases: Sequence[Array],
    weight_grads: Sequence[Array],
    bias_grads: Sequence[Array],
    activations: Sequence[str],
    workspaces: Sequence[Workspace],
) -> FusedStep | None:
    """The fused step of ``Engine.dense_stack_step``'s arguments, or ``None`` if not eligible.

    Args:
        X: device array ``(N, I)``, float32 or float64.
        Y_true: one-hot ``(N, C)`` of ``X``'s dtype, or int64 labels ``(N,)``.
        weights, biases, weight_grads, bias_grads, activations, workspaces: as
            ``Engine.dense_stack_step`` takes them.

    Returns:
        The step to ``run``, made at the first call for this stack and batch size
        and reused after; ``None`` when the fused kernels do not take the stack.
    """
    if not _device_matrix(X) or X.shape[0] == 0 or not _targets_fit(X, Y_true):
        return None
    key = (
        "fused_mlp",
        X.shape[0],
        np.dtype(X.dtype).str,
        Y_true.ndim,
        tuple(activations),
        tuple(
            id(array) for group in (weights, biases, weight_grads, bias_grads) for array in group
        ),
    )
    memo = workspaces[-1].memo
    found = memo.get(key, _MISSING)
    if found is _MISSING:
        found = None
        if _stack_fits(X, weights, biases, weight_grads, bias_grads, activations):
            found = _make_step(
                X, weights, biases, weight_grads, bias_grads, activations, workspaces
            )
        memo[key] = found
    return found


def run(step: FusedStep, X: Array, Y_true: Array, loss_out: Array) -> Array:
    """Launch the fused step: ``loss_out[0]`` = the batch-mean loss; returns ``P`` ``(N, C)``.

    Args:
        step: from ``prepare`` for these arguments.
        X: the batch ``(N, I)``.
        Y_true: its one-hot targets ``(N, C)`` or int64 labels ``(N,)``.
        loss_out: float64 device array ``(1,)``.

    The weight and bias gradients of the stack are overwritten.
    """
    fused_mlp.forward(step.plan, X, Y_true, step.per_sample, step.dP)
    reductions.mean_all(step.per_sample, loss_out)
    fused_mlp.backward(step.plan, X, step.dP)
    return step.plan.outputs[-1]


def _device_matrix(A: Any) -> bool:
    """Whether ``A`` is a C-contiguous 2-D device array (not rows kept on the host)."""
    return getattr(A, "ndim", 0) == 2 and hasattr(A, "is_c_contiguous") and A.is_c_contiguous()


def _targets_fit(X: Array, Y_true: Array) -> bool:
    """One-hot rows of ``X``'s dtype or int64 labels, one per row of ``X``, C-contiguous."""
    if not hasattr(Y_true, "is_c_contiguous") or not Y_true.is_c_contiguous():
        return False
    if Y_true.ndim == 1:
        return Y_true.shape[0] == X.shape[0] and np.dtype(Y_true.dtype) == np.int64
    return Y_true.ndim == 2 and Y_true.shape[0] == X.shape[0] and Y_true.dtype == X.dtype


def _stack_fits(
    X: Array,
    weights: Sequence[Array],
    biases: Sequence[Array],
    weight_grads: Sequence[Array],
    bias_grads: Sequence[Array],
    activations: Sequence[str],
) -> bool:
    """Whether the layers chain from ``X``, share its dtype, are contiguous and fit the kernels."""
    widths = (X.shape[1], *(W.shape[1] for W in weights))
    if not weights or not fused_mlp.supports(widths, activations, X.dtype):
        return False
    for layer, (W, b, dW, db) in enumerate(zip(weights, biases, weight_grads, bias_grads)):
        shapes = (widths[layer], widths[layer + 1]), (widths[layer + 1],)
        for array, shape in ((W, shapes[0]), (dW, shapes[0]), (b, shapes[1]), (db, shapes[1])):
            if tuple(array.shape) != shape or array.dtype != X.dtype:
                return False
            if not array.is_c_contiguous():
                return False
    return len(biases) == len(weight_grads) == len(bias_grads) == len(weights)


def _make_step(
    X: Array,
    weights: Sequence[Array],
    biases: Sequence[Array],
    weight_grads: Sequence[Array],
    bias_grads: Sequence[Array],
    activations: Sequence[str],
    workspaces: Sequence[Workspace],
) -> FusedStep:
    """The step's arrays from the workspaces and the kernels' arguments."""
    N, dtype = X.shape[0], X.dtype
    outputs = [
        workspace.array("Y", (N, W.shape[1]), dtype) for W, workspace in zip(weights, workspaces)
    ]
    loss_workspace = workspaces[-1]
    per_sample = loss_workspace.array("loss_per_sample", (N,), "float64")
    dP = loss_workspace.array("dP", (N, weights[-1].shape[1]), dtype)
    plan = fused_mlp.plan(N, weights, biases, weight_grads, bias_grads, activations, outputs)
    return FusedStep(plan, per_sample, dP)
