"""Mixed precision: Keras 3's dtype policies, float32 master weights, casts between layers
of different compute dtypes, dynamic loss scaling, and the matmul precision setting.

Half-precision arithmetic is checked on ``HalfEngine``: the generic array-API engine
(the code the cupy engine runs) on NumPy's namespace, which has float16. Its numbers
are compared with float64 NumPy references within tolerances from float16's epsilon.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from dlcore.backends.base import dtype_name
from dlcore.backends.generic import ArrayAPIEngine

import dlcore
from dlcore import backends, config, mixed_precision, optimizers
from dlcore.layers import Activation, Dense, Input
from dlcore.mixed_precision import DTypePolicy, LossScaleOptimizer

EPS16 = float(np.finfo(np.float16).eps)


class HalfEngine(ArrayAPIEngine):
    """The generic engine on ``array_api_compat.numpy``, computing float16 as CuPy does."""

    name = "half_test"

    def __init__(self) -> None:
        super().__init__()
        import array_api_compat.numpy as xp

        self.xp = xp
        self._device = "cpu"

    @classmethod
    def availability(cls):
        return True, "NumPy's namespace, for the float16 tests"

    @property
    def device(self) -> str:
        return "cpu"

    def supports_dtype(self, dtype: str) -> bool:
        return dtype in ("float16", "float32", "float64")

    def asarray(self, data, *, dtype):
        return np.array(data, dtype=dtype)

    def to_numpy(self, A):
        return np.array(A)

    def synchronize(self) -> None:
        return None


@pytest.fixture
def half_engine():
    engine = HalfEngine()
    config._state["engine"] = engine  # restored by conftest's _restore_global_state
    return engine


@pytest.fixture(autouse=True)
def _fresh_warnings():
    mixed_precision._warned.clear()
    yield
    mixed_precision._warned.clear()


# ---------------------------------------------------------------------- policies
@pytest.mark.parametrize(
    ("name", "compute", "variable"),
    [
        ("mixed_float16", "float16", "float32"),
        ("mixed_bfloat16", "bfloat16", "float32"),
        ("float32", "float32", "float32"),
        ("float64", "float64", "float64"),
        ("float16", "float16", "float16"),
    ],
)
def test_policy_dtypes_are_keras(name, compute, variable):
    policy = DTypePolicy(name)
    assert (policy.name, policy.compute_dtype, policy.variable_dtype) == (name, compute, variable)
    assert repr(policy) == f'<DTypePolicy "{name}">'
    assert DTypePolicy.from_config(policy.get_config()) == policy
    assert mixed_precision.Policy is DTypePolicy


def test_bad_policies_are_refused_with_the_valid_names():
    with pytest.raises(ValueError, match="unknown dtype policy 'mixed_float8'.*mixed_bfloat16"):
        DTypePolicy("mixed_float8")
    with pytest.raises(TypeError, match="policy name such as 'mixed_float16'"):
        DTypePolicy(16)
    with pytest.raises(ValueError, match="set_global_policy expected a policy name"):
        mixed_precision.set_global_policy(3.0)
    with pytest.raises(ValueError, match="unknown dtype policy 'int32'"):
        Dense(3, dtype="int32")


def test_global_policy_follows_floatx_until_set():
    assert mixed_precision.global_policy().name == "float32"
    dlcore.set_floatx("float64")
    assert mixed_precision.global_policy().name == "float64"
    mixed_precision.set_global_policy("mixed_float16")
    assert mixed_precision.global_policy() == DTypePolicy("mixed_float16")
    assert config.dtype_policy() == DTypePolicy("mixed_float16")
    config.set_dtype_policy("float32")
    assert mixed_precision.dtype_policy().name == "float32"


def test_layers_take_the_global_policy_at_creation_or_their_own():
    mixed_precision.set_global_policy("mixed_float16")
    dense = Dense(4)
    own = Dense(4, dtype="float32")
    from_policy = Dense(4, dtype=DTypePolicy("mixed_bfloat16"))
    keras_config = Dense(4, dtype={"class_name": "DTypePolicy", "config": {"name": "float64"}})
    mixed_precision.set_global_policy("float32")
    assert dense.dtype_policy.name == "mixed_float16"
    assert (dense.compute_dtype, dense.variable_dtype) == ("float16", "float32")
    assert own.compute_dtype == "float32"
    assert from_policy.compute_dtype == "bfloat16"
    assert keras_config.compute_dtype == "float64"
    assert Dense(4, dtype=np.float64).compute_dtype == "float64"
    with pytest.raises(TypeError, match="a dtype policy must be a name"):
        Dense(4, dtype=[16])
    assert Dense(4).dtype_policy.name == "float32"
    # the policy travels in the layer's config
    assert Dense.from_config(dense.get_config()).dtype_policy.name == "mixed_float16"
    assert "dtype" not in Dense(4).get_config()


def test_inputs_stay_in_floatx_under_a_mixed_policy():
    mixed_precision.set_global_policy("mixed_float16")
    inputs = Input(shape=(3,), dtype="float32")
    assert inputs.input_layer.dtype_policy.name == "float32"


# ---------------------------------------------------------------------- engines without half
def _data(n=64, features=8, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype("float32")
    y = rng.integers(0, classes, n)
    return x, y


def _classifier(**output_dtype):
    return dlcore.Sequential(
        [
            Dense(16, activation="relu", input_shape=(8,)),
            Dense(3),
            Activation("softmax", **output_dtype),
        ]
    )


def test_numpy_engine_runs_mixed_float16_in_float32_and_warns_once():
    x, y = _data()
    dlcore.set_random_seed(0)
    plain = _classifier()
    plain.compile(
        optimizer=LossScaleOptimizer(optimizers.Adam()), loss="sparse_categorical_crossentropy"
    )
    expected = plain.fit(x, y, epochs=2, batch_size=16, verbose=0, shuffle=False).history
    mixed_precision.set_global_policy("mixed_float16")
    dlcore.set_random_seed(0)
    model = _classifier(dtype="float32")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    with pytest.warns(RuntimeWarning, match="numpy engine has no float16 kernels") as caught:
        history = model.fit(x, y, epochs=2, batch_size=16, verbose=0, shuffle=False).history
    assert len(caught) == 1
    assert isinstance(model.optimizer, LossScaleOptimizer)
    assert model.layers[0].run_dtype == "float32"
    np.testing.assert_allclose(history["loss"], expected["loss"], rtol=1e-6)
    for got, want in zip(model.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.predict(x[:4])  # warned once per engine and dtype


def test_compile_wraps_only_mixed_float16_and_can_be_told_not_to():
    x, y = _data()
    mixed_precision.set_global_policy("mixed_bfloat16")
    bf16 = _classifier()
    bf16.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    assert type(bf16.optimizer).__name__ == "SGD"
    mixed_precision.set_global_policy("mixed_float16")
    off = _classifier()
    off.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", auto_scale_loss=False)
    assert type(off.optimizer).__name__ == "SGD"
    on = _classifier()
    on.compile(optimizer=optimizers.SGD(0.5), loss="sparse_categorical_crossentropy")
    assert isinstance(on.optimizer, LossScaleOptimizer)
    assert on.optimizer.learning_rate == 0.5
    float32_model = dlcore.Sequential([Dense(3, input_shape=(8,))], dtype="float32")
    float32_model.compile(optimizer="sgd", loss="mse")
    assert type(float32_model.optimizer).__name__ == "SGD"


# ---------------------------------------------------------------------- half arithmetic
def test_half_layers_compute_in_float16_with_float32_master_weights(half_engine):
    mixed_precision.set_global_policy("mixed_float16")
    x, _ = _data(n=5)
    model = _classifier(dtype="float32")
    model.build((None, 8))
    weights = model.get_weights()  # the weights go to the engine when first used
    hidden, logits, softmax = model.layers
    assert hidden.run_dtype == logits.run_dtype == "float16"
    assert softmax.run_dtype == "float32"
    assert hidden.bound_params()[0].dtype == np.float16
    assert all(w.dtype == np.float32 for w in weights)
    W1, b1, W2, b2 = (w.astype(np.float64) for w in weights)
    h = np.maximum(x @ W1 + b1, 0)
    z = h @ W2 + b2
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    got = model.predict(x)
    assert got.dtype == np.float32  # the float32 output layer's
    # each float16 rounding is within eps16 of the largest term entering the value
    z_scale = (np.abs(x) @ np.abs(W1) + np.abs(b1)) @ np.abs(W2) + np.abs(b2)
    assert np.all(np.abs(got - p) <= 16 * EPS16 * z_scale.max(1, keepdims=True))
    assert np.abs(got - p).max() > 1e-6  # it did round to float16


def test_half_gradients_match_float64_and_update_float32_masters(half_engine):
    mixed_precision.set_global_policy("mixed_float16")
    rng = np.random.default_rng(3)
    x = rng.normal(size=(16, 8)).astype("float32")
    y = rng.normal(size=(16, 2)).astype("float32")
    model = dlcore.Sequential([Dense(2, input_shape=(8,)), Activation("linear", dtype="float32")])
    # without loss scaling: a first scale of 2**15 overflows these float16 gradients,
    # and that step would be skipped (as Keras skips it)
    model.compile(optimizer=optimizers.SGD(learning_rate=1e-3), loss="mse", auto_scale_loss=False)
    W, b = (w.astype(np.float64) for w in model.get_weights())
    model.train_on_batch(x, y)
    residual = x @ W + b - y
    dW = x.T @ residual * (2 / residual.size)
    db = residual.sum(0) * (2 / residual.size)
    new_W, new_b = model.get_weights()
    assert new_W.dtype == np.float32
    step_W = (W - new_W) / 1e-3
    step_b = (b - new_b) / 1e-3
    tolerance = 8 * EPS16 * (np.abs(x).T @ (np.abs(x) @ np.abs(W) + np.abs(b) + np.abs(y))).max()
    np.testing.assert_allclose(step_W, dW, atol=tolerance * 2 / residual.size + 1e-2)
    np.testing.assert_allclose(step_b, db, atol=1e-2)
    # A step of 1e-3 * gradient is far below float16's resolution at 1.0 but is kept:
    # the update went into the float32 master weights.
    assert np.any((new_W != W.astype(np.float32)) & (np.abs(W - new_W) < EPS16 * np.abs(W)))


def test_loss_scaling_keeps_small_float16_gradients_from_vanishing(half_engine):
    mixed_precision.set_global_policy("mixed_float16")
    rng = np.random.default_rng(5)
    x = (rng.normal(size=(32, 4)) * 1e-4).astype("float32")
    y = (rng.normal(size=(32, 1)) * 1e-4).astype("float32")

    def one_step(auto_scale_loss):
        dlcore.set_random_seed(1)
        model = dlcore.Sequential(
            [Dense(1, input_shape=(4,), use_bias=False), Activation("linear", dtype="float32")]
        )
        # a large rate makes steps of 1e-8 gradients visible in the float32 weights
        model.compile(optimizer=optimizers.SGD(1e4), loss="mse", auto_scale_loss=auto_scale_loss)
        before = model.get_weights()[0]
        model.train_on_batch(x, y)
        return before.astype(np.float64), (before - model.get_weights()[0]) / 1e4

    # dW = x^T (2/32 (xW - y)): products of 1e-4 and 1e-5 numbers, about 1e-8, below
    # float16's smallest subnormal (6e-8): without scaling they flush to zero
    W, unscaled = one_step(False)
    _, scaled = one_step(True)
    expected = x.T.astype(np.float64) @ (2 / 32 * (x @ W - y))
    assert np.all(np.abs(expected) < 6e-8)
    np.testing.assert_array_equal(unscaled, 0.0)
    np.testing.assert_allclose(scaled, expected, rtol=0.05)


# ---------------------------------------------------------------------- mixed dtypes
def _two_layer_reference(x, y, W1, b1, W2, b2):
    """Loss gradients of mse(tanh(x W1 + b1) W2 + b2, y) in float64."""
    a = np.tanh(x @ W1 + b1)
    out = a @ W2 + b2
    d_out = 2 * (out - y) / out.size
    dW2, db2 = a.T @ d_out, d_out.sum(0)
    d_a = d_out @ W2.T * (1 - a**2)
    return [x.T @ d_a, d_a.sum(0), dW2, db2]


def test_a_float64_layer_in_a_float32_model_computes_in_float64(engine):
    """A layer whose policy differs from the model's float dtype runs on cast copies of
    its weights and inputs, on every engine, and its gradients reach the masters."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(6, 5)).astype(np.float32)
    y = rng.normal(size=(6, 2)).astype(np.float32)
    inputs = Input(shape=(5,))
    hidden = Dense(3, activation="tanh", dtype="float64")(inputs)
    model = dlcore.Model(inputs, Dense(2)(hidden))
    model.compile(optimizer=optimizers.SGD(learning_rate=1.0), loss="mse")
    weights = [w.astype(np.float64) for w in model.get_weights()]
    assert model.layers[1].run_dtype == "float64"
    assert all(w.dtype == np.float32 for w in model.get_weights())
    a = np.tanh(x.astype(np.float64) @ weights[0] + weights[1])
    np.testing.assert_allclose(model.predict(x), a @ weights[2] + weights[3], rtol=1e-5, atol=1e-6)
    model.train_on_batch(x, y)
    expected = _two_layer_reference(x.astype(np.float64), y, *weights)
    for before, after, gradient in zip(weights, model.get_weights(), expected):
        np.testing.assert_allclose(before - after, gradient, rtol=1e-4, atol=1e-6)


