"""Optimizer updates: one kernel launch per step over flat parameter buffers.

Each kernel walks the flat ``(P,)`` buffers with a grid-stride loop, reads every
element of every buffer once into registers, applies the rule and writes the
parameters and state slots back once. The rules, and the order of operations
that fixes their rounding, are those of ``backends/xp_optimizers.py``: the
kernels evaluate the same expressions in the same order, so on the simulator
they agree with the NumPy engine to the last bit.

A launcher takes the arguments of ``Engine.optimizer_step`` after the rule's
name: ``(params, grads, slots, hyperparameters)``; ``LAUNCHERS`` maps each rule
to its launcher, for the numba engine. Whatever depends on the step (bias
corrections, Nadam's momentum schedule) arrives computed on the host by the
optimizer, one scalar per factor the reference multiplies or divides by; the
launcher converts each to the buffers' dtype, exactly as NumPy converts a Python
float it combines with an array of that dtype. An optional slot that is
``None`` selects a kernel variant without it; no dummy arrays are passed.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from numba import cuda

from .common import (
    FLOAT_DTYPES,
    PtxVariant,
    array,
    device_function,
    grid_for,
    launch,
    numba_type,
    scalar,
    scratch,
)
from .reductions import map_sum


@device_function
def _maximum(a, b):
    """``numpy.maximum`` of two scalars: NaN if either is NaN."""
    if a > b or a != a:
        return a
    return b


# ---------------------------------------------------------------------- SGD
@functools.cache
def _sgd_kernel() -> Any:
    @cuda.jit
    def sgd_kernel(params, grads, learning_rate):
        """params -= learning_rate * grads over flat (P,) buffers."""
        for i in range(cuda.grid(1), params.size, cuda.gridsize(1)):
            params[i] = params[i] - learning_rate * grads[i]

    return sgd_kernel


@functools.cache
def _sgd_momentum_kernel(nesterov: bool) -> Any:
    @cuda.jit
    def sgd_momentum_kernel(params, grads, velocity, learning_rate, momentum):
        """SGD with (Nesterov) momentum over flat (P,) buffers."""
        for i in range(cuda.grid(1), params.size, cuda.gridsize(1)):
            g = grads[i]
            v = velocity[i] * momentum
            v = v - learning_rate * g
            velocity[i] = v
            if nesterov:
                params[i] = params[i] + (momentum * v - learning_rate * g)
            else:
                params[i] = params[i] + v

    return sgd_momentum_kernel


def sgd(params: Any, grads: Any, slots: Sequence[Any | None], h: Mapping[str, float]) -> None:
    """SGD, with momentum when the ``velocity`` slot is given (Nesterov if ``nesterov``).

    Args:
        params: float32 or float64 device array ``(P,)``, updated in place.
        grads: ``(P,)``, dtype of ``params``.
        slots: ``(velocity,)``, ``(P,)`` updated in place, or ``None`` without momentum.
        h: ``learning_rate``, ``momentum``, ``nesterov``.
    """
    if params.size == 0:  # nothing to write: launch nothing
        return
    (velocity,) = slots
    f = scalar(params.dtype)
    grid = grid_for(params.size)
    if velocity is None:
        launch(_sgd_kernel(), grid, params, grads, f(h["learning_rate"]))
    else:
        kernel = _sgd_momentum_kernel(bool(h["nesterov"]))
        launch(kernel, grid, params, grads, velocity, f(h["learning_rate"]), f(h["momentum"]))


# ---------------------------------------------------------------------- Adam
@functools.cache
def _adam_kernel() -> Any:
    @cuda.jit
    def adam_kernel(params, grads, m, v, alpha, one_minus_beta_1, one_minus_beta_2, epsilon):
        """Adam over flat (P,) buffers; alpha folds lr and both bias corrections."""
        for i in range(cuda.grid(1), params.size, cuda.gridsize(1)):
            g = grads[i]
            m_i = m[i]
            m_i = m_i + (g - m_i) * one_minus_beta_1
            v_i = v[i]
            v_i = v_i + (g * g - v_i) * one_minus_beta_2
            m[i] = m_i
            v[i] = v_i
            params[i] = params[i] - (m_i * alpha) / (math.sqrt(v_i) + epsilon)

    return adam_kernel


@functools.cache
def _amsgrad_kernel() -> Any:
    @cuda.jit
    def amsgrad_kernel(
        params, grads, m, v, v_max, alpha, one_minus_beta_1, one_minus_beta_2, epsilon
    ):
        """AMSGrad over flat (P,) buffers: Adam on the running maximum of v."""
        for i in range(cuda.grid(1), params.size, cuda.gridsize(1)):
            g = grads[i]
            m_i = m[i]
            m_i = m_i + (g - m_i) * one_minus_beta_1
            v_i = v[i]
            v_i = v_i + (g * g - v_i) * one_minus_beta_2
            v_max_i = _maximum(v_max[i], v_i)
            m[i] = m_i
            v[i] = v_i
            v_max[i] = v_max_i
            params[i] = params[i] - (m_i * alpha) / (math.sqrt(v_max_i) + epsilon)

    return amsgrad_kernel


def adam(params: Any, grads: Any, slots: Sequence[Any | None], h: Mapping[str, float]) -> None:
    """Adam, or AMSGrad when the ``v_max`` slot is given.

    Args:
        params: float32 or float64 device array ``(P,)``, updated in place.
        grads: ``(P,)``, dtype of ``params``.
        slots: ``(m, v, v_max)``, each ``(P,)`` updated in place; ``v_max`` may be ``None``.
        h: ``alpha`` (the step size with both bias corrections), ``beta_1``, ``beta_2``,
            ``epsilon``.
    """
    if params.size == 0:  # nothing to write: launch nothing
        return
    m, v, v_max = slots
    f = scalar(params.dtype)
    constants = f(h["alpha"]), f(1.0 - h["beta_1"]), f(1.0 - h["beta_2"]), f(h["epsilon"])
    grid = grid_for(params.size)
    if v_max is None:
        launch(_adam_kernel(), grid, params, grads, m, v, *constants)
    else:
        launch(_amsgrad_kernel(), grid, params, grads, m, v, v_max, *constants)


# ---------------------------------------------------------------------- RMSprop
@functools.cache
def _rmsprop_step(centered: bool) -> Any:
    """Device function: (velocity, average_grad, increment) of one element."""

    def rmsprop_step(g, velocity, average_grad, learning_rate, rho, one_minus_rho, epsilon):
        velocity = velocity * rho
        velocity = velocity + one_minus_rho * (g * g)
        if centered:
            average_grad = average_grad * rho
            average_grad = average_grad + one_minus_rho * g
            denominator = velocity - average_grad * average_grad + epsilon
        else:
            denominator = velocity + epsilon
        return velocity, average_grad, (learning_rate * g) / math.sqrt(denominator)

    return device_function(rmsprop_step)


@functools.cache
def _rmsprop_kernel() -> Any:
    step = _rmsprop_step(False)

    @cuda.jit
    def rmsprop_kernel(params, grads, velocity, learning_rate, rho, one_minus_rho, epsilon):
        """RMSprop over flat (P,) buffers."""
        for i in range(cuda.grid(1), params.size, cuda.gridsize(1)):
            vel, _, increment = step(
                grads[i], velocity[i], grads[i], learning_rate, rho, one_minus_rho, epsilon
            )  # the average_grad slot is unused when not centered
            velocity[i] = vel
            params[i] = params[i] - increment

    return rmsprop_kernel


@functools.cache
def _rmsprop_centered_kernel() -> Any:
    step = _rmsprop_step(True)

    @cuda.jit
    def rmsprop_centered_kernel(
        params, grads, velocity, average_grad, learning_rate, rho, one_minus_rho, epsilon
    ):
        """Centered RMSprop over flat (P,) buffers."""
        for i in range(cuda.grid(1), params.size, cuda.gridsize(1)):
            vel, average, increment = step(
                grads[i], velocity[i], average_grad[i], learning_rate, rho, one_minus_rho, epsilon
            )
            velocity[i] = vel
            average_grad[i] = average
            params[i] = params[i] - increment

    return rmsprop_centered_kernel


@functools.cache
def _rmsprop_momentum_kernel() -> Any:
    step = _rmsprop_step(False)

    @cuda.jit
    def rmsprop_momentum_kernel(
        params,
        grads,
        velocity,
        momentum_buffer,
        learning_rate,
        rho,
        one_minus_rho,
        momentum,
        epsilon,
    ):
        """RMSprop with momentum over flat (P,) buffers."""
        for i in range(cuda.grid(1), params.size, cuda.gridsize(1)):
            vel, _, increment = step(
                grads[i], velocity[i], grads[i], learning_rate, rho, one_minus_rho, epsilon
            )  # the average_grad slot is unused when not centered
            velocity[i] = vel
            buffer = momentum_buffer[i] * momentum
            buffer = buffer + increment
            momentum_buffer[i] = buffer
            params[i] = params[i] - buffer

    return rmsprop_momentum_kernel


@functools.cache
def _rmsprop_centered_momentum_kernel() -> Any:
    step = _rmsprop_step(True)

    @cuda.jit
    def rmsprop_centered_momentum_kernel(
        params,
        grads,
        velocity,
        average_grad,
        momentum_buffer,
        learning_rate,
        rho,
        one_minus_rho,
        momentum,
        epsilon,
    ):
        """Centered RMSprop with momentum over flat (P,) buffers."""
        for i in range(cuda.grid(1), params.size, cuda.gridsize(1)):
            vel, average, increment = step(
                grads[i], velocity[i], average_grad[i], learning_rate, rho, one_minus_rho, epsilon
            )
            velocity[i] = vel
            average_grad[i] = average
            buffer = momentum_buffer[i] * momentum
            buffer = buffer + increment
            momentum_buffer[i] = buffer
            params[i] = params[i] - buffer

    return rmsprop_centered_momentum_kernel


def rmsprop(params: Any, grads: Any, slots: Sequence[Any | None], h: Mapping[str, float]) -> None:
    """RMSprop, centered when the ``average_grad`` slot is given, with momentum when the
    ``momentum_buffer`` slot is given.

    Args:
        params: float32 or float64 device array ``(P,)``, updated in place.
        grads: ``(P,)``, dtype of ``params``.
        slots: ``(velocity, average_grad, momentum_buffer)``, each ``(P,)`` updated in
            place; the last two may be ``None``.
        h: ``learning_rate``, ``rho``, ``momentum``, ``epsilon``.
    """
    if params.size == 0:  # nothing to write: launch nothing
        return
    velocity, average_grad, momentum_buffer = slots
    f = scalar(params.dtype)
    rho = h["rho"]
    lr, rho_, one_minus_rho, eps = f(h["learning_rate"]), f(rho), f(1.0 - rho), f(h["epsilon"])
    grid = grid_for(params.size)
    if average_grad is None and momentum_buffer is None:
        launch(_rmsprop_kernel(), grid, params, grads, velocity, lr, rho_, one_minus_rho, eps)
    elif momentum_buffer is None:
        launch(
            _rmsprop_centered_kernel(),
            grid,
            params,
            grads,
            velocity,
            average_grad,
            lr,
            rho_,
            one_minus_rho,
            eps,
        )
    elif average_grad is None:
        launch(
            _rmsprop_momentum_kernel(),
            grid,
            params,
            grads,
            velocity,
            momentum_buffer,
            lr,
            rho_,
            one_minus_rho,
            f(h["momentum"]),
            eps,
        )
    else:
        launch(
            _rmsprop_centered_momentum_kernel(),
            grid,
            params,
            grads,
            velocity,
            average_grad,
            momentum_buffer,
            lr,
            rho_,
            one_minus_rho,
            f(h["momentum"]),
            eps,
        )


# ---------------------------------------------------------------------- Adagrad
@functools.cache
def _adagrad_kernel() -> Any:
    @cuda.jit
    def adagrad_kernel(params, grads, accumulator, learning_rate, epsilon):
        """Adagrad over flat (P,) buffers."""
        for i in range(cuda.grid(1), params.size, cuda.gridsize(1)):
            g = grads[i]
            acc = accumulator[i] + g * g
            accumulator[i] = acc
            params[i] = params[i] - (learning_rate * g) / math.sqrt(acc + epsilon)

    return adagrad_kernel


def adagrad(params: Any, grads: Any, slots: Sequence[Any | None], h: Mapping[str, float]) -> None:
    """Adagrad.

    Args:
        params: float32 or float64 device array ``(P,)``, updated in place.
        grads: ``(P,)``, dtype of ``params``.
        slots: ``(accumulator,)``, ``(P,)`` updated in place.
        h: ``learning_rate``, ``epsilon``.
    """
    if params.size == 0:  # nothing to write: launch nothing
        return
    (accumulator,) = slots
    f = scalar(params.dtype)
    launch(
        _adagrad_kernel(),
        grid_for(params.size),
        params,
        grads,
        accumulator,
        f(h["learning_rate"]),
        f(h["epsilon"]),
    )


# ---------------------------------------------------------------------- Adamax
@functools.cache
def _adamax_kernel() -> Any:
    @cuda.jit
    def adamax_kernel(
        params, grads, m, u, learning_rate, one_minus_beta_1, beta_2, bias_correction, epsilon
    ):
        """Adamax over flat (P,) buffers; bias_correction is 1 - beta_1**step."""
        for i in range(cuda.grid(1), params.size, cuda.gridsize(1)):
            g = grads[i]
            m_i = m[i]
            m_i = m_i + (g - m_i) * one_minus_beta_1
            u_i = _maximum(beta_2 * u[i], abs(g))
            m[i] = m_i
            u[i] = u_i
            params[i] = params[i] - (learning_rate * m_i) / (bias_correction * (u_i + epsilon))

    return adamax_kernel


def adamax(params: Any, grads: Any, slots: Sequence[Any | None], h: Mapping[str, float]) -> None:
    """Adamax, Adam with the infinity norm.

    Args:
        params: float32 or float64 device array ``(P,)``, updated in place.
        grads: ``(P,)``, dtype of ``params``.
        slots: ``(m, u)``, each ``(P,)`` updated in place.
        h: ``learning_rate``, ``beta_1``, ``beta_2``, ``epsilon``, ``bias_correction``.
    """
    if params.size == 0:  # nothing to write: launch nothing
        return
    m, u = slots
    f = scalar(params.dtype)
    launch(
        _adamax_kernel(),
        grid_for(params.size),
        params,
        grads,
        m,
        u,
        f(h["learning_rate"]),
        f(1.0 - h["beta_1"]),
        f(h["beta_2"]),
        f(h["bias_correction"]),
        f(h["epsilon"]),
    )


# ---------------------------------------------------------------------- Nadam
@functools.cache
def _nadam_kernel() -> Any:
    @cuda.jit
    def nadam_kernel(
        params,
        grads,
        m,
        v,
        learning_rate,
        one_minus_beta_1,
        one_minus_beta_2,
        m_coefficient,
        g_coefficient,
        v_correction,
        epsilon,
    ):
        """Nadam over flat (P,) buffers; the step's schedule is in the three host factors."""
        for i in range(cuda.grid(1), params.size, cuda.gridsize(1)):
            g = grads[i]
            m_i = m[i]
            m_i = m_i + (g - m_i) * one_minus_beta_1
            v_i = v[i]
            v_i = v_i + (g * g - v_i) * one_minus_beta_2
            m[i] = m_i
            v[i] = v_i
            m_hat = m_coefficient * m_i + g_coefficient * g
            v_hat = v_i / v_correction
            params[i] = params[i] - (learning_rate * m_hat) / (math.sqrt(v_hat) + epsilon)

    return nadam_kernel


