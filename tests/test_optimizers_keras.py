"""Keras 3's optimizer features: AdamW, Adadelta, Lion, Ftrl, learning rate schedules,
weight decay, gradient clipping and the moving average of the weights.

Each rule and option is compared over several steps on every engine with a float64
NumPy reference written here from the formulas; bad arguments are refused with messages
that name them; configs with schedules round-trip through ``optimizers.get`` and a
saved model.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import dlcore
from dlcore import optimizers
from dlcore.layers import Dense
from dlcore.models import Sequential, load_model
from dlcore.optimizers import SGD, Adadelta, Adam, AdamW, Ftrl, Lion
from dlcore.optimizers import schedules as S

P = 7
STEPS = 4


def _problem():
    rng = np.random.default_rng(99)
    w0 = rng.standard_normal(P)
    grads = [scale * rng.standard_normal(P) for scale in (2.0, 0.1, 1.0, 0.5)]
    grads[1][3] = 0.0
    return w0, grads


def _run(engine, optimizer, w0, grads, dtype="float64", **apply):
    params = engine.asarray(w0.copy(), dtype=dtype)
    optimizer.build(engine, w0.size, dtype)
    for g in grads:
        optimizer.apply(engine, params, engine.asarray(g, dtype=dtype), **apply)
    return engine.to_numpy(params)


# ---------------------------------------------------------------------- references
def ref_adam_step(w, g, state, t, lr, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
    m, v = state.setdefault("m", np.zeros_like(w)), state.setdefault("v", np.zeros_like(w))
    m[...] = beta_1 * m + (1 - beta_1) * g
    v[...] = beta_2 * v + (1 - beta_2) * g**2
    step_size = lr * math.sqrt(1 - beta_2**t) / (1 - beta_1**t)
    return w - step_size * m / (np.sqrt(v) + epsilon)


def ref_adadelta_step(w, g, state, t, lr, rho=0.95, epsilon=1e-7):
    a_g = state.setdefault("a_g", np.zeros_like(w))
    a_d = state.setdefault("a_d", np.zeros_like(w))
    a_g[...] = rho * a_g + (1 - rho) * g**2
    delta = -np.sqrt(a_d + epsilon) / np.sqrt(a_g + epsilon) * g
    a_d[...] = rho * a_d + (1 - rho) * delta**2
    return w + lr * delta


def ref_lion_step(w, g, state, t, lr, beta_1=0.9, beta_2=0.99):
    m = state.setdefault("m", np.zeros_like(w))
    w = w - lr * np.sign(beta_1 * m + (1 - beta_1) * g)
    m[...] = beta_2 * m + (1 - beta_2) * g
    return w


def ref_ftrl_step(w, g, state, t, lr, power=-0.5, init=0.1, l1=0.0, l2=0.0, shrink=0.0, beta=0.0):
    n = state.setdefault("n", np.full_like(w, init))
    z = state.setdefault("z", np.zeros_like(w))
    new = n + g**2
    sigma = (new ** (-power) - n ** (-power)) / lr
    z[...] = z + g + 2 * shrink * w - sigma * w
    quadratic = new ** (-power) / lr + 2 * (l2 + beta / (2 * lr))
    n[...] = new
    return np.where(np.abs(z) > l1, -(z - np.sign(z) * l1) / quadratic, 0.0)


def ref_sgd_step(w, g, state, t, lr):
    return w - lr * g


def trajectory(step, w0, grads, lr=lambda t: 0.01, *, decay=0.0, clip=None, ema=None, **hyper):
    """The float64 weights after each gradient of ``grads``: ``lr(t)`` at step ``t``
    (from 0), decoupled ``decay``, ``clip`` a function of the gradient, ``ema``
    ``(momentum, overwrite_frequency)``; returns (weights, average)."""
    w, state, average = w0.copy(), {}, None
    for t, g in enumerate(grads):
        rate = lr(t)
        if clip is not None:
            g = clip(g)
        w = w - w * decay * rate
        w = step(w, g, state, t + 1, rate, **hyper)
        if ema is not None:
            momentum, every = ema
            average = w.copy() if t == 0 else momentum * average + (1 - momentum) * w
            if every and (t + 1) % every == 0:
                w = average.copy()
    return w, average


# ---------------------------------------------------------------------- new rules
RULE_CASES = [
    ("adamw", lambda: AdamW(0.05), ref_adam_step, {}, 0.004),
    ("adamw-decay", lambda: AdamW(0.05, weight_decay=0.3, amsgrad=False), ref_adam_step, {}, 0.3),
    ("adadelta", lambda: Adadelta(1.0, rho=0.9), ref_adadelta_step, {"rho": 0.9}, 0.0),
    ("lion", lambda: Lion(0.01, beta_1=0.8), ref_lion_step, {"beta_1": 0.8}, 0.0),
    (
        "ftrl",
        lambda: Ftrl(
            0.1,
            learning_rate_power=-0.7,
            l1_regularization_strength=0.05,
            l2_regularization_strength=0.2,
            l2_shrinkage_regularization_strength=0.1,
            beta=0.3,
        ),
        ref_ftrl_step,
        {"power": -0.7, "l1": 0.05, "l2": 0.2, "shrink": 0.1, "beta": 0.3},
        0.0,
    ),
    ("ftrl-defaults", lambda: Ftrl(0.1), ref_ftrl_step, {}, 0.0),
]


@pytest.mark.parametrize("case", RULE_CASES, ids=[c[0] for c in RULE_CASES])
def test_new_rules_match_reference(engine, case):
    _, make, step, hyper, decay = case
    optimizer = make()
    w0, grads = _problem()
    got = _run(engine, optimizer, w0, grads)
    lr = optimizer.learning_rate
    want, _ = trajectory(step, w0, grads, lambda t: lr, decay=decay, **hyper)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("case", RULE_CASES, ids=[c[0] for c in RULE_CASES])
def test_new_rules_in_float32(engine, case):
    _, make, step, hyper, decay = case
    optimizer = make()
    w0, grads = _problem()
    got = _run(engine, optimizer, w0, grads, dtype="float32")
    assert got.dtype == np.float32
    want, _ = trajectory(step, w0, grads, lambda t: optimizer.learning_rate, decay=decay, **hyper)
    # Lion moves by +-lr: a sign flipped by rounding near 0 would be a 2 * lr difference
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("case", RULE_CASES, ids=[c[0] for c in RULE_CASES])
def test_new_rules_state_round_trip(engine, case):
    _, make, _, _, _ = case
    w0, grads = _problem()
    whole = _run(engine, make(), w0, grads)
    first = make()
    params = engine.asarray(w0.copy(), dtype="float64")
    first.build(engine, P, "float64")
    for g in grads[:2]:
        first.apply(engine, params, engine.asarray(g, dtype="float64"))
    second = make()
    second.set_state(engine, first.get_state(), "float64")
    for g in grads[2:]:
        second.apply(engine, params, engine.asarray(g, dtype="float64"))
    np.testing.assert_array_equal(engine.to_numpy(params), whole)


def test_keras_defaults_of_the_new_optimizers():
    assert AdamW().get_config() == {
        "name": "AdamW",
        "learning_rate": 0.001,
        "weight_decay": 0.004,
        "beta_1": 0.9,
        "beta_2": 0.999,
        "epsilon": 1e-7,
        "amsgrad": False,
    }
    assert Adadelta().get_config() == {
        "name": "Adadelta",
        "learning_rate": 0.001,
        "rho": 0.95,
        "epsilon": 1e-7,
    }
    assert Lion().get_config() == {
        "name": "Lion",
        "learning_rate": 0.001,
        "beta_1": 0.9,
        "beta_2": 0.99,
    }
    assert Ftrl().get_config() == {
        "name": "Ftrl",
        "learning_rate": 0.001,
        "learning_rate_power": -0.5,
        "initial_accumulator_value": 0.1,
        "l1_regularization_strength": 0.0,
        "l2_regularization_strength": 0.0,
        "l2_shrinkage_regularization_strength": 0.0,
        "beta": 0.0,
    }
    for name in ("adamw", "adadelta", "lion", "ftrl"):
        assert type(optimizers.get(name)).__name__.lower() == name


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: AdamW(weight_decay=None), "AdamW expected weight_decay to be a non-negative"),
        (lambda: Lion(beta_1=0.0), r"Lion expected beta_1 to be in \(0, 1\], received beta_1=0.0"),
        (lambda: Adadelta(rho=1.0), r"Adadelta expected rho to be a number in \[0, 1\)"),
        (lambda: Ftrl(learning_rate_power=0.5), "Ftrl expected learning_rate_power to be <= 0"),
        (lambda: Ftrl(initial_accumulator_value=-1), "initial_accumulator_value to be a non-neg"),
        (lambda: Ftrl(l1_regularization_strength=-0.1), "l1_regularization_strength to be a non"),
    ],
)
def test_new_optimizers_refuse_bad_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# ---------------------------------------------------------------------- common options
def _clip_by_norm(bound):
    return lambda g: g * bound / max(np.linalg.norm(g), bound)


def _per_variable(bound, pieces):
    def clip(g):
        return np.concatenate([_clip_by_norm(bound)(g[a:b]) for a, b in pieces])

    return clip


VARIABLES = [(0, 3), (3, 4), (4, 7)]


OPTION_CASES = [
    ("weight_decay", {"weight_decay": 0.5}, {"decay": 0.5}),
    ("clipvalue", {"clipvalue": 0.3}, {"clip": lambda g: np.clip(g, -0.3, 0.3)}),
    ("clipnorm", {"clipnorm": 0.4}, {"clip": _per_variable(0.4, VARIABLES)}),
    ("global_clipnorm", {"global_clipnorm": 0.4}, {"clip": _clip_by_norm(0.4)}),
    ("ema", {"use_ema": True, "ema_momentum": 0.7}, {"ema": (0.7, None)}),
    (
        "ema-overwrite",
        {"use_ema": True, "ema_momentum": 0.5, "ema_overwrite_frequency": 2},
        {"ema": (0.5, 2)},
    ),
    (
        "decay-and-clipnorm",
        {"weight_decay": 0.2, "clipnorm": 0.5},
        {"decay": 0.2, "clip": _per_variable(0.5, VARIABLES)},
    ),
]


@pytest.mark.parametrize("case", OPTION_CASES, ids=[c[0] for c in OPTION_CASES])
@pytest.mark.parametrize("rule", ["adam", "sgd"])
def test_common_options_match_reference(engine, case, rule):
    _, options, reference = case
    cls, step = (Adam, ref_adam_step) if rule == "adam" else (SGD, ref_sgd_step)
    optimizer = cls(0.05, **options)
    w0, grads = _problem()
    got = _run(engine, optimizer, w0, grads, variables=VARIABLES)
    want, average = trajectory(step, w0, grads, lambda t: 0.05, **reference)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13)
    if average is not None:
        np.testing.assert_allclose(optimizer.get_state()["average"], average, rtol=1e-12)
        optimizer.finalize_variable_values(engine, params := engine.asarray(got, dtype="float64"))
        np.testing.assert_allclose(engine.to_numpy(params), average, rtol=1e-12)


def test_clipping_leaves_the_gradients_and_the_frozen_ranges_alone(engine):
    w0, grads = _problem()
    optimizer = SGD(0.1, clipnorm=0.2, weight_decay=0.5, use_ema=True)
    params = engine.asarray(w0.copy(), dtype="float64")
    g = engine.asarray(grads[0], dtype="float64")
    optimizer.build(engine, P, "float64")
    optimizer.apply(engine, params, g, segments=[(0, 3), (4, 7)], variables=[(0, 3), (4, 7)])
    np.testing.assert_array_equal(engine.to_numpy(g), grads[0])
    got = engine.to_numpy(params)
    assert got[3] == w0[3]
    want = w0 - w0 * 0.5 * 0.1 - 0.1 * _per_variable(0.2, [(0, 3), (3, 4), (4, 7)])(grads[0])
    np.testing.assert_allclose(got[[0, 1, 2, 4, 5, 6]], want[[0, 1, 2, 4, 5, 6]], rtol=1e-12)


# inf * inf and inf - inf warn where NumPy computes them (the CUDA simulator's threads too)
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_global_clipnorm_of_non_finite_gradients_is_nan(engine):
    optimizer = SGD(0.1, global_clipnorm=1.0)
    grads = np.ones(P)
    grads[2] = np.inf
    with np.errstate(invalid="ignore"):
        got = _run(engine, optimizer, np.zeros(P), [grads])
    assert np.isnan(got).all()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"clipnorm": 1.0, "global_clipnorm": 1.0},
            "SGD expected at most one of clipnorm, clipvalue and global_clipnorm, received "
            "clipnorm=1.0, global_clipnorm=1.0",
        ),
        ({"clipnorm": 1.0, "clipvalue": 0.5}, "at most one of clipnorm, clipvalue"),
        ({"clipnorm": -1.0}, "SGD expected clipnorm to be a non-negative number"),
        ({"weight_decay": "x"}, "SGD expected weight_decay to be a non-negative number"),
        ({"use_ema": 1}, "SGD expected use_ema to be True or False"),
        ({"ema_momentum": 1.5}, r"SGD expected ema_momentum to be a number in \[0, 1\]"),
        ({"ema_overwrite_frequency": 0}, "ema_overwrite_frequency to be None or an integer >= 1"),
    ],
)
def test_common_options_refuse_bad_values(options, message):
    with pytest.raises(ValueError, match=message):
        SGD(**options)


def test_common_options_in_config_and_state():
    optimizer = Adam(clipnorm=1.0, weight_decay=0.1, use_ema=True, ema_overwrite_frequency=3)
    config = optimizer.get_config()
    assert config["clipnorm"] == 1.0 and config["weight_decay"] == 0.1
    assert config["use_ema"] is True and config["ema_overwrite_frequency"] == 3
    assert "global_clipnorm" not in Adam().get_config()
    assert optimizers.get({"class_name": "Adam", "config": config}).get_config() == config
    assert optimizer.state_shapes(5) == {"iterations": (), "m": (5,), "v": (5,), "average": (5,)}


def test_variables_must_cover_the_updated_ranges(engine):
    optimizer = SGD(clipnorm=1.0)
    optimizer.build(engine, P, "float64")
    params, grads = engine.zeros((P,), dtype="float64"), engine.zeros((P,), dtype="float64")
    with pytest.raises(ValueError, match="expected variables to be .* cover the updated ranges"):
        optimizer.apply(engine, params, grads, variables=[(0, 3)])


# ---------------------------------------------------------------------- schedules
def _cosine_restarts(step, lr0, first, t_mul, m_mul, alpha):
    # walk the periods one by one (independent of the closed form)
    start, length, scale = 0.0, first, 1.0
    while step >= start + length:
        start, length, scale = start + length, length * t_mul, scale * m_mul
    fraction = (step - start) / length
    return lr0 * ((1 - alpha) * 0.5 * scale * (1 + math.cos(math.pi * fraction)) + alpha)


SCHEDULE_CASES = [
    (S.ExponentialDecay(0.1, 3, 0.5), lambda t: 0.1 * 0.5 ** (t / 3)),
    (S.ExponentialDecay(0.1, 3, 0.5, staircase=True), lambda t: 0.1 * 0.5 ** (t // 3)),
    (
        S.PiecewiseConstantDecay([2, 5], [0.3, 0.2, 0.1]),
        lambda t: [0.3, 0.2, 0.1][(t > 2) + (t > 5)],
    ),
    (S.InverseTimeDecay(0.1, 2, 0.5), lambda t: 0.1 / (1 + 0.5 * t / 2)),
    (S.InverseTimeDecay(0.1, 2, 0.5, staircase=True), lambda t: 0.1 / (1 + 0.5 * (t // 2))),
    (
        S.PolynomialDecay(0.1, 4, 0.01, power=2.0),
        lambda t: (0.1 - 0.01) * (1 - min(t, 4) / 4) ** 2 + 0.01,
    ),
    (
        S.PolynomialDecay(0.1, 3, 0.01, cycle=True),
        lambda t: 0.09 * (1 - t / (3 * max(1, math.ceil(t / 3)))) + 0.01,
    ),
    (
        S.CosineDecay(0.1, 5, alpha=0.1),
        lambda t: 0.1 * (0.9 * 0.5 * (1 + math.cos(math.pi * min(t, 5) / 5)) + 0.1),
    ),
    (
        S.CosineDecay(0.0, 4, warmup_target=0.2, warmup_steps=3),
        lambda t: 0.2 * t / 3 if t < 3 else 0.2 * 0.5 * (1 + math.cos(math.pi * min(t - 3, 4) / 4)),
    ),
    (S.CosineDecayRestarts(0.1, 2, t_mul=2.0, m_mul=0.5, alpha=0.1), None),
    (S.CosineDecayRestarts(0.1, 3, t_mul=1.0), None),
]


@pytest.mark.parametrize(
    "case", SCHEDULE_CASES, ids=lambda c: repr(c) if isinstance(c, S.LearningRateSchedule) else None
)
def test_schedule_values(case):
    schedule, formula = case
    if formula is None:
        config = schedule.get_config()

        def formula(t):
            return _cosine_restarts(
                t,
                config["initial_learning_rate"],
                config["first_decay_steps"],
                config["t_mul"],
                config["m_mul"],
                config["alpha"],
            )

    for t in range(12):
        assert schedule(t) == pytest.approx(formula(t), rel=1e-12, abs=1e-15), t


@pytest.mark.parametrize("case", SCHEDULE_CASES[:3])
def test_schedule_config_round_trip(case):
    schedule, _ = case
    config = json.loads(json.dumps(S.serialize(schedule)))
    assert config["class_name"] == type(schedule).__name__
    again = S.deserialize(config)
    assert again.get_config() == schedule.get_config()
    assert [again(t) for t in range(8)] == [schedule(t) for t in range(8)]


def test_schedule_drives_each_step_from_the_count_before_it(engine):
    schedule = S.ExponentialDecay(0.1, 1, 0.5)
    optimizer = SGD(schedule)
    assert optimizer.learning_rate == 0.1
    w0, grads = _problem()
    got = _run(engine, optimizer, w0, grads)
    want, _ = trajectory(ref_sgd_step, w0, grads, lambda t: 0.1 * 0.5**t)
    np.testing.assert_allclose(got, want, rtol=1e-13)
    assert optimizer.learning_rate == pytest.approx(0.1 * 0.5**STEPS)


def test_schedule_with_weight_decay_and_adamw(engine):
    schedule = S.PolynomialDecay(0.05, 3, 0.001)
    w0, grads = _problem()
    got = _run(engine, AdamW(schedule, weight_decay=0.2), w0, grads)
    want, _ = trajectory(ref_adam_step, w0, grads, schedule, decay=0.2)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13)


def test_learning_rate_of_a_scheduled_optimizer_is_not_settable():
    optimizer = Adam(S.ExponentialDecay(0.1, 10, 0.9))
    with pytest.raises(TypeError, match="made with a LearningRateSchedule"):
        optimizer.learning_rate = 0.01
    optimizer.learning_rate = S.InverseTimeDecay(0.2, 1, 1.0)  # another schedule is fine
    assert optimizer.learning_rate == 0.2


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (
            lambda: S.ExponentialDecay(S.ExponentialDecay(0.1, 1, 0.5), 1, 0.5),
            TypeError,
            "ExponentialDecay expected initial_learning_rate to be a number, received the schedule",
        ),
        (lambda: S.ExponentialDecay(0.1, -1, 0.5), ValueError, "decay_steps to be a positive"),
        (lambda: S.PolynomialDecay(0.1, 0), ValueError, "decay_steps to be a positive number"),
        (lambda: S.CosineDecay(0.1, 0), ValueError, "decay_steps to be a positive number"),
        (lambda: S.CosineDecayRestarts(0.1, -2), ValueError, "first_decay_steps to be a positive"),
        (
            lambda: S.PiecewiseConstantDecay([1, 2], [0.1, 0.2]),
            ValueError,
            "expected one more value than boundaries",
        ),
        (
            lambda: S.PiecewiseConstantDecay([2, 1], [0.1, 0.2, 0.3]),
            ValueError,
            "strictly increasing boundaries",
        ),
        (lambda: S.InverseTimeDecay(0.1, 1, 0.5, staircase="yes"), ValueError, "staircase"),
        (lambda: S.deserialize({"class_name": "Nope"}), ValueError, "unknown learning rate"),
        (lambda: SGD(learning_rate=lambda: 0.1), TypeError, "received the callable"),
    ],
)
def test_schedules_refuse_bad_arguments(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_scheduled_optimizer_config_round_trips():
    optimizer = Lion(S.CosineDecay(0.01, 100, warmup_target=0.02, warmup_steps=10), clipvalue=1.0)
    config = json.loads(json.dumps(optimizer.get_config()))
    assert config["learning_rate"]["class_name"] == "CosineDecay"
    again = optimizers.get({"class_name": "Lion", "config": config})
    assert isinstance(again.schedule, S.CosineDecay)
    assert again.get_config() == optimizer.get_config()


# ---------------------------------------------------------------------- through a model
def _model(optimizer):
    dlcore.config.set_seed(3) if hasattr(dlcore.config, "set_seed") else None
    model = Sequential([Dense(4, activation="tanh", input_shape=(3,)), Dense(2)])
    model.compile(optimizer=optimizer, loss="mse")
    return model


def test_save_and_load_a_model_compiled_with_a_schedule(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((16, 3)), rng.standard_normal((16, 2))
    schedule = S.PiecewiseConstantDecay([3], [0.1, 0.01])
    model = _model(SGD(schedule, momentum=0.5, clipnorm=1.0, use_ema=True))
    model.fit(x, y, epochs=1, batch_size=4, verbose=0, shuffle=False)
    path = tmp_path / "model.dlc"
    model.save(str(path))
    loaded = load_model(str(path))
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    assert isinstance(loaded.optimizer.schedule, S.PiecewiseConstantDecay)
    assert loaded.optimizer.iterations == 4
    model.fit(x, y, epochs=1, batch_size=4, verbose=0, shuffle=False)
    loaded.fit(x, y, epochs=1, batch_size=4, verbose=0, shuffle=False)
    for a, b in zip(model.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_fit_clips_each_weight_and_ends_on_the_moving_average():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((8, 3)), rng.standard_normal((8, 2))
    model = _model(SGD(0.1, clipnorm=1e-3, use_ema=True, ema_momentum=0.5))
    before = model.get_weights()
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    after = model.get_weights()
    # one step, each weight's gradient clipped to norm 1e-3, then the average of one
    # step is the updated weights themselves
    for w0, w1 in zip(before, after, strict=True):
        assert np.linalg.norm(w1 - w0) == pytest.approx(1e-4, rel=1e-3)  # float32
