"""Conformance of every engine's operations with independent float64 NumPy references."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from dlcore.backends import xp_activations
from dlcore.backends.base import Engine, Workspace

from dlcore import backends

SHAPES = [(5, 23, 7), (1, 3, 1), (17, 33, 65)]  # odd sizes catch edge handling


def numerical_gradient(f, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central finite differences of the scalar function f at x (float64)."""
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        saved = x[index]
        x[index] = saved + eps
        up = f(x)
        x[index] = saved - eps
        down = f(x)
        x[index] = saved
        grad[index] = (up - down) / (2 * eps)
    return grad


def _parameters(function) -> list[tuple]:
    """Names, kinds and defaults of a function's parameters (annotations aside)."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


def test_every_engine_has_exactly_the_interface_signatures():
    for name in backends.engine_names():
        cls = backends.engine_class(name)
        for method_name, base_method in vars(Engine).items():
            if not callable(base_method) or method_name.startswith("_"):
                continue
            if isinstance(base_method, property):
                continue
            method = getattr(cls, method_name)
            assert _parameters(method) == _parameters(base_method), (
                f"{name}.{method_name} has signature {inspect.signature(method)}, "
                f"the interface says {inspect.signature(base_method)}"
            )
        assert not getattr(cls, "__abstractmethods__", None), (name, cls.__abstractmethods__)


def test_unknown_engine_lists_the_available_ones():
    with pytest.raises(ValueError, match=r"unknown engine 'tensorflow'; available: numpy, cupy"):
        backends.get("tensorflow")


def test_available_reports_every_engine_with_a_reason():
    infos = {info.name: info for info in backends.available()}
    assert set(infos) == set(backends.engine_names())
    assert infos["numpy"].available
    for info in infos.values():
        assert info.detail
        if not info.available:
            assert "install" in info.detail or "GPU" in info.detail


@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_gemm_with_transposes(engine, rng, m, k, n, trans_a, trans_b):
    A = rng.standard_normal((k, m) if trans_a else (m, k))
    B = rng.standard_normal((n, k) if trans_b else (k, n))
    expected = (A.T if trans_a else A) @ (B.T if trans_b else B)
    got = engine.to_numpy(
        engine.gemm(
            engine.asarray(A, dtype="float64"),
            engine.asarray(B, dtype="float64"),
            trans_a=trans_a,
            trans_b=trans_b,
        )
    )
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("activation", ["linear", "relu", "tanh", "softmax", "gelu"])
@pytest.mark.parametrize("use_bias", [True, False])
def test_dense_forward_and_backward_match_finite_differences(engine, rng, activation, use_bias):
    N, I, O = 5, 4, 3
    X = rng.standard_normal((N, I))
    W = rng.standard_normal((I, O))
    b = rng.standard_normal(O) if use_bias else None
    upstream = rng.standard_normal((N, O))

    def host_forward(X_, W_, b_):
        Z = X_ @ W_ + (b_ if b_ is not None else 0.0)
        return engine.to_numpy(engine.activation(activation, engine.asarray(Z, dtype="float64")))

    to = lambda a: None if a is None else engine.asarray(a, dtype="float64")  # noqa: E731
    Z, Y = engine.dense_forward(to(X), to(W), to(b), activation)
    np.testing.assert_allclose(engine.to_numpy(Y), host_forward(X, W, b), rtol=1e-12)

    dW = engine.zeros((I, O), dtype="float64")
    db = engine.zeros((O,), dtype="float64") if use_bias else None
    dX = engine.dense_backward(
        to(upstream), to(X), to(W), Z, Y, activation, dW=dW, db=db, need_dX=True
    )
    objective = lambda X_, W_, b_: float(np.sum(upstream * host_forward(X_, W_, b_)))  # noqa: E731
    np.testing.assert_allclose(
        engine.to_numpy(dX), numerical_gradient(lambda v: objective(v, W, b), X.copy()), atol=1e-7
    )
    np.testing.assert_allclose(
        engine.to_numpy(dW), numerical_gradient(lambda v: objective(X, v, b), W.copy()), atol=1e-7
    )
    if use_bias:
        np.testing.assert_allclose(
            engine.to_numpy(db),
            numerical_gradient(lambda v: objective(X, W, v), b.copy()),
            atol=1e-7,
        )
    assert (
        engine.dense_backward(
            to(upstream), to(X), to(W), Z, Y, activation, dW=dW, db=db, need_dX=False
        )
        is None
    )


def test_prelu_forward_and_backward(engine, rng):
    X = rng.standard_normal((6, 4))
    X[np.abs(X) < 1e-3] = 0.5
    alpha = rng.uniform(0.1, 0.5, 4)
    upstream = rng.standard_normal((6, 4))
    reference = np.where(X > 0, X, alpha * X)
    got = engine.prelu(engine.asarray(X, dtype="float64"), engine.asarray(alpha, dtype="float64"))
    np.testing.assert_allclose(engine.to_numpy(got), reference, rtol=1e-14)
    dalpha = engine.zeros((4,), dtype="float64")
    dX = engine.backprop_prelu(
        engine.asarray(upstream, dtype="float64"),
        engine.asarray(X, dtype="float64"),
        engine.asarray(alpha, dtype="float64"),
        dalpha=dalpha,
    )
    f = lambda X_, a_: float(np.sum(upstream * np.where(X_ > 0, X_, a_ * X_)))  # noqa: E731
    np.testing.assert_allclose(
        engine.to_numpy(dX), numerical_gradient(lambda v: f(v, alpha), X.copy()), atol=1e-7
    )
    np.testing.assert_allclose(
        engine.to_numpy(dalpha), numerical_gradient(lambda v: f(X, v), alpha.copy()), atol=1e-7
    )


@pytest.mark.parametrize("l1,l2", [(0.01, 0.0), (0.0, 0.02), (0.01, 0.03)])
def test_penalty_and_its_gradient(engine, rng, l1, l2):
    W = rng.standard_normal((4, 3))
    value = float(engine.to_numpy(engine.penalty(engine.asarray(W, dtype="float64"), l1=l1, l2=l2)))
    assert value == pytest.approx(l1 * np.abs(W).sum() + l2 * (W**2).sum(), rel=1e-13)
    start = rng.standard_normal((4, 3))
    dW = engine.asarray(start.copy(), dtype="float64")
    engine.backprop_penalty(engine.asarray(W, dtype="float64"), dW, l1=l1, l2=l2)
    f = lambda W_: l1 * np.abs(W_).sum() + l2 * (W_**2).sum()  # noqa: E731
    np.testing.assert_allclose(
        engine.to_numpy(dW), start + numerical_gradient(f, W.copy()), atol=1e-7
    )


def test_split_views_share_memory_with_the_flat_buffer(engine):
    flat = engine.zeros((10,), dtype="float64")
    a, b = engine.split_views(flat, [(2, 3), (4,)])
    engine.assign(a, engine.asarray(np.arange(6.0).reshape(2, 3), dtype="float64"))
    engine.assign(b, engine.asarray(np.full(4, 7.0), dtype="float64"))
    np.testing.assert_array_equal(engine.to_numpy(flat), [0, 1, 2, 3, 4, 5, 7, 7, 7, 7])
    plain_sgd = {"learning_rate": 1.0, "momentum": 0.0, "nesterov": False}
    engine.optimizer_step(
        "sgd", flat, engine.asarray(np.ones(10), dtype="float64"), [None], plain_sgd
    )
    np.testing.assert_array_equal(engine.to_numpy(a), np.arange(6.0).reshape(2, 3) - 1)


def test_optimizer_step_on_row_slices_writes_through_to_the_flat_buffers(engine):
    """An optimizer updates some layers' range of its flat buffers through slice_rows."""
    params = engine.asarray(np.arange(10.0), dtype="float64")
    velocity = engine.asarray(np.full(10, 0.5), dtype="float64")
    grads = engine.asarray(np.full(10, 2.0), dtype="float64")
    hyper = {"learning_rate": 0.25, "momentum": 0.5, "nesterov": False}
    views = [engine.slice_rows(array, 3, 7) for array in (params, grads, velocity)]
    engine.optimizer_step("sgd", views[0], views[1], [views[2]], hyper)
    expected_velocity = np.where((np.arange(10) >= 3) & (np.arange(10) < 7), 0.5 * 0.5 - 0.5, 0.5)
    np.testing.assert_array_equal(engine.to_numpy(velocity), expected_velocity)
    np.testing.assert_array_equal(
        engine.to_numpy(params), np.arange(10.0) + np.where(expected_velocity < 0, -0.25, 0.0)
    )
    np.testing.assert_array_equal(engine.to_numpy(grads), np.full(10, 2.0))