def nadam(params: Any, grads: Any, slots: Sequence[Any | None], h: Mapping[str, float]) -> None:
    """Nadam with Keras's momentum schedule.

    Args:
        params: float32 or float64 device array ``(P,)``, updated in place.
        grads: ``(P,)``, dtype of ``params``.
        slots: ``(m, v)``, each ``(P,)`` updated in place.
        h: ``learning_rate``, ``beta_1``, ``beta_2``, ``epsilon`` and the step's
            schedule ``m_weight``, ``g_weight``, ``v_correction``.
    """
    if params.size == 0:  # nothing to write: launch nothing
        return
    m, v = slots
    f = scalar(params.dtype)
    launch(
        _nadam_kernel(),
        grid_for(params.size),
        params,
        grads,
        m,
        v,
        f(h["learning_rate"]),
        f(1.0 - h["beta_1"]),
        f(1.0 - h["beta_2"]),
        f(h["m_weight"]),
        f(h["g_weight"]),
        f(h["v_correction"]),
        f(h["epsilon"]),
    )


# ---------------------------------------------------------------------- AdamW
@functools.cache
def _adamw_kernel(amsgrad: bool) -> Any:
    @cuda.jit
    def adamw_kernel(
        params, grads, m, v, v_max, alpha, one_minus_beta_1, one_minus_beta_2, epsilon, decay
    ):
        """AdamW over flat (P,) buffers: w -= w * decay, then Adam (AMSGrad: v_max)."""
        for i in range(cuda.grid(1), params.size, cuda.gridsize(1)):
            g = grads[i]
            m_i = m[i]
            m_i = m_i + (g - m_i) * one_minus_beta_1
            v_i = v[i]
            v_i = v_i + (g * g - v_i) * one_minus_beta_2
            m[i] = m_i
            v[i] = v_i
            if amsgrad:
                v_i = _maximum(v_max[i], v_i)
                v_max[i] = v_i
            p = params[i]
            p = p - p * decay
            params[i] = p - (m_i * alpha) / (math.sqrt(v_i) + epsilon)

    return adamw_kernel


