"""BatchNormalization, LayerNormalization and Normalization on every engine.

Values are compared with float64 NumPy formulas, gradients with central finite
differences of the model's own loss (one SGD step with learning rate 1 moves each
trainable weight by minus its gradient). A BatchNormalization with momentum 1 keeps
its moving statistics, so its training-mode loss is a function of the weights alone.
"""

from __future__ import annotations

import numpy as np
import pytest

import dlcore
from dlcore.layers import (
    BatchNormalization,
    Dense,
    Input,
    LayerNormalization,
    Normalization,
)
from dlcore.models import Model, Sequential, load_model
from dlcore.optimizers import SGD, Adam

N = 6
# a positive learning rate whose steps round away: the weights stay bit for bit
NO_STEP = 1e-300


@pytest.fixture
def float64(engine):
    dlcore.set_floatx("float64")
    dlcore.set_random_seed(7)
    yield engine


def batch_norm(x, mean, var, gamma, beta, eps):
    return gamma * (x - mean) / np.sqrt(var + eps) + beta


def layer_norm(x, gamma, beta, eps):
    mean = x.mean(axis=1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=1, keepdims=True)
    return gamma * (x - mean) / np.sqrt(var + eps) + beta


def training_loss(model, x, y):
    """The loss of a training-mode forward pass, with no update (a learning rate so small
    that every step is below half an ulp of the weights)."""
    model.compile(optimizer=SGD(learning_rate=NO_STEP), loss="mse")
    return float(model.train_on_batch(x, y))


def numeric_gradients(model, x, y, eps=1e-6):
    weights = model.get_weights()
    gradients = []
    for i, w in enumerate(weights):
        g = np.zeros_like(w)
        for index in np.ndindex(w.shape):
            for sign in (1, -1):
                trial = [v.copy() for v in weights]
                trial[i][index] += sign * eps
                model.set_weights(trial)
                g[index] += sign * training_loss(model, x, y) / (2 * eps)
        gradients.append(g)
    model.set_weights(weights)
    return gradients


def assert_step_follows_finite_differences(model, x, y):
    expected = numeric_gradients(model, x, y)
    before = model.get_weights()
    model.compile(optimizer=SGD(learning_rate=1.0), loss="mse")
    model.train_on_batch(x, y)
    after = model.get_weights()
    for w, b, a, g in zip(model.weights, before, after, expected):
        if w.trainable:
            np.testing.assert_allclose(b - a, g, rtol=1e-6, atol=1e-8, err_msg=w.path)
        else:
            np.testing.assert_array_equal(a, b, err_msg=w.path)


def dense_bn_model(momentum=1.0, **kwargs):
    x = Input(shape=(4,), name="x")
    h = Dense(3, activation="tanh", name="d")(x)
    h = BatchNormalization(momentum=momentum, name="bn", **kwargs)(h)
    return Model(x, Dense(2, name="out")(h))


# ------------------------------------------------------------------ BatchNormalization
def test_batch_norm_weights_order_flags_and_summary(float64, capsys):
    model = dense_bn_model()
    bn = model.get_layer("bn")
    assert [w.name for w in bn.weights] == ["gamma", "beta", "moving_mean", "moving_variance"]
    assert [w.name for w in bn.trainable_weights] == ["gamma", "beta"]
    assert [w.name for w in bn.non_trainable_weights] == ["moving_mean", "moving_variance"]
    assert [w.trainable for w in bn.weights] == [True, True, False, False]
    np.testing.assert_array_equal(bn.get_weights()[0], np.ones(3))
    np.testing.assert_array_equal(bn.get_weights()[3], np.ones(3))
    assert bn.count_params() == 12 and bn.count_trainable_params() == 6
    model.summary()
    printed = capsys.readouterr().out
    assert "Non-trainable params: 6 " in printed and "Trainable params: 29 " in printed
    no_scale = Sequential([Input(shape=(3,)), BatchNormalization(scale=False)])
    assert [w.name for w in no_scale.weights] == ["beta", "moving_mean", "moving_variance"]


