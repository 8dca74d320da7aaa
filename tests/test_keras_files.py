"""Keras model files (dlcore.keras_files): Keras-written fixtures load and predict as
Keras did, dlcore's .keras files round-trip, and what dlcore does not have is refused by
name without running code. Keras itself: tests/test_keras_parity_files.py."""

from __future__ import annotations

import io
import json
import os
import zipfile

import numpy as np
import pytest

pytest.importorskip("h5py")

from dlcore.archive import ModelFileError  # noqa: E402
from dlcore.layers import Add, Dense, Input  # noqa: E402
from dlcore.models import Model, Sequential, load_model  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
PROBE = np.linspace(-1.5, 1.5, 12, dtype=np.float32).reshape(3, 4)


@pytest.mark.parametrize(
    "name",
    [
        "sequential.keras",
        "functional.keras",
        "sequential.h5",
        "functional.h5",
        "keras2_sequential.h5",
    ],
)
def test_keras_written_files_predict_as_keras_did(name):
    model = load_model(os.path.join(FIXTURES, name))
    expected = np.load(os.path.join(FIXTURES, name.split(".")[0] + ".expected.npy"))
    np.testing.assert_allclose(model.predict(PROBE, verbose=0), expected, rtol=1e-6, atol=1e-6)
    assert model.compiled


def _two_branch_model():
    inputs = Input((4,))
    a = Dense(3, activation="relu", name="a")(inputs)
    b = Dense(3, activation="tanh", name="b")(inputs)
    model = Model(inputs, Dense(2, name="out")(Add()([a, b])))
    model.compile(optimizer="adam", loss="mse", metrics=["mae"])
    return model


def _members(path):
    with zipfile.ZipFile(path) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def test_a_keras_name_gets_both_formats_in_one_file(tmp_path):
    model = _two_branch_model()
    x = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)
    y = x[:, :2] - x[:, 2:]
    model.fit(x, y, epochs=2, batch_size=8, verbose=0, shuffle=False)
    path = tmp_path / "m.keras"
    model.save(path)
    names = set(_members(path))
    assert {"config.json", "metadata.json", "model.weights.h5"} <= names
    assert "__dlcore_format__.npy" in names
    again = load_model(path)
    np.testing.assert_array_equal(again.predict(PROBE, verbose=0), model.predict(PROBE, verbose=0))
    # dlcore's members keep the optimizer's state: training continues identically
    model.fit(x, y, epochs=1, batch_size=8, verbose=0, shuffle=False)
    again.fit(x, y, epochs=1, batch_size=8, verbose=0, shuffle=False)
    np.testing.assert_array_equal(again.predict(PROBE, verbose=0), model.predict(PROBE, verbose=0))


def test_keras_members_alone_load_too(tmp_path):
    model = _two_branch_model()
    model.save(tmp_path / "both.keras")
    members = _members(tmp_path / "both.keras")
    with zipfile.ZipFile(tmp_path / "keras_only.keras", "w") as zf:
        for name in ("metadata.json", "config.json", "model.weights.h5"):
            zf.writestr(name, members[name])
    again = load_model(tmp_path / "keras_only.keras")
    np.testing.assert_allclose(
        again.predict(PROBE, verbose=0), model.predict(PROBE, verbose=0), rtol=1e-6, atol=1e-6
    )
    assert again.compiled and type(again.optimizer).__name__ == "Adam"


@pytest.mark.parametrize("name", ["m.dlcore", "m.h5", "m"])
def test_other_names_get_dlcore_format_only(tmp_path, name):
    model = Sequential([Input((4,)), Dense(2)])
    model.save(tmp_path / name)
    assert "config.json" not in _members(tmp_path / name)
    np.testing.assert_array_equal(
        load_model(tmp_path / name).predict(PROBE, verbose=0), model.predict(PROBE, verbose=0)
    )


def test_save_format_dlcore_keeps_keras_members_out(tmp_path):
    model = Sequential([Input((4,)), Dense(2)])
    model.save(tmp_path / "m.keras", save_format="dlcore")
    assert "config.json" not in _members(tmp_path / "m.keras")


def _half(x, xp):
    return x * 0.5


def _half_gradient(x, y, xp):
    return xp.ones_like(x) * 0.5


def test_a_model_keras_cannot_express_is_saved_for_dlcore_with_a_warning(tmp_path):
    from dlcore.backends import custom as engine_custom

    from dlcore import activations

    saved = dict(engine_custom.ACTIVATIONS)
    activations.register(_half, gradient=_half_gradient, name="half_for_keras_files")
    try:
        model = Sequential([Input((4,)), Dense(2, activation="half_for_keras_files")])
        with pytest.warns(UserWarning, match=r"dlcore's format only.*custom activation"):
            model.save(tmp_path / "m.keras")
        assert "config.json" not in _members(tmp_path / "m.keras")
        again = load_model(tmp_path / "m.keras")
        np.testing.assert_array_equal(
            again.predict(PROBE, verbose=0), model.predict(PROBE, verbose=0)
        )
    finally:
        engine_custom.ACTIVATIONS.clear()
        engine_custom.ACTIVATIONS.update(saved)