def adamw(params: Any, grads: Any, slots: Sequence[Any | None], h: Mapping[str, float]) -> None:
    """AdamW: Adam (AMSGrad when the ``v_max`` slot is given) after the decoupled decay.

    Args:
        params: float32 or float64 device array ``(P,)``, updated in place.
        grads: ``(P,)``, dtype of ``params``.
        slots: ``(m, v, v_max)``, each ``(P,)`` updated in place; ``v_max`` may be ``None``.
        h: ``alpha``, ``beta_1``, ``beta_2``, ``epsilon`` (as ``adam``) and ``decay``.
    """
    if params.size == 0:  # nothing to write: launch nothing
        return
    m, v, v_max = slots
    f = scalar(params.dtype)
    constants = (
        f(h["alpha"]),
        f(1.0 - h["beta_1"]),
        f(1.0 - h["beta_2"]),
        f(h["epsilon"]),
        f(h["decay"]),
    )
    kernel = _adamw_kernel(v_max is not None)
    # without AMSGrad the kernel never reads v_max: v stands in for it
    launch(
        kernel,
        grid_for(params.size),
        params,
        grads,
        m,
        v,
        v if v_max is None else v_max,
        *constants,
    )


# ---------------------------------------------------------------------- Adadelta
@functools.cache
def _adadelta_kernel() -> Any:
    @cuda.jit
    def adadelta_kernel(
        params,
        grads,
        accumulated_grad,
        accumulated_delta,
        learning_rate,
        rho,
        one_minus_rho,
        epsilon,
    ):
        """Adadelta over flat (P,) buffers."""
        for i in range(cuda.grid(1), params.size, cuda.gridsize(1)):
            g = grads[i]
            a_g = rho * accumulated_grad[i] + one_minus_rho * (g * g)
            a_d = accumulated_delta[i]
            delta = -(math.sqrt(a_d + epsilon) * g) / math.sqrt(a_g + epsilon)
            accumulated_grad[i] = a_g
            accumulated_delta[i] = rho * a_d + one_minus_rho * (delta * delta)
            params[i] = params[i] + learning_rate * delta

    return adadelta_kernel


