"""dlcore against Keras 3 itself: the same model, weights and data give the same numbers.

Runs only where Keras can train (``make parity``, which CI runs); elsewhere the module is
skipped, except under ``DLCORE_REQUIRE_KERAS=1`` (set by ``make parity``): a failure there.
Every comparison starts both models from identical weights (kernels drawn here, biases
and PReLU slopes from initializers that must agree, then copied with ``set_weights``:
kernel ``(in, out)`` then bias in both libraries) and trains with ``shuffle=False`` and
the same batch size on a fixed dataset of 37 samples, so that batches of 8 end with a
partial batch of 5. Functional models: ``tests/test_keras_parity_functional.py``.

Precision. The checks run in float64, which Keras's JAX backend computes once
``jax_enable_x64`` is on, with two exceptions: Keras's dtype promotion maps float64 to
float32 on every backend but TensorFlow (``BIT64_TO_BIT32_DTYPE`` in
``keras/src/backend/common/dtypes.py``), so ``ops.tanh`` and ``ops.mean`` (used by every
loss that averages over the outputs of a sample, and by ``mae`` as a metric) compute in
float32. Comparisons through those use ``KERAS_F32``; all others use ``FLOAT64``, which
leaves room for rounding only. ``pytest -s`` prints the largest differences seen.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import NamedTuple, NoReturn

import numpy as np
import pytest
from dlcore.backends import names

import dlcore
from dlcore import callbacks as dl_callbacks
from dlcore import initializers as dl_initializers
from dlcore import losses as dl_losses
from dlcore import optimizers as dl_optimizers
from dlcore import regularizers as dl_regularizers
from dlcore.layers import Dense, Dropout, PReLU
from dlcore.models import Sequential


def _keras_unavailable(reason: str) -> NoReturn:
    """Skip this module, or fail it where Keras is required: ``make parity`` (run by CI)
    sets ``DLCORE_REQUIRE_KERAS=1``, so that a broken parity environment is not a pass."""
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
    # Keras's Variable.__array__ predates NumPy 2's copy keyword; get_weights triggers it.
    pytest.mark.filterwarnings(
        "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
    ),
]

FLOAT64 = {"rtol": 1e-9, "atol": 1e-12}
KERAS_F32 = {"rtol": 1e-5, "atol": 1e-8}
FLOAT32 = {"rtol": 1e-4, "atol": 1e-6}

FEATURES = 5
SAMPLES = 37
BATCH = 8

# Largest relative difference per check, printed when the module ends (pytest -s).
OBSERVED: dict[str, float] = {}


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
    if OBSERVED:
        width = max(map(len, OBSERVED))
        print(f"\nlargest relative differences, dlcore vs Keras {keras.__version__}:")
        for key, value in OBSERVED.items():
            print(f"  {key:<{width}}  {value:.2e}")


def _set_floatx(dtype: str) -> None:
    """Both libraries compute in ``dtype``; Keras layers take theirs from the dtype policy,
    which Keras fixes from floatx on first use, so it is set as well."""
    keras.config.set_floatx(dtype)
    keras.config.set_dtype_policy(dtype)
    dlcore.set_floatx(dtype)


@pytest.fixture(autouse=True)
def _float64():
    """float64 in both libraries; conftest restores dlcore's floatx, this Keras's."""
    saved = keras.config.floatx(), keras.config.dtype_policy()
    _set_floatx("float64")
    yield
    keras.config.set_floatx(saved[0])
    keras.config.set_dtype_policy(saved[1])


def assert_close(what: str, actual, expected, *, rtol: float, atol: float) -> None:
    """``np.testing.assert_allclose`` that also records the largest relative difference."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = np.maximum(np.abs(expected), atol / rtol)
    OBSERVED[what] = max(OBSERVED.get(what, 0.0), float(np.max(np.abs(actual - expected) / scale)))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)


