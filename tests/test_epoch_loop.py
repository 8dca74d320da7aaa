"""A whole ``fit`` epoch as one compiled call (``Engine.dense_stack_epoch``) on the NumPy
engine: the same weights, histories and optimizer states as the steps run one by one, to
the bit, and the per-step path wherever the epoch call cannot run."""

from __future__ import annotations

import numpy as np
import pytest
from dlcore.backends import cpu_jit
from dlcore.backends.base import Engine
from dlcore.backends.numpy_engine import NumpyEngine

import dlcore
from dlcore import optimizers
from dlcore.layers import Dense
from dlcore.models import Sequential

pytestmark = pytest.mark.skipif(
    not cpu_jit.stack_available(), reason="Numba or SciPy is not installed"
)

WIDTHS = (6, 8, 5, 3)


class _BatchHook(dlcore.callbacks.Callback):
    """A callback with a batch hook: ``fit`` then runs the steps one by one."""

    def on_train_batch_begin(self, batch, logs=None):
        return None


@pytest.fixture
def epoch_calls(monkeypatch):
    """The results of every ``NumpyEngine.dense_stack_epoch`` call (None: declined)."""
    results = []
    original = NumpyEngine.dense_stack_epoch

    def spy(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        results.append(result)
        return result

    monkeypatch.setattr(NumpyEngine, "dense_stack_epoch", spy)
    return results


def _train(
    optimizer,
    dtype,
    *,
    sparse=False,
    shuffle=True,
    samples=37,
    batch_size=8,
    epochs=2,
    metrics=("accuracy",),
    callbacks=(),
    activations=("relu", "tanh"),
    steps_per_epoch=None,
    verbose=0,
):
    """Train a small dense stack on fixed data; its history, weights and optimizer state."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((samples, WIDTHS[0])).astype(dtype)
    labels = rng.integers(0, WIDTHS[-1], samples)
    y = labels if sparse else np.eye(WIDTHS[-1], dtype=dtype)[labels]
    previous = dlcore.floatx()
    dlcore.set_floatx(dtype)
    try:
        with dlcore.use_backend("numpy"):
            dlcore.set_random_seed(5)
            model = Sequential(
                [Dense(WIDTHS[1], activation=activations[0], input_shape=(WIDTHS[0],))]
                + [Dense(WIDTHS[2], activation=activations[1])]
                + [Dense(WIDTHS[3], activation="softmax")]
            )
            model.compile(
                optimizer=optimizer,
                loss="sparse_categorical_crossentropy" if sparse else "categorical_crossentropy",
                metrics=list(metrics),
            )
            history = model.fit(
                x,
                y,
                batch_size=batch_size,
                epochs=epochs,
                shuffle=shuffle,
                verbose=verbose,
                callbacks=list(callbacks),
                steps_per_epoch=steps_per_epoch,
            )
    finally:
        dlcore.set_floatx(previous)
    return history.history, model.get_weights(), model.optimizer.get_state()


def _assert_same(a, b):
    history_a, weights_a, state_a = a
    history_b, weights_b, state_b = b
    assert history_a == history_b
    for wa, wb in zip(weights_a, weights_b, strict=True):
        np.testing.assert_array_equal(wa, wb)
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        np.testing.assert_array_equal(state_a[key], state_b[key], err_msg=key)


OPTIMIZERS = {
    "sgd": lambda: optimizers.SGD(0.1),
    "sgd_momentum": lambda: optimizers.SGD(0.1, momentum=0.9),
    "sgd_nesterov": lambda: optimizers.SGD(0.1, momentum=0.9, nesterov=True),
    "adam": lambda: optimizers.Adam(0.01),
    "adam_amsgrad": lambda: optimizers.Adam(0.01, amsgrad=True),
    "adamw": lambda: optimizers.AdamW(0.01, weight_decay=0.05),
    "rmsprop": lambda: optimizers.RMSprop(0.01),
    "rmsprop_centered_momentum": lambda: optimizers.RMSprop(0.01, momentum=0.5, centered=True),
    "adagrad": lambda: optimizers.Adagrad(0.05),
    "adamax": lambda: optimizers.Adamax(0.01),
    "nadam": lambda: optimizers.Nadam(0.01),
    "adadelta": lambda: optimizers.Adadelta(1.0),
    "lion": lambda: optimizers.Lion(0.001),
    "ftrl": lambda: optimizers.Ftrl(0.05, l1_regularization_strength=0.01),
    "adam_schedule": lambda: optimizers.Adam(
        optimizers.schedules.ExponentialDecay(0.01, decay_steps=3, decay_rate=0.5)
    ),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_epoch_call_equals_steps_for_every_rule(epoch_calls, name, dtype):
    at_once = _train(OPTIMIZERS[name](), dtype)
    assert epoch_calls and all(result is not None for result in epoch_calls)
    epoch_calls.clear()
    one_by_one = _train(OPTIMIZERS[name](), dtype, callbacks=[_BatchHook()])
    assert not epoch_calls
    _assert_same(at_once, one_by_one)
    assert at_once[2]["iterations"] == 2 * 5  # 37 rows in batches of 8, two epochs


@pytest.mark.parametrize(
    ("sparse", "shuffle", "samples", "activations", "metrics"),
    [
        (True, True, 37, ("relu", "tanh"), ("accuracy",)),
        (True, False, 37, ("sigmoid", "linear"), ("accuracy", "sparse_categorical_accuracy")),
        (False, False, 32, ("tanh", "relu"), ()),  # whole batches only, no metric
        (False, True, 5, ("relu", "relu"), ("categorical_accuracy",)),  # one short batch
    ],
)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_epoch_call_equals_steps_for_targets_and_batches(
    epoch_calls, dtype, sparse, shuffle, samples, activations, metrics
):
    kwargs = dict(
        sparse=sparse, shuffle=shuffle, samples=samples, activations=activations, metrics=metrics
    )
    at_once = _train(optimizers.Adam(0.01), dtype, **kwargs)
    assert epoch_calls and all(result is not None for result in epoch_calls)
    epoch_calls.clear()
    one_by_one = _train(optimizers.Adam(0.01), dtype, callbacks=[_BatchHook()], **kwargs)
    _assert_same(at_once, one_by_one)
    assert set(at_once[0]) == {"loss", *metrics}


@pytest.mark.parametrize("sparse", [False, True])
def test_epoch_call_on_zero_weights_ties_to_the_first_class(sparse):
    """Zero weights give uniform probabilities: the loss is log(C) and, as ``np.argmax``
    breaks ties, every row predicts class 0; SGD at this step moves nothing else."""
    engine = NumpyEngine()
    rng = np.random.default_rng(0)
    n, inputs, classes = 7, 3, 4
    X = rng.standard_normal((n, inputs))
    labels = np.array([0, 1, 0, 3, 2, 0, 0])
    Y = labels if sparse else np.eye(classes)[labels]
    params = np.zeros(inputs * classes + classes)
    grads = np.zeros_like(params)
    W, b = params[: inputs * classes].reshape(inputs, classes), params[inputs * classes :]
    dW, db = grads[: inputs * classes].reshape(inputs, classes), grads[inputs * classes :]
    order = np.array([6, 5, 4, 3, 2, 1, 0])
    hyperparameters = [{"learning_rate": 0.0, "momentum": 0.0, "nesterov": False}] * 2
    from dlcore.backends.base import Workspace

    losses, correct = engine.dense_stack_epoch(
        X, Y, order, 4, [W], [b], [dW], [db], [], "sgd", params, grads, [None],
        hyperparameters, count=True, workspaces=[Workspace(engine), Workspace(engine)],
    )  # fmt: skip
    np.testing.assert_allclose(losses, [np.log(classes)] * 2, rtol=1e-15)
    np.testing.assert_array_equal(correct, [(labels[order[:4]] == 0).sum(), 2])
    # the last step's gradient: softmax minus the one-hot targets of rows 2, 1, 0
    onehot = np.eye(classes)[labels[[2, 1, 0]]]
    np.testing.assert_allclose(db, (1 / classes - onehot).mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(dW, X[[2, 1, 0]].T @ (1 / classes - onehot) / 3, rtol=1e-12)


def test_steps_per_epoch_limits_the_steps_of_the_call(epoch_calls):
    at_once = _train(optimizers.Adam(0.01), "float32", steps_per_epoch=3)
    assert [len(result[0]) for result in epoch_calls] == [3, 3]
    one_by_one = _train(
        optimizers.Adam(0.01), "float32", steps_per_epoch=3, callbacks=[_BatchHook()]
    )
    _assert_same(at_once, one_by_one)


@pytest.mark.parametrize(
    "case",
    [
        dict(optimizer=lambda: optimizers.Adam(0.01, clipnorm=1.0)),
        dict(optimizer=lambda: optimizers.Adam(0.01, global_clipnorm=1.0)),
        dict(optimizer=lambda: optimizers.SGD(0.1, clipvalue=0.1)),
        dict(optimizer=lambda: optimizers.SGD(0.1, weight_decay=0.01)),
        dict(optimizer=lambda: optimizers.Adam(0.01, use_ema=True)),
        dict(metrics=("accuracy", "mae")),
        dict(metrics=(dlcore.metrics.AUC(),)),
        dict(callbacks=lambda: [_BatchHook()]),
        dict(
            callbacks=lambda: [
                dlcore.callbacks.LambdaCallback(on_batch_end=lambda batch, logs: None)
            ]
        ),
    ],
    ids=[
        "clipnorm",
        "global_clipnorm",
        "clipvalue",
        "weight_decay",
        "ema",
        "mae_metric",
        "auc_metric",
        "batch_begin_hook",
        "batch_end_hook",
    ],
)
def test_fit_runs_step_by_step_where_the_epoch_call_cannot(monkeypatch, epoch_calls, case):
    called = []
    original = NumpyEngine.dense_stack_step

    def counted(self, *args, **kwargs):
        called.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(NumpyEngine, "dense_stack_step", counted)
    optimizer = case.get("optimizer", lambda: optimizers.SGD(0.1))()
    callbacks = case.get("callbacks", lambda: [])()
    _train(optimizer, "float32", metrics=case.get("metrics", ("accuracy",)), callbacks=callbacks)
    assert all(result is None for result in epoch_calls)
    assert len(called) == 2 * 5


def test_epoch_steps_leaves_the_optimizer_unchanged_until_commit():
    engine = NumpyEngine()
    optimizer = optimizers.Nadam(0.01)
    optimizer.build(engine, 4, "float64")
    assert optimizer.epoch_steps(0) is None
    run = optimizer.epoch_steps(3)
    assert optimizer.iterations == 0 and optimizer.get_state()["mu_product"] == 1.0
    assert run.rule == "nadam" and len(run.hyperparameters) == 3
    # the same numbers as three steps of apply
    stepped = optimizers.Nadam(0.01)
    stepped.build(engine, 4, "float64")
    expected = []
    for _ in range(3):
        stepped._iterations += 1
        expected.append(stepped._step_hyperparameters())
    assert run.hyperparameters == expected
    run.commit()
    assert optimizer.iterations == 3
    assert optimizer.get_state()["mu_product"] == stepped.get_state()["mu_product"]


def test_epoch_steps_declines_before_build():
    assert optimizers.Adam().epoch_steps(3) is None


def test_optimizers_with_their_own_apply_decline():
    engine = NumpyEngine()
    optimizer = optimizers.LossScaleOptimizer(optimizers.SGD(0.1))
    optimizer.build(engine, 4, "float32")
    assert optimizer.epoch_steps(3) is None
    assert optimizer.inner_optimizer.epoch_steps(3) is not None


def test_the_default_engine_method_declines_and_fit_steps(monkeypatch):
    """Engines without the method (the generic engine) train step by step, unchanged."""
    monkeypatch.setattr(NumpyEngine, "dense_stack_epoch", Engine.dense_stack_epoch)
    one_by_one = _train(optimizers.Adam(0.01), "float32")
    monkeypatch.undo()
    _assert_same(one_by_one, _train(optimizers.Adam(0.01), "float32"))
    assert one_by_one[2]["iterations"] == 10


def test_large_buffers_run_step_by_step():
    """A buffer as large as ``cpu_chunks.SPLIT_MIN_ELEMENTS`` is updated on every core per
    step; the epoch call, one loop, declines it."""
    from dlcore.backends import cpu_chunks

    engine = NumpyEngine()
    params = np.zeros(cpu_chunks.SPLIT_MIN_ELEMENTS, dtype=np.float32)
    result = engine.dense_stack_epoch(
        np.zeros((2, 3), np.float32),
        np.zeros(2, np.int64),
        None,
        2,
        [],
        [],
        [],
        [],
        [],
        "sgd",
        params,
        params.copy(),
        [None],
        [{"learning_rate": 0.1, "momentum": 0.0, "nesterov": False}],
        count=False,
        workspaces=[],
    )
    assert result is None


class _StopAtEpochBegin(dlcore.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.model.stop_training = True


def test_stop_requested_before_the_epoch_stops_after_one_step_as_before(epoch_calls):
    history, _, state = _train(optimizers.SGD(0.1), "float32", callbacks=[_StopAtEpochBegin()])
    assert not epoch_calls
    assert int(state["iterations"]) == 1 and len(history["loss"]) == 1


def test_verbose_2_prints_the_epoch_lines_and_uses_the_epoch_call(epoch_calls, capsys):
    at_once = _train(optimizers.Adam(0.01), "float32", verbose=2)
    assert len(epoch_calls) == 2 and all(result is not None for result in epoch_calls)
    printed = capsys.readouterr().out
    assert "Epoch 2/2" in printed and "accuracy:" in printed
    _assert_same(at_once, _train(optimizers.Adam(0.01), "float32", callbacks=[_BatchHook()]))
