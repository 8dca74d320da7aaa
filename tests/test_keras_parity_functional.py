"""dlcore's functional models against Keras 3 itself: the same graph, weights and data give
the same numbers.

The companion of ``tests/test_keras_parity.py`` (Sequential models), in the same setting:
float64 in both libraries, ``shuffle=False``, batches of 8 over 37 samples (the last batch
holds 5). Each model is built by one function from either library's layers and ``Model``,
as a Keras script runs on dlcore with only its imports changed; every layer is named, so
that weights drawn here (kernels normal with standard deviation ``1 / sqrt(fan_in)``,
biases normal with standard deviation 0.1) are copied layer by layer with ``set_weights``.
Histories (every key, every epoch), final weights, ``evaluate`` and ``predict`` are compared.

Precision: ``FLOAT64`` leaves room for rounding only. Keras computes ``ops.mean`` in
float32 (see ``tests/test_keras_parity.py``), so the regression head's loss and ``mae``,
and all that they train, are compared with ``MEAN_F32``: 1e-6 relative, about 40 times
what that rounding makes of three epochs here. ``pytest -s`` prints the largest
differences seen.

Runs only where Keras can train (``make parity``); elsewhere the module is skipped, except
under ``DLCORE_REQUIRE_KERAS=1`` (set by ``make parity``), where that is a failure.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, NoReturn

import numpy as np
import pytest

import dlcore
from dlcore import layers as dl_layers
from dlcore import models as dl_models
from dlcore import optimizers as dl_optimizers


def _keras_unavailable(reason: str) -> NoReturn:
    """Skip this module, or fail it where Keras is required (``make parity``, CI)."""
    if os.environ.get("DLCORE_REQUIRE_KERAS") == "1":
        pytest.fail(f"DLCORE_REQUIRE_KERAS=1, but {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


os.environ.setdefault("KERAS_BACKEND", "jax")
try:
    import keras
except Exception as error:  # absent, or a Keras whose backend cannot start
    _keras_unavailable(f"keras could not be imported: {error!r}")
if keras.backend.backend() != "jax":
    _keras_unavailable(f"these checks run on Keras's JAX backend, not {keras.backend.backend()}")

pytestmark = [
    pytest.mark.slow,
    # Keras's Variable.__array__ predates NumPy 2's copy keyword; get_weights triggers it.
    pytest.mark.filterwarnings(
        "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
    ),
]

FLOAT64 = {"rtol": 1e-9, "atol": 1e-12}
MEAN_F32 = {"rtol": 1e-6, "atol": 1e-9}

FEATURES = 5
SAMPLES = 37
BATCH = 8
EPOCHS = 3

# Largest relative difference per check, printed when the module ends (pytest -s).
OBSERVED: dict[str, float] = {}

# What the model-building functions take: a library's layers module and Model class.
Build = Callable[..., Any]


@pytest.fixture(scope="module", autouse=True)
def _x64_backend():
    """float64 arrays on the JAX backend (Keras's float64 needs them), restored afterwards."""
    import jax

    saved = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", saved)
    if OBSERVED:
        width = max(map(len, OBSERVED))
        print(f"\nlargest relative differences, dlcore vs Keras {keras.__version__}:")
        for key, value in OBSERVED.items():
            print(f"  {key:<{width}}  {value:.2e}")


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


# ---------------------------------------------------------------------- comparisons
def assert_close(what: str, actual, expected, *, rtol: float, atol: float) -> None:
    """``np.testing.assert_allclose`` that also records the largest relative difference."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = np.maximum(np.abs(expected), atol / rtol)
    OBSERVED[what] = max(OBSERVED.get(what, 0.0), float(np.max(np.abs(actual - expected) / scale)))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)


def assert_history_close(
    what: str, dl_history, k_history, tolerance: Callable[[str], dict[str, float]]
) -> None:
    """Every key of every epoch; the keys must be Keras's (their order is not: Keras's JAX
    trainer returns its logs from a jitted function, whose pytree flattening sorts them)."""
    assert set(dl_history.history) == set(k_history.history), (
        f"{what}: history keys {sorted(dl_history.history)} != Keras's {sorted(k_history.history)}"
    )
    assert dl_history.epoch == k_history.epoch
    for key, values in k_history.history.items():
        assert_close(f"{what} history {key}", dl_history.history[key], values, **tolerance(key))


def assert_layer_weights_close(
    what: str, dm, km, tolerance: dict[str, float], *, skip: tuple[str, ...] = ()
) -> None:
    for name in _weighted_layers(km):
        if name in skip:
            continue
        mine, theirs = dm.get_layer(name).get_weights(), km.get_layer(name).get_weights()
        assert [w.shape for w in mine] == [w.shape for w in theirs], f"{what}: layer {name}"
        for w_mine, w_theirs in zip(mine, theirs):
            assert_close(f"{what} weights", w_mine, w_theirs, **tolerance)


def assert_predictions_close(what: str, dm, km, x, tolerance: dict[str, float]) -> None:
    expected = km.predict(x, batch_size=BATCH, verbose=0)
    actual = dm.predict(x, batch_size=BATCH)
    if isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), (
            f"{what}: predict returned {type(actual).__name__}, Keras a list of "
            f"{len(expected)} arrays"
        )
        for i, (mine, theirs) in enumerate(zip(actual, expected)):
            assert_close(f"{what} predict[{i}]", mine, theirs, **tolerance)
    else:
        assert isinstance(actual, np.ndarray), f"{what}: predict returned {type(actual)}"
        assert_close(f"{what} predict", actual, expected, **tolerance)


def everywhere(tolerance: dict[str, float]) -> Callable[[str], dict[str, float]]:
    return lambda key: tolerance


# ---------------------------------------------------------------------- data and twins
def _features(seed: int = 0, features: int = FEATURES) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(SAMPLES, features))


def _one_hot(seed: int = 1, classes: int = 3) -> np.ndarray:
    return np.eye(classes)[np.random.default_rng(seed).integers(0, classes, SAMPLES)]


def _weighted_layers(model) -> list[str]:
    """Names of the layers that hold weights, in Keras's order."""
    return [layer.name for layer in model.layers if layer.weights]


