"""Saving and loading models on every engine: what users rely on.

A saved model comes back with the same architecture, weights, dtype, compile
settings and optimizer state, whatever the file name; training continues
exactly where it stopped; a failed save never damages an existing file; a model
saved on one engine loads on another.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import pytest

import dlcore
from dlcore import archive
from dlcore.initializers import Constant, RandomNormal
from dlcore.layers import Activation, Dense, Dropout, Input, PReLU
from dlcore.losses import CategoricalCrossentropy
from dlcore.models import Sequential, load_model
from dlcore.optimizers import SGD, Adagrad, Adam, Adamax, Nadam, RMSprop
from dlcore.regularizers import l1_l2, l2
from dlcore.utils import to_categorical

FEATURES, CLASSES = 5, 3
FILE_NAMES = ["model.h5", "model.keras", "model"]


def blobs(n: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Inputs ``(n, 5)`` float64 and one-hot targets ``(n, 3)`` float32 of Gaussian blobs."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, n)
    centers = rng.standard_normal((CLASSES, FEATURES)) * 2
    return centers[labels] + rng.standard_normal((n, FEATURES)), to_categorical(labels, CLASSES)


def every_layer_model(dropout: float = 0.25, seed: int = 11) -> Sequential:
    """Every layer type, with regularizers and non-default initializers, on the current engine."""
    dlcore.set_random_seed(seed)
    return Sequential(
        [
            Dense(
                8,
                activation="tanh",
                input_shape=(FEATURES,),
                kernel_initializer=RandomNormal(mean=0.0, stddev=0.4),
                bias_initializer=Constant(0.05),
                kernel_regularizer=l1_l2(l1=1e-3, l2=1e-3),
                bias_regularizer=l2(1e-3),
            ),
            PReLU(alpha_initializer=Constant(0.2), alpha_regularizer=l2(1e-3)),
            Dropout(dropout),
            Dense(6, activation="relu", kernel_initializer="he_uniform", bias_initializer="ones"),
            Dense(CLASSES, use_bias=False),
            Activation("softmax"),
        ],
        name="every_layer",
    )


def layer_configs(model: Sequential) -> list[tuple[str, dict]]:
    """Each layer's class and config without its name (names are checked on their own)."""
    return [
        (type(layer).__name__, {k: v for k, v in layer.get_config().items() if k != "name"})
        for layer in model.layers
    ]


def assert_same_weights(a: Sequential, b: Sequential) -> None:
    wa, wb = a.get_weights(), b.get_weights()
    assert len(wa) == len(wb)
    for x, y in zip(wa, wb):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(y, x)


def assert_same_optimizer(a: Sequential, b: Sequential) -> None:
    assert type(b.optimizer) is type(a.optimizer)
    assert b.optimizer.get_config() == a.optimizer.get_config()
    assert b.optimizer.iterations == a.optimizer.iterations
    state_a, state_b = a.optimizer.get_state(), b.optimizer.get_state()
    assert sorted(state_a) == sorted(state_b)
    for key in state_a:
        assert state_b[key].dtype == state_a[key].dtype, key
        np.testing.assert_array_equal(state_b[key], state_a[key], err_msg=key)


def only_files(directory) -> list[str]:
    """The names in ``directory``, hidden temporary files included."""
    return sorted(os.listdir(directory))


# ---------------------------------------------------------------- round trip
@pytest.mark.parametrize("file_name", FILE_NAMES)
def test_round_trip_of_a_trained_model(engine, tmp_path, file_name):
    x, y = blobs()
    model = every_layer_model()
    model.compile(
        optimizer=Adam(learning_rate=0.01),
        loss="categorical_crossentropy",
        metrics=["accuracy", "mae"],
    )
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    path = tmp_path / file_name
    model.save(path)
    assert only_files(tmp_path) == [file_name], "the name is used exactly as given"

    loaded = load_model(path)
    assert loaded.engine is engine
    assert loaded.dtype == model.dtype == "float32"
    assert loaded.name == model.name
    assert loaded.input_features == FEATURES
    assert layer_configs(loaded) == layer_configs(model)
    assert [layer.units for layer in loaded.layers] == [8, 8, 8, 6, 3, 3]
    assert_same_weights(model, loaded)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))

    assert loaded.compiled
    assert loaded.loss.get_config() == model.loss.get_config()
    assert loaded.metric_names == ["accuracy", "mae"]
    assert_same_optimizer(model, loaded)
    assert loaded.evaluate(x, y, verbose=0) == model.evaluate(x, y, verbose=0)


