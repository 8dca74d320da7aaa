"""The fused narrow-MLP step (``kernels/fused_mlp.py``) against a float64 NumPy reference,
and the numba engine's use of it (``backends/numba_fused.py``).

A tile is 32 rows and the input is staged 32 columns at a time, so batches of 1,
5, 33 and 70 rows (one to three tiles, the last partial; two or three backward
blocks whose partial sums are then added) and inputs of 3, 6 and 40 columns
(within one slab and over two) cover the edges. In the simulator a block is 128
OS threads: the shapes stay small and each case runs once.
"""

from __future__ import annotations

import numpy as np
import pytest
from dlcore.backends import numba_fused, xp_activations
from dlcore.backends.base import Workspace
from dlcore.kernels import fused_mlp, reductions, roofline
from numba import cuda

import dlcore
from dlcore import backends
from dlcore.layers import Dense
from dlcore.models import Sequential

EPSILON = 1e-7

# (widths, hidden activations, batch rows, int labels, dtype)
CASES = {
    "1-layer": ((6, 3), (), 1, False, np.float64),
    "relu-slabs": ((40, 7, 3), ("relu",), 33, True, np.float32),
    "tanh-sigmoid": ((6, 5, 4, 3), ("tanh", "sigmoid"), 5, False, np.float64),
    "linear-relu": ((6, 5, 4, 3), ("linear", "relu"), 70, True, np.float32),
    "sigmoid-slabs": ((40, 5, 3), ("sigmoid",), 70, False, np.float64),
    "relu-tanh": ((3, 4, 5, 2), ("relu", "tanh"), 5, True, np.float32),
    "linear-slabs": ((40, 4, 3), ("linear",), 1, True, np.float64),
    "1-layer-slabs": ((40, 4), (), 33, False, np.float32),
}


def make_problem(rng, widths, N, sparse, dtype):
    """``(X, Y_true, weights, biases)`` on the host; Y_true int64 labels if ``sparse``."""
    X = rng.standard_normal((N, widths[0])).astype(dtype)
    weights = [
        (rng.standard_normal((i, o)) / np.sqrt(i)).astype(dtype)
        for i, o in zip(widths[:-1], widths[1:])
    ]
    biases = [(0.5 * rng.standard_normal(o)).astype(dtype) for o in widths[1:]]
    labels = rng.integers(0, widths[-1], N)
    Y_true = labels.astype(np.int64) if sparse else np.eye(widths[-1], dtype=dtype)[labels]
    return X, Y_true, weights, biases


def reference(X, Y_true, weights, biases, activations):
    """Float64 ``(loss, P, dW, db)`` and each one's magnitude (the chain run on ``|.|``)."""
    A, A_abs, Zs = [X.astype(np.float64)], [np.abs(X.astype(np.float64))], []
    W64 = [W.astype(np.float64) for W in weights]
    for layer, (W, b) in enumerate(zip(W64, biases)):
        Z = A[-1] @ W + b
        Z_abs = A_abs[-1] @ np.abs(W) + np.abs(b)
        if layer < len(weights) - 1:
            Zs.append(Z)
            A.append(xp_activations.forward(np, activations[layer], Z))
            A_abs.append(np.maximum(np.abs(A[-1]), Z_abs))
    e = np.exp(Z - Z.max(axis=1, keepdims=True))
    P = e / e.sum(axis=1, keepdims=True)
    N, C = P.shape
    Y = np.eye(C)[Y_true] if Y_true.ndim == 1 else Y_true.astype(np.float64)
    loss = -(Y * np.log(np.clip(P / P.sum(axis=1, keepdims=True), EPSILON, 1 - EPSILON))).sum(1)
    G, G_abs = (P - Y) / N, (P + Y) / N
    dW, db, dW_abs, db_abs = [], [], [], []
    for layer in range(len(weights) - 1, -1, -1):
        dW.insert(0, A[layer].T @ G)
        db.insert(0, G.sum(axis=0))
        dW_abs.insert(0, A_abs[layer].T @ G_abs)
        db_abs.insert(0, G_abs.sum(axis=0))
        if layer > 0:
            Z_below, Y_below = Zs[layer - 1], A[layer]
            ones = np.ones_like(Y_below)
            slope = xp_activations.backward(np, activations[layer - 1], ones, Z_below, Y_below)
            G = (G @ W64[layer].T) * slope
            G_abs = (G_abs @ np.abs(W64[layer]).T) * np.abs(slope)
    return (loss.mean(), P, dW, db), (Z_abs.max(axis=1, keepdims=True), dW_abs, db_abs)


