"""Optimizers: update rules against NumPy references, Keras defaults and values, configs, state."""

from __future__ import annotations

import inspect
import json
import math
import re

import numpy as np
import pytest
from dlcore.backends import xp_optimizers
from dlcore.backends.names import OPTIMIZER_RULES

from dlcore import backends, optimizers
from dlcore.optimizers import SGD, Adagrad, Adam, Adamax, Nadam, RMSprop


def _numpy_engine():
    return backends.get("numpy")


def _strict_engine():
    return backends.get("array_api_strict")


# ---------------------------------------------------------------------- references
# Each rule written out in its textbook form, independently of backends/xp_optimizers.py.


def ref_sgd(w, grads, *, learning_rate, momentum, nesterov):
    velocity = np.zeros_like(w)
    for g in grads:
        if momentum == 0:
            w = w - learning_rate * g
            continue
        velocity = momentum * velocity - learning_rate * g
        w = w + (momentum * velocity - learning_rate * g if nesterov else velocity)
    return w


def ref_adam(w, grads, *, learning_rate, beta_1, beta_2, epsilon, amsgrad):
    m, v, v_max = np.zeros_like(w), np.zeros_like(w), np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        m = beta_1 * m + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * g**2
        v_max = np.maximum(v_max, v)
        second = v_max if amsgrad else v
        step_size = learning_rate * math.sqrt(1 - beta_2**t) / (1 - beta_1**t)
        w = w - step_size * m / (np.sqrt(second) + epsilon)
    return w


def ref_rmsprop(w, grads, *, learning_rate, rho, momentum, epsilon, centered):
    mean_square, mean, buffer = np.zeros_like(w), np.zeros_like(w), np.zeros_like(w)
    for g in grads:
        mean_square = rho * mean_square + (1 - rho) * g**2
        mean = rho * mean + (1 - rho) * g
        variance = mean_square - mean**2 if centered else mean_square
        increment = learning_rate * g / np.sqrt(variance + epsilon)
        if momentum > 0:
            buffer = momentum * buffer + increment
            w = w - buffer
        else:
            w = w - increment
    return w


def ref_adagrad(w, grads, *, learning_rate, initial_accumulator_value, epsilon):
    total = np.full_like(w, initial_accumulator_value)
    for g in grads:
        total = total + g**2
        w = w - learning_rate * g / np.sqrt(total + epsilon)
    return w


def ref_adamax(w, grads, *, learning_rate, beta_1, beta_2, epsilon):
    m, u = np.zeros_like(w), np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        m = beta_1 * m + (1 - beta_1) * g
        u = np.maximum(beta_2 * u, np.abs(g))
        w = w - learning_rate / (1 - beta_1**t) * m / (u + epsilon)
    return w


def ref_nadam(w, grads, *, learning_rate, beta_1, beta_2, epsilon):
    mu = [beta_1 * (1 - 0.5 * 0.96**t) for t in range(len(grads) + 2)]  # mu[t] for step t
    m, v = np.zeros_like(w), np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        m = beta_1 * m + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * g**2
        product_t = math.prod(mu[1 : t + 1])
        product_next = math.prod(mu[1 : t + 2])
        m_hat = mu[t + 1] * m / (1 - product_next) + (1 - mu[t]) * g / (1 - product_t)
        v_hat = v / (1 - beta_2**t)
        w = w - learning_rate * m_hat / (np.sqrt(v_hat) + epsilon)
    return w


