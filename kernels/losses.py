"""Loss values and their gradients (Keras 3 semantics), as kernels for the Numba engine.

The specification is ``backends/xp_losses.py``: the same formulas, clips and
gradients (zero where a clip changes the value), the same order of operations
where it matters for rounding. A loss is a per-sample value, a mean or a sum
over the ``O`` outputs of a row, then a mean over the ``N`` rows.

Values: a row kernel (a group of ``rows.row_width(O)`` threads per row;
see ``reductions.py`` for the layout) writes the per-sample values into a
float64 scratch ``(N,)``, and ``reductions.mean_all`` reduces it into ``out``
in a fixed order (one launch up to 2048 rows).

Gradients: where an element's gradient needs nothing from the rest of its row
(the "elementwise" losses below), one thread per element over the flat arrays,
coalesced. The others (categorical cross-entropy and its logit and sparse
forms, categorical hinge, cosine similarity) need row sums, maxima, an argmax
or norms: one row kernel each reduces them within the row's group and then
writes the row's gradient with the same lanes, which reads the row again from
L1 instead of launching a second kernel.

``softmax_crossentropy_batch`` is what a training step on a softmax output
trained with (sparse) categorical cross-entropy needs, in one row kernel: the
per-sample losses, the per-row accuracy hits and the fused gradient ``(P - Y) / N``,
then the two float64 reductions (three launches instead of five).

``hinge`` and ``squared_hinge`` turn 0/1 labels into -1/1 only when every label
of the batch is 0 or 1: ``reductions.count_nonbinary`` counts the other labels
into a float64 scratch ``(1,)`` on the device (``common.scratch``, reused by every
call), and the loss kernels read it.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
from dlcore.backends.names import CROSSENTROPIES, EPSILON, LOSSES
from numba import cuda, types

from . import reductions
from .common import (
    FLOAT_DTYPES,
    THREADS,
    PtxVariant,
    array,
    device_function,
    grid_for,
    launch,
    numba_type,
    scalar,
    scratch,
)
from .rows import first_max, group_reductions, row_grid

_HINGES = ("hinge", "squared_hinge")

# Elementwise losses, by (name, from_logits): the per-sample value is
# value_factor * sum over the row of a term of (p, y), divided by O where
# per_output (a mean); the gradient is gradient_factor * a term of (p, y),
# divided by N * O where per_output, else by N.
_ELEMENTWISE: dict[tuple[str, bool], tuple[float, float, bool]] = {
    ("mean_squared_error", False): (1.0, 2.0, True),
    ("mean_absolute_error", False): (1.0, 1.0, True),
    ("mean_absolute_percentage_error", False): (100.0, 100.0, True),
    ("mean_squared_logarithmic_error", False): (1.0, 2.0, True),
    ("squared_hinge", False): (1.0, -2.0, True),
    ("hinge", False): (1.0, -1.0, True),
    ("log_cosh", False): (1.0, 1.0, True),
    ("binary_crossentropy", False): (-1.0, 1.0, True),
    ("binary_crossentropy", True): (1.0, 1.0, True),
    ("kl_divergence", False): (1.0, -1.0, False),
    ("poisson", False): (1.0, 1.0, True),
}

# Every kernel variant, as (name, from_logits).
VARIANTS = tuple((name, False) for name in LOSSES) + tuple((name, True) for name in CROSSENTROPIES)


def _variant(name: str, from_logits: bool) -> tuple[str, bool]:
    if name not in LOSSES:
        raise KeyError(f"unknown loss {name!r}; available: {', '.join(LOSSES)}")
    return name, bool(from_logits) and name in CROSSENTROPIES


@functools.cache
def _elementwise_terms(dtype: Any) -> dict[tuple[str, bool], tuple[Any, Any]]:
    """``{(name, from_logits): (value, gradient)}``: device functions of ``(p, y, binary)``.

    ``binary`` says that every label of the batch is 0 or 1 (read by the hinges only).
    The constants are of ``dtype``, so the functions compute in it.
    """
    f = scalar(dtype)
    zero, one, two = f(0.0), f(1.0), f(2.0)
    eps, high = f(EPSILON), f(1.0 - EPSILON)
    log2 = f(math.log(2.0))

    @device_function
    def sign(x):
        return one if x > zero else (-one if x < zero else zero)

    @device_function
    def hinge_label(y, binary):
        return two * y - one if binary else y

    @device_function
    def log_difference(p, y):
        return math.log1p(max(p, eps)) - math.log1p(max(y, eps))

    def mse(p, y, binary):
        d = y - p
        return d * d

    def mse_gradient(p, y, binary):
        return p - y

    def mae(p, y, binary):
        return abs(y - p)

    def mae_gradient(p, y, binary):
        return sign(p - y)

    def mape(p, y, binary):
        return abs(y - p) / max(abs(y), eps)

    def mape_gradient(p, y, binary):
        return sign(p - y) / max(abs(y), eps)

    def msle(p, y, binary):
        d = log_difference(p, y)
        return d * d

    def msle_gradient(p, y, binary):
        return log_difference(p, y) / (one + p) if p >= eps else zero

    def squared_hinge(p, y, binary):
        margin = max(one - hinge_label(y, binary) * p, zero)
        return margin * margin

    def squared_hinge_gradient(p, y, binary):
        label = hinge_label(y, binary)
        return label * max(one - label * p, zero)

    def hinge(p, y, binary):
        return max(one - hinge_label(y, binary) * p, zero)

    def hinge_gradient(p, y, binary):
        label = hinge_label(y, binary)
        return label if label * p < one else zero

    def log_cosh(p, y, binary):
        x = p - y
        t = -two * x  # log(cosh(x)) = x + softplus(-2x) - log(2), overflow-free
        return x + (max(t, zero) + math.log1p(math.exp(-abs(t)))) - log2

    def log_cosh_gradient(p, y, binary):
        return math.tanh(p - y)

    def bce(p, y, binary):
        c = min(max(p, eps), high)
        return y * math.log(c) + (one - y) * math.log(one - c)

    def bce_gradient(p, y, binary):
        if eps <= p <= high:
            return (one - y) / (one - p) - y / p
        return zero

    def bce_logits(z, y, binary):
        return max(z, zero) - z * y + math.log1p(math.exp(-abs(z)))

    def bce_logits_gradient(z, y, binary):
        e = math.exp(-abs(z))  # in (0, 1]: neither branch of the sigmoid overflows
        return (one / (one + e) if z >= zero else e / (one + e)) - y

    def kl(p, y, binary):
        yc = min(max(y, eps), one)
        return yc * math.log(yc / min(max(p, eps), one))

    def kl_gradient(p, y, binary):
        if eps <= p <= one:
            return min(max(y, eps), one) / p
        return zero

    def poisson(p, y, binary):
        return p - y * math.log(p + eps)

    def poisson_gradient(p, y, binary):
        return one - y / (p + eps)

    table = {
        ("mean_squared_error", False): (mse, mse_gradient),
        ("mean_absolute_error", False): (mae, mae_gradient),
        ("mean_absolute_percentage_error", False): (mape, mape_gradient),
        ("mean_squared_logarithmic_error", False): (msle, msle_gradient),
        ("squared_hinge", False): (squared_hinge, squared_hinge_gradient),
        ("hinge", False): (hinge, hinge_gradient),
        ("log_cosh", False): (log_cosh, log_cosh_gradient),
        ("binary_crossentropy", False): (bce, bce_gradient),
        ("binary_crossentropy", True): (bce_logits, bce_logits_gradient),
        ("kl_divergence", False): (kl, kl_gradient),
        ("poisson", False): (poisson, poisson_gradient),
    }
    return {
        key: (device_function(value), device_function(gradient))
        for key, (value, gradient) in table.items()
    }


@functools.cache
def _elementwise_value_kernel(dtype: Any, name: str, logits: bool) -> Any:
    term = _elementwise_terms(dtype)[name, logits][0]
    zero, zero64 = scalar(dtype)(0.0), np.float64(0.0)
    hinge = name in _HINGES
    element = numba_type(dtype)
    group_sum = group_reductions(dtype)[0]

    @cuda.jit
    def elementwise_loss_kernel(P, Y, nonbinary, scale, width, per_sample):
        """per_sample[i] = scale * sum_j term(P[i, j], Y[i, j]), width lanes a row."""
        s = cuda.shared.array(THREADS, element)
        binary = nonbinary[0] == zero64 if hinge else False
        N, O = P.shape
        t = cuda.threadIdx.x
        lane, group = t % width, t // width
        rows = cuda.blockDim.x // width
        # The loop bounds are the same for the whole block, so every thread
        # reaches every syncthreads; rows past N only contribute identities.
        for first in range(cuda.blockIdx.x * rows, N, cuda.gridDim.x * rows):
            i = first + group
            total = zero
            if i < N:
                for j in range(lane, O, width):
                    total += term(P[i, j], Y[i, j], binary)
            total = group_sum(s, t, lane, width, total)
            if i < N and lane == 0:
                per_sample[i] = scale * total

    return elementwise_loss_kernel


@functools.cache
def _elementwise_gradient_kernel(dtype: Any, name: str, logits: bool) -> Any:
    gradient = _elementwise_terms(dtype)[name, logits][1]
    zero64 = np.float64(0.0)
    hinge = name in _HINGES

    @cuda.jit
    def elementwise_loss_gradient_kernel(P, Y, nonbinary, scale, dP):
        """dP = scale * gradient_term(P, Y) over flat float arrays of one size."""
        binary = nonbinary[0] == zero64 if hinge else False
        for k in range(cuda.grid(1), P.size, cuda.gridsize(1)):
            dP[k] = scale * gradient(P[k], Y[k], binary)

    return elementwise_loss_gradient_kernel


@functools.cache
def _target(dtype: Any, sparse: bool) -> Any:
    """Device function ``(Y, i, j) -> Y[i, j]``, or the one-hot of int64 labels ``Y[i]``."""
    zero, one = scalar(dtype)(0.0), scalar(dtype)(1.0)
    if sparse:

        def target(Y, i, j):
            return one if Y[i] == j else zero

    else:

        def target(Y, i, j):
            return Y[i, j]

    return device_function(target)


@functools.cache
def _crossentropy_kernels(dtype: Any, sparse: bool) -> tuple[Any, Any]:
    """Categorical cross-entropy of probability rows: ``(value kernel, gradient kernel)``."""
    f = scalar(dtype)
    zero = f(0.0)
    eps, high = f(EPSILON), f(1.0 - EPSILON)
    element = numba_type(dtype)
    group_sum = group_reductions(dtype)[0]
    target = _target(dtype, sparse)

    @device_function
    def row_sum(P, i, N, O, s, t, lane, width):
        total = zero
        if i < N:
            for j in range(lane, O, width):
                total += P[i, j]
        return group_sum(s, t, lane, width, total)

    @device_function
    def weight(y, q):
        # dL/dQ = -y / clip(q), and 0 where the clip changes q
        return -y / q if eps <= q <= high else zero

    @cuda.jit
    def crossentropy_kernel(P, Y, width, per_sample):
        """per_sample[i] = -sum_j Y[i, j] log(clip(P[i, j] / sum(P[i]))), width lanes a row."""
        s = cuda.shared.array(THREADS, element)
        N, O = P.shape
        t = cuda.threadIdx.x
        lane, group = t % width, t // width
        rows = cuda.blockDim.x // width
        for first in range(cuda.blockIdx.x * rows, N, cuda.gridDim.x * rows):
            i = first + group
            total = row_sum(P, i, N, O, s, t, lane, width)
            acc = zero
            if i < N:
                for j in range(lane, O, width):
                    q = min(max(P[i, j] / total, eps), high)
                    acc += target(Y, i, j) * math.log(q)
            acc = group_sum(s, t, lane, width, acc)
            if i < N and lane == 0:
                per_sample[i] = -acc

    @cuda.jit
    def crossentropy_gradient_kernel(P, Y, scale, width, dP):
        """dP = scale * (G - sum(G * Q)) / sum(P) per row, Q = P / sum(P), G = dL/dQ."""
        s = cuda.shared.array(THREADS, element)
        N, O = P.shape
        t = cuda.threadIdx.x
        lane, group = t % width, t // width
        rows = cuda.blockDim.x // width
        for first in range(cuda.blockIdx.x * rows, N, cuda.gridDim.x * rows):
            i = first + group
            total = row_sum(P, i, N, O, s, t, lane, width)
            acc = zero
            if i < N:
                for j in range(lane, O, width):
                    q = P[i, j] / total
                    acc += weight(target(Y, i, j), q) * q
            acc = group_sum(s, t, lane, width, acc)
            if i < N:
                for j in range(lane, O, width):
                    g = weight(target(Y, i, j), P[i, j] / total)
                    dP[i, j] = (g - acc) / total * scale

    return crossentropy_kernel, crossentropy_gradient_kernel


@functools.cache
def _crossentropy_logits_kernels(dtype: Any, sparse: bool) -> tuple[Any, Any]:
    """Categorical cross-entropy of logit rows: ``(value kernel, gradient kernel)``."""
    f = scalar(dtype)
    zero, neg_inf = f(0.0), f(-np.inf)
    element = numba_type(dtype)
    group_sum, group_sum2, group_max, _ = group_reductions(dtype)
    target = _target(dtype, sparse)

    @device_function
    def row_shift(Z, Y, i, N, O, s, s2, t, lane, width):
        """``(max(Z[i]), log(sum(exp(Z[i] - max))), sum(Y[i]))``, to every lane of the group."""
        m = neg_inf
        if i < N:
            for j in range(lane, O, width):
                m = max(m, Z[i, j])
        m = group_max(s, t, lane, width, m)
        total, labels = zero, zero
        if i < N:
            for j in range(lane, O, width):
                total += math.exp(Z[i, j] - m)
                labels += target(Y, i, j)
        total, labels = group_sum2(s, s2, t, lane, width, total, labels)
        return m, math.log(total) if i < N else zero, labels

    @cuda.jit
    def crossentropy_logits_kernel(Z, Y, width, per_sample):
        """per_sample[i] = -sum_j Y[i, j] * log_softmax(Z[i])[j], width lanes a row."""
        s = cuda.shared.array(THREADS, element)
        s2 = cuda.shared.array(THREADS, element)
        N, O = Z.shape
        t = cuda.threadIdx.x
        lane, group = t % width, t // width
        rows = cuda.blockDim.x // width
        for first in range(cuda.blockIdx.x * rows, N, cuda.gridDim.x * rows):
            i = first + group
            m, lse, _ = row_shift(Z, Y, i, N, O, s, s2, t, lane, width)
            acc = zero
            if i < N:
                for j in range(lane, O, width):
                    acc += target(Y, i, j) * ((Z[i, j] - m) - lse)
            acc = group_sum(s, t, lane, width, acc)
            if i < N and lane == 0:
                per_sample[i] = -acc

    @cuda.jit
    def crossentropy_logits_gradient_kernel(Z, Y, scale, width, dZ):
        """dZ = scale * (softmax(Z) * sum(Y) - Y) per row, width lanes a row."""
        s = cuda.shared.array(THREADS, element)
        s2 = cuda.shared.array(THREADS, element)
        N, O = Z.shape
        t = cuda.threadIdx.x
        lane, group = t % width, t // width
        rows = cuda.blockDim.x // width
        for first in range(cuda.blockIdx.x * rows, N, cuda.gridDim.x * rows):
            i = first + group
            m, lse, labels = row_shift(Z, Y, i, N, O, s, s2, t, lane, width)
            if i < N:
                for j in range(lane, O, width):
                    softmax = math.exp((Z[i, j] - m) - lse)
                    dZ[i, j] = (softmax * labels - target(Y, i, j)) * scale

    return crossentropy_logits_kernel, crossentropy_logits_gradient_kernel


@functools.cache
def _categorical_hinge_kernels(dtype: Any) -> tuple[Any, Any]:
    """Categorical hinge: ``(value kernel, gradient kernel)``."""
    f = scalar(dtype)
    zero, one, neg_inf = f(0.0), f(1.0), f(-np.inf)
    element = numba_type(dtype)
    group_sum, _, _, group_argmax = group_reductions(dtype)

    @device_function
    def row_margin(P, Y, i, N, O, s, si, t, lane, width):
        """``(max((1 - Y) P) - sum(Y P) + 1, first argmax((1 - Y) P))`` of row ``i``."""
        positive, negative, at = zero, neg_inf, O
        if i < N:
            for j in range(lane, O, width):
                p, y = P[i, j], Y[i, j]
                positive += y * p
                candidate = (one - y) * p
                if first_max(candidate, j, negative, at):
                    negative, at = candidate, j
        positive = group_sum(s, t, lane, width, positive)
        negative, at = group_argmax(s, si, t, lane, width, negative, at)
        return negative - positive + one, at

    @cuda.jit
    def categorical_hinge_kernel(P, Y, width, per_sample):
        """per_sample[i] = max(max_j (1 - Y) P - sum_j Y P + 1, 0), width lanes a row."""
        s = cuda.shared.array(THREADS, element)
        si = cuda.shared.array(THREADS, types.int64)
        N, O = P.shape
        t = cuda.threadIdx.x
        lane, group = t % width, t // width
        rows = cuda.blockDim.x // width
        for first in range(cuda.blockIdx.x * rows, N, cuda.gridDim.x * rows):
            i = first + group
            margin = row_margin(P, Y, i, N, O, s, si, t, lane, width)[0]
            if i < N and lane == 0:
                per_sample[i] = max(margin, zero)

    @cuda.jit
    def categorical_hinge_gradient_kernel(P, Y, scale, width, dP):
        """dP = scale * (onehot(argmax (1 - Y) P) (1 - Y) - Y) where the margin is positive."""
        s = cuda.shared.array(THREADS, element)
        si = cuda.shared.array(THREADS, types.int64)
        N, O = P.shape
        t = cuda.threadIdx.x
        lane, group = t % width, t // width
        rows = cuda.blockDim.x // width
        for first in range(cuda.blockIdx.x * rows, N, cuda.gridDim.x * rows):
            i = first + group
            margin, at = row_margin(P, Y, i, N, O, s, si, t, lane, width)
            if i < N:
                for j in range(lane, O, width):
                    y = Y[i, j]
                    picked = one - y if j == at else zero
                    dP[i, j] = (picked - y) * scale if margin > zero else zero

    return categorical_hinge_kernel, categorical_hinge_gradient_kernel


@functools.cache
def _cosine_kernels(dtype: Any) -> tuple[Any, Any]:
    """Cosine similarity: ``(value kernel, gradient kernel)``."""
    f = scalar(dtype)
    zero, one = f(0.0), f(1.0)
    eps2 = f(EPSILON * EPSILON)  # l2_normalize clamps the squared norm here
    element = numba_type(dtype)
    group_sum, group_sum2 = group_reductions(dtype)[:2]

    @device_function
    def row_cosine(P, Y, i, N, O, s, s2, t, lane, width):
        """``(sum(U V), 1 / |P|, |P|**2 >= eps**2)`` of row ``i``, U and V the normalised rows."""
        yy, pp = zero, zero
        if i < N:
            for j in range(lane, O, width):
                y, p = Y[i, j], P[i, j]
                yy += y * y
                pp += p * p
        yy, pp = group_sum2(s, s2, t, lane, width, yy, pp)
        inv_y = one / math.sqrt(max(yy, eps2))
        inv_p = one / math.sqrt(max(pp, eps2))
        dot = zero
        if i < N:
            for j in range(lane, O, width):
                dot += (Y[i, j] * inv_y) * (P[i, j] * inv_p)
        dot = group_sum(s, t, lane, width, dot)
        return dot, inv_y, inv_p, pp >= eps2

    @cuda.jit
    def cosine_similarity_kernel(P, Y, width, per_sample):
        """per_sample[i] = -sum_j l2_normalize(Y[i])[j] * l2_normalize(P[i])[j]."""
        s = cuda.shared.array(THREADS, element)
        s2 = cuda.shared.array(THREADS, element)
        N, O = P.shape
        t = cuda.threadIdx.x
        lane, group = t % width, t // width
        rows = cuda.blockDim.x // width
        for first in range(cuda.blockIdx.x * rows, N, cuda.gridDim.x * rows):
            i = first + group
            dot = row_cosine(P, Y, i, N, O, s, s2, t, lane, width)[0]
            if i < N and lane == 0:
                per_sample[i] = -dot

    @cuda.jit
    def cosine_similarity_gradient_kernel(P, Y, scale, width, dP):
        """dP = scale * (sum(U V) V - U) / |P| per row (no projection below the norm's clamp)."""
        s = cuda.shared.array(THREADS, element)
        s2 = cuda.shared.array(THREADS, element)
        N, O = P.shape
        t = cuda.threadIdx.x
        lane, group = t % width, t // width
        rows = cuda.blockDim.x // width
        for first in range(cuda.blockIdx.x * rows, N, cuda.gridDim.x * rows):
            i = first + group
            dot, inv_y, inv_p, unclamped = row_cosine(P, Y, i, N, O, s, s2, t, lane, width)
            if i < N:
                for j in range(lane, O, width):
                    projection = dot * (P[i, j] * inv_p) if unclamped else zero
                    dP[i, j] = (projection - Y[i, j] * inv_y) * inv_p * scale

    return cosine_similarity_kernel, cosine_similarity_gradient_kernel


@functools.cache
def _softmax_crossentropy_batch_kernel(dtype: Any, sparse: bool, count: bool) -> Any:
    """Per-sample cross-entropy, per-row argmax hits (where ``count``) and ``(P - Y) / N``."""
    f = scalar(dtype)
    zero, neg_inf = f(0.0), f(-np.inf)
    eps, high = f(EPSILON), f(1.0 - EPSILON)
    zero64, one64 = np.float64(0.0), np.float64(1.0)
    element = numba_type(dtype)
    group_sum, _, _, group_argmax = group_reductions(dtype)
    target = _target(dtype, sparse)

    @cuda.jit
    def softmax_crossentropy_batch_kernel(P, Y, scale, width, per_sample, hits, dZ):
        """As the crossentropy, argmax_match and scaled difference kernels, in one pass."""
        s = cuda.shared.array(THREADS, element)
        si = cuda.shared.array(THREADS, types.int64)
        N, O = P.shape
        t = cuda.threadIdx.x
        lane, group = t % width, t // width
        rows = cuda.blockDim.x // width
        for first in range(cuda.blockIdx.x * rows, N, cuda.gridDim.x * rows):
            i = first + group
            total = zero
            if i < N:
                for j in range(lane, O, width):
                    total += P[i, j]
            total = group_sum(s, t, lane, width, total)
            acc = zero
            best, at, label_best, label_at = neg_inf, O, neg_inf, O
            if i < N:
                for j in range(lane, O, width):
                    p, y = P[i, j], target(Y, i, j)
                    acc += y * math.log(min(max(p / total, eps), high))
                    dZ[i, j] = (p - y) * scale
                    if count and first_max(p, j, best, at):
                        best, at = p, j
                    if count and not sparse and first_max(y, j, label_best, label_at):
                        label_best, label_at = y, j
            acc = group_sum(s, t, lane, width, acc)
            predicted = expected = 0
            if count:
                predicted = group_argmax(s, si, t, lane, width, best, at)[1]
                if sparse:
                    expected = Y[i] if i < N else O
                else:
                    expected = group_argmax(s, si, t, lane, width, label_best, label_at)[1]
            if i < N and lane == 0:
                per_sample[i] = -acc
                if count:
                    hits[i] = one64 if predicted == expected else zero64

    return softmax_crossentropy_batch_kernel


def softmax_crossentropy_batch(
    P: Any,
    Y_true: Any,
    dZ: Any,
    loss_out: Any,
    count_out: Any = None,
    *,
    per_sample: Any = None,
    hits: Any = None,
) -> None:
    """Loss, accuracy count and gradient of softmax + categorical cross-entropy, one row kernel.

    Writes what ``loss``, ``reductions.count_correct`` and
    ``softmax.softmax_crossentropy_gradient`` write, bit for bit, reading the rows once:
    the row kernel writes per-sample losses, per-row hits and ``dZ``, then
    ``reductions.mean_all`` and ``reductions.sum_all`` reduce the first two.

    Args:
        P: C-contiguous float32 or float64 device array ``(N, O)``, softmax probabilities.
        Y_true: float one-hot ``(N, O)`` of the dtype of ``P``, or int64 labels ``(N,)``.
        dZ: device array of the shape and dtype of ``P``, receives ``(P - Y) / N``.
        loss_out: float64 device array ``(1,)``, receives the batch-mean cross-entropy.
        count_out: float64 device array ``(1,)`` for the number of rows whose argmax is
            the label's (``"categorical"`` or ``"sparse"`` accuracy), or ``None``.
        per_sample, hits: float64 device arrays ``(N,)`` for the per-sample losses and
            per-row hits, or ``None`` for reused scratch (``common.scratch``).
    """
    N, O = P.shape
    sparse, count = Y_true.ndim == 1, count_out is not None
    if per_sample is None:
        per_sample = scratch("per_sample", N, np.float64)
    if hits is None:
        hits = scratch("row_hits", N, np.float64) if count else _unread_flag()
    if N:  # else every output is empty: launch nothing
        blocks, threads, width = row_grid(N, O)
        kernel = _softmax_crossentropy_batch_kernel(P.dtype, sparse, count)
        scale = scalar(P.dtype)(1.0 / N)
        launch(kernel, (blocks, threads), P, Y_true, scale, width, per_sample, hits, dZ)
    reductions.mean_all(per_sample, loss_out)
    if count:
        reductions.sum_all(hits, count_out)


def _row_kernels(dtype: Any, name: str, logits: bool) -> tuple[Any, Any]:
    """``(value kernel, gradient kernel)`` of a loss that is not elementwise."""
    if name == "categorical_hinge":
        return _categorical_hinge_kernels(dtype)
    if name == "cosine_similarity":
        return _cosine_kernels(dtype)
    sparse = name == "sparse_categorical_crossentropy"
    if logits:
        return _crossentropy_logits_kernels(dtype, sparse)
    return _crossentropy_kernels(dtype, sparse)


def _nonbinary_labels(name: str, Y_true: Any) -> Any:
    """Float64 ``(1,)`` on the device: for the hinges, the number of labels other than 0 and 1.

    The other elementwise losses never read it: they get one cached array, so a
    training step allocates nothing for it.
    """
    if name not in _HINGES:
        return _unread_flag()
    count = scratch("nonbinary_labels", 1, np.float64)
    reductions.count_nonbinary(Y_true, count)
    return count


@functools.cache
def _unread_flag() -> Any:
    """The ``nonbinary`` argument of the losses whose kernels are compiled not to read it."""
    return cuda.device_array(1, np.float64)


def loss(
    name: str,
    Y_pred: Any,
    Y_true: Any,
    out: Any,
    *,
    from_logits: bool = False,
    per_sample: Any = None,
) -> None:
    """Write ``out[0]`` = the batch mean of the per-sample loss ``name`` (Keras 3 semantics).

    Args:
        name: one of ``LOSSES``.
        Y_pred: C-contiguous float32 or float64 device array ``(N, O)``, the model's
            output (logits where ``from_logits``).
        Y_true: float device array ``(N, O)`` of the dtype of ``Y_pred``, or int64
            class labels ``(N,)`` for ``"sparse_categorical_crossentropy"``.
        out: float64 device array ``(1,)``.
        from_logits: for the three cross-entropies, ``Y_pred`` holds logits;
            ignored by the other losses, as in Keras.
        per_sample: float64 device array ``(N,)`` for the per-sample values, or
            ``None`` for a reused scratch.

    Scratch, reused from call to call (``common.scratch``): ``per_sample`` when not
    given; for the hinge losses a float64 ``(1,)`` for the label count; the
    partial sums of ``reductions`` above 2048 rows or labels.

    Raises:
        KeyError: ``name`` is not one of ``LOSSES``.
    """
    if per_sample is None:
        per_sample = scratch("per_sample", Y_pred.shape[0], np.float64)
    per_sample_values(name, Y_pred, Y_true, per_sample, from_logits=from_logits)
    reductions.mean_all(per_sample, out)


def per_sample_values(
    name: str, Y_pred: Any, Y_true: Any, per_sample: Any, *, from_logits: bool = False
) -> None:
    """Write ``per_sample``, the per-sample values of the loss ``name`` (``loss`` averages
    them).

    Args:
        name: one of ``LOSSES``.
        Y_pred: C-contiguous float device array ``(N, O)``.
        Y_true: float ``(N, O)`` of the dtype of ``Y_pred``, or int64 labels ``(N,)`` for
            ``"sparse_categorical_crossentropy"``.
        per_sample: float64 device array ``(N,)``.
        from_logits: as in ``loss``.

    Raises:
        KeyError: ``name`` is not one of ``LOSSES``.
    """
    name, logits = _variant(name, from_logits)
    N, O = Y_pred.shape
    dtype = Y_pred.dtype
    blocks, threads, width = row_grid(N, O)
    if (name, logits) in _ELEMENTWISE:
        factor, _, per_output = _ELEMENTWISE[name, logits]
        # a mean over no outputs is NaN, as NumPy's
        scale = (
            scalar(dtype)(factor / O if O else math.nan) if per_output else scalar(dtype)(factor)
        )
        nonbinary = _nonbinary_labels(name, Y_true)
        kernel = _elementwise_value_kernel(dtype, name, logits)
        launch(kernel, (blocks, threads), Y_pred, Y_true, nonbinary, scale, width, per_sample)
    else:
        kernel = _row_kernels(dtype, name, logits)[0]
        launch(kernel, (blocks, threads), Y_pred, Y_true, width, per_sample)


def loss_gradient(
    name: str, Y_pred: Any, Y_true: Any, dY_pred: Any, *, from_logits: bool = False
) -> None:
    """Write ``dY_pred``, the gradient of ``loss(name, Y_pred, Y_true)`` with respect to ``Y_pred``.

    Exact, including the ``1 / N`` of the batch mean, the normalisation of
    probability rows in the categorical cross-entropy and zeros where a clip
    changes an element of ``Y_pred``.

    Args:
        name: one of ``LOSSES``.
        Y_pred: C-contiguous float32 or float64 device array ``(N, O)``.
        Y_true: float ``(N, O)`` of the dtype of ``Y_pred``, or int64 labels ``(N,)``
            for ``"sparse_categorical_crossentropy"``.
        dY_pred: device array of the shape and dtype of ``Y_pred``.
        from_logits: as in ``loss``.

    Scratch, reused from call to call (``common.scratch``): for the hinges a
    float64 ``(1,)`` for the label count.

    Raises:
        KeyError: ``name`` is not one of ``LOSSES``.
    """
    if dY_pred.size == 0:  # nothing to write: launch nothing
        return
    name, logits = _variant(name, from_logits)
    N, O = Y_pred.shape
    dtype = Y_pred.dtype
    if (name, logits) in _ELEMENTWISE:
        _, factor, per_output = _ELEMENTWISE[name, logits]
        scale = scalar(dtype)(factor / (N * O) if per_output else factor / N)
        nonbinary = _nonbinary_labels(name, Y_true)
        p, y, dp = (
            Y_pred.reshape(Y_pred.size),
            Y_true.reshape(Y_true.size),
            dY_pred.reshape(dY_pred.size),
        )
        kernel = _elementwise_gradient_kernel(dtype, name, logits)
        launch(kernel, grid_for(Y_pred.size), p, y, nonbinary, scale, dp)
    else:
        blocks, threads, width = row_grid(N, O)
        kernel = _row_kernels(dtype, name, logits)[1]
        launch(kernel, (blocks, threads), Y_pred, Y_true, scalar(dtype)(1.0 / N), width, dY_pred)


def ptx_variants() -> Iterator[PtxVariant]:
    """Every loss and gradient kernel, for each dtype, with its argument types.

    The reductions these launchers also launch are in ``reductions.ptx_variants``.
    """
    flat64, labels, i64 = array(np.float64, 1), array(np.int64, 1), types.int64
    for dtype in FLOAT_DTYPES:
        flat, rows, real = array(dtype, 1), array(dtype, 2), numba_type(dtype)
        short = dtype.name.replace("float", "f")
        for name, logits in VARIANTS:
            label = f"{name},logits,{short}" if logits else f"{name},{short}"
            if (name, logits) in _ELEMENTWISE:
                value = _elementwise_value_kernel(dtype, name, logits)
                yield f"loss[{label}]", value, (rows, rows, flat64, real, i64, flat64)
                gradient = _elementwise_gradient_kernel(dtype, name, logits)
                yield f"loss_gradient[{label}]", gradient, (flat, flat, flat64, real, flat)
            else:
                targets = labels if name == "sparse_categorical_crossentropy" else rows
                value, gradient = _row_kernels(dtype, name, logits)
                yield f"loss[{label}]", value, (rows, targets, i64, flat64)
                yield f"loss_gradient[{label}]", gradient, (rows, targets, real, i64, rows)
        for sparse, count in itertools.product((False, True), repeat=2):
            targets = labels if sparse else rows
            label = f"{'sparse,' if sparse else ''}{'count,' if count else ''}{short}"
            kernel = _softmax_crossentropy_batch_kernel(dtype, sparse, count)
            argtypes = (rows, targets, real, i64, flat64, flat64, rows)
            yield f"softmax_crossentropy_batch[{label}]", kernel, argtypes
