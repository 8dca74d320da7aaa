"""Training-step kernels for the NumPy engine, compiled by Numba's CPU JIT.

* Optimizer updates: a NumPy optimizer step is a dozen elementwise functions,
  each a pass over the whole buffer; here each optimizer is one loop that reads
  every element once. The loops release the GIL, and the engine splits large
  buffers over its own threads (``cpu_chunks.ChunkRunner.split``) rather than
  Numba's OpenMP threads, whose spinning starves the BLAS threads that run next.
* ``dense_stack``: the forward pass, softmax + cross-entropy and the backward
  pass of a whole stack of dense layers in one call, the matrix products going
  to BLAS through ``np.dot`` (which needs SciPy) and everything else fused into
  loops. On small models a training step is otherwise mostly Python calls.

The loops repeat the operation order of ``xp_optimizers``, ``xp_losses`` and
``xp_activations`` with the scalars in the arrays' dtype, so they round as NumPy
does. Numba is optional: ``available()`` says whether it can be used, and
nothing here imports it until a kernel is first asked for. ``DLCORE_CPU_JIT=0``
turns the JIT off (the NumPy engine then runs the NumPy code).
"""

from __future__ import annotations

import importlib.util
import math
import os
import time
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

import numpy as np

from . import cpu_gemm
from .cpu_gemm import FORWARD, INPUT_GRADIENT, WEIGHT_GRADIENT
from .names import EPSILON


@cache
def available() -> bool:
    """Whether the NumPy engine should use these kernels: Numba is installed and
    ``DLCORE_CPU_JIT`` is not ``0``."""
    if os.environ.get("DLCORE_CPU_JIT", "1") == "0":
        return False
    return importlib.util.find_spec("numba") is not None


@cache
def stack_available() -> bool:
    """Whether ``dense_stack`` can be compiled: ``available()`` and SciPy's BLAS is installed
    (Numba's ``np.dot`` calls it)."""
    return available() and importlib.util.find_spec("scipy") is not None


@cache
def kernel(name: str) -> Callable[..., Any]:
    """The compiled kernel ``name`` (one of ``KERNELS``); compiled on first call per dtype."""
    import numba

    # error_model="numpy": a division by zero gives inf or nan as in NumPy, and the loops
    # vectorise (Python's model checks every division and raises)
    jit = numba.njit(cache=True, nogil=True, error_model="numpy")
    if name in ("dense_stack", "time_stack", "time_product"):
        # the helpers are looked up in this module's globals when the kernel compiles
        for helper in ("_bias_and_activation", "_activation_gradient", "_column_sums"):
            globals()[helper] = jit(_HELPERS[helper])
        globals()["_product"] = cpu_gemm.compiled_product()
    if name == "time_stack":
        globals()["_dense_stack"] = kernel("dense_stack")
    return jit(KERNELS[name])


# Each kernel updates 1-D arrays of one float dtype in place; scalars arrive in that dtype.
def _sgd(params, grads, learning_rate):
    for i in range(params.shape[0]):
        params[i] -= learning_rate * grads[i]


def _sgd_momentum(params, grads, velocity, learning_rate, momentum, nesterov):
    for i in range(params.shape[0]):
        step = learning_rate * grads[i]
        v = velocity[i] * momentum - step
        velocity[i] = v
        if nesterov:
            params[i] += momentum * v - step
        else:
            params[i] += v


def _adam(params, grads, m, v, v_max, alpha, one_minus_beta_1, one_minus_beta_2, epsilon):
    amsgrad = v_max.shape[0] > 0
    for i in range(params.shape[0]):
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
    for i in range(params.shape[0]):
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
    for i in range(params.shape[0]):
        g = grads[i]
        a = accumulator[i] + g * g
        accumulator[i] = a
        params[i] -= (learning_rate * g) / math.sqrt(a + epsilon)


def _adamax(params, grads, m, u, learning_rate, one_minus_beta_1, beta_2, correction, epsilon):
    for i in range(params.shape[0]):
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
    for i in range(params.shape[0]):
        g = grads[i]
        m_i = m[i] + (g - m[i]) * one_minus_beta_1
        v_i = v[i] + (g * g - v[i]) * one_minus_beta_2
        m[i] = m_i
        v[i] = v_i
        m_hat = m_weight * m_i + g_weight * g
        params[i] -= (learning_rate * m_hat) / (math.sqrt(v_i / v_correction) + epsilon)


