"""dlcore's normalization layers against Keras 3 itself: same weights, same data, same numbers.

Runs only where Keras can train (``make parity``); elsewhere the module is skipped, except
under ``DLCORE_REQUIRE_KERAS=1``: a failure there. Both models start from identical
weights (copied with ``set_weights``, in Keras's order: Dense kernel then bias;
BatchNormalization gamma, beta, moving_mean, moving_variance; LayerNormalization gamma,
beta) and train in float64 with ``shuffle=False`` on 37 samples in batches of 8 (a
partial batch of 5 last), so the batch statistics, the moving statistics, the losses and
the weights after a few epochs must agree up to rounding.

Precision. Keras's BatchNormalization and LayerNormalization compute in
``backend.result_type(inputs.dtype, "float32")``, which Keras's promotion maps to float32
even for float64 inputs (``BIT64_TO_BIT32_DTYPE``), so the models holding them agree
with Keras within ``KERAS_F32``; dlcore's float64 values are checked against float64
formulas in ``tests/test_layers_normalization.py``. ``Normalization`` computes in the
layer's float64 in Keras, and is compared within ``FLOAT64``.
"""

from __future__ import annotations

import os
from typing import NoReturn

import numpy as np
import pytest

import dlcore
from dlcore.layers import BatchNormalization, Dense, Input, LayerNormalization, Normalization
from dlcore.models import Model
from dlcore.optimizers import SGD


def _keras_unavailable(reason: str) -> NoReturn:
    if os.environ.get("DLCORE_REQUIRE_KERAS") == "1":
        pytest.fail(f"DLCORE_REQUIRE_KERAS=1, but {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


os.environ.setdefault("KERAS_BACKEND", "jax")
try:
    import keras
except Exception as error:  # absent, or a Keras whose backend cannot start
    _keras_unavailable(f"keras could not be imported: {error!r}")
if keras.backend.backend() not in ("jax", "tensorflow", "torch"):
    _keras_unavailable(
        f"Keras's {keras.backend.backend()} backend cannot train; use KERAS_BACKEND=jax"
    )

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings(
        "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
    ),
]

FLOAT64 = {"rtol": 1e-9, "atol": 1e-12}
KERAS_F32 = {"rtol": 1e-5, "atol": 1e-8}
FEATURES, SAMPLES, BATCH, CLASSES = 5, 37, 8, 3


@pytest.fixture(scope="module", autouse=True)
def _x64_backend():
    """float64 arrays on the JAX backend (Keras's float64 needs them), restored afterwards."""
    if keras.backend.backend() == "jax":
        import jax

        saved = jax.config.jax_enable_x64
        jax.config.update("jax_enable_x64", True)
        yield
        jax.config.update("jax_enable_x64", saved)
    else:
        yield


@pytest.fixture(autouse=True)
def _float64():
    saved = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    dlcore.set_floatx("float64")
    yield
    keras.config.set_floatx(saved[0])
    keras.config.set_dtype_policy(saved[1])


@pytest.fixture
def dataset():
    rng = np.random.default_rng(5)
    x = rng.normal(1.5, 2.0, size=(SAMPLES, FEATURES))
    labels = rng.integers(0, CLASSES, size=SAMPLES)
    return x, np.eye(CLASSES)[labels]


