"""dlcore's optimizers against Keras 3's: AdamW, Adadelta, Lion, Ftrl, every learning rate
schedule, weight decay, clipnorm, clipvalue, global_clipnorm and the moving average.

Both models start from identical weights and train with ``shuffle=False`` on a fixed
dataset of 37 samples in batches of 8 (a partial batch of 5 ends each epoch) for three
epochs, in float64 (``jax_enable_x64``); the weights after training must agree within
rounding. Runs only where Keras can train (``make parity``); skipped elsewhere, a failure
under ``DLCORE_REQUIRE_KERAS=1``.
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
# Keras computes ops.cos in float32 even on float64 tensors (its dtype promotion maps
# float64 to float32, see tests/test_keras_parity.py), so the cosine schedules' rates
# carry float32 rounding there
KERAS_F32 = {"rtol": 1e-5, "atol": 1e-8}
FEATURES, SAMPLES, BATCH, EPOCHS = 5, 37, 8, 3


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


def _data():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((SAMPLES, FEATURES))
    y = np.eye(3)[rng.integers(0, 3, SAMPLES)]
    return x, y


def _twins(seed: int = 0):
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
        rng.normal(size=w.shape) / np.sqrt(w.shape[0])
        if w.ndim == 2
        else 0.1 * rng.normal(size=w.shape)
        for w in km.get_weights()
    ]
    km.set_weights(weights)
    dm.set_weights(weights)
    return km, dm


def _train_both(name: str, options: dict, schedule=None):
    """Weights of both models after ``EPOCHS`` epochs with optimizer ``name`` (a class of
    both libraries) and ``options``; ``schedule`` is ``(class name, arguments)``."""
    km, dm = _twins()
    k_options, d_options = dict(options), dict(options)
    if schedule is not None:
        cls, arguments = schedule
        k_options["learning_rate"] = getattr(keras.optimizers.schedules, cls)(**arguments)
        d_options["learning_rate"] = getattr(dl_optimizers.schedules, cls)(**arguments)
    km.compile(
        optimizer=getattr(keras.optimizers, name)(**k_options), loss="categorical_crossentropy"
    )
    dm.compile(optimizer=getattr(dl_optimizers, name)(**d_options), loss="categorical_crossentropy")
    x, y = _data()
    kwargs = {"batch_size": BATCH, "shuffle": False, "verbose": 0, "epochs": EPOCHS}
    km.fit(x, y, **kwargs)
    dm.fit(x, y, **kwargs)
    return km.get_weights(), dm.get_weights()


def _assert_same(theirs, mine, tolerance=FLOAT64):
    for k, (a, b) in enumerate(zip(theirs, mine, strict=True)):
        np.testing.assert_allclose(b, a, **tolerance, err_msg=f"weight {k}")


OPTIMIZER_CASES = {
    "adamw": ("AdamW", {"learning_rate": 0.02}),
    "adamw_amsgrad_decay": ("AdamW", {"learning_rate": 0.02, "weight_decay": 0.1, "amsgrad": True}),
    "adadelta": ("Adadelta", {"learning_rate": 1.0, "rho": 0.9}),
    "lion": ("Lion", {"learning_rate": 0.003, "beta_1": 0.85}),
    "ftrl": (
        "Ftrl",
        {
            "learning_rate": 0.1,
            "learning_rate_power": -0.6,
            "l1_regularization_strength": 0.01,
            "l2_regularization_strength": 0.02,
            "l2_shrinkage_regularization_strength": 0.01,
            "beta": 0.1,
        },
    ),
}


@pytest.mark.parametrize("case", list(OPTIMIZER_CASES))
def test_new_optimizers_train_as_keras(case):
    _assert_same(*_train_both(*OPTIMIZER_CASES[case]))


SCHEDULES = {
    "exponential": (
        "ExponentialDecay",
        {"initial_learning_rate": 0.1, "decay_steps": 3, "decay_rate": 0.7},
    ),
    "exponential_staircase": (
        "ExponentialDecay",
        {"initial_learning_rate": 0.1, "decay_steps": 3, "decay_rate": 0.7, "staircase": True},
    ),
    "piecewise": ("PiecewiseConstantDecay", {"boundaries": [4, 9], "values": [0.2, 0.1, 0.05]}),
    "inverse_time": (
        "InverseTimeDecay",
        {"initial_learning_rate": 0.1, "decay_steps": 2, "decay_rate": 0.5},
    ),
    "polynomial": (
        "PolynomialDecay",
        {"initial_learning_rate": 0.1, "decay_steps": 8, "end_learning_rate": 0.01, "power": 2.0},
    ),
    "polynomial_cycle": (
        "PolynomialDecay",
        {"initial_learning_rate": 0.1, "decay_steps": 5, "cycle": True},
    ),
    "cosine": ("CosineDecay", {"initial_learning_rate": 0.1, "decay_steps": 10, "alpha": 0.1}),
    "cosine_warmup": (
        "CosineDecay",
        {"initial_learning_rate": 0.0, "decay_steps": 8, "warmup_target": 0.2, "warmup_steps": 4},
    ),
    "cosine_restarts": (
        "CosineDecayRestarts",
        {
            "initial_learning_rate": 0.1,
            "first_decay_steps": 3,
            "t_mul": 2.0,
            "m_mul": 0.8,
            "alpha": 0.05,
        },
    ),
}


@pytest.mark.parametrize("case", list(SCHEDULES))
def test_schedules_train_as_keras(case):
    tolerance = KERAS_F32 if SCHEDULES[case][0].startswith("Cosine") else FLOAT64
    _assert_same(*_train_both("SGD", {"momentum": 0.5}, SCHEDULES[case]), tolerance)


OPTIONS = {
    "weight_decay": ("SGD", {"learning_rate": 0.1, "weight_decay": 0.2}),
    "weight_decay_adam": ("Adam", {"learning_rate": 0.01, "weight_decay": 0.1}),
    "clipnorm": ("SGD", {"learning_rate": 0.5, "clipnorm": 0.05}),
    "clipvalue": ("Adam", {"learning_rate": 0.01, "clipvalue": 0.02}),
    "global_clipnorm": ("SGD", {"learning_rate": 0.5, "global_clipnorm": 0.1}),
    "use_ema": ("Adam", {"learning_rate": 0.02, "use_ema": True, "ema_momentum": 0.8}),
    "use_ema_overwrite": (
        "SGD",
        {"learning_rate": 0.1, "use_ema": True, "ema_momentum": 0.7, "ema_overwrite_frequency": 3},
    ),
}


@pytest.mark.parametrize("case", list(OPTIONS))
def test_common_options_train_as_keras(case):
    _assert_same(*_train_both(*OPTIONS[case]))


def test_schedule_with_clipping_and_decay_trains_as_keras():
    schedule = SCHEDULES["cosine_warmup"]
    _assert_same(
        *_train_both("AdamW", {"weight_decay": 0.05, "clipnorm": 0.5}, schedule), KERAS_F32
    )


def test_clipping_and_decay_skip_batch_normalization_statistics_as_keras():
    """clipnorm clips each trained weight and weight decay shrinks trained weights only:
    BatchNormalization's moving statistics are neither (they were once counted among the
    clipped variables, which refused the fit)."""
    from dlcore.layers import BatchNormalization

    km = keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(7, use_bias=False),  # Adam would amplify a zero gradient's noise
            keras.layers.BatchNormalization(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    dm = Sequential(
        [Dense(7, use_bias=False), BatchNormalization(), Dense(3, activation="softmax")]
    )
    dm.build((None, FEATURES))
    rng = np.random.default_rng(3)
    weights = [
        np.abs(rng.normal(size=w.shape)) + 0.5 if w.ndim == 1 else rng.normal(size=w.shape) / 3
        for w in km.get_weights()
    ]
    km.set_weights(weights)
    dm.set_weights(weights)
    options = {"learning_rate": 0.05, "weight_decay": 0.1, "clipnorm": 0.2}
    km.compile(optimizer=keras.optimizers.AdamW(**options), loss="categorical_crossentropy")
    dm.compile(optimizer=dl_optimizers.AdamW(**options), loss="categorical_crossentropy")
    x, y = _data()
    kwargs = {"batch_size": BATCH, "shuffle": False, "verbose": 0, "epochs": EPOCHS}
    km.fit(x, y, **kwargs)
    dm.fit(x, y, **kwargs)
    _assert_same(km.get_weights(), dm.get_weights(), KERAS_F32)  # Keras's moments: float32
