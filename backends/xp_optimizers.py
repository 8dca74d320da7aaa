"""The optimizer update rules, written once against an array API namespace ``xp``.

These are the reference of ``Engine.optimizer_step``: ``STEPS`` maps each name of
``names.OPTIMIZER_RULES`` to a function ``step(xp, params, grads, slots, h)`` that
updates flat float buffers of shape ``(P,)`` in place: the parameters, and the
optimizer's state slots (``None`` for an optional slot not in use). Layers hold views
into the parameter buffer, so a buffer is never rebound, only written through
(``params -= ...``, ``m[...] = ...``). The hyperparameters ``h`` are Python floats
computed on the host by the optimizer, step-dependent factors (bias corrections,
Nadam's momentum schedule) included, so the engine does no scalar work. The rules
are Keras 3's; each function's docstring names its slots, in order, and its
hyperparameters.

The fast versions (``cpu_jit``, ``cpu_chunks``, ``kernels/optimizers.py``) repeat the
operation order written here, so that they round the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

Array = Any
Step = Callable[[Any, Array, Array, Sequence[Array], Mapping[str, float]], None]


def sgd(
    xp: Any, params: Array, grads: Array, slots: Sequence[Array], h: Mapping[str, float]
) -> None:
    """Stochastic gradient descent, with momentum and Nesterov momentum.

    Slots: ``velocity``, or ``None`` when the momentum is 0 (then
    ``w -= learning_rate * g``). Hyperparameters: ``learning_rate``; ``momentum``,
    the velocity's decay in ``[0, 1]``; ``nesterov``, true to apply the velocity's
    look-ahead ``momentum * velocity`` too.

    ``velocity = momentum * velocity - learning_rate * g``; ``w += velocity``, or
    with Nesterov ``w += momentum * velocity - learning_rate * g``.
    """
    (velocity,) = slots
    learning_rate = h["learning_rate"]
    if velocity is None:
        params -= learning_rate * grads
        return
    momentum = h["momentum"]
    velocity *= momentum
    velocity -= learning_rate * grads
    if h["nesterov"]:
        params += momentum * velocity - learning_rate * grads
    else:
        params += velocity


def adam(
    xp: Any, params: Array, grads: Array, slots: Sequence[Array], h: Mapping[str, float]
) -> None:
    """Adam, or AMSGrad when ``v_max`` is given.

    Slots: ``m``, the first-moment estimate; ``v``, the second-moment estimate;
    ``v_max``, the running maximum of ``v`` (AMSGrad), or ``None`` for plain Adam.
    Hyperparameters: ``alpha``, the step size with both bias corrections,
    ``learning_rate * sqrt(1 - beta_2**t) / (1 - beta_1**t)`` at step ``t`` (as
    Keras folds them); ``beta_1`` and ``beta_2``, the decay rates of ``m`` and ``v``;
    ``epsilon``, added to ``sqrt(v)`` ("epsilon hat" of Kingma and Ba).

    ``m += (g - m) * (1 - beta_1)``; ``v += (g**2 - v) * (1 - beta_2)``; AMSGrad:
    ``v_max = max(v_max, v)`` in place of ``v``; ``w -= alpha * m / (sqrt(v) + epsilon)``.
    """
    m, v, v_max = slots
    m += (grads - m) * (1.0 - h["beta_1"])
    v += (grads * grads - v) * (1.0 - h["beta_2"])
    if v_max is not None:
        v_max[...] = xp.maximum(v_max, v)
        v = v_max
    params -= (m * h["alpha"]) / (xp.sqrt(v) + h["epsilon"])


def rmsprop(
    xp: Any, params: Array, grads: Array, slots: Sequence[Array], h: Mapping[str, float]
) -> None:
    """RMSprop, optionally centered and with (plain) momentum.

    Slots: ``velocity``, the moving average of ``g**2``; ``average_grad``, the moving
    average of ``g`` (centered RMSprop), or ``None``; ``momentum_buffer``, or ``None``
    when the momentum is 0. Hyperparameters: ``learning_rate``; ``rho``, the decay
    rate of the moving averages; ``momentum``, the decay rate of ``momentum_buffer``;
    ``epsilon``, added under the square root.

    ``velocity = rho * velocity + (1 - rho) * g**2``; centered:
    ``average_grad = rho * average_grad + (1 - rho) * g`` and
    ``denominator = velocity - average_grad**2 + epsilon``, else ``velocity + epsilon``;
    ``increment = learning_rate * g / sqrt(denominator)``; with momentum
    ``buffer = momentum * buffer + increment; w -= buffer``, else ``w -= increment``.
    """
    velocity, average_grad, momentum_buffer = slots
    rho = h["rho"]
    velocity *= rho
    velocity += (1.0 - rho) * (grads * grads)
    if average_grad is not None:
        average_grad *= rho
        average_grad += (1.0 - rho) * grads
        denominator = velocity - average_grad * average_grad + h["epsilon"]
    else:
        denominator = velocity + h["epsilon"]
    increment = (h["learning_rate"] * grads) / xp.sqrt(denominator)
    if momentum_buffer is not None:
        momentum_buffer *= h["momentum"]
        momentum_buffer += increment
        params -= momentum_buffer
    else:
        params -= increment


def adagrad(
    xp: Any, params: Array, grads: Array, slots: Sequence[Array], h: Mapping[str, float]
) -> None:
    """Adagrad.

    Slots: ``accumulator``, the sum of ``g**2`` so far plus its initial value.
    Hyperparameters: ``learning_rate``; ``epsilon``, added under the square root.

    ``accumulator += g**2``; ``w -= learning_rate * g / sqrt(accumulator + epsilon)``.
    """
    (accumulator,) = slots
    accumulator += grads * grads
    params -= (h["learning_rate"] * grads) / xp.sqrt(accumulator + h["epsilon"])


def adamax(
    xp: Any, params: Array, grads: Array, slots: Sequence[Array], h: Mapping[str, float]
) -> None:
    """Adamax, Adam with the infinity norm.

    Slots: ``m``, the first-moment estimate; ``u``, the exponentially weighted
    infinity norm. Hyperparameters: ``learning_rate``; ``beta_1`` and ``beta_2``, the
    decay rates of ``m`` and ``u``; ``epsilon``, added to ``u``; ``bias_correction``,
    ``1 - beta_1**t`` at step ``t``.

    ``m += (g - m) * (1 - beta_1)``; ``u = max(beta_2 * u, |g|)``;
    ``w -= learning_rate * m / (bias_correction * (u + epsilon))``.
    """
    m, u = slots
    m += (grads - m) * (1.0 - h["beta_1"])
    u[...] = xp.maximum(h["beta_2"] * u, xp.abs(grads))
    params -= (h["learning_rate"] * m) / (h["bias_correction"] * (u + h["epsilon"]))


def nadam(
    xp: Any, params: Array, grads: Array, slots: Sequence[Array], h: Mapping[str, float]
) -> None:
    """Nadam, Adam with Nesterov momentum on Keras's momentum schedule.

    Slots: ``m``, the first-moment estimate; ``v``, the second-moment estimate.
    Hyperparameters: ``learning_rate``; ``beta_1`` and ``beta_2``, the decay rates of
    ``m`` and ``v``; ``epsilon``, added to ``sqrt(v_hat)``; and the step's schedule:
    ``m_weight = mu_next / (1 - mu_product * mu_next)``,
    ``g_weight = (1 - mu_t) / (1 - mu_product)`` and ``v_correction = 1 - beta_2**t``,
    where ``mu_t`` and ``mu_next`` are the momenta of steps ``t`` and ``t + 1`` and
    ``mu_product`` the product of the momenta of steps 1 to ``t``.

    ``m += (g - m) * (1 - beta_1)``; ``v += (g**2 - v) * (1 - beta_2)``;
    ``m_hat = m_weight * m + g_weight * g``; ``v_hat = v / v_correction``;
    ``w -= learning_rate * m_hat / (sqrt(v_hat) + epsilon)``.
    """
    m, v = slots
    m += (grads - m) * (1.0 - h["beta_1"])
    v += (grads * grads - v) * (1.0 - h["beta_2"])
    m_hat = h["m_weight"] * m + h["g_weight"] * grads
    v_hat = v / h["v_correction"]
    params -= (h["learning_rate"] * m_hat) / (xp.sqrt(v_hat) + h["epsilon"])


def adamw(
    xp: Any, params: Array, grads: Array, slots: Sequence[Array], h: Mapping[str, float]
) -> None:
    """AdamW: Adam (or AMSGrad) after a decoupled weight decay, in one pass.

    Slots and hyperparameters: those of ``adam``, and ``decay``, the step's
    ``weight_decay * learning_rate``.

    ``w -= w * decay``, then the ``adam`` step.
    """
    params -= params * h["decay"]
    adam(xp, params, grads, slots, h)


def adadelta(
    xp: Any, params: Array, grads: Array, slots: Sequence[Array], h: Mapping[str, float]
) -> None:
    """Adadelta (Zeiler, 2012).

    Slots: ``accumulated_grad``, the moving average of ``g**2``; ``accumulated_delta_var``,
    the moving average of the squared updates. Hyperparameters: ``learning_rate``;
    ``rho``, the decay rate of both; ``epsilon``, added under the square roots.

    ``accumulated_grad = rho * accumulated_grad + (1 - rho) * g**2``;
    ``delta = -(sqrt(accumulated_delta_var + epsilon) * g) / sqrt(accumulated_grad + epsilon)``;
    ``accumulated_delta_var = rho * accumulated_delta_var + (1 - rho) * delta**2``;
    ``w += learning_rate * delta``.
    """
    accumulated_grad, accumulated_delta = slots
    rho, epsilon = h["rho"], h["epsilon"]
    accumulated_grad[...] = rho * accumulated_grad + (1.0 - rho) * (grads * grads)
    delta = -(xp.sqrt(accumulated_delta + epsilon) * grads) / xp.sqrt(accumulated_grad + epsilon)
    accumulated_delta[...] = rho * accumulated_delta + (1.0 - rho) * (delta * delta)
    params += h["learning_rate"] * delta


def lion(
    xp: Any, params: Array, grads: Array, slots: Sequence[Array], h: Mapping[str, float]
) -> None:
    """Lion (Chen et al., 2023): a step of the sign of an interpolated momentum.

    Slots: ``momentum``. Hyperparameters: ``learning_rate``; ``beta_1``, the
    interpolation of the step's direction; ``beta_2``, the momentum's decay rate.

    ``w -= learning_rate * sign(m * beta_1 + g * (1 - beta_1))``;
    ``m = m * beta_2 + g * (1 - beta_2)``.
    """
    (m,) = slots
    beta_1, beta_2 = h["beta_1"], h["beta_2"]
    params -= h["learning_rate"] * xp.sign(m * beta_1 + grads * (1.0 - beta_1))
    m[...] = m * beta_2 + grads * (1.0 - beta_2)


def ftrl(
    xp: Any, params: Array, grads: Array, slots: Sequence[Array], h: Mapping[str, float]
) -> None:
    """FTRL-Proximal (McMahan et al., 2013), as Keras writes it.

    Slots: ``accumulator``, the sum of ``g**2`` plus its initial value; ``linear``.
    Hyperparameters: ``learning_rate``; ``power``, minus Keras's
    ``learning_rate_power`` (so ``0.5`` by default); ``l1``; ``l2``, Keras's
    ``l2_regularization_strength + beta / (2 * learning_rate)``; ``shrinkage``,
    ``2 * l2_shrinkage_regularization_strength``.

    ``new = accumulator + g**2``;
    ``linear += (g + shrinkage * w) - (new**power - accumulator**power) / learning_rate * w``;
    ``quadratic = new**power / learning_rate + 2 * l2``;
    ``w = (clip(linear, -l1, l1) - linear) / quadratic``; ``accumulator = new``.
    """
    accumulator, linear = slots
    learning_rate, power, l1 = h["learning_rate"], h["power"], h["l1"]
    new = accumulator + grads * grads
    grad_to_use = grads + h["shrinkage"] * params
    linear += grad_to_use - ((new**power - accumulator**power) / learning_rate) * params
    quadratic = new**power / learning_rate + 2.0 * h["l2"]
    params[...] = (xp.clip(linear, -l1, l1) - linear) / quadratic
    accumulator[...] = new


#: The reference step of every rule of ``names.OPTIMIZER_RULES``.
STEPS: dict[str, Step] = {
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


# ---------------------------------------------------------------------- around the rules
def gradient_norm_scale(
    xp: Any,
    grads: Array,
    segments: Sequence[tuple[int, int]],
    clipnorm: float,
    out: Array,
    each: bool,
) -> None:
    """The reference of ``Engine.gradient_norm_scale``: ``clipnorm / max(norm, clipnorm)``
    per segment (``each``) or for all of them together, into ``out`` on the engine.
    The joint factor is NaN when the norm is not finite, as Keras's ``global_clipnorm``."""
    squares = []
    for start, stop in segments:
        piece = grads[start:stop]
        squares.append(xp.sum(piece * piece))
    # the bound as a 0-d array on the gradients' device, of their dtype
    bound = xp.full_like(xp.sum(grads[0:0]), clipnorm)
    if each:
        for k, total in enumerate(squares):
            out[k] = bound / xp.maximum(xp.sqrt(total), bound)
        return
    total = xp.sum(grads[0:0])
    for more in squares:
        total = total + more
    norm = xp.sqrt(total)
    out[0] = bound / xp.maximum(norm, bound) + (norm - norm)


def clip_and_decay(
    xp: Any,
    params: Array,
    grads: Array,
    out: Array | None,
    scale: Array | None,
    clipvalue: float | None,
    decay: float,
) -> None:
    """The reference of ``Engine.clip_and_decay``: ``params -= params * decay``;
    ``out = clip(grads * scale[0], -clipvalue, clipvalue)``."""
    if decay:
        params -= params * decay
    if out is None:
        return
    clipped = grads if scale is None else grads * scale[0]
    if clipvalue is not None:
        clipped = xp.clip(clipped, -clipvalue, clipvalue)
    out[...] = clipped


def moving_average(xp: Any, average: Array, values: Array, momentum: float) -> None:
    """The reference of ``Engine.moving_average``:
    ``average = momentum * average + (1 - momentum) * values``."""
    average[...] = momentum * average + (1.0 - momentum) * values