def _adamw(params, grads, m, v, v_max, alpha, one_minus_beta_1, one_minus_beta_2, epsilon, decay):
    amsgrad = v_max.shape[0] > 0
    for i in range(params.shape[0]):
        g = grads[i]
        m_i = m[i] + (g - m[i]) * one_minus_beta_1
        v_i = v[i] + (g * g - v[i]) * one_minus_beta_2
        m[i] = m_i
        v[i] = v_i
        if amsgrad:
            v_i = max(v_max[i], v_i)
            v_max[i] = v_i
        p = params[i]
        p -= p * decay
        params[i] = p - (m_i * alpha) / (math.sqrt(v_i) + epsilon)


def _adadelta(
    params, grads, accumulated_grad, accumulated_delta, learning_rate, rho, one_minus_rho, epsilon
):
    for i in range(params.shape[0]):
        g = grads[i]
        a_g = rho * accumulated_grad[i] + one_minus_rho * (g * g)
        a_d = accumulated_delta[i]
        delta = -(math.sqrt(a_d + epsilon) * g) / math.sqrt(a_g + epsilon)
        accumulated_grad[i] = a_g
        accumulated_delta[i] = rho * a_d + one_minus_rho * (delta * delta)
        params[i] += learning_rate * delta


def _lion(params, grads, m, learning_rate, beta_1, one_minus_beta_1, beta_2, one_minus_beta_2):
    for i in range(params.shape[0]):
        g = grads[i]
        m_i = m[i]
        params[i] -= learning_rate * np.sign(m_i * beta_1 + g * one_minus_beta_1)
        m[i] = m_i * beta_2 + g * one_minus_beta_2


def _ftrl(params, grads, accumulator, linear, learning_rate, power, l1, two_l2, shrinkage):
    for i in range(params.shape[0]):
        g = grads[i]
        w = params[i]
        a = accumulator[i]
        new = a + g * g
        new_power = new**power
        z = linear[i] + ((g + shrinkage * w) - ((new_power - a**power) / learning_rate) * w)
        quadratic = new_power / learning_rate + two_l2
        linear[i] = z
        accumulator[i] = new
        params[i] = (min(max(z, -l1), l1) - z) / quadratic


# Activation codes of ``dense_stack``'s hidden layers.
ACTIVATION_CODES = {"linear": 0, "relu": 1, "tanh": 2, "sigmoid": 3}


def _bias_and_activation(A, b, code, one):
    """``A = activation(A + b)`` in place; one loop per activation so that each vectorises."""
    N, O = A.shape
    if code == 0:
        for r in range(N):
            for j in range(O):
                A[r, j] += b[j]
    elif code == 1:
        zero = one - one
        for r in range(N):
            for j in range(O):
                z = A[r, j] + b[j]
                A[r, j] = zero if z < zero else z  # NaN stays NaN, as np.maximum keeps it
    elif code == 2:
        for r in range(N):
            for j in range(O):
                A[r, j] = math.tanh(A[r, j] + b[j])
    else:
        for r in range(N):
            for j in range(O):
                z = A[r, j] + b[j]
                e = math.exp(-abs(z))
                A[r, j] = one / (one + e) if z >= 0 else e / (one + e)


def _activation_gradient(delta, Y, code, one):
    """``delta *= activation'`` in place, from the activation's output ``Y``."""
    N, O = delta.shape
    if code == 1:
        for r in range(N):
            for j in range(O):
                if not Y[r, j] > 0:
                    delta[r, j] = 0
    elif code == 2:
        for r in range(N):
            for j in range(O):
                delta[r, j] *= one - Y[r, j] * Y[r, j]
    elif code == 3:
        for r in range(N):
            for j in range(O):
                delta[r, j] *= (one - Y[r, j]) * Y[r, j]


def _column_sums(delta, out):
    """``out = delta.sum(axis=0)``, adding the rows in order."""
    out[:] = 0
    for r in range(delta.shape[0]):
        for j in range(delta.shape[1]):
            out[j] += delta[r, j]


