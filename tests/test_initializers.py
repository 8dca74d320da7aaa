import json
import math

import numpy as np
import pytest

from dlcore import initializers as inits

ALL_CLASSES = [
    inits.Zeros,
    inits.Ones,
    inits.Constant,
    inits.RandomNormal,
    inits.RandomUniform,
    inits.TruncatedNormal,
    inits.VarianceScaling,
    inits.GlorotUniform,
    inits.GlorotNormal,
    inits.HeNormal,
    inits.HeUniform,
    inits.LecunNormal,
    inits.LecunUniform,
    inits.Orthogonal,
]
RANDOM_CLASSES = [c for c in ALL_CLASSES if issubclass(c, inits.RandomInitializer)]

# (class, scale, mode, distribution) as Keras 3 defines them
FIXED = [
    (inits.GlorotUniform, 1.0, "fan_avg", "uniform"),
    (inits.GlorotNormal, 1.0, "fan_avg", "truncated_normal"),
    (inits.HeNormal, 2.0, "fan_in", "truncated_normal"),
    (inits.HeUniform, 2.0, "fan_in", "uniform"),
    (inits.LecunNormal, 1.0, "fan_in", "truncated_normal"),
    (inits.LecunUniform, 1.0, "fan_in", "uniform"),
]


def _n(shape, mode):
    fan_in, fan_out = shape[0], shape[1]
    return {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]


def test_truncation_constant_is_stddev_of_unit_normal_truncated_at_two():
    # Var of N(0,1) truncated to [-a, a] is 1 - 2 a phi(a) / (2 Phi(a) - 1).
    a = 2.0
    phi = math.exp(-a * a / 2) / math.sqrt(2 * math.pi)
    mass = math.erf(a / math.sqrt(2))
    assert inits.TRUNCATED_NORMAL_STDDEV_CORRECTION == pytest.approx(
        math.sqrt(1 - 2 * a * phi / mass), rel=1e-12
    )


@pytest.mark.parametrize(
    "shape, fans",
    [((), (1, 1)), ((7,), (7, 7)), ((3, 5), (3, 5)), ((2, 3, 4, 5), (24, 30))],
)
def test_compute_fans(shape, fans):
    assert inits.compute_fans(shape) == fans


@pytest.mark.parametrize("cls, scale, mode, dist", FIXED)
def test_named_variance_scaling_matches_keras_parameters(cls, scale, mode, dist):
    init = cls(seed=1)
    assert (init.scale, init.mode, init.distribution) == (scale, mode, dist)
    assert init.get_config() == {"seed": 1}


@pytest.mark.parametrize("cls, scale, mode, dist", [f for f in FIXED if f[3] == "uniform"])
def test_uniform_variants_draw_exactly_from_the_keras_limit(cls, scale, mode, dist):
    shape = (3, 5)
    limit = math.sqrt(3.0 * scale / _n(shape, mode))
    expected = np.random.default_rng(11).uniform(-limit, limit, size=shape)
    got = cls(seed=11)(shape, dtype="float64")
    np.testing.assert_allclose(got, expected, rtol=1e-15, atol=0)


@pytest.mark.parametrize("cls, scale, mode, dist", FIXED)
def test_variance_scaling_statistics(cls, scale, mode, dist):
    shape = (400, 300)
    values = cls(seed=0)(shape, dtype="float64")
    target_std = math.sqrt(scale / _n(shape, mode))
    assert values.std() == pytest.approx(target_std, rel=0.02)
    assert abs(values.mean()) < 0.05 * target_std
    if dist == "uniform":
        limit = math.sqrt(3) * target_std
        assert values.min() >= -limit and values.max() < limit
        assert values.max() > 0.99 * limit
    else:
        bound = 2 * target_std / 0.87962566103423978
        assert np.abs(values).max() <= bound
        assert np.abs(values).max() > 0.99 * bound


@pytest.mark.parametrize("mode", ["fan_in", "fan_out", "fan_avg"])
def test_variance_scaling_untruncated_normal_exact(mode):
    shape = (6, 10)
    init = inits.VarianceScaling(scale=3.0, mode=mode, distribution="untruncated_normal", seed=5)
    expected = np.random.default_rng(5).standard_normal(shape) * math.sqrt(3.0 / _n(shape, mode))
    np.testing.assert_allclose(init(shape, dtype="float64"), expected, rtol=1e-14, atol=0)


def test_variance_scaling_one_dimensional_shape_uses_shape0_for_both_fans():
    init = inits.VarianceScaling(scale=2.0, mode="fan_out", distribution="uniform", seed=2)
    limit = math.sqrt(3 * 2.0 / 8)
    expected = np.random.default_rng(2).uniform(-limit, limit, size=(8,))
    np.testing.assert_allclose(init((8,), dtype="float64"), expected, rtol=1e-15)