def assert_weights_close(what: str, dm: Sequential, km, tolerance: dict[str, float]) -> None:
    mine, theirs = dm.get_weights(), km.get_weights()
    assert [w.shape for w in mine] == [w.shape for w in theirs]
    for w_mine, w_theirs in zip(mine, theirs):
        assert_close(f"{what} weights", w_mine, w_theirs, **tolerance)


def assert_history_close(what: str, dl_history, k_history, tolerance: dict[str, float]) -> None:
    assert set(dl_history.history) == set(k_history.history)
    assert dl_history.epoch == k_history.epoch
    for key, values in k_history.history.items():
        assert_close(f"{what} history {key}", dl_history.history[key], values, **tolerance)


# ---------------------------------------------------------------------- data and models
def _features(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(SAMPLES, FEATURES))


def _labels(seed: int = 1, classes: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, classes, SAMPLES)


def _one_hot(labels: np.ndarray, classes: int = 3) -> np.ndarray:
    return np.eye(classes)[labels]


def _positive(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.2, 2.0, size=(SAMPLES, 3))


def _distributions(seed: int) -> np.ndarray:
    z = np.random.default_rng(seed).normal(size=(SAMPLES, 3))
    return np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)


def _binary(seed: int, outputs: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2, size=(SAMPLES, outputs)).astype(float)


def _twins(pairs, *, seed: int, features: int = FEATURES):
    """A Keras model and a dlcore model of the same layers, with the same weights.

    ``pairs`` lists ``(keras_layer, dlcore_layer)``. Kernels are drawn here (normal,
    standard deviation ``1 / sqrt(fan_in)``); biases and PReLU slopes keep the values
    of their initializers, which must agree between the two libraries.
    """
    km = keras.Sequential([keras.Input((features,)), *(k for k, _ in pairs)])
    dm = Sequential([d for _, d in pairs])
    dm.build((None, features))
    rng = np.random.default_rng(seed)
    weights = []
    for theirs, mine in zip(km.get_weights(), dm.get_weights(), strict=True):
        assert theirs.dtype == mine.dtype == np.dtype(keras.config.floatx())
        if theirs.ndim == 2:
            weights.append(rng.normal(size=theirs.shape) / np.sqrt(theirs.shape[0]))
        else:
            np.testing.assert_array_equal(mine, theirs)
            weights.append(theirs)
    km.set_weights(weights)
    dm.set_weights(km.get_weights())
    return km, dm


def _dense_pairs(units: int, activation: str | None, hidden: str = "relu"):
    return [
        (keras.layers.Dense(7, activation=hidden), Dense(7, activation=hidden)),
        (keras.layers.Dense(units, activation=activation), Dense(units, activation=activation)),
    ]


def _compile_both(
    km, dm, optimizer: str, options: dict, loss="categorical_crossentropy", metrics=()
):
    """Compile both models with the optimizer class of that name in each library."""
    for model, module in ((km, keras.optimizers), (dm, dl_optimizers)):
        model.compile(
            optimizer=getattr(module, optimizer)(**options), loss=loss, metrics=list(metrics)
        )


def _fit_both(km, dm, x, y, **kwargs):
    kwargs = {"batch_size": BATCH, "shuffle": False, "verbose": 0, **kwargs}
    return km.fit(x, y, **kwargs), dm.fit(x, y, **kwargs)


def _classifier(seed: int, *, metrics=("accuracy",), learning_rate: float = 0.1):
    km, dm = _twins(_dense_pairs(3, "softmax"), seed=seed)
    _compile_both(km, dm, "SGD", {"learning_rate": learning_rate}, metrics=metrics)
    return km, dm