def test_batch_norm_training_values_and_moving_statistics(float64, rng, simulated):
    model = Sequential([Input(shape=(3,)), BatchNormalization(momentum=0.8, epsilon=1e-2)])
    bn = model.layers[-1]
    gamma, beta = rng.normal(size=3), rng.normal(size=3)
    moving_mean, moving_var = rng.normal(size=3), rng.uniform(0.5, 2, size=3)
    bn.set_weights([gamma, beta, moving_mean, moving_var])
    model.compile(optimizer=SGD(learning_rate=NO_STEP), loss="mse")
    for _ in range(2 if simulated else 3):
        x, y = rng.normal(2.0, 3.0, size=(N, 3)), rng.normal(size=(N, 3))
        mean, var = x.mean(axis=0), x.var(axis=0)
        expected = np.mean((batch_norm(x, mean, var, gamma, beta, 1e-2) - y) ** 2)
        np.testing.assert_allclose(model.train_on_batch(x, y), expected, rtol=1e-12)
        moving_mean = moving_mean * 0.8 + mean * (1 - 0.8)
        moving_var = moving_var * 0.8 + var * (1 - 0.8)
        got = bn.get_weights()
        np.testing.assert_allclose(got[2], moving_mean, rtol=1e-12)
        np.testing.assert_allclose(got[3], moving_var, rtol=1e-12)
    # inference uses the moving statistics, not the batch's
    inference = batch_norm(x, moving_mean, moving_var, gamma, beta, 1e-2)
    np.testing.assert_allclose(model.predict(x, verbose=0), inference, rtol=1e-12)
    assert not np.allclose(inference, batch_norm(x, mean, var, gamma, beta, 1e-2))


def test_batch_norm_gradients_match_finite_differences(float64, rng):
    model = dense_bn_model()
    bn = model.get_layer("bn")
    bn.set_weights([rng.normal(size=3), rng.normal(size=3), rng.normal(size=3), np.ones(3)])
    x, y = rng.normal(size=(N, 4)), rng.normal(size=(N, 2))
    assert_step_follows_finite_differences(model, x, y)


def test_optimizer_never_touches_the_moving_statistics(float64, rng, simulated):
    model = Sequential([Input(shape=(3,)), BatchNormalization(momentum=0.5), Dense(2)])
    bn = model.layers[0]
    model.compile(optimizer=Adam(learning_rate=0.1, weight_decay=0.5), loss="mse")
    x, y = rng.normal(1.0, 2.0, size=(N, 3)), rng.normal(size=(N, 2))
    moving_mean, moving_var = np.zeros(3), np.ones(3)
    for _ in range(2 if simulated else 4):
        model.train_on_batch(x, y)
        moving_mean = moving_mean * 0.5 + x.mean(axis=0) * 0.5
        moving_var = moving_var * 0.5 + x.var(axis=0) * 0.5
    np.testing.assert_allclose(bn.get_weights()[2], moving_mean, rtol=1e-12)
    np.testing.assert_allclose(bn.get_weights()[3], moving_var, rtol=1e-12)
    start = model._layer_ranges[id(bn)][0]
    for key, value in model.optimizer.get_state().items():
        if value.ndim == 1 and value.size == model.count_params():
            assert not np.any(value[start + 6 : start + 12]), key  # no slot state


def test_frozen_batch_norm_runs_in_inference_mode(float64, rng):
    model = dense_bn_model(momentum=0.5)
    bn = model.get_layer("bn")
    bn.trainable = False
    values = [rng.normal(size=3), rng.normal(size=3), rng.normal(size=3), np.full(3, 2.0)]
    bn.set_weights(values)
    model.compile(optimizer=SGD(learning_rate=0.1), loss="mse")
    x, y = rng.normal(size=(N, 4)), rng.normal(size=(N, 2))
    train_loss = float(model.train_on_batch(x, y))
    assert train_loss == pytest.approx(float(model.test_on_batch(x, y)), rel=0.5)
    for got, want in zip(bn.get_weights(), values):
        np.testing.assert_array_equal(got, want)  # neither moved nor trained
    assert bn.trainable_weights == [] and len(bn.non_trainable_weights) == 4


