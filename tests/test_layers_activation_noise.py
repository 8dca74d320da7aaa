"""ReLU, LeakyReLU, ELU, Softmax and the noise layers (GaussianNoise, GaussianDropout,
AlphaDropout): engine operations against float64 NumPy formulas on every engine,
gradients against finite differences, training against inference, noise statistics,
reproducibility, saving and bad arguments."""

from __future__ import annotations

import numpy as np
import pytest

import dlcore
from dlcore.layers import (
    ELU,
    AlphaDropout,
    Dense,
    GaussianDropout,
    GaussianNoise,
    Input,
    LeakyReLU,
    ReLU,
    Softmax,
)
from dlcore.models import Model, Sequential, load_model, model_from_json
from dlcore.utils import to_categorical

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946

RELU_CASES = [
    dict(negative_slope=0.0, max_value=None, threshold=0.0),
    dict(negative_slope=0.0, max_value=6.0, threshold=0.0),
    dict(negative_slope=0.3, max_value=None, threshold=0.0),
    dict(negative_slope=0.1, max_value=2.5, threshold=0.5),
]


def relu_ref(z, negative_slope, max_value, threshold):
    top = z if max_value is None else np.minimum(z, max_value)
    return np.where(z > threshold, top, negative_slope * (z - threshold))


def elu_ref(z, alpha):
    return np.where(z > 0, z, alpha * np.expm1(np.minimum(z, 0)))


def central_difference(f, z, eps=1e-6):
    return (f(z + eps) - f(z - eps)) / (2 * eps)


def grid(rng, shape=(3, 7)):
    z = rng.uniform(-4, 8, size=shape)
    return z + 0.01 * (np.abs(z - np.round(z)) < 0.02)  # away from the kinks


@pytest.mark.parametrize("case", RELU_CASES)
def test_relu_family_values_and_gradient(engine, case, rng):
    z, dy = grid(rng), rng.normal(size=(3, 7))
    Z, dY = engine.asarray(z, dtype="float64"), engine.asarray(dy, dtype="float64")
    y = engine.to_numpy(engine.relu_family(Z, **case))
    np.testing.assert_allclose(y, relu_ref(z, **case), rtol=1e-12, atol=1e-14)
    dz = engine.to_numpy(engine.backprop_relu_family(dY, Z, **case))
    expected = dy * central_difference(lambda v: relu_ref(v, **case), z)
    np.testing.assert_allclose(dz, expected, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("alpha", [1.0, 0.4])
def test_elu_values_and_gradient(engine, alpha, rng):
    z, dy = grid(rng), rng.normal(size=(3, 7))
    Z, dY = engine.asarray(z, dtype="float64"), engine.asarray(dy, dtype="float64")
    np.testing.assert_allclose(
        engine.to_numpy(engine.elu(Z, alpha=alpha)), elu_ref(z, alpha), rtol=1e-12, atol=1e-14
    )
    dz = engine.to_numpy(engine.backprop_elu(dY, Z, alpha=alpha))
    expected = dy * central_difference(lambda v: elu_ref(v, alpha), z)
    np.testing.assert_allclose(dz, expected, rtol=1e-6, atol=1e-8)


def test_float32_relu_family_matches(engine, rng):
    z = grid(rng).astype(np.float32)
    case = RELU_CASES[-1]
    y = engine.to_numpy(engine.relu_family(engine.asarray(z, dtype="float32"), **case))
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, relu_ref(z.astype(np.float64), **case), rtol=1e-6, atol=1e-6)


def _model(layer, features=5):
    x = Input((features,))
    return Model(x, layer(Dense(features, name="d")(x)))