def test_round_trip_keeps_layer_names(engine, tmp_path):
    model = Sequential([Dense(4, input_shape=(FEATURES,), name="hidden"), Dense(2, name="scores")])
    model.save(tmp_path / "named.keras")
    loaded = load_model(tmp_path / "named.keras")
    assert [layer.name for layer in loaded.layers] == ["hidden", "scores"]


def test_round_trip_keeps_loss_objects_and_keras2_metric_names(engine, tmp_path):
    x, y = blobs()
    dlcore.set_random_seed(2)
    model = Sequential([Input(shape=(FEATURES,)), Dense(CLASSES)])
    model.compile(
        optimizer=SGD(learning_rate=0.05, momentum=0.5),
        loss=CategoricalCrossentropy(from_logits=True),
        metrics=["acc"],
    )
    model.fit(x, y, epochs=1, verbose=0)
    model.save(tmp_path / "logits.keras")
    loaded = load_model(tmp_path / "logits.keras")
    assert loaded.loss.name == "categorical_crossentropy" and loaded.loss.from_logits
    assert loaded.metric_names == ["acc"]
    assert loaded.input_features == FEATURES
    assert_same_optimizer(model, loaded)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert loaded.evaluate(x, y, verbose=0) == model.evaluate(x, y, verbose=0)


def test_a_compiled_but_untrained_model_round_trips(engine, tmp_path):
    model = every_layer_model()
    model.compile(optimizer="rmsprop", loss="categorical_crossentropy")
    model.save(tmp_path / "fresh.keras")
    loaded = load_model(tmp_path / "fresh.keras")
    assert loaded.compiled and not loaded.optimizer.built
    assert loaded.optimizer.iterations == 0
    assert_same_weights(model, loaded)
    x, y = blobs()
    model.fit(x, y, epochs=1, shuffle=False, verbose=0)
    loaded.fit(x, y, epochs=1, shuffle=False, verbose=0)
    assert loaded.optimizer.iterations == model.optimizer.iterations == 2


# ---------------------------------------------------------------- continuing training
OPTIMIZERS: dict[str, Callable[[], object]] = {
    "adam": lambda: Adam(learning_rate=0.01),
    "adam-amsgrad": lambda: Adam(learning_rate=0.01, amsgrad=True),
    "rmsprop-centered-momentum": lambda: RMSprop(learning_rate=0.01, centered=True, momentum=0.5),
    "sgd-nesterov": lambda: SGD(learning_rate=0.05, momentum=0.9, nesterov=True),
    "adagrad": lambda: Adagrad(learning_rate=0.05),
    "adamax": lambda: Adamax(learning_rate=0.01),
    "nadam": lambda: Nadam(learning_rate=0.01),
}


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_training_continues_exactly_after_load(engine, tmp_path, optimizer):
    # Dropout is off: each fit call reseeds the engine's mask stream from the global
    # generator, so masks differ between one fit of 2 epochs and two fits of 1, in Keras too.
    x, y = blobs()

    def compiled() -> Sequential:
        model = every_layer_model(dropout=0.0)
        model.compile(
            optimizer=OPTIMIZERS[optimizer](), loss="categorical_crossentropy", metrics=["accuracy"]
        )
        return model

    uninterrupted = compiled()
    history = uninterrupted.fit(x, y, batch_size=10, epochs=2, shuffle=False, verbose=0)

    first = compiled()
    first.fit(x, y, batch_size=10, epochs=1, shuffle=False, verbose=0)
    first.save(tmp_path / "checkpoint.keras")
    del first
    resumed = load_model(tmp_path / "checkpoint.keras")
    assert resumed.optimizer.iterations == 5
    second = resumed.fit(x, y, batch_size=10, epochs=1, shuffle=False, verbose=0)

    assert resumed.optimizer.iterations == uninterrupted.optimizer.iterations == 10
    assert_same_weights(uninterrupted, resumed)
    assert_same_optimizer(uninterrupted, resumed)
    assert second.history["loss"][0] == history.history["loss"][1]
    assert second.history["accuracy"][0] == history.history["accuracy"][1]