def test_frozen_batch_norm_gradients_flow_through_the_moving_statistics(float64, rng):
    model = dense_bn_model(momentum=0.5)
    bn = model.get_layer("bn")
    bn.set_weights([rng.normal(size=3), rng.normal(size=3), rng.normal(size=3), np.full(3, 2.0)])
    bn.trainable = False
    x, y = rng.normal(size=(N, 4)), rng.normal(size=(N, 2))
    assert_step_follows_finite_differences(model, x, y)


# ------------------------------------------------------------------ LayerNormalization
def test_layer_norm_values_and_gradients(float64, rng):
    x_in = Input(shape=(4,), name="x")
    h = Dense(5, name="d")(x_in)
    ln = LayerNormalization(epsilon=0.05, name="ln")
    model = Model(x_in, Dense(2, name="out")(ln(h)))
    gamma, beta = rng.normal(size=5), rng.normal(size=5)
    ln.set_weights([gamma, beta])
    assert [w.name for w in ln.weights] == ["gamma", "beta"]
    x, y = rng.normal(size=(N, 4)), rng.normal(size=(N, 2))
    kernel, bias = model.get_layer("d").get_weights()
    expected = layer_norm(x @ kernel + bias, gamma, beta, 0.05)
    probe = Model(x_in, ln.inbound_nodes[0].output)
    np.testing.assert_allclose(probe.predict(x, verbose=0), expected, rtol=1e-12, atol=1e-14)
    assert_step_follows_finite_differences(model, x, y)


def test_layer_norm_without_center_and_scale(float64, rng):
    model = Sequential([Input(shape=(3,)), LayerNormalization(center=False, scale=False)])
    assert model.weights == []
    x = rng.normal(size=(N, 3))
    expected = layer_norm(x, 1.0, 0.0, 1e-3)
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------ Normalization
def test_normalization_adapt_matches_numpy_and_standardizes(float64, rng):
    data = rng.normal(3.0, 2.0, size=(40, 3))
    layer = Normalization()
    layer.adapt(data)
    batched = Normalization()
    batched.adapt([data[:7], data[7:30], data[30:]])
    model = Sequential([Input(shape=(3,)), layer])
    mean, var = layer.get_weights()
    np.testing.assert_allclose(mean, data.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(var, data.var(axis=0), rtol=1e-13)
    np.testing.assert_allclose(batched.initial_values(None, "float64")[0], mean, rtol=1e-13)
    np.testing.assert_allclose(batched.initial_values(None, "float64")[1], var, rtol=1e-13)
    x = rng.normal(size=(N, 3))
    expected = (x - data.mean(axis=0)) / np.sqrt(data.var(axis=0))
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, rtol=1e-12)
    assert layer.trainable_weights == [] and len(layer.non_trainable_weights) == 2


def test_normalization_given_statistics_invert_and_gradient(float64, rng):
    x_in = Input(shape=(3,), name="x")
    norm = Normalization(mean=[1.0, -2.0, 0.5], variance=[4.0, 0.0, 0.25], name="n")
    model = Model(x_in, Dense(2, name="out")(norm(Dense(3, name="d")(x_in))))
    inverse = Sequential([Input(shape=(3,)), Normalization(mean=2.0, variance=9.0, invert=True)])
    x, y = rng.normal(size=(N, 3)), rng.normal(size=(N, 2))
    np.testing.assert_allclose(inverse.predict(x, verbose=0), 2.0 + 3.0 * x, rtol=1e-12)
    kernel, bias = model.get_layer("d").get_weights()
    d = np.maximum(np.sqrt([4.0, 0.0, 0.25]), 1e-7)
    expected = ((x @ kernel + bias) - [1.0, -2.0, 0.5]) / d
    probe = Model(x_in, norm.inbound_nodes[0].output)
    np.testing.assert_allclose(probe.predict(x, verbose=0), expected, rtol=1e-12)
    # the zero variance divides by 1e-7: keep the finite differences to the last layer
    norm.set_weights([np.array([1.0, -2.0, 0.5]), np.array([4.0, 1.0, 0.25])])
    assert_step_follows_finite_differences(model, x, y)