# (id, class, reference, hyperparameters), the hyperparameters chosen distinct from each
# other so that a swapped argument changes the result.
SGD_HYPER = dict(learning_rate=0.07, momentum=0.8)
ADAM_HYPER = dict(learning_rate=0.03, beta_1=0.7, beta_2=0.9, epsilon=1e-3)
RMSPROP_HYPER = dict(learning_rate=0.02, rho=0.8, epsilon=1e-3)
CASES = [
    ("sgd", SGD, ref_sgd, {**SGD_HYPER, "momentum": 0.0, "nesterov": False}),
    ("sgd-momentum", SGD, ref_sgd, {**SGD_HYPER, "nesterov": False}),
    ("sgd-nesterov", SGD, ref_sgd, {**SGD_HYPER, "nesterov": True}),
    ("adam", Adam, ref_adam, {**ADAM_HYPER, "amsgrad": False}),
    ("adam-amsgrad", Adam, ref_adam, {**ADAM_HYPER, "amsgrad": True}),
    (
        "rmsprop",
        RMSprop,
        ref_rmsprop,
        {**RMSPROP_HYPER, "momentum": 0.0, "centered": False},
    ),
    (
        "rmsprop-momentum",
        RMSprop,
        ref_rmsprop,
        {**RMSPROP_HYPER, "momentum": 0.6, "centered": False},
    ),
    (
        "rmsprop-centered",
        RMSprop,
        ref_rmsprop,
        {**RMSPROP_HYPER, "momentum": 0.0, "centered": True},
    ),
    (
        "rmsprop-centered-momentum",
        RMSprop,
        ref_rmsprop,
        {**RMSPROP_HYPER, "momentum": 0.6, "centered": True},
    ),
    (
        "adagrad",
        Adagrad,
        ref_adagrad,
        dict(learning_rate=0.2, initial_accumulator_value=0.3, epsilon=1e-3),
    ),
    (
        "adamax",
        Adamax,
        ref_adamax,
        dict(learning_rate=0.04, beta_1=0.75, beta_2=0.85, epsilon=1e-3),
    ),
    (
        "nadam",
        Nadam,
        ref_nadam,
        dict(learning_rate=0.05, beta_1=0.6, beta_2=0.8, epsilon=1e-3),
    ),
]
CASE_IDS = [case[0] for case in CASES]

P = 7
STEPS = 5


def _problem():
    """Initial weights ``(P,)`` and ``STEPS`` gradients whose scale rises and falls,
    so that AMSGrad's and Adamax's maxima take both branches; one gradient is 0."""
    rng = np.random.default_rng(1234)
    w0 = rng.standard_normal(P)
    scales = [3.0, 0.1, 2.0, 0.05, 1.0]
    grads = [scale * rng.standard_normal(P) for scale in scales]
    grads[1][2] = 0.0
    return w0, grads


def _run(engine, optimizer, w0, grads, dtype="float64"):
    params = engine.asarray(w0.copy(), dtype=dtype)
    optimizer.build(engine, w0.size, dtype)
    for g in grads:
        optimizer.apply(engine, params, engine.asarray(g, dtype=dtype))
    return params


# ---------------------------------------------------------------------- update rules
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_five_steps_match_reference(engine, case):
    _, cls, reference, hyper = case
    w0, grads = _problem()
    optimizer = cls(**hyper)
    params = _run(engine, optimizer, w0, grads)
    expected = reference(w0.copy(), grads, **hyper)
    np.testing.assert_allclose(engine.to_numpy(params), expected, rtol=1e-12, atol=1e-14)
    assert optimizer.iterations == STEPS


def test_each_option_changes_the_reference_result():
    """The test problem exercises every branch: options give different results."""
    w0, grads = _problem()
    results = {name: reference(w0.copy(), grads, **hyper) for name, _, reference, hyper in CASES}
    names = list(results)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            assert not np.allclose(results[first], results[second], rtol=1e-6), (first, second)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_update_is_in_place_and_leaves_grads_alone(engine, case):
    _, cls, _, hyper = case
    w0, grads = _problem()
    params = engine.asarray(w0.copy(), dtype="float64")
    view = params[2:5]
    g = engine.asarray(grads[0], dtype="float64")
    optimizer = cls(**hyper)
    optimizer.build(engine, P, "float64")
    optimizer.apply(engine, params, g)
    after = engine.to_numpy(params)
    assert not np.allclose(after, w0)
    np.testing.assert_array_equal(engine.to_numpy(view), after[2:5])
    np.testing.assert_array_equal(engine.to_numpy(g), grads[0])


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_float32_stays_float32(engine, case):
    _, cls, reference, hyper = case
    w0, grads = _problem()
    optimizer = cls(**hyper)
    params = _run(engine, optimizer, w0, grads, dtype="float32")
    result = engine.to_numpy(params)
    assert result.dtype == np.float32
    for name, value in optimizer.get_state().items():
        if name not in ("iterations", "mu_product"):
            assert value.dtype == np.float32, name
    np.testing.assert_allclose(result, reference(w0.copy(), grads, **hyper), rtol=2e-4, atol=1e-5)


