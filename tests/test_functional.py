"""The Functional API: graphs of layers, several inputs and outputs, shared and frozen layers.

Gradients are checked against central finite differences of the model's own loss
in float64: one SGD step with learning rate 1 moves every trainable weight by
minus its gradient.
"""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

import dlcore
from dlcore.layers import (
    Activation,
    Add,
    Average,
    Concatenate,
    Dense,
    Dropout,
    Input,
    Maximum,
    Minimum,
    Multiply,
    PReLU,
    Subtract,
)
from dlcore.models import Model, Sequential, load_model, model_from_json
from dlcore.optimizers import SGD
from dlcore.utils import to_categorical

N = 11


@pytest.fixture
def float64(engine):
    dlcore.set_floatx("float64")
    dlcore.set_random_seed(3)
    yield engine


def data(rng, features=(4, 3), n=N):
    xs = [rng.normal(size=(n, f)) for f in features]
    labels = rng.integers(0, 3, size=n)
    return xs, to_categorical(labels, 3), rng.normal(size=(n, 2))


def residual_model():
    x = Input(shape=(4,), name="x")
    h = Dense(4, activation="tanh", name="h")(x)
    h2 = Dense(4, name="h2")(h)
    out = Dense(3, activation="softmax", name="out")(Add(name="skip")([x, h2]))
    return Model(x, out, name="residual")


def two_in_two_out_model():
    a = Input(shape=(4,), name="a")
    b = Input(shape=(3,), name="b")
    shared = Dense(3, activation="sigmoid", name="shared")
    sa = shared(Dense(3, name="pa")(a))
    sb = shared(b)  # the same layer on the second input: one set of weights
    merged = Concatenate(name="cat")(
        [Multiply(name="mul")([sa, sb]), Subtract(name="sub")([sa, sb]), a]
    )
    mixed = Average(name="avg")([Maximum(name="max")([sa, sb]), Minimum(name="min")([sa, sb])])
    cls = Dense(3, activation="softmax", name="cls")(Concatenate(name="cat2")([merged, mixed]))
    reg = Dense(2, name="reg")(merged)
    return Model([a, b], [cls, reg], name="two_by_two")


def flat_loss(model, xs, ys):
    value = model.test_on_batch(xs, ys)
    return value[0] if isinstance(value, list) else value


def numeric_gradients(model, xs, ys, eps=1e-6):
    weights = model.get_weights()
    gradients = []
    for i, w in enumerate(weights):
        g = np.zeros_like(w)
        for index in np.ndindex(w.shape):
            for sign in (1, -1):
                trial = [v.copy() for v in weights]
                trial[i][index] += sign * eps
                model.set_weights(trial)
                g[index] += sign * flat_loss(model, xs, ys) / (2 * eps)
        gradients.append(g)
    model.set_weights(weights)
    return gradients


def assert_sgd_step_follows_finite_differences(model, xs, ys, frozen=()):
    expected = numeric_gradients(model, xs, ys)
    before = model.get_weights()
    model.train_on_batch(xs, ys)
    after = model.get_weights()
    names = [w.path for w in model.weights]
    for name, b, a, g in zip(names, before, after, expected):
        if name.split("/")[0] in frozen:
            np.testing.assert_array_equal(a, b, err_msg=name)
        else:
            np.testing.assert_allclose(b - a, g, rtol=1e-6, atol=1e-8, err_msg=name)


def test_residual_model_gradients_match_finite_differences(float64, rng):
    xs, y, _ = data(rng)
    model = residual_model()
    model.compile(optimizer=SGD(learning_rate=1.0), loss="categorical_crossentropy")
    assert model._stack is None
    assert_sgd_step_follows_finite_differences(model, xs[0], y)