# ---------------------------------------------------------------------- 1. optimizers
OPTIMIZERS = {
    "sgd_nesterov": ("SGD", {"learning_rate": 0.1, "momentum": 0.9, "nesterov": True}),
    "adam": ("Adam", {"learning_rate": 0.01, "beta_1": 0.8, "beta_2": 0.99, "epsilon": 1e-6}),
    "adam_amsgrad": ("Adam", {"learning_rate": 0.02, "amsgrad": True}),
    "rmsprop_centered_momentum": (
        "RMSprop",
        {"learning_rate": 0.01, "rho": 0.8, "momentum": 0.5, "centered": True, "epsilon": 1e-6},
    ),
    "adagrad": ("Adagrad", {"learning_rate": 0.05, "initial_accumulator_value": 0.2}),
    "adamax": ("Adamax", {"learning_rate": 0.02, "beta_1": 0.85, "beta_2": 0.99}),
    "nadam": ("Nadam", {"learning_rate": 0.01, "beta_2": 0.99, "epsilon": 1e-6}),
}


@pytest.mark.parametrize("case", list(OPTIMIZERS))
def test_optimizer_training_matches_keras(case):
    optimizer, options = OPTIMIZERS[case]
    km, dm = _twins(_dense_pairs(3, "softmax"), seed=2)
    _compile_both(km, dm, optimizer, options, metrics=["accuracy"])
    x, y = _features(), _one_hot(_labels())

    k_history, dl_history = _fit_both(km, dm, x, y, epochs=3, validation_split=0.25)

    assert set(dl_history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert_history_close(case, dl_history, k_history, FLOAT64)
    assert_weights_close(case, dm, km, FLOAT64)


# ---------------------------------------------------------------------- 2. losses
class LossCase(NamedTuple):
    loss: str
    targets: Callable[[], np.ndarray]
    activation: str | None = None  # of the output layer
    units: int = 3
    from_logits: bool = False
    tolerance: dict[str, float] = KERAS_F32  # Keras averages over the outputs in float32
    learning_rate: float = 0.1


_ONE_HOT = lambda: _one_hot(_labels())  # noqa: E731
_POSITIVE = lambda: _positive(3)  # noqa: E731

# Output activations keep predictions where each loss is defined (positive for msle and
# poisson) and, for the cross-entropies, away from Keras's clipping at 1e-7 (see
# test_saturated_crossentropy_follows_the_logits_gradient).
LOSS_CASES = {
    "mse": LossCase("mean_squared_error", _POSITIVE),
    "mae": LossCase("mean_absolute_error", _POSITIVE),
    # a percentage: its gradient is about 100 times the others'
    "mape": LossCase("mean_absolute_percentage_error", _POSITIVE, learning_rate=0.001),
    "msle": LossCase("mean_squared_logarithmic_error", _POSITIVE, "softplus"),
    "squared_hinge_0_1": LossCase("squared_hinge", lambda: _binary(4, 3)),
    "squared_hinge_signs": LossCase("squared_hinge", lambda: 2 * _binary(4, 3) - 1),
    "hinge_0_1": LossCase("hinge", lambda: _binary(4, 3)),
    "hinge_signs": LossCase("hinge", lambda: 2 * _binary(4, 3) - 1),
    "categorical_hinge": LossCase("categorical_hinge", _ONE_HOT, tolerance=FLOAT64),
    "log_cosh": LossCase("log_cosh", _POSITIVE),
    "cce": LossCase("categorical_crossentropy", _ONE_HOT, "softmax", tolerance=FLOAT64),
    "cce_soft_targets": LossCase(
        "categorical_crossentropy", lambda: _distributions(5), "softmax", tolerance=FLOAT64
    ),
    "cce_logits": LossCase(
        "categorical_crossentropy", _ONE_HOT, from_logits=True, tolerance=FLOAT64
    ),
    "sparse_cce": LossCase(
        "sparse_categorical_crossentropy", _labels, "softmax", tolerance=FLOAT64
    ),
    "sparse_cce_logits": LossCase(
        "sparse_categorical_crossentropy", _labels, from_logits=True, tolerance=FLOAT64
    ),
    "bce": LossCase("binary_crossentropy", lambda: _binary(6, 2), "sigmoid", units=2),
    "bce_one_output": LossCase("binary_crossentropy", lambda: _binary(6, 1), "sigmoid", units=1),
    "bce_logits": LossCase("binary_crossentropy", lambda: _binary(6, 2), units=2, from_logits=True),
    "kl_divergence": LossCase(
        "kl_divergence", lambda: _distributions(5), "softmax", tolerance=FLOAT64
    ),
    "poisson": LossCase("poisson", _POSITIVE, "softplus"),
    "cosine_similarity": LossCase("cosine_similarity", _POSITIVE, tolerance=FLOAT64),
}

_KERAS_LOGIT_LOSSES = {
    "categorical_crossentropy": "CategoricalCrossentropy",
    "sparse_categorical_crossentropy": "SparseCategoricalCrossentropy",
    "binary_crossentropy": "BinaryCrossentropy",
}


def test_every_dlcore_loss_is_compared():
    assert {case.loss for case in LOSS_CASES.values()} == set(names.LOSSES)
    assert {c.loss for c in LOSS_CASES.values() if c.from_logits} == set(_KERAS_LOGIT_LOSSES)


def _assert_away_from_clipping(model: Sequential, x: np.ndarray) -> None:
    probabilities = model.predict(x)
    assert 1e-6 < probabilities.min() and probabilities.max() < 1 - 1e-6


@pytest.mark.parametrize("case", list(LOSS_CASES))
def test_loss_evaluate_and_sgd_epoch_match_keras(case):
    spec = LOSS_CASES[case]
    km, dm = _twins(_dense_pairs(spec.units, spec.activation), seed=3)
    if spec.from_logits:
        k_loss = getattr(keras.losses, _KERAS_LOGIT_LOSSES[spec.loss])(from_logits=True)
        dl_loss = dl_losses.Loss(spec.loss, from_logits=True)
    else:
        k_loss = dl_loss = spec.loss
    metrics = []
    if spec.loss in _KERAS_LOGIT_LOSSES:
        multi_label = spec.loss == "binary_crossentropy" and spec.units > 1
        # named for several binary outputs, where the libraries resolve "accuracy"
        # differently (test_accuracy_kind_follows_the_output_shape_as_in_keras_3)
        metrics = ["binary_accuracy" if multi_label else "accuracy"]
    km.compile(keras.optimizers.SGD(spec.learning_rate), loss=k_loss, metrics=metrics)
    dm.compile(dl_optimizers.SGD(spec.learning_rate), loss=dl_loss, metrics=metrics)
    x, y = _features(), spec.targets()

    k_value = km.evaluate(x, y, batch_size=BATCH, verbose=0)
    dl_value = dm.evaluate(x, y, batch_size=BATCH, verbose=0)
    assert_close(f"{case} evaluate", dl_value, k_value, **spec.tolerance)

    k_history, dl_history = _fit_both(km, dm, x, y, epochs=1)
    assert_history_close(case, dl_history, k_history, spec.tolerance)
    assert_weights_close(case, dm, km, spec.tolerance)
    if spec.activation in ("softmax", "sigmoid"):
        _assert_away_from_clipping(dm, x)


@pytest.mark.parametrize(
    ("activation", "loss", "targets", "tolerance"),
    [
        ("softmax", "categorical_crossentropy", np.array([[0.0, 0.0, 1.0]]), FLOAT64),
        ("sigmoid", "binary_crossentropy", np.array([[0.0, 1.0, 1.0]]), KERAS_F32),
    ],
)
def test_saturated_crossentropy_follows_the_logits_gradient(activation, loss, targets, tolerance):
    """A deliberate difference: where a probability is clipped (within 1e-7 of 0 or 1),
    Keras's gradient on probabilities is 0, so a confidently wrong sample teaches
    nothing; dlcore uses the fused gradient ``(p - y) / N`` of softmax or sigmoid and
    cross-entropy, which is Keras's gradient with ``from_logits=True``."""
    x = np.array([[1.0, -1.0]])
    kernel = np.array([[20.0, -20.0, 0.0], [-20.0, 20.0, -20.0]])  # logits 40, -40, 20
    weights = [kernel, np.zeros(3)]
    keras_loss = getattr(keras.losses, _KERAS_LOGIT_LOSSES[loss])

    def keras_step(output_activation, loss_object):
        model = keras.Sequential(
            [keras.Input((2,)), keras.layers.Dense(3, activation=output_activation)]
        )
        model.set_weights(weights)
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss_object)
        model.fit(x, targets, batch_size=1, epochs=1, shuffle=False, verbose=0)
        return model.get_weights()[0]

    on_probabilities = keras_step(activation, keras_loss())
    on_logits = keras_step(None, keras_loss(from_logits=True))
    dm = Sequential([Dense(3, activation=activation)])
    dm.build((None, 2))
    dm.set_weights(weights)
    dm.compile(optimizer=dl_optimizers.SGD(0.1), loss=loss)
    dm.fit(x, targets, batch_size=1, epochs=1, shuffle=False, verbose=0)

    np.testing.assert_array_equal(on_probabilities, kernel)  # every probability is clipped
    assert_close(
        f"saturated {activation} = from_logits", dm.get_weights()[0], on_logits, **tolerance
    )
    assert np.abs(dm.get_weights()[0] - kernel).max() > 0.01