# Values from Keras 3's own optimizer tests (keras/src/optimizers/*_test.py): one step of
# learning rate 0.5 from w = [1, 2, 3, 4] with g = [1, 6, 7, 2] ...
KERAS_SINGLE_STEP = [
    (SGD, [0.5, -1.0, -0.5, 3.0]),
    (Adam, [0.5, 1.5, 2.5, 3.5]),
    (RMSprop, [-0.5811, 0.4189, 1.4189, 2.4189]),
    (Adagrad, [0.5233, 1.5007, 2.5005, 3.5061]),
    (Adamax, [0.5, 1.5, 2.5, 3.5]),
    (Nadam, [0.4686, 1.4686, 2.4686, 3.4686]),
]

# ... and from w = ones(10), one step with g = 0.01 then four with g = [0.1, 0.2, ..., 1.0].
KERAS_GOLDEN = [
    (
        SGD(nesterov=True),
        [0.9959, 0.9919, 0.9879, 0.9839, 0.9799, 0.9759, 0.9719, 0.9679, 0.9639, 0.9599],
    ),
    (Adam(amsgrad=True), [0.9955] * 10),
    (RMSprop(centered=True), [0.9864] * 10),
    (
        Adagrad(learning_rate=0.2, initial_accumulator_value=0.3, epsilon=1e-6),
        [0.856, 0.7422, 0.6604, 0.6037, 0.5644, 0.5367, 0.5168, 0.5021, 0.491, 0.4825],
    ),
    (
        Adamax(learning_rate=0.2, beta_1=0.85, beta_2=0.95, epsilon=1e-6),
        [0.1933, 0.204, 0.2076, 0.2094, 0.2105, 0.2112, 0.2117, 0.2121, 0.2124, 0.2126],
    ),
    (
        Nadam(learning_rate=0.5, beta_1=0.5, beta_2=0.67, epsilon=1e-5),
        [-1.7492, -1.7478, -1.7469, -1.7464, -1.7461, -1.7459, -1.7457, -1.7456, -1.7455, -1.7454],
    ),
]


@pytest.mark.parametrize(
    "cls, expected", KERAS_SINGLE_STEP, ids=[cls.__name__ for cls, _ in KERAS_SINGLE_STEP]
)
def test_single_step_matches_keras(cls, expected):
    engine = _numpy_engine()
    w0 = np.array([1.0, 2.0, 3.0, 4.0])
    params = _run(engine, cls(learning_rate=0.5), w0, [np.array([1.0, 6.0, 7.0, 2.0])])
    np.testing.assert_allclose(engine.to_numpy(params), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "optimizer, expected", KERAS_GOLDEN, ids=[type(opt).__name__ for opt, _ in KERAS_GOLDEN]
)
def test_five_steps_match_keras_golden_values(optimizer, expected):
    engine = _numpy_engine()
    grads = [np.full(10, 0.01)] + [np.arange(1, 11) / 10] * 4
    params = _run(engine, optimizer, np.ones(10), grads)
    np.testing.assert_allclose(engine.to_numpy(params), expected, rtol=5e-4, atol=5e-4)