def test_two_inputs_two_outputs_shared_layer_and_every_merge(float64, rng):
    xs, y, reg = data(rng)
    model = two_in_two_out_model()
    assert [w.path for w in model.get_layer("shared").weights] == ["shared/kernel", "shared/bias"]
    model.compile(
        optimizer=SGD(learning_rate=1.0),
        loss={"cls": "categorical_crossentropy", "reg": "mse"},
        loss_weights={"cls": 1.0, "reg": 0.3},
    )
    assert_sgd_step_follows_finite_differences(model, xs, [y, reg])


def test_frozen_layer_gets_no_update_and_summary_counts_it(float64, rng, capsys):
    xs, y, _ = data(rng)
    model = residual_model()
    frozen = model.get_layer("h")
    frozen.trainable = False
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    kernel = frozen.get_weights()
    model.fit(xs[0], y, epochs=3, batch_size=4, verbose=0)
    np.testing.assert_array_equal(frozen.get_weights()[0], kernel[0])
    np.testing.assert_array_equal(frozen.get_weights()[1], kernel[1])
    slots = model.optimizer.get_state()
    for key, value in slots.items():
        if value.ndim == 1 and value.size == model.count_params():
            start, stop = model._layer_ranges[id(frozen)]
            assert not np.any(value[start:stop]), key  # optimizer state of frozen weights
    assert len(model.trainable_weights) == 4 and len(model.non_trainable_weights) == 2
    model.summary()
    printed = capsys.readouterr().out
    assert "Non-trainable params: 20 " in printed
    assert "Trainable params: 35 " in printed
    assert "skip[0][0]" in printed and "Connected to" in printed


def test_frozen_layer_gradients_of_the_rest_follow_finite_differences(float64, rng):
    xs, y, reg = data(rng)
    model = two_in_two_out_model()
    model.get_layer("pa").trainable = False
    model.compile(optimizer=SGD(learning_rate=1.0), loss=["categorical_crossentropy", "mse"])
    assert_sgd_step_follows_finite_differences(model, xs, [y, reg], frozen=("pa",))


def test_a_frozen_model_trains_nothing(float64, rng):
    xs, y, _ = data(rng)
    model = residual_model()
    model.trainable = False
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    before = model.get_weights()
    model.fit(xs[0], y, epochs=1, verbose=0)
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)


def test_multi_output_history_keys_and_evaluate_order(float64, rng):
    xs, y, reg = data(rng)
    model = two_in_two_out_model()
    model.compile(
        optimizer="adam",
        loss=["categorical_crossentropy", "mse"],
        loss_weights=[1.0, 0.5],
        metrics={"cls": ["accuracy"], "reg": ["mae"]},
    )
    history = model.fit(
        {"a": xs[0], "b": xs[1]},
        {"cls": y, "reg": reg},
        epochs=2,
        batch_size=4,
        validation_split=0.25,
        verbose=0,
    )
    keys = ["loss", "cls_loss", "reg_loss", "cls_accuracy", "reg_mae"]
    assert sorted(history.history) == sorted(keys + [f"val_{k}" for k in keys])
    values = model.evaluate(xs, [y, reg], verbose=0)
    logs = model.evaluate(xs, [y, reg], verbose=0, return_dict=True)
    assert list(logs) == keys == model.metrics_names
    assert values == [logs[k] for k in keys]
    assert logs["loss"] == pytest.approx(logs["cls_loss"] + 0.5 * logs["reg_loss"], rel=1e-12)
    p = model.predict(xs)
    direct = np.mean(np.sum((p[1] - reg) ** 2, axis=1) / 2)
    assert logs["reg_loss"] == pytest.approx(direct, rel=1e-10)


def test_dict_outputs_predict_a_dict(float64, rng):
    xs, y, reg = data(rng)
    a = Input(shape=(4,), name="a")
    h = Dense(5, activation="relu")(a)
    model = Model({"a": a}, {"label": Dense(3, activation="softmax")(h), "value": Dense(2)(h)})
    model.compile(optimizer="adam", loss={"label": "categorical_crossentropy", "value": "mse"})
    history = model.fit({"a": xs[0]}, {"label": y, "value": reg}, epochs=1, verbose=0)
    assert set(history.history) == {"loss", "label_loss", "value_loss"}
    out = model.predict({"a": xs[0]})
    assert set(out) == {"label", "value"} and out["value"].shape == (N, 2)


