"""dlcore's ONNX export against Keras 3: the file dlcore writes, run in ONNX Runtime,
gives Keras's predictions for the same weights (every activation, the activation and
normalization layers after a short fit, the merges, Flatten from (N, 4, 3)).

Patterned on ``tests/test_keras_parity.py`` (see there for the skip rules and the
float64 set-up): skipped unless Keras imports, a failure under ``DLCORE_REQUIRE_KERAS=1``.
Keras computes in float64; the ONNX file is float32, hence the 1e-5 tolerance.
"""

from __future__ import annotations

import os
from typing import NoReturn

import numpy as np
import pytest
from dlcore.backends.names import ACTIVATIONS

import dlcore
from dlcore import layers as L
from dlcore.models import Model, Sequential


def _keras_unavailable(reason: str) -> NoReturn:
    if os.environ.get("DLCORE_REQUIRE_KERAS") == "1":
        pytest.fail(f"DLCORE_REQUIRE_KERAS=1, but {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


os.environ.setdefault("KERAS_BACKEND", "jax")
try:
    import keras
except Exception as error:  # absent, or a Keras whose backend cannot start
    _keras_unavailable(f"keras could not be imported: {error!r}")
try:
    import onnxruntime as ort
except ImportError as error:
    _keras_unavailable(f"onnxruntime could not be imported: {error!r}")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings(
        "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
    ),
]

FLOAT32 = {"rtol": 1e-5, "atol": 1e-5}


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
    yield
    keras.config.set_floatx(saved[0])
    keras.config.set_dtype_policy(saved[1])


def _onnx_outputs(model, path, xs):
    model.export(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: x.astype(np.float32) for i, x in zip(session.get_inputs(), xs)}
    return session.run(None, feeds)


def _keras_outputs(model, xs):
    out = model.predict(xs if len(xs) > 1 else xs[0], verbose=0)
    return out if isinstance(out, list) else [out]


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_every_activation_matches_keras(activation, tmp_path):
    rng = np.random.default_rng(0)
    ours = Sequential([L.Input((4,)), L.Dense(6, activation=activation)])
    ours.set_weights([rng.normal(size=w.shape) * 0.8 for w in ours.get_weights()])
    theirs = keras.Sequential([keras.Input((4,)), keras.layers.Dense(6, activation=activation)])
    theirs.set_weights(ours.get_weights())
    x = [rng.normal(size=(9, 4))]
    for got, expected in zip(
        _onnx_outputs(ours, tmp_path / "m.onnx", x), _keras_outputs(theirs, x)
    ):
        np.testing.assert_allclose(got, expected, **FLOAT32)


def test_layers_after_a_fit_match_keras(tmp_path):
    """Activation and normalization layers, the moving statistics moved by a fit."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(32, 4, 3)) * 2 + 0.5
    mean, variance = [0.5] * 12, list(rng.uniform(0.5, 3.0, size=12))
    dlcore.set_random_seed(1)
    ours = Sequential(
        [
            L.Input((4, 3)),
            L.Flatten(),
            L.Normalization(mean=mean, variance=variance),
            L.Dense(8),
            L.PReLU(),
            L.BatchNormalization(momentum=0.5),
            L.ReLU(max_value=1.5, negative_slope=0.1, threshold=0.2),
            L.Dense(8),
            L.LayerNormalization(epsilon=0.01),
            L.LeakyReLU(),
            L.Dropout(0.3),
            L.Dense(6),
            L.ELU(alpha=0.7),
            L.Dense(3),
            L.Softmax(),
        ]
    )
    ours.compile(optimizer="adam", loss="categorical_crossentropy")
    ours.fit(x, np.eye(3)[rng.integers(0, 3, 32)], epochs=2, batch_size=8, verbose=0)
    theirs = keras.Sequential(
        [
            keras.Input((4, 3)),
            keras.layers.Flatten(),
            keras.layers.Normalization(mean=mean, variance=variance),
            keras.layers.Dense(8),
            keras.layers.PReLU(),
            keras.layers.BatchNormalization(momentum=0.5),
            keras.layers.ReLU(max_value=1.5, negative_slope=0.1, threshold=0.2),
            keras.layers.Dense(8),
            keras.layers.LayerNormalization(epsilon=0.01),
            keras.layers.LeakyReLU(),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(6),
            keras.layers.ELU(alpha=0.7),
            keras.layers.Dense(3),
            keras.layers.Softmax(),
        ]
    )
    theirs.set_weights(ours.get_weights()[2:])  # Keras keeps a given mean and variance as constants
    xs = [x[:7]]
    for got, expected in zip(
        _onnx_outputs(ours, tmp_path / "m.onnx", xs), _keras_outputs(theirs, xs)
    ):
        np.testing.assert_allclose(got, expected, **FLOAT32)


def test_merges_match_keras(tmp_path):
    rng = np.random.default_rng(2)

    def build(api, layers):
        a, b = api.Input((4,)), api.Input((4,))
        ha, hb = layers.Dense(5, activation="tanh")(a), layers.Dense(5, activation="swish")(b)
        merged = [
            m()([ha, hb])
            for m in (
                layers.Add,
                layers.Subtract,
                layers.Multiply,
                layers.Average,
                layers.Maximum,
                layers.Minimum,
            )
        ]
        return a, b, layers.Dense(2)(layers.Concatenate()(merged))

    a, b, out = build(L, L)
    ours = Model([a, b], out)
    ours.set_weights([rng.normal(size=w.shape) for w in ours.get_weights()])
    ka, kb, kout = build(keras, keras.layers)
    theirs = keras.Model([ka, kb], kout)
    theirs.set_weights(ours.get_weights())
    xs = [rng.normal(size=(6, 4)), rng.normal(size=(6, 4))]
    for got, expected in zip(
        _onnx_outputs(ours, tmp_path / "m.onnx", xs), _keras_outputs(theirs, xs)
    ):
        np.testing.assert_allclose(got, expected, **FLOAT32)