def _dense_stack(
    outputs,
    weights,
    biases,
    weight_grads,
    bias_grads,
    deltas,
    codes,
    Y,
    labels,
    plan,
    addresses,
    scratch,
):
    """Forward, softmax + categorical cross-entropy, and backward of ``L`` dense layers.

    Args:
        outputs: ``L + 1`` float ``(N, width)`` arrays: the batch's inputs, then each
            layer's output, written here (the last holds the softmax probabilities).
        weights, biases: each layer's kernel ``(I, O)`` and bias ``(O,)``.
        weight_grads, bias_grads: written with the batch-mean loss's gradients.
        deltas: ``L`` float ``(N, O)`` scratch arrays, the gradients at each layer's output.
        codes: int64 ``(L,)`` activation codes of the hidden layers (``ACTIVATION_CODES``).
        Y: one-hot float targets ``(N, classes)``, or ``(0, 0)`` with ``labels``.
        labels: int64 class labels ``(N,)``, or ``(0,)`` with one-hot ``Y``.
        plan: int64 ``(L, 3, cpu_gemm.PLAN_FIELDS)``, the library of each matrix product
            (``cpu_gemm.plan``); addresses: int64, ``cpu_gemm.addresses()``.
        scratch: uint16 ``(cpu_gemm.scratch_elements(...),)``, where bfloat16 products
            round their operands to (empty without them).

    Returns:
        The batch-mean loss, as a float64.
    """
    # _product is cpu_gemm's, bound in this module's globals by ``kernel`` (F821 below)
    layers = len(weights)
    N = outputs[0].shape[0]
    one = outputs[0].dtype.type(1.0)
    epsilon = outputs[0].dtype.type(EPSILON)
    inv_n = outputs[0].dtype.type(1.0 / N)
    for layer in range(layers):
        A = outputs[layer + 1]
        _product(  # noqa: F821
            plan, layer, FORWARD, addresses, scratch, outputs[layer], weights[layer], A
        )
        _bias_and_activation(A, biases[layer], codes[layer] if layer < layers - 1 else 0, one)
    P = outputs[layers]
    delta = deltas[layers - 1]
    sparse = labels.shape[0] > 0
    loss = 0.0
    for r in range(N):
        # softmax of the row shifted by its maximum (layer codes do not apply to the last)
        top = P[r, 0]
        for j in range(1, P.shape[1]):
            top = max(top, P[r, j])
        total = P.dtype.type(0.0)
        for j in range(P.shape[1]):
            e = math.exp(P[r, j] - top)
            P[r, j] = e
            total += e
        for j in range(P.shape[1]):
            P[r, j] /= total
        # Keras's cross-entropy renormalises the row and clips it into [eps, 1 - eps]
        total = P.dtype.type(0.0)
        for j in range(P.shape[1]):
            total += P[r, j]
        for j in range(P.shape[1]):
            if sparse:
                y = one if labels[r] == j else P.dtype.type(0.0)
            else:
                y = Y[r, j]
            q = min(max(P[r, j] / total, epsilon), one - epsilon)
            loss -= y * math.log(q)
            delta[r, j] = (P[r, j] - y) * inv_n
    for layer in range(layers - 1, -1, -1):
        delta = deltas[layer]
        if layer < layers - 1:
            _activation_gradient(delta, outputs[layer + 1], codes[layer], one)
        _column_sums(delta, bias_grads[layer])
        _product(  # noqa: F821
            plan,
            layer,
            WEIGHT_GRADIENT,
            addresses,
            scratch,
            outputs[layer].T,
            delta,
            weight_grads[layer],
        )
        if layer > 0:
            _product(  # noqa: F821
                plan,
                layer,
                INPUT_GRADIENT,
                addresses,
                scratch,
                delta,
                weights[layer].T,
                deltas[layer - 1],
            )
    return loss / N


def _time_stack(repeats, *arguments):
    """``_dense_stack(*arguments)`` ``repeats`` times (to time a plan; the gradients it
    writes are scratch until the next step)."""
    for _ in range(repeats):
        _dense_stack(*arguments)