def test_normalization_refuses_use_before_adapt(engine):
    model = Sequential([Input(shape=(2,)), Normalization()])
    with pytest.raises(ValueError, match=r"no statistics yet: call layer\.adapt"):
        model.predict(np.zeros((2, 2)), verbose=0)


# ------------------------------------------------------------------ saving
def test_save_load_round_trip_keeps_statistics(float64, rng, tmp_path):
    x_in = Input(shape=(3,), name="x")
    norm = Normalization(name="norm")
    norm.adapt(rng.normal(1.0, 2.0, size=(20, 3)))
    h = BatchNormalization(momentum=0.5, name="bn")(norm(x_in))
    model = Model(x_in, Dense(2, name="out")(LayerNormalization(name="ln")(h)))
    model.compile(optimizer="adam", loss="mse")
    x, y = rng.normal(size=(N, 3)), rng.normal(size=(N, 2))
    model.train_on_batch(x, y)
    path = tmp_path / "model.dlcore"
    model.save(path)
    loaded = load_model(path)
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert [w.path for w in loaded.non_trainable_weights] == [
        "norm/mean",
        "norm/variance",
        "bn/moving_mean",
        "bn/moving_variance",
    ]
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    config = loaded.get_layer("bn").get_config()
    assert config["momentum"] == 0.5 and config["epsilon"] == 1e-3 and config["axis"] == -1


# ------------------------------------------------------------------ bad arguments
@pytest.mark.parametrize("momentum", [-0.1, 1.5, "high", True])
def test_batch_norm_refuses_a_bad_momentum(momentum):
    with pytest.raises(ValueError, match=r"momentum in \[0, 1\], received momentum="):
        BatchNormalization(momentum=momentum)


@pytest.mark.parametrize("layer", [BatchNormalization, LayerNormalization])
@pytest.mark.parametrize("epsilon", [0, -1e-3, float("nan")])
def test_refuses_a_bad_epsilon(layer, epsilon):
    with pytest.raises(ValueError, match="positive finite epsilon"):
        layer(epsilon=epsilon)


@pytest.mark.parametrize("layer", [BatchNormalization, LayerNormalization, Normalization])
@pytest.mark.parametrize("axis", [0, 2, -2, None, "x"])
def test_refuses_an_axis_other_than_the_features(layer, axis):
    with pytest.raises(ValueError, match=r"expected axis=-1 .* received axis="):
        layer(axis=axis)


def test_other_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="rms_scaling=True"):
        LayerNormalization(rms_scaling=True)
    with pytest.raises(ValueError, match="constraints"):
        BatchNormalization(gamma_constraint="non_neg")
    with pytest.raises(ValueError, match="renorm=True"):
        BatchNormalization(renorm=True)
    with pytest.raises(ValueError, match="both mean and variance, or neither"):
        Normalization(mean=1.0)
    with pytest.raises(ValueError, match="one shape"):
        Normalization(mean=[1.0, 2.0], variance=[1.0])
    with pytest.raises(ValueError, match="variances >= 0"):
        Normalization(mean=0.0, variance=-1.0)
    layer = Normalization()
    with pytest.raises(ValueError, match="batch 1 of shape"):
        layer.adapt([np.zeros((3, 2)), np.zeros((3, 4))])
    with pytest.raises(ValueError, match="no batches"):
        layer.adapt([])
    with pytest.raises(ValueError, match=r"shape \(N, features\)"):
        layer.adapt(np.zeros(4))
