"""Loss kernels against the NumPy reference ``backends/xp_losses.py`` (values and gradients).

Every loss (and the logit forms of the cross-entropies) is checked in float64
on one row of one output (a group of one lane in a one-warp block), 3 rows of
17 (a warp a row) and 33 rows of 5 (groups of 8 lanes, 32 rows to a block, so
two blocks), and in float32 on 33 rows of 5 against the reference computed in
float32, so that both use float32's clip bounds. Rows wider than a block are
checked on the losses with a row-wide argmax and sum. The inputs sit in each
loss's domain and reach its corners: elements past the clip bounds, 0/1 and
-1/1 hinge labels, ties for the categorical hinge's argmax, zero rows for the
cosine's clamped norm. Simulated blocks cost about 25 ms per ``syncthreads``
for 256 threads, so the shapes stay small and few.
"""

from __future__ import annotations

import numpy as np
import pytest
from dlcore.backends import xp_losses
from dlcore.kernels import losses
from numba import cuda

VARIANTS = [
    pytest.param(name, logits, id=f"{name}{'-logits' if logits else ''}")
    for name, logits in losses.VARIANTS
]


def make_inputs(name: str, logits: bool, shape: tuple[int, int], seed: int = 0):
    """Float64 ``(Y_pred, Y_true)`` in the domain of the loss, with its edge cases."""
    rng = np.random.default_rng(seed)
    N, O = shape
    normal = rng.standard_normal(shape)
    one_hot = np.eye(O)[rng.integers(0, O, size=N)]
    if logits:
        P = 3.0 * normal
        if name == "binary_crossentropy":
            return P, rng.uniform(size=shape)
        if name == "sparse_categorical_crossentropy":
            return P, rng.integers(0, O, size=N).astype(np.int64)
        return P, one_hot
    if name in ("mean_squared_error", "mean_absolute_error", "log_cosh", "poisson"):
        if name == "poisson":
            P, Y = rng.uniform(0.0, 3.0, shape), rng.poisson(1.0, shape).astype(np.float64)
        else:
            P, Y = 2.0 * normal, rng.standard_normal(shape)
        Y.flat[0] = P.flat[0]  # a zero error: sign(0) = 0
        return P, Y
    if name == "mean_absolute_percentage_error":
        Y = rng.standard_normal(shape)
        Y.flat[0] = 0.0  # |y| clipped to eps
        return 2.0 * normal, Y
    if name == "mean_squared_logarithmic_error":
        # negative predictions are clipped to eps (no gradient); so are negative targets
        return normal, rng.uniform(-0.5, 2.0, shape)
    if name in ("hinge", "squared_hinge"):
        # 0/1 labels; margins on both sides of 1
        return 1.5 * normal, rng.integers(0, 2, shape).astype(np.float64)
    if name == "categorical_hinge":
        P = rng.uniform(size=shape)
        if O >= 3:
            labels = one_hot.argmax(axis=1)
            for i in range(N):
                others = [j for j in range(O) if j != labels[i]]
                P[i, others[1]] = P[i, others[-1]] = 2.0  # a tie for the max: first one wins
            P[0, labels[0]] = 5.0  # a margin below zero: no gradient
        return P, one_hot
    if name in ("categorical_crossentropy", "sparse_categorical_crossentropy"):
        P = rng.uniform(0.05, 1.0, shape)  # unnormalised rows: the loss divides by their sums
        P.flat[1 % P.size] = 1e-12  # below eps after normalisation
        if N >= 2:
            P[1] = 1e-9
            P[1, 0] = 1.0  # above 1 - eps after normalisation
        if name == "sparse_categorical_crossentropy":
            return P, rng.integers(0, O, size=N).astype(np.int64)
        return P, rng.dirichlet(np.ones(O), size=N)  # soft labels
    if name == "binary_crossentropy":
        P = rng.uniform(size=shape)
        P.flat[: min(4, P.size)] = [1e-9, 1.0 - 1e-9, 0.0, 1.0][: min(4, P.size)]
        return P, rng.uniform(size=shape)
    if name == "kl_divergence":
        P, Y = rng.dirichlet(np.ones(O), size=N), rng.dirichlet(np.ones(O), size=N)
        P.flat[0] = 1e-9
        Y.flat[-1] = 1e-10
        return P, Y
    if name == "cosine_similarity":
        P, Y = normal, rng.standard_normal(shape)
        if N >= 2:
            P[1] *= 1e-9  # the norm is clamped: no projection in the gradient
            Y[-1] = 0.0
        return P, Y
    raise AssertionError(name)


