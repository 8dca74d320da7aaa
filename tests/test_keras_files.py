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


def _keras_only(source, target):
    """``target``: a zip of ``source``'s Keras members alone, without dlcore's archive."""
    members = _members(source)
    with zipfile.ZipFile(target, "w") as zf:
        for name in ("metadata.json", "config.json", "model.weights.h5"):
            zf.writestr(name, members[name])
    return target


def test_keras_members_alone_load_too(tmp_path):
    model = _two_branch_model()
    model.save(tmp_path / "both.keras")
    again = load_model(_keras_only(tmp_path / "both.keras", tmp_path / "keras_only.keras"))
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


# ------------------------------------------------- initializers, regularizers, Normalization
#: the one-epoch fit data of the fixtures' ``<name>.fit.json`` (make_keras_files.py)
FIT_X = np.sin(np.arange(16 * 4, dtype=np.float32)).reshape(16, 4)
FIT_Y = np.stack([FIT_X[:, 0] - FIT_X[:, 1], FIT_X[:, 2] * FIT_X[:, 3]], axis=1)


def _keras_fit_loss(name):
    with open(os.path.join(FIXTURES, f"{name}.fit.json")) as f:
        return json.load(f)["loss"]


def _one_epoch_loss(model):
    history = model.fit(FIT_X, FIT_Y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    return history.history["loss"][0]


@pytest.mark.parametrize("name", ["regularized.keras", "regularized.h5", "keras2_sequential.h5"])
def test_regularized_keras_files_predict_and_train_as_keras_did(engine, name):
    stem = name.split(".")[0]
    model = load_model(os.path.join(FIXTURES, name))
    expected = np.load(os.path.join(FIXTURES, stem + ".expected.npy"))
    np.testing.assert_allclose(model.predict(PROBE, verbose=0), expected, rtol=1e-5, atol=1e-6)
    # float32 sums of a few dozen terms in another order: a few ulps apart
    assert _one_epoch_loss(model) == pytest.approx(_keras_fit_loss(stem), rel=1e-5)


def test_regularizers_and_initializers_are_read_as_keras_wrote_them():
    from dlcore import initializers, regularizers

    model = load_model(os.path.join(FIXTURES, "regularized.keras"))
    d1, bn, pr, ln, d2 = (model.get_layer(n) for n in ("d1", "bn", "pr", "ln", "d2"))
    assert d1.kernel_regularizer == regularizers.L2(0.01)
    assert d1.bias_regularizer.l1 == pytest.approx(0.02) and d1.bias_regularizer.l2 == 0
    assert bn.gamma_regularizer == regularizers.L2(0.03) and bn.beta_regularizer is None
    assert pr.alpha_regularizer == regularizers.L2(0.05)
    assert (ln.gamma_regularizer.l1, ln.gamma_regularizer.l2) == (0.01, 0.02)
    assert (d2.kernel_regularizer.l1, d2.kernel_regularizer.l2) == (0.004, 0.01)
    assert initializers.serialize(d1.kernel_initializer) == {
        "class_name": "RandomNormal",
        "config": {"mean": 0.1, "stddev": 0.4, "seed": 5},
    }
    assert d1.bias_initializer.get_config() == {"value": 0.05}
    assert bn.moving_variance_initializer.get_config() == {"value": 2.0}
    assert type(ln.beta_initializer).__name__ == "RandomUniform"
    assert d2.kernel_initializer.get_config() == {
        "scale": 2.0,
        "mode": "fan_avg",
        "distribution": "untruncated_normal",
        "seed": 7,
    }
    k2 = load_model(os.path.join(FIXTURES, "keras2_sequential.h5"))
    assert k2.layers[0].kernel_regularizer == regularizers.L2(0.01)
    assert type(k2.layers[1].kernel_initializer).__name__ == "VarianceScaling"


def test_the_regularizers_are_what_makes_the_fit_loss_match():
    """The control of the parity test above: without them, the loss is another."""
    model = load_model(os.path.join(FIXTURES, "regularized.keras"))
    for layer in model.layers:
        for key in ("kernel", "bias", "alpha", "gamma", "beta"):
            if hasattr(layer, f"{key}_regularizer"):
                setattr(layer, f"{key}_regularizer", None)
    model.compile(optimizer="sgd", loss="mse")
    model.optimizer.learning_rate = 0.05
    assert abs(_one_epoch_loss(model) - _keras_fit_loss("regularized")) > 1e-2


def test_an_adapted_keras_normalization_loads_its_statistics():
    model = load_model(os.path.join(FIXTURES, "regularized.keras"))
    norm = model.get_layer("norm")
    mean, variance = norm.get_weights()
    x = FIT_X.astype(np.float64) * 3.0 + 1.0  # what the fixture adapted it on
    np.testing.assert_allclose(mean, x.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(variance, x.var(axis=0), rtol=1e-5)
    assert norm.ready and not norm.invert


def _change_layer(path, target, name, **settings):
    def change(config):
        for entry in config["config"]["layers"]:
            if entry["config"].get("name") == name:
                entry["config"].update(settings)

    _rewrite_config(path, target, change)


REGULARIZED = os.path.join(FIXTURES, "regularized.keras")


@pytest.mark.parametrize(
    ("layer", "settings", "pattern"),
    [
        (
            "d1",
            {
                "kernel_constraint": {
                    "module": "keras.constraints",
                    "class_name": "MaxNorm",
                    "config": {"max_value": 2, "axis": 0},
                }
            },
            r"layer 'd1' \(Dense\) has kernel_constraint=MaxNorm\(.*cannot honour.*"
            r"kernel_constraint=None \(dlcore has no weight constraints\)",
        ),
        (
            "d1",
            {
                "activity_regularizer": {
                    "module": "keras.regularizers",
                    "class_name": "L2",
                    "config": {"l2": 0.1},
                }
            },
            r"'d1' \(Dense\) has activity_regularizer=L2\(.*no activity regularizers",
        ),
        (
            "d2",
            {
                "kernel_regularizer": {
                    "module": "keras.regularizers",
                    "class_name": "OrthogonalRegularizer",
                    "config": {"factor": 0.01, "mode": "rows"},
                }
            },
            r"'d2' \(Dense\) has kernel_regularizer=OrthogonalRegularizer\(.*"
            r"supports kernel_regularizer=None, L1, L2 or L1L2",
        ),
        (
            "d2",
            {"kernel_regularizer": {"module": "my_pkg", "class_name": "L2", "config": {"l2": 0.1}}},
            r"'d2' \(Dense\) has kernel_regularizer=L2\(.*cannot honour",
        ),
        (
            "d2",
            {
                "kernel_initializer": {
                    "module": "keras.initializers",
                    "class_name": "Identity",
                    "config": {"gain": 1.0},
                }
            },
            r"'d2' \(Dense\) has kernel_initializer=Identity\(.*one of Constant, GlorotNormal",
        ),
        (
            "d2",
            {
                "kernel_initializer": {
                    "module": "keras.initializers",
                    "class_name": "MyInit",
                    "config": {},
                    "registered_name": "pkg>MyInit",
                }
            },
            r"kernel_initializer=MyInit\(\{\}\), which dlcore cannot honour",
        ),
        (
            "d1",
            {
                "bias_initializer": {
                    "module": "keras.initializers",
                    "class_name": "GlorotUniform",
                    "config": {"seed": None, "input_axes": [0], "output_axes": None},
                }
            },
            r"bias_initializer=GlorotUniform\(.*input_axes",
        ),
        (
            "pr",
            {"shared_axes": [1]},
            r"'pr' \(PReLU\) has shared_axes=\[1\] \(a list\).*one slope per feature",
        ),
        (
            "pr",
            {
                "alpha_constraint": {
                    "module": "keras.constraints",
                    "class_name": "NonNeg",
                    "config": {},
                }
            },
            r"'pr' \(PReLU\) has alpha_constraint=NonNeg",
        ),
        ("bn", {"renorm": True}, r"'bn' \(BatchNormalization\) has renorm=True .*renorm=False"),
        (
            "bn",
            {
                "beta_constraint": {
                    "module": "keras.constraints",
                    "class_name": "UnitNorm",
                    "config": {"axis": 0},
                }
            },
            r"'bn' \(BatchNormalization\) has beta_constraint=UnitNorm",
        ),
        (
            "ln",
            {
                "gamma_constraint": {
                    "module": "keras.constraints",
                    "class_name": "MinMaxNorm",
                    "config": {},
                }
            },
            r"'ln' \(LayerNormalization\) has gamma_constraint=MinMaxNorm",
        ),
        ("d1", {"quantization_config": {"mode": "int8"}}, r"quantization_config=.*quantize"),
        ("norm", {"axis": None}, r"'norm' \(Normalization\) has axis=None .*supports axis=-1"),
        ("norm", {"axis": [0, 1]}, r"'norm' \(Normalization\) has axis=\[0, 1\]"),
        ("d1", {"lora_rank": 4}, r"'d1' \(Dense\) has the setting lora_rank=4, which dlcore"),
    ],
)
def test_settings_dlcore_cannot_honour_are_refused_by_name(tmp_path, layer, settings, pattern):
    target = tmp_path / "bad.keras"
    _change_layer(REGULARIZED, target, layer, **settings)
    with pytest.raises(ModelFileError, match=pattern):
        load_model(target)


def test_a_dropout_noise_shape_is_refused_by_name(tmp_path):
    def change(config):
        _layer(config, 3)["config"].update(noise_shape=[None, 1], seed=3)

    target = tmp_path / "bad.keras"
    _rewrite_config(os.path.join(FIXTURES, "sequential.keras"), target, change)
    with pytest.raises(ModelFileError, match=r"\(Dropout\) has noise_shape=\[None, 1\]"):
        load_model(target)
    _rewrite_config(
        os.path.join(FIXTURES, "sequential.keras"),
        target,
        lambda c: _layer(c, 3)["config"].update(noise_shape=None, seed=3),
    )
    load_model(target)  # a seed alone changes nothing dlcore computes


def test_rms_scaling_is_refused_by_name():
    with pytest.raises(
        ModelFileError, match=r"'rms' \(LayerNormalization\) has rms_scaling=True \(a bool\)"
    ):
        load_model(os.path.join(FIXTURES, "rms_scaling.keras"))


def test_keras_normalization_given_its_statistics_in_the_config(tmp_path):
    def change(config):
        entry = config["config"]["layers"][1]
        entry["config"].update(mean=[1.0, 2.0, 3.0, 4.0], variance=[4.0] * 4, invert=True)

    import h5py

    target = tmp_path / "given.keras"
    _rewrite_config(REGULARIZED, target, change)
    with zipfile.ZipFile(target) as zf:  # such a Keras layer has no weights in the file
        members = {n: zf.read(n) for n in zf.namelist()}
    buffer = io.BytesIO(members["model.weights.h5"])
    with h5py.File(buffer, "r+") as f:
        for i in range(3):
            del f[f"layers/normalization/vars/{i}"]
    members["model.weights.h5"] = buffer.getvalue()
    with zipfile.ZipFile(target, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    norm = load_model(target).get_layer("norm")
    assert norm.invert
    mean, variance = norm.get_weights()
    np.testing.assert_array_equal(mean, [1, 2, 3, 4])
    np.testing.assert_array_equal(variance, [4, 4, 4, 4])


def _regularized_dlcore_model():
    """regularized.keras's architecture, built in dlcore."""
    from dlcore import initializers, regularizers
    from dlcore.layers import BatchNormalization, LayerNormalization, Normalization, PReLU

    return Sequential(
        [
            Input((4,)),
            Normalization(name="n"),
            Dense(6, activation="tanh", kernel_regularizer=regularizers.L2(0.01)),
            BatchNormalization(),
            PReLU(alpha_initializer=initializers.Constant(0.25)),
            LayerNormalization(gamma_regularizer=regularizers.L1L2(0.01, 0.02)),
            Dense(2, kernel_initializer=initializers.HeUniform(seed=1)),
        ]
    )


def test_dlcore_writes_initializers_regularizers_and_normalization_as_keras_does(tmp_path):
    model = _regularized_dlcore_model()
    model.get_layer("n").adapt(FIT_X)
    model.save(tmp_path / "m.keras")
    config = json.loads(_members(tmp_path / "m.keras")["config.json"])
    entries = {e["config"]["name"]: e for e in config["config"]["layers"]}
    dense = entries[model.layers[1].name]["config"]
    assert dense["kernel_regularizer"] == {
        "module": "keras.regularizers",
        "class_name": "L2",
        "config": {"l2": 0.01},
        "registered_name": None,
    }
    assert dense["bias_regularizer"] is None
    assert dense["kernel_initializer"] == {
        "module": "keras.initializers",
        "class_name": "GlorotUniform",
        "config": {"seed": None},
        "registered_name": None,
    }
    assert entries[model.layers[-1].name]["config"]["kernel_initializer"]["config"] == {"seed": 1}
    norm = entries["n"]["config"]
    assert (norm["axis"], norm["mean"], norm["variance"]) == ([-1], None, None)
    # and dlcore reads its own Keras members back to the same model
    with zipfile.ZipFile(tmp_path / "keras_only.keras", "w") as zf:
        for name, data in _members(tmp_path / "m.keras").items():
            if name in ("metadata.json", "config.json", "model.weights.h5"):
                zf.writestr(name, data)
    again = load_model(tmp_path / "keras_only.keras")
    np.testing.assert_allclose(
        again.predict(PROBE, verbose=0), model.predict(PROBE, verbose=0), rtol=1e-6, atol=1e-6
    )
    assert again.layers[4].gamma_regularizer == model.layers[4].gamma_regularizer


def test_an_unadapted_normalization_is_not_written_for_keras(tmp_path):
    from dlcore import keras_files
    from dlcore.layers import Normalization

    model = Sequential([Input((4,)), Normalization(name="raw"), Dense(2)])
    with pytest.raises(ValueError, match=r"Normalization layer 'raw' has no statistics yet"):
        keras_files.keras_members(model)


# -------------------------------------------------------------- Keras's .weights.h5 files
def test_load_weights_reads_a_keras_weights_file_by_layer_order():
    model = _regularized_dlcore_model()  # other layer names than Keras's model
    model.load_weights(os.path.join(FIXTURES, "regularized.weights.h5"))
    expected = np.load(os.path.join(FIXTURES, "regularized.expected.npy"))
    np.testing.assert_allclose(model.predict(PROBE, verbose=0), expected, rtol=1e-5, atol=1e-6)


def test_load_weights_refuses_another_architecture_by_name():
    from dlcore.layers import BatchNormalization, Normalization

    narrow = Sequential([Input((4,)), Normalization(), Dense(5), BatchNormalization(), Dense(2)])
    before = [w.copy() for w in narrow.get_weights()]
    with pytest.raises(
        ModelFileError, match=r"\(Dense, Keras's layers/dense\): weight 0 has shape \(4, 6\)"
    ):
        narrow.load_weights(os.path.join(FIXTURES, "regularized.weights.h5"))
    for mine, was in zip(narrow.get_weights(), before):
        np.testing.assert_array_equal(mine, was)  # nothing written
    shorter = Sequential([Input((4,)), Normalization(), Dense(6), Dense(2)])
    with pytest.raises(ModelFileError, match=r"does not have: layers/batch_normalization"):
        shorter.load_weights(os.path.join(FIXTURES, "regularized.weights.h5"))


def test_load_weights_refuses_an_hdf5_file_without_keras_weights(tmp_path):
    import h5py

    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(ModelFileError, match=r"without Keras 3 weights"):
        Sequential([Input((4,)), Dense(2)]).load_weights(tmp_path / "other.h5")


def test_readme_keras_weights_example(tmp_path):
    os.chdir(tmp_path)
    model = Sequential([Input((4,)), Dense(8, activation="relu"), Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    model.save("model.keras")  # keras.saving.load_model reads it too
    # the weights member of Keras's zip has save_weights' layout; the Keras-written
    # fixture is read in test_load_weights_reads_a_keras_weights_file_by_layer_order
    with open("keras_model.weights.h5", "wb") as f:
        f.write(_members("model.keras")["model.weights.h5"])
    same = load_model("model.keras")
    same.set_weights([w * 0 for w in same.get_weights()])
    same.load_weights("keras_model.weights.h5")  # written by keras_model.save_weights
    np.testing.assert_array_equal(same.predict(PROBE, verbose=0), model.predict(PROBE, verbose=0))


# ------------------------------------------------------------------ the optimizer's state
OPTIMIZER_STATE = os.path.join(FIXTURES, "optimizer_state.keras")
#: the fixtures' fit data (make_keras_files.FIT_X / FIT_Y)
FIT_X = np.sin(np.arange(16 * 4, dtype=np.float32)).reshape(16, 4)
FIT_Y = np.stack([FIT_X[:, 0] - FIT_X[:, 1], FIT_X[:, 2] * FIT_X[:, 3]], axis=1)


def _continue(model):
    model.fit(FIT_X, FIT_Y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    return model.get_weights()


@pytest.mark.parametrize("name", ["optimizer_state.keras", "optimizer_state.h5"])
def test_a_fit_continues_from_keras_optimizer_state_as_keras_did(engine, name):
    """Keras trained 2 epochs with Adam (a frozen layer, BatchNormalization), saved, then
    trained a third: dlcore's third epoch from the file gives Keras's weights. float32
    on both sides, 2 Adam steps: a few ulps (1e-5); a fresh optimizer is > 1e-3 off."""
    model = load_model(os.path.join(FIXTURES, name))
    assert model.optimizer.iterations == 4
    expected = np.load(os.path.join(FIXTURES, "optimizer_state.continued.npz"))
    weights = _continue(model)
    assert len(weights) == len(expected.files)
    for index, weight in enumerate(weights):
        np.testing.assert_allclose(weight, expected[str(index)], rtol=1e-5, atol=1e-6)


def _rewrite_weights(source, target, change):
    """A copy of the ``.keras`` file ``source`` whose ``model.weights.h5`` ``change``
    (called with the open h5py file) has edited."""
    import h5py

    members = _members(source)
    buffer = io.BytesIO(members["model.weights.h5"])
    with h5py.File(buffer, "r+") as f:
        change(f)
    members["model.weights.h5"] = buffer.getvalue()
    with zipfile.ZipFile(target, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return target


def test_without_optimizer_variables_the_optimizer_starts_fresh(tmp_path):
    path = _rewrite_weights(OPTIMIZER_STATE, tmp_path / "o.keras", lambda f: f.pop("optimizer"))
    model = load_model(path)
    assert model.optimizer.iterations == 0 and not model.optimizer.built
    expected = np.load(os.path.join(FIXTURES, "optimizer_state.continued.npz"))
    weights = _continue(model)
    assert max(np.abs(w - expected[str(i)]).max() for i, w in enumerate(weights)) > 1e-3


def _replace_variable(index, value):
    def change(f):
        del f[f"optimizer/vars/{index}"]
        f["optimizer/vars"].create_dataset(str(index), data=value)

    return change


def _drop_last(f):
    group = f["optimizer/vars"]
    del group[str(len(group) - 1)]


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        (
            _drop_last,
            r"holds 13 optimizer variables, but Keras's Adam of this model has 14 "
            r"\(iteration, learning_rate, then its slots for 6 trainable weights\)",
        ),
        (
            _replace_variable(2, np.zeros((6, 4), np.float32)),
            r"optimizer variable 2 \(d1/kernel momentum\) has shape \(6, 4\) .*"
            r"has shape \(4, 6\) of floats there",
        ),
        (
            _replace_variable(0, np.float32(4.0)),
            r"optimizer variable 0 \(iteration\) has shape \(\) and dtype float32.*an integer",
        ),
        (
            _replace_variable(3, -np.ones((4, 6), np.float32)),
            r"optimizer state is refused: Adam state slot 'v' expected non-negative",
        ),
        (
            lambda f: [_drop_last(f) for _ in range(12)],
            r"the optimizer took 4 steps but the file holds none of its slots",
        ),
    ],
    ids=["count", "shape", "iterations", "negative", "no-slots"],
)
def test_mismatched_optimizer_variables_are_refused(tmp_path, change, pattern):
    path = _rewrite_weights(OPTIMIZER_STATE, tmp_path / "o.keras", change)
    with pytest.raises(ModelFileError, match=pattern):
        load_model(path)


def test_other_optimizer_settings_than_the_variables_are_refused(tmp_path):
    def amsgrad(config):
        config["compile_config"]["optimizer"]["config"]["amsgrad"] = True

    _rewrite_config(OPTIMIZER_STATE, tmp_path / "a.keras", amsgrad)
    with pytest.raises(
        ModelFileError, match=r"holds 14 .*has 20 .*saved with other optimizer settings"
    ):
        load_model(tmp_path / "a.keras")


def test_an_unbuilt_keras_optimizer_loads_fresh():
    """Keras's fixtures were saved before any fit: only iteration 0 and the rate."""
    model = load_model(os.path.join(FIXTURES, "sequential.keras"))
    assert model.optimizer.iterations == 0 and not model.optimizer.built


def _frozen_model(optimizer):
    from dlcore.layers import BatchNormalization

    model = Sequential(
        [
            Input((4,)),
            Dense(3, activation="tanh", name="d1"),
            BatchNormalization(name="bn"),
            Dense(3, name="frozen"),
            Dense(2, name="out"),
        ]
    )
    model.get_layer("frozen").trainable = False
    model.compile(optimizer=optimizer, loss="mse")
    return model


def _keras_optimizer_variables(path):
    import h5py

    data = _members(path)["model.weights.h5"]
    with h5py.File(io.BytesIO(data), "r") as f:
        group = f["optimizer/vars"]
        return group.attrs["name"], [np.asarray(group[str(i)]) for i in range(len(group))]


def test_dlcore_writes_the_optimizer_variables_in_keras_order(tmp_path):
    """RMSprop with momentum and centered: Keras's groups come one after the other
    (velocity, momentum, average_gradient), each over the trainable weights in order
    (d1 kernel and bias, bn gamma and beta, out kernel and bias; not the moving
    statistics, not the frozen layer's)."""
    from dlcore import optimizers

    model = _frozen_model(optimizers.RMSprop(0.01, momentum=0.5, centered=True))
    model.fit(FIT_X, FIT_Y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    model.save(tmp_path / "m.keras")
    name, values = _keras_optimizer_variables(tmp_path / "m.keras")
    state = model.optimizer.get_state()
    # the flat buffer: d1 (12 + 3), bn (3 + 3 + moving 3 + 3), frozen (9 + 3), out (6 + 2)
    spans = [((0, 12), (4, 3)), ((12, 15), (3,)), ((15, 18), (3,)), ((18, 21), (3,))]
    spans += [((39, 45), (3, 2)), ((45, 47), (2,))]
    expected = [np.int64(2), np.float32(0.01)]
    for slot in ("velocity", "momentum_buffer", "average_grad"):
        expected += [state[slot][a:b].reshape(shape) for (a, b), shape in spans]
    assert name == "rmsprop"
    assert len(values) == len(expected) == 20
    assert values[0].dtype == np.int64 and values[1].dtype == np.float32
    for value, want in zip(values, expected):
        np.testing.assert_array_equal(value, np.asarray(want, dtype=value.dtype))
    assert all(v.dtype == np.float32 for v in values[2:])


def test_an_optimizer_that_has_not_stepped_writes_its_initial_slots(tmp_path):
    from dlcore import optimizers

    model = _frozen_model(optimizers.Adagrad(0.1, initial_accumulator_value=0.25))
    model.save(tmp_path / "m.keras")
    _, values = _keras_optimizer_variables(tmp_path / "m.keras")
    assert len(values) == 2 + 6 and int(values[0]) == 0
    assert all(np.all(v == np.float32(0.25)) for v in values[2:])


ALL_OPTIMIZERS = {
    "SGD": {"momentum": 0.9, "nesterov": True},
    "Adam": {"amsgrad": True, "use_ema": True},
    "AdamW": {"weight_decay": 0.01},
    "RMSprop": {"momentum": 0.3, "centered": True},
    "Adagrad": {},
    "Adadelta": {"learning_rate": 0.5},
    "Adamax": {},
    "Nadam": {},
    "Lion": {"learning_rate": 0.001},
    "Ftrl": {"l1_regularization_strength": 0.01},
}


@pytest.mark.parametrize("name", list(ALL_OPTIMIZERS))
def test_every_shared_optimizer_round_trips_through_keras_members(tmp_path, engine, name):
    """Keras's members alone (no dlcore archive) carry the whole state: the step count,
    every slot of the trained weights, Nadam's momentum product; training continues
    exactly as it would have."""
    from dlcore import optimizers

    model = _frozen_model(getattr(optimizers, name)(**ALL_OPTIMIZERS[name]))
    model.fit(FIT_X, FIT_Y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    model.save(tmp_path / "both.keras")
    again = load_model(_keras_only(tmp_path / "both.keras", tmp_path / "keras_only.keras"))
    assert type(again.optimizer).__name__ == name and again.optimizer.iterations == 4
    mine, theirs = model.optimizer.get_state(), again.optimizer.get_state()
    assert set(mine) == set(theirs)
    for key in mine:
        np.testing.assert_allclose(theirs[key], mine[key], rtol=1e-7, err_msg=key)
    for a, b in zip(_continue(again), _continue(model)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_a_decompression_bomb_in_a_keras_zip_is_refused_before_inflating(tmp_path):
    import tracemalloc

    members = _members(os.path.join(FIXTURES, "sequential.keras"))
    path = tmp_path / "bomb.keras"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("metadata.json", members["metadata.json"])
        zf.writestr("config.json", members["config.json"])
        info = zipfile.ZipInfo("model.weights.h5")
        info.compress_type = zipfile.ZIP_DEFLATED
        with zf.open(info, "w", force_zip64=True) as member:
            chunk = bytes(1 << 20)
            for _ in range(80):  # 80 MiB of zeros, a few hundred KB stored
                member.write(chunk)
    assert path.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(ModelFileError, match=r"model\.weights\.h5.*decompression bomb"):
            load_model(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


def test_a_dataset_declaring_more_than_the_file_stores_is_refused(tmp_path):
    import shutil

    import h5py

    path = tmp_path / "fill.h5"
    shutil.copy(os.path.join(FIXTURES, "sequential.h5"), path)
    with h5py.File(path, "r+") as f:
        group = f["model_weights"]
        layer = group[_text_of(group.attrs["layer_names"][0])]
        name = _text_of(layer.attrs["weight_names"][0])
        del layer[name]
        # 400 MB declared, nothing stored: every chunk is left to the fill value
        layer.create_dataset(name, shape=(100_000, 1_000), dtype="float32", chunks=(1000, 100))
    assert path.stat().st_size < 1 << 20
    with pytest.raises(ModelFileError, match=r"declares 400000000 bytes.*decompression bomb"):
        load_model(path)


def _text_of(value):
    return value.decode() if isinstance(value, bytes) else str(value)
