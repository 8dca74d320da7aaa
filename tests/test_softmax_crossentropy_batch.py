"""``Engine.softmax_crossentropy_batch``: the loss, accuracy count and gradient of a softmax
output in one call, against the three operations it stands for, and in training."""

from __future__ import annotations

import numpy as np
import pytest
from dlcore.backends.base import Workspace

import dlcore
from dlcore.layers import Dense
from dlcore.models import Sequential
from dlcore.regularizers import l2


def _probabilities(rng, n, classes, dtype):
    logits = rng.standard_normal((n, classes))
    logits[0, 1] = logits[0, 0] = logits[0].max() + 1.0  # a tie: the first index wins
    P = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (P / P.sum(axis=1, keepdims=True)).astype(dtype)


def _three_operations(engine, P, Y, workspace):
    sparse = Y.ndim == 1
    name = "sparse_categorical_crossentropy" if sparse else "categorical_crossentropy"
    loss = engine.loss(name, P, Y, workspace=workspace)
    count = engine.count_correct("sparse" if sparse else "categorical", P, Y, workspace=workspace)
    gradient = engine.backprop_softmax_crossentropy(P, Y, workspace=workspace)
    return engine.scalars_to_numpy([loss, count]), engine.to_numpy(gradient)


@pytest.mark.parametrize("with_workspace", [True, False])
@pytest.mark.parametrize("labels", ["one-hot", "int"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_one_call_gives_what_the_three_operations_give(engine, rng, dtype, labels, with_workspace):
    n, classes = 17, 5
    P_host = _probabilities(rng, n, classes, dtype)
    y = rng.integers(0, classes, n)
    y[:3] = P_host[:3].argmax(axis=1)  # some hits for certain
    Y_host = y if labels == "int" else np.eye(classes, dtype=dtype)[y]
    P = engine.asarray(P_host, dtype=dtype)
    Y = engine.asarray(Y_host, dtype="int64" if labels == "int" else dtype)
    workspace = Workspace(engine) if with_workspace else None
    (want_loss, want_count), want_gradient = _three_operations(engine, P, Y, workspace)

    loss, correct, gradient = engine.softmax_crossentropy_batch(
        P, Y, with_count=True, workspace=workspace
    )
    got_loss, got_count = engine.scalars_to_numpy([loss, correct])
    # the same arithmetic in the same order: equal to the last bit
    assert got_loss == want_loss
    assert got_count == want_count == np.sum(P_host.argmax(axis=1) == y)
    np.testing.assert_array_equal(engine.to_numpy(gradient), want_gradient)
    assert engine.to_numpy(gradient).dtype == np.dtype(dtype)

    loss, correct, _ = engine.softmax_crossentropy_batch(P, Y, workspace=workspace)
    assert correct is None
    assert engine.scalars_to_numpy([loss])[0] == want_loss


def _sparse_history(engine_name, dtype):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((24, 4))
    y = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0.5)
    dlcore.set_floatx(dtype)
    dlcore.set_random_seed(7)
    with dlcore.use_backend(engine_name):
        # regularized: trained node by node, not as one dense_stack_step
        model = Sequential(
            [
                Dense(6, activation="tanh", input_shape=(4,), kernel_regularizer=l2(1e-3)),
                Dense(3, activation="softmax"),
            ]
        )
        model.compile(
            optimizer="adam",
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy", "sparse_categorical_crossentropy"],
        )
        history = model.fit(x, y, batch_size=10, epochs=2, shuffle=True, verbose=0)
    return history.history


@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-10), ("float32", 1e-4)])
def test_sparse_fit_on_numba_matches_numpy(dtype, rtol):
    pytest.importorskip("numba")
    if "numba" not in [info.name for info in dlcore.backends.available() if info.available]:
        pytest.skip("the numba engine cannot run here")
    expected = _sparse_history("numpy", dtype)
    got = _sparse_history("numba", dtype)
    assert set(got) == set(expected)
    for key, values in expected.items():
        np.testing.assert_allclose(got[key], values, rtol=rtol, atol=rtol * 1e-3, err_msg=key)


def test_the_trainer_asks_for_loss_count_and_gradient_in_one_call(monkeypatch):
    engine_class = type(dlcore.backends.get("numpy"))
    calls, inside = [], []
    fused = engine_class.softmax_crossentropy_batch

    def recording(self, P, Y_true, **options):
        calls.append(options["with_count"])
        inside.append(True)
        try:
            return fused(self, P, Y_true, **options)
        finally:
            inside.pop()

    def only_inside(name):
        original = getattr(engine_class, name)

        def checked(*args, **kwargs):
            assert inside, f"{name} called outside softmax_crossentropy_batch"
            return original(*args, **kwargs)

        return checked

    monkeypatch.setattr(engine_class, "softmax_crossentropy_batch", recording)
    for name in ("count_correct", "backprop_softmax_crossentropy"):
        monkeypatch.setattr(engine_class, name, only_inside(name))
    history = _sparse_history("numpy", "float64")
    assert calls and all(calls)  # every step, with the accuracy count
    assert 0.0 <= history["accuracy"][-1] <= 1.0