def adadelta(params: Any, grads: Any, slots: Sequence[Any | None], h: Mapping[str, float]) -> None:
    """Adadelta.

    Args:
        params: float32 or float64 device array ``(P,)``, updated in place.
        grads: ``(P,)``, dtype of ``params``.
        slots: ``(accumulated_grad, accumulated_delta_var)``, each ``(P,)`` updated in place.
        h: ``learning_rate``, ``rho``, ``epsilon``.
    """
    if params.size == 0:  # nothing to write: launch nothing
        return
    accumulated_grad, accumulated_delta = slots
    f = scalar(params.dtype)
    launch(
        _adadelta_kernel(),
        grid_for(params.size),
        params,
        grads,
        accumulated_grad,
        accumulated_delta,
        f(h["learning_rate"]),
        f(h["rho"]),
        f(1.0 - h["rho"]),
        f(h["epsilon"]),
    )


# ---------------------------------------------------------------------- Lion
@functools.cache
def _lion_kernel(dtype: Any) -> Any:
    f = scalar(dtype)
    zero, one = f(0.0), f(1.0)

    @device_function
    def sign(x):
        """``numpy.sign``: -1, 0 or 1, NaN for NaN."""
        if x > zero:
            return one
        if x < zero:
            return -one
        return x  # 0 or NaN

    @cuda.jit
    def lion_kernel(
        params, grads, m, learning_rate, beta_1, one_minus_beta_1, beta_2, one_minus_beta_2
    ):
        """Lion over flat (P,) buffers."""
        for i in range(cuda.grid(1), params.size, cuda.gridsize(1)):
            g = grads[i]
            m_i = m[i]
            direction = sign(m_i * beta_1 + g * one_minus_beta_1)
            params[i] = params[i] - learning_rate * direction
            m[i] = m_i * beta_2 + g * one_minus_beta_2

    return lion_kernel