def test_take_rows_and_scalars_to_numpy(engine):
    A = engine.asarray(np.arange(12.0).reshape(4, 3), dtype="float32")
    rows = engine.take_rows(A, engine.asarray(np.array([3, 0]), dtype="int64"))
    np.testing.assert_array_equal(engine.to_numpy(rows), [[9, 10, 11], [0, 1, 2]])
    scalars = [engine.penalty(A, l1=1.0, l2=0.0), engine.penalty(A, l1=0.0, l2=1.0)]
    np.testing.assert_allclose(engine.scalars_to_numpy(scalars), [66.0, 506.0])


def test_dropout_masks_scale_kept_units_and_follow_the_seed(engine):
    X = np.ones((200, 50))
    engine.seed(7)
    Y, mask = engine.dropout(engine.asarray(X, dtype="float64"), rate=0.25)
    Y, mask = engine.to_numpy(Y), engine.to_numpy(mask)
    assert set(np.unique(mask)) == {0.0, 1 / 0.75}
    assert abs((mask == 0).mean() - 0.25) < 0.02
    np.testing.assert_array_equal(Y, X * mask)
    dX = engine.backprop_dropout(
        engine.asarray(2 * X, dtype="float64"), engine.asarray(mask, dtype="float64")
    )
    np.testing.assert_array_equal(engine.to_numpy(dX), 2 * X * mask)
    engine.seed(7)
    _, again = engine.dropout(engine.asarray(X, dtype="float64"), rate=0.25)
    np.testing.assert_array_equal(engine.to_numpy(again), mask)


