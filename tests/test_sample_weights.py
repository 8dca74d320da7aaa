"""Sample weights and class weights: the weighted losses and gradients on every engine,
against NumPy formulas and float64 finite differences, and the arguments refused.

Keras 3's own numbers for the same models: ``tests/test_keras_parity_weights.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

import dlcore
from dlcore import optimizers
from dlcore.layers import Dense, Input
from dlcore.models import Model, Sequential

SAMPLES, FEATURES = 11, 4


def _data(seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(SAMPLES, FEATURES))
    labels = rng.integers(0, 3, SAMPLES)
    w = rng.uniform(0.0, 2.0, SAMPLES)
    return x, labels, np.eye(3)[labels], w


def _classifier(activation: str = "softmax", units: int = 3, seed: int = 1) -> Sequential:
    dlcore.set_random_seed(seed)
    model = Sequential(
        [Input((FEATURES,)), Dense(5, activation="tanh"), Dense(units, activation=activation)]
    )
    return model


def _per_sample_loss(name: str, p: np.ndarray, y: np.ndarray) -> np.ndarray:
    eps = 1e-7
    if name == "categorical_crossentropy":
        p = p / p.sum(axis=1, keepdims=True)
        return -np.sum(y * np.log(np.clip(p, eps, 1 - eps)), axis=1)
    if name == "sparse_categorical_crossentropy":
        p = p / p.sum(axis=1, keepdims=True)
        return -np.log(np.clip(p[np.arange(len(y)), y], eps, 1 - eps))
    if name == "mean_squared_error":
        return np.mean((p - y) ** 2, axis=1)
    raise KeyError(name)


CASES = {
    "categorical_crossentropy": ("softmax", "one_hot"),
    "sparse_categorical_crossentropy": ("softmax", "labels"),
    "mean_squared_error": ("linear", "one_hot"),
}


@pytest.mark.parametrize("loss", list(CASES))
def test_weighted_loss_is_the_weighted_sum_over_the_batch_size(engine, loss):
    activation, targets = CASES[loss]
    x, labels, one_hot, w = _data()
    y = labels if targets == "labels" else one_hot
    model = _classifier(activation)
    model.compile("sgd", loss)
    p = model.predict(x, verbose=0).astype(np.float64)
    expected = np.sum(w * _per_sample_loss(loss, p, y)) / SAMPLES
    np.testing.assert_allclose(
        model.evaluate(x, y, sample_weight=w, batch_size=SAMPLES, verbose=0), expected, rtol=1e-5
    )
    # in batches: each batch's weighted sum over its size, averaged by batch size
    batches = [slice(0, 4), slice(4, 8), slice(8, SAMPLES)]
    per_batch = [
        np.sum(w[b] * _per_sample_loss(loss, p[b], y[b])) / len(w[b]) * len(w[b]) for b in batches
    ]
    np.testing.assert_allclose(
        model.evaluate(x, y, sample_weight=w, batch_size=4, verbose=0),
        sum(per_batch) / SAMPLES,
        rtol=1e-5,
    )


def _flat_weights(model) -> np.ndarray:
    return np.concatenate([w.ravel() for w in model.get_weights()])


def _set_flat(model, flat: np.ndarray) -> None:
    shapes = [w.shape for w in model.get_weights()]
    out, start = [], 0
    for shape in shapes:
        size = int(np.prod(shape))
        out.append(flat[start : start + size].reshape(shape))
        start += size
    model.set_weights(out)


@pytest.mark.parametrize("loss", list(CASES))
def test_weighted_gradient_matches_float64_finite_differences(loss):
    """One SGD step with learning rate 1 moves the weights by minus the gradient of the
    weighted loss; its central differences come from ``evaluate`` with the same weights."""
    dlcore.set_floatx("float64")
    activation, targets = CASES[loss]
    x, labels, one_hot, w = _data(seed=2)
    y = labels if targets == "labels" else one_hot
    model = _classifier(activation, seed=3)
    model.compile(optimizers.SGD(learning_rate=1.0), loss)
    start = _flat_weights(model)
    numeric = np.empty_like(start)
    h = 1e-6
    for i in range(start.size):
        values = []
        for sign in (1, -1):
            shifted = start.copy()
            shifted[i] += sign * h
            _set_flat(model, shifted)
            values.append(model.evaluate(x, y, sample_weight=w, batch_size=SAMPLES, verbose=0))
        numeric[i] = (values[0] - values[1]) / (2 * h)
    _set_flat(model, start)
    model.train_on_batch(x, y, sample_weight=w)
    analytic = start - _flat_weights(model)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("loss", list(CASES))
def test_weighted_training_agrees_on_every_engine(engine_name, loss):
    """Fit with sample weights, shuffled, on the engine under test and on numpy."""
    activation, targets = CASES[loss]
    x, labels, one_hot, w = _data(seed=4)
    y = labels if targets == "labels" else one_hot
    results = []
    for name in (engine_name, "numpy"):
        with dlcore.use_backend(name):
            model = _classifier(activation, seed=5)
            model.compile(optimizers.Adam(learning_rate=0.05), loss, metrics=["accuracy"])
            dlcore.set_random_seed(6)
            history = model.fit(
                x, y, sample_weight=w, batch_size=4, epochs=2, verbose=0, validation_data=(x, y, w)
            )
            results.append((history.history, model.get_weights()))
    (mine, mine_w), (reference, reference_w) = results
    for key, values in reference.items():
        np.testing.assert_allclose(mine[key], values, rtol=1e-4, atol=1e-6, err_msg=key)
    for a, b in zip(mine_w, reference_w):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_unit_weights_change_nothing():
    x, _, y, _ = _data(seed=7)
    runs = []
    for weights in (None, np.ones(SAMPLES)):
        model = _classifier(seed=8)
        model.compile("adam", "categorical_crossentropy", metrics=["accuracy"])
        dlcore.set_random_seed(9)
        history = model.fit(x, y, sample_weight=weights, batch_size=4, epochs=2, verbose=0)
        runs.append((history.history, model.get_weights()))
    for key in runs[0][0]:
        np.testing.assert_allclose(runs[0][0][key], runs[1][0][key], rtol=1e-6)
    for a, b in zip(runs[0][1], runs[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("targets", ["labels", "one_hot"])
def test_class_weight_equals_the_sample_weights_of_the_classes(targets):
    x, labels, one_hot, _ = _data(seed=10)
    y = labels if targets == "labels" else one_hot
    loss = "sparse_categorical_crossentropy" if targets == "labels" else "categorical_crossentropy"
    class_weight = {0: 0.5, 1: 2.0, 2: 3.0}
    runs = []
    for kwargs in (
        {"class_weight": class_weight},
        {"sample_weight": np.array([class_weight[c] for c in labels])},
    ):
        model = _classifier(seed=11)
        model.compile("sgd", loss)
        history = model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0, **kwargs)
        runs.append((history.history["loss"], model.get_weights()))
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=1e-6)
    for a, b in zip(runs[0][1], runs[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_binary_class_weight_reads_the_rounded_target():
    rng = np.random.default_rng(12)
    x = rng.normal(size=(SAMPLES, FEATURES))
    y = rng.integers(0, 2, size=(SAMPLES, 1)).astype(float)
    model = _classifier("sigmoid", units=1, seed=13)
    model.compile("sgd", "binary_crossentropy")
    by_class = model.evaluate(x, y, batch_size=SAMPLES, verbose=0)  # unweighted reference
    weights = np.where(y[:, 0] == 1, 4.0, 0.5)
    weighted = model.evaluate(x, y, sample_weight=weights, batch_size=SAMPLES, verbose=0)
    assert weighted != pytest.approx(by_class)
    model.compile("sgd", "binary_crossentropy")  # the loss is of the weights before the step
    logs = model.train_on_batch(x, y, class_weight={0: 0.5, 1: 4.0}, return_dict=True)
    assert logs["loss"] == pytest.approx(weighted, rel=1e-6)


def test_multi_output_weights_per_output_and_for_all():
    dlcore.set_random_seed(14)
    inputs = Input((FEATURES,))
    hidden = Dense(5, activation="tanh")(inputs)
    first = Dense(3, activation="softmax", name="first")(hidden)
    second = Dense(2, name="second")(hidden)
    model = Model(inputs, [first, second])
    model.compile("sgd", ["categorical_crossentropy", "mse"], loss_weights=[1.0, 0.5])
    x, _, y1, w = _data(seed=15)
    y2 = np.random.default_rng(16).normal(size=(SAMPLES, 2))
    p1, p2 = model.predict(x, verbose=0)
    w2 = w[::-1].copy()
    logs = model.evaluate(
        x,
        [y1, y2],
        sample_weight={"first": w, "second": w2},
        batch_size=SAMPLES,
        return_dict=True,
        verbose=0,
    )
    first_loss = np.sum(w * _per_sample_loss("categorical_crossentropy", p1, y1)) / SAMPLES
    second_loss = np.sum(w2 * _per_sample_loss("mean_squared_error", p2, y2)) / SAMPLES
    np.testing.assert_allclose(logs["first_loss"], first_loss, rtol=1e-5)
    np.testing.assert_allclose(logs["second_loss"], second_loss, rtol=1e-5)
    np.testing.assert_allclose(logs["loss"], first_loss + 0.5 * second_loss, rtol=1e-5)
    shared = model.evaluate(
        x, [y1, y2], sample_weight=w, batch_size=SAMPLES, return_dict=True, verbose=0
    )
    np.testing.assert_allclose(shared["first_loss"], first_loss, rtol=1e-5)


def test_validation_split_splits_the_weights_too():
    x, _, y, w = _data(seed=17)
    model = _classifier(seed=18)
    model.compile("sgd", "categorical_crossentropy")
    history = model.fit(x, y, sample_weight=w, validation_split=0.3, epochs=1, verbose=0)
    split = int(np.floor(SAMPLES * 0.7))
    expected = model.evaluate(x[split:], y[split:], sample_weight=w[split:], verbose=0)
    np.testing.assert_allclose(history.history["val_loss"][0], expected, rtol=1e-6)


# ---------------------------------------------------------------------- refused
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"sample_weight": -np.ones(SAMPLES)}, ValueError, "non-negative weights.*sample 0"),
        ({"sample_weight": np.ones(SAMPLES - 1)}, ValueError, r"expected shape \(11,\)"),
        ({"sample_weight": np.ones((SAMPLES, 2))}, ValueError, r"received shape \(11, 2\)"),
        ({"sample_weight": np.r_[np.ones(SAMPLES - 1), np.nan]}, ValueError, "finite.*sample 10"),
        ({"sample_weight": np.array(["a"] * SAMPLES)}, TypeError, "real numbers"),
        (
            {"sample_weight": np.ones(SAMPLES), "class_weight": {0: 1, 1: 1, 2: 1}},
            ValueError,
            "not both",
        ),
        ({"class_weight": {0: 1.0, 1: 2.0}}, ValueError, r"no weight for class\(es\) \[2\]"),
        ({"class_weight": [1.0, 2.0, 3.0]}, TypeError, "expected a dict"),
        ({"class_weight": {0: 1, 1: -2, 2: 1}}, ValueError, "non-negative finite weight"),
        ({"class_weight": {"a": 1}}, ValueError, "class indices"),
    ],
)
def test_bad_weights_are_refused_before_training(kwargs, error, match):
    x, _, y, _ = _data(seed=19)
    model = _classifier(seed=20)
    model.compile("sgd", "categorical_crossentropy")
    before = model.get_weights()
    with pytest.raises(error, match=match):
        model.fit(x, y, epochs=1, verbose=0, **kwargs)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_a_refused_weight_leaves_an_unbuilt_model_unbuilt():
    x, _, y, _ = _data(seed=21)
    model = Sequential([Dense(3, activation="softmax")])
    model.compile("sgd", "categorical_crossentropy")
    with pytest.raises(ValueError, match="non-negative"):
        model.fit(x, y, sample_weight=-np.ones(SAMPLES), verbose=0)
    assert not model.built


def test_bad_validation_weights_and_multi_output_class_weight_are_refused():
    x, _, y, w = _data(seed=22)
    model = _classifier(seed=23)
    model.compile("sgd", "categorical_crossentropy")
    with pytest.raises(ValueError, match="w_val expected non-negative"):
        model.fit(x, y, validation_data=(x, y, -w), verbose=0)
    with pytest.raises(ValueError, match=r"\(x_val, y_val, w_val\)"):
        model.fit(x, y, validation_data=(x, y, w, w), verbose=0)
    inputs = Input((FEATURES,))
    model = Model(inputs, [Dense(3, activation="softmax")(inputs), Dense(3)(inputs)])
    model.compile("sgd", ["categorical_crossentropy", "mse"])
    with pytest.raises(ValueError, match="class_weight is supported for models with one output"):
        model.fit(x, [y, y], class_weight={0: 1, 1: 1, 2: 1}, verbose=0)
    with pytest.raises(ValueError, match="one array per output"):
        model.fit(x, [y, y], sample_weight=[w, w, w], verbose=0)


# ---------------------------------------------------------------------- engine operations
def test_engine_weighting_operations_match_numpy(engine, to_host):
    rng = np.random.default_rng(24)
    p = rng.uniform(0.05, 1.0, size=(7, 3))
    p /= p.sum(axis=1, keepdims=True)
    y = np.eye(3)[rng.integers(0, 3, 7)]
    w = rng.uniform(0.0, 2.0, 7)
    dtype = dlcore.floatx()
    P, Y, W = (engine.asarray(a, dtype=dtype) for a in (p, y, w))
    values = engine.per_sample_loss("categorical_crossentropy", P, Y)
    expected = _per_sample_loss("categorical_crossentropy", p, y)
    np.testing.assert_allclose(to_host(values), expected, rtol=1e-5)
    total = float(to_host(engine.weighted_sum(values, W, scale=0.5)))
    np.testing.assert_allclose(total, 0.5 * np.sum(w * expected), rtol=1e-5)
    np.testing.assert_allclose(float(to_host(engine.weighted_sum(W))), w.sum(), rtol=1e-6)
    np.testing.assert_allclose(to_host(engine.scale_rows(P, W)), p * w[:, None], rtol=1e-6)
