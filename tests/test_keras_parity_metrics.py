"""Metric objects and weighted_metrics against Keras 3 itself.

The same softmax model (weights copied with ``set_weights``) is compiled in both
libraries with AUC (ROC and PR), Precision, Recall, F1Score, top-k accuracy, RMSE and
weighted metrics; ``evaluate`` (with and without ``sample_weight``) and one epoch of
``fit`` report the same names and values. Keras's metrics compute in float32 (their
variables' dtype), so values agree within ``KERAS_F32``. Runs only where Keras can
train; under ``DLCORE_REQUIRE_KERAS=1`` a missing Keras fails it.
"""

from __future__ import annotations

import os
from typing import NoReturn

import numpy as np
import pytest

import dlcore
from dlcore import metrics as dl_metrics
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
    _keras_unavailable(f"Keras's {keras.backend.backend()} backend cannot train")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings(
        "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
    ),
]

KERAS_F32 = {"rtol": 2e-5, "atol": 1e-6}
FEATURES, CLASSES, SAMPLES, BATCH = 5, 3, 37, 8


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


def _data():
    rng = np.random.default_rng(7)
    X = rng.normal(size=(SAMPLES, FEATURES))
    Y = np.eye(CLASSES)[rng.integers(0, CLASSES, SAMPLES)]
    w = rng.uniform(0.1, 2.0, SAMPLES)
    kernel = rng.normal(scale=0.5, size=(FEATURES, CLASSES))
    return X, Y, w, [kernel, np.zeros(CLASSES)]


def _metrics(lib):
    return [
        "accuracy",
        lib.AUC(num_thresholds=50, name="auc"),
        lib.AUC(num_thresholds=50, curve="PR", name="pr_auc"),
        lib.AUC(num_thresholds=20, multi_label=True, name="ml_auc"),
        lib.Precision(name="precision"),
        lib.Recall(thresholds=[0.3, 0.6], name="recall"),
        lib.Precision(top_k=1, name="precision_top1"),
        lib.Recall(class_id=2, name="recall_2"),
        lib.F1Score(average="macro"),
        lib.TopKCategoricalAccuracy(k=2),
        lib.RootMeanSquaredError(),
    ]


@pytest.fixture(autouse=True)
def _keras_float64():
    """float64 in Keras for each test, its floatx and dtype policy restored afterwards (a
    later module may run with float64 turned off in JAX)."""
    saved = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    yield
    keras.config.set_floatx(saved[0])
    keras.config.set_dtype_policy(saved[1])


def _weighted(lib):
    return ["accuracy", lib.AUC(num_thresholds=50, name="auc"), "mse", lib.F1Score(average=None)]


def _models():
    X, Y, w, weights = _data()
    k_model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(CLASSES, "softmax")])
    k_model.set_weights(weights)
    k_model.compile(
        "sgd",
        "categorical_crossentropy",
        metrics=_metrics(keras.metrics),
        weighted_metrics=_weighted(keras.metrics),
    )
    dlcore.set_floatx("float64")
    d_model = Sequential([Dense(CLASSES, activation="softmax")])
    d_model.build((None, FEATURES))
    d_model.set_weights(weights)
    d_model.compile(
        "sgd",
        "categorical_crossentropy",
        metrics=_metrics(dl_metrics),
        weighted_metrics=_weighted(dl_metrics),
    )
    return X, Y, w, k_model, d_model


def _compare(ours, theirs):
    assert sorted(ours) == sorted(theirs)
    for key in theirs:
        np.testing.assert_allclose(
            np.asarray(ours[key]), np.asarray(theirs[key]), **KERAS_F32, err_msg=key
        )


@pytest.mark.parametrize("weighted", [False, True])
def test_evaluate_reports_keras_names_and_values(weighted):
    X, Y, w, k_model, d_model = _models()
    sample_weight = w if weighted else None
    theirs = k_model.evaluate(
        X, Y, batch_size=BATCH, verbose=0, return_dict=True, sample_weight=sample_weight
    )
    ours = d_model.evaluate(
        X, Y, batch_size=BATCH, verbose=0, return_dict=True, sample_weight=sample_weight
    )
    _compare(ours, theirs)


def test_fit_history_matches_keras():
    X, Y, w, k_model, d_model = _models()
    theirs = k_model.fit(
        X, Y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0, sample_weight=w
    ).history
    ours = d_model.fit(
        X, Y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0, sample_weight=w
    ).history
    assert sorted(ours) == sorted(theirs)
    for key in theirs:
        for a, b in zip(ours[key], theirs[key]):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), **KERAS_F32, err_msg=key)
