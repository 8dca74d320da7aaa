"""Keras model files against Keras 3 itself: dlcore reads the files Keras writes and
predicts what Keras predicts; Keras reads the ``.keras`` files dlcore writes and predicts
what dlcore predicts (float32, rtol 1e-6). Runs under ``make parity``; elsewhere skipped,
except under ``DLCORE_REQUIRE_KERAS=1``."""

from __future__ import annotations

import os
from typing import NoReturn

import numpy as np
import pytest


def _keras_unavailable(reason: str) -> NoReturn:
    if os.environ.get("DLCORE_REQUIRE_KERAS") == "1":
        pytest.fail(f"DLCORE_REQUIRE_KERAS=1, but {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


os.environ.setdefault("KERAS_BACKEND", "jax")
try:
    import keras
except Exception as error:  # absent, or a Keras whose backend cannot start
    _keras_unavailable(f"keras could not be imported: {error!r}")

import dlcore  # noqa: E402
from dlcore.layers import (  # noqa: E402
    BatchNormalization,
    Concatenate,
    Dense,
    Dropout,
    Input,
    LayerNormalization,
    PReLU,
    ReLU,
)
from dlcore.models import Model, Sequential, load_model  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings(
        "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
    ),
    pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer"),
]
F32 = {"rtol": 1e-6, "atol": 1e-7}
PROBE = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)


def _keras_models():
    seq = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(6, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    seq.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    x = keras.Input((4,))
    a = keras.layers.Dense(5, activation="sigmoid")(x)
    b = keras.layers.PReLU()(keras.layers.Dense(5)(x))
    y = keras.layers.Dense(2)(keras.layers.LayerNormalization()(keras.layers.Average()([a, b])))
    fun = keras.Model(x, y)
    rng = np.random.default_rng(1)
    for model in (seq, fun):
        model.set_weights(
            [
                rng.normal(0, 0.5, w.shape).astype("float32") + (w.ndim == 1)
                for w in model.get_weights()
            ]
        )
    return [seq, fun]


@pytest.mark.parametrize("index", [0, 1])
@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_dlcore_reads_what_keras_writes(tmp_path, index, suffix):
    model = _keras_models()[index]
    path = str(tmp_path / f"m{suffix}")
    model.save(path)
    dlcore.set_floatx("float32")
    ours = load_model(path)
    np.testing.assert_allclose(
        ours.predict(PROBE, verbose=0), model.predict(PROBE, verbose=0), **F32
    )


def _dlcore_models():
    dlcore.set_floatx("float32")
    dlcore.set_random_seed(3)
    seq = Sequential(
        [
            Input((4,)),
            Dense(6, activation="elu"),
            BatchNormalization(),
            Dropout(0.1),
            ReLU(),
            Dense(3, activation="softmax"),
        ]
    )
    seq.compile(optimizer="rmsprop", loss="categorical_crossentropy", metrics=["accuracy"])
    x = Input((4,))
    a = Dense(5, activation="tanh")(x)
    b = PReLU()(Dense(5)(x))
    y = Dense(2)(LayerNormalization()(Concatenate()([a, b])))
    fun = Model(x, y)
    fun.compile(optimizer="sgd", loss="mse")
    rng = np.random.default_rng(2)
    for model in (seq, fun):
        model.set_weights(
            [
                rng.normal(0, 0.5, w.shape).astype("float32") + (w.ndim == 1)
                for w in model.get_weights()
            ]
        )
    return [seq, fun]


@pytest.mark.parametrize("index", [0, 1])
def test_keras_reads_what_dlcore_writes(tmp_path, index):
    model = _dlcore_models()[index]
    path = str(tmp_path / "m.keras")
    model.save(path, save_format="keras")
    theirs = keras.saving.load_model(path)
    np.testing.assert_allclose(
        theirs.predict(PROBE, verbose=0), model.predict(PROBE, verbose=0), **F32
    )
    assert theirs.optimizer is not None