@pytest.mark.parametrize(
    "layer, reference",
    [
        (
            lambda: ReLU(max_value=1.0, negative_slope=0.2, threshold=0.1),
            lambda z: relu_ref(z, 0.2, 1.0, 0.1),
        ),
        (lambda: LeakyReLU(), lambda z: np.where(z >= 0, z, 0.3 * z)),
        (lambda: ELU(alpha=0.7), lambda z: elu_ref(z, 0.7)),
        (
            lambda: Softmax(),
            lambda z: (
                np.exp(z - z.max(1, keepdims=True))
                / np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)
            ),
        ),
    ],
    ids=["relu", "leaky_relu", "elu", "softmax"],
)
def test_layers_predict_the_reference_and_train_by_finite_differences(
    engine, simulated, layer, reference, rng
):
    dlcore.set_floatx("float64")
    dlcore.set_random_seed(1)
    model = _model(layer())
    x = rng.normal(size=(4, 5))
    kernel, bias = model.get_layer("d").get_weights()
    np.testing.assert_allclose(model.predict(x), reference(x @ kernel + bias), rtol=1e-10)
    if simulated:
        return  # finite differences take hundreds of steps: the op tests cover the kernels
    y = rng.normal(size=(4, 5))
    model.compile(optimizer=dlcore.optimizers.SGD(learning_rate=1.0), loss="mse")
    weights = model.get_weights()
    expected = []
    for i, w in enumerate(weights):
        g = np.zeros_like(w)
        for index in np.ndindex(w.shape):
            for sign in (1, -1):
                trial = [v.copy() for v in weights]
                trial[i][index] += sign * 1e-6
                model.set_weights(trial)
                g[index] += sign * model.test_on_batch(x, y) / 2e-6
        expected.append(g)
    model.set_weights(weights)
    model.train_on_batch(x, y)
    for before, after, g in zip(weights, model.get_weights(), expected):
        np.testing.assert_allclose(before - after, g, rtol=1e-5, atol=1e-8)


def _draw(engine, op, shape=(400, 250), **kwargs):
    X = engine.asarray(np.ones(shape), dtype="float64")
    return op(X, **kwargs)


def test_gaussian_noise_statistics(engine, simulated):
    shape = (100, 100) if simulated else (400, 250)
    Y = engine.to_numpy(_draw(engine, engine.gaussian_noise, shape, stddev=0.5))
    noise = Y - 1.0
    sigma = 0.5 / np.sqrt(noise.size)
    assert abs(noise.mean()) < 6 * sigma
    assert abs(noise.std() - 0.5) < 0.03
    assert abs(np.mean(np.abs(noise) < 0.5) - 0.6827) < 0.03  # normal, not uniform


def test_gaussian_dropout_statistics_and_mask(engine, simulated):
    shape = (100, 100) if simulated else (400, 250)
    x = np.random.default_rng(0).normal(size=shape)
    Y, mask = engine.gaussian_dropout(engine.asarray(x, dtype="float64"), rate=0.2)
    y, m = engine.to_numpy(Y), engine.to_numpy(mask)
    np.testing.assert_allclose(y, x * m, rtol=1e-12)
    assert abs(m.mean() - 1.0) < 6 * 0.5 / np.sqrt(m.size)
    assert abs(m.std() - np.sqrt(0.2 / 0.8)) < 0.03
    dY = engine.asarray(np.full(shape, 2.0), dtype="float64")
    np.testing.assert_allclose(engine.to_numpy(engine.backprop_dropout(dY, mask)), 2.0 * m)


@pytest.mark.parametrize("noise_shape", ["full", "per_sample", "per_batch"])
def test_alpha_dropout_formula_and_moments(engine, simulated, noise_shape):
    n, f = (100, 100) if simulated else (400, 250)
    x = np.random.default_rng(1).normal(size=(n, f))
    shapes = {"full": (n, f), "per_sample": (n, 1), "per_batch": (1, f)}
    rate = 0.3
    Y, mask = engine.alpha_dropout(
        engine.asarray(x, dtype="float64"), rate=rate, noise_shape=shapes[noise_shape]
    )
    y, m = engine.to_numpy(Y), engine.to_numpy(mask)
    alpha_p = -SELU_ALPHA * SELU_SCALE
    a = ((1 - rate) * (1 + rate * alpha_p**2)) ** -0.5
    b = -a * alpha_p * rate
    kept = m != 0
    np.testing.assert_allclose(m[kept], a)
    np.testing.assert_allclose(y, np.where(kept, a * x + b, a * alpha_p + b), rtol=1e-12)
    if noise_shape == "per_sample":
        assert (kept == kept[:, :1]).all()
    if noise_shape == "per_batch":
        assert (kept == kept[:1]).all()
    if noise_shape == "full":
        assert abs(kept.mean() - 0.7) < 6 * np.sqrt(0.21 / kept.size)
        assert abs(y.mean()) < 0.05 and abs(y.std() - 1.0) < 0.05  # moments kept


def test_noise_layers_are_identity_at_inference_and_noisy_in_training(engine):
    dlcore.set_random_seed(5)
    x = np.random.default_rng(2).normal(size=(6, 4))
    for layer in (GaussianNoise(0.3), GaussianDropout(0.4), AlphaDropout(0.4)):
        model = Sequential([Input((4,)), layer])
        np.testing.assert_array_equal(model.predict(x), x.astype(model.dtype))
        state = dlcore.layers.CallState(engine)
        X = engine.asarray(x, dtype=model.dtype)
        y = engine.to_numpy(layer.forward(X, training=True, state=state))
        assert not np.allclose(y, x, atol=1e-3), type(layer).__name__
        dX = layer.backward(
            engine.asarray(np.ones_like(x), dtype=model.dtype),
            state=state,
            need_dX=True,
            param_grads=None,
        )
        expected = np.ones_like(x) if state.cache is None else engine.to_numpy(state.cache)
        np.testing.assert_allclose(engine.to_numpy(dX), expected)