def test_training_with_shuffling_continues_exactly_after_load(engine, tmp_path):
    # The global generator drives the shuffling; restoring its position as well
    # makes the resumed run draw the same batches as the uninterrupted one.
    x, y = blobs()

    def compiled() -> Sequential:
        model = every_layer_model(dropout=0.0)
        model.compile(optimizer=Adam(learning_rate=0.01), loss="categorical_crossentropy")
        return model

    uninterrupted = compiled()
    dlcore.set_random_seed(99)
    uninterrupted.fit(x, y, batch_size=10, epochs=1, verbose=0)
    uninterrupted.fit(x, y, batch_size=10, epochs=1, verbose=0)

    first = compiled()
    dlcore.set_random_seed(99)
    first.fit(x, y, batch_size=10, epochs=1, verbose=0)
    rng_state = dlcore.config.rng().bit_generator.state
    first.save(tmp_path / "checkpoint.keras")
    dlcore.set_random_seed(12345)  # anything may happen in between
    resumed = load_model(tmp_path / "checkpoint.keras")
    dlcore.config.rng().bit_generator.state = rng_state
    resumed.fit(x, y, batch_size=10, epochs=1, verbose=0)
    assert_same_weights(uninterrupted, resumed)


# ---------------------------------------------------------------- compile=False, uncompiled
def test_load_model_compile_false_returns_an_uncompiled_model(engine, tmp_path):
    x, y = blobs()
    model = every_layer_model()
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=1, verbose=0)
    model.save(tmp_path / "model.keras")

    loaded = load_model(tmp_path / "model.keras", compile=False)
    assert not loaded.compiled
    assert loaded.optimizer is None and loaded.loss is None and loaded.metric_names == []
    assert_same_weights(model, loaded)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    with pytest.raises(RuntimeError, match=r"you must compile the model before fit\(\)"):
        loaded.fit(x, y, verbose=0)
    loaded.compile(optimizer=SGD(learning_rate=0.1), loss="categorical_crossentropy")
    loaded.fit(x, y, epochs=1, batch_size=48, verbose=0)
    assert loaded.optimizer.iterations == 1


def test_an_uncompiled_model_saves_and_loads(engine, tmp_path):
    model = every_layer_model()
    model.build()
    model.save(tmp_path / "bare")
    loaded = load_model(tmp_path / "bare")
    assert not loaded.compiled and loaded.optimizer is None
    assert layer_configs(loaded) == layer_configs(model)
    assert_same_weights(model, loaded)
    x, _ = blobs()
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def test_an_unbuilt_model_without_input_shape_cannot_be_saved(engine, tmp_path):
    model = Sequential([Dense(3)])
    with pytest.raises(ValueError, match=r"save\(\): the model has no input shape yet"):
        model.save(tmp_path / "model.keras")
    assert only_files(tmp_path) == []


def test_a_model_built_from_input_shape_is_saved_without_fitting(engine, tmp_path):
    model = Sequential([Input(shape=(FEATURES,)), Dense(2, activation="sigmoid")])
    model.save(tmp_path / "model.keras")
    loaded = load_model(tmp_path / "model.keras")
    assert_same_weights(model, loaded)