def run_fused(X, Y_true, weights, biases, activations):
    """``(loss, P, dW, db)`` from the fused kernels, on the host."""
    N, dtype = X.shape[0], X.dtype
    dW = [cuda.device_array(W.shape, dtype) for W in weights]
    db = [cuda.device_array(b.shape, dtype) for b in biases]
    outputs = [cuda.device_array((N, W.shape[1]), dtype) for W in weights]
    plan = fused_mlp.plan(
        N,
        [cuda.to_device(W) for W in weights],
        [cuda.to_device(b) for b in biases],
        dW,
        db,
        activations,
        outputs,
    )
    per_sample = cuda.device_array(N, np.float64)
    dP = cuda.device_array((N, weights[-1].shape[1]), dtype)
    loss = cuda.device_array(1, np.float64)
    device_X = cuda.to_device(X)
    fused_mlp.forward(plan, device_X, cuda.to_device(Y_true), per_sample, dP)
    reductions.mean_all(per_sample, loss)
    fused_mlp.backward(plan, device_X, dP)
    return (
        loss.copy_to_host()[0],
        outputs[-1].copy_to_host(),
        [g.copy_to_host() for g in dW],
        [g.copy_to_host() for g in db],
    )


def assert_within(got, expected, atol, what):
    """``|got - expected| <= atol`` elementwise (``atol`` an array of the outputs' shape)."""
    error = np.abs(got.astype(np.float64) - expected)
    worst = np.unravel_index(np.argmax(error - atol), error.shape)
    assert np.all(error <= atol), (
        f"{what}: |error| {error[worst]:.3g} > atol {np.broadcast_to(atol, error.shape)[worst]:.3g}"
        f" at {worst}"
    )


@pytest.mark.parametrize("case", list(CASES))
def test_fused_step_matches_the_float64_reference(case, rng, fma_atol):
    widths, activations, N, sparse, dtype = CASES[case]

    def tolerance(magnitude):
        """16 ulps of ``dtype`` per layer (its product, bias, activation and the sum over
        the batch) of the output's magnitude: the sum of the terms' absolute values."""
        return fma_atol(magnitude, dtype=dtype, ulps=16 * (len(widths) - 1))

    X, Y_true, weights, biases = make_problem(rng, widths, N, sparse, dtype)
    loss, P, dW, db = run_fused(X, Y_true, weights, biases, activations)
    (loss_ref, P_ref, dW_ref, db_ref), (logits, dW_abs, db_abs) = reference(
        X, Y_true, weights, biases, activations
    )
    assert P.dtype == dtype and all(g.dtype == dtype for g in (*dW, *db))
    logit_atol = tolerance(logits)
    assert_within(P, P_ref, 2 * logit_atol.max(), "P")
    assert abs(loss - loss_ref) <= 2 * logit_atol.max() + tolerance(loss_ref)
    for layer in range(len(weights)):
        for name, got, expected, magnitude in (
            ("dW", dW[layer], dW_ref[layer], dW_abs[layer]),
            ("db", db[layer], db_ref[layer], db_abs[layer]),
        ):
            assert_within(got, expected, tolerance(magnitude), f"{name} of layer {layer}")


def test_repeated_steps_are_bit_identical(rng):
    X, Y_true, weights, biases = make_problem(rng, (6, 5, 3), 70, False, np.float32)
    first = run_fused(X, Y_true, weights, biases, ("tanh",))
    second = run_fused(X, Y_true, weights, biases, ("tanh",))
    assert first[0] == second[0]
    np.testing.assert_array_equal(first[1], second[1])
    for a, b in zip(first[2] + first[3], second[2] + second[3]):
        np.testing.assert_array_equal(a, b)