def test_noise_repeats_with_the_global_seed(engine):
    draws = []
    for _ in range(2):
        dlcore.set_random_seed(11)
        engine.seed(11)
        X = engine.asarray(np.zeros((8, 5)), dtype="float32")
        draws.append(engine.to_numpy(engine.gaussian_noise(X, stddev=1.0)))
    np.testing.assert_array_equal(draws[0], draws[1])
    assert draws[0].std() > 0.3


def test_a_model_with_noise_layers_fits_and_saves(tmp_path, rng):
    dlcore.set_random_seed(0)
    model = Sequential(
        [
            Input((6,)),
            Dense(8, activation="selu"),
            AlphaDropout(0.1, noise_shape=(None, 1), seed=3),
            GaussianNoise(0.1),
            Dense(8),
            ReLU(max_value=6.0),
            GaussianDropout(0.2),
            LeakyReLU(negative_slope=0.1),
            ELU(alpha=0.5),
            Dense(3),
            Softmax(),
        ]
    )
    x = rng.normal(size=(20, 6))
    y = to_categorical(rng.integers(0, 3, 20), 3)
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    history = model.fit(x, y, epochs=3, batch_size=5, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    path = tmp_path / "noise.keras"
    model.save(path)
    loaded = load_model(path)
    np.testing.assert_allclose(loaded.predict(x), model.predict(x), rtol=1e-6)
    configs = [layer.get_config() for layer in loaded.layers]
    assert configs[1]["noise_shape"] == [None, 1] and configs[1]["seed"] == 3
    assert configs[4]["max_value"] == 6.0 and configs[6]["negative_slope"] == 0.1
    again = model_from_json(model.to_json())
    assert [type(la).__name__ for la in again.layers] == [type(la).__name__ for la in model.layers]


def test_leaky_relu_accepts_keras2_alpha_with_a_warning():
    with pytest.warns(UserWarning, match="alpha is deprecated"):
        layer = LeakyReLU(alpha=0.1)
    assert layer.negative_slope == 0.1
    assert LeakyReLU().negative_slope == 0.3


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda: ReLU(max_value=-1.0),
            r"max_value to be a finite number >= 0, received max_value=-1",
        ),
        (lambda: ReLU(negative_slope=-0.1), r"negative_slope.*received negative_slope=-0.1"),
        (lambda: ReLU(threshold=None), r"threshold.*received threshold=None"),
        (lambda: LeakyReLU(negative_slope=-1), r"LeakyReLU expected negative_slope"),
        (lambda: ELU(alpha="big"), r"ELU expected alpha to be a finite number"),
        (lambda: Softmax(axis=0), r"expected axis=-1 \(or 1\), received axis=0"),
        (lambda: GaussianNoise(-0.1), r"GaussianNoise expected stddev in \[0, 1\], received"),
        (lambda: GaussianDropout(1.0), r"GaussianDropout expected rate in \[0, 1\), received"),
        (lambda: AlphaDropout(-0.2), r"AlphaDropout expected rate in \[0, 1\), received"),
        (lambda: AlphaDropout(0.1, noise_shape=3), r"noise_shape=None or \(batch, \*sample\)"),
        (lambda: GaussianNoise(0.1, seed=-2), r"seed=None or a non-negative integer"),
    ],
)
def test_bad_arguments_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_alpha_dropout_noise_shape_must_fit_the_input():
    with pytest.raises(ValueError, match=r"noise_shape=\[None, 2\] does not fit inputs of shape"):
        Sequential([Input((4,)), AlphaDropout(0.1, noise_shape=(None, 2))])


def test_softmax_refuses_multidimensional_inputs():
    with pytest.raises(
        ValueError,
        match=r"Softmax expects flat features \(None, n\), received "
        r"\(None, 2, 3\): add Flatten\(\) before it",
    ):
        Softmax()(Input((2, 3)))


def test_elementwise_layers_keep_a_multidimensional_shape():
    x = Input((2, 3))
    for layer in (
        ReLU(),
        LeakyReLU(),
        ELU(),
        GaussianNoise(0.1),
        GaussianDropout(0.1),
        AlphaDropout(0.1),
    ):
        assert layer(x).shape == (None, 2, 3)
