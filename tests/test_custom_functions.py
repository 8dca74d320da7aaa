"""Custom activations, losses and metrics written as Python functions.

Each custom function here is checked through the engines against its formula
written out again in float64 NumPy, and each gradient against central finite
differences of that formula. Engines that cannot call Python (numba) must
refuse the functions by name, before any work.
"""

from __future__ import annotations

import numpy as np
import pytest
from dlcore.backends import custom as engine_custom
from dlcore.backends.base import Engine, Workspace

import dlcore
from dlcore import activations, custom, losses, metrics


# ---------------------------------------------------------------------- the custom functions
def mish(x, xp):
    softplus = xp.log1p(xp.exp(-xp.abs(x))) + xp.clip(x, min=0.0)
    return x * xp.tanh(softplus)


def mish_gradient(x, y, xp):
    t = xp.tanh(xp.log1p(xp.exp(-xp.abs(x))) + xp.clip(x, min=0.0))
    return t + x * (1.0 - t * t) / (1.0 + xp.exp(-x))


def pseudo_huber(y_true, y_pred, xp):
    d = y_pred - y_true
    return xp.mean(xp.sqrt(1.0 + d * d) - 1.0, axis=-1)


def pseudo_huber_gradient(y_true, y_pred, xp):
    d = y_pred - y_true
    return d / xp.sqrt(1.0 + d * d) / y_pred.shape[-1]


def max_error(y_true, y_pred, xp):
    return xp.max(xp.abs(y_pred - y_true), axis=-1)


# ---------------------------------------------------------------------- float64 references
def ref_mish(x: np.ndarray) -> np.ndarray:
    return x * np.tanh(np.logaddexp(0.0, x))