def _twins(build: Build, *, seed: int, **options):
    """A Keras model and a dlcore model built by ``build`` (the same graph), with the
    same weights, copied layer by layer."""
    km = build(keras.layers, keras.Model, **options)
    dm = build(dl_layers, dl_models.Model, **options)
    rng = np.random.default_rng(seed)
    for name in _weighted_layers(km):
        k_layer, dl_layer = km.get_layer(name), dm.get_layer(name)
        theirs, mine = k_layer.get_weights(), dl_layer.get_weights()
        assert [w.shape for w in mine] == [w.shape for w in theirs], f"layer {name}"
        for w_mine, w_theirs in zip(mine, theirs):
            assert w_mine.dtype == w_theirs.dtype == np.float64, f"layer {name}"
        kernel, bias = theirs  # every weighted layer here is a Dense
        weights = [
            rng.normal(size=kernel.shape) / np.sqrt(kernel.shape[0]),
            0.1 * rng.normal(size=bias.shape),
        ]
        k_layer.set_weights(weights)
        dl_layer.set_weights([w.copy() for w in weights])
        for w_mine, w_theirs in zip(dl_layer.get_weights(), k_layer.get_weights()):
            np.testing.assert_array_equal(w_mine, w_theirs)
    return km, dm


def _compile_both(km, dm, optimizer: str, options: dict, **compile_args) -> None:
    """Compile both models with the optimizer class of that name in each library."""
    for model, module in ((km, keras.optimizers), (dm, dl_optimizers)):
        model.compile(optimizer=getattr(module, optimizer)(**options), **compile_args)


def _fit_both(km, dm, x, y, **kwargs):
    kwargs = {"batch_size": BATCH, "epochs": EPOCHS, "shuffle": False, "verbose": 0, **kwargs}
    return km.fit(x, y, **kwargs), dm.fit(x, y, **kwargs)


def _evaluate_both(km, dm, x, y, **kwargs):
    kwargs = {"batch_size": BATCH, "verbose": 0, **kwargs}
    return km.evaluate(x, y, **kwargs), dm.evaluate(x, y, **kwargs)


# ---------------------------------------------------------------------- the models
def residual(L, Model, merge: str = "Add"):
    """``out = softmax(W3 (x <merge> W2 relu(W1 x)))``: the input skips two layers."""
    x = L.Input((FEATURES,), name="x")
    h = L.Dense(FEATURES, activation="relu", name="hidden")(x)
    h2 = L.Dense(FEATURES, name="project")(h)
    merged = getattr(L, merge)(name="merge")([x, h2])
    out = L.Dense(3, activation="softmax", name="out")(merged)
    return Model(x, out)


