"""Optimizer updates written once against an array API namespace ``xp``.

Every function updates flat float buffers of shape ``(P,)`` in place: the
parameters, and the optimizer's state slots. Layers hold views into the
parameter buffer, so a buffer is never rebound, only written through
(``params -= ...``, ``m[...] = ...``). Step-dependent factors (bias corrections,
Nadam's momentum schedule) arrive as Python floats computed on the host, so the
engine does no scalar work. The rules are Keras 3's, documented on the matching
methods of ``base.Engine``.
"""

from __future__ import annotations

import math
from typing import Any

Array = Any


def sgd_update(
    xp: Any,
    params: Array,
    grads: Array,
    velocity: Array | None,
    *,
    learning_rate: float,
    momentum: float,
    nesterov: bool,
) -> None:
    """Stochastic gradient descent, with momentum and Nesterov momentum.

    Args:
        xp: the array namespace of the buffers.
        params: float ``(P,)``, updated in place.
        grads: float ``(P,)``.
        velocity: float ``(P,)`` updated in place, or ``None`` when ``momentum``
            is 0 (then ``params -= learning_rate * grads``).
        learning_rate: step size.
        momentum: velocity decay in ``[0, 1]``.
        nesterov: apply the velocity's look-ahead ``momentum * velocity`` too.
    """
    if velocity is None:
        params -= learning_rate * grads
        return
    velocity *= momentum
    velocity -= learning_rate * grads
    if nesterov:
        params += momentum * velocity - learning_rate * grads
    else:
        params += velocity


def adam_update(
    xp: Any,
    params: Array,
    grads: Array,
    m: Array,
    v: Array,
    v_max: Array | None,
    *,
    learning_rate: float,
    beta_1: float,
    beta_2: float,
    epsilon: float,
    step: int,
) -> None:
    """Adam, or AMSGrad when ``v_max`` is given.

    Args:
        xp: the array namespace of the buffers.
        params: float ``(P,)``, updated in place.
        grads: float ``(P,)``.
        m: float ``(P,)``, first-moment estimate, updated in place.
        v: float ``(P,)``, second-moment estimate, updated in place.
        v_max: float ``(P,)``, running maximum of ``v`` (AMSGrad), updated in
            place, or ``None`` for plain Adam.
        learning_rate: step size.
        beta_1: decay rate of ``m``.
        beta_2: decay rate of ``v``.
        epsilon: added to ``sqrt(v)`` ("epsilon hat" of Kingma and Ba).
        step: the number of this step, counting from 1.
    """
    # Both bias corrections fold into one host scalar, as Keras does.
    alpha = learning_rate * math.sqrt(1.0 - beta_2**step) / (1.0 - beta_1**step)
    m += (grads - m) * (1.0 - beta_1)
    v += (grads * grads - v) * (1.0 - beta_2)
    if v_max is not None:
        v_max[...] = xp.maximum(v_max, v)
        v = v_max
    params -= (m * alpha) / (xp.sqrt(v) + epsilon)


def rmsprop_update(
    xp: Any,
    params: Array,
    grads: Array,
    velocity: Array,
    average_grad: Array | None,
    momentum_buffer: Array | None,
    *,
    learning_rate: float,
    rho: float,
    momentum: float,
    epsilon: float,
) -> None:
    """RMSprop, optionally centered and with (plain) momentum.

    Args:
        xp: the array namespace of the buffers.
        params: float ``(P,)``, updated in place.
        grads: float ``(P,)``.
        velocity: float ``(P,)``, moving average of ``grads**2``, updated in place.
        average_grad: float ``(P,)``, moving average of ``grads`` (centered
            RMSprop), updated in place, or ``None``.
        momentum_buffer: float ``(P,)`` updated in place, or ``None`` when
            ``momentum`` is 0.
        learning_rate: step size.
        rho: decay rate of the moving averages.
        momentum: decay rate of ``momentum_buffer``.
        epsilon: added under the square root.
    """
    velocity *= rho
    velocity += (1.0 - rho) * (grads * grads)
    if average_grad is not None:
        average_grad *= rho
        average_grad += (1.0 - rho) * grads
        denominator = velocity - average_grad * average_grad + epsilon
    else:
        denominator = velocity + epsilon
    increment = (learning_rate * grads) / xp.sqrt(denominator)
    if momentum_buffer is not None:
        momentum_buffer *= momentum
        momentum_buffer += increment
        params -= momentum_buffer
    else:
        params -= increment


def adagrad_update(
    xp: Any,
    params: Array,
    grads: Array,
    accumulator: Array,
    *,
    learning_rate: float,
    epsilon: float,
) -> None:
    """Adagrad.

    Args:
        xp: the array namespace of the buffers.
        params: float ``(P,)``, updated in place.
        grads: float ``(P,)``.
        accumulator: float ``(P,)``, sum of ``grads**2`` so far plus its initial
            value, updated in place.
        learning_rate: step size.
        epsilon: added under the square root.
    """
    accumulator += grads * grads
    params -= (learning_rate * grads) / xp.sqrt(accumulator + epsilon)


def adamax_update(
    xp: Any,
    params: Array,
    grads: Array,
    m: Array,
    u: Array,
    *,
    learning_rate: float,
    beta_1: float,
    beta_2: float,
    epsilon: float,
    step: int,
) -> None:
    """Adamax, Adam with the infinity norm.

    Args:
        xp: the array namespace of the buffers.
        params: float ``(P,)``, updated in place.
        grads: float ``(P,)``.
        m: float ``(P,)``, first-moment estimate, updated in place.
        u: float ``(P,)``, exponentially weighted infinity norm, updated in place.
        learning_rate: step size.
        beta_1: decay rate of ``m``.
        beta_2: decay rate of ``u``.
        epsilon: added to ``u``.
        step: the number of this step, counting from 1.
    """
    m += (grads - m) * (1.0 - beta_1)
    u[...] = xp.maximum(beta_2 * u, xp.abs(grads))
    params -= (learning_rate * m) / ((1.0 - beta_1**step) * (u + epsilon))


def nadam_update(
    xp: Any,
    params: Array,
    grads: Array,
    m: Array,
    v: Array,
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
    """Nadam, Adam with Nesterov momentum on Keras's momentum schedule.

    Args:
        xp: the array namespace of the buffers.
        params: float ``(P,)``, updated in place.
        grads: float ``(P,)``.
        m: float ``(P,)``, first-moment estimate, updated in place.
        v: float ``(P,)``, second-moment estimate, updated in place.
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
    m += (grads - m) * (1.0 - beta_1)
    v += (grads * grads - v) * (1.0 - beta_2)
    m_hat = (mu_next / (1.0 - mu_product_next)) * m + ((1.0 - mu_t) / (1.0 - mu_product)) * grads
    v_hat = v / (1.0 - beta_2**step)
    params -= (learning_rate * m_hat) / (xp.sqrt(v_hat) + epsilon)