def _time_product(repeats, plan, layer, kind, addresses, scratch, A, B, C):
    """Product ``kind`` of ``layer`` by ``plan``, ``repeats`` times."""
    for _ in range(repeats):
        _product(plan, layer, kind, addresses, scratch, A, B, C)  # noqa: F821


_HELPERS = {
    "_bias_and_activation": _bias_and_activation,
    "_activation_gradient": _activation_gradient,
    "_column_sums": _column_sums,
}

KERNELS: dict[str, Callable[..., Any]] = {
    "dense_stack": _dense_stack,
    "time_stack": _time_stack,
    "time_product": _time_product,
    "sgd": _sgd,
    "sgd_momentum": _sgd_momentum,
    "adam": _adam,
    "rmsprop": _rmsprop,
    "adagrad": _adagrad,
    "adamax": _adamax,
    "nadam": _nadam,
    "adamw": _adamw,
    "adadelta": _adadelta,
    "lion": _lion,
    "ftrl": _ftrl,
}


def gemm_plan(
    outputs: Sequence[np.ndarray],
    weights: Sequence[np.ndarray],
    biases: Sequence[np.ndarray],
    weight_grads: Sequence[np.ndarray],
    bias_grads: Sequence[np.ndarray],
    deltas: Sequence[np.ndarray],
    codes: np.ndarray,
    Y: np.ndarray,
    labels: np.ndarray,
    time_step: Callable[[np.ndarray], float] | None = None,
    bfloat16_layers: tuple[int, ...] = (),
) -> np.ndarray:
    """The plan of ``dense_stack``'s matrix products for these arrays (``cpu_gemm``): the
    one chosen before for the same dtype, batch rows and widths, or one timed now on these
    very arrays, ``outputs[0]`` holding a real batch. Timing writes the outputs, deltas and
    gradients, as a step would, and leaves the weights alone. ``time_step(plan)``, seconds
    per training step with ``plan``, replaces timing ``dense_stack`` alone (the epoch loop
    times its own steps, the optimizer's included). The products of ``bfloat16_layers``
    run in bfloat16 (``cpu_gemm.choose``).

    Raises:
        cpu_gemm.GemmLibraryError: ``DLCORE_GEMM`` is invalid.
    """
    dtype, rows = outputs[0].dtype, outputs[0].shape[0]
    widths = [outputs[0].shape[1], *(W.shape[1] for W in weights)]
    step_products = cpu_gemm.products(rows, widths)
    key = cpu_gemm.plan_key(dtype, rows, widths, bfloat16_layers)
    cached = cpu_gemm.cached_choices(key)
    if cached is not None:
        plan = cpu_gemm.restore(cached, step_products, len(weights), dtype, bfloat16_layers)
        if plan is not None:
            return plan
    addresses = cpu_gemm.addresses()
    stack, product_kernel = kernel("time_stack"), kernel("time_product")
    arguments = (outputs, weights, biases, weight_grads, bias_grads, deltas, codes, Y, labels)
    repeats = [0]

    def time_stack(plan: np.ndarray) -> float:
        if not repeats[0]:  # calls of about _STEP_TIMING_SECONDS, so that dispatch does not count
            start = time.perf_counter()
            stack(1, *arguments, plan, addresses, cpu_gemm.NO_SCRATCH)
            elapsed = time.perf_counter() - start
            repeats[0] = max(1, int(_STEP_TIMING_SECONDS / max(elapsed, 1e-9)))
        start = time.perf_counter()
        stack(repeats[0], *arguments, plan, addresses, cpu_gemm.NO_SCRATCH)
        return (time.perf_counter() - start) / repeats[0]

    def time_product(plan: np.ndarray, product: cpu_gemm.Product) -> float:
        layer = product.layer
        if product.kind == FORWARD:
            operands = (outputs[layer], weights[layer], outputs[layer + 1])
        elif product.kind == WEIGHT_GRADIENT:
            operands = (outputs[layer].T, deltas[layer], weight_grads[layer])
        else:
            operands = (deltas[layer], weights[layer].T, deltas[layer - 1])
        start = time.perf_counter()
        product_kernel(1, plan, layer, product.kind, addresses, cpu_gemm.NO_SCRATCH, *operands)
        return time.perf_counter() - start

    plan = cpu_gemm.choose(
        step_products,
        len(weights),
        dtype,
        time_step or time_stack,
        time_product,
        bfloat16_layers,
    )
    cpu_gemm.remember(key, plan)
    return plan