# ---------------------------------------------------------------- dtype
@pytest.mark.parametrize("saved,current", [("float64", "float32"), ("float32", "float64")])
def test_saved_dtype_wins_over_floatx(engine, tmp_path, saved, current):
    x, y = blobs()
    dlcore.set_floatx(saved)
    model = every_layer_model()
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    model.fit(x, y, epochs=1, verbose=0)
    model.save(tmp_path / "model.keras")

    dlcore.set_floatx(current)
    loaded = load_model(tmp_path / "model.keras")
    assert dlcore.floatx() == current, "loading must not change floatx"
    assert loaded.dtype == saved
    assert all(w.dtype == np.dtype(saved) for w in loaded.get_weights())
    assert all(
        v.dtype == np.dtype(saved)
        for k, v in loaded.optimizer.get_state().items()
        if k != "iterations"
    )
    prediction = loaded.predict(x)
    assert prediction.dtype == np.dtype(saved)
    np.testing.assert_array_equal(prediction, model.predict(x))
    assert_same_weights(model, loaded)
    loaded.fit(x, y, epochs=1, verbose=0)
    assert loaded.get_weights()[0].dtype == np.dtype(saved)
    assert Sequential([Dense(2, input_shape=(3,))]).get_weights()[0].dtype == np.dtype(current)


# ---------------------------------------------------------------- failed saves, overwrite
def _trained(seed: int) -> Sequential:
    x, y = blobs()
    model = every_layer_model(seed=seed)
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    model.fit(x, y, epochs=1, verbose=0)
    return model


class DiskFull(OSError):
    pass


def _fail_mid_write(monkeypatch, error: BaseException) -> None:
    """Make the archive writer put some bytes in its file and then fail."""

    def broken(fileobj, members, companions):
        fileobj.write(b"PK\x03\x04 half a model")
        raise error

    monkeypatch.setattr(archive, "_write_npz", broken)


def _fail_on(monkeypatch, module, name: str, error: BaseException) -> None:
    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(module, name, broken)


FAILURES = {
    "disk-full-mid-write": lambda mp: _fail_mid_write(mp, DiskFull(28, "No space left on device")),
    "interrupted-mid-write": lambda mp: _fail_mid_write(mp, KeyboardInterrupt()),
    "fsync-fails": lambda mp: _fail_on(mp, archive.os, "fsync", OSError(5, "I/O error")),
    "rename-refused": lambda mp: _fail_on(
        mp, archive.os, "replace", PermissionError(13, "Permission denied")
    ),
}


@pytest.mark.parametrize("failure", list(FAILURES))
@pytest.mark.parametrize("method", ["save", "save_weights"])
def test_failed_save_leaves_the_old_file_loadable(engine, tmp_path, monkeypatch, failure, method):
    good, newer = _trained(seed=1), _trained(seed=2)
    path = tmp_path / "model.h5"
    getattr(good, method)(path)
    old_bytes = path.read_bytes()

    with monkeypatch.context() as patch:
        FAILURES[failure](patch)
        with pytest.raises((OSError, KeyboardInterrupt)):
            getattr(newer, method)(path)

    assert path.read_bytes() == old_bytes
    assert only_files(tmp_path) == ["model.h5"], "no temporary file is left behind"
    if method == "save":
        restored = load_model(path)
        assert_same_optimizer(good, restored)
    else:
        restored = every_layer_model(seed=3)
        restored.load_weights(path)
    assert_same_weights(good, restored)


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0,
    reason="needs a user whom file permissions restrict (not root)",
)
def test_save_into_a_read_only_directory_keeps_the_old_file(engine, tmp_path):
    good, newer = _trained(seed=1), _trained(seed=2)
    path = tmp_path / "model.keras"
    good.save(path)
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(PermissionError):
            newer.save(path)
    finally:
        tmp_path.chmod(0o700)
    assert_same_weights(good, load_model(path))


def test_overwrite_true_replaces_and_false_refuses(engine, tmp_path):
    first, second = _trained(seed=1), _trained(seed=2)
    path = tmp_path / "model.keras"
    first.save(path)
    second.save(path)  # overwrite=True is the default, as in Keras
    assert_same_weights(second, load_model(path))

    before = path.read_bytes()
    pattern = r"model\.keras exists and overwrite=False; choose another name"
    with pytest.raises(FileExistsError, match=pattern):
        first.save(path, overwrite=False)
    with pytest.raises(FileExistsError, match=pattern):
        first.save_weights(path, overwrite=False)
    assert path.read_bytes() == before
    assert only_files(tmp_path) == ["model.keras"]

    fresh = tmp_path / "other.keras"
    first.save(fresh, overwrite=False)
    assert_same_weights(first, load_model(fresh))


