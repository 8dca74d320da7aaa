"""dlcore against Keras 3: the activation layers (ReLU(max_value=6), LeakyReLU, ELU,
Softmax), the noise layers at inference, and the Flatten MNIST-shaped model give
Keras's predictions and, after a short fit from the same weights, Keras's weights.

Patterned on ``tests/test_keras_parity.py`` (see there for the skip rules and the
float64 set-up): skipped unless Keras imports, a failure under ``DLCORE_REQUIRE_KERAS=1``.
"""

from __future__ import annotations

import os
from typing import NoReturn

import numpy as np
import pytest

import dlcore
from dlcore import layers as L
from dlcore import optimizers as dl_optimizers
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
SAMPLES, BATCH = 37, 8


@pytest.fixture(scope="module", autouse=True)
def _x64_backend():
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


def _pair(make_dl, make_keras, x, y, loss):
    """Both models from the same weights: predictions, then a short SGD fit."""
    ours, theirs = make_dl(), make_keras()
    theirs.set_weights(ours.get_weights())
    np.testing.assert_allclose(ours.predict(x), theirs.predict(x, verbose=0), **FLOAT64)
    ours.compile(optimizer=dl_optimizers.SGD(learning_rate=0.05), loss=loss)
    theirs.compile(optimizer=keras.optimizers.SGD(learning_rate=0.05), loss=loss)
    ours.fit(x, y, epochs=2, batch_size=BATCH, shuffle=False, verbose=0)
    theirs.fit(x, y, epochs=2, batch_size=BATCH, shuffle=False, verbose=0)
    for a, b in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(a, b, **FLOAT64)
    np.testing.assert_allclose(ours.predict(x), theirs.predict(x, verbose=0), **FLOAT64)


def _labels(rng, classes=4):
    return np.eye(classes)[rng.integers(0, classes, SAMPLES)]


@pytest.mark.parametrize(
    "name, dl_layer, keras_layer",
    [
        ("relu6", lambda: L.ReLU(max_value=6.0), lambda: keras.layers.ReLU(max_value=6.0)),
        (
            "relu_all",
            lambda: L.ReLU(max_value=1.5, negative_slope=0.1, threshold=0.2),
            lambda: keras.layers.ReLU(max_value=1.5, negative_slope=0.1, threshold=0.2),
        ),
        ("leaky", lambda: L.LeakyReLU(), lambda: keras.layers.LeakyReLU()),
        ("elu", lambda: L.ELU(alpha=0.7), lambda: keras.layers.ELU(alpha=0.7)),
    ],
)
def test_activation_layers_match_keras(name, dl_layer, keras_layer):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(SAMPLES, 5)) * 3
    y = _labels(rng)

    def ours():
        return Sequential([L.Input((5,)), L.Dense(6), dl_layer(), L.Dense(4), L.Softmax()])

    def theirs():
        return keras.Sequential(
            [
                keras.Input((5,)),
                keras.layers.Dense(6),
                keras_layer(),
                keras.layers.Dense(4),
                keras.layers.Softmax(),
            ]
        )

    _pair(ours, theirs, x, y, "categorical_crossentropy")


def test_flatten_mnist_shaped_model_matches_keras():
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(SAMPLES, 6, 7))
    y = _labels(rng, 3)

    def ours():
        return Sequential(
            [L.Flatten(input_shape=(6, 7)), L.Dense(8, "relu"), L.Dense(3, "softmax")]
        )

    def theirs():
        return keras.Sequential(
            [
                keras.Input((6, 7)),
                keras.layers.Flatten(),
                keras.layers.Dense(8, activation="relu"),
                keras.layers.Dense(3, activation="softmax"),
            ]
        )

    _pair(ours, theirs, x, y, "categorical_crossentropy")


def test_reshape_output_matches_keras():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(SAMPLES, 4))
    ours = Sequential([L.Input((4,)), L.Dense(6), L.Reshape((2, 3))])
    theirs = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(6), keras.layers.Reshape((2, 3))]
    )
    theirs.set_weights(ours.get_weights())
    np.testing.assert_allclose(ours.predict(x), theirs.predict(x, verbose=0), **FLOAT64)


@pytest.mark.parametrize(
    "dl_layer, keras_layer",
    [
        (lambda: L.GaussianNoise(0.3), lambda: keras.layers.GaussianNoise(0.3)),
        (lambda: L.GaussianDropout(0.3), lambda: keras.layers.GaussianDropout(0.3)),
        (lambda: L.AlphaDropout(0.3), lambda: keras.layers.AlphaDropout(0.3)),
    ],
)
def test_noise_layers_at_inference_and_configs_match_keras(dl_layer, keras_layer):
    x = np.random.default_rng(3).normal(size=(SAMPLES, 4))
    ours = Sequential([L.Input((4,)), L.Dense(4), dl_layer()])
    theirs = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4), keras_layer()])
    theirs.set_weights(ours.get_weights())
    np.testing.assert_allclose(ours.predict(x), theirs.predict(x, verbose=0), **FLOAT64)
    mine, keras_config = ours.layers[-1].get_config(), theirs.layers[-1].get_config()
    for key in ("stddev", "rate", "seed", "noise_shape"):
        if key in keras_config:
            assert mine[key] == keras_config[key], key


def test_alpha_dropout_training_formula_matches_keras_constants():
    """Keras's affine constants, read back from a training call with all units dropped
    and all kept (rate chosen, noise pinned by the extremes of the output)."""
    layer = keras.layers.AlphaDropout(0.5, seed=1)
    x = np.zeros((2000, 1))
    out = np.asarray(layer(x, training=True))
    values = np.unique(np.round(out, 12))
    from dlcore.backends.xp_activations import alpha_dropout_constants

    a, b, alpha_p = alpha_dropout_constants(0.5)
    np.testing.assert_allclose(sorted(values), sorted([b, a * alpha_p + b]), **FLOAT64)
