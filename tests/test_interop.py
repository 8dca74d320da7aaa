"""Tensors of other libraries (PyTorch, JAX) as data, without copies; predict(output=)."""

from __future__ import annotations

import numpy as np
import pytest

import dlcore
from dlcore.layers import Dense
from dlcore.models import Sequential


def _data(dtype="float32"):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 3)).astype(dtype)
    y = np.eye(2, dtype=dtype)[(x[:, 0] > 0).astype(int)]
    return x, y


def _model(seed=0):
    dlcore.set_random_seed(seed)
    model = Sequential([Dense(4, activation="relu", input_shape=(3,)), Dense(2, "softmax")])
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    return model


def _trained_weights(x, y):
    model = _model()
    model.fit(x, y, epochs=3, batch_size=4, shuffle=False, verbose=0)
    return model, model.get_weights()


def _spy_on_engine_data(model, monkeypatch):
    """The engine arrays that fit trains on, recorded as _to_engine returns them."""
    seen = []
    original = model._to_engine

    def recording(xs, ys):
        X, Y = original(xs, ys)
        seen.append(X)
        return X, Y

    monkeypatch.setattr(model, "_to_engine", recording)
    return seen


def test_torch_tensors_train_like_numpy_arrays_without_a_copy(monkeypatch):
    torch = pytest.importorskip("torch")
    x, y = _data()
    tx, ty = torch.from_numpy(x.copy()), torch.from_numpy(y.copy())
    assert np.shares_memory(np.from_dlpack(tx), tx.numpy())
    _, expected = _trained_weights(x, y)
    model = _model()
    seen = _spy_on_engine_data(model, monkeypatch)
    model.fit(tx, ty, epochs=3, batch_size=4, shuffle=False, verbose=0)
    for got, want in zip(model.get_weights(), expected):
        np.testing.assert_array_equal(got, want)
    (X,) = seen[0]
    assert X.__array_interface__["data"][0] == tx.data_ptr()  # the tensor's own memory
    np.testing.assert_allclose(model.evaluate(tx, ty, verbose=0), model.evaluate(x, y, verbose=0))
    np.testing.assert_array_equal(model.predict(tx), model.predict(x))


def test_jax_arrays_train_like_numpy_arrays():
    jnp = pytest.importorskip("jax.numpy")
    x, y = _data()
    _, expected = _trained_weights(x, y)
    model = _model()
    model.fit(jnp.asarray(x), jnp.asarray(y), epochs=3, batch_size=4, shuffle=False, verbose=0)
    for got, want in zip(model.get_weights(), expected):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(model.predict(jnp.asarray(x)), model.predict(x))


def test_a_float64_tensor_for_a_float32_model_is_converted(monkeypatch):
    torch = pytest.importorskip("torch")
    x, y = _data("float64")
    model = _model()
    seen = _spy_on_engine_data(model, monkeypatch)
    tx = torch.from_numpy(x)
    model.fit(tx, torch.from_numpy(y), epochs=1, verbose=0)
    (X,) = seen[0]
    assert X.dtype == np.float32 and X.__array_interface__["data"][0] != tx.data_ptr()
    np.testing.assert_array_equal(X, x.astype(np.float32))


def test_a_non_contiguous_tensor_is_copied_in_order(monkeypatch):
    torch = pytest.importorskip("torch")
    x, y = _data()
    wide = torch.from_numpy(np.repeat(x, 2, axis=1).copy())
    strided = wide[:, ::2]  # every other column: x again, not contiguous
    assert not strided.is_contiguous()
    _, expected = _trained_weights(x, y)
    model = _model()
    seen = _spy_on_engine_data(model, monkeypatch)
    model.fit(strided, torch.from_numpy(y), epochs=3, batch_size=4, shuffle=False, verbose=0)
    (X,) = seen[0]
    assert X.flags.c_contiguous
    np.testing.assert_array_equal(X, x)
    for got, want in zip(model.get_weights(), expected):
        np.testing.assert_array_equal(got, want)


def test_tensors_that_cannot_be_read_are_refused_with_the_reason():
    torch = pytest.importorskip("torch")
    x, y = _data()
    model = _model()
    needs_grad = torch.from_numpy(x).requires_grad_(True)
    with pytest.raises(ValueError, match=r"x could not be converted.*detach\(\)"):
        model.fit(needs_grad, y, epochs=1, verbose=0)
    half = torch.from_numpy(x).to(torch.bfloat16)
    with pytest.raises(ValueError, match="x could not be converted.*BFloat16"):
        model.predict(half)
    bad = torch.from_numpy(x.copy())
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="x contains 1 NaN or infinite value"):
        model.fit(bad, y, epochs=1, verbose=0)


class _OnDevice:
    """A stand-in for a GPU tensor: it speaks DLPack from CUDA device 0."""

    def __dlpack__(self, **kwargs):
        raise BufferError("on the device")

    def __dlpack_device__(self):
        return (2, 0)


def test_a_device_tensor_on_a_host_engine_is_refused_before_any_copy():
    model = _model()
    with pytest.raises(
        ValueError, match=r"x is a _OnDevice on a device \(DLPack device \(2, 0\)\)"
    ):
        model.predict(_OnDevice())


def test_predict_output_engine_returns_the_engines_arrays(engine):
    x, y = _data()
    model = _model()
    model.fit(x, y, epochs=1, verbose=0)
    expected = model.predict(x, batch_size=5)
    got = model.predict(x, batch_size=5, output="engine")
    assert not isinstance(got, np.ndarray) or engine.name == "numpy"
    np.testing.assert_allclose(engine.to_numpy(got), expected, rtol=1e-6, atol=1e-7)
    assert got.shape == (12, 2)
    with pytest.raises(
        ValueError, match=r"output=\.\.\.\) must be 'numpy'.*received output='torch'"
    ):
        model.predict(x, output="torch")


def test_engine_from_external_shares_memory_or_declines(engine):
    torch = pytest.importorskip("torch")
    t = torch.arange(6.0, dtype=torch.float32).reshape(3, 2)
    taken = engine.from_external(t, dtype="float32")
    if engine.name == "numpy":
        assert taken.__array_interface__["data"][0] == t.data_ptr()
        assert engine.from_external(t[:, ::2], dtype="float32") is None  # not contiguous
    else:  # array_api_strict lives on its own device; numba takes device memory only
        assert taken is None
    assert engine.from_external(t, dtype="float64") is None
    assert engine.from_external(np.float32(1.0).item(), dtype="float32") is None


def test_readme_interop_example():
    torch = pytest.importorskip("torch")
    # the README's example, as written there
    x = torch.rand(64, 3)
    y = torch.nn.functional.one_hot(torch.randint(0, 2, (64,)), 2).float()
    model = Sequential([Dense(8, activation="relu", input_shape=(3,)), Dense(2, "softmax")])
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    model.fit(x, y, epochs=2, verbose=0)  # no copy of x: a float32 model reads its memory
    probabilities = model.predict(x, output="engine")  # engine arrays, no host copy
    assert probabilities.shape == (64, 2)