def lion(params: Any, grads: Any, slots: Sequence[Any | None], h: Mapping[str, float]) -> None:
    """Lion.

    Args:
        params: float32 or float64 device array ``(P,)``, updated in place.
        grads: ``(P,)``, dtype of ``params``.
        slots: ``(momentum,)``, ``(P,)`` updated in place.
        h: ``learning_rate``, ``beta_1``, ``beta_2``.
    """
    if params.size == 0:  # nothing to write: launch nothing
        return
    (m,) = slots
    f = scalar(params.dtype)
    launch(
        _lion_kernel(params.dtype),
        grid_for(params.size),
        params,
        grads,
        m,
        f(h["learning_rate"]),
        f(h["beta_1"]),
        f(1.0 - h["beta_1"]),
        f(h["beta_2"]),
        f(1.0 - h["beta_2"]),
    )


# ---------------------------------------------------------------------- FTRL
@functools.cache
def _ftrl_kernel(dtype: Any) -> Any:
    two = scalar(dtype)(2.0)

    @cuda.jit
    def ftrl_kernel(params, grads, accumulator, linear, learning_rate, power, l1, l2, shrinkage):
        """FTRL-Proximal over flat (P,) buffers."""
        for i in range(cuda.grid(1), params.size, cuda.gridsize(1)):
            g = grads[i]
            w = params[i]
            a = accumulator[i]
            new = a + g * g
            new_power = new**power
            z = linear[i] + ((g + shrinkage * w) - ((new_power - a**power) / learning_rate) * w)
            quadratic = new_power / learning_rate + two * l2
            clipped = min(max(z, -l1), l1)
            linear[i] = z
            accumulator[i] = new
            params[i] = (clipped - z) / quadratic

    return ftrl_kernel


