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
    taken = engine.from_external(t)
    if engine.name == "numpy":
        assert taken.__array_interface__["data"][0] == t.data_ptr()
        assert taken.dtype == np.float32
        assert engine.from_external(t.double()).dtype == np.float64  # its own dtype
        assert engine.from_external(t[:, ::2]) is None  # not contiguous
        assert engine.from_external(t.to(torch.int16)) is None  # a dtype the engine lacks
    else:  # array_api_strict lives on its own device; numba takes device memory only
        assert taken is None
    assert engine.from_external(1.0) is None


def test_engine_arrays_are_taken_as_they_are(engine):
    own = engine.asarray(np.arange(6.0).reshape(3, 2), dtype="float32")
    assert engine.from_external(own) is own


# ------------------------------------------------------------ data on the engine's device
def _on_engine(engine, host):
    """``host`` as the engine's own array, the way a GPU tensor of the user arrives: on
    array_api_strict it lives on a simulated device that NumPy cannot read."""
    return engine.asarray(host, dtype=host.dtype.name)


def test_data_on_the_engine_trains_like_host_data(engine, monkeypatch):
    x, y = _data()
    labels = np.argmax(y, axis=1)
    expected_model, expected = _trained_weights(x, y)
    model = _model()
    X, Y = _on_engine(engine, x), _on_engine(engine, y)
    history = model.fit(X, Y, epochs=3, batch_size=4, shuffle=False, verbose=0)
    for got, want in zip(model.get_weights(), expected):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(
        history.history["loss"][-1], expected_model.history.history["loss"][-1], rtol=1e-6
    )
    np.testing.assert_allclose(
        model.evaluate(X, Y, verbose=0), model.evaluate(x, y, verbose=0), rtol=1e-6
    )
    seen = _spy_on_engine_data(model, monkeypatch)
    np.testing.assert_allclose(model.predict(X), model.predict(x), rtol=1e-6, atol=1e-7)
    assert seen[0][0] is X  # predicted from the array itself, not a copy
    sparse = _model()
    sparse.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    sparse.fit(X, _on_engine(engine, labels), epochs=1, verbose=0)


def test_data_on_the_engine_splits_validation_and_converts_dtype(engine):
    x, y = _data("float64")
    model = _model()
    on_host = model.fit(x, y, epochs=2, batch_size=4, validation_split=0.25, verbose=0)
    model = _model()
    on_engine = model.fit(
        _on_engine(engine, x),
        _on_engine(engine, y),
        epochs=2,
        batch_size=4,
        validation_split=0.25,
        verbose=0,
    )
    for key, values in on_host.history.items():
        np.testing.assert_allclose(on_engine.history[key], values, rtol=1e-6, err_msg=key)


def test_class_weight_with_targets_on_the_engine(engine):
    x, y = _data()
    weights = {0: 1.0, 1: 3.0}
    model = _model()
    model.fit(x, y, epochs=2, batch_size=4, shuffle=False, class_weight=weights, verbose=0)
    expected = model.get_weights()
    model = _model()
    X, Y = _on_engine(engine, x), _on_engine(engine, y)
    model.fit(X, Y, epochs=2, batch_size=4, shuffle=False, class_weight=weights, verbose=0)
    for got, want in zip(model.get_weights(), expected):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def _with(array, index, value):
    changed = array.copy()
    changed[index] = value
    return changed


@pytest.mark.parametrize(
    ("case", "loss", "pattern"),
    [
        (
            "nan",
            "categorical_crossentropy",
            r"x contains 1 NaN or infinite value\(s\), the first at index \(2, 1\)",
        ),
        (
            "width",
            "categorical_crossentropy",
            r"the model expects inputs with 3 features .*received x.shape=\(12, 2\)",
        ),
        (
            "overflow",
            "categorical_crossentropy",
            r"x holds values up to 1e\+300, beyond the range of the model's float32",
        ),
        (
            "label",
            "sparse_categorical_crossentropy",
            r"label 7 in y is out of range for the output layer of 2 units",
        ),
        ("fraction", "sparse_categorical_crossentropy", r"non-integer values such as 0\.5"),
        (
            "one_hot",
            "categorical_crossentropy",
            r"categorical_crossentropy expects one-hot targets .*received integer labels",
        ),
        (
            "binary",
            "binary_crossentropy",
            r"binary_crossentropy expects targets in \[0, 1\], received values from 0\.0 to 2\.0",
        ),
        ("target_nan", "mse", r"y contains 1 NaN or infinite value"),
    ],
)
def test_data_on_the_engine_is_refused_as_host_data_is(engine, case, loss, pattern):
    x, y = _data()
    labels = np.argmax(y, axis=1).astype(np.int64)
    if loss == "binary_crossentropy":
        y = y[:, :1].copy()
    if case == "nan":
        x = _with(x, (2, 1), np.nan)
    elif case == "width":
        x = x[:, :2].copy()
    elif case == "overflow":
        x = _with(x.astype(np.float64), (0, 0), 1e300)
    elif case == "label":
        y = _with(labels, 3, 7)
    elif case == "fraction":
        y = _with(labels.astype(np.float32), 3, 0.5)
    elif case == "one_hot":
        y = labels.astype(np.float32)
    elif case == "binary":
        y = _with(y, (0, 0), 2.0)
    elif case == "target_nan":
        y = _with(y, (1, 1), np.nan)
    dlcore.set_random_seed(0)
    units = 1 if loss == "binary_crossentropy" else 2
    model = Sequential([Dense(4, activation="relu", input_shape=(3,)), Dense(units)])
    model.compile(optimizer="sgd", loss=loss)
    before = model.get_weights()
    for data in ((x, y), (_on_engine(engine, x), _on_engine(engine, y))):
        with pytest.raises(ValueError, match=pattern):
            model.fit(*data, epochs=1, verbose=0)
    for got, want in zip(model.get_weights(), before):
        np.testing.assert_array_equal(got, want)


def test_count_outside_counts_what_fails_a_check(engine):
    values = np.array([0.0, 1.5, 2.0, np.nan, np.inf, -3.0, 7.0, -np.inf], dtype=np.float32)
    A = engine.asarray(values, dtype="float32")
    assert engine.count_outside(A, 0.0, 5.0) == 5  # nan, inf, -3, 7, -inf
    assert engine.count_outside(A, 0.0, 5.0, whole=True) == 6  # and 1.5
    assert engine.count_outside(A, -np.inf, np.inf) == 3  # not finite
    wide = engine.asarray(np.array([1e300, -2.0, 3.0]), dtype="float64")
    assert engine.count_outside(wide, -3.4e38, 3.4e38) == 1  # beyond float32
    labels = engine.asarray(np.array([0, 3, 9, -1, 2**40]), dtype="int64")
    assert engine.count_outside(labels, 0, 3) == 3
    assert engine.count_outside(labels, -0.5, 9.5) == 2
    assert engine.count_outside(labels, -np.inf, np.inf) == 0
    assert engine.count_outside(labels, 0.2, 0.8) == 5  # no whole number inside


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