_STEP_TIMING_SECONDS = 0.0002


def plan_for_widths(
    widths: tuple[int, ...], rows: int, dtype: str = "float32", seed: int = 0
) -> tuple[np.ndarray, list[cpu_gemm.Product]]:
    """The plan ``gemm_plan`` gives a ReLU stack of ``widths`` (softmax output) training on
    batches of ``rows``, timed on random arrays; and its products (``cpu_gemm.products``)."""
    rng = np.random.default_rng(seed)
    kind = np.dtype(dtype)
    pairs = list(zip(widths[:-1], widths[1:]))
    X = rng.standard_normal((rows, widths[0])).astype(kind)
    weights = tuple((rng.standard_normal((i, o)) * np.sqrt(2.0 / i)).astype(kind) for i, o in pairs)
    biases = tuple(np.zeros(o, dtype=kind) for _, o in pairs)
    outputs = (X, *(np.empty((rows, o), dtype=kind) for _, o in pairs))
    deltas = tuple(np.empty((rows, o), dtype=kind) for _, o in pairs)
    labels = rng.integers(0, widths[-1], rows).astype(np.int64)
    plan = gemm_plan(
        outputs,
        weights,
        biases,
        tuple(np.empty_like(W) for W in weights),
        tuple(np.empty_like(b) for b in biases),
        deltas,
        np.array([ACTIVATION_CODES["relu"]] * (len(pairs) - 1) + [0], dtype=np.int64),
        np.empty((0, 0), dtype=kind),
        labels,
    )
    return plan, cpu_gemm.products(rows, widths)


# ---------------------------------------------------------------------- a whole epoch
# The update rules ``dense_stack_epoch`` runs, by the kernel name the NumPy engine's step
# picks for them; the epoch loop branches on the code (one compiled loop serves every rule).
EPOCH_RULES = {
    "sgd": 0,
    "sgd_momentum": 1,
    "adam": 2,
    "rmsprop": 3,
    "adagrad": 4,
    "adamax": 5,
    "nadam": 6,
    "adamw": 7,
    "adadelta": 8,
    "lion": 9,
    "ftrl": 10,
}
#: the most slot arrays and scalars a rule of ``EPOCH_RULES`` takes after params and grads
EPOCH_SLOTS = 3
EPOCH_SCALARS = 7


@cache
def epoch_kernel() -> Callable[..., Any]:
    """The compiled ``dense_stack_epoch``, with ``dense_stack`` and the rules' kernels
    (the very ones the per-step path runs) compiled into it."""
    import numba

    stack = kernel("dense_stack")  # also compiles the helpers it calls
    # the names the loop calls are looked up in this module's globals when it compiles
    globals()["_dense_stack"] = stack
    for name in EPOCH_RULES:
        globals()[KERNELS[name].__name__] = kernel(name)
    jit = numba.njit(cache=True, nogil=True, error_model="numpy")
    for helper, function in _EPOCH_HELPERS.items():
        globals()[helper] = jit(function)
    return jit(_dense_stack_epoch)


def _apply_rule(rule, params, grads, a, b, c, h):
    """One update of rule code ``rule`` (``EPOCH_RULES``): slots ``a, b, c`` in the rule's
    order (empty where it takes fewer or an optional one is absent), scalars ``h``."""
    if rule == 0:
        _sgd(params, grads, h[0])
    elif rule == 1:
        _sgd_momentum(params, grads, a, h[0], h[1], h[2] != 0)
    elif rule == 2:
        _adam(params, grads, a, b, c, h[0], h[1], h[2], h[3])
    elif rule == 3:
        _rmsprop(params, grads, a, b, c, h[0], h[1], h[2], h[3], h[4])
    elif rule == 4:
        _adagrad(params, grads, a, h[0], h[1])
    elif rule == 5:
        _adamax(params, grads, a, b, h[0], h[1], h[2], h[3], h[4])
    elif rule == 6:
        _nadam(params, grads, a, b, h[0], h[1], h[2], h[3], h[4], h[5], h[6])
    elif rule == 7:
        _adamw(params, grads, a, b, c, h[0], h[1], h[2], h[3], h[4])
    elif rule == 8:
        _adadelta(params, grads, a, b, h[0], h[1], h[2], h[3])
    elif rule == 9:
        _lion(params, grads, a, h[0], h[1], h[2], h[3], h[4])
    else:
        _ftrl(params, grads, a, b, h[0], h[1], h[2], h[3], h[4])