def ref_pseudo_huber(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    return np.mean(np.sqrt(1.0 + (y_pred - y_true) ** 2) - 1.0, axis=-1)


def ref_max_error(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    return np.max(np.abs(y_pred - y_true), axis=-1)


def numerical_gradient(f, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """Central finite differences of the scalar function ``f`` at ``x`` (float64)."""
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[index] = h
        grad[index] = (f(x + step) - f(x - step)) / (2 * h)
    return grad


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(autouse=True)
def registry():
    """Registers the three functions for one test; the tables are restored afterwards."""
    saved = dict(engine_custom.ACTIVATIONS), dict(engine_custom.PER_SAMPLE)
    activations.register(mish, gradient=mish_gradient)
    losses.register(pseudo_huber, gradient=pseudo_huber_gradient)
    metrics.register(max_error)
    yield
    for table, before in zip((engine_custom.ACTIVATIONS, engine_custom.PER_SAMPLE), saved):
        table.clear()
        table.update(before)


@pytest.fixture
def python_engine(engine: Engine) -> Engine:
    """The engine under test, when it runs Python functions."""
    if not engine.runs_custom_functions:
        pytest.skip(f"the {engine.name} engine refuses custom functions (tested below)")
    return engine


def on(engine: Engine, array: np.ndarray, dtype: str = "float64"):
    return engine.asarray(array, dtype=dtype)


# ---------------------------------------------------------------------- activations
def test_activation_and_its_gradient_through_the_engine(python_engine, rng):
    engine = python_engine
    Z = rng.standard_normal((5, 7)) * 3
    dY = rng.standard_normal(Z.shape)
    Y = engine.activation("mish", on(engine, Z))
    np.testing.assert_allclose(engine.to_numpy(Y), ref_mish(Z), rtol=1e-13, atol=1e-15)
    dZ = engine.to_numpy(engine.backprop_activation("mish", on(engine, dY), on(engine, Z), Y))
    expected = numerical_gradient(lambda z: np.sum(dY * ref_mish(z)), Z)
    np.testing.assert_allclose(dZ, expected, rtol=1e-7, atol=1e-9)


def test_activation_keeps_float32(python_engine, rng):
    Z = rng.standard_normal((3, 4))
    Y = python_engine.to_numpy(python_engine.activation("mish", on(python_engine, Z, "float32")))
    assert Y.dtype == np.float32
    np.testing.assert_allclose(Y, ref_mish(Z.astype(np.float32)), rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("with_workspace", [False, True], ids=["allocating", "workspace"])
def test_dense_layer_with_custom_activation_matches_finite_differences(
    python_engine, rng, with_workspace
):
    engine = python_engine
    X, W, b = rng.standard_normal((4, 3)), rng.standard_normal((3, 5)), rng.standard_normal(5)
    dY = rng.standard_normal((4, 5))
    workspace = Workspace(engine) if with_workspace else None
    Z, Y = engine.dense_forward(
        on(engine, X), on(engine, W), on(engine, b), "mish", workspace=workspace
    )
    np.testing.assert_allclose(engine.to_numpy(Y), ref_mish(X @ W + b), rtol=1e-13, atol=1e-15)
    dW, db = engine.zeros(W.shape, dtype="float64"), engine.zeros(b.shape, dtype="float64")
    dX = engine.dense_backward(
        on(engine, dY), on(engine, X), on(engine, W), Z, Y, "mish", dW=dW, db=db,
        workspace=workspace,
    )  # fmt: skip

    def objective(X_, W_, b_):
        return np.sum(dY * ref_mish(X_ @ W_ + b_))

    tolerance = {"rtol": 1e-7, "atol": 1e-8}
    expected_dW = numerical_gradient(lambda w: objective(X, w, b), W)
    np.testing.assert_allclose(engine.to_numpy(dW), expected_dW, **tolerance)
    expected_db = numerical_gradient(lambda v: objective(X, W, v), b)
    np.testing.assert_allclose(engine.to_numpy(db), expected_db, **tolerance)
    expected_dX = numerical_gradient(lambda x: objective(x, W, b), X)
    np.testing.assert_allclose(engine.to_numpy(dX), expected_dX, **tolerance)


def test_dense_stack_step_with_a_custom_hidden_activation(python_engine, rng):
    """The NumPy engine's compiled step has no loop for a custom activation: the step
    must still give the gradient of the batch-mean cross-entropy."""
    engine = python_engine
    X, labels = rng.standard_normal((5, 3)), rng.integers(0, 3, 5)
    Y_true = np.eye(3)[labels]
    W0, b0 = rng.standard_normal((3, 4)), rng.standard_normal(4)
    W1, b1 = rng.standard_normal((4, 3)), rng.standard_normal(3)

    def reference_loss(W0_):
        logits = ref_mish(X @ W0_ + b0) @ W1 + b1
        log_p = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
        return -np.mean(np.sum(Y_true * log_p, axis=-1))

    grads = [engine.zeros(shape, dtype="float64") for shape in (W0.shape, W1.shape)]
    bias_grads = [engine.zeros(shape, dtype="float64") for shape in (b0.shape, b1.shape)]
    loss, _ = engine.dense_stack_step(
        on(engine, X),
        on(engine, Y_true),
        [on(engine, W0), on(engine, W1)],
        [on(engine, b0), on(engine, b1)],
        grads,
        bias_grads,
        ["mish"],
        workspaces=[Workspace(engine) for _ in range(3)],
    )
    np.testing.assert_allclose(float(engine.to_numpy(loss)), reference_loss(W0), rtol=1e-12)
    expected = numerical_gradient(reference_loss, W0)
    np.testing.assert_allclose(engine.to_numpy(grads[0]), expected, rtol=1e-6, atol=1e-9)


# ---------------------------------------------------------------------- losses and metrics
def test_loss_value_and_gradient_through_the_engine(python_engine, rng):
    engine = python_engine
    Y_true, Y_pred = rng.standard_normal((6, 4)), rng.standard_normal((6, 4)) * 2
    value = engine.to_numpy(engine.loss("pseudo_huber", on(engine, Y_pred), on(engine, Y_true)))
    assert value.shape == ()
    np.testing.assert_allclose(value, np.mean(ref_pseudo_huber(Y_true, Y_pred)), rtol=1e-13)
    gradient = engine.backprop_loss("pseudo_huber", on(engine, Y_pred), on(engine, Y_true))
    expected = numerical_gradient(lambda p: np.mean(ref_pseudo_huber(Y_true, p)), Y_pred)
    np.testing.assert_allclose(engine.to_numpy(gradient), expected, rtol=1e-7, atol=1e-10)


def test_loss_object_from_the_function(rng):
    loss = losses.get(pseudo_huber)
    assert (loss.name, loss.from_logits) == ("pseudo_huber", False)
    assert losses.get(loss.get_config()).name == "pseudo_huber"
    assert losses.get("pseudo_huber").name == "pseudo_huber"
    Y_true, Y_pred = rng.standard_normal((6, 4)), rng.standard_normal((6, 4))
    expected = np.mean(ref_pseudo_huber(Y_true, Y_pred))
    np.testing.assert_allclose(loss(Y_true, Y_pred), expected, rtol=1e-13)
    with pytest.raises(ValueError, match=r"from_logits applies only to categorical_crossentropy"):
        losses.Loss("pseudo_huber", from_logits=True)


def test_metric_is_the_mean_of_its_per_sample_values(python_engine, rng):
    engine = python_engine
    assert metrics.check_names([max_error, "mae"]) == ["max_error", "mae"]
    assert metrics.check_names("max_error") == ["max_error"]
    # a registered loss serves as a metric too
    assert metrics.check_names([pseudo_huber]) == ["pseudo_huber"]
    resolved = metrics.resolve(["max_error", "pseudo_huber"], losses.get("mse"), units=4)
    assert [metric.key for metric in resolved] == ["max_error", "pseudo_huber"]
    totals = metrics.EpochTotals(engine, [resolved], [4])
    batches = [
        (rng.standard_normal((5, 4)), rng.standard_normal((5, 4))),
        (rng.standard_normal((2, 4)), rng.standard_normal((2, 4))),
    ]
    for Y_true, Y_pred in batches:
        true, pred = on(engine, Y_true), on(engine, Y_pred)
        values = [metric.batch_value(engine, pred, true) for metric in resolved]
        totals.add(len(Y_true), [engine.loss("mean_squared_error", pred, true)], values)
    logs = totals.logs()
    Y_true = np.concatenate([batch[0] for batch in batches])
    Y_pred = np.concatenate([batch[1] for batch in batches])
    np.testing.assert_allclose(logs["max_error"], np.mean(ref_max_error(Y_true, Y_pred)))
    np.testing.assert_allclose(logs["pseudo_huber"], np.mean(ref_pseudo_huber(Y_true, Y_pred)))


# ---------------------------------------------------------------------- engines without Python
def test_engines_without_python_refuse_custom_functions(engine, rng):
    if engine.runs_custom_functions:
        pytest.skip(f"the {engine.name} engine runs custom functions")
    Z = on(engine, rng.standard_normal((2, 3)))
    W, b = on(engine, rng.standard_normal((3, 3))), on(engine, rng.standard_normal(3))
    refused = rf"the {engine.name} engine cannot run the custom {{}} '{{}}' \(the Python function "
    activation = refused.format("activation", "mish") + r"[\w.]*\bmish\)"
    hint = r".*Use the numpy or cupy engine \(dlcore\.set_backend\('numpy'\)\), or a built-in"
    for call in (
        lambda: engine.activation("mish", Z),
        lambda: engine.backprop_activation("mish", Z, Z, Z),
        lambda: engine.dense_forward(Z, W, b, "mish"),
        lambda: engine.dense_backward(Z, Z, W, Z, Z, "mish", dW=W, db=b),
    ):
        with pytest.raises(RuntimeError, match=activation + hint):
            call()
    with pytest.raises(RuntimeError, match=refused.format("loss", "pseudo_huber") + ".*" + hint):
        engine.loss("pseudo_huber", Z, Z)
    with pytest.raises(RuntimeError, match=refused.format("loss", "pseudo_huber")):
        engine.backprop_loss("pseudo_huber", Z, Z)
    with pytest.raises(RuntimeError, match=refused.format("metric", "max_error")):
        engine.loss("max_error", Z, Z)


def test_check_engine_refuses_before_any_work(engine):
    custom.check_engine(
        engine, activations=["relu", "softmax"], losses=[losses.get("mse")], metrics=["acc", "mae"]
    )
    cases = [
        ({"activations": ["relu", "mish"]}, "activation 'mish'"),
        ({"losses": [losses.get(pseudo_huber)]}, "loss 'pseudo_huber'"),
        ({"losses": ["pseudo_huber"]}, "loss 'pseudo_huber'"),
        ({"metrics": ["accuracy", "max_error"]}, "metric 'max_error'"),
    ]
    for arguments, what in cases:
        if engine.runs_custom_functions:
            custom.check_engine(engine, **arguments)
        else:
            with pytest.raises(RuntimeError, match=f"cannot run the custom {what}.*numpy or cupy"):
                custom.check_engine(engine, **arguments)


# ---------------------------------------------------------------------- names, registration
def test_functions_resolve_to_their_registered_names():
    assert activations.get(mish) == "mish" == activations.get("mish")
    assert activations.get("ReLU") == "relu"
    assert activations.register(mish, gradient=mish_gradient, name="mish_again") is mish
    assert activations.get(mish) == "mish_again"  # the latest registration
    assert activations.get("mish") == "mish"

    @activations.register(gradient=mish_gradient, name="decorated")
    def another(x, xp):
        return x

    assert activations.get(another) == "decorated"
    assert metrics.register(name="worst")(max_error) is max_error
    assert metrics.check_names([max_error]) == ["worst"]


def _unregistered(x, xp):
    return x


@pytest.mark.parametrize(
    "register, error, pattern",
    [
        (
            lambda: activations.register("mish", gradient=mish_gradient),
            TypeError,
            r"a custom activation must be a function, received str: 'mish'",
        ),
        (
            lambda: activations.register(_unregistered),
            TypeError,
            r"the custom activation '_unregistered' needs its gradient: dlcore has no "
            r"automatic differentiation, so pass gradient=gradient\(x, y, xp\)",
        ),
        (
            lambda: activations.register(_unregistered, gradient=2.0),
            TypeError,
            r"the gradient of the custom activation '_unregistered' must be a function",
        ),
        (
            lambda: losses.register(pseudo_huber, name="huber2"),
            TypeError,
            r"the custom loss 'huber2' needs its gradient.*gradient\(y_true, y_pred, xp\)",
        ),
        (
            lambda: activations.register(mish, gradient=mish_gradient, name="ReLU"),
            ValueError,
            r"'ReLU' names a built-in activation; register .*mish under another name",
        ),
        (
            lambda: activations.register(mish, gradient=mish_gradient, name="silu"),
            ValueError,
            r"'silu' names a built-in activation",
        ),
        (
            lambda: losses.register(pseudo_huber, gradient=pseudo_huber_gradient, name="mse"),
            ValueError,
            r"'mse' names a built-in loss or metric",
        ),
        (
            lambda: losses.register(pseudo_huber, gradient=pseudo_huber_gradient, name="acc"),
            ValueError,
            r"'acc' names a built-in loss or metric",
        ),
        (
            lambda: metrics.register(max_error, name="binary_accuracy"),
            ValueError,
            r"'binary_accuracy' names a built-in loss or metric",
        ),
        (
            lambda: metrics.register(max_error, name="kld"),
            ValueError,
            r"'kld' names a built-in loss or metric",
        ),
        (
            lambda: metrics.register(lambda y_true, y_pred, xp: y_pred[:, 0]),
            ValueError,
            r"the custom metric .*<lambda> has no usable name \('<lambda>'\); give one with "
            r"name='my_metric'",
        ),
        (
            lambda: metrics.register(max_error, name="max error"),
            ValueError,
            r"must be a Python identifier such as 'my_metric', received 'max error'",
        ),
        (
            lambda: metrics.register(max_error, name=3),
            TypeError,
            r"the name of a custom metric must be a string, received 3",
        ),
    ],
)
def test_bad_registrations_say_what_is_wrong(register, error, pattern):
    before = dict(engine_custom.ACTIVATIONS), dict(engine_custom.PER_SAMPLE)
    with pytest.raises(error, match=pattern):
        register()
    assert (engine_custom.ACTIVATIONS, engine_custom.PER_SAMPLE) == before


def test_unregistered_functions_and_unknown_names_name_the_fix():
    with pytest.raises(TypeError, match=r"activation function .*_unregistered is not registered"):
        activations.get(_unregistered)
    with pytest.raises(TypeError, match=r"loss function .*_unregistered is not registered.*"):
        losses.get(_unregistered)
    with pytest.raises(TypeError, match=r"'max_error' is a custom metric, without a gradient"):
        losses.get(max_error)
    with pytest.raises(ValueError, match=r"'max_error' is a custom metric, without a gradient"):
        losses.get("max_error")
    with pytest.raises(TypeError, match=r"metrics are given by name .*_unregistered is not"):
        metrics.check_names([_unregistered])
    for get, kind, module in [
        (activations.get, "activation", "activations"),
        (losses.get, "loss", "losses"),
        (metrics.check_names, "metric", "metrics"),
    ]:
        pattern = (
            rf"unknown {kind} 'missing_fn'; available: .*; if 'missing_fn' is a custom "
            rf"{kind}, register it with dlcore\.{module}\.register\(.*\) before using it, or "
            r"pass it to load_model in custom_objects=\{'missing_fn': missing_fn\}"
        )
        with pytest.raises(ValueError, match=pattern):
            get("missing_fn")
    with pytest.raises(ValueError, match=r"unknown activation 'relux'; available: .*\bmish\b"):
        activations.get("relux")


def test_custom_object_scope_maps_file_names_onto_registered_functions():
    objects = {"my_act": mish, "my_loss": pseudo_huber, "my_metric": max_error}
    with custom.custom_object_scope(objects):
        assert activations.get("my_act") == "mish"
        assert losses.get("my_loss").name == "pseudo_huber"
        assert losses.get({"name": "my_loss", "from_logits": False}).name == "pseudo_huber"
        with custom.custom_object_scope({"their_loss": losses.get(pseudo_huber)}):
            assert losses.get("their_loss").name == "pseudo_huber"
        assert metrics.check_names(["my_metric", "accuracy"]) == ["max_error", "accuracy"]
        with custom.custom_object_scope({"my_act": _unregistered}):
            with pytest.raises(TypeError, match=r"_unregistered is not registered"):
                activations.get("my_act")
        assert activations.get("my_act") == "mish"
    with pytest.raises(ValueError, match=r"unknown activation 'my_act'.*custom_objects"):
        activations.get("my_act")
    assert activations.get("mish") == "mish"  # registered names outlive the scope
    with custom.custom_object_scope(None):
        assert losses.get("pseudo_huber").name == "pseudo_huber"


@pytest.mark.parametrize(
    "objects", [[("my_act", mish)], {"my_act": "mish"}, {1: mish}], ids=["list", "str", "key"]
)
def test_custom_object_scope_wants_names_and_functions(objects):
    with pytest.raises(TypeError, match=r"custom_objects must map names to functions"):
        with custom.custom_object_scope(objects):
            pass


def test_functions_returning_the_wrong_shape_or_dtype_are_named(python_engine, rng):
    engine = python_engine

    @activations.register(gradient=mish_gradient)
    def to_float32(x, xp):
        return xp.astype(x, xp.float32)

    @losses.register(gradient=pseudo_huber_gradient)
    def column(y_true, y_pred, xp):
        return y_pred[:, :1]

    Z = on(engine, rng.standard_normal((3, 2)))
    with pytest.raises(
        ValueError,
        match=r"the forward of the custom activation 'to_float32' \(.*to_float32\) must return "
        r"an array of shape \(3, 2\) and dtype float64; it returned shape \(3, 2\) and "
        r"dtype float32",
    ):
        engine.activation("to_float32", Z)
    with pytest.raises(
        ValueError, match=r"custom loss 'column' .* must return an array of shape \(3,\)"
    ):
        engine.loss("column", Z, Z)


# ---------------------------------------------------------------------- a whole model
def test_model_trains_saves_and_loads_with_custom_functions(tmp_path, rng):
    from dlcore.layers import Dense
    from dlcore.models import Sequential, load_model

    X, Y = rng.standard_normal((16, 3)), rng.standard_normal((16, 2))
    with dlcore.use_backend("numpy"):
        dlcore.set_random_seed(0)
        model = Sequential([Dense(4, activation=mish, input_shape=(3,)), Dense(2)])
        model.compile(optimizer="sgd", loss=pseudo_huber, metrics=[max_error])
        history = model.fit(X, Y, epochs=2, batch_size=8, verbose=0)
        assert set(history.history) == {"loss", "max_error"}
        hidden = model.layers[0].get_config()["activation"]
        assert hidden == "mish"
        path = tmp_path / "model.dlcore"
        model.save(path)
        objects = {"mish": mish, "pseudo_huber": pseudo_huber, "max_error": max_error}
        loaded = load_model(path, custom_objects=objects)
        np.testing.assert_allclose(loaded.predict(X, verbose=0), model.predict(X, verbose=0))
        evaluated = loaded.evaluate(X, Y, verbose=0, return_dict=True)
        predictions = model.predict(X, verbose=0)
        np.testing.assert_allclose(
            evaluated["max_error"], np.mean(ref_max_error(Y, predictions)), rtol=1e-6
        )


@pytest.mark.cudasim
def test_a_model_is_refused_on_an_engine_without_python_before_it_runs(rng):
    engine_names = [info.name for info in dlcore.backends.available() if info.available]
    if "numba" not in engine_names:
        pytest.skip("the numba engine is not available")
    from dlcore.layers import Dense
    from dlcore.models import Sequential

    X, Y = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    with dlcore.use_backend("numba"):
        model = Sequential([Dense(2, activation=mish, input_shape=(3,))])
        model.compile(optimizer="sgd", loss="mse")
        with pytest.raises(RuntimeError, match=r"numba engine cannot run the custom activation"):
            model.fit(X, Y, verbose=0)
        model = Sequential([Dense(2, input_shape=(3,))])
        model.compile(optimizer="sgd", loss=pseudo_huber, metrics=[max_error])
        with pytest.raises(RuntimeError, match=r"numba engine cannot run the custom loss"):
            model.fit(X, Y, verbose=0)
        assert model.optimizer.iterations == 0
