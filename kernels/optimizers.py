"""Optimizer updates: one kernel launch per step over flat parameter buffers.

Each kernel walks the flat ``(P,)`` buffers with a grid-stride loop, reads every
element of every buffer once into registers, applies the rule and writes the
parameters and state slots back once. The rules, and the order of operations
that fixes their rounding, are those of ``backends/xp_optimizers.py``: the
kernels evaluate the same expressions in the same order, so on the simulator
they agree with the NumPy engine to the last bit.

Whatever depends on the step (bias corrections, Nadam's momentum schedule) is
folded on the host into one scalar per factor the reference multiplies or
divides by, converted to the buffers' dtype, exactly as NumPy converts a Python
float it combines with an array of that dtype. An optional buffer that is
``None`` selects a kernel variant without it; no dummy arrays are passed.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from typing import Any

from numba import cuda

from .common import (
    FLOAT_DTYPES,
    PtxVariant,
    array,
    device_function,
    grid_for,
    numba_type,
    scalar,
)


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


def sgd_update(
    params: Any,
    grads: Any,
    velocity: Any | None,
    *,
    learning_rate: float,
    momentum: float,
    nesterov: bool,
) -> None:
    """SGD, with momentum when ``velocity`` is given (Nesterov if ``nesterov``).

    Args:
        params: float32 or float64 device array ``(P,)``, updated in place.
        grads: ``(P,)``, dtype of ``params``.
        velocity: ``(P,)`` updated in place, or ``None`` when ``momentum`` is 0.
        learning_rate: step size.
        momentum: velocity decay.
        nesterov: apply the look-ahead ``momentum * velocity`` too.
    """
    f = scalar(params.dtype)
    grid = grid_for(params.size)
    if velocity is None:
        _sgd_kernel()[grid](params, grads, f(learning_rate))
    else:
        kernel = _sgd_momentum_kernel(bool(nesterov))
        kernel[grid](params, grads, velocity, f(learning_rate), f(momentum))


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


def adam_update(
    params: Any,
    grads: Any,
    m: Any,
    v: Any,
    v_max: Any | None,
    *,
    learning_rate: float,
    beta_1: float,
    beta_2: float,
    epsilon: float,
    step: int,
) -> None:
    """Adam, or AMSGrad when ``v_max`` is given.

    Args:
        params: float32 or float64 device array ``(P,)``, updated in place.
        grads: ``(P,)``, dtype of ``params``.
        m: ``(P,)`` first-moment estimate, updated in place.
        v: ``(P,)`` second-moment estimate, updated in place.
        v_max: ``(P,)`` running maximum of ``v``, updated in place, or ``None``.
        learning_rate: step size.
        beta_1: decay rate of ``m``.
        beta_2: decay rate of ``v``.
        epsilon: added to ``sqrt(v)``.
        step: the number of this step, counting from 1.
    """
    f = scalar(params.dtype)
    alpha = learning_rate * math.sqrt(1.0 - beta_2**step) / (1.0 - beta_1**step)
    constants = f(alpha), f(1.0 - beta_1), f(1.0 - beta_2), f(epsilon)
    grid = grid_for(params.size)
    if v_max is None:
        _adam_kernel()[grid](params, grads, m, v, *constants)
    else:
        _amsgrad_kernel()[grid](params, grads, m, v, v_max, *constants)


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


def rmsprop_update(
    params: Any,
    grads: Any,
    velocity: Any,
    average_grad: Any | None,
    momentum_buffer: Any | None,
    *,
    learning_rate: float,
    rho: float,
    momentum: float,
    epsilon: float,
) -> None:
    """RMSprop, centered when ``average_grad`` is given, with momentum when
    ``momentum_buffer`` is given.

    Args:
        params: float32 or float64 device array ``(P,)``, updated in place.
        grads: ``(P,)``, dtype of ``params``.
        velocity: ``(P,)`` moving average of ``grads**2``, updated in place.
        average_grad: ``(P,)`` moving average of ``grads``, updated in place, or ``None``.
        momentum_buffer: ``(P,)`` updated in place, or ``None`` when ``momentum`` is 0.
        learning_rate: step size.
        rho: decay rate of the moving averages.
        momentum: decay rate of ``momentum_buffer``.
        epsilon: added under the square root.
    """
    f = scalar(params.dtype)
    lr, rho_, one_minus_rho, eps = f(learning_rate), f(rho), f(1.0 - rho), f(epsilon)
    grid = grid_for(params.size)
    if average_grad is None and momentum_buffer is None:
        _rmsprop_kernel()[grid](params, grads, velocity, lr, rho_, one_minus_rho, eps)
    elif momentum_buffer is None:
        _rmsprop_centered_kernel()[grid](
            params, grads, velocity, average_grad, lr, rho_, one_minus_rho, eps
        )
    elif average_grad is None:
        _rmsprop_momentum_kernel()[grid](
            params, grads, velocity, momentum_buffer, lr, rho_, one_minus_rho, f(momentum), eps
        )
    else:
        _rmsprop_centered_momentum_kernel()[grid](
            params,
            grads,
            velocity,
            average_grad,
            momentum_buffer,
            lr,
            rho_,
            one_minus_rho,
            f(momentum),
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


def adagrad_update(
    params: Any, grads: Any, accumulator: Any, *, learning_rate: float, epsilon: float
) -> None:
    """Adagrad.

    Args:
        params: float32 or float64 device array ``(P,)``, updated in place.
        grads: ``(P,)``, dtype of ``params``.
        accumulator: ``(P,)`` sum of ``grads**2`` so far, updated in place.
        learning_rate: step size.
        epsilon: added under the square root.
    """
    f = scalar(params.dtype)
    _adagrad_kernel()[grid_for(params.size)](
        params, grads, accumulator, f(learning_rate), f(epsilon)
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


def adamax_update(
    params: Any,
    grads: Any,
    m: Any,
    u: Any,
    *,
    learning_rate: float,
    beta_1: float,
    beta_2: float,
    epsilon: float,
    step: int,
) -> None:
    """Adamax, Adam with the infinity norm.

    Args:
        params: float32 or float64 device array ``(P,)``, updated in place.
        grads: ``(P,)``, dtype of ``params``.
        m: ``(P,)`` first-moment estimate, updated in place.
        u: ``(P,)`` exponentially weighted infinity norm, updated in place.
        learning_rate: step size.
        beta_1: decay rate of ``m``.
        beta_2: decay rate of ``u``.
        epsilon: added to ``u``.
        step: the number of this step, counting from 1.
    """
    f = scalar(params.dtype)
    _adamax_kernel()[grid_for(params.size)](
        params,
        grads,
        m,
        u,
        f(learning_rate),
        f(1.0 - beta_1),
        f(beta_2),
        f(1.0 - beta_1**step),
        f(epsilon),
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


def nadam_update(
    params: Any,
    grads: Any,
    m: Any,
    v: Any,
    *,
    learning_rate: float,
    beta_1: float,
    beta_2: float,
    epsilon: float,
    step: int,
    mu_t: float,
    mu_next: float,
    mu_product: float,
    mu_product_next: float,
) -> None:
    """Nadam with Keras's momentum schedule.

    Args:
        params: float32 or float64 device array ``(P,)``, updated in place.
        grads: ``(P,)``, dtype of ``params``.
        m: ``(P,)`` first-moment estimate, updated in place.
        v: ``(P,)`` second-moment estimate, updated in place.
        learning_rate: step size.
        beta_1: decay rate of ``m``.
        beta_2: decay rate of ``v``.
        epsilon: added to ``sqrt(v_hat)``.
        step: the number of this step, counting from 1.
        mu_t: the momentum of this step.
        mu_next: the momentum of the next step.
        mu_product: the product of the momenta of steps 1 to ``step``.
        mu_product_next: ``mu_product * mu_next``.
    """
    f = scalar(params.dtype)
    _nadam_kernel()[grid_for(params.size)](
        params,
        grads,
        m,
        v,
        f(learning_rate),
        f(1.0 - beta_1),
        f(1.0 - beta_2),
        f(mu_next / (1.0 - mu_product_next)),
        f((1.0 - mu_t) / (1.0 - mu_product)),
        f(1.0 - beta_2**step),
        f(epsilon),
    )


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