def test_every_rule_has_one_optimizer_and_a_reference_step():
    assert sorted(xp_optimizers.STEPS) == sorted(OPTIMIZER_RULES)
    rules = [cls.rule for cls in optimizers._CLASSES.values()]
    assert sorted(rules) == sorted(OPTIMIZER_RULES)
    for step in xp_optimizers.STEPS.values():
        names = list(inspect.signature(step).parameters)
        assert names == ["xp", "params", "grads", "slots", "h"], step.__name__


# ---------------------------------------------------------------------- segments
SEGMENTS = [(0, 2), (2, 4), (6, 6), (7, 11)]  # adjacent, empty and separate ranges
INSIDE = np.r_[0:4, 7:11]


def _long(array: np.ndarray, size: int = 13) -> np.ndarray:
    return np.resize(array, size)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_segments_update_only_their_ranges(engine, case):
    _, cls, reference, hyper = case
    w0, grads = _problem()
    w0, grads = _long(w0), [_long(g) for g in grads]
    optimizer = cls(**hyper)
    params = engine.asarray(w0.copy(), dtype="float64")
    optimizer.build(engine, w0.size, "float64")
    initial = optimizer.get_state()
    for g in grads:
        optimizer.apply(engine, params, engine.asarray(g, dtype="float64"), segments=SEGMENTS)
    assert optimizer.iterations == STEPS
    result = engine.to_numpy(params)
    outside = np.setdiff1d(np.arange(w0.size), INSIDE)
    np.testing.assert_array_equal(result[outside], w0[outside])
    expected = reference(w0[INSIDE], [g[INSIDE] for g in grads], **hyper)
    np.testing.assert_allclose(result[INSIDE], expected, rtol=1e-12, atol=1e-14)
    for name, value in optimizer.get_state().items():
        if name not in ("iterations", "mu_product"):
            np.testing.assert_array_equal(value[outside], initial[name][outside], err_msg=name)
            assert not np.array_equal(value[INSIDE], initial[name][INSIDE]), name


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_one_segment_over_the_whole_buffer_is_the_plain_step(engine, case):
    _, cls, _, hyper = case
    w0, grads = _problem()
    plain = engine.to_numpy(_run(engine, cls(**hyper), w0, grads))
    optimizer = cls(**hyper)
    params = engine.asarray(w0.copy(), dtype="float64")
    optimizer.build(engine, P, "float64")
    for g in grads:
        optimizer.apply(engine, params, engine.asarray(g, dtype="float64"), segments=[(0, P)])
    np.testing.assert_array_equal(engine.to_numpy(params), plain)


def test_no_segment_leaves_everything_but_the_step_count():
    engine = _numpy_engine()
    w0, grads = _problem()
    optimizer = Nadam()
    params = engine.asarray(w0.copy(), dtype="float64")
    optimizer.build(engine, P, "float64")
    optimizer.apply(engine, params, engine.asarray(grads[0], dtype="float64"), segments=[])
    np.testing.assert_array_equal(engine.to_numpy(params), w0)
    state = optimizer.get_state()
    assert int(state["iterations"]) == 1
    np.testing.assert_array_equal(state["m"], np.zeros(P))
    # the momentum schedule advances with the step count, as in an unfrozen step
    assert float(state["mu_product"]) == pytest.approx(0.9 * (1 - 0.5 * 0.96))


