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


FIT_X = np.sin(np.arange(16 * 4, dtype=np.float32)).reshape(16, 4)
FIT_Y = np.stack([FIT_X[:, 0] - FIT_X[:, 1], FIT_X[:, 2] * FIT_X[:, 3]], axis=1)


def _regularized_dlcore_model():
    from dlcore import initializers, regularizers
    from dlcore.layers import Normalization

    dlcore.set_floatx("float32")
    dlcore.set_random_seed(5)
    norm = Normalization()
    norm.adapt(FIT_X * 2.0 - 1.0)
    model = Sequential(
        [
            Input((4,)),
            norm,
            Dense(
                6,
                activation="tanh",
                kernel_initializer=initializers.RandomNormal(0.0, 0.5, seed=2),
                bias_initializer=initializers.Constant(0.1),
                kernel_regularizer=regularizers.L2(0.02),
                bias_regularizer=regularizers.L1(0.01),
            ),
            BatchNormalization(gamma_regularizer=regularizers.L1L2(0.01, 0.03)),
            PReLU(alpha_initializer=initializers.Constant(0.2), alpha_regularizer="l2"),
            # not 0: the slope of |x| at 0 is 0 for dlcore (and Keras on TensorFlow), 1
            # for JAX's autodiff, so an L1 weight at exactly 0 trains differently
            LayerNormalization(
                beta_initializer=initializers.Constant(0.05),
                beta_regularizer=regularizers.L1(0.02),
            ),
            Dense(
                2,
                kernel_initializer=initializers.HeNormal(seed=3),
                kernel_regularizer=regularizers.L1L2(l1=0.005, l2=0.01),
            ),
        ]
    )
    model.compile(optimizer=dlcore.optimizers.SGD(learning_rate=0.05), loss="mse")
    return model


def test_keras_trains_what_dlcore_writes_with_the_same_penalties(tmp_path):
    """Keras loads dlcore's initializers, regularizers and adapted Normalization, predicts
    the same and reports the same one-epoch loss (penalties included). Both run in
    float32: the loss of two 8-sample batches plus six penalty sums agrees to a few
    float32 ulps (rel 1e-5), far below what one dropped penalty moves it (> 1e-2)."""
    model = _regularized_dlcore_model()
    path = str(tmp_path / "m.keras")
    model.save(path, save_format="keras")
    theirs = keras.saving.load_model(path)
    np.testing.assert_allclose(
        theirs.predict(PROBE, verbose=0), model.predict(PROBE, verbose=0), rtol=1e-5, atol=1e-6
    )
    dense = theirs.layers[1]
    assert isinstance(dense.kernel_regularizer, keras.regularizers.L2)
    assert isinstance(theirs.layers[0], keras.layers.Normalization)
    ours = model.fit(FIT_X, FIT_Y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    keras_history = theirs.fit(FIT_X, FIT_Y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    loss = keras_history.history["loss"][0]
    assert ours.history["loss"][0] == pytest.approx(loss, rel=1e-5)
    np.testing.assert_allclose(
        theirs.predict(PROBE, verbose=0), model.predict(PROBE, verbose=0), rtol=1e-4, atol=1e-5
    )


def test_dlcore_loads_the_weights_file_keras_saves(tmp_path):
    """``model.load_weights`` of a Keras ``save_weights`` file, by layer order."""
    theirs = keras.saving.load_model(_save(tmp_path, _regularized_dlcore_model()))
    path = str(tmp_path / "k.weights.h5")
    theirs.save_weights(path)
    ours = _regularized_dlcore_model()
    ours.set_weights([w * 0 for w in ours.get_weights()])
    ours.load_weights(path)
    np.testing.assert_allclose(
        ours.predict(PROBE, verbose=0), theirs.predict(PROBE, verbose=0), rtol=1e-5, atol=1e-6
    )


def _save(tmp_path, model):
    path = str(tmp_path / "m.keras")
    model.save(path, save_format="keras")
    return path