@pytest.mark.parametrize("from_logits", [False, True])
def test_accuracy_kind_follows_the_output_shape_as_in_keras_3(from_logits):
    """Several sigmoid outputs trained with binary cross-entropy (multi-label): Keras 3
    reports categorical accuracy (argmax of the outputs against argmax of the targets)."""
    km, dm = _twins(_dense_pairs(2, None if from_logits else "sigmoid"), seed=3)
    km.compile(loss=keras.losses.BinaryCrossentropy(from_logits=from_logits), metrics=["accuracy"])
    dm.compile(
        loss=dl_losses.Loss("binary_crossentropy", from_logits=from_logits), metrics=["accuracy"]
    )
    x, y = _features(), _binary(6, 2)
    k_loss, k_accuracy = km.evaluate(x, y, batch_size=BATCH, verbose=0)
    dl_loss, dl_accuracy = dm.evaluate(x, y, batch_size=BATCH, verbose=0)
    categorical = np.mean(dm.predict(x).argmax(1) == y.argmax(1))
    # what the expected failure rests on; pytest.fail is not an AssertionError, so a
    # change here shows as a failure rather than as the expected one
    if not np.isclose(dl_loss, k_loss, rtol=1e-5) or not np.isclose(k_accuracy, categorical):
        pytest.fail(f"Keras changed: loss {k_loss} (dlcore {dl_loss}), accuracy {k_accuracy}")
    assert dl_accuracy == pytest.approx(k_accuracy, abs=1e-12)