def test_blocks_walk_several_tiles_when_the_grids_are_capped(rng, monkeypatch):
    widths, activations = (6, 5, 3), ("relu",)
    X, Y_true, weights, biases = make_problem(rng, widths, 70, True, np.float64)
    monkeypatch.setattr(fused_mlp, "MAX_BLOCKS", 1)  # one forward block: three tiles
    monkeypatch.setattr(fused_mlp, "MAX_PARTIALS", 2)  # backward block 0 adds tiles 0 and 2
    loss, P, dW, db = run_fused(X, Y_true, weights, biases, activations)
    (loss_ref, P_ref, dW_ref, db_ref), _ = reference(X, Y_true, weights, biases, activations)
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-12)
    np.testing.assert_allclose(P, P_ref, rtol=0, atol=1e-13)
    for got, expected in zip(dW + db, dW_ref + db_ref):
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-13)


def test_an_empty_batch_launches_nothing(rng):
    _, _, weights, biases = make_problem(rng, (4, 3), 0, False, np.float32)
    device = [cuda.to_device(a) for a in (*weights, *biases)]
    plan = fused_mlp.plan(0, device[:1], device[1:], device[:1], device[1:], (), [device[0]])
    empty = cuda.device_array((0, 4), np.float32)
    fused_mlp.forward(plan, empty, empty, cuda.device_array(0, np.float64), empty)
    fused_mlp.backward(plan, empty, empty)


def test_only_narrow_stacks_of_the_stack_activations_are_fused():
    assert fused_mlp.supports((784, 128, 128, 10), ("relu", "sigmoid"), np.float32)
    assert fused_mlp.supports((3, 2), (), np.float64)
    assert not fused_mlp.supports((784, 129, 10), ("relu",), np.float32)
    assert not fused_mlp.supports((784, 64, 129), ("relu",), np.float32)
    assert not fused_mlp.supports((784, 64, 10), ("elu",), np.float32)
    assert not fused_mlp.supports((784, 64, 10), ("relu",), np.float16)


# ---------------------------------------------------------------------- the engine


def _stack_arguments(engine, rng, widths, activations, N, sparse, dtype="float64"):
    X, Y_true, weights, biases = make_problem(rng, widths, N, sparse, np.dtype(dtype))

    def device(a):
        return engine.asarray(a, dtype=str(a.dtype))

    return (
        device(X),
        device(Y_true),
        [device(W) for W in weights],
        [device(b) for b in biases],
        [engine.zeros(W.shape, dtype=dtype) for W in weights],
        [engine.zeros(b.shape, dtype=dtype) for b in biases],
        list(activations),
        [Workspace(engine) for _ in range(len(weights) + 1)],
    )


def _step(engine, arguments):
    """``(loss, P, dW, db)`` of ``engine.dense_stack_step`` on the host."""
    X, Y, weights, biases, dW, db, activations, workspaces = arguments
    loss, P = engine.dense_stack_step(
        X, Y, weights, biases, dW, db, activations, workspaces=workspaces
    )
    host = engine.to_numpy
    return host(loss), host(P), [host(g) for g in dW], [host(g) for g in db]


@pytest.mark.parametrize(
    ("widths", "activations"),
    [((3, 129, 2), ("relu",)), ((3, 4, 2), ("elu",))],
    ids=["width-129", "elu"],
)
def test_the_engine_falls_back_to_the_default_step(widths, activations, monkeypatch):

    def refuse(*args, **kwargs):
        raise AssertionError("the fused step ran")

    monkeypatch.setattr(numba_fused, "run", refuse)
    numba, numpy = backends.get("numba"), backends.get("numpy")
    arguments = [
        _stack_arguments(engine, np.random.default_rng(7), widths, activations, 3, True)
        for engine in (numba, numpy)
    ]
    got, expected = _step(numba, arguments[0]), _step(numpy, arguments[1])
    assert got[0].shape == () and got[1].shape == (3, widths[-1])
    for a, b in zip(
        [got[0], got[1], *got[2], *got[3]], [expected[0], expected[1], *expected[2], *expected[3]]
    ):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)