def every_merge_of_three(L, Model):
    """Each merge that takes any number of inputs, on three; their concatenation feeds
    the output layer (Subtract, which takes exactly two, is in ``residual``)."""
    x = L.Input((FEATURES,), name="x")
    h = L.Dense(FEATURES, activation="relu", name="hidden")(x)
    h2 = L.Dense(FEATURES, name="project")(h)
    branches = [x, h, h2]
    merged = [
        getattr(L, kind)(name=kind.lower())(branches)
        for kind in ("Add", "Multiply", "Average", "Maximum", "Minimum")
    ]
    out = L.Dense(3, activation="softmax", name="out")(L.Concatenate(name="concat")(merged))
    return Model(x, out)


def two_inputs(L, Model):
    """A Dense branch on the first input, concatenated with the raw second input."""
    a = L.Input((FEATURES,), name="a")
    b = L.Input((3,), name="b")
    branch = L.Dense(4, activation="relu", name="branch")(a)
    joined = L.Concatenate(name="concat")([branch, b])
    hidden = L.Dense(6, activation="relu", name="hidden")(joined)
    out = L.Dense(3, activation="softmax", name="out")(hidden)
    return Model([a, b], out)


def two_outputs(L, Model):
    """A softmax classification head ``cls`` and a linear regression head ``reg`` on a
    shared hidden layer."""
    x = L.Input((FEATURES,), name="x")
    hidden = L.Dense(7, activation="relu", name="hidden")(x)
    cls = L.Dense(3, activation="softmax", name="cls")(hidden)
    reg = L.Dense(2, name="reg")(hidden)
    return Model([x], [cls, reg])


def with_frozen_layer(L, Model):
    x = L.Input((FEATURES,), name="x")
    h = L.Dense(7, activation="relu", name="hidden")(x)
    h2 = L.Dense(6, activation="relu", name="middle")(h)
    out = L.Dense(3, activation="softmax", name="out")(h2)
    return Model(x, out)


def shared_layer(L, Model):
    """One Dense called on two inputs (a siamese pair): its gradient sums both calls."""
    a = L.Input((FEATURES,), name="a")
    b = L.Input((FEATURES,), name="b")
    shared = L.Dense(4, activation="relu", name="shared")
    difference = L.Subtract(name="difference")([shared(a), shared(b)])
    out = L.Dense(3, activation="softmax", name="out")(difference)
    return Model([a, b], out)


def shared_layer_at_two_depths(L, Model):
    """A shared Dense called on an input and on another Dense's output."""
    a = L.Input((FEATURES,), name="a")
    b = L.Input((FEATURES,), name="b")
    before = L.Dense(FEATURES, name="before")(b)
    shared = L.Dense(4, activation="relu", name="shared")
    joined = L.Concatenate(name="concat")([shared(a), shared(before)])
    out = L.Dense(3, activation="softmax", name="out")(joined)
    return Model([a, b], out)


def output_feeding_a_layer(L, Model):
    """The first output also feeds the second head: its gradient sums its own loss's and
    the second loss's."""
    x = L.Input((FEATURES,), name="x")
    hidden = L.Dense(6, activation="relu", name="hidden")(x)
    first = L.Dense(3, activation="softmax", name="first")(hidden)
    joined = L.Concatenate(name="concat")([hidden, first])
    second = L.Dense(3, activation="softmax", name="second")(joined)
    return Model(x, [first, second])


# ---------------------------------------------------------------------- a. residual, merges
CLASSIFIER_KEYS = {"loss", "accuracy", "val_loss", "val_accuracy"}
ADAM = ("Adam", {"learning_rate": 0.01})


def test_residual_model_trains_as_in_keras():
    km, dm = _twins(residual, seed=20)
    _compile_both(km, dm, *ADAM, loss="categorical_crossentropy", metrics=["accuracy"])
    x, y = _features(), _one_hot()
    assert_predictions_close("residual before fit", dm, km, x, FLOAT64)

    k_history, dl_history = _fit_both(km, dm, x, y, validation_split=0.25)

    assert set(dl_history.history) == CLASSIFIER_KEYS
    assert_history_close("residual", dl_history, k_history, everywhere(FLOAT64))
    assert_layer_weights_close("residual", dm, km, FLOAT64)
    assert_predictions_close("residual", dm, km, x, FLOAT64)
    k_values, dl_values = _evaluate_both(km, dm, x, y)
    assert isinstance(dl_values, list) and len(dl_values) == len(k_values) == 2
    assert_close("residual evaluate", dl_values, k_values, **FLOAT64)


