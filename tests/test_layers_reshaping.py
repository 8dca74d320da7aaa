"""Flatten and Reshape, and multi-dimensional per-sample shapes: Input((28, 28)),
Flatten(input_shape=...), the shapes models report, the data they accept, predict's
output shape, saving and the refusals."""

from __future__ import annotations

import numpy as np
import pytest

import dlcore
from dlcore.layers import Dense, Dropout, Flatten, Input, ReLU, Reshape
from dlcore.models import Model, Sequential, load_model, model_from_json
from dlcore.utils import to_categorical


def mnist_like(first):
    return Sequential([*first, Dense(8, activation="relu"), Dense(3, activation="softmax")])


@pytest.mark.parametrize("style", ["input", "input_shape"])
def test_flatten_mnist_model_matches_a_numpy_forward_pass(engine, style, rng):
    dlcore.set_floatx("float64")
    first = [Input((4, 5)), Flatten()] if style == "input" else [Flatten(input_shape=(4, 5))]
    model = mnist_like(first)
    assert model.input_shape == (None, 4, 5)
    assert model.layers[0].output_shape == (None, 20)
    x = rng.normal(size=(6, 4, 5))
    k1, b1, k2, b2 = model.get_weights()
    h = np.maximum(x.reshape(6, 20) @ k1 + b1, 0) @ k2 + b2
    expected = np.exp(h) / np.exp(h).sum(1, keepdims=True)
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-10)


def test_flatten_model_trains_like_the_flat_model(rng):
    dlcore.set_floatx("float64")
    dlcore.set_random_seed(4)
    shaped = mnist_like([Input((4, 5)), Flatten()])
    dlcore.set_random_seed(4)
    flat = mnist_like([Input((20,))])
    flat.set_weights(shaped.get_weights())
    x = rng.normal(size=(10, 4, 5))
    y = to_categorical(rng.integers(0, 3, 10), 3)
    for model, data in ((shaped, x), (flat, x.reshape(10, 20))):
        model.compile(optimizer="sgd", loss="categorical_crossentropy", metrics=["accuracy"])
        model.fit(data, y, epochs=2, batch_size=4, verbose=0, shuffle=False)
    for a, b in zip(shaped.get_weights(), flat.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    assert shaped.evaluate(x, y, verbose=0) == pytest.approx(
        flat.evaluate(x.reshape(10, 20), y, verbose=0)
    )


def test_reshape_output_and_predict_shape(engine, rng):
    x = Input((6,))
    h = Reshape((2, 3))(Dense(6, name="d")(x))
    r = ReLU()(h)
    out = Reshape((-1,))(Flatten()(r))
    model = Model(x, [r, out])
    assert r.shape == (None, 2, 3) and out.shape == (None, 6)
    data = rng.normal(size=(5, 6)).astype(model.dtype)
    shaped, flat = model.predict(data)
    assert shaped.shape == (5, 2, 3) and flat.shape == (5, 6)
    kernel, bias = model.get_layer("d").get_weights()
    # a float32 sum that cancels to near zero is only exact to its terms' rounding
    terms = np.abs(data) @ np.abs(kernel) + np.abs(bias)
    np.testing.assert_allclose(
        flat, np.maximum(data @ kernel + bias, 0), rtol=1e-5, atol=1e-6 * terms.max()
    )
    np.testing.assert_array_equal(shaped.reshape(5, 6), flat)


def test_summary_shows_the_shapes():
    model = Sequential([Input((28, 28)), Flatten(), Dense(4), Reshape((2, 2))])
    lines = []
    model.summary(print_fn=lines.append)
    text = "\n".join(lines)
    assert "(None, 784)" in text and "(None, 2, 2)" in text


def test_save_load_and_json_round_trip(tmp_path, rng):
    dlcore.set_floatx("float64")
    model = Sequential([Flatten(input_shape=(3, 4)), Dense(6), Dropout(0.1), Reshape((3, 2))])
    x = rng.normal(size=(5, 3, 4))
    path = tmp_path / "shaped.keras"
    model.save(path)
    loaded = load_model(path)
    assert loaded.input_shape == (None, 3, 4) and loaded.output_shape == (None, 3, 2)
    np.testing.assert_allclose(loaded.predict(x), model.predict(x))
    assert model_from_json(model.to_json()).input_shape == (None, 3, 4)
    inputs = Input((3, 4), name="img")
    functional = Model(inputs, Reshape((6, 2))(Dense(12)(Flatten()(inputs))))
    assert functional.get_layer("img").get_config()["batch_shape"] == [None, 3, 4]
    functional.save(tmp_path / "f.keras")
    again = load_model(tmp_path / "f.keras")
    assert again.output_shape == (None, 6, 2)
    np.testing.assert_allclose(again.predict(x), functional.predict(x))
    assert again.get_config()["layers"][-1]["config"]["target_shape"] == [6, 2]


def test_unbuilt_sequential_builds_from_multidimensional_data(rng):
    model = Sequential([Flatten(), Dense(2)])
    assert model.predict(rng.normal(size=(3, 2, 5))).shape == (3, 2)
    assert model.input_shape == (None, 2, 5)


def test_refusals():
    with pytest.raises(
        ValueError,
        match=r"Dense expects flat features \(None, n\), received "
        r"\(None, 28, 28\): add Flatten\(\) before it",
    ):
        Sequential([Input((28, 28)), Dense(3)])
    model = Sequential([Input((2, 3)), Flatten(), Dense(1)])
    with pytest.raises(
        ValueError,
        match=r"expects inputs of shape \(None, 2, 3\), received "
        r"x.shape=\(4, 3, 2\)",
    ):
        model.predict(np.zeros((4, 3, 2)))
    with pytest.raises(
        ValueError,
        match=r"expects inputs of shape \(None, 2, 3\), received "
        r"x.shape=\(4, 6\)",
    ):
        model.predict(np.zeros((4, 6)))
    with pytest.raises(
        ValueError,
        match=r"target_shape=\(4, 2\) holds 8 values per sample, "
        r"its inputs of shape \(None, 6\) hold 6",
    ):
        Reshape((4, 2))(Input((6,)))
    with pytest.raises(ValueError, match=r"not a multiple of 4"):
        Reshape((-1, 4))(Input((6,)))
    with pytest.raises(ValueError, match=r"at most one -1"):
        Reshape((-1, -1))
    with pytest.raises(ValueError, match=r"received target_shape=\(0, 3\)"):
        Reshape((0, 3))
    with pytest.raises(ValueError, match=r"data_format=None or 'channels_last'"):
        Flatten(data_format="channels_first")
    with pytest.raises(
        ValueError, match=r"Input expected input_shape=.*received input_shape=\(2, 0\)"
    ):
        Input((2, 0))