def test_graph_mistakes_are_refused_naming_the_layer(engine):
    a, b = Input(shape=(4,), name="in_a"), Input(shape=(3,), name="in_b")
    with pytest.raises(ValueError, match=r"layer 'join' \(Add\) needs inputs of one shape"):
        Add(name="join")([a, b])
    with pytest.raises(ValueError, match=r"input 'in_b' is not connected to any output"):
        Model([a, b], Dense(2)(a))
    with pytest.raises(ValueError, match=r"depend on the input 'in_b', which is not among"):
        Model(a, Dense(2)(Concatenate()([a, b])))
    with pytest.raises(ValueError, match=r"layer 'dup' expects inputs with 4 features, received 3"):
        shared = Dense(2, name="dup")
        shared(a)
        shared(b)
    with pytest.raises(TypeError, match=r"must be called on a list of tensors"):
        Add()(a)
    with pytest.raises(TypeError, match=r"must be called on symbolic tensors"):
        Dense(2)(np.ones((2, 4)))
    with pytest.raises(ValueError, match=r"exactly 2 tensors"):
        Subtract()([a, a, a])
    model = Model([a, b], [Dense(2, name="o1")(a), Dense(1, name="o2")(b)])
    with pytest.raises(ValueError, match=r"one entry per output \['o1', 'o2'\].*unknown: \['o3'\]"):
        model.compile(optimizer="adam", loss={"o1": "mse", "o3": "mse"})
    with pytest.raises(ValueError, match=r"several outputs \['o1', 'o2'\] takes metrics as a dict"):
        model.compile(optimizer="adam", loss="mse", metrics=["mae", "mse", "acc"])
    with pytest.raises(ValueError, match=r"model has 2 inputs"):
        model.compile(optimizer="adam", loss="mse")
        model.fit(np.ones((3, 4)), [np.ones((3, 2)), np.ones((3, 1))], verbose=0)


def test_layer_and_model_api(engine):
    model = Sequential([Dense(32, input_shape=(64,), name="first"), Dense(4, name="last")])
    first = model.layers[0]
    assert first.get_weights()[0].shape == (64, 32)  # built as soon as the width is known
    assert first.kernel.shape == (64, 32) and first.bias.numpy().shape == (32,)
    assert [w.path for w in model.weights] == [
        "first/kernel",
        "first/bias",
        "last/kernel",
        "last/bias",
    ]
    assert model.get_layer("last") is model.get_layer(index=1)
    with pytest.raises(ValueError, match=r"no layer named 'nope'.*\['first', 'last'\]"):
        model.get_layer("nope")
    first.kernel.assign(np.ones((64, 32)))
    np.testing.assert_array_equal(model.get_weights()[0], np.ones((64, 32)))
    popped = model.pop()
    assert popped.name == "last" and model.output_shape == (None, 32)
    np.testing.assert_array_equal(model.get_weights()[0], np.ones((64, 32)))
    model.add(Dense(2))
    assert model.count_params() == 64 * 32 + 32 + 32 * 2 + 2


def test_per_batch_methods(float64, rng):
    xs, y, _ = data(rng)
    model = Sequential([Dense(3, activation="softmax", input_shape=(4,))])
    model.compile(
        optimizer=SGD(learning_rate=0.1), loss="categorical_crossentropy", metrics=["accuracy"]
    )
    loss_before, accuracy = model.test_on_batch(xs[0], y)
    reference = -np.mean(np.sum(y * np.log(model.predict_on_batch(xs[0])), axis=1))
    assert loss_before == pytest.approx(reference, rel=1e-12)
    assert 0 <= accuracy <= 1
    trained = model.train_on_batch(xs[0], y, return_dict=True)
    assert trained["loss"] == pytest.approx(loss_before, rel=1e-12)  # the loss before the step
    assert model.test_on_batch(xs[0], y)[0] < loss_before
    assert model.metrics_names == ["loss", "accuracy"]