@pytest.mark.parametrize("merge", ["Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"])
def test_merge_of_two_trains_as_in_keras(merge):
    km, dm = _twins(residual, seed=21, merge=merge)
    _compile_both(
        km, dm, "SGD", {"learning_rate": 0.1, "momentum": 0.9}, loss="categorical_crossentropy"
    )
    x, y = _features(), _one_hot()
    assert_predictions_close(f"{merge} before fit", dm, km, x, FLOAT64)

    k_history, dl_history = _fit_both(km, dm, x, y)

    assert_history_close(merge, dl_history, k_history, everywhere(FLOAT64))
    assert_layer_weights_close(merge, dm, km, FLOAT64)
    assert_predictions_close(merge, dm, km, x, FLOAT64)


def test_every_merge_of_three_inputs_trains_as_in_keras():
    km, dm = _twins(every_merge_of_three, seed=22)
    _compile_both(km, dm, *ADAM, loss="categorical_crossentropy", metrics=["accuracy"])
    x, y = _features(), _one_hot()
    assert_predictions_close("merges of three before fit", dm, km, x, FLOAT64)

    k_history, dl_history = _fit_both(km, dm, x, y, validation_split=0.25)

    assert_history_close("merges of three", dl_history, k_history, everywhere(FLOAT64))
    assert_layer_weights_close("merges of three", dm, km, FLOAT64)
    assert_predictions_close("merges of three", dm, km, x, FLOAT64)


# ---------------------------------------------------------------------- b. two inputs
@pytest.mark.parametrize("given_as", ["list", "dict"])
def test_two_input_model_trains_as_in_keras(given_as):
    km, dm = _twins(two_inputs, seed=23)
    _compile_both(km, dm, *ADAM, loss="categorical_crossentropy", metrics=["accuracy"])
    xa, xb, y = _features(seed=2), _features(seed=3, features=3), _one_hot()
    x = [xa, xb] if given_as == "list" else {"a": xa, "b": xb}
    assert_predictions_close(f"two inputs ({given_as}) before fit", dm, km, x, FLOAT64)

    k_history, dl_history = _fit_both(km, dm, x, y, validation_split=0.25)

    assert set(dl_history.history) == CLASSIFIER_KEYS
    assert_history_close(f"two inputs ({given_as})", dl_history, k_history, everywhere(FLOAT64))
    assert_layer_weights_close(f"two inputs ({given_as})", dm, km, FLOAT64)
    assert_predictions_close(f"two inputs ({given_as})", dm, km, x, FLOAT64)
    k_values, dl_values = _evaluate_both(km, dm, x, y)
    assert_close(f"two inputs ({given_as}) evaluate", dl_values, k_values, **FLOAT64)


# ---------------------------------------------------------------------- c. two outputs
# The same compile arguments spelled as Keras accepts them: per output in a list (in the
# order of the model's outputs) or in a dict keyed by the output layers' names.
TWO_OUTPUT_SPELLINGS = {
    "lists": {
        "loss": ["categorical_crossentropy", "mse"],
        "loss_weights": [1.0, 0.5],
        "metrics": [["accuracy"], ["mae"]],
    },
    "dicts": {
        "loss": {"cls": "categorical_crossentropy", "reg": "mse"},
        "loss_weights": {"cls": 1.0, "reg": 0.5},
        "metrics": {"cls": "accuracy", "reg": ["mae"]},
    },
    "dict_loss_list_weights": {
        "loss": {"reg": "mse", "cls": "categorical_crossentropy"},
        "loss_weights": [1.0, 0.5],
        "metrics": {"reg": "mae", "cls": ["accuracy"]},
    },
}
TWO_OUTPUT_KEYS = ["loss", "cls_loss", "reg_loss", "cls_accuracy", "reg_mae"]


def _two_output_tolerance(key: str) -> dict[str, float]:
    """The classification head's own numbers are float64 in Keras; the rest pass through
    the regression head's float32 mean."""
    return FLOAT64 if key.removeprefix("val_").startswith("cls_") else MEAN_F32


