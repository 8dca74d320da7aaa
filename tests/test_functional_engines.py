"""Functional models give the same numbers on every engine (float64, to 1e-10 of NumPy),
and a pickled model unpickles onto the engine current then.

Kept small enough for the simulated numba engine (a few samples, two steps), so they
run there on every test run.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_functional import residual_model, two_in_two_out_model

import dlcore
from dlcore.utils import to_categorical

SAMPLES = 6
BATCH = 3


def train(engine_name, build, frozen=None):
    dlcore.set_floatx("float64")
    rng = np.random.default_rng(7)
    with dlcore.use_backend(engine_name):
        dlcore.set_random_seed(11)
        model = build()
        if frozen:
            model.get_layer(frozen).trainable = False
        xs = [rng.normal(size=(SAMPLES, t.features)) for t in model.inputs]
        ys = []
        for name, width in zip(model.output_names, [t.features for t in model.outputs]):
            if name in ("out", "cls"):
                ys.append(to_categorical(rng.integers(0, width, SAMPLES), width))
            else:
                ys.append(rng.normal(size=(SAMPLES, width)))
        losses = [
            "categorical_crossentropy" if n in ("out", "cls") else "mse" for n in model.output_names
        ]
        model.compile(optimizer="adam", loss=losses, loss_weights=[1.0, 0.5][: len(losses)])
        history = model.fit(xs, ys, epochs=1, batch_size=BATCH, shuffle=False, verbose=0)
        predictions = model.predict(xs)
        return history.history, model.get_weights(), predictions


@pytest.mark.parametrize(
    "build, frozen",
    [(residual_model, None), (two_in_two_out_model, None), (two_in_two_out_model, "pa")],
    ids=["residual", "two-by-two", "two-by-two-frozen"],
)
def test_every_engine_matches_numpy(engine_name, build, frozen):
    if engine_name == "numpy":
        pytest.skip("numpy is the reference")
    expected = train("numpy", build, frozen)
    got = train(engine_name, build, frozen)
    assert set(got[0]) == set(expected[0])
    for key in expected[0]:
        np.testing.assert_allclose(got[0][key], expected[0][key], rtol=1e-10, err_msg=key)
    for a, b in zip(got[1], expected[1]):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    for a, b in zip(_as_list(got[2]), _as_list(expected[2])):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def _as_list(value):
    return value if isinstance(value, list) else [value]


@pytest.mark.parametrize("direction", ["from", "to"])
def test_a_pickled_model_loads_on_the_engine_current_where_it_is_unpickled(engine_name, direction):
    import pickle

    dlcore.set_floatx("float64")
    source, target = ("numpy", engine_name) if direction == "to" else (engine_name, "numpy")
    rng = np.random.default_rng(5)
    xs = [rng.normal(size=(SAMPLES, 4)), rng.normal(size=(SAMPLES, 3))]
    with dlcore.use_backend(source):
        model = two_in_two_out_model()
        model.compile(optimizer="adam", loss=["categorical_crossentropy", "mse"])
        model.train_on_batch(
            xs, [to_categorical(np.arange(SAMPLES) % 3, 3), rng.normal(size=(SAMPLES, 2))]
        )
        expected = model.predict(xs)
        payload = pickle.dumps(model)
    with dlcore.use_backend(target):
        copy = pickle.loads(payload)
        assert copy.engine.name == target
        assert copy.optimizer.iterations == 1
        for a, b in zip(copy.predict(xs), expected):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