def ftrl(params: Any, grads: Any, slots: Sequence[Any | None], h: Mapping[str, float]) -> None:
    """FTRL-Proximal.

    Args:
        params: float32 or float64 device array ``(P,)``, updated in place.
        grads: ``(P,)``, dtype of ``params``.
        slots: ``(accumulator, linear)``, each ``(P,)`` updated in place.
        h: ``learning_rate``, ``power``, ``l1``, ``l2``, ``shrinkage``.
    """
    if params.size == 0:  # nothing to write: launch nothing
        return
    accumulator, linear = slots
    f = scalar(params.dtype)
    launch(
        _ftrl_kernel(params.dtype),
        grid_for(params.size),
        params,
        grads,
        accumulator,
        linear,
        f(h["learning_rate"]),
        f(h["power"]),
        f(h["l1"]),
        f(h["l2"]),
        f(h["shrinkage"]),
    )


# ---------------------------------------------------------------------- around the rules
@functools.cache
def _clip_and_decay_kernel(dtype: Any, scaled: bool, clipped: bool) -> Any:
    @cuda.jit
    def clip_and_decay_kernel(params, grads, out, scale, clipvalue, decay):
        """params -= params * decay; out = clip(grads * scale[0], -clipvalue, clipvalue)."""
        for i in range(cuda.grid(1), params.size, cuda.gridsize(1)):
            p = params[i]
            params[i] = p - p * decay
            g = grads[i]
            if scaled:
                g = g * scale[0]
            if clipped:
                g = min(max(g, -clipvalue), clipvalue)
            out[i] = g

    return clip_and_decay_kernel