def test_variance_scaling_normal_alias_and_case():
    assert inits.VarianceScaling(distribution="normal").distribution == "truncated_normal"
    assert inits.VarianceScaling(distribution="Uniform").distribution == "uniform"


def test_random_normal_and_uniform_statistics():
    v = inits.RandomNormal(mean=1.5, stddev=0.3, seed=3)((300, 300), dtype="float64")
    assert v.mean() == pytest.approx(1.5, abs=0.01)
    assert v.std() == pytest.approx(0.3, rel=0.02)
    u = inits.RandomUniform(minval=-2.0, maxval=6.0, seed=3)((300, 300), dtype="float64")
    assert u.min() >= -2.0 and u.max() < 6.0
    assert u.mean() == pytest.approx(2.0, abs=0.05)
    assert u.var() == pytest.approx(64 / 12, rel=0.02)


def test_random_defaults_match_keras():
    assert inits.RandomNormal().get_config() == {"mean": 0.0, "stddev": 0.05, "seed": None}
    assert inits.TruncatedNormal().get_config() == {"mean": 0.0, "stddev": 0.05, "seed": None}
    assert inits.RandomUniform().get_config() == {"minval": -0.05, "maxval": 0.05, "seed": None}
    assert inits.Orthogonal().get_config() == {"gain": 1.0, "seed": None}
    assert inits.Constant().get_config() == {"value": 0.0}


def test_truncated_normal_stays_within_two_stddev():
    v = inits.TruncatedNormal(mean=-1.0, stddev=0.5, seed=4)((300, 300), dtype="float64")
    assert v.min() >= -2.0 and v.max() <= 0.0
    assert v.mean() == pytest.approx(-1.0, abs=0.01)
    assert v.std() == pytest.approx(0.5 * 0.87962566103423978, rel=0.02)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_constant_initializers(dtype):
    np.testing.assert_array_equal(inits.Zeros()((2, 3), dtype), np.zeros((2, 3)))
    np.testing.assert_array_equal(inits.Ones()((4,), dtype), np.ones(4))
    c = inits.Constant(2.5)((3, 2), dtype)
    np.testing.assert_array_equal(c, np.full((3, 2), 2.5))
    assert c.dtype == np.dtype(dtype)


@pytest.mark.parametrize("shape", [(6, 4), (4, 6), (5, 5), (2, 3, 4)])
def test_orthogonal_is_orthonormal(shape):
    q = inits.Orthogonal(gain=2.0, seed=7)(shape, dtype="float64")
    assert q.shape == shape
    m = q.reshape(-1, shape[-1])
    rows, cols = m.shape
    gram = m.T @ m if rows >= cols else m @ m.T
    np.testing.assert_allclose(gram, 4.0 * np.eye(min(rows, cols)), atol=1e-12)


def test_orthogonal_rejects_rank_one():
    with pytest.raises(ValueError, match=r"rank >= 2.*shape=\(5,\)"):
        inits.Orthogonal()((5,))


@pytest.mark.parametrize("cls", RANDOM_CLASSES)
def test_seeded_initializer_repeats_itself_and_ignores_rng(cls):
    init = cls(seed=42)
    a = init((5, 4))
    b = init((5, 4), rng=np.random.default_rng(0))
    c = cls(seed=42)((5, 4))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    assert not np.array_equal(a, cls(seed=43)((5, 4)))
    assert a.dtype == np.float32


@pytest.mark.parametrize("cls", RANDOM_CLASSES)
def test_unseeded_initializer_draws_from_rng(cls):
    init = cls()
    a = init((5, 4), "float64", rng=np.random.default_rng(9))
    b = init((5, 4), "float64", rng=np.random.default_rng(9))
    np.testing.assert_array_equal(a, b)
    gen = np.random.default_rng(9)
    first, second = init((5, 4), "float64", rng=gen), init((5, 4), "float64", rng=gen)
    assert not np.array_equal(first, second)
    assert not np.array_equal(init((5, 4)), init((5, 4)))  # fresh default_rng each call


def test_float32_result_is_float64_draw_rounded():
    w64 = inits.GlorotUniform(seed=8)((4, 6), "float64")
    w32 = inits.GlorotUniform(seed=8)((4, 6), "float32")
    np.testing.assert_array_equal(w32, w64.astype(np.float32))