# ---------------------------------------------------------------------- 3. activations
@pytest.mark.parametrize("activation", names.ACTIVATIONS)
def test_activation_predictions_match_keras(activation):
    km, dm = _twins(
        [(keras.layers.Dense(6, activation=activation), Dense(6, activation=activation))], seed=4
    )
    x = 3.0 * _features(seed=5)  # both signs and several magnitudes: every branch is hit
    expected = km.predict(x, batch_size=BATCH, verbose=0)
    tolerance = KERAS_F32 if activation == "tanh" else FLOAT64
    assert_close(f"activation {activation}", dm.predict(x, batch_size=BATCH), expected, **tolerance)


# ---------------------------------------------------------------------- 4. fit semantics
def test_validation_split_holds_out_the_last_fraction_as_keras_does():
    x, y = _features(), _one_hot(_labels())
    km, dm = _classifier(seed=6)
    dl_history = dm.fit(
        x, y, epochs=1, batch_size=BATCH, shuffle=False, verbose=0, validation_split=0.3
    )
    split_at = 25  # floor(37 * 0.7): Keras trains on x[:25] and validates on x[25:]
    km.fit(x[:split_at], y[:split_at], epochs=1, batch_size=BATCH, shuffle=False, verbose=0)
    assert_weights_close("validation_split", dm, km, FLOAT64)
    k_val_loss, k_val_accuracy = km.evaluate(x[split_at:], y[split_at:], verbose=0)
    assert_close(
        "validation_split val_loss", dl_history.history["val_loss"], [k_val_loss], **FLOAT64
    )
    assert dl_history.history["val_accuracy"] == pytest.approx([k_val_accuracy], abs=1e-12)