def run_loss(name, logits, P, Y):
    """``(loss, gradient)`` from the kernels, on the host."""
    d_P, d_Y = cuda.to_device(P), cuda.to_device(Y)
    out = cuda.device_array(1, dtype=np.float64)
    dP = cuda.device_array(P.shape, dtype=P.dtype)
    losses.loss(name, d_P, d_Y, out, from_logits=logits)
    losses.loss_gradient(name, d_P, d_Y, dP, from_logits=logits)
    return out.copy_to_host()[0], dP.copy_to_host()


def compare(name, logits, P, Y, value, gradient, rtol):
    """Kernel results against the reference computed in the dtype of ``P``."""
    expected = float(xp_losses.loss(np, name, P, Y, from_logits=logits))
    expected_gradient = xp_losses.backprop_loss(np, name, P, Y, from_logits=logits)
    # Scales: a mean of per-sample values can cancel, so the value's scale is at least 1.
    np.testing.assert_allclose(value, expected, rtol=rtol, atol=rtol * max(1.0, abs(expected)))
    scale = float(np.max(np.abs(expected_gradient)))
    np.testing.assert_allclose(gradient, expected_gradient, rtol=rtol, atol=rtol * scale)


def check(name, logits, P, Y, rtol):
    """Kernels against the reference computed in the dtype of ``P``."""
    compare(name, logits, P, Y, *run_loss(name, logits, P, Y), rtol=rtol)


@pytest.mark.parametrize(("name", "logits"), VARIANTS)
def test_loss_and_gradient_match_the_reference(name, logits):
    for shape in [(1, 1), (3, 17), (33, 5)]:
        check(name, logits, *make_inputs(name, logits, shape), rtol=1e-12)
    P, Y = make_inputs(name, logits, (33, 5), seed=1)
    P32, Y32 = P.astype(np.float32), (Y if Y.dtype == np.int64 else Y.astype(np.float32))
    value, gradient = run_loss(name, logits, P32, Y32)
    compare(name, logits, P32, Y32, value, gradient, rtol=1e-5)
    if name != "binary_crossentropy" or logits:
        # Also within 1e-5 of float64 math, except binary cross-entropy at its clip bound:
        # 1 - 1e-7 rounds to 1 - 1.19e-7 in float32, and log(1 - p) follows.
        P64, Y64 = P32.astype(np.float64), Y32.astype(Y.dtype)
        compare(name, logits, P64, Y64, value, gradient, rtol=1e-5)


@pytest.mark.parametrize("name", ["hinge", "squared_hinge"])
@pytest.mark.parametrize(
    "labels",
    [
        pytest.param([-1.0, 1.0], id="minus-one-one"),
        # one label outside {0, 1}: no label of the batch is converted
        pytest.param([0.0, 1.0, 0.5], id="not-all-binary"),
    ],
)
def test_hinge_converts_labels_only_when_every_label_is_0_or_1(name, labels):
    rng = np.random.default_rng(2)
    P = 1.5 * rng.standard_normal((3, 5))
    Y = rng.choice(labels, size=P.shape)
    Y.flat[: len(labels)] = labels
    check(name, False, P, Y, rtol=1e-12)


@pytest.mark.parametrize("name", ["categorical_hinge", "categorical_crossentropy"])
def test_rows_wider_than_a_block(name):
    # 300 columns: a whole block a row, each lane strides over two columns.
    P, Y = make_inputs(name, False, (1, 300), seed=4)
    if name == "categorical_hinge":
        Y[:] = 0.0
        Y[0, 0] = 1.0
        P[0, [10, 266, 299]] = 3.0  # tied maxima in lanes 10, 10 and 43: index 10 wins
    check(name, False, P, Y, rtol=1e-12)


def test_unknown_loss_names_the_valid_ones():
    P = cuda.to_device(np.zeros((1, 1)))
    out = cuda.device_array(1, dtype=np.float64)
    with pytest.raises(KeyError, match="mean_squared_error"):
        losses.loss("mse", P, P, out)
    with pytest.raises(KeyError, match="cosine_similarity"):
        losses.loss_gradient("cosine", P, P, P)


def test_every_elementwise_loss_has_its_device_functions():
    assert set(losses._elementwise_terms(np.float64)) == set(losses._ELEMENTWISE)
    assert set(losses._ELEMENTWISE) <= set(losses.VARIANTS)