@pytest.mark.parametrize("cls", ALL_CLASSES)
def test_config_round_trip(cls):
    init = cls(seed=3) if issubclass(cls, inits.RandomInitializer) else cls()
    config = json.loads(json.dumps(init.get_config()))
    clone = cls.from_config(config)
    assert clone.get_config() == init.get_config()
    again = inits.get(json.loads(json.dumps(inits.serialize(init))))
    assert type(again) is cls and again.get_config() == init.get_config()
    np.testing.assert_array_equal(clone((3, 4)), init((3, 4)))


def test_variance_scaling_config_round_trip_keeps_parameters():
    init = inits.VarianceScaling(scale=0.5, mode="fan_out", distribution="uniform", seed=1)
    clone = inits.get({"class_name": "VarianceScaling", "config": init.get_config()})
    got = (clone.scale, clone.mode, clone.distribution, clone.seed)
    assert got == (0.5, "fan_out", "uniform", 1)


@pytest.mark.parametrize(
    "name, cls",
    [
        ("glorot_uniform", inits.GlorotUniform),
        ("glorot_normal", inits.GlorotNormal),
        ("he_normal", inits.HeNormal),
        ("he_uniform", inits.HeUniform),
        ("lecun_normal", inits.LecunNormal),
        ("lecun_uniform", inits.LecunUniform),
        ("zeros", inits.Zeros),
        ("ones", inits.Ones),
        ("constant", inits.Constant),
        ("random_normal", inits.RandomNormal),
        ("random_uniform", inits.RandomUniform),
        ("truncated_normal", inits.TruncatedNormal),
        ("variance_scaling", inits.VarianceScaling),
        ("orthogonal", inits.Orthogonal),
        ("GlorotUniform", inits.GlorotUniform),
        ("zero", inits.Zeros),
        ("one", inits.Ones),
        ("normal", inits.RandomNormal),
        ("uniform", inits.RandomUniform),
    ],
)
def test_get_by_name(name, cls):
    assert type(inits.get(name)) is cls


def test_get_instance_and_class():
    init = inits.HeNormal(seed=1)
    assert inits.get(init) is init
    assert type(inits.get(inits.Ones)) is inits.Ones


def test_get_rejects_unknown_and_none():
    with pytest.raises(ValueError, match=r"unknown initializer 'xavier'; available: .*he_normal"):
        inits.get("xavier")
    with pytest.raises(ValueError, match=r"received None"):
        inits.get(None)
    with pytest.raises(ValueError, match=r"unknown initializer 'Nope'"):
        inits.get({"class_name": "Nope", "config": {}})
    with pytest.raises(ValueError, match=r"invalid config for initializer RandomNormal"):
        inits.get({"class_name": "RandomNormal", "config": {"sigma": 1.0}})
    with pytest.raises(ValueError, match=r"'class_name' and 'config'"):
        inits.get({"config": {}})
    with pytest.raises(ValueError, match=r"received .* of type function"):
        inits.get(lambda shape, dtype=None: np.zeros(shape))


@pytest.mark.parametrize(
    "make, pattern",
    [
        (lambda: inits.RandomNormal(stddev=-0.1), r"expected stddev >= 0, received stddev=-0.1"),
        (lambda: inits.TruncatedNormal(stddev=-1), r"expected stddev >= 0, received stddev=-1"),
        (lambda: inits.RandomUniform(minval=1.0, maxval=1.0), r"expected minval < maxval"),
        (lambda: inits.RandomUniform(minval=2.0, maxval=1.0), r"received minval=2.0, maxval=1.0"),
        (lambda: inits.VarianceScaling(scale=0.0), r"expected scale > 0, received scale=0.0"),
        (lambda: inits.VarianceScaling(mode="fan_sum"), r"expected mode .*fan_avg.*'fan_sum'"),
        (lambda: inits.VarianceScaling(distribution="gamma"), r"distribution=.*'gamma'"),
        (lambda: inits.RandomNormal(mean=float("nan")), r"finite number, received mean=nan"),
        (lambda: inits.HeNormal(seed=-1), r"non-negative int, received seed=-1"),
        (lambda: inits.HeNormal(seed=1.5), r"received seed=1.5"),
        (lambda: inits.Constant("a"), r"received value='a'"),
    ],
)
def test_constructor_validation(make, pattern):
    with pytest.raises(ValueError, match=pattern):
        make()


def test_call_validation():
    with pytest.raises(ValueError, match=r"non-negative ints, received shape=\(3, -1\)"):
        inits.Ones()((3, -1))
    with pytest.raises(ValueError, match=r"float dtype .*received dtype='int32'"):
        inits.GlorotUniform()((3, 3), dtype="int32")
    with pytest.raises(ValueError, match=r"numpy.random.Generator or None, received int"):
        inits.GlorotUniform()((3, 3), rng=3)