@pytest.mark.parametrize("batch_size", [1, 6, 10, 36, 37, 64])
def test_partial_last_batch_matches_keras(batch_size):
    x, y = _features(), _one_hot(_labels())
    km, dm = _classifier(seed=6)
    k_history, dl_history = _fit_both(km, dm, x, y, epochs=2, batch_size=batch_size)
    assert_history_close(f"batch_size={batch_size}", dl_history, k_history, FLOAT64)
    assert_weights_close(f"batch_size={batch_size}", dm, km, FLOAT64)


def test_history_keys_and_evaluate_return_shape_match_keras():
    x, y = _features(), _one_hot(_labels())
    metrics = ("accuracy", "mae", "categorical_crossentropy")
    km, dm = _classifier(seed=6, metrics=metrics)
    k_history, dl_history = _fit_both(km, dm, x, y, epochs=2, validation_split=0.2)
    # The same keys; their order differs because Keras's JAX trainer returns its logs
    # from a jitted function, whose pytree flattening sorts dict keys.
    assert set(dl_history.history) == {*metrics, "loss"} | {f"val_{k}" for k in (*metrics, "loss")}
    assert_history_close("metrics", dl_history, k_history, KERAS_F32)

    k_loss = km.evaluate(x, y, batch_size=BATCH, verbose=0)
    dl_values = dm.evaluate(x, y, batch_size=BATCH, verbose=0)
    assert isinstance(dl_values, list) and isinstance(k_loss, list)
    assert len(dl_values) == len(k_loss) == 1 + len(metrics)
    assert_close("evaluate [loss, *metrics]", dl_values, k_loss, **KERAS_F32)

    k_dict = km.evaluate(x, y, batch_size=BATCH, verbose=0, return_dict=True)
    dl_dict = dm.evaluate(x, y, batch_size=BATCH, verbose=0, return_dict=True)
    assert set(dl_dict) == set(k_dict) == {"loss", *metrics}
    assert_close("evaluate dict", [dl_dict[k] for k in k_dict], list(k_dict.values()), **KERAS_F32)
    assert list(dl_dict.values()) == dl_values

    km_plain, dm_plain = _classifier(seed=6, metrics=())
    k_plain = km_plain.evaluate(x, y, batch_size=BATCH, verbose=0)
    dl_plain = dm_plain.evaluate(x, y, batch_size=BATCH, verbose=0)
    assert isinstance(dl_plain, float) and isinstance(k_plain, float)
    assert_close("evaluate without metrics", dl_plain, k_plain, **FLOAT64)


# With a high learning rate on noisy labels the validation loss turns up after a few
# epochs; each case stops at a different epoch or restores a different one.
EARLY_STOPPING = {
    "patience_restore": {"monitor": "val_loss", "patience": 2, "restore_best_weights": True},
    "patience_keep_last": {"monitor": "val_loss", "patience": 1},
    "min_delta": {
        "monitor": "val_loss",
        "patience": 2,
        "min_delta": 0.01,
        "restore_best_weights": True,
    },
    "baseline_never_reached": {
        "monitor": "val_loss",
        "patience": 3,
        "baseline": 0.5,
        "restore_best_weights": True,
    },
    "val_accuracy": {"monitor": "val_accuracy", "patience": 2, "restore_best_weights": True},
    "loss_min_mode": {"monitor": "loss", "mode": "min", "patience": 0, "min_delta": 0.05},
}