@functools.cache
def _decay_kernel() -> Any:
    @cuda.jit
    def decay_kernel(params, decay):
        """params -= params * decay over a flat (P,) buffer."""
        for i in range(cuda.grid(1), params.size, cuda.gridsize(1)):
            p = params[i]
            params[i] = p - p * decay

    return decay_kernel


def clip_and_decay(
    params: Any,
    grads: Any,
    out: Any | None,
    *,
    scale: Any | None = None,
    clipvalue: float | None = None,
    decay: float = 0.0,
) -> None:
    """``params -= params * decay``; ``out = clip(grads * scale[0], -clipvalue, clipvalue)``
    in one launch (``Engine.clip_and_decay``).

    Args:
        params: float32 or float64 device array ``(P,)``, updated in place.
        grads: ``(P,)``, dtype of ``params``, left unchanged.
        out: ``(P,)``, written; ``None`` to decay ``params`` only.
        scale: ``(1,)`` device array of the factor, or ``None``.
        clipvalue: the bound of each gradient, or ``None``.
        decay: the host number ``weight_decay * learning_rate``.
    """
    if params.size == 0:  # nothing to write: launch nothing
        return
    f = scalar(params.dtype)
    grid = grid_for(params.size)
    if out is None:
        if decay:
            launch(_decay_kernel(), grid, params, f(decay))
        return
    kernel = _clip_and_decay_kernel(params.dtype, scale is not None, clipvalue is not None)
    # a kernel without a factor never reads scale: grads stands in for it
    factor = grads if scale is None else scale
    bound = f(0.0 if clipvalue is None else clipvalue)
    launch(kernel, grid, params, grads, out, factor, bound, f(decay))


@functools.cache
def _norm_scale_kernel(dtype: Any, each: bool) -> Any:
    f = scalar(dtype)

    @cuda.jit
    def norm_scale_kernel(squares, clipnorm, out):
        """out[k] = clipnorm / max(sqrt(squares[k]), clipnorm) (each), or out[0] the same
        for the sum of all the squares, NaN when it is not finite; float64 sums in."""
        if each:
            for k in range(cuda.grid(1), squares.size, cuda.gridsize(1)):
                norm = f(math.sqrt(squares[k]))
                out[k] = clipnorm / max(norm, clipnorm)
        elif cuda.grid(1) == 0:
            total = squares[0] - squares[0]  # 0.0 in float64
            for k in range(squares.size):
                total += squares[k]
            norm = f(math.sqrt(total))
            out[0] = clipnorm / max(norm, clipnorm) + (norm - norm)

    return norm_scale_kernel


def gradient_norm_scale(
    grads: Any,
    segments: Sequence[tuple[int, int]],
    clipnorm: float,
    out: Any,
    *,
    each: bool = False,
) -> None:
    """The clipping factors of ``Engine.gradient_norm_scale``: one float64 sum of squares
    per segment (``reductions.map_sum``) into a reused scratch, then one launch that turns
    them into ``clipnorm / max(norm, clipnorm)``, per segment or for all together.

    Args:
        grads: float32 or float64 device array ``(P,)``.
        segments: ``(start, stop)`` ranges of ``grads``.
        clipnorm: the positive bound.
        out: device array of ``grads``'s dtype, ``(len(segments),)`` with ``each``,
            else ``(1,)``; written.
        each: one factor per segment rather than one for all.
    """
    count = len(segments)
    squares = scratch("clip_norm_squares", max(count, 1), np.float64)
    if count == 0:
        squares[:1].copy_to_device(np.zeros(1))
    for k, (start, stop) in enumerate(segments):
        map_sum("penalty", grads[start:stop], grads[start:stop], squares[k : k + 1], c2=1.0)
    f = scalar(grads.dtype)
    kernel = _norm_scale_kernel(grads.dtype, each)
    launch(kernel, grid_for(max(count, 1)), squares[: max(count, 1)], f(clipnorm), out)