def test_regularised_mixed_layer_with_loss_scaling_trains_as_float32():
    """The penalty's gradient carries the loss scale like the loss's, so that both are
    divided by it: with a power-of-two scale the step is float32's."""
    x, y = _data()
    steps = []
    for optimizer in (optimizers.SGD(0.1), LossScaleOptimizer(optimizers.SGD(0.1))):
        dlcore.set_random_seed(2)
        model = dlcore.Sequential(
            [
                Dense(16, activation="relu", input_shape=(8,), kernel_regularizer="l2"),
                Dense(3, activation="softmax"),
            ]
        )
        model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
        history = model.fit(x, y, epochs=2, batch_size=16, verbose=0, shuffle=False).history
        steps.append((history["loss"], model.get_weights()))
    np.testing.assert_allclose(steps[0][0], steps[1][0], rtol=1e-6)
    for a, b in zip(steps[0][1], steps[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------- LossScaleOptimizer
def _scaled_step(optimizer, grads, engine=None):
    engine = engine or backends.get("numpy")
    params = engine.asarray(np.ones(len(grads)), dtype="float64")
    if not optimizer.built:
        optimizer.build(engine, len(grads), "float64")
    optimizer.apply(engine, params, engine.asarray(np.asarray(grads, float), dtype="float64"))
    return engine.to_numpy(params)


def test_loss_scale_optimizer_skips_non_finite_steps_and_halves_the_scale():
    optimizer = LossScaleOptimizer(optimizers.SGD(learning_rate=1.0), initial_scale=8.0)
    assert optimizer.loss_scale == 8.0
    np.testing.assert_array_equal(_scaled_step(optimizer, [8.0, -16.0]), [0.0, 3.0])
    assert optimizer.iterations == 1
    for bad in ([np.inf, 1.0], [1.0, np.nan]):
        np.testing.assert_array_equal(_scaled_step(optimizer, bad), [1.0, 1.0])
    assert optimizer.loss_scale == 2.0
    assert optimizer.iterations == 1  # skipped steps do not count, as in Keras


def test_loss_scale_doubles_after_dynamic_growth_steps_finite_steps():
    optimizer = LossScaleOptimizer(optimizers.SGD(), initial_scale=4.0, dynamic_growth_steps=3)
    scales = []
    for grads in ([1.0], [1.0], [1.0], [1.0], [np.inf], [1.0], [1.0], [1.0]):
        _scaled_step(optimizer, grads)
        scales.append(optimizer.loss_scale)
    assert scales == [4.0, 4.0, 8.0, 8.0, 4.0, 4.0, 4.0, 8.0]


def test_loss_scale_optimizer_config_state_and_errors(tmp_path):
    optimizer = LossScaleOptimizer(optimizers.Adam(learning_rate=0.01), dynamic_growth_steps=5)
    config_ = optimizer.get_config()
    assert config_["inner_optimizer"]["class_name"] == "Adam"
    copy = optimizers.get({"class_name": "LossScaleOptimizer", "config": config_})
    assert isinstance(copy.inner_optimizer, optimizers.Adam)
    assert copy.dynamic_growth_steps == 5 and copy.learning_rate == 0.01
    copy.learning_rate = 0.5
    assert copy.inner_optimizer.learning_rate == 0.5
    with pytest.raises(ValueError, match="initial_scale to be positive"):
        LossScaleOptimizer(optimizers.SGD(), initial_scale=0)
    with pytest.raises(ValueError, match="dynamic_growth_steps to be a positive integer"):
        LossScaleOptimizer(optimizers.SGD(), dynamic_growth_steps=0)
    with pytest.raises(TypeError, match="set learning_rate and the rest on the inner"):
        LossScaleOptimizer(optimizers.SGD(), learning_rate=0.1)
    with pytest.raises(ValueError, match="cannot wrap another LossScaleOptimizer"):
        LossScaleOptimizer(LossScaleOptimizer(optimizers.SGD()))

    # the scale and its step count are saved with the model and restored
    x, y = _data()
    mixed_precision.set_global_policy("mixed_float16")
    model = _classifier(dtype="float32")
    model.compile(
        optimizer=LossScaleOptimizer(optimizers.Adam(), initial_scale=64.0),
        loss="sparse_categorical_crossentropy",
    )
    with pytest.warns(RuntimeWarning, match="no float16 kernels"):
        model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    model.optimizer._loss_scale = 16.0
    path = tmp_path / "mixed.keras"
    model.save(path)
    loaded = dlcore.models.load_model(path)
    assert isinstance(loaded.optimizer, LossScaleOptimizer)
    assert loaded.optimizer.loss_scale == 16.0
    assert loaded.optimizer.iterations == model.optimizer.iterations
    assert loaded.layers[0].dtype_policy.name == "mixed_float16"
    np.testing.assert_allclose(loaded.predict(x[:4]), model.predict(x[:4]), rtol=1e-6)


# ---------------------------------------------------------------------- matmul precision
def test_matmul_precision_is_checked_and_reaches_every_engine(monkeypatch):
    seen = []

    class Recorder(HalfEngine):
        def set_matmul_precision(self, precision):
            seen.append(precision)

    monkeypatch.setitem(backends._instances, "recorder", Recorder())
    monkeypatch.setattr(backends, "_matmul_precision", "highest")
    assert config.matmul_precision() == "highest"
    config.set_matmul_precision("high")
    assert config.matmul_precision() == "high" and seen == ["high"]
    with pytest.raises(ValueError, match="one of 'highest', 'high'; received 'medium'"):
        config.set_matmul_precision("medium")
    config.set_matmul_precision("highest")
    assert seen == ["high", "highest"]


def test_loss_scale_optimizer_is_not_made_from_a_bare_name():
    with pytest.raises(ValueError, match=r"wraps another optimizer: pass an instance"):
        optimizers.get("LossScaleOptimizer")


# ---------------------------------------------------------------------- engine operations
@pytest.mark.parametrize(("source", "target"), [("float32", "float64"), ("float64", "float32")])
def test_engine_cast_rounds_to_nearest_into_a_new_array_or_out(engine, to_host, source, target):
    values = np.array([[1.0 + 2.0**-30, -3.5, 1e-40], [7.0, 0.1, -0.0]])
    A = engine.asarray(values, dtype=source)
    expected = values.astype(source).astype(target)
    cast = engine.cast(A, target)
    assert dtype_name(cast.dtype) == target
    np.testing.assert_array_equal(to_host(cast), expected)
    out = engine.zeros((2, 3), dtype=target)
    assert engine.cast(A, target, out=out) is out
    np.testing.assert_array_equal(to_host(out), expected)
    np.testing.assert_array_equal(to_host(A), values.astype(source))  # left alone


# Numba's CUDA simulator runs kernel arithmetic on NumPy scalars, which warn where a GPU
# quietly makes inf or nan (0 * inf in the penalty sum that the check reads).
@pytest.mark.filterwarnings("ignore:.*encountered in scalar:RuntimeWarning")
def test_engine_all_finite_sees_every_inf_and_nan(engine):
    finite = np.linspace(-3e38, 3e38, 4099).astype(np.float32)  # sums past float32's range
    assert engine.all_finite(engine.asarray(finite, dtype="float32"))
    for position in (0, 2048, 4098):
        for bad in (np.inf, -np.inf, np.nan):
            values = finite.copy()
            values[position] = bad
            assert not engine.all_finite(engine.asarray(values, dtype="float32"))