@pytest.mark.parametrize("case", list(EARLY_STOPPING))
def test_early_stopping_stops_and_restores_as_keras_does(case):
    options = EARLY_STOPPING[case]
    x, y = _features(seed=7), _one_hot(_labels(seed=8))
    km, dm = _classifier(seed=9, learning_rate=0.5)
    k_stopper = keras.callbacks.EarlyStopping(**options)
    dl_stopper = dl_callbacks.EarlyStopping(**options)
    fit = {
        "epochs": 40,
        "batch_size": BATCH,
        "shuffle": False,
        "verbose": 0,
        "validation_split": 0.3,
    }
    k_history = km.fit(x, y, callbacks=[k_stopper], **fit)
    dl_history = dm.fit(x, y, callbacks=[dl_stopper], **fit)

    assert len(k_history.epoch) < 40, "the scenario must stop early in Keras"
    assert dl_stopper.stopped_epoch == k_stopper.stopped_epoch
    assert dl_stopper.best_epoch == k_stopper.best_epoch
    assert dl_stopper.wait == k_stopper.wait
    assert_history_close(f"EarlyStopping {case}", dl_history, k_history, FLOAT64)
    assert_weights_close(f"EarlyStopping {case}", dm, km, FLOAT64)


REGULARIZERS = {
    "l1": (lambda: keras.regularizers.L1(0.01), lambda: dl_regularizers.l1(0.01)),
    "l2": (lambda: keras.regularizers.L2(0.02), lambda: dl_regularizers.l2(0.02)),
    "l1_l2": (
        lambda: keras.regularizers.L1L2(l1=0.01, l2=0.02),
        lambda: dl_regularizers.l1_l2(l1=0.01, l2=0.02),
    ),
}


@pytest.mark.parametrize("kind", list(REGULARIZERS))
def test_regularized_loss_and_training_match_keras(kind):
    make_keras, make_dlcore = REGULARIZERS[kind]
    # Non-zero biases: at exactly 0 the L1 gradient is a choice of subgradient. dlcore
    # takes sign(0) = 0, as Keras does on TensorFlow and PyTorch; JAX's abs has slope 1 at 0.
    pairs = [
        (
            keras.layers.Dense(
                7,
                activation="relu",
                bias_initializer=keras.initializers.Constant(0.1),
                kernel_regularizer=make_keras(),
                bias_regularizer=make_keras(),
            ),
            Dense(
                7,
                activation="relu",
                bias_initializer=dl_initializers.Constant(0.1),
                kernel_regularizer=make_dlcore(),
                bias_regularizer=make_dlcore(),
            ),
        ),
        (
            keras.layers.Dense(3, activation="softmax", kernel_regularizer=make_keras()),
            Dense(3, activation="softmax", kernel_regularizer=make_dlcore()),
        ),
    ]
    km, dm = _twins(pairs, seed=10)
    _compile_both(km, dm, "SGD", {"learning_rate": 0.1})
    x, y = _features(), _one_hot(_labels())

    k_value = km.evaluate(x, y, batch_size=BATCH, verbose=0)
    dl_value = dm.evaluate(x, y, batch_size=BATCH, verbose=0)
    plain = Sequential([Dense(7, "relu"), Dense(3, "softmax")])
    plain.build((None, FEATURES))
    plain.set_weights(dm.get_weights())
    plain.compile(loss="categorical_crossentropy")
    assert dl_value > plain.evaluate(x, y, batch_size=BATCH, verbose=0) + 1e-3  # the penalty
    assert_close(f"{kind} evaluate", dl_value, k_value, **FLOAT64)

    k_history, dl_history = _fit_both(km, dm, x, y, epochs=2, validation_split=0.25)
    assert_history_close(f"{kind} regularized", dl_history, k_history, FLOAT64)
    assert_weights_close(f"{kind} regularized", dm, km, FLOAT64)