def test_without_h5py_a_keras_name_gets_dlcore_format_with_a_warning(tmp_path, monkeypatch):
    from dlcore import keras_files

    def missing():
        raise ImportError("reading and writing Keras model files needs h5py: pip install x")

    monkeypatch.setattr(keras_files, "_h5py", missing)
    model = Sequential([Input((4,)), Dense(2)])
    with pytest.warns(UserWarning, match=r"dlcore's format only.*needs h5py"):
        model.save(tmp_path / "m.keras")
    assert "config.json" not in _members(tmp_path / "m.keras")
    with pytest.raises(ImportError, match=r"cannot write .*m2\.keras in Keras's format.*h5py"):
        model.save(tmp_path / "m2.keras", save_format="keras")
    assert not (tmp_path / "m2.keras").exists()


def _rewrite_config(path, target, change):
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    config = json.loads(members["config.json"])
    change(config)
    members["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(target, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def _layer(config, index):
    return config["config"]["layers"][index]


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        (lambda c: _layer(c, 1).update(class_name="Conv2D"), r"Conv2D is not a layer dlcore has"),
        (lambda c: _layer(c, 1).update(class_name="Lambda"), r"Lambda is not a layer dlcore has"),
        (
            lambda c: _layer(c, 1).update(module="evil.payload"),
            r"module 'evil\.payload', which is not one of Keras's own",
        ),
        (
            lambda c: _layer(c, 1).update(registered_name="my_pkg>MyDense"),
            r"'my_pkg>MyDense' is a registered custom object",
        ),
        (lambda c: c.update(class_name="MyModel"), r"MyModel is not a model class dlcore has"),
        (lambda c: _layer(c, 1)["config"].pop("units"), r"not a Keras model dlcore can read"),
    ],
)
def test_refusals_name_the_problem(tmp_path, change, pattern):
    target = tmp_path / "bad.keras"
    _rewrite_config(os.path.join(FIXTURES, "sequential.keras"), target, change)
    with pytest.raises(ModelFileError, match=pattern):
        load_model(target)


def test_damaged_weights_are_refused(tmp_path):
    import h5py

    source = os.path.join(FIXTURES, "sequential.keras")
    with zipfile.ZipFile(source) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    buffer = io.BytesIO(members["model.weights.h5"])
    with h5py.File(buffer, "r+") as f:
        del f["layers/dense/vars/1"]
    members["model.weights.h5"] = buffer.getvalue()
    with zipfile.ZipFile(tmp_path / "w.keras", "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    with pytest.raises(ModelFileError, match=r"layer 'hidden' has 2 weights but the file holds 1"):
        load_model(tmp_path / "w.keras")


def test_unknown_compile_settings_load_uncompiled_with_a_warning(tmp_path):
    def change(config):
        config["compile_config"]["loss"] = {
            "module": "keras.losses",
            "class_name": "Huber",
            "config": {"delta": 2.0},
        }

    target = tmp_path / "c.keras"
    _rewrite_config(os.path.join(FIXTURES, "sequential.keras"), target, change)
    with pytest.warns(UserWarning, match=r"loaded uncompiled"):
        model = load_model(target)
    assert not model.compiled


def test_a_custom_activation_cannot_be_saved_in_keras_format(tmp_path):
    model = Sequential([Input((4,)), Dense(2)])
    model.layers[0].activation = "my_act"
    with pytest.raises(ValueError, match=r"custom activation 'my_act'.*leave save_format out"):
        model.save(tmp_path / "m.keras", save_format="keras")
    assert not (tmp_path / "m.keras").exists()


def test_bad_save_format_is_refused(tmp_path):
    from dlcore.saving import save_model

    with pytest.raises(ValueError, match=r"save_format must be None, 'keras' or 'dlcore'"):
        save_model(Sequential([Input((4,)), Dense(2)]), tmp_path / "m", save_format="tf")


def test_readme_example(tmp_path):
    os.chdir(tmp_path)
    model = Sequential([Input((4,)), Dense(8, activation="relu"), Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    model.save("model.keras")  # keras.saving.load_model reads it too
    same = load_model("model.keras")
    assert same.compiled
    np.testing.assert_array_equal(same.predict(PROBE, verbose=0), model.predict(PROBE, verbose=0))