def _first_argmax(A, r):
    """``np.argmax(A[r])``: the first maximum, or the first NaN when there is one."""
    best = 0
    for j in range(1, A.shape[1]):
        if A[r, j] > A[r, best] or (math.isnan(A[r, j]) and not math.isnan(A[r, best])):
            best = j
    return best


def _dense_stack_epoch(
    X,
    Y,
    labels,
    order,
    batch_size,
    full,
    last,
    weights,
    biases,
    weight_grads,
    bias_grads,
    codes,
    rule,
    params,
    grads,
    a,
    b,
    c,
    hyperparameters,
    count,
    losses,
    correct,
    addresses,
    scratch,
):
    """``S`` training steps of a dense stack: per step, the batch gathered, ``_dense_stack``,
    the correct predictions counted, then the optimizer's update.

    Args:
        X: float ``(n, I)`` inputs; Y: one-hot float ``(n, C)`` targets or ``(0, 0)``;
        labels: int ``(n,)`` class labels or ``(0,)``.
        order: int64 ``(n,)``, the rows in the order they are batched.
        batch_size: rows per step; step ``s`` takes ``order[s * batch_size:]`` up to
            ``batch_size`` rows.
        full, last: for a full and for a short last batch: ``(outputs, deltas, Y, labels,
            plan)``, ``_dense_stack``'s ``outputs`` (the batch's rows go into the first) and
            ``deltas``, the batch's targets (the unused kind ``(0, 0)`` or ``(0,)``), and
            the plan of its matrix products.
        weights, biases, weight_grads, bias_grads, codes: as ``_dense_stack`` takes them,
            views of the flat ``params`` and ``grads``.
        rule: the code of the update rule (``EPOCH_RULES``); ``a, b, c`` its slots.
        hyperparameters: ``(S, EPOCH_SCALARS)`` each step's scalars in the rule's order.
        count: whether to count the correct predictions (argmax of the probabilities
            equal to the target's class).
        losses: float64 ``(S,)``, written with each step's batch-mean loss.
        correct: int64 ``(S,)``, written with each step's count when ``count``.
        addresses: int64, ``cpu_gemm.addresses()``; scratch: as ``_dense_stack`` takes it,
            for the larger of the two plans.
    """
    n = order.shape[0]
    for s in range(losses.shape[0]):
        start = s * batch_size
        stop = min(start + batch_size, n)
        rows = stop - start
        outputs, deltas, Y_batch, labels_batch, plan = full if rows == batch_size else last
        X_batch = outputs[0]
        sparse = labels.shape[0] > 0
        for i in range(rows):
            row = order[start + i]
            for j in range(X.shape[1]):
                X_batch[i, j] = X[row, j]
            if sparse:
                labels_batch[i] = labels[row]
            else:
                for j in range(Y.shape[1]):
                    Y_batch[i, j] = Y[row, j]
        losses[s] = _dense_stack(
            outputs,
            weights,
            biases,
            weight_grads,
            bias_grads,
            deltas,
            codes,
            Y_batch,
            labels_batch,
            plan,
            addresses,
            scratch,
        )
        if count:
            P = outputs[len(outputs) - 1]
            hits = 0
            for i in range(rows):
                predicted = _first_argmax(P, i)
                target = labels_batch[i] if sparse else _first_argmax(Y_batch, i)
                if predicted == target:
                    hits += 1
            correct[s] = hits
        _apply_rule(rule, params, grads, a, b, c, hyperparameters[s])


_EPOCH_HELPERS = {"_apply_rule": _apply_rule, "_first_argmax": _first_argmax}