def test_regularizer_names_match_keras():
    """``"l1"`` and ``"l2"`` mean a factor of 0.01 in both (Keras 3 has no ``"l1_l2"`` name)."""
    pairs = [
        (
            keras.layers.Dense(
                7, activation="relu", kernel_regularizer="l1", bias_regularizer="l2"
            ),
            Dense(7, activation="relu", kernel_regularizer="l1", bias_regularizer="l2"),
        ),
        (keras.layers.Dense(3, activation="softmax"), Dense(3, activation="softmax")),
    ]
    km, dm = _twins(pairs, seed=11)
    _compile_both(km, dm, "SGD", {"learning_rate": 0.1})
    x, y = _features(), _one_hot(_labels())
    k_history, dl_history = _fit_both(km, dm, x, y, epochs=2)
    assert_history_close("regularizer names", dl_history, k_history, FLOAT64)
    assert_weights_close("regularizer names", dm, km, FLOAT64)


def test_prelu_matches_keras():
    pairs = [
        (keras.layers.Dense(7), Dense(7)),
        (
            keras.layers.PReLU(alpha_initializer=keras.initializers.Constant(0.25)),
            PReLU(alpha_initializer=dl_initializers.Constant(0.25)),
        ),
        (keras.layers.Dense(3, activation="softmax"), Dense(3, activation="softmax")),
    ]
    km, dm = _twins(pairs, seed=12)
    np.testing.assert_array_equal(dm.get_weights()[2], np.full(7, 0.25))
    _compile_both(km, dm, "Adam", {"learning_rate": 0.05}, metrics=["accuracy"])
    x, y = _features(), _one_hot(_labels())
    assert_close("PReLU predict", dm.predict(x), km.predict(x, verbose=0), **FLOAT64)

    k_history, dl_history = _fit_both(km, dm, x, y, epochs=3, validation_split=0.25)
    assert_history_close("PReLU", dl_history, k_history, FLOAT64)
    assert_weights_close("PReLU", dm, km, FLOAT64)
    assert not np.allclose(dm.get_weights()[2], 0.25), "the slopes must have been trained"


def test_dropout_rate_zero_matches_keras():
    pairs = [
        (keras.layers.Dense(7, activation="relu"), Dense(7, activation="relu")),
        (keras.layers.Dropout(0.0), Dropout(0.0)),
        (keras.layers.Dense(3, activation="softmax"), Dense(3, activation="softmax")),
    ]
    km, dm = _twins(pairs, seed=13)
    _compile_both(km, dm, "SGD", {"learning_rate": 0.1})
    x, y = _features(), _one_hot(_labels())
    k_history, dl_history = _fit_both(km, dm, x, y, epochs=2)
    assert_history_close("Dropout(0.0)", dl_history, k_history, FLOAT64)
    assert_weights_close("Dropout(0.0)", dm, km, FLOAT64)


# ---------------------------------------------------------------------- 5. the demo's model
def test_demo_digits_model_matches_keras_in_float32():
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = np.eye(10, dtype=np.float32)[digits.target]
    _set_floatx("float32")
    pairs = [
        (keras.layers.Dense(50, activation="relu"), Dense(50, activation="relu")),
        (keras.layers.Dense(50, activation="relu"), Dense(50, activation="relu")),
        (keras.layers.Dense(10, activation="softmax"), Dense(10, activation="softmax")),
    ]
    km, dm = _twins(pairs, seed=14, features=64)
    for model in (km, dm):
        model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])

    k_history = km.fit(x, y, epochs=4, validation_split=0.3, shuffle=False, verbose=0)
    dl_history = dm.fit(x, y, epochs=4, validation_split=0.3, shuffle=False, verbose=0)

    assert_history_close("digits float32", dl_history, k_history, FLOAT32)
    # Adam's m / sqrt(v) amplifies float32 rounding for parameters whose gradients are near
    # 0: after 160 steps a few weights (of size 0.1) and probabilities differ by 2e-4.
    drift = {"rtol": 1e-3, "atol": 1e-3}
    assert_weights_close("digits float32", dm, km, drift)
    assert_close("digits float32 predict", dm.predict(x), km.predict(x, verbose=0), **drift)
    assert dl_history.history["val_accuracy"][-1] > 0.8
