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


def test_round_trip_through_the_keras_format(tmp_path):
    inputs = Input((4,))
    a = Dense(3, activation="relu", name="a")(inputs)
    b = Dense(3, activation="tanh", name="b")(inputs)
    model = Model(inputs, Dense(2, name="out")(Add()([a, b])))
    model.compile(optimizer="adam", loss="mse", metrics=["mae"])
    path = tmp_path / "m.keras"
    model.save(path, save_format="keras")
    assert zipfile.is_zipfile(path) and "config.json" in zipfile.ZipFile(path).namelist()
    again = load_model(path)
    np.testing.assert_array_equal(again.predict(PROBE, verbose=0), model.predict(PROBE, verbose=0))
    assert again.compiled


@pytest.mark.parametrize("name", ["m.keras", "m.dlcore", "m.h5"])
def test_the_default_is_dlcore_format_under_any_name(tmp_path, name):
    model = Sequential([Input((4,)), Dense(2)])
    model.save(tmp_path / name)
    assert (
        not zipfile.is_zipfile(tmp_path / name)
        or "config.json" not in zipfile.ZipFile(tmp_path / name).namelist()
    )
    np.testing.assert_array_equal(
        load_model(tmp_path / name).predict(PROBE, verbose=0), model.predict(PROBE, verbose=0)
    )


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
    model.save("model.keras", save_format="keras")  # keras.saving.load_model reads it
    same = load_model("model.keras")
    assert same.compiled
    np.testing.assert_array_equal(same.predict(PROBE, verbose=0), model.predict(PROBE, verbose=0))