def test_save_into_a_missing_directory_writes_nothing(engine, tmp_path):
    model = _trained(seed=1)
    with pytest.raises(FileNotFoundError, match=r"the directory .* does not exist; create it"):
        model.save(tmp_path / "missing" / "model.keras")
    with pytest.raises(IsADirectoryError, match=r"it is a directory; pass a file name"):
        model.save(tmp_path)
    assert only_files(tmp_path) == []


# ---------------------------------------------------------------- weights only
@pytest.mark.parametrize("file_name", FILE_NAMES)
def test_save_weights_load_weights_round_trip(engine, tmp_path, file_name):
    x, _ = blobs()
    source = _trained(seed=1)
    path = tmp_path / file_name
    source.save_weights(path)

    target = every_layer_model(seed=5)
    target.compile(optimizer="adam", loss="categorical_crossentropy")
    target.build()
    assert not np.array_equal(target.get_weights()[0], source.get_weights()[0])
    target.load_weights(path)
    assert_same_weights(source, target)
    np.testing.assert_array_equal(target.predict(x), source.predict(x))
    assert target.optimizer.iterations == 0, "weights files carry no optimizer state"

    with pytest.raises(ValueError, match=r"is a dlcore file but not a saved model"):
        load_model(path)


def test_load_weights_reads_a_whole_model_file(engine, tmp_path):
    source = _trained(seed=1)
    source.save(tmp_path / "whole.keras")
    target = every_layer_model(seed=5)
    target.load_weights(tmp_path / "whole.keras")
    assert_same_weights(source, target)


def test_load_weights_shape_mismatch_names_both_shapes(engine, tmp_path):
    source = _trained(seed=1)
    path = tmp_path / "weights.h5"
    source.save_weights(path)
    other = Sequential([Dense(4, input_shape=(FEATURES,)), Dense(CLASSES)])
    before = other.get_weights()
    pattern = (
        r"the weights in .*weights\.h5 have shapes \[\(5, 8\), \(8,\), \(8,\), \(8, 6\), \(6,\), "
        r"\(6, 3\)\], this model has \[\(5, 4\), \(4,\), \(4, 3\), \(3,\)\]"
    )
    with pytest.raises(ValueError, match=pattern):
        other.load_weights(path)
    for old, new in zip(before, other.get_weights()):
        np.testing.assert_array_equal(new, old)


# ---------------------------------------------------------------- across engines
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    "source,target", [("numpy", "array_api_strict"), ("array_api_strict", "numpy")]
)
def test_a_model_saved_on_one_engine_loads_on_another(tmp_path, dtype, source, target):
    x, y = blobs()
    dlcore.set_floatx(dtype)
    with dlcore.use_backend(source):
        model = every_layer_model(dropout=0.0)  # masks come from each engine's own generator
        model.compile(
            optimizer=RMSprop(learning_rate=0.01, momentum=0.3),
            loss="categorical_crossentropy",
            metrics=["accuracy"],
        )
        model.fit(x, y, batch_size=16, epochs=2, verbose=0)
        model.save(tmp_path / "model.keras")
        expected = model.predict(x)
        expected_eval = model.evaluate(x, y, verbose=0)

    dlcore.set_floatx("float32")
    dlcore.set_backend(target)
    loaded = load_model(tmp_path / "model.keras")
    assert loaded.engine.name == target
    assert loaded.dtype == dtype
    assert_same_weights(model, loaded)
    assert_same_optimizer(model, loaded)
    tolerance = {"float32": 1e-6, "float64": 1e-13}[dtype]
    np.testing.assert_allclose(loaded.predict(x), expected, rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(loaded.evaluate(x, y, verbose=0), expected_eval, rtol=tolerance)

    # Training goes on on the new engine with the restored optimizer state.
    dlcore.set_floatx(dtype)
    with dlcore.use_backend(source):
        model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    loaded.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_allclose(b, a, rtol=10 * tolerance, atol=10 * tolerance)