def test_the_engine_step_takes_every_array_from_the_workspaces(rng):

    engine = backends.get("numba")
    arguments = _stack_arguments(engine, rng, (6, 5, 3), ("tanh",), 5, False)
    loss, P = engine.dense_stack_step(*arguments[:7], workspaces=arguments[7])
    workspaces = arguments[7]
    assert P is workspaces[1].array("Y", (5, 3), "float64")
    assert type(loss).__name__ == "DeviceScalar" and loss.dtype == np.float64
    again = engine.dense_stack_step(*arguments[:7], workspaces=workspaces)
    assert again[1] is P and again[0].slot == loss.slot + 1
    assert engine.to_numpy(again[0]) == engine.to_numpy(loss)


def _train(engine_name, dtype, loss, labels_as_ints):

    rng = np.random.default_rng(0)
    x = rng.standard_normal((80, 6))
    labels = (x[:, 0] + x[:, 1] > 0).astype(int) + (x[:, 2] > 0.8)
    y = labels if labels_as_ints else np.eye(3)[labels]
    dlcore.set_floatx(dtype)
    dlcore.set_random_seed(3)
    with dlcore.use_backend(engine_name):
        model = Sequential(
            [
                Dense(7, activation="relu", input_shape=(6,)),
                Dense(5, activation="sigmoid"),
                Dense(3, activation="softmax"),
            ]
        )
        model.compile(optimizer="adam", loss=loss, metrics=["accuracy"])
        # 60 training rows in batches of 40 and 20: two tiles, then one
        history = model.fit(x, y, batch_size=40, epochs=2, validation_split=0.25, verbose=0)
        return history.history, model.predict(x, verbose=0), model.get_weights()


@pytest.mark.parametrize(
    ("dtype", "rtol", "loss"),
    [
        ("float64", 1e-10, "categorical_crossentropy"),
        ("float32", 1e-4, "categorical_crossentropy"),
        ("float64", 1e-10, "sparse_categorical_crossentropy"),
    ],
)
def test_fit_with_the_fused_step_matches_numpy(dtype, rtol, loss, monkeypatch):

    runs = []
    original = numba_fused.run
    monkeypatch.setattr(
        numba_fused, "run", lambda *args: runs.append(args[0].plan.rows) or original(*args)
    )
    sparse = loss.startswith("sparse")
    expected = _train("numpy", dtype, loss, sparse)
    got = _train("numba", dtype, loss, sparse)
    assert runs == [40, 20, 40, 20]
    for key, values in expected[0].items():
        np.testing.assert_allclose(got[0][key], values, rtol=rtol, atol=rtol * 1e-3, err_msg=key)
    np.testing.assert_allclose(got[1], expected[1], rtol=rtol, atol=rtol * 1e-3)
    for w_got, w_expected in zip(got[2], expected[2]):
        np.testing.assert_allclose(w_got, w_expected, rtol=rtol, atol=rtol * 1e-3)


def test_the_cost_model_counts_the_fused_launches_and_products():
    widths, batch = roofline.CASES["tiny"]
    fused = roofline.fused_training_step(widths, batch)
    # gathers, forward, loss mean, accuracy, backward, Adam: one block, no partials to add
    assert len(fused) == 7 and len(roofline.training_step(widths, batch)) == 18
    weights = sum(i * o for i, o in zip(widths[:-1], widths[1:]))
    products = sum(c.flops for c in fused if c.kernel.startswith("fused"))
    # forward, dW and dX but the first layer's, plus the elementwise work
    assert products >= 6 * batch * weights - 2 * batch * 784 * 50
    assert any(c.kernel.startswith("sum of 4") for c in roofline.fused_training_step(widths, 128))
    with pytest.raises(ValueError, match="exceed"):
        roofline.fused_training_step(*roofline.CASES["small"])
    assert "Outside the fused kernels' envelope" in roofline.fused_markdown()