def _targets(given_as: str, cls: np.ndarray, reg: np.ndarray):
    return [cls, reg] if given_as == "list" else {"cls": cls, "reg": reg}


@pytest.mark.parametrize("targets_as", ["list", "dict"])
@pytest.mark.parametrize("spelling", list(TWO_OUTPUT_SPELLINGS))
def test_two_output_model_with_loss_weights_trains_as_in_keras(spelling, targets_as):
    what = f"two outputs ({spelling}, targets as {targets_as})"
    km, dm = _twins(two_outputs, seed=24)
    _compile_both(km, dm, *ADAM, **TWO_OUTPUT_SPELLINGS[spelling])
    x, x_val = _features(seed=4), _features(seed=5)[:13]
    y = _targets(targets_as, _one_hot(seed=6), _features(seed=7)[:, :2])
    y_val = _targets(targets_as, _one_hot(seed=8)[:13], _features(seed=9)[:13, :2])

    k_history, dl_history = _fit_both(km, dm, x, y, validation_data=(x_val, y_val))

    assert set(dl_history.history) == {*TWO_OUTPUT_KEYS, *(f"val_{k}" for k in TWO_OUTPUT_KEYS)}
    assert_history_close(what, dl_history, k_history, _two_output_tolerance)
    assert_layer_weights_close(what, dm, km, MEAN_F32)
    assert_predictions_close(what, dm, km, x, MEAN_F32)

    k_values, dl_values = _evaluate_both(km, dm, x_val, y_val)
    assert isinstance(dl_values, list) and len(dl_values) == len(k_values) == 5
    for key, mine, theirs in zip(TWO_OUTPUT_KEYS, dl_values, k_values):
        assert_close(f"{what} evaluate {key}", mine, theirs, **_two_output_tolerance(key))
    k_dict, dl_dict = _evaluate_both(km, dm, x_val, y_val, return_dict=True)
    assert set(dl_dict) == set(k_dict) == set(TWO_OUTPUT_KEYS)
    for key, theirs in k_dict.items():
        assert_close(f"{what} evaluate {key}", dl_dict[key], theirs, **_two_output_tolerance(key))
    # the list is in Keras's order: the loss, each output's loss, then the metrics
    assert dl_values == [dl_dict[key] for key in TWO_OUTPUT_KEYS]


def test_two_output_loss_is_the_weighted_sum_of_the_unweighted_output_losses():
    """Keras reports each output's loss unweighted and ``loss`` as their weighted sum."""
    km, dm = _twins(two_outputs, seed=25)
    _compile_both(km, dm, *ADAM, **TWO_OUTPUT_SPELLINGS["dicts"])
    x, y = _features(seed=4), _targets("dict", _one_hot(seed=6), _features(seed=7)[:, :2])
    k_dict, dl_dict = _evaluate_both(km, dm, x, y, return_dict=True)
    for logs in (k_dict, dl_dict):
        assert logs["loss"] == pytest.approx(logs["cls_loss"] + 0.5 * logs["reg_loss"], rel=1e-12)
    for key, theirs in k_dict.items():
        assert_close(f"two outputs untrained {key}", dl_dict[key], theirs, **MEAN_F32)


def test_two_output_metrics_as_a_flat_list_are_one_per_output():
    """Keras 3 takes ``metrics`` as a flat list that matches the outputs' structure: one
    metric per output (a list of another length is an error)."""
    km, dm = _twins(two_outputs, seed=25)
    options = {"loss": ["categorical_crossentropy", "mse"], "metrics": ["accuracy", "mae"]}
    _compile_both(km, dm, *ADAM, **options)
    x, y = _features(seed=4), _targets("list", _one_hot(seed=6), _features(seed=7)[:, :2])
    k_dict, dl_dict = _evaluate_both(km, dm, x, y, return_dict=True)
    assert set(dl_dict) == set(k_dict) == set(TWO_OUTPUT_KEYS)
    k_history, dl_history = _fit_both(km, dm, x, y, epochs=1)
    assert_history_close("flat metrics list", dl_history, k_history, _two_output_tolerance)


