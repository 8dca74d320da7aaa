"""Keras model files against Keras 3 itself: dlcore reads the files Keras writes and
predicts what Keras predicts; Keras reads the ``.keras`` files dlcore writes and predicts
what dlcore predicts (float32, rtol 1e-6). Runs under ``make parity``; elsewhere skipped,
except under ``DLCORE_REQUIRE_KERAS=1``."""

from __future__ import annotations

import os
import warnings
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


# ------------------------------------------------------------------ the optimizer's state
def _trained_dlcore_model(optimizer):
    """Dense + BatchNormalization + a frozen Dense, trained 2 epochs (4 steps)."""
    dlcore.set_floatx("float32")
    dlcore.set_random_seed(7)
    model = Sequential(
        [
            Input((4,)),
            Dense(6, activation="tanh"),
            BatchNormalization(),
            Dense(5, activation="relu", name="frozen"),
            Dense(2),
        ]
    )
    model.get_layer("frozen").trainable = False
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(FIT_X, FIT_Y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    return model


def _keras_load_quietly(path):
    """``keras.saving.load_model``, failing on Keras's optimizer-skipping warning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = keras.saving.load_model(path)
    skipped = [str(w.message) for w in caught if "Skipping variable loading" in str(w.message)]
    assert not skipped, skipped
    return model


#: float32 both sides: the same 2 steps from the same state agree to a few float32 ulps
#: of the weights (Adam's m / sqrt(v) amplifies rounding where v is tiny, hence 1e-5);
#: starting the optimizer from zero moves them by > 1e-3 (checked below)
CONTINUED = {"rtol": 1e-5, "atol": 1e-6}


def _optimizers():
    return {
        "adam": lambda: dlcore.optimizers.Adam(0.01),
        "sgd_momentum": lambda: dlcore.optimizers.SGD(0.05, momentum=0.9),
        "rmsprop": lambda: dlcore.optimizers.RMSprop(0.01, momentum=0.5, centered=True),
        "nadam": lambda: dlcore.optimizers.Nadam(0.01),
        "adamw_amsgrad_ema": lambda: dlcore.optimizers.AdamW(0.01, amsgrad=True, use_ema=True),
    }


@pytest.mark.parametrize("name", list(_optimizers()))
def test_keras_continues_training_where_dlcore_stopped(tmp_path, name):
    model = _trained_dlcore_model(_optimizers()[name]())
    path = str(tmp_path / "m.keras")
    model.save(path, save_format="keras")
    theirs = _keras_load_quietly(path)
    assert int(theirs.optimizer.iterations) == 4
    ours = load_model(path)  # dlcore's own members
    ours.fit(FIT_X, FIT_Y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    theirs.fit(FIT_X, FIT_Y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    for mine, keras_weight in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(mine, keras_weight, **CONTINUED)
    # the optimizer's state is what makes them agree: a fresh Keras optimizer does not
    fresh = keras.saving.load_model(path)
    fresh.optimizer.build(fresh.trainable_variables)
    for variable in fresh.optimizer.variables[1:]:
        if len(variable.shape):
            variable.assign(np.zeros(variable.shape, dtype="float32"))
    fresh.optimizer.iterations.assign(0)
    fresh.fit(FIT_X, FIT_Y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    differences = [np.abs(a - b).max() for a, b in zip(fresh.get_weights(), theirs.get_weights())]
    assert max(differences) > 1e-3


def _trained_keras_model(optimizer):
    keras.utils.set_random_seed(11)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(6, activation="tanh"),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(5, activation="relu", name="frozen", trainable=False),
            keras.layers.Dense(2),
        ]
    )
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(FIT_X, FIT_Y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    return model


@pytest.mark.parametrize(
    "optimizer",
    [
        lambda: keras.optimizers.Adam(0.01),
        lambda: keras.optimizers.SGD(0.05, momentum=0.9),
        lambda: keras.optimizers.RMSprop(0.01, momentum=0.5, centered=True),
        lambda: keras.optimizers.Nadam(0.01),
        lambda: keras.optimizers.Ftrl(0.05),
    ],
    ids=["adam", "sgd_momentum", "rmsprop", "nadam", "ftrl"],
)
@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_dlcore_continues_training_where_keras_stopped(tmp_path, optimizer, suffix):
    theirs = _trained_keras_model(optimizer())
    path = str(tmp_path / f"m{suffix}")
    theirs.save(path)
    dlcore.set_floatx("float32")
    ours = load_model(path)
    assert ours.optimizer.iterations == 4
    theirs.fit(FIT_X, FIT_Y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    ours.fit(FIT_X, FIT_Y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    for mine, keras_weight in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(mine, keras_weight, **CONTINUED)
