"""Optimizer updates as single fused loops over every core, compiled by Numba's CPU JIT.

A NumPy optimizer step is a dozen elementwise functions, each a pass over the
whole buffer; here each optimizer is one loop that reads every element once
and runs on all cores (``prange``). The loops repeat the operation order of
``xp_optimizers`` with the scalars in the buffer's dtype, so they round as NumPy
does. Numba is optional: ``available()`` says whether it can be used, and
nothing here imports it until a kernel is first asked for. ``DLCORE_CPU_JIT=0``
turns the JIT off (the NumPy engine then uses ``cpu_chunks``).
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Callable
from functools import cache
from typing import Any


@cache
def available() -> bool:
    """Whether the NumPy engine should use these kernels: Numba is installed and
    ``DLCORE_CPU_JIT`` is not ``0``."""
    if os.environ.get("DLCORE_CPU_JIT", "1") == "0":
        return False
    return importlib.util.find_spec("numba") is not None


# The kernels' loop over the elements: the builtin until Numba is imported, then Numba's
# parallel range, which the compiler looks up here when it compiles a kernel.
prange: Any = range


@cache
def kernel(name: str) -> Callable[..., None]:
    """The compiled update ``name`` (one of ``KERNELS``); compiled on first call per dtype."""
    global prange
    import numba

    prange = numba.prange
    return numba.njit(parallel=True, cache=True, nogil=True)(KERNELS[name])


# Each kernel updates 1-D arrays of one float dtype in place; scalars arrive in that dtype.
def _sgd(params, grads, learning_rate):
    for i in prange(params.shape[0]):
        params[i] -= learning_rate * grads[i]


def _sgd_momentum(params, grads, velocity, learning_rate, momentum, nesterov):
    for i in prange(params.shape[0]):
        step = learning_rate * grads[i]
        v = velocity[i] * momentum - step
        velocity[i] = v
        if nesterov:
            params[i] += momentum * v - step
        else:
            params[i] += v


def _adam(params, grads, m, v, v_max, alpha, one_minus_beta_1, one_minus_beta_2, epsilon):
    amsgrad = v_max.shape[0] > 0
    for i in prange(params.shape[0]):
        g = grads[i]
        m_i = m[i] + (g - m[i]) * one_minus_beta_1
        v_i = v[i] + (g * g - v[i]) * one_minus_beta_2
        m[i] = m_i
        v[i] = v_i
        if amsgrad:
            v_i = max(v_max[i], v_i)
            v_max[i] = v_i
        params[i] -= (m_i * alpha) / (math.sqrt(v_i) + epsilon)


def _rmsprop(
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
    centered = average_grad.shape[0] > 0
    with_momentum = momentum_buffer.shape[0] > 0
    for i in prange(params.shape[0]):
        g = grads[i]
        v = velocity[i] * rho + one_minus_rho * (g * g)
        velocity[i] = v
        if centered:
            a = average_grad[i] * rho + one_minus_rho * g
            average_grad[i] = a
            denominator = v - a * a + epsilon
        else:
            denominator = v + epsilon
        increment = (learning_rate * g) / math.sqrt(denominator)
        if with_momentum:
            b = momentum_buffer[i] * momentum + increment
            momentum_buffer[i] = b
            params[i] -= b
        else:
            params[i] -= increment


def _adagrad(params, grads, accumulator, learning_rate, epsilon):
    for i in prange(params.shape[0]):
        g = grads[i]
        a = accumulator[i] + g * g
        accumulator[i] = a
        params[i] -= (learning_rate * g) / math.sqrt(a + epsilon)


def _adamax(params, grads, m, u, learning_rate, one_minus_beta_1, beta_2, correction, epsilon):
    for i in prange(params.shape[0]):
        g = grads[i]
        m_i = m[i] + (g - m[i]) * one_minus_beta_1
        m[i] = m_i
        u_i = max(beta_2 * u[i], abs(g))
        u[i] = u_i
        params[i] -= (learning_rate * m_i) / (correction * (u_i + epsilon))


def _nadam(
    params,
    grads,
    m,
    v,
    learning_rate,
    one_minus_beta_1,
    one_minus_beta_2,
    m_weight,
    g_weight,
    v_correction,
    epsilon,
):
    for i in prange(params.shape[0]):
        g = grads[i]
        m_i = m[i] + (g - m[i]) * one_minus_beta_1
        v_i = v[i] + (g * g - v[i]) * one_minus_beta_2
        m[i] = m_i
        v[i] = v_i
        m_hat = m_weight * m_i + g_weight * g
        params[i] -= (learning_rate * m_hat) / (math.sqrt(v_i / v_correction) + epsilon)


KERNELS: dict[str, Callable[..., None]] = {
    "sgd": _sgd,
    "sgd_momentum": _sgd_momentum,
    "adam": _adam,
    "rmsprop": _rmsprop,
    "adagrad": _adagrad,
    "adamax": _adamax,
    "nadam": _nadam,
}
