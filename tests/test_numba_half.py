"""The numba engine computing ``mixed_float16``: float16 layers on float32 master weights.

A functional model with every kind of layer the numba engine runs in float16 (Dense,
Dropout, PReLU, a Dense shared by two branches, an Add merge) and a float32 softmax
output runs on the numba engine and on ``HalfEngine`` (tests/test_mixed_precision.py: the
generic engine on NumPy's float16, which the cupy engine's code computes), and the two
agree within float16's tolerance. Where there is no GPU this runs in Numba's CUDA
simulator (tests/conftest.py), so the model and its batches are tiny.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import numpy as np
import pytest
from test_mixed_precision import EPS16, HalfEngine
from test_numba_engine import _CountDeviceAllocations

import dlcore
from dlcore import backends, config, mixed_precision, optimizers
from dlcore.layers import Activation, Add, Dense, Dropout, Input, PReLU
from dlcore.mixed_precision import LossScaleOptimizer

pytest.importorskip("numba")
pytestmark = pytest.mark.cudasim

ROWS, FEATURES, UNITS, CLASSES = 8, 6, 8, 3

# Both engines round every float16 layer's output, each within eps16 / 2 of its magnitude
# (of order 1 here, as are the logits); probabilities move at most half as much as the
# logits. Measured in the simulator: 0.2 eps16 apart.
PREDICTION_ATOL = 4 * EPS16

# A weight moves by learning rate x gradient, and the float16 gradients agree to a few
# eps16 of their largest element: the moves agree to that, step by step (measured: 0.02
# eps16 of the largest move).
MOVE_RTOL = 4 * EPS16
LEARNING_RATE = 0.1
STEPS = 3


@pytest.fixture(autouse=True)
def _mixed_float16():
    mixed_precision._warned.clear()
    mixed_precision.set_global_policy("mixed_float16")  # conftest restores the global state
    yield
    mixed_precision._warned.clear()


@contextlib.contextmanager
def _on(engine: backends.Engine) -> Iterator[None]:
    """Build models on ``engine`` inside the block."""
    previous = config._state["engine"]
    config._state["engine"] = engine
    try:
        yield
    finally:
        config._state["engine"] = previous


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((ROWS, FEATURES)).astype(np.float32)
    return x, rng.integers(0, CLASSES, ROWS)


def _model(dropout_rate: float = 0.0) -> dlcore.Model:
    """Dense relu; one tanh Dense applied to its output after Dropout and to its output
    itself; the two added; PReLU (of both signs: its alpha learns); float16 logits; a
    float32 softmax."""
    dlcore.set_random_seed(0)
    inputs = Input(shape=(FEATURES,))
    hidden = Dense(UNITS, activation="relu")(inputs)
    shared = Dense(UNITS, activation="tanh")
    merged = Add()([shared(Dropout(dropout_rate)(hidden)), shared(hidden)])
    logits = Dense(CLASSES)(PReLU()(merged))
    return dlcore.Model(inputs, Activation("softmax", dtype="float32")(logits))


def _predict_and_train(engine: backends.Engine) -> dict:
    """Predictions, then the weights and loss scales after ``STEPS`` loss-scaled SGD steps."""
    x, y = _data()
    with _on(engine):
        model = _model()
        model.compile(
            optimizer=optimizers.SGD(LEARNING_RATE), loss="sparse_categorical_crossentropy"
        )
        initial = model.get_weights()
        predictions = model.predict(x, verbose=0)
        scales = []
        for _ in range(STEPS):
            model.train_on_batch(x, y)
            scales.append(model.optimizer.loss_scale)
        return {
            "model": model,
            "predictions": predictions,
            "initial": initial,
            "weights": model.get_weights(),
            "scales": scales,
        }


@pytest.fixture(scope="module")
def runs() -> dict:
    """The same model and steps on the numba engine and on ``HalfEngine``."""
    saved = dict(config._state)  # made once for the module: outside conftest's restoring
    mixed_precision._warned.clear()
    mixed_precision.set_global_policy("mixed_float16")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            numba_run = _predict_and_train(backends.get("numba"))
        half_run = _predict_and_train(HalfEngine())
    finally:
        config._state.clear()
        config._state.update(saved)
    return {"numba": numba_run, "half": half_run, "warnings": caught}


def test_numba_layers_run_in_float16_without_falling_back(runs):
    model = runs["numba"]["model"]
    assert not [str(w.message) for w in runs["warnings"] if "kernels" in str(w.message)]
    assert {(type(layer).__name__, layer.run_dtype) for layer in model.layers[1:]} == {
        ("Dense", "float16"),
        ("Dropout", "float16"),
        ("PReLU", "float16"),
        ("Add", "float16"),
        ("Activation", "float32"),
    }
    dense = [layer for layer in model.layers if isinstance(layer, Dense)]
    assert all(layer.bound_params()[0].dtype == np.float16 for layer in dense)


def test_numba_predictions_match_the_float16_engine(runs):
    got, expected = runs["numba"]["predictions"], runs["half"]["predictions"]
    assert got.dtype == expected.dtype == np.float32  # the float32 softmax's
    np.testing.assert_allclose(got, expected, rtol=0, atol=PREDICTION_ATOL)
    # and they are float16's, not float32's: a float32 model computes other numbers
    mixed_precision.set_global_policy("float32")
    with _on(backends.get("numpy")):
        float32_predictions = _model().predict(_data()[0], verbose=0)
    assert np.abs(got - float32_predictions).max() > 1e-5


def test_numba_training_keeps_float32_masters_matching_the_float16_engine(runs):
    numba_run, half_run = runs["numba"], runs["half"]
    model = numba_run["model"]
    assert isinstance(model.optimizer, LossScaleOptimizer)
    assert numba_run["scales"] == half_run["scales"]  # the same steps were skipped, if any
    for before, after, expected in zip(
        numba_run["initial"], numba_run["weights"], half_run["weights"], strict=True
    ):
        assert after.dtype == np.float32
        moved, expected_move = after - before, expected - before
        assert np.abs(moved).max() > 0
        tolerance = MOVE_RTOL * STEPS * np.abs(expected_move).max()
        np.testing.assert_allclose(moved, expected_move, rtol=0, atol=tolerance)


def test_float16_training_steps_allocate_nothing_after_the_first_epoch(monkeypatch):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((ROWS, FEATURES)).astype(np.float32)
    y = rng.integers(0, CLASSES, ROWS)
    with _on(backends.get("numba")):
        model = _model(dropout_rate=0.5)
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
        counter = _CountDeviceAllocations(monkeypatch)
        model.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=[counter])
    assert counter.per_step[0] > 0
    assert counter.per_step[2:] == [0, 0]
    assert all(np.all(np.isfinite(w)) and w.dtype == np.float32 for w in model.get_weights())


# ---------------------------------------------------------------------- engine operations
def _half(values: np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=np.float16)


def _assert_one_rounding(got: np.ndarray, expected: np.ndarray) -> None:
    """``got`` is float16 and within one float16 rounding (and float32's few ulps) of the
    float64 ``expected``."""
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float64), expected, rtol=EPS16, atol=1e-6)


def test_the_elementwise_operations_of_float16_layers():
    engine = backends.get("numba")
    rng = np.random.default_rng(2)
    X16 = _half(rng.standard_normal((5, 7)))
    dY16 = _half(rng.standard_normal((5, 7)))
    X, dY = X16.astype(np.float64), dY16.astype(np.float64)
    device_X = engine.asarray(X16, dtype="float16")
    device_dY = engine.asarray(dY16, dtype="float16")
    np.testing.assert_array_equal(engine.to_numpy(device_X), X16)  # asarray, to_numpy

    sigmoid = 1 / (1 + np.exp(-X))
    Y = engine.activation("sigmoid", device_X)
    _assert_one_rounding(engine.to_numpy(Y), sigmoid)
    dZ = engine.backprop_activation("sigmoid", device_dY, device_X, Y)
    _assert_one_rounding(engine.to_numpy(dZ), dY * sigmoid * (1 - sigmoid))
    _assert_one_rounding(engine.to_numpy(engine.scale(device_X, 0.3)), 0.3 * X)

    dropped, mask = engine.dropout(device_X, rate=0.5)
    kept = engine.to_numpy(mask)
    assert kept.dtype == np.float16 and set(np.unique(kept)) <= {0.0, 2.0}
    np.testing.assert_array_equal(engine.to_numpy(dropped), X16 * kept)
    dX = engine.to_numpy(engine.backprop_dropout(device_dY, mask))
    np.testing.assert_array_equal(dX, dY16 * kept)

    zeros = engine.zeros((3, 2), dtype="float16")
    np.testing.assert_array_equal(engine.to_numpy(zeros), np.zeros((3, 2), np.float16))


@pytest.mark.parametrize("other", ["float32", "float64"])
def test_cast_to_and_from_float16_rounds_as_numpy(other):
    engine = backends.get("numba")
    values = np.array([[1 + 2.0**-11, -3.5, 1e-8], [7.0, 0.1, -0.0]])
    wide = engine.asarray(values, dtype=other)
    half = engine.cast(wide, "float16")
    np.testing.assert_array_equal(engine.to_numpy(half), values.astype(other).astype(np.float16))
    back = engine.cast(half, other, out=engine.zeros((2, 3), dtype=other))
    np.testing.assert_array_equal(
        engine.to_numpy(back), values.astype(other).astype(np.float16).astype(other)
    )