@pytest.mark.parametrize(
    "segments",
    [[(0, 8)], [(-1, 3)], [(4, 2)], [(0, 4), (3, 6)], [(3, 5), (0, 2)], [(0.0, 2)], [(1, 2, 3)]],
    ids=["past-end", "negative", "reversed", "overlapping", "unordered", "float", "triple"],
)
def test_bad_segments(segments):
    engine = _numpy_engine()
    optimizer = Adam()
    params = engine.asarray(np.ones(P), dtype="float64")
    optimizer.build(engine, P, "float64")
    message = (
        "Adam.apply expected segments to be (start, stop) ranges with 0 <= start <= stop "
        f"<= 7, in increasing order and not overlapping, received segments={segments!r}"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        optimizer.apply(engine, params, params, segments=segments)
    assert optimizer.iterations == 0
    np.testing.assert_array_equal(engine.to_numpy(params), np.ones(P))


# ---------------------------------------------------------------------- construction
KERAS_DEFAULTS = {
    "SGD": {"learning_rate": 0.01, "momentum": 0.0, "nesterov": False},
    "Adam": {
        "learning_rate": 0.001,
        "beta_1": 0.9,
        "beta_2": 0.999,
        "epsilon": 1e-7,
        "amsgrad": False,
    },
    "RMSprop": {
        "learning_rate": 0.001,
        "rho": 0.9,
        "momentum": 0.0,
        "epsilon": 1e-7,
        "centered": False,
    },
    "Adagrad": {"learning_rate": 0.001, "initial_accumulator_value": 0.1, "epsilon": 1e-7},
    "Adamax": {"learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7},
    "Nadam": {"learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7},
}


@pytest.mark.parametrize("name", list(KERAS_DEFAULTS))
def test_defaults_match_keras(name):
    optimizer = getattr(optimizers, name)()
    assert optimizer.get_config() == {"name": name, **KERAS_DEFAULTS[name]}
    assert optimizer.iterations == 0
    assert not optimizer.built


@pytest.mark.parametrize("name", list(KERAS_DEFAULTS))
def test_lr_alias(name):
    cls = getattr(optimizers, name)
    optimizer = cls(lr=0.25)
    assert optimizer.learning_rate == 0.25
    assert cls(0.25).learning_rate == 0.25
    both = "expected one of learning_rate and its Keras 2 alias lr, received both"
    with pytest.raises(ValueError, match=f"{name} {both}: learning_rate=0.1, lr=0.2"):
        cls(learning_rate=0.1, lr=0.2)
    with pytest.raises(ValueError, match=r"received learning_rate=-0\.1"):
        cls(lr=-0.1)


def test_int_learning_rate():
    optimizer = SGD(lr=1)
    assert optimizer.learning_rate == 1.0 and isinstance(optimizer.learning_rate, float)
    engine = _numpy_engine()
    params = _run(engine, optimizer, np.array([1.0, 2.0]), [np.array([0.5, -3.0])])
    np.testing.assert_array_equal(engine.to_numpy(params), [0.5, 5.0])
    assert json.dumps(optimizer.get_config()) == (
        '{"name": "SGD", "learning_rate": 1.0, "momentum": 0.0, "nesterov": false}'
    )


def test_learning_rate_is_settable():
    optimizer = Adam()
    optimizer.learning_rate = 3
    assert optimizer.learning_rate == 3.0 and isinstance(optimizer.learning_rate, float)
    assert optimizer.get_config()["learning_rate"] == 3.0
    message = "Adam expected learning_rate to be a positive number, received learning_rate=-1"
    with pytest.raises(ValueError, match=message):
        optimizer.learning_rate = -1
    assert optimizer.learning_rate == 3.0


def test_learning_rate_change_applies_to_the_next_step():
    engine = _numpy_engine()
    optimizer = SGD(learning_rate=0.1)
    params = _run(engine, optimizer, np.array([1.0]), [np.array([1.0])])
    optimizer.learning_rate = 0.5
    optimizer.apply(engine, params, engine.asarray(np.array([1.0]), dtype="float64"))
    np.testing.assert_allclose(engine.to_numpy(params), [0.4])


UNIT = "a number in [0, 1)"
INVALID = [
    (SGD, "learning_rate", 0, "a positive number"),
    (SGD, "learning_rate", -0.1, "a positive number"),
    (SGD, "learning_rate", "0.1", "a positive number"),
    (Adam, "learning_rate", float("nan"), "a positive number"),
    (Adam, "learning_rate", True, "a positive number"),
    (SGD, "momentum", 1.5, "a number in [0, 1]"),
    (SGD, "momentum", -0.1, "a number in [0, 1]"),
    (SGD, "nesterov", "yes", "True or False"),
    (Adam, "beta_1", 1.0, UNIT),
    (Adam, "beta_2", -0.5, UNIT),
    (Adam, "epsilon", -1e-7, "a non-negative number"),
    (Adam, "amsgrad", 1, "True or False"),
    (RMSprop, "rho", 1, UNIT),
    (RMSprop, "momentum", 2, "a number in [0, 1]"),
    (RMSprop, "epsilon", None, "a non-negative number"),
    (RMSprop, "centered", None, "True or False"),
    (Adagrad, "initial_accumulator_value", -1, "a non-negative number"),
    (Adagrad, "epsilon", float("inf"), "a non-negative number"),
    (Adamax, "beta_2", 1.0, UNIT),
    (Nadam, "beta_1", 1.5, UNIT),
]


@pytest.mark.parametrize("cls, name, value, expected", INVALID)
def test_invalid_values(cls, name, value, expected):
    message = f"{cls.__name__} expected {name} to be {expected}, received {name}={value!r}"
    with pytest.raises(ValueError, match=re.escape(message)):
        cls(**{name: value})


def test_boundary_values_are_accepted():
    assert SGD(momentum=1).momentum == 1.0
    assert Adam(beta_1=0, epsilon=0).epsilon == 0.0
    assert Adagrad(initial_accumulator_value=0).initial_accumulator_value == 0.0
    assert SGD(learning_rate=np.float32(0.5)).learning_rate == 0.5


@pytest.mark.parametrize(
    "cls, valid",
    [
        (SGD, "learning_rate, momentum, nesterov"),
        (Adam, "learning_rate, beta_1, beta_2, epsilon, amsgrad"),
        (RMSprop, "learning_rate, rho, momentum, epsilon, centered"),
        (Adagrad, "learning_rate, initial_accumulator_value, epsilon"),
        (Adamax, "learning_rate, beta_1, beta_2, epsilon"),
        (Nadam, "learning_rate, beta_1, beta_2, epsilon"),
    ],
)
def test_unknown_keyword(cls, valid):
    message = (
        f"{cls.__name__} got unexpected keyword argument(s) 'momentun', 'decay'; "
        f"valid arguments: {valid} (and lr, the Keras 2 alias of learning_rate)"
    )
    with pytest.raises(TypeError, match=re.escape(message)):
        cls(momentun=0.9, decay=1e-6)


# ---------------------------------------------------------------------- get, configs
@pytest.mark.parametrize("name", ["sgd", "Adam", "RMSPROP", "adagrad", "AdaMax", "nadam"])
def test_get_by_name(name):
    optimizer = optimizers.get(name)
    assert type(optimizer).__name__.lower() == name.lower()
    assert optimizer.get_config() == type(optimizer)().get_config()


def test_get_instance_is_returned_as_is():
    optimizer = RMSprop(momentum=0.5)
    assert optimizers.get(optimizer) is optimizer


def test_get_by_config():
    config = {"learning_rate": 0.01, "amsgrad": True}
    optimizer = optimizers.get({"class_name": "Adam", "config": config})
    assert isinstance(optimizer, Adam)
    assert optimizer.learning_rate == 0.01 and optimizer.amsgrad and optimizer.beta_1 == 0.9
    sgd = SGD(momentum=0.5, nesterov=True)
    copy = optimizers.get({"name": "sgd", "config": sgd.get_config()})
    assert isinstance(copy, SGD) and copy.get_config() == sgd.get_config()
    assert isinstance(optimizers.get({"class_name": "Nadam"}), Nadam)


def test_get_errors():
    available = "available: adadelta, adagrad, adam, adamax, adamw, ftrl, lion, nadam, rmsprop, sgd"
    with pytest.raises(ValueError, match=f"unknown optimizer 'foo'; {available}"):
        optimizers.get("foo")
    with pytest.raises(ValueError, match=f"unknown optimizer 'adafactor'; {available}"):
        optimizers.get({"class_name": "adafactor", "config": {}})
    with pytest.raises(ValueError, match="expected a 'class_name' entry"):
        optimizers.get({"config": {"learning_rate": 0.1}})
    with pytest.raises(TypeError, match="expected an optimizer name .* received 3"):
        optimizers.get(3)
    with pytest.raises(TypeError, match="Adam got unexpected keyword argument"):
        optimizers.get({"class_name": "adam", "config": {"momentum": 0.9}})


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_config_round_trip(case):
    _, cls, _, hyper = case
    optimizer = cls(**hyper)
    config = optimizer.get_config()
    assert config == {"name": cls.__name__, **hyper}
    assert json.loads(json.dumps(config)) == config
    assert cls.from_config(config).get_config() == config
    assert optimizers.get({"class_name": config["name"], "config": config}).get_config() == config


# ---------------------------------------------------------------------- state
EXPECTED_SLOTS = {
    "sgd": [],
    "sgd-momentum": ["velocity"],
    "sgd-nesterov": ["velocity"],
    "adam": ["m", "v"],
    "adam-amsgrad": ["m", "v", "v_max"],
    "rmsprop": ["velocity"],
    "rmsprop-momentum": ["velocity", "momentum_buffer"],
    "rmsprop-centered": ["velocity", "average_grad"],
    "rmsprop-centered-momentum": ["velocity", "average_grad", "momentum_buffer"],
    "adagrad": ["accumulator"],
    "adamax": ["m", "u"],
    "nadam": ["mu_product", "m", "v"],
}


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_state_round_trip_continues_identically(engine, case):
    name, cls, _, hyper = case
    w0, grads = _problem()
    uninterrupted = engine.to_numpy(_run(engine, cls(**hyper), w0, grads))

    first = cls(**hyper)
    params = _run(engine, first, w0, grads[:2])
    state = first.get_state()
    assert sorted(state) == sorted(["iterations", *EXPECTED_SLOTS[name]])
    assert int(state["iterations"]) == 2
    for key, value in state.items():
        assert isinstance(value, np.ndarray), key
        if key not in ("iterations", "mu_product"):
            assert value.shape == (P,) and value.dtype == np.float64, key

    second = cls.from_config(first.get_config())
    second.build(engine, P, "float64")
    second.set_state(engine, state, "float64")
    assert second.iterations == 2
    resumed = engine.asarray(engine.to_numpy(params), dtype="float64")
    for g in grads[2:]:
        second.apply(engine, resumed, engine.asarray(g, dtype="float64"))
    np.testing.assert_array_equal(engine.to_numpy(resumed), uninterrupted)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_set_state_before_build_then_build_keeps_it(case):
    _, cls, _, hyper = case
    engine = _numpy_engine()
    w0, grads = _problem()
    uninterrupted = engine.to_numpy(_run(engine, cls(**hyper), w0, grads))
    first = cls(**hyper)
    params = _run(engine, first, w0, grads[:3])
    second = cls(**hyper)
    second.set_state(engine, first.get_state(), "float64")
    second.build(engine, P, "float64")
    for g in grads[3:]:
        second.apply(engine, params, engine.asarray(g, dtype="float64"))
    np.testing.assert_array_equal(engine.to_numpy(params), uninterrupted)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_to_engine_moves_the_state(case):
    _, cls, reference, hyper = case
    w0, grads = _problem()
    host, device = _numpy_engine(), _strict_engine()
    optimizer = cls(**hyper)
    params = _run(host, optimizer, w0, grads[:2])
    optimizer.to_engine(device)
    moved = device.asarray(host.to_numpy(params), dtype="float64")
    for g in grads[2:]:
        optimizer.apply(device, moved, device.asarray(g, dtype="float64"))
    np.testing.assert_allclose(
        device.to_numpy(moved), reference(w0.copy(), grads, **hyper), rtol=1e-12, atol=1e-14
    )


def test_build_again_keeps_state_and_checks_size():
    engine = _numpy_engine()
    w0, grads = _problem()
    optimizer = Adam()
    _run(engine, optimizer, w0, grads[:2])
    before = optimizer.get_state()
    optimizer.build(engine, P, "float64")
    after = optimizer.get_state()
    assert optimizer.iterations == 2
    for key in before:
        np.testing.assert_array_equal(before[key], after[key])
    message = "Adam was built for 7 float64 parameters, received 9 float64 parameters"
    with pytest.raises(ValueError, match=message):
        optimizer.build(engine, 9, "float64")


def test_adagrad_accumulator_starts_at_initial_value():
    engine = _strict_engine()
    optimizer = Adagrad(initial_accumulator_value=0.3)
    optimizer.build(engine, 4, "float32")
    accumulator = optimizer.get_state()["accumulator"]
    np.testing.assert_array_equal(accumulator, np.full(4, 0.3, dtype=np.float32))


def test_apply_before_build():
    engine = _numpy_engine()
    zeros = engine.zeros((2,), dtype="float64")
    with pytest.raises(RuntimeError, match=r"SGD\.apply called before build"):
        SGD().apply(engine, zeros, zeros)


def test_set_state_errors():
    engine = _numpy_engine()
    w0, grads = _problem()
    adam = Adam()
    _run(engine, adam, w0, grads[:1])
    state = adam.get_state()

    other = Adam()
    other.build(engine, P, "float64")
    message = r"Adam state slot 'v' expected shape \(7,\), received shape \(5,\)"
    with pytest.raises(ValueError, match=message):
        other.set_state(engine, {**state, "v": np.zeros(5)}, "float64")
    with pytest.raises(ValueError, match="Adam state expected an entry 'm', received none"):
        other.set_state(engine, {k: v for k, v in state.items() if k != "m"}, "float64")
    with pytest.raises(ValueError, match=r"Adam state has unexpected entries \['v_max'\]"):
        other.set_state(engine, {**state, "v_max": np.zeros(P)}, "float64")
    with pytest.raises(ValueError, match="expected iterations to be a non-negative integer"):
        other.set_state(engine, {**state, "iterations": np.asarray(-1)}, "float64")
    with pytest.raises(ValueError, match="expected a state dict, received list"):
        other.set_state(engine, [], "float64")
    assert other.iterations == 0  # nothing restored by a failed call

    unbuilt = Adam()
    with pytest.raises(ValueError, match=r"slot 'v' expected shape \(7,\), received shape \(6,\)"):
        unbuilt.set_state(engine, {**state, "v": np.zeros(6)}, "float64")

    nadam = Nadam()
    nadam_state = {"iterations": np.asarray(1), "m": np.zeros(3), "v": np.zeros(3)}
    with pytest.raises(ValueError, match="Nadam state expected an entry 'mu_product'"):
        nadam.set_state(engine, nadam_state, "float64")


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_state_saved_before_the_first_step_resets(case):
    _, cls, reference, hyper = case
    engine = _numpy_engine()
    w0, grads = _problem()
    fresh_state = cls(**hyper).get_state()
    assert int(fresh_state["iterations"]) == 0
    optimizer = cls(**hyper)
    _run(engine, optimizer, np.zeros(P), grads[:2])
    optimizer.set_state(engine, fresh_state, "float64")
    assert optimizer.iterations == 0
    params = engine.asarray(w0.copy(), dtype="float64")
    for g in grads:
        optimizer.apply(engine, params, engine.asarray(g, dtype="float64"))
    np.testing.assert_allclose(
        engine.to_numpy(params), reference(w0.copy(), grads, **hyper), rtol=1e-12, atol=1e-14
    )


def test_state_without_slots_after_steps_is_rejected():
    engine = _numpy_engine()
    optimizer = RMSprop(centered=True)
    optimizer.build(engine, P, "float64")
    message = r"RMSprop state expected the entries \['velocity', 'average_grad'\] after 3 steps"
    with pytest.raises(ValueError, match=message):
        optimizer.set_state(engine, {"iterations": np.asarray(3)}, "float64")
