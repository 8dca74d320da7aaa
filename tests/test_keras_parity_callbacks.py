"""dlcore's ReduceLROnPlateau and LearningRateScheduler against Keras 3's: the same model,
weights, data and callback give the same learning rates and losses per epoch.

Runs only where Keras can train (``make parity``); elsewhere the module is skipped, except
under ``DLCORE_REQUIRE_KERAS=1``: a failure there. The setup is tests/test_keras_parity.py's:
identical starting weights, ``shuffle=False``, float64 in both libraries (JAX with
``jax_enable_x64``), 37 samples in batches of 8.
"""

from __future__ import annotations

import math
import os
from typing import NoReturn

import numpy as np
import pytest

import dlcore
from dlcore import callbacks as dl_callbacks
from dlcore import optimizers as dl_optimizers
from dlcore.layers import Dense
from dlcore.models import Sequential


def _keras_unavailable(reason: str) -> NoReturn:
    """Skip this module, or fail it where Keras is required (``DLCORE_REQUIRE_KERAS=1``)."""
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
FEATURES = 5
SAMPLES = 37
BATCH = 8


@pytest.fixture(scope="module", autouse=True)
def _x64_backend():
    """float64 arrays on the JAX backend, restored afterwards."""
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
    """float64 in both libraries; conftest restores dlcore's floatx, this Keras's."""
    saved = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    dlcore.set_floatx("float64")
    yield
    keras.config.set_floatx(saved[0])
    keras.config.set_dtype_policy(saved[1])


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(SAMPLES, FEATURES))
    return x, np.eye(3)[np.random.default_rng(1).integers(0, 3, SAMPLES)]


def _twins(learning_rate: float, seed: int = 4):
    """A Keras and a dlcore classifier with the same weights, both with SGD(learning_rate)."""
    km = keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(7, activation="relu"),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    dm = Sequential([Dense(7, activation="relu"), Dense(3, activation="softmax")])
    dm.build((None, FEATURES))
    rng = np.random.default_rng(seed)
    weights = [
        rng.normal(size=w.shape) / np.sqrt(w.shape[0]) if w.ndim == 2 else w
        for w in km.get_weights()
    ]
    km.set_weights(weights)
    dm.set_weights(km.get_weights())
    km.compile(
        optimizer=keras.optimizers.SGD(learning_rate=learning_rate),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    dm.compile(
        optimizer=dl_optimizers.SGD(learning_rate=learning_rate),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    return km, dm


def _assert_same_history(dl_history, k_history):
    assert set(dl_history.history) == set(k_history.history)
    assert dl_history.epoch == k_history.epoch
    for key, values in k_history.history.items():
        np.testing.assert_allclose(dl_history.history[key], values, err_msg=key, **FLOAT64)


@pytest.mark.parametrize(
    "options",
    [
        {"monitor": "val_loss", "factor": 0.5, "patience": 1, "min_delta": 0.02},
        {"monitor": "loss", "mode": "max", "factor": 0.3, "patience": 0, "cooldown": 1},
        {"monitor": "val_accuracy", "factor": 0.5, "patience": 1, "min_lr": 0.04},
    ],
)
def test_reduce_lr_on_plateau_matches_keras(options):
    km, dm = _twins(learning_rate=0.5)
    x, y = _data()
    kwargs = {"epochs": 8, "batch_size": BATCH, "shuffle": False, "verbose": 0}
    k_history = km.fit(
        x, y, validation_split=0.25, callbacks=[keras.callbacks.ReduceLROnPlateau(**options)],
        **kwargs,
    )  # fmt: skip
    dl_history = dm.fit(
        x, y, validation_split=0.25, callbacks=[dl_callbacks.ReduceLROnPlateau(**options)],
        **kwargs,
    )  # fmt: skip
    assert "learning_rate" in dl_history.history
    assert len(set(k_history.history["learning_rate"])) > 1  # the case reduces the rate
    _assert_same_history(dl_history, k_history)
    np.testing.assert_allclose(dm.get_weights()[0], km.get_weights()[0], **FLOAT64)


@pytest.mark.parametrize(
    "schedule",
    [
        lambda epoch, lr: lr if epoch < 2 else lr * math.exp(-0.3),
        lambda epoch: 0.4 / (1.0 + epoch),
    ],
    ids=["decay_after_2", "inverse_time"],
)
def test_learning_rate_scheduler_matches_keras(schedule):
    km, dm = _twins(learning_rate=0.3)
    x, y = _data()
    kwargs = {"epochs": 6, "batch_size": BATCH, "shuffle": False, "verbose": 0}
    k_history = km.fit(x, y, callbacks=[keras.callbacks.LearningRateScheduler(schedule)], **kwargs)
    dl_history = dm.fit(x, y, callbacks=[dl_callbacks.LearningRateScheduler(schedule)], **kwargs)
    assert len(set(dl_history.history["learning_rate"])) > 1
    _assert_same_history(dl_history, k_history)
    for mine, theirs in zip(dm.get_weights(), km.get_weights()):
        np.testing.assert_allclose(mine, theirs, **FLOAT64)
