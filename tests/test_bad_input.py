"""Bad input (DESIGN.md, "Bad input"): every misuse raises an exception that names the
problem and the fix, before any work is done, and leaves the user's model, files and
settings as they were."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import dlcore
from dlcore import archive, backends, config
from dlcore.layers import Activation, Dense, Dropout, Input, PReLU
from dlcore.models import Sequential, load_model
from dlcore.optimizers import SGD, Adam
from dlcore.utils import to_categorical

N, FEATURES, CLASSES = 12, 4, 3


def data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Inputs ``(12, 4)`` float64 and integer labels ``(12,)`` in ``0..2``."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((N, FEATURES)), np.arange(N) % CLASSES


def make_model(
    loss: str = "categorical_crossentropy", units: int = CLASSES, activation: str = "softmax"
) -> Sequential:
    """A built, compiled two-layer model on the current engine."""
    dlcore.set_random_seed(7)
    model = Sequential(
        [Dense(5, activation="relu", input_shape=(FEATURES,)), Dense(units, activation=activation)]
    )
    model.compile(optimizer=Adam(learning_rate=0.01), loss=loss, metrics=["accuracy"])
    return model


class Snapshot:
    """What a failed call must not change: weights, optimizer, history and the global RNG."""

    def __init__(self, model: Sequential) -> None:
        self.model = model
        self.weights = model.get_weights()
        self.rng_state = config.rng().bit_generator.state
        self.history = model.history

    def assert_unchanged(self) -> None:
        model = self.model
        for before, after in zip(self.weights, model.get_weights(), strict=True):
            np.testing.assert_array_equal(after, before)
        assert model.optimizer.iterations == 0
        assert not model.optimizer.built
        assert model.history is self.history
        assert config.rng().bit_generator.state == self.rng_state


def fails_cleanly(model: Sequential, call, error: type[Exception], pattern: str) -> None:
    """``call()`` raises ``error`` matching ``pattern`` and leaves ``model`` untouched."""
    snapshot = Snapshot(model)
    with pytest.raises(error, match=pattern):
        call()
    snapshot.assert_unchanged()


# ---------------------------------------------------------------- sample counts and features
def test_x_and_y_sample_counts_must_agree(engine):
    model = make_model()
    x, labels = data()
    y = to_categorical(labels, CLASSES)
    pattern = re.escape(
        "x and y must hold the same number of samples; received x.shape=(12, 4) and y.shape=(11, 3)"
    )
    fails_cleanly(model, lambda: model.fit(x, y[:11], verbose=0), ValueError, pattern)
    fails_cleanly(model, lambda: model.evaluate(x, y[:11], verbose=0), ValueError, pattern)


def test_validation_sample_counts_must_agree(engine):
    model = make_model()
    x, labels = data()
    y = to_categorical(labels, CLASSES)
    pattern = re.escape(
        "x_val and y_val must hold the same number of samples; received "
        "x_val.shape=(5, 4) and y_val.shape=(4, 3)"
    )
    fails_cleanly(
        model,
        lambda: model.fit(x, y, validation_data=(x[:5], y[:4]), verbose=0),
        ValueError,
        pattern,
    )


@pytest.mark.parametrize("method", ["fit", "evaluate", "predict", "validation"])
def test_feature_count_must_match_input_shape(engine, method):
    model = make_model()
    x, labels = data()
    y = to_categorical(labels, CLASSES)
    calls = {
        "fit": lambda: model.fit(x[:, :3], y, verbose=0),
        "evaluate": lambda: model.evaluate(x[:, :3], y, verbose=0),
        "predict": lambda: model.predict(x[:, :3]),
        "validation": lambda: model.fit(x, y, validation_data=(x[:, :3], y), verbose=0),
    }
    name = "x_val" if method == "validation" else "x"
    pattern = re.escape(
        "the model expects inputs with 4 features (input_shape=(4,)), "
        f"received {name}.shape=(12, 3)"
    )
    fails_cleanly(model, calls[method], ValueError, pattern)


# ---------------------------------------------------------------- targets for the output layer
@pytest.mark.parametrize("bad_label", [3, 7, -1])
def test_sparse_labels_out_of_range(engine, bad_label):
    model = make_model(loss="sparse_categorical_crossentropy")
    x, labels = data()
    labels = labels.copy()
    labels[4] = bad_label
    pattern = re.escape(
        f"label {bad_label} in y is out of range for the output layer of 3 units "
        "(valid labels 0..2); give the last Dense layer as many units as there are classes"
    )
    fails_cleanly(model, lambda: model.fit(x, labels, verbose=0), ValueError, pattern)
    fails_cleanly(model, lambda: model.evaluate(x, labels, verbose=0), ValueError, pattern)


def test_sparse_labels_out_of_range_in_validation_data(engine):
    model = make_model(loss="sparse_categorical_crossentropy")
    x, labels = data()
    pattern = r"label 5 in y_val is out of range for the output layer of 3 units"
    fails_cleanly(
        model,
        lambda: model.fit(x, labels, validation_data=(x, labels + 3), verbose=0),
        ValueError,
        pattern,
    )


def test_sparse_labels_must_be_integers_and_one_dimensional(engine):
    model = make_model(loss="sparse_categorical_crossentropy")
    x, labels = data()
    fails_cleanly(
        model,
        lambda: model.fit(x, labels + 0.5, verbose=0),
        ValueError,
        r"sparse_categorical_crossentropy expects integer class labels, received non-integer "
        r"values such as ",
    )
    fails_cleanly(
        model,
        lambda: model.fit(x, to_categorical(labels, CLASSES), verbose=0),
        ValueError,
        r"expects integer class labels of shape \(samples,\), received y\.shape=\(12, 3\); "
        r"for one-hot targets use loss='categorical_crossentropy'",
    )


def test_integer_labels_for_categorical_crossentropy_suggest_the_fixes(engine):
    model = make_model()
    x, labels = data()
    pattern = (
        r"categorical_crossentropy expects one-hot targets of shape \(samples, 3\), received "
        r"integer labels y\.shape=\(12,\); convert them with "
        r"dlcore\.utils\.to_categorical\(y, 3\) or use loss='sparse_categorical_crossentropy'"
    )
    fails_cleanly(model, lambda: model.fit(x, labels, verbose=0), ValueError, pattern)


def test_float_typed_class_labels_for_categorical_crossentropy_suggest_the_fixes(engine):
    model = make_model()
    x, labels = data()
    with pytest.raises(ValueError, match=r"to_categorical.*sparse_categorical_crossentropy"):
        model.fit(x, labels.astype(np.float64), verbose=0)


@pytest.mark.parametrize("width", [2, 4])
def test_one_hot_width_must_equal_output_units(engine, width):
    model = make_model()
    x, labels = data()
    y = to_categorical(labels % width, width)
    pattern = re.escape(
        "the model's output layer has 3 units, so categorical_crossentropy expects y of shape "
        f"(samples, 3); received y.shape=(12, {width})"
    )
    fails_cleanly(model, lambda: model.fit(x, y, verbose=0), ValueError, pattern)
    fails_cleanly(model, lambda: model.evaluate(x, y, verbose=0), ValueError, pattern)


def test_regression_targets_must_match_output_units(engine):
    model = make_model(loss="mse", units=2, activation=None)
    x, _ = data()
    fails_cleanly(
        model,
        lambda: model.fit(x, np.zeros((N, 3)), verbose=0),
        ValueError,
        r"output layer has 2 units, so mean_squared_error expects y of shape \(samples, 2\); "
        r"received y\.shape=\(12, 3\)",
    )


@pytest.mark.parametrize("bad", [2.0, -1.0, 1.5])
def test_binary_crossentropy_targets_must_lie_in_0_1(engine, bad):
    model = make_model(loss="binary_crossentropy", units=1, activation="sigmoid")
    x, labels = data()
    y = (labels % 2).astype(np.float64)
    y[3] = bad
    pattern = r"binary_crossentropy expects targets in \[0, 1\], received values from"
    fails_cleanly(model, lambda: model.fit(x, y, verbose=0), ValueError, pattern)
    fails_cleanly(model, lambda: model.evaluate(x, y, verbose=0), ValueError, pattern)


def test_categorical_targets_must_be_non_negative(engine):
    model = make_model()
    x, labels = data()
    y = to_categorical(labels, CLASSES)
    y[0, 0] = -1.0
    fails_cleanly(
        model,
        lambda: model.fit(x, y, verbose=0),
        ValueError,
        r"categorical_crossentropy expects non-negative \(one-hot\) targets",
    )


@pytest.mark.parametrize(
    "loss,units,activation,targets,plain",
    [
        ("sparse_categorical_crossentropy", 3, "softmax", np.arange(N) + 0.5, "values such as 0.5"),
        ("binary_crossentropy", 1, "sigmoid", np.arange(N) % 3, "values from 0 to 2"),
        (
            "categorical_crossentropy",
            3,
            "softmax",
            -np.eye(3)[np.arange(N) % 3],
            "a minimum of -1.0",
        ),
    ],
)
def test_target_messages_show_plain_numbers(engine, loss, units, activation, targets, plain):
    model = make_model(loss=loss, units=units, activation=activation)
    x, _ = data()
    with pytest.raises(ValueError) as caught:
        model.fit(x, targets, verbose=0)
    message = str(caught.value)
    assert plain in message and "np." not in message, message


# ---------------------------------------------------------------- NaN, infinity, non-numbers
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["x", "y", "x_val", "y_val"])
def test_nan_and_infinite_values_are_rejected_in_fit(engine, value, where):
    model = make_model(loss="mse", units=2, activation=None)
    x, _ = data()
    arrays = {"x": x.copy(), "y": np.zeros((N, 2)), "x_val": x.copy(), "y_val": np.zeros((N, 2))}
    arrays[where][2, 1] = value
    pattern = re.escape(
        f"{where} contains 1 NaN or infinite value(s), the first at index (2, 1); "
        "remove or impute them before training"
    )
    fails_cleanly(
        model,
        lambda: model.fit(
            arrays["x"],
            arrays["y"],
            validation_data=(arrays["x_val"], arrays["y_val"]),
            verbose=0,
        ),
        ValueError,
        pattern,
    )


def test_nan_inputs_are_rejected_in_evaluate_and_predict(engine):
    model = make_model()
    x, labels = data()
    x[5, 0] = np.nan
    x[6, 3] = np.inf
    pattern = re.escape("x contains 2 NaN or infinite value(s), the first at index (5, 0)")
    fails_cleanly(
        model,
        lambda: model.evaluate(x, to_categorical(labels, CLASSES), verbose=0),
        ValueError,
        pattern,
    )
    fails_cleanly(model, lambda: model.predict(x), ValueError, pattern)


def test_inputs_overflowing_the_model_dtype_are_rejected(engine):
    model = make_model(loss="mse", units=2, activation=None)
    with pytest.raises(ValueError, match="float32"):
        model.predict(np.full((2, FEATURES), 1e39))


@pytest.mark.parametrize("where", ["x", "y"])
def test_strings_are_rejected(engine, where):
    model = make_model()
    x, labels = data()
    y = to_categorical(labels, CLASSES)
    args = {"x": x, "y": y}
    args[where] = args[where].astype(str)
    pattern = (
        rf"{where} must hold numbers; received an array of dtype <U\d+ \(e\.g\. \['.*'\]\)\. "
        rf"Convert it with np\.asarray\({where}, dtype='float32'\) after encoding any text"
    )
    fails_cleanly(model, lambda: model.fit(args["x"], args["y"], verbose=0), TypeError, pattern)


def test_text_class_labels_are_rejected(engine):
    model = make_model(loss="sparse_categorical_crossentropy")
    x, _ = data()
    names = np.array(["cat", "dog", "bird"] * 4)
    fails_cleanly(
        model,
        lambda: model.fit(x, names, verbose=0),
        TypeError,
        r"y must hold numbers; received an array of dtype <U4 \(e\.g\. \['cat'\]\)",
    )


def test_ragged_lists_are_rejected(engine):
    model = make_model(loss="mse", units=2, activation=None)
    ragged_x = [[0.0, 1.0, 2.0, 3.0], [0.0, 1.0]]
    pattern = (
        r"x could not be converted to a numeric array \(.*inhomogeneous.*\); "
        r"pass a rectangular NumPy array of numbers"
    )
    fails_cleanly(
        model, lambda: model.fit(ragged_x, np.zeros((2, 2)), verbose=0), ValueError, pattern
    )
    fails_cleanly(model, lambda: model.predict(ragged_x), ValueError, pattern)
    ragged_y = [[0.0, 1.0], [0.0]]
    fails_cleanly(
        model,
        lambda: model.fit(np.zeros((2, FEATURES)), ragged_y, verbose=0),
        ValueError,
        r"y could not be converted to a numeric array",
    )


def test_missing_inputs_and_targets_are_named(engine):
    model = make_model()
    x, labels = data()
    fails_cleanly(
        model,
        lambda: model.fit(None, labels, verbose=0),
        ValueError,
        r"x is None; pass a NumPy array \(or nested lists\) of numbers",
    )
    fails_cleanly(
        model,
        lambda: model.fit(x, verbose=0),
        ValueError,
        r"fit\(\) needs targets y for the loss; received y=None",
    )
    fails_cleanly(
        model,
        lambda: model.evaluate(x, verbose=0),
        ValueError,
        r"evaluate\(\) needs targets y for the loss; received y=None",
    )


@pytest.mark.parametrize(
    "x_shape,y_shape,name,shown",
    [
        ((0, FEATURES), (0, CLASSES), "x", (0, FEATURES)),
        ((N, 0), (N, CLASSES), "x", (N, 0)),
        ((N, FEATURES), (0, CLASSES), "y", (0, CLASSES)),
    ],
)
def test_empty_arrays_are_rejected(engine, x_shape, y_shape, name, shown):
    model = make_model()
    x, y = np.zeros(x_shape), np.zeros(y_shape)
    pattern = re.escape(f"{name} is empty (shape {shown}); pass at least one sample")
    fails_cleanly(model, lambda: model.fit(x, y, verbose=0), ValueError, pattern)
    fails_cleanly(model, lambda: model.evaluate(x, y, verbose=0), ValueError, pattern)
    if name == "x":
        fails_cleanly(model, lambda: model.predict(x), ValueError, pattern)


# ---------------------------------------------------------------- unknown names
def _listing(kind: str, bad: str, valid: list[str]) -> str:
    """Pattern: ``unknown <kind> '<bad>'; available: ...`` naming every one of ``valid``."""
    lookaheads = "".join(rf"(?=.*\b{re.escape(name)}\b)" for name in valid)
    return rf"^unknown {kind} '{re.escape(bad)}'; available: {lookaheads}"


def test_unknown_activation_lists_valid_ones():
    valid = ["relu", "sigmoid", "softmax", "tanh", "linear", "elu", "selu", "swish"]
    with pytest.raises(ValueError, match=_listing("activation", "relux", valid)):
        Dense(3, activation="relux")
    with pytest.raises(ValueError, match=_listing("activation", "sofmax", valid)):
        Activation("sofmax")
    with pytest.raises(TypeError, match=r"activation must be a name such as 'relu' or None"):
        Dense(3, activation=5)


def test_unknown_loss_lists_valid_ones(engine):
    model = Sequential([Dense(2, input_shape=(FEATURES,))])
    valid = [
        "categorical_crossentropy",
        "binary_crossentropy",
        "mse",
        "mean_squared_error",
        "hinge",
        "sparse_categorical_crossentropy",
    ]
    with pytest.raises(ValueError, match=_listing("loss", "crossentropy", valid)):
        model.compile(optimizer="adam", loss="crossentropy")
    assert not model.compiled
    with pytest.raises(ValueError, match=r"compile\(\) needs a loss, e\.g\. loss="):
        model.compile(optimizer="adam")
    unregistered = r"loss function .*<lambda> is not registered: .*dlcore\.losses\.register"
    with pytest.raises(TypeError, match=unregistered + r".*or use a built-in loss"):
        model.compile(optimizer="adam", loss=lambda y_true, y_pred: 0.0)
    assert not model.compiled


def test_unknown_optimizer_lists_valid_ones(engine):
    model = Sequential([Dense(2, input_shape=(FEATURES,))])
    valid = ["adadelta", "adagrad", "adam", "adamax", "adamw", "ftrl", "lion", "nadam"]
    valid += ["rmsprop", "sgd"]
    with pytest.raises(ValueError, match=_listing("optimizer", "adamq", valid)):
        model.compile(optimizer="adamq", loss="mse")
    with pytest.raises(TypeError, match=r"expected an optimizer name \(e\.g\. 'adam'\)"):
        model.compile(optimizer=5, loss="mse")
    assert not model.compiled


def test_unknown_metric_lists_valid_ones(engine):
    model = Sequential([Dense(2, input_shape=(FEATURES,))])
    valid = ["accuracy", "acc", "categorical_accuracy", "binary_accuracy", "mae", "mse"]
    with pytest.raises(ValueError, match=_listing("metric", "acuracy", valid)):
        model.compile(optimizer="adam", loss="mse", metrics=["acuracy"])
    with pytest.raises(TypeError, match=r"metrics are given by name"):
        model.compile(optimizer="adam", loss="mse", metrics=[len])


def test_mismatched_accuracy_metric_names_the_fix(engine):
    pattern = (
        r"metric 'sparse_categorical_accuracy' needs integer labels but the loss "
        r"'categorical_crossentropy' takes one-hot or binary targets; use metrics=\['accuracy'\]"
    )
    settings = {
        "optimizer": "adam",
        "loss": "categorical_crossentropy",
        "metrics": ["sparse_categorical_accuracy"],
    }
    built = Sequential([Dense(CLASSES, activation="softmax", input_shape=(FEATURES,))])
    built.build()
    with pytest.raises(ValueError, match=pattern):
        built.compile(**settings)
    # Before the model is built its output width is unknown, so fit reports it instead.
    model = Sequential([Dense(CLASSES, activation="softmax")])
    model.compile(**settings)
    x, labels = data()
    with pytest.raises(ValueError, match=pattern):
        model.fit(x, to_categorical(labels, CLASSES), verbose=0)
    assert model.optimizer.iterations == 0 and not model.optimizer.built


def test_unknown_initializer_lists_valid_ones():
    valid = ["zeros", "ones", "glorot_uniform", "he_normal", "orthogonal", "random_normal"]
    with pytest.raises(ValueError, match=_listing("initializer", "glorot", valid)):
        Dense(3, kernel_initializer="glorot")
    with pytest.raises(ValueError, match=_listing("initializer", "zero_s", valid)):
        Dense(3, bias_initializer="zero_s")
    with pytest.raises(ValueError, match=_listing("initializer", "uniformly", valid)):
        PReLU(alpha_initializer="uniformly")


def test_unknown_regularizer_lists_valid_ones():
    valid = ["l1", "l2", "l1_l2"]
    with pytest.raises(ValueError, match=_listing("regularizer", "l3", valid)):
        Dense(3, kernel_regularizer="l3")
    with pytest.raises(ValueError, match=_listing("regularizer", "ridge", valid)):
        Dense(3, bias_regularizer="ridge")
    with pytest.raises(ValueError, match=r"custom callables are not supported"):
        Dense(3, kernel_regularizer=lambda w: 0.0)


def test_unknown_engine_lists_valid_ones():
    before = config._state["engine"]
    pattern = re.escape(
        "unknown engine 'tensorflow'; available: numpy, cupy, numba, array_api_strict"
    )
    with pytest.raises(ValueError, match=pattern):
        dlcore.set_backend("tensorflow")
    with pytest.raises(ValueError, match=pattern):
        with dlcore.use_backend("tensorflow"):
            pass  # pragma: no cover - the context manager must refuse to enter
    assert config._state["engine"] is before
    with pytest.raises(TypeError, match=r"engine name must be a string, received 3"):
        dlcore.set_backend(3)


def test_unknown_engine_in_the_environment(monkeypatch):
    monkeypatch.setenv("DLCORE_BACKEND", "tensorflow")
    config._state["engine"] = None
    with pytest.raises(
        ValueError,
        match=re.escape(
            "DLCORE_BACKEND='tensorflow': unknown engine 'tensorflow'; available: "
            "numpy, cupy, numba, array_api_strict"
        ),
    ):
        dlcore.get_backend()
    assert config._state["engine"] is None


# ---------------------------------------------------------------- compile first
@pytest.mark.parametrize("method", ["fit", "evaluate"])
def test_fit_and_evaluate_need_compile(engine, method):
    model = Sequential([Dense(5, activation="relu"), Dense(CLASSES, activation="softmax")])
    x, labels = data()
    y = to_categorical(labels, CLASSES)
    pattern = (
        rf"you must compile the model before {method}\(\), e\.g\. "
        r"model\.compile\(optimizer='adam', loss='categorical_crossentropy', "
        r"metrics=\['accuracy'\]\)"
    )
    with pytest.raises(RuntimeError, match=pattern):
        getattr(model, method)(x, y, verbose=0)
    assert not model.built, "the check must come before the model builds its weights"


def test_predict_needs_no_compile(engine):
    dlcore.set_random_seed(3)
    model = Sequential([Dense(2, input_shape=(FEATURES,))])
    x, _ = data()
    kernel, bias = model.get_weights()
    expected = x.astype(np.float32) @ kernel + bias
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-6, atol=1e-6)


def test_failed_compile_keeps_an_uncompiled_model_uncompiled(engine):
    model = Sequential([Dense(2, input_shape=(FEATURES,))])
    with pytest.raises(ValueError, match="unknown loss"):
        model.compile(optimizer="adam", loss="nope")
    assert not model.compiled
    with pytest.raises(RuntimeError, match="you must compile the model before fit"):
        model.fit(np.zeros((2, FEATURES)), np.zeros((2, 2)), verbose=0)


@pytest.mark.parametrize(
    "bad",
    [
        {"loss": "nope"},
        {"loss": "categorical_crossentropy", "metrics": ["acuracy"]},
        {"loss": "categorical_crossentropy", "metrics": ["sparse_categorical_accuracy"]},
    ],
)
def test_failed_compile_keeps_the_previous_settings(engine, bad):
    model = make_model()
    x, labels = data()
    model.fit(x, to_categorical(labels, CLASSES), epochs=1, verbose=0)
    optimizer, loss, metrics = model.optimizer, model.loss, list(model.metric_names)
    with pytest.raises(ValueError):
        model.compile(optimizer="sgd", **bad)
    assert model.optimizer is optimizer and optimizer.iterations == 1
    assert model.loss is loss
    assert model.metric_names == metrics


# ---------------------------------------------------------------- engines that cannot run here
def _cupy_runs_here() -> bool:
    return backends.engine_class("cupy").availability()[0]


needs_no_cupy = pytest.mark.skipif(_cupy_runs_here(), reason="CuPy and a GPU are present")
INSTALL_HINT = r"CuPy is not installed: pip install 'dlcore\[cuda12\]'"


@needs_no_cupy
def test_engine_not_installed_says_what_to_install():
    before = config._state["engine"]
    with pytest.raises(RuntimeError, match=r"engine 'cupy' cannot run here: " + INSTALL_HINT):
        dlcore.set_backend("cupy")
    with pytest.raises(RuntimeError, match=INSTALL_HINT):
        with dlcore.use_backend("cupy"):
            pass  # pragma: no cover - the context manager must refuse to enter
    assert config._state["engine"] is before


@needs_no_cupy
def test_engine_not_installed_from_the_environment(monkeypatch):
    monkeypatch.setenv("DLCORE_BACKEND", "cupy")
    config._state["engine"] = None
    pattern = r"DLCORE_BACKEND='cupy': engine 'cupy' cannot run here: " + INSTALL_HINT
    with pytest.raises(RuntimeError, match=pattern):
        dlcore.get_backend()
    model = Sequential([Dense(2, input_shape=(FEATURES,))])
    model.compile(optimizer="adam", loss="mse")
    with pytest.raises(RuntimeError, match=pattern):
        model.fit(np.zeros((3, FEATURES)), np.zeros((3, 2)), verbose=0)
    assert model.engine is None and model.optimizer.iterations == 0


@needs_no_cupy
def test_engine_not_installed_in_a_fresh_process():
    script = (
        "import sys\n"
        "import dlcore\n"
        "from dlcore.models import Sequential\n"
        "from dlcore.layers import Dense\n"
        "assert 'cupy' not in sys.modules, 'importing dlcore must not import cupy'\n"
        "model = Sequential([Dense(2, input_shape=(3,))])\n"
        "try:\n"
        "    model.predict([[1.0, 2.0, 3.0]])\n"
        "except RuntimeError as error:\n"
        "    print(error)\n"
        "    sys.exit(3)\n"
    )
    env = {**os.environ, "DLCORE_BACKEND": "cupy"}
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 3, result.stderr
    assert re.search(r"DLCORE_BACKEND='cupy': .*" + INSTALL_HINT, result.stdout), result.stdout


class _FakeRuntime:
    def __init__(self, count: int | None) -> None:
        self.count = count

    def getDeviceCount(self) -> int:  # noqa: N802 - CuPy's spelling
        if self.count is None:
            raise RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")
        return self.count


class _FakeCupy:
    """Stands in for an installed CuPy on a machine without a usable GPU."""

    def __init__(self, count: int | None) -> None:
        self.cuda = type("cuda", (), {"runtime": _FakeRuntime(count)})()


@needs_no_cupy
@pytest.mark.parametrize(
    "count,pattern",
    [
        (None, r"CuPy is installed but found no usable CUDA GPU \(cudaErrorNoDevice"),
        (0, r"CuPy is installed but this machine has no CUDA GPU"),
    ],
)
def test_engine_without_a_gpu_says_so(monkeypatch, count, pattern):
    monkeypatch.setitem(sys.modules, "cupy", _FakeCupy(count))
    with pytest.raises(RuntimeError, match=r"engine 'cupy' cannot run here: " + pattern):
        dlcore.set_backend("cupy")


# ---------------------------------------------------------------- hyperparameters
@pytest.mark.parametrize("units", [0, -1, 2.5, True, "3", None])
def test_dense_units_must_be_a_positive_integer(units):
    with pytest.raises(
        ValueError,
        match=re.escape(f"Dense expected a positive integer units, received units={units!r}"),
    ):
        Dense(units)


@pytest.mark.parametrize("rate", [1.0, 1.5, -0.1, "0.5"])
def test_dropout_rate_must_lie_in_0_1(rate):
    with pytest.raises(
        ValueError, match=re.escape(f"Dropout expected a rate in [0, 1), received rate={rate!r}")
    ):
        Dropout(rate)


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        ({"epochs": -1}, r"epochs must be a non-negative integer, received epochs=-1"),
        ({"epochs": 2.5}, r"epochs must be a non-negative integer, received epochs=2\.5"),
        ({"nb_epoch": -2}, r"epochs must be a non-negative integer, received epochs=-2"),
        ({"initial_epoch": -1}, r"initial_epoch must be a non-negative integer"),
        ({"batch_size": 0}, r"batch_size must be a positive integer, received batch_size=0"),
        ({"batch_size": -4}, r"batch_size must be a positive integer, received batch_size=-4"),
        ({"batch_size": 8.0}, r"batch_size must be a positive integer, received batch_size=8\.0"),
        (
            {"validation_split": 1.0},
            r"validation_split must be a fraction in \[0, 1\), "
            r"received 1\.0",
        ),
        ({"validation_split": -0.1}, r"validation_split must be a fraction in \[0, 1\)"),
        ({"validation_split": "0.2"}, r"validation_split must be a fraction in \[0, 1\)"),
        (
            {"validation_split": 0.95},
            r"validation_split=0\.95 of 12 samples leaves 0 for "
            r"training and 12 for validation; both need at least one",
        ),
        ({"validation_split": 1e-17}, r"leaves 12 for training and 0 for validation"),
        ({"verbose": 3}, r"verbose must be 'auto', 0, 1 or 2; received 3"),
        ({"verbose": -1}, r"verbose must be 'auto', 0, 1 or 2; received -1"),
        ({"verbose": "loud"}, r"verbose must be 'auto', 0, 1 or 2; received 'loud'"),
    ],
)
def test_invalid_fit_hyperparameters(engine, kwargs, pattern):
    model = make_model()
    x, labels = data()
    kwargs = {"verbose": 0, **kwargs}
    fails_cleanly(
        model,
        lambda: model.fit(x, to_categorical(labels, CLASSES), **kwargs),
        ValueError,
        pattern,
    )


def test_invalid_evaluate_and_predict_hyperparameters(engine):
    model = make_model()
    x, labels = data()
    y = to_categorical(labels, CLASSES)
    fails_cleanly(
        model,
        lambda: model.evaluate(x, y, batch_size=0, verbose=0),
        ValueError,
        r"batch_size must be a positive integer, received batch_size=0",
    )
    fails_cleanly(
        model,
        lambda: model.evaluate(x, y, verbose=7),
        ValueError,
        r"verbose must be 'auto', 0, 1 or 2; received 7",
    )
    fails_cleanly(
        model,
        lambda: model.predict(x, batch_size=-1),
        ValueError,
        r"batch_size must be a positive integer, received batch_size=-1",
    )


@pytest.mark.parametrize(
    "make,pattern",
    [
        (
            lambda: Adam(learning_rate=-0.1),
            r"Adam expected learning_rate to be a positive number, received learning_rate=-0\.1",
        ),
        (lambda: Adam(beta_1=1.0), r"Adam expected beta_1 to be a number in \[0, 1\)"),
        (lambda: SGD(momentum=1.5), r"SGD expected momentum to be a number in \[0, 1\]"),
        (lambda: SGD(nesterov="yes"), r"SGD expected nesterov to be True or False"),
    ],
)
def test_invalid_optimizer_hyperparameters(make, pattern):
    with pytest.raises(ValueError, match=pattern):
        make()


# ---------------------------------------------------------------- unsupported keyword arguments
def test_unsupported_fit_arguments_are_named(engine):
    model = make_model()
    x, labels = data()
    pattern = (
        r"fit\(\) got unsupported argument\(s\) workers, max_queue_size; supported: x, y, "
        r"batch_size, epochs, verbose, callbacks, validation_split, validation_data, shuffle, "
        r"class_weight, sample_weight, initial_epoch, steps_per_epoch, validation_steps, "
        r"validation_batch_size, validation_freq"
    )
    fails_cleanly(
        model,
        lambda: model.fit(
            x,
            to_categorical(labels, CLASSES),
            verbose=0,
            workers=4,
            max_queue_size=10,
        ),
        TypeError,
        pattern,
    )


def test_unsupported_compile_arguments_are_named(engine):
    model = Sequential([Dense(2, input_shape=(FEATURES,))])
    with pytest.raises(
        TypeError,
        match=r"compile\(\) got unsupported argument\(s\) sample_weight_mode; "
        r"dlcore supports optimizer, loss, metrics, weighted_metrics and loss_weights",
    ):
        model.compile(optimizer="adam", loss="mse", weighted_metrics=[], sample_weight_mode=None)
    assert not model.compiled and model.optimizer is None


def test_unsupported_evaluate_predict_layer_and_optimizer_arguments_are_named(engine):
    model = make_model()
    x, labels = data()
    y = to_categorical(labels, CLASSES)
    fails_cleanly(
        model,
        lambda: model.evaluate(x, y, verbose=0, workers=2),
        TypeError,
        r"evaluate\(\) got unsupported argument\(s\) workers",
    )
    fails_cleanly(
        model,
        lambda: model.predict(x, workers=2),
        TypeError,
        r"predict\(\) got unsupported argument\(s\) workers",
    )
    with pytest.raises(TypeError, match=r"Dense got unexpected keyword argument\(s\): unit"):
        Dense(3, unit=4)
    with pytest.raises(
        TypeError,
        match=r"Adam got unexpected keyword argument\(s\) 'decay'; valid arguments: "
        r"learning_rate, beta_1, beta_2, epsilon, amsgrad",
    ):
        Adam(decay=0.01)


# ---------------------------------------------------------------- corrupt or foreign model files
@pytest.fixture
def saved_model_bytes(tmp_path) -> bytes:
    model = make_model()
    path = tmp_path / "good.keras"
    model.save(path)
    return path.read_bytes()


def _assert_load_fails(path, error: type[Exception], pattern: str) -> None:
    """load_model raises, and leaves floatx and the current engine as they were."""
    floatx, engine = dlcore.floatx(), config._state["engine"]
    with pytest.raises(error, match=pattern):
        load_model(path)
    assert dlcore.floatx() == floatx
    assert config._state["engine"] is engine


@pytest.mark.parametrize("fraction", [0.0005, 0.1, 0.5, 0.9, 0.999])
def test_load_model_rejects_a_truncated_file(tmp_path, saved_model_bytes, fraction):
    path = tmp_path / "truncated.keras"
    path.write_bytes(saved_model_bytes[: max(1, int(len(saved_model_bytes) * fraction))])
    _assert_load_fails(path, ValueError, r"is not a dlcore model file or is corrupted")


def test_load_model_rejects_random_bytes(tmp_path):
    path = tmp_path / "noise.h5"
    path.write_bytes(np.random.default_rng(5).bytes(4096))
    _assert_load_fails(
        path, ValueError, r"is not a dlcore model file or is corrupted: it is not a zip archive"
    )


def test_load_model_rejects_an_empty_file(tmp_path):
    path = tmp_path / "empty.keras"
    path.write_bytes(b"")
    _assert_load_fails(path, ValueError, r"is corrupted: the file is empty")


def test_load_model_recognises_a_damaged_keras_hdf5_file(tmp_path):
    pytest.importorskip("h5py")
    path = tmp_path / "keras_model.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(2048))
    _assert_load_fails(path, ValueError, r"keras_model\.h5 is not a Keras model dlcore can read")


def test_load_model_recognises_a_damaged_keras_v3_file(tmp_path):
    pytest.importorskip("h5py")
    path = tmp_path / "keras_model.keras"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("config.json", json.dumps({"class_name": "Sequential"}))
        zf.writestr("metadata.json", json.dumps({"keras_version": "3.0.0"}))
        zf.writestr("model.weights.h5", b"\x89HDF\r\n\x1a\n")
    _assert_load_fails(path, ValueError, r"keras_model\.keras is not a Keras model dlcore can read")


def test_load_model_rejects_a_foreign_npz(tmp_path):
    path = tmp_path / "arrays.npz"
    np.savez(path, params=np.zeros(10))
    _assert_load_fails(path, ValueError, r"zip archive without the dlcore format marker")


def test_load_model_rejects_a_weights_only_file(tmp_path, engine):
    model = make_model()
    path = tmp_path / "weights.h5"
    model.save_weights(path)
    _assert_load_fails(
        path,
        ValueError,
        r"is a dlcore file but not a saved model \(format 'dlcore\.weights'\); "
        r"load weights with model\.load_weights",
    )


def test_load_model_missing_file_and_directory(tmp_path):
    _assert_load_fails(
        tmp_path / "nope.keras",
        FileNotFoundError,
        r"no model file at .*nope\.keras.*: the file does not exist",
    )
    _assert_load_fails(tmp_path, IsADirectoryError, r"it is a directory, not a model file")


def _rewrite(path, mutate=None, arrays=None) -> None:
    """Rewrite the valid archive at ``path`` with its config changed by ``mutate``."""
    file_config, file_arrays = archive.read_archive(path)
    if mutate is not None:
        mutate(file_config)
    archive.write_archive(path, file_config, file_arrays if arrays is None else arrays(file_arrays))


def _set(keys, value):
    def mutate(cfg):
        target = cfg
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return mutate


_NOT_VALID = r"is not a valid dlcore model file"


@pytest.mark.parametrize(
    "mutate,arrays,pattern",
    [
        pytest.param(lambda c: c.pop("model"), None, _NOT_VALID, id="no-model"),
        pytest.param(_set(["model"], 5), None, _NOT_VALID, id="model-not-a-dict"),
        pytest.param(
            _set(["model", "layers", 0, "config", "evil"], 1),
            None,
            _NOT_VALID + r".*unexpected keyword argument\(s\): evil",
            id="extra-kwarg",
        ),
        pytest.param(
            _set(["model", "layers", 0, "class_name"], "Conv2D"),
            None,
            r"unknown layer type 'Conv2D'; pass its class in custom_objects",
            id="unknown-layer",
        ),
        pytest.param(_set(["compile"], "adam"), None, _NOT_VALID, id="compile-not-a-dict"),
        pytest.param(
            None,
            lambda a: {k: v for k, v in a.items() if k != "params"},
            _NOT_VALID + r".*'params'",
            id="no-params",
        ),
        pytest.param(
            None,
            lambda a: {**a, "params": a["params"][:-1]},
            r"holds 42 parameters but its architecture needs 43",
            id="params-short",
        ),
        pytest.param(
            _set(["model", "layers", 0], 5),
            None,
            _NOT_VALID,
            id="layer-not-a-dict",
        ),
        pytest.param(
            _set(["model", "layers", 0, "config"], "x"),
            None,
            _NOT_VALID,
            id="layer-config-not-a-dict",
        ),
        pytest.param(
            _set(["model", "layers", 0, "config", "units"], -1),
            None,
            _NOT_VALID,
            id="negative-units",
        ),
        pytest.param(
            _set(["dtype"], "float16"),
            None,
            _NOT_VALID,
            id="unknown-dtype",
        ),
        pytest.param(
            _set(["model", "input_features"], None),
            None,
            _NOT_VALID,
            id="no-input-features",
        ),
        pytest.param(
            None,
            lambda a: {**a, "params": a["params"][None, :]},
            r"params.*shape \(1, 43\)",
            id="params-2d",
        ),
        pytest.param(
            None,
            lambda a: {**a, "params": a["params"].astype(np.complex64)},
            r"params.*complex64",
            id="params-complex",
        ),
        pytest.param(
            None,
            lambda a: {**a, "params": np.arange(43, dtype=np.int32)},
            r"params.*int32",
            id="params-int",
        ),
    ],
)
def test_load_model_rejects_a_malformed_dlcore_file(
    tmp_path, saved_model_bytes, mutate, arrays, pattern
):
    path = tmp_path / "model.keras"
    path.write_bytes(saved_model_bytes)
    _rewrite(path, mutate, arrays)
    _assert_load_fails(path, ValueError, pattern)


def test_load_weights_rejects_a_damaged_weights_file(tmp_path, engine):
    model = make_model()
    path = tmp_path / "weights"
    model.save_weights(path)
    _rewrite(path, arrays=lambda a: {"params": a["params"][:-2]})
    before = model.get_weights()
    with pytest.raises(ValueError, match=r"weights.*holds 41 .*43"):
        model.load_weights(path)
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(new, old)


def test_load_weights_rejects_foreign_files(tmp_path, engine):
    model = make_model()
    path = tmp_path / "noise"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))
    with pytest.raises(ValueError, match=r"noise is a damaged weights file"):
        model.load_weights(path)
    archive.write_archive(path, {"format": "something.else"}, {"params": np.zeros(3)})
    with pytest.raises(ValueError, match=r"holds no dlcore weights"):
        model.load_weights(path)


# ---------------------------------------------------------------- set_weights
def test_set_weights_wrong_count(engine):
    model = make_model()
    weights = model.get_weights()
    pattern = re.escape(
        "set_weights expected a list of 4 arrays (shapes [(4, 5), (5,), (5, 3), (3,)]), received 3"
    )
    fails_cleanly(model, lambda: model.set_weights(weights[:3]), ValueError, pattern)
    fails_cleanly(
        model,
        lambda: model.set_weights(weights + [weights[-1]]),
        ValueError,
        r"expected a list of 4 arrays .*received 5",
    )


def test_set_weights_wrong_shape_writes_nothing(engine):
    model = make_model()
    weights = model.get_weights()
    # The first array is valid and different: it must not be written either.
    replacement = [weights[0] + 1.0, weights[1], weights[2].T, weights[3]]
    fails_cleanly(
        model,
        lambda: model.set_weights(replacement),
        ValueError,
        re.escape("set_weights: weights[2] must have shape (5, 3), received (3, 5)"),
    )
    bad_values = [weights[0] + 1.0, weights[1], weights[2], np.full(3, np.nan)]
    fails_cleanly(
        model,
        lambda: model.set_weights(bad_values),
        ValueError,
        r"weights\[3\] contains 3 NaN or infinite value\(s\)",
    )


# ---------------------------------------------------------------- building a Sequential
@pytest.mark.parametrize("thing", ["dense", Dense, lambda x: x, 3, None])
def test_adding_a_non_layer(thing):
    model = Sequential([Dense(3, input_shape=(FEATURES,))])
    before = list(model.layers)
    with pytest.raises(
        TypeError,
        match=r"Sequential\.add expected a layer such as Dense\(10\), received "
        + re.escape(repr(thing)),
    ):
        model.add(thing)
    assert model.layers == before
    with pytest.raises(TypeError, match=r"Sequential\.add expected a layer"):
        Sequential([Dense(3), thing])


def test_sequential_needs_a_list_of_layers():
    with pytest.raises(TypeError, match=r"Sequential expected a list of layers, received"):
        Sequential(Dense(3))


def test_input_must_come_first():
    with pytest.raises(ValueError, match=r"Input\(\.\.\.\) must come before every other layer"):
        Sequential([Dense(3), Input(shape=(FEATURES,))])
    model = Sequential([Input(shape=(FEATURES,)), Dense(3)])
    with pytest.raises(ValueError, match=r"Input\(\.\.\.\) must come before every other layer"):
        model.add(Input(shape=(FEATURES,)))
    assert model.input_features == FEATURES and len(model.layers) == 1


def test_layer_structure_mistakes():
    layer = Dense(3, input_shape=(FEATURES,))
    model = Sequential([layer])
    with pytest.raises(ValueError, match=r"layer 'dense.*' is already in this model"):
        model.add(layer)
    with pytest.raises(
        ValueError, match=r"declares input_shape=\(7,\) but the layer before it outputs 3 features"
    ):
        model.add(Dense(2, input_shape=(7,)))
    model.build()
    kernel = layer.get_weights()[0]
    model.add(Dense(2))  # Keras rebuilds the stack; the first layer keeps its weights
    np.testing.assert_array_equal(layer.get_weights()[0], kernel)
    assert model.output_shape == (None, 2)
    with pytest.raises(ValueError, match=r"give input_shape or input_dim, not both"):
        Dense(2, input_shape=(3,), input_dim=3)


def test_a_model_without_input_shape_or_layers_cannot_be_built():
    with pytest.raises(
        ValueError,
        match=r"summary\(\): the model has no input shape yet: give "
        r"the first layer input_shape=\(features,\)",
    ):
        Sequential([Dense(2)]).summary()
    with pytest.raises(ValueError, match=r"the model has no layers; add some"):
        Sequential([Input(shape=(FEATURES,))]).build()


# ---------------------------------------------------------------- 3-D inputs
@pytest.mark.parametrize("method", ["fit", "evaluate", "predict"])
def test_three_dimensional_inputs_suggest_reshape(engine, method):
    model = make_model()
    x = np.zeros((N, 2, 2))
    y = to_categorical(np.arange(N) % CLASSES, CLASSES)
    calls = {
        "fit": lambda: model.fit(x, y, verbose=0),
        "evaluate": lambda: model.evaluate(x, y, verbose=0),
        "predict": lambda: model.predict(x),
    }
    pattern = re.escape(
        "expected x of shape (samples, features), received x.shape=(12, 2, 2) "
        "(use x.reshape(len(x), -1) to flatten each sample)"
    )
    fails_cleanly(model, calls[method], ValueError, pattern)


@pytest.mark.parametrize("shape", [(0,), (), (2, 0), (-3,)])
def test_empty_or_negative_input_shape_is_refused(shape):
    pattern = (
        r"expected input_shape=\(features,\) or a per-sample shape such as \(28, 28\) of "
        r"positive integers \(the batch size left out\); received input_shape="
    )
    with pytest.raises(ValueError, match="Dense " + pattern):
        Dense(3, input_shape=shape)
    with pytest.raises(ValueError, match="Input " + pattern):
        Input(shape=shape)


def test_one_feature_column_given_flat_is_accepted(engine):
    dlcore.set_random_seed(0)
    model = Sequential([Dense(1, input_shape=(1,))])
    kernel, bias = model.get_weights()
    x = np.arange(5.0)
    np.testing.assert_allclose(model.predict(x)[:, 0], x * kernel[0, 0] + bias[0], rtol=1e-6)


def test_flat_input_to_a_wider_model_is_rejected(engine):
    model = make_model()
    fails_cleanly(
        model,
        lambda: model.predict(np.zeros(FEATURES)),
        ValueError,
        r"expected x of shape \(samples, features\), received x\.shape=\(4,\)",
    )


def test_one_sample_given_flat_suggests_reshape_1_minus_1(engine):
    model = make_model()
    with pytest.raises(ValueError, match=re.escape("x.reshape(1, -1)")):
        model.predict(np.zeros(FEATURES))


# ---------------------------------------------------------------- numbers, labels, dtypes
# Each case once gave a message about something else (``len() of unsized object``, a wrapped
# ``label -9223372036854775808``) or a RuntimeWarning; warnings are errors in this suite, so a
# test passes only when the check raises its own error without warning first.
def _fit(model, x, y):
    return lambda: model.fit(x, y, verbose=0)


@pytest.mark.parametrize(
    "method", ["fit", "evaluate", "train_on_batch", "test_on_batch", "predict", "predict_on_batch"]
)
@pytest.mark.parametrize("single", [np.float32(1.0), np.array(1.0), 1.0])
def test_a_single_number_as_inputs_is_named(engine, method, single):
    model = make_model(loss="sparse_categorical_crossentropy")
    labels = np.array([1])
    calls = {
        "fit": lambda: model.fit(single, labels, verbose=0),
        "evaluate": lambda: model.evaluate(single, labels, verbose=0),
        "train_on_batch": lambda: model.train_on_batch(single, labels),
        "test_on_batch": lambda: model.test_on_batch(single, labels),
        "predict": lambda: model.predict(single),
        "predict_on_batch": lambda: model.predict_on_batch(single),
    }
    pattern = re.escape(
        "expected x of shape (samples, features), received the single number x=1.0 (shape ()); "
        "pass one row of 4 features per sample, e.g. an array of shape (1, 4)"
    )
    fails_cleanly(model, calls[method], ValueError, pattern)


def test_a_single_number_for_one_feature_or_an_unbuilt_model_suggests_a_row(engine):
    one_feature = Sequential([Dense(2, input_shape=(1,))])
    with pytest.raises(ValueError, match=re.escape("pass [[3.5]] or np.reshape(x, (1, 1))")):
        one_feature.predict(np.float64(3.5))
    unbuilt = Sequential([Dense(2)])
    with pytest.raises(ValueError, match=r"received the single number x=2 \(shape \(\)\)"):
        unbuilt.predict(2)
    assert not unbuilt.built


@pytest.mark.parametrize(
    "loss,units,activation,single,pattern",
    [
        (
            "sparse_categorical_crossentropy",
            CLASSES,
            "softmax",
            np.int64(1),
            "sparse_categorical_crossentropy expects integer class labels of shape (samples,), "
            "received the single number y=1 (shape ()); pass one target per sample of x, "
            "e.g. [1] for one sample",
        ),
        (
            "mse",
            1,
            None,
            np.array(0.5),
            "mean_squared_error expects targets of shape (samples, 1), received the single "
            "number y=0.5 (shape ()); pass one target per sample of x, e.g. [[0.5]]",
        ),
        (
            "categorical_crossentropy",
            CLASSES,
            "softmax",
            1.0,
            "categorical_crossentropy expects targets of shape (samples, 3), received the single "
            "number y=1.0 (shape ()); pass one target per sample of x, e.g. an array of shape "
            "(1, 3)",
        ),
    ],
)
def test_a_single_number_as_targets_is_named(engine, loss, units, activation, single, pattern):
    model = make_model(loss=loss, units=units, activation=activation)
    x, _ = data()
    fails_cleanly(model, _fit(model, x[:1], single), ValueError, re.escape(pattern))
    fails_cleanly(
        model, lambda: model.evaluate(x[:1], single, verbose=0), ValueError, re.escape(pattern)
    )


@pytest.mark.parametrize(
    "bad,shown",
    [
        (1e20, "1e+20"),
        (-1e20, "-1e+20"),
        (2.0**63, "9.223372036854776e+18"),
        (np.float32(3e38), "3e+38"),
        (np.uint64(2**64 - 1), "18446744073709551615"),
        (2**70, "1180591620717411303424"),
        (np.int64(2**63 - 1), "9223372036854775807"),
        (np.int8(-128), "-128"),
    ],
)
def test_huge_and_negative_labels_are_reported_as_given(engine, bad, shown):
    model = make_model(loss="sparse_categorical_crossentropy")
    x, labels = data()
    if isinstance(bad, int):  # a Python int beyond int64: NumPy keeps it as an object
        given = [*labels[:-1].tolist(), bad]
    else:
        given = labels.astype(np.asarray(bad).dtype)
        given[-1] = bad

    def pattern(name: str) -> str:
        return re.escape(
            f"label {shown} in {name} is out of range for the output layer of 3 units "
            "(valid labels 0..2); give the last Dense layer as many units as there are classes"
        )

    fails_cleanly(model, _fit(model, x, given), ValueError, pattern("y"))
    fails_cleanly(model, lambda: model.test_on_batch(x, given), ValueError, pattern("y"))
    fails_cleanly(
        model,
        lambda: model.fit(x, labels, validation_data=(x, given), verbose=0),
        ValueError,
        pattern("y_val"),
    )


@pytest.mark.parametrize("bad", [2.5, 1e-9 + 1.0, np.float32(0.5)])
def test_non_integral_float_labels_name_the_value_and_the_fix(engine, bad):
    model = make_model(loss="sparse_categorical_crossentropy")
    x, labels = data()
    given = labels.astype(np.asarray(bad).dtype)
    given[3] = bad
    pattern = re.escape(
        "sparse_categorical_crossentropy expects integer class labels, received non-integer "
        f"values such as {float(np.asarray(bad))!r}; round them or map each class to an "
        "index 0..n-1"
    )
    fails_cleanly(model, _fit(model, x, given), ValueError, pattern)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_infinite_labels_are_rejected(engine, bad):
    model = make_model(loss="sparse_categorical_crossentropy")
    x, labels = data()
    given = labels.astype(np.float64)
    given[7] = bad
    pattern = re.escape("y contains 1 NaN or infinite value(s), the first at index (7,)")
    fails_cleanly(model, _fit(model, x, given), ValueError, pattern)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.uint64, np.int8, bool])
def test_unsigned_small_and_bool_labels_in_range_train_like_int64(engine, dtype):
    x, labels = data()
    labels = labels % 2 if dtype is bool else labels
    runs = []
    for given in (labels.astype(np.int64), labels.astype(dtype)):
        model = make_model(loss="sparse_categorical_crossentropy")
        runs.append(model.fit(x, given, epochs=2, shuffle=False, verbose=0).history)
    assert runs[0] == runs[1]


@pytest.mark.parametrize(
    "loss,units,activation,targets",
    [
        ("mse", 2, None, np.ones((N, 2), dtype=np.uint64)),
        ("binary_crossentropy", 1, "sigmoid", np.arange(N) % 2 == 0),
    ],
)
def test_unsigned_and_bool_targets_are_accepted(engine, loss, units, activation, targets):
    model = make_model(loss=loss, units=units, activation=activation)
    x, _ = data()
    model.fit(x, targets, verbose=0)
    assert model.optimizer.iterations == 1


def test_unsigned_and_bool_inputs_are_accepted(engine):
    model = make_model()
    expected = model.predict(np.ones((2, FEATURES)))
    np.testing.assert_array_equal(model.predict(np.ones((2, FEATURES), dtype=bool)), expected)
    np.testing.assert_array_equal(model.predict(np.ones((2, FEATURES), dtype=np.uint64)), expected)


@pytest.mark.parametrize("where", ["x", "y"])
def test_complex_numbers_are_refused_with_the_fix(engine, where):
    model = make_model(loss="mse", units=2, activation=None)
    x, _ = data()
    args = {"x": x.astype(np.complex128), "y": np.zeros((N, 2), dtype=np.complex64)}
    other = {"x": x, "y": np.zeros((N, 2))}
    args = {**other, where: args[where]}
    fails_cleanly(
        model,
        _fit(model, args["x"], args["y"]),
        TypeError,
        re.escape(
            f"{where} must hold real numbers; received complex numbers (dtype "
            f"{args[where].dtype}) whose imaginary parts are all zero. Pass {where}.real instead"
        ),
    )
    args[where] = args[where] + 2j
    fails_cleanly(
        model,
        _fit(model, args["x"], args["y"]),
        TypeError,
        rf"{where} must hold real numbers; received complex numbers .* such as \(?[0-9.+]*2j\)?\. "
        rf"Split each into two real features, e.g\. np\.concatenate\(\[{where}\.real, "
        rf"{where}\.imag\], axis=-1\)",
    )


def test_complex_labels_are_refused(engine):
    model = make_model(loss="sparse_categorical_crossentropy")
    x, labels = data()
    fails_cleanly(
        model,
        _fit(model, x, labels + 1j),
        TypeError,
        r"y must hold real numbers; received complex numbers \(dtype complex128\) such as 1j",
    )


@pytest.mark.parametrize(
    "element,error,pattern",
    [
        (
            None,
            ValueError,
            r"x contains 1 missing value\(s\) \(None\), the first at index \(3, 2\)",
        ),
        (
            "abc",
            TypeError,
            r"x must hold numbers; received an array of Python objects whose "
            r"element at index \(3, 2\) is 'abc' \(str\)\. Replace or remove the non-numbers",
        ),
        ({}, TypeError, r"element at index \(3, 2\) is \{\} \(dict\)"),
        (
            10**400,
            ValueError,
            r"x holds an integer of 401 digits at index \(3, 2\), beyond the "
            r"range of float64",
        ),
        (1 + 2j, TypeError, r"x must hold real numbers; received complex numbers"),
    ],
)
def test_object_arrays_name_the_element_that_is_not_a_number(engine, element, error, pattern):
    model = make_model()
    x, labels = data()
    given = x.astype(object)
    given[3, 2] = element
    fails_cleanly(model, _fit(model, given, to_categorical(labels, CLASSES)), error, pattern)
    fails_cleanly(model, lambda: model.predict(given), error, pattern)


def test_object_arrays_of_python_numbers_are_accepted(engine):
    model = make_model()
    x, _ = data()
    np.testing.assert_array_equal(model.predict(x.astype(object)), model.predict(x))


def test_durations_are_refused_with_a_conversion(engine):
    model = make_model()
    fails_cleanly(
        model,
        lambda: model.predict(np.zeros((2, FEATURES), dtype="m8[s]")),
        TypeError,
        re.escape(
            "x must hold numbers; received an array of dtype timedelta64[s] (e.g. "
            "[datetime.timedelta(0)]). Convert them to numbers first, e.g. "
            "x / np.timedelta64(1, 's') for durations in seconds"
        ),
    )


def test_huge_finite_inputs_are_refused_without_an_overflow_warning(engine):
    model = make_model()
    fails_cleanly(
        model,
        lambda: model.predict(np.full((N, FEATURES), 1e308)),
        ValueError,
        r"x holds values up to 1e\+308, beyond the range of the model's float32",
    )
    # float64 data that fit float64 pass, although their sum overflows
    from dlcore import data_checks

    checked = data_checks.check_features(np.full((N, FEATURES), 1e308), FEATURES)
    assert checked.shape == (N, FEATURES)


@pytest.mark.parametrize(
    "labels,pattern",
    [
        ([5], r"label 5 in y_true is out of range for y_pred of 3 classes \(valid labels 0\.\.2\)"),
        ([-1], r"label -1 in y_true is out of range"),
        ([1e20], r"label 1e\+20 in y_true is out of range"),
        (np.array([2**64 - 1], dtype=np.uint64), r"label 18446744073709551615 in y_true"),
        ([2.5], r"expects integer class labels, received non-integer values such as 2\.5"),
        ([np.nan], r"y_true contains 1 NaN or infinite value\(s\)"),
    ],
)
def test_sparse_loss_called_on_the_host_checks_its_labels(labels, pattern):
    loss = dlcore.losses.SparseCategoricalCrossentropy()
    with pytest.raises(ValueError, match=pattern):
        loss(labels, np.array([[0.2, 0.3, 0.5]]))
    assert loss([2], np.array([[0.2, 0.3, 0.5]])) == pytest.approx(-np.log(0.5))


# ---------------------------------------------------------------------- failed calls
@pytest.mark.parametrize("call", ["fit", "evaluate", "train_on_batch", "test_on_batch"])
def test_a_refused_call_leaves_an_unbuilt_model_unbuilt(call):
    """A call that builds the model from x and then refuses y undoes the build, so the
    next, correct call is not held to the refused x's width."""
    model = Sequential([Dense(4, activation="relu"), Dense(2, activation="softmax")])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    run = getattr(model, call)
    wide_x = rng.normal(size=(10, 5))
    with pytest.raises(ValueError, match="same number of samples"):
        run(wide_x, rng.integers(0, 2, 9))
    with pytest.raises(ValueError, match="out of range"):
        run(wide_x, np.full(10, 7))
    assert not model.built
    assert model.layers[0].input_features is None
    assert model.layers[0].inbound_nodes == []
    run(rng.normal(size=(10, 3)), rng.integers(0, 2, 10))
    assert model.input_shape == (None, 3)