def test_output_that_feeds_another_layer_trains_as_in_keras():
    km, dm = _twins(output_feeding_a_layer, seed=29)
    options = {
        "loss": ["categorical_crossentropy", "categorical_crossentropy"],
        "loss_weights": {"first": 0.3, "second": 1.0},
        "metrics": [["accuracy"], ["accuracy"]],
    }
    _compile_both(km, dm, *ADAM, **options)
    x, y = _features(), [_one_hot(seed=1), _one_hot(seed=2)]

    k_history, dl_history = _fit_both(km, dm, x, y, validation_split=0.25)

    keys = ["loss", "first_loss", "second_loss", "first_accuracy", "second_accuracy"]
    assert set(dl_history.history) == {*keys, *(f"val_{k}" for k in keys)}
    assert_history_close("output feeding a layer", dl_history, k_history, everywhere(FLOAT64))
    assert_layer_weights_close("output feeding a layer", dm, km, FLOAT64)
    assert_predictions_close("output feeding a layer", dm, km, x, FLOAT64)


# ---------------------------------------------------------------------- d. a frozen layer
@pytest.mark.parametrize("frozen", ["hidden", "middle", "out"])
def test_frozen_layer_keeps_its_weights_and_the_others_train_as_in_keras(frozen):
    """``layer.trainable = False`` before compile, on the first, a middle or the last
    layer: its weights stay bit-identical, the others train as in Keras."""
    km, dm = _twins(with_frozen_layer, seed=26)
    before = {name: km.get_layer(name).get_weights() for name in _weighted_layers(km)}
    for model in (km, dm):
        model.get_layer(frozen).trainable = False
    _compile_both(km, dm, *ADAM, loss="categorical_crossentropy", metrics=["accuracy"])
    x, y = _features(), _one_hot()

    k_history, dl_history = _fit_both(km, dm, x, y, validation_split=0.25)

    for model in (km, dm):
        for now, then in zip(model.get_layer(frozen).get_weights(), before[frozen]):
            np.testing.assert_array_equal(now, then, err_msg=f"{type(model)} {frozen}")
        for name in set(before) - {frozen}:
            assert not np.allclose(model.get_layer(name).get_weights()[0], before[name][0])
    what = f"frozen {frozen}"
    assert_history_close(what, dl_history, k_history, everywhere(FLOAT64))
    assert_layer_weights_close(what, dm, km, FLOAT64)
    assert_predictions_close(what, dm, km, x, FLOAT64)


# ---------------------------------------------------------------------- e. a shared layer
@pytest.mark.parametrize("build", [shared_layer, shared_layer_at_two_depths])
def test_shared_layer_trains_as_in_keras(build):
    what = build.__name__.replace("_", " ")
    km, dm = _twins(build, seed=27)
    assert sorted(w.size for w in dm.get_weights()) == sorted(w.size for w in km.get_weights())
    assert len(dm.get_weights()) == len(km.get_weights()), "a shared layer has one set of weights"
    _compile_both(km, dm, *ADAM, loss="categorical_crossentropy", metrics=["accuracy"])
    x = [_features(seed=10), _features(seed=11)]
    y = _one_hot(seed=12)

    k_history, dl_history = _fit_both(km, dm, x, y, validation_split=0.25)

    assert_history_close(what, dl_history, k_history, everywhere(FLOAT64))
    assert_layer_weights_close(what, dm, km, FLOAT64)
    assert_predictions_close(what, dm, km, x, FLOAT64)


# ---------------------------------------------------------------------- the model's weights
@pytest.mark.parametrize(
    "build",
    [
        residual,
        every_merge_of_three,
        two_inputs,
        two_outputs,
        output_feeding_a_layer,
        shared_layer,
        shared_layer_at_two_depths,
    ],
)
def test_layers_and_weights_are_in_keras_order(build):
    """``model.layers`` (input layers included) and ``model.get_weights()`` are in Keras's
    order, so that ``model.layers[i]`` and weight lists move between the two. Keras sorts
    the layers by depth, the longest path to an output (a shared layer at its deepest
    call), farthest first; at equal depth, in the order a depth-first walk from the
    outputs (through each layer's inputs in order) first reaches them."""
    km, dm = _twins(build, seed=28)
    mine, theirs = [layer.name for layer in dm.layers], [layer.name for layer in km.layers]
    assert mine == theirs, f"model.layers: dlcore {mine}, Keras {theirs}"
    mine, theirs = dm.get_weights(), km.get_weights()
    assert [w.shape for w in mine] == [w.shape for w in theirs]
    for w_mine, w_theirs in zip(mine, theirs):
        np.testing.assert_array_equal(w_mine, w_theirs)