def _models(kind: str):
    """The same graph in both libraries: Dense(6, relu) -> norm -> Dense(3, softmax)."""
    settings = {"momentum": 0.8, "epsilon": 1e-2} if kind == "batch" else {"epsilon": 1e-2}
    dl_norm = (BatchNormalization if kind == "batch" else LayerNormalization)(**settings)
    k_norm = (
        keras.layers.BatchNormalization if kind == "batch" else keras.layers.LayerNormalization
    )(**settings)
    x = Input(shape=(FEATURES,))
    dm = Model(x, Dense(CLASSES, activation="softmax")(dl_norm(Dense(6, activation="relu")(x))))
    kx = keras.Input(shape=(FEATURES,))
    hidden = keras.layers.Dense(6, activation="relu")(kx)
    km = keras.Model(kx, keras.layers.Dense(CLASSES, activation="softmax")(k_norm(hidden)))
    rng = np.random.default_rng(11)
    weights = []
    for w in km.get_weights():
        value = rng.normal(size=w.shape)
        weights.append(np.abs(value) + 0.5 if w.ndim == 1 and len(weights) == 5 else value)
    km.set_weights(weights)  # moving_variance (the sixth array of BatchNormalization) > 0
    dm.set_weights(weights)
    return dm, km


@pytest.mark.parametrize("kind", ["batch", "layer"])
def test_fit_matches_keras(kind, dataset):
    x, y = dataset
    dm, km = _models(kind)
    assert [w.shape for w in dm.get_weights()] == [tuple(w.shape) for w in km.get_weights()]
    dm.compile(optimizer=SGD(learning_rate=0.1), loss="categorical_crossentropy")
    km.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1), loss="categorical_crossentropy")
    fit = {"epochs": 3, "batch_size": BATCH, "shuffle": False, "verbose": 0}
    dl_history = dm.fit(x, y, **fit).history["loss"]
    k_history = km.fit(x, y, **fit).history["loss"]
    np.testing.assert_allclose(dl_history, k_history, **KERAS_F32)
    for mine, theirs in zip(dm.get_weights(), km.get_weights()):
        np.testing.assert_allclose(mine, np.asarray(theirs), **KERAS_F32)
    np.testing.assert_allclose(
        dm.predict(x, verbose=0), np.asarray(km.predict(x, verbose=0)), **KERAS_F32
    )
    np.testing.assert_allclose(
        dm.evaluate(x, y, verbose=0), km.evaluate(x, y, verbose=0), **KERAS_F32
    )


def test_frozen_batch_norm_matches_keras(dataset):
    x, y = dataset
    dm, km = _models("batch")
    dm.layers[2].trainable = False
    km.layers[2].trainable = False
    dm.compile(optimizer=SGD(learning_rate=0.1), loss="categorical_crossentropy")
    km.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1), loss="categorical_crossentropy")
    fit = {"epochs": 2, "batch_size": BATCH, "shuffle": False, "verbose": 0}
    np.testing.assert_allclose(
        dm.fit(x, y, **fit).history["loss"], km.fit(x, y, **fit).history["loss"], **KERAS_F32
    )
    for mine, theirs in zip(dm.get_weights(), km.get_weights()):
        np.testing.assert_allclose(mine, np.asarray(theirs), **KERAS_F32)


def test_normalization_adapt_matches_keras(dataset):
    x, _ = dataset
    batches = [x[:10], x[10:25], x[25:]]
    theirs = keras.layers.Normalization()
    theirs.adapt(x)  # Keras adapts an iterable of batches through TensorFlow only
    for data in (x, batches):
        mine = Normalization()
        mine.adapt(data)
        mean, variance = (np.asarray(w) for w in theirs.get_weights()[:2])
        np.testing.assert_allclose(mine.initial_values(None, "float64")[0], mean, **FLOAT64)
        np.testing.assert_allclose(mine.initial_values(None, "float64")[1], variance, **FLOAT64)
        dm = Model(inputs := Input(shape=(FEATURES,)), mine(inputs))
        np.testing.assert_allclose(dm.predict(x, verbose=0), np.asarray(theirs(x)), **FLOAT64)
    inverse = keras.layers.Normalization(mean=1.0, variance=4.0, invert=True)
    dm = Model(
        inputs := Input(shape=(FEATURES,)),
        Normalization(mean=1.0, variance=4.0, invert=True)(inputs),
    )
    np.testing.assert_allclose(dm.predict(x, verbose=0), np.asarray(inverse(x)), **FLOAT64)
