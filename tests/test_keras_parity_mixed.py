"""dlcore's mixed precision against Keras 3's: policies, loss scaling, and training numbers.

Runs where Keras can train (``make parity``); see ``tests/test_keras_parity.py``. Keras
computes ``mixed_float16`` in float16 on the CPU; dlcore's numpy engine computes it in
float32 (with a warning), so training numbers agree to float16's precision, while the
loss-scale bookkeeping is compared exactly.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

import dlcore
from dlcore import mixed_precision, optimizers
from dlcore.layers import Activation, Dense

os.environ.setdefault("KERAS_BACKEND", "jax")
try:
    import keras
except Exception as error:  # absent, or a Keras whose backend cannot start
    if os.environ.get("DLCORE_REQUIRE_KERAS") == "1":
        pytest.fail(f"DLCORE_REQUIRE_KERAS=1, but keras could not be imported: {error!r}")
    pytest.skip(f"keras could not be imported: {error!r}", allow_module_level=True)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings(
        "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
    ),
]


@pytest.fixture(autouse=True)
def _float32_policies():
    yield
    keras.mixed_precision.set_global_policy("float32")
    mixed_precision.set_global_policy("float32")
    mixed_precision._warned.clear()


@pytest.mark.parametrize(
    "name", ["mixed_float16", "mixed_bfloat16", "float16", "bfloat16", "float32", "float64"]
)
def test_policy_dtypes_match_keras(name):
    ours, theirs = mixed_precision.DTypePolicy(name), keras.DTypePolicy(name)
    assert (ours.compute_dtype, ours.variable_dtype) == (
        theirs.compute_dtype,
        theirs.variable_dtype,
    )
    assert repr(ours) == repr(theirs)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_layers_and_compile_follow_the_global_policy_as_keras(policy):
    keras.mixed_precision.set_global_policy(policy)
    mixed_precision.set_global_policy(policy)
    theirs = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(3),
            keras.layers.Activation("softmax", dtype="float32"),
        ]
    )
    ours = dlcore.Sequential([Dense(3, input_shape=(4,)), Activation("softmax", dtype="float32")])
    for mine, keras_layer in zip(ours.layers, theirs.layers):
        assert mine.compute_dtype == keras_layer.compute_dtype
        assert mine.variable_dtype == keras_layer.variable_dtype
    theirs.compile(optimizer="sgd", loss="mse")
    ours.compile(optimizer="sgd", loss="mse")
    assert type(ours.optimizer).__name__ == type(theirs.optimizer).__name__


def test_loss_scale_bookkeeping_matches_keras():
    """The same (already scaled) gradients, finite and not, through both optimizers:
    every step's weights and loss scale agree."""
    grads = [
        [1024.0, -2048.0],
        [np.inf, 1.0],
        [512.0, 256.0],
        [256.0, np.nan],
        [128.0, 64.0],
        [64.0, 32.0],
        [32.0, 16.0],
        [16.0, 8.0],
    ]
    variable = keras.Variable(np.array([1.0, 2.0], dtype="float32"))
    theirs = keras.optimizers.LossScaleOptimizer(
        keras.optimizers.SGD(learning_rate=0.1), initial_scale=256.0, dynamic_growth_steps=2
    )
    theirs.build([variable])
    # Keras's JAX backend applies optimizers statelessly (its stateful apply cannot run
    # the loss-scale condition eagerly), as its fit does
    paths = [v.path for v in theirs.variables]
    scale_at = paths.index(theirs.dynamic_scale.path)
    iterations_at = paths.index(theirs.inner_optimizer.iterations.path)
    optimizer_values = [v.value for v in theirs.variables]
    trainable = [variable.value]
    ours = optimizers.LossScaleOptimizer(
        optimizers.SGD(learning_rate=0.1), initial_scale=256.0, dynamic_growth_steps=2
    )
    engine = dlcore.backends.get("numpy")
    params = engine.asarray(np.array([1.0, 2.0]), dtype="float32")
    ours.build(engine, 2, "float32")
    for step in grads:
        gradient = keras.ops.convert_to_tensor(np.array(step, "float32"))
        trainable, optimizer_values = theirs.stateless_apply(
            optimizer_values, [gradient], trainable
        )
        ours.apply(engine, params, engine.asarray(np.array(step), dtype="float32"))
        np.testing.assert_allclose(engine.to_numpy(params), np.asarray(trainable[0]), rtol=1e-7)
        assert ours.loss_scale == float(optimizer_values[scale_at])
        assert ours.iterations == int(optimizer_values[iterations_at])


def test_mixed_float16_training_matches_keras_to_float16_precision():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype("float32")
    y = rng.integers(0, 3, 64)
    W1 = (rng.normal(size=(6, 16)) * 0.4).astype("float32")
    W2 = (rng.normal(size=(16, 3)) * 0.4).astype("float32")
    weights = [W1, np.zeros(16, "float32"), W2, np.zeros(3, "float32")]

    keras.mixed_precision.set_global_policy("mixed_float16")
    theirs = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(3),
            keras.layers.Activation("softmax", dtype="float32"),
        ]
    )
    theirs.set_weights(weights)
    theirs.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    expected = theirs.fit(x, y, epochs=3, batch_size=16, shuffle=False, verbose=0).history

    mixed_precision.set_global_policy("mixed_float16")
    ours = dlcore.Sequential(
        [
            Dense(16, activation="relu", input_shape=(6,)),
            Dense(3),
            Activation("softmax", dtype="float32"),
        ]
    )
    ours.compile(optimizer=optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "the numpy engine has no float16 kernels")
        ours.set_weights(weights)
        history = ours.fit(x, y, epochs=3, batch_size=16, shuffle=False, verbose=0).history
    assert isinstance(ours.optimizer, optimizers.LossScaleOptimizer)
    # float16 keeps 11 significant bits: losses near 1 agree to a few of its ulps
    np.testing.assert_allclose(history["loss"], expected["loss"], rtol=5e-3)
    assert ours.optimizer.loss_scale == float(theirs.optimizer.dynamic_scale)
    for mine, keras_weight in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(mine, keras_weight, atol=5e-3)