@pytest.mark.parametrize("kind", ["sequential", "functional"])
def test_config_and_json_round_trip(engine, kind):
    model = (
        Sequential(
            [
                Dense(5, activation="relu", input_shape=(4,)),
                Dropout(0.2),
                PReLU(),
                Dense(3, activation="softmax"),
            ]
        )
        if kind == "sequential"
        else two_in_two_out_model()
    )
    again = model_from_json(model.to_json())
    assert type(again) is type(model)
    assert [layer.name for layer in again.layers] == [layer.name for layer in model.layers]
    assert [w.shape for w in again.weights] == [w.shape for w in model.weights]
    assert again.get_config() == model.get_config()
    assert type(model).from_config(model.get_config()).count_params() == model.count_params()


@pytest.mark.parametrize("copier", ["deepcopy", "pickle"])
def test_copies_of_compiled_models_train_on_identically(float64, rng, copier):
    xs, y, reg = data(rng)
    model = two_in_two_out_model()
    model.compile(
        optimizer="adam", loss=["categorical_crossentropy", "mse"], metrics=[["accuracy"], []]
    )
    model.fit(xs, [y, reg], epochs=1, batch_size=4, shuffle=False, verbose=0)
    clone = copy.deepcopy(model) if copier == "deepcopy" else pickle.loads(pickle.dumps(model))
    for a, b in zip(clone.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    h1 = model.fit(xs, [y, reg], epochs=2, batch_size=4, shuffle=False, verbose=0).history
    h2 = clone.fit(xs, [y, reg], epochs=2, batch_size=4, shuffle=False, verbose=0).history
    assert h1 == h2
    for a, b in zip(clone.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_save_and_load_keep_graph_weights_and_optimizer_state(float64, rng, tmp_path):
    xs, y, reg = data(rng)
    model = two_in_two_out_model()
    model.get_layer("pa").trainable = False
    model.compile(
        optimizer="adam",
        loss={"cls": "categorical_crossentropy", "reg": "mae"},
        loss_weights=[2.0, 1.0],
        metrics={"cls": ["accuracy"]},
    )
    model.fit(xs, [y, reg], epochs=1, batch_size=4, shuffle=False, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = load_model(tmp_path / "m.keras")
    assert isinstance(loaded, Model) and not isinstance(loaded, Sequential)
    assert not loaded.get_layer("pa").trainable
    h1 = model.fit(xs, [y, reg], epochs=2, batch_size=4, shuffle=False, verbose=0).history
    h2 = loaded.fit(xs, [y, reg], epochs=2, batch_size=4, shuffle=False, verbose=0).history
    assert h1 == h2


def test_sequential_is_a_chain_that_keeps_the_fused_step(engine, rng):
    model = Sequential(
        [Input(shape=(4,)), Dense(8, activation="relu"), Dense(3, activation="softmax")]
    )
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    xs, y, _ = data(rng)
    model.fit(xs[0], y, epochs=1, verbose=0)
    assert model._stack is not None
    assert [type(layer).__name__ for layer in model.layers] == ["Dense", "Dense"]
    model.layers[0].trainable = False
    model.fit(xs[0], y, epochs=1, verbose=0)
    assert model._stack is None  # a frozen layer trains layer by layer


def test_layers_shared_between_two_models_share_their_weights(engine, rng):
    x = Input(shape=(4,))
    encoded = Dense(2, activation="tanh", name="encode")(x)
    decoded = Dense(4, name="decode")(encoded)
    autoencoder = Model(x, decoded)
    encoder = Model(x, encoded)
    autoencoder.compile(optimizer="adam", loss="mse")
    xs, _, _ = data(rng)
    autoencoder.fit(xs[0], xs[0], epochs=3, verbose=0)
    kernel = autoencoder.get_layer("encode").get_weights()[0]
    np.testing.assert_array_equal(encoder.get_weights()[0], kernel)
    expected = np.tanh(xs[0] @ kernel + encoder.get_weights()[1])
    np.testing.assert_allclose(encoder.predict(xs[0]), expected, rtol=1e-5, atol=1e-6)


def test_activation_layer_in_a_graph(float64, rng):
    xs, _, reg = data(rng)
    x = Input(shape=(4,))
    out = Dense(2)(Activation("relu")(Dense(5)(x)))
    model = Model(x, out)
    model.compile(optimizer=SGD(learning_rate=1.0), loss="mse")
    assert_sgd_step_follows_finite_differences(model, xs[0], reg)


def test_readme_functional_example_runs(engine, rng):
    """The Functional API example in README.md runs as written."""
    import pathlib
    import re

    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    code = next(block for block in blocks if "Model([features, embedding]" in block)
    n = 40
    labels = rng.integers(0, 3, n)
    namespace = {
        "x_features": rng.normal(size=(n, 20)),
        "x_embedding": rng.normal(size=(n, 8)),
        "y_label": to_categorical(labels, 3),
        "y_value": rng.normal(size=(n, 1)),
    }
    exec(compile(code.replace("epochs=20", "epochs=2, verbose=0"), "README.md", "exec"), namespace)
    keys = {"loss", "label_loss", "value_loss", "label_accuracy", "value_mae"}
    assert set(namespace["history"].history) == keys
    assert not namespace["model"].get_layer("label").trainable


def test_keras_spellings_of_per_output_settings(float64, rng):
    xs, y, reg = data(rng)
    model = two_in_two_out_model()
    model.compile(
        optimizer="adam", loss=["categorical_crossentropy", "mse"], metrics=["accuracy", "mae"]
    )  # one metric per output, as Keras 3 reads it
    history = model.fit(xs, [y, reg], epochs=1, verbose=0)
    assert {"cls_accuracy", "reg_mae"} <= set(history.history)
    with pytest.raises(ValueError, match=r"loss_weights must match the number of losses: got 1"):
        model.compile(optimizer="adam", loss="mse", loss_weights=[2.0, 0.5])


def test_summary_of_layers_in_keras_order(engine, capsys):
    a, b = Input(shape=(5,), name="a"), Input(shape=(5,), name="b")
    shared, before = Dense(4, name="shared"), Dense(5, name="before")
    joined = Concatenate(name="concat")([shared(a), shared(before(b))])
    model = Model([a, b], Dense(3, name="out")(joined))
    # farthest from the output first, as Keras orders layers (and so weights)
    assert [layer.name for layer in model.layers] == ["b", "a", "before", "shared", "concat", "out"]
    assert [w.shape for w in model.get_weights()][:2] == [(5, 5), (5,)]
    model.summary()
    assert "shared[0][0]," in capsys.readouterr().out
    chain = Model(a, Dense(2)(Dense(3)(a)))
    chain.summary()
    assert "Connected to" not in capsys.readouterr().out  # a chain prints like a Sequential


def test_layers_without_an_input_width_have_no_weights_yet(engine, rng):
    layer = Dense(3)
    model = Sequential([layer])
    assert layer.get_weights() == [] and layer.weights == []  # as Keras before build
    xs, y, _ = data(rng)
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    model.fit(xs[0], y, epochs=1, verbose=0)
    assert [w.shape for w in layer.get_weights()] == [(4, 3), (3,)]


@pytest.mark.parametrize("copier", ["deepcopy", "pickle"])
def test_copies_of_a_model_without_weights_yet(engine, rng, copier):
    model = Sequential([Dense(5, activation="relu"), Dense(3, activation="softmax")])
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    clone = copy.deepcopy(model) if copier == "deepcopy" else pickle.loads(pickle.dumps(model))
    assert not clone.built and clone.compiled and clone.metric_names == ["accuracy"]
    xs, y, _ = data(rng)
    history = clone.fit(xs[0], y, epochs=1, verbose=0)
    assert set(history.history) == {"loss", "accuracy"}
    assert not model.built  # the original is untouched
