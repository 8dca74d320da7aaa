"""Sample weights and class weights against Keras 3 itself: the same model, weights and
data give the same losses, histories and trained weights.

Runs only where Keras can train (``make parity``, which CI runs); elsewhere the module is
skipped, except under ``DLCORE_REQUIRE_KERAS=1`` (set by ``make parity``): a failure there.
Both models start from the same weights and train in float64 with ``shuffle=False`` on 37
samples in batches of 8 (a partial last batch of 5), so that the reduction Keras applies
to weighted losses (``sum(w * loss) / batch size``) is checked on full and partial batches.
"""

from __future__ import annotations

import os
from typing import NoReturn

import numpy as np
import pytest

import dlcore
from dlcore import optimizers as dl_optimizers
from dlcore.layers import Dense
from dlcore.models import Sequential


def _keras_unavailable(reason: str) -> NoReturn:
    if os.environ.get("DLCORE_REQUIRE_KERAS") == "1":
        pytest.fail(f"DLCORE_REQUIRE_KERAS=1, but {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


os.environ.setdefault("KERAS_BACKEND", "jax")
try:
    import keras
except Exception as error:  # absent, or a Keras whose backend cannot start
    _keras_unavailable(f"keras could not be imported: {error!r}")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings(
        "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
    ),
]

FLOAT64 = {"rtol": 1e-9, "atol": 1e-12}
# Keras's ops.mean (in the losses that average over a sample's outputs) computes in float32
KERAS_F32 = {"rtol": 1e-5, "atol": 1e-8}
FEATURES, SAMPLES, BATCH = 5, 37, 8


@pytest.fixture(scope="module", autouse=True)
def _x64_backend():
    import jax

    saved = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", saved)


@pytest.fixture(autouse=True)
def _float64():
    saved = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    dlcore.set_floatx("float64")
    yield
    keras.config.set_floatx(saved[0])
    keras.config.set_dtype_policy(saved[1])


def _twins(units: int, activation: str, seed: int):
    """A Keras and a dlcore model of Dense(7, relu) -> Dense(units, activation), same weights."""
    km = keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(7, activation="relu"),
            keras.layers.Dense(units, activation=activation),
        ]
    )
    dm = Sequential([Dense(7, activation="relu"), Dense(units, activation=activation)])
    dm.build((None, FEATURES))
    rng = np.random.default_rng(seed)
    weights = [
        rng.normal(size=w.shape) / np.sqrt(w.shape[0]) if w.ndim == 2 else w
        for w in km.get_weights()
    ]
    km.set_weights(weights)
    dm.set_weights(weights)
    return km, dm


def _data(kind: str, seed: int):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(SAMPLES, FEATURES))
    labels = rng.integers(0, 3, SAMPLES)
    if kind == "sparse":
        return x, labels
    if kind == "binary":
        return x, rng.integers(0, 2, size=(SAMPLES, 1)).astype(float)
    if kind == "regression":
        return x, rng.normal(size=(SAMPLES, 3))
    return x, np.eye(3)[labels]


# loss -> (output units, activation, kind of targets, tolerance)
CASES = {
    "categorical_crossentropy": (3, "softmax", "one_hot", FLOAT64),
    "sparse_categorical_crossentropy": (3, "softmax", "sparse", FLOAT64),
    "binary_crossentropy": (1, "sigmoid", "binary", KERAS_F32),
    "mean_squared_error": (3, "linear", "regression", KERAS_F32),
}


def _compile(km, dm, loss: str, metrics=()):
    km.compile(keras.optimizers.SGD(learning_rate=0.1), loss=loss, metrics=list(metrics))
    dm.compile(dl_optimizers.SGD(learning_rate=0.1), loss=loss, metrics=list(metrics))


def _assert_same(what: str, dl_value, keras_value, tolerance) -> None:
    np.testing.assert_allclose(
        np.asarray(dl_value, dtype=float),
        np.asarray(keras_value, dtype=float),
        err_msg=what,
        **tolerance,
    )


@pytest.mark.parametrize("loss", list(CASES))
def test_sample_weighted_fit_and_evaluate_match_keras(loss):
    units, activation, kind, tolerance = CASES[loss]
    km, dm = _twins(units, activation, seed=3)
    _compile(km, dm, loss)
    x, y = _data(kind, seed=4)
    w = np.random.default_rng(5).uniform(0.0, 3.0, SAMPLES)
    w[::7] = 0.0  # ignored samples still count in the batch size
    _assert_same(
        "evaluate",
        dm.evaluate(x, y, sample_weight=w, verbose=0),
        km.evaluate(x, y, sample_weight=w, verbose=0),
        tolerance,
    )
    options = {"batch_size": BATCH, "shuffle": False, "verbose": 0, "epochs": 2}
    x_val, y_val = _data(kind, seed=6)
    w_val = np.random.default_rng(7).uniform(0.5, 2.0, SAMPLES)
    kh = km.fit(x, y, sample_weight=w, validation_data=(x_val, y_val, w_val), **options)
    dh = dm.fit(x, y, sample_weight=w, validation_data=(x_val, y_val, w_val), **options)
    assert set(dh.history) == set(kh.history)
    for key, values in kh.history.items():
        _assert_same(f"history {key}", dh.history[key], values, tolerance)
    for mine, theirs in zip(dm.get_weights(), km.get_weights(), strict=True):
        _assert_same("weights", mine, theirs, tolerance)


@pytest.mark.parametrize(
    "loss", ["categorical_crossentropy", "sparse_categorical_crossentropy", "binary_crossentropy"]
)
def test_class_weighted_fit_matches_keras(loss):
    units, activation, kind, tolerance = CASES[loss]
    km, dm = _twins(units, activation, seed=8)
    _compile(km, dm, loss, metrics=["accuracy"])
    x, y = _data(kind, seed=9)
    class_weight = {0: 0.5, 1: 4.0} if kind == "binary" else {0: 1.0, 1: 3.0, 2: 0.25}
    options = {"batch_size": BATCH, "shuffle": False, "verbose": 0, "epochs": 2}
    kh = km.fit(x, y, class_weight=class_weight, **options)
    dh = dm.fit(x, y, class_weight=class_weight, **options)
    for key, values in kh.history.items():
        _assert_same(f"history {key}", dh.history[key], values, tolerance)
    for mine, theirs in zip(dm.get_weights(), km.get_weights(), strict=True):
        _assert_same("weights", mine, theirs, tolerance)


def test_train_and_test_on_batch_with_sample_weight_match_keras():
    km, dm = _twins(3, "softmax", seed=10)
    _compile(km, dm, "categorical_crossentropy")
    x, y = _data("one_hot", seed=11)
    w = np.random.default_rng(12).uniform(0.0, 2.0, SAMPLES)
    _assert_same(
        "train_on_batch",
        dm.train_on_batch(x, y, sample_weight=w),
        km.train_on_batch(x, y, sample_weight=w),
        FLOAT64,
    )
    _assert_same(
        "test_on_batch",
        dm.test_on_batch(x, y, sample_weight=w),
        km.test_on_batch(x, y, sample_weight=w),
        FLOAT64,
    )