@functools.cache
def _moving_average_kernel() -> Any:
    @cuda.jit
    def moving_average_kernel(average, values, momentum, one_minus_momentum):
        """average = momentum * average + (1 - momentum) * values over flat (P,) buffers."""
        for i in range(cuda.grid(1), average.size, cuda.gridsize(1)):
            average[i] = momentum * average[i] + one_minus_momentum * values[i]

    return moving_average_kernel


def moving_average(average: Any, values: Any, momentum: float) -> None:
    """``average = momentum * average + (1 - momentum) * values`` in one launch.

    Args:
        average: float32 or float64 device array ``(P,)``, updated in place.
        values: ``(P,)`` of ``average``'s dtype.
        momentum: a host number in ``[0, 1]``.
    """
    if average.size == 0:  # nothing to write: launch nothing
        return
    f = scalar(average.dtype)
    launch(
        _moving_average_kernel(),
        grid_for(average.size),
        average,
        values,
        f(momentum),
        f(1.0 - momentum),
    )


#: The launcher of each update rule (the names of ``dlcore.backends.names.OPTIMIZER_RULES``).
LAUNCHERS: dict[str, Callable[[Any, Any, Sequence[Any | None], Mapping[str, float]], None]] = {
    "sgd": sgd,
    "adam": adam,
    "rmsprop": rmsprop,
    "adagrad": adagrad,
    "adamax": adamax,
    "nadam": nadam,
    "adamw": adamw,
    "adadelta": adadelta,
    "lion": lion,
    "ftrl": ftrl,
}


def ptx_variants() -> Iterator[PtxVariant]:
    """Every optimizer kernel variant, for each dtype, as launched."""
    for dtype in FLOAT_DTYPES:
        p = array(dtype, 1)
        s = numba_type(dtype)
        short = dtype.name.replace("float", "f")
        yield f"sgd[{short}]", _sgd_kernel(), (p, p, s)
        for nesterov in (False, True):
            label = "nesterov" if nesterov else "momentum"
            yield f"sgd[{label},{short}]", _sgd_momentum_kernel(nesterov), (p, p, p, s, s)
        yield f"adam[{short}]", _adam_kernel(), (p,) * 4 + (s,) * 4
        yield f"adam[amsgrad,{short}]", _amsgrad_kernel(), (p,) * 5 + (s,) * 4
        yield f"rmsprop[{short}]", _rmsprop_kernel(), (p,) * 3 + (s,) * 4
        yield f"rmsprop[centered,{short}]", _rmsprop_centered_kernel(), (p,) * 4 + (s,) * 4
        yield f"rmsprop[momentum,{short}]", _rmsprop_momentum_kernel(), (p,) * 4 + (s,) * 5
        yield (
            f"rmsprop[centered,momentum,{short}]",
            _rmsprop_centered_momentum_kernel(),
            (p,) * 5 + (s,) * 5,
        )
        yield f"adagrad[{short}]", _adagrad_kernel(), (p,) * 3 + (s,) * 2
        yield f"adamax[{short}]", _adamax_kernel(), (p,) * 4 + (s,) * 5
        yield f"nadam[{short}]", _nadam_kernel(), (p,) * 4 + (s,) * 7
        for amsgrad in (False, True):
            label = "amsgrad," if amsgrad else ""
            yield f"adamw[{label}{short}]", _adamw_kernel(amsgrad), (p,) * 5 + (s,) * 5
        yield f"adadelta[{short}]", _adadelta_kernel(), (p,) * 4 + (s,) * 4
        yield f"lion[{short}]", _lion_kernel(dtype), (p,) * 3 + (s,) * 5
        yield f"ftrl[{short}]", _ftrl_kernel(dtype), (p,) * 4 + (s,) * 5
        for scaled in (False, True):
            for clipped in (False, True):
                label = ",".join(["scaled"] * scaled + ["clipped"] * clipped + [short])
                kernel = _clip_and_decay_kernel(dtype, scaled, clipped)
                yield f"clip_and_decay[{label}]", kernel, (p,) * 4 + (s,) * 2
        yield f"decay[{short}]", _decay_kernel(), (p, s)
        d = array(np.float64, 1)
        for each in (False, True):
            label = "each," if each else ""
            yield f"norm_scale[{label}{short}]", _norm_scale_kernel(dtype, each), (d, s, p)
        yield f"moving_average[{short}]", _moving_average_kernel(), (p, p, s, s)