def test_count_correct_kinds(engine):
    P = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.2, 0.6], [0.9, 0.05, 0.05]])
    labels = np.array([1, 0, 1, 2])
    onehot = np.eye(3)[labels]
    f = lambda a: engine.asarray(a, dtype="float64")  # noqa: E731
    assert float(engine.to_numpy(engine.count_correct("categorical", f(P), f(onehot)))) == 2
    sparse = engine.count_correct("sparse", f(P), engine.asarray(labels, dtype="int64"))
    assert float(engine.to_numpy(sparse)) == 2
    binary = engine.count_correct("binary", f(P), f(onehot))
    assert float(engine.to_numpy(binary)) == float(np.sum((P > 0.5) == (onehot > 0.5)))


@pytest.mark.parametrize("activation", ["linear", "relu", "softmax", "gelu"])
@pytest.mark.parametrize("with_workspace", [False, True], ids=["new", "workspace"])
def test_dense_backward_of_a_frozen_layer_computes_dX_alone(
    engine, rng, activation, with_workspace
):
    N, I, O = 5, 4, 3
    X, W, b = rng.standard_normal((N, I)), rng.standard_normal((I, O)), rng.standard_normal(O)
    upstream = rng.standard_normal((N, O))
    to = lambda a: engine.asarray(a, dtype="float64")  # noqa: E731
    workspace = Workspace(engine) if with_workspace else None
    Z, Y = engine.dense_forward(to(X), to(W), to(b), activation)
    # float64 reference: dZ = act'(Z) * dY, softmax's Jacobian product, dX = dZ @ W.T
    Z64 = X @ W + b
    Y64 = xp_activations.forward(np, activation, Z64)
    expected = xp_activations.backward(np, activation, upstream, Z64, Y64) @ W.T
    # dY is given afresh each call: with a workspace the engine may overwrite it
    frozen = engine.to_numpy(
        engine.dense_backward(
            to(upstream), to(X), to(W), Z, Y, activation, dW=None, db=None, workspace=workspace
        )
    )
    np.testing.assert_allclose(frozen, expected, rtol=1e-12, atol=1e-12)
    dW, db = engine.zeros((I, O), dtype="float64"), engine.zeros((O,), dtype="float64")
    trained = engine.dense_backward(
        to(upstream), to(X), to(W), Z, Y, activation, dW=dW, db=db, workspace=workspace
    )
    np.testing.assert_array_equal(frozen, engine.to_numpy(trained))
    nothing = engine.dense_backward(
        to(upstream), to(X), to(W), Z, Y, activation, dW=None, db=None, need_dX=False
    )
    assert nothing is None


def test_backprop_prelu_of_a_frozen_layer_computes_dX_alone(engine, rng):
    X = rng.standard_normal((5, 17))
    X[0, 0] = 0.0  # X > 0 is the test: zero takes the alpha branch
    alpha = rng.uniform(0.1, 0.5, 17)
    upstream = rng.standard_normal((5, 17))
    to = lambda a: engine.asarray(a, dtype="float64")  # noqa: E731
    frozen = engine.backprop_prelu(to(upstream), to(X), to(alpha), dalpha=None)
    expected = np.where(X > 0, upstream, alpha * upstream)
    np.testing.assert_allclose(engine.to_numpy(frozen), expected, rtol=1e-15, atol=1e-15)
    dalpha = engine.zeros((17,), dtype="float64")
    trained = engine.backprop_prelu(to(upstream), to(X), to(alpha), dalpha=dalpha)
    np.testing.assert_array_equal(engine.to_numpy(frozen), engine.to_numpy(trained))
