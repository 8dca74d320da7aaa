"""dlcore.wrappers against keras.wrappers: the same data, weights and training give the
same encoded targets, classes, probabilities, predictions and scores.

Runs where Keras can train (``make parity``); skipped elsewhere, a failure under
``DLCORE_REQUIRE_KERAS=1``. float64 on both sides (``jax_enable_x64``); both models
train with SGD on the whole batch, unshuffled, from the same weights; the hidden
layer is ReLU (Keras computes tanh in float32 on JAX).
"""

from __future__ import annotations

import os
from typing import NoReturn

import numpy as np
import pytest

pytest.importorskip("sklearn")


def _keras_unavailable(reason: str) -> NoReturn:
    if os.environ.get("DLCORE_REQUIRE_KERAS") == "1":
        pytest.fail(f"DLCORE_REQUIRE_KERAS=1, but {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


os.environ.setdefault("KERAS_BACKEND", "jax")
try:
    import keras
    from keras.wrappers import SKLearnClassifier as KerasClassifier
    from keras.wrappers import SKLearnRegressor as KerasRegressor
except Exception as error:  # absent, or a Keras whose backend cannot start
    _keras_unavailable(f"keras could not be imported: {error!r}")

import dlcore  # noqa: E402
from dlcore.layers import Dense, Input  # noqa: E402
from dlcore.models import Sequential  # noqa: E402
from dlcore.optimizers import SGD  # noqa: E402
from dlcore.wrappers import SKLearnClassifier, SKLearnRegressor  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings(
        "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
    ),
]

FLOAT64 = {"rtol": 1e-9, "atol": 1e-12}
# Keras computes ops.mean (mse) in float32 on JAX, whatever floatx is
KERAS_F32 = {"rtol": 1e-5, "atol": 1e-8}
FIT = {"epochs": 3, "batch_size": 24, "shuffle": False, "verbose": 0}


@pytest.fixture(scope="module", autouse=True)
def _float64_everywhere():
    import jax

    saved_x64, saved_floatx = jax.config.jax_enable_x64, keras.config.floatx()
    saved_policy = keras.config.dtype_policy()
    jax.config.update("jax_enable_x64", True)
    keras.config.set_floatx("float64")
    # a module before this one may have left a float32 policy, which floatx does not change
    keras.config.set_dtype_policy("float64")
    with dlcore.use_backend("numpy"):
        previous = dlcore.floatx()
        dlcore.set_floatx("float64")
        yield
        dlcore.set_floatx(previous)
    keras.config.set_floatx(saved_floatx)
    keras.config.set_dtype_policy(saved_policy)
    jax.config.update("jax_enable_x64", saved_x64)


def weights(features: int, units: int) -> list[np.ndarray]:
    rng = np.random.default_rng(features * 10 + units)
    return [
        rng.standard_normal((features, 4)) * 0.5,
        rng.standard_normal(4) * 0.1,
        rng.standard_normal((4, units)) * 0.5,
        rng.standard_normal(units) * 0.1,
    ]


def builders(activation: str, loss: str, seen: dict):
    """The same model in dlcore and in Keras, each recording the targets it is given."""

    def dl_build(X, y):
        seen["dlcore"] = y
        model = Sequential([Input((X.shape[1],)), Dense(4, "relu"), Dense(y.shape[1], activation)])
        model.set_weights(weights(X.shape[1], y.shape[1]))
        model.compile(optimizer=SGD(0.1), loss=loss)
        return model

    def keras_build(X, y):
        seen["keras"] = y
        model = keras.Sequential(
            [
                keras.Input((X.shape[1],)),
                keras.layers.Dense(4, activation="relu"),
                keras.layers.Dense(y.shape[1], activation=activation),
            ]
        )
        model.set_weights(weights(X.shape[1], y.shape[1]))
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss)
        return model

    return dl_build, keras_build


@pytest.mark.parametrize(
    "labels", [np.array(["b", "c", "a"]), np.array([3, -1]), np.array([True, False])]
)
def test_classifier_matches_keras(labels):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((24, 3))
    y = labels[np.arange(24) % len(labels)]
    seen: dict = {}
    dl_build, keras_build = builders("softmax", "categorical_crossentropy", seen)
    ours = SKLearnClassifier(dl_build, fit_kwargs=FIT).fit(X, y)
    theirs = KerasClassifier(keras_build, fit_kwargs=dict(FIT)).fit(X, y)
    np.testing.assert_array_equal(seen["dlcore"], seen["keras"])
    np.testing.assert_array_equal(ours.classes_, theirs.classes_)
    np.testing.assert_allclose(
        ours.predict_proba(X), theirs.model_.predict(X, verbose=0), **FLOAT64
    )
    np.testing.assert_array_equal(ours.predict(X), theirs.predict(X))
    assert ours.score(X, y) == theirs.score(X, y)


def test_regressor_matches_keras():
    # one output: Keras's SKLearnRegressor refuses 2-D y (ours takes it; see
    # tests/test_sklearn_wrappers.py)
    outputs = 1
    rng = np.random.default_rng(1)
    X = rng.standard_normal((24, 3))
    y = X[:, :outputs] * 2 - 1
    if outputs == 1:
        y = y[:, 0]
    seen: dict = {}
    dl_build, keras_build = builders("linear", "mse", seen)
    ours = SKLearnRegressor(dl_build, fit_kwargs=FIT).fit(X, y)
    theirs = KerasRegressor(keras_build, fit_kwargs=dict(FIT)).fit(X, y)
    np.testing.assert_array_equal(seen["dlcore"], seen["keras"])
    ours_pred, theirs_pred = ours.predict(X), theirs.predict(X)
    assert ours_pred.shape == theirs_pred.shape
    np.testing.assert_allclose(ours_pred, theirs_pred, **KERAS_F32)
    assert ours.score(X, y) == pytest.approx(theirs.score(X, y), rel=1e-6)
