"""ONNX export (``Model.export``, ``dlcore.onnx_export``): the file passes ONNX's checker,
runs in ONNX Runtime with the model's predictions (float32, 1e-5) for every exportable
activation and layer, at two batch sizes, with the model's names and per-sample shapes;
what cannot be exported is refused by name before anything is written."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from dlcore.backends import custom as engine_custom
from dlcore.backends.names import ACTIVATIONS

import dlcore
from dlcore import onnx_export
from dlcore.layers import (
    ELU,
    Activation,
    Add,
    AlphaDropout,
    Average,
    BatchNormalization,
    Concatenate,
    Dense,
    Dropout,
    Flatten,
    GaussianDropout,
    GaussianNoise,
    Input,
    LayerNormalization,
    LeakyReLU,
    Maximum,
    Minimum,
    Multiply,
    Normalization,
    PReLU,
    ReLU,
    Reshape,
    Softmax,
    Subtract,
)
from dlcore.models import Model, Sequential

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

BATCHES = (3, 11)  # two batch sizes: the batch dimension must be dynamic


def exported(model, tmp_path, name="m.onnx", **kwargs):
    """Export ``model``, check the file with ONNX's checker; an ONNX Runtime session."""
    path = tmp_path / name
    model.export(path, **kwargs)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run(session, xs):
    feeds = {i.name: np.asarray(x, dtype=np.float32) for i, x in zip(session.get_inputs(), xs)}
    return session.run(None, feeds)


def assert_matches_predict(model, tmp_path, shapes, rng, scale=1.0):
    """The exported file's outputs equal ``model.predict`` at each of two batch sizes."""
    session = exported(model, tmp_path)
    for n in BATCHES:
        xs = [(scale * rng.normal(size=(n, *s))).astype(np.float32) for s in shapes]
        expected = model.predict(xs if len(xs) > 1 else xs[0], verbose=0)
        expected = expected if isinstance(expected, list) else [expected]
        got = run(session, xs)
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            assert g.shape == e.shape
            np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)
    return session


def randomize(model, rng):
    """Non-trivial weights (PReLU slopes and biases start at zero)."""
    model.set_weights([rng.normal(size=w.shape).astype(w.dtype) for w in model.get_weights()])


# ---------------------------------------------------------------------- values
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_dense_with_every_activation_matches_predict(activation, tmp_path, rng):
    dlcore.set_random_seed(3)
    model = Sequential(
        [Input((5,)), Dense(7, activation=activation), Dense(4, activation=activation)]
    )
    randomize(model, rng)
    assert_matches_predict(model, tmp_path, [(5,)], rng, scale=0.7)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_activation_layer_matches_predict(activation, tmp_path, rng):
    model = Sequential([Input((6,)), Activation(activation)])
    assert_matches_predict(model, tmp_path, [(6,)], rng, scale=3.0)


def test_activation_constants_are_keras_3s(tmp_path):
    """The formulas, against float64 NumPy at chosen points (Keras 3's constants: leaky
    slope 0.2, hard_sigmoid x / 6 + 1/2, exact erf gelu)."""
    from math import erf

    x = np.array([[-4.0, -2.5, -0.3, 0.0, 0.4, 2.9, 3.5]])
    references = {
        "leaky_relu": np.where(x > 0, x, 0.2 * x),
        "hard_sigmoid": np.clip(x / 6 + 0.5, 0, 1),
        "gelu": 0.5 * x * (1 + np.vectorize(erf)(x / np.sqrt(2))),
        "selu": 1.0507009873554805 * np.where(x > 0, x, 1.6732632423543772 * np.expm1(x)),
        "swish": x / (1 + np.exp(-x)),
        "softplus": np.log1p(np.exp(x)),
        "softsign": x / (1 + np.abs(x)),
    }
    for name, expected in references.items():
        session = exported(Sequential([Input((7,)), Activation(name)]), tmp_path, f"{name}.onnx")
        np.testing.assert_allclose(run(session, [x])[0], expected, rtol=1e-6, atol=1e-7)


def test_activation_layers_prelu_and_noise_match_predict(tmp_path, rng):
    layers = [
        Input((6,)),
        Dense(6),
        PReLU(),
        Dropout(0.5),
        GaussianNoise(0.3),
        ReLU(max_value=1.5, negative_slope=0.1, threshold=0.2),
        Dense(6),
        LeakyReLU(),
        GaussianDropout(0.2),
        ELU(alpha=0.7),
        Dense(6),
        ReLU(max_value=6.0),
        AlphaDropout(0.1),
        ReLU(),
        Dense(5),
        LeakyReLU(negative_slope=0.05),
        ReLU(threshold=0.3),
        Softmax(),
    ]
    model = Sequential(layers)
    randomize(model, rng)
    assert_matches_predict(model, tmp_path, [(6,)], rng, scale=2.0)


def test_functional_merges_shared_layer_and_two_outputs(tmp_path, rng):
    a, b = Input((4,), name="left"), Input((4,), name="right")
    shared = Dense(5, activation="tanh", name="shared")
    ha, hb = shared(a), shared(b)  # one layer, two nodes
    hc = Dense(5, activation="sigmoid")(a)
    merged = [
        Add()([ha, hb, hc]),
        Subtract()([ha, hb]),
        Multiply()([ha, hb, hc]),
        Average()([ha, hb]),
        Maximum()([ha, hb, hc]),
        Minimum()([ha, hb]),
    ]
    joined = Concatenate()(merged)
    scores = Dense(3, activation="softmax", name="scores")(joined)
    value = Dense(1, name="value")(Concatenate()([joined, b]))
    model = Model([a, b], [scores, value])
    randomize(model, rng)
    session = assert_matches_predict(model, tmp_path, [(4,), (4,)], rng)
    assert [i.name for i in session.get_inputs()] == ["left", "right"]
    assert [o.name for o in session.get_outputs()] == ["scores", "value"]


def test_dict_inputs_and_outputs_keep_their_names(tmp_path, rng):
    x = Input((3,))
    h = Dense(4, activation="relu")(x)
    model = Model({"features": x}, {"probabilities": Dense(2, activation="softmax")(h), "raw": h})
    session = exported(model, tmp_path)
    assert [i.name for i in session.get_inputs()] == ["features"]
    assert [o.name for o in session.get_outputs()] == model.output_names
    data = rng.normal(size=(4, 3)).astype(np.float32)
    expected = model.predict({"features": data}, verbose=0)
    for name, got in zip(model.output_names, run(session, [data])):
        np.testing.assert_allclose(got, expected[name], rtol=1e-5, atol=1e-6)


def test_normalization_layers_after_fit_match_predict(tmp_path, rng):
    dlcore.set_random_seed(5)
    norm = Normalization()
    data = (rng.normal(size=(40, 5)) * [1.0, 5.0, 0.1, 2.0, 3.0] + [3.0, -2.0, 0.5, 0, 7]).astype(
        np.float32
    )
    norm.adapt(data)
    model = Sequential(
        [
            Input((5,)),
            norm,
            Dense(8, activation="relu"),
            BatchNormalization(momentum=0.5),
            Dense(6),
            BatchNormalization(center=False, scale=False, epsilon=0.01),
            LayerNormalization(),
            Dense(6, activation="elu"),
            LayerNormalization(center=False, epsilon=0.05),
            LayerNormalization(scale=False),
            Normalization(mean=[0.1] * 6, variance=[4.0, 1.0, 0.0, 2.0, 1.0, 9.0], invert=True),
            Dense(2),
        ]
    )
    model.compile(optimizer="adam", loss="mse")
    model.fit(data, rng.normal(size=(40, 2)), epochs=3, batch_size=8, verbose=0)
    bn = model.layers[2]
    moving_mean, moving_variance = bn.get_weights()[-2:]
    assert np.abs(moving_mean).max() > 0.05 and np.abs(moving_variance - 1).max() > 0.05
    session = exported(model, tmp_path)
    for n in BATCHES:
        x = data[:n]
        np.testing.assert_allclose(run(session, [x])[0], model.predict(x), rtol=1e-5, atol=1e-5)


def test_flatten_from_a_multidimensional_input_and_a_reshaped_output(tmp_path, rng):
    x = Input((4, 3), name="grid")
    r = ReLU()(x)  # elementwise: keeps (4, 3)
    h = Dense(6, activation="relu")(Flatten()(r))
    shaped = Reshape((2, 3), name="shaped")(h)
    model = Model(x, [Dense(2, name="flat")(h), shaped])
    randomize(model, rng)
    session = assert_matches_predict(model, tmp_path, [(4, 3)], rng)
    (graph_input,) = onnx.load(str(tmp_path / "m.onnx")).graph.input
    assert [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim] == [
        "batch",
        4,
        3,
    ]
    assert [o.shape for o in session.get_outputs()] == [["batch", 2], ["batch", 2, 3]]
    assert session.get_inputs()[0].name == "grid"


def test_sequential_flatten_model_from_n_4_3(tmp_path, rng):
    model = Sequential([Input((4, 3)), Flatten(), Dense(5, activation="gelu"), Dense(3)])
    assert_matches_predict(model, tmp_path, [(4, 3)], rng)


def test_the_batch_dimension_is_dynamic_and_names_are_the_models(tmp_path):
    model = Sequential([Input((3,), name="x_in"), Dense(2, name="out")])
    proto = onnx_export.to_onnx(model)
    for value in [*proto.graph.input, *proto.graph.output]:
        first = value.type.tensor_type.shape.dim[0]
        assert first.dim_param == "batch" and not first.HasField("dim_value")
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [v.name for v in proto.graph.input] == ["x_in"]
    assert [v.name for v in proto.graph.output] == ["out"]
    assert proto.opset_import[0].version == 17
    assert all(i.data_type == onnx.TensorProto.FLOAT for i in proto.graph.initializer)
    session = exported(model, tmp_path)
    for n in (1, 9):
        assert run(session, [np.ones((n, 3))])[0].shape == (n, 2)


def test_float64_model_exports_float32(tmp_path, rng):
    dlcore.set_floatx("float64")
    model = Sequential([Input((4,)), Dense(3, activation="tanh"), Dense(2)])
    session = exported(model, tmp_path)
    x = rng.normal(size=(5, 4))
    got = run(session, [x])[0]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, model.predict(x), rtol=1e-5, atol=1e-6)


def test_export_from_every_engine(engine, tmp_path, rng):
    dlcore.set_random_seed(2)
    model = Sequential([Input((3,)), Dense(4, activation="relu"), LayerNormalization(), Dense(2)])
    session = exported(model, tmp_path)
    x = rng.normal(size=(3, 3)).astype(np.float32)
    np.testing.assert_allclose(run(session, [x])[0], model.predict(x), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------- format and options
def test_format_onnx_with_any_suffix_and_a_newer_opset(tmp_path, rng):
    model = Sequential([Input((3,)), Dense(2, activation="softmax")])
    session = exported(model, tmp_path, name="model.bin", format="onnx", opset_version=18)
    assert onnx.load(str(tmp_path / "model.bin")).opset_import[0].version == 18
    x = rng.normal(size=(2, 3))
    np.testing.assert_allclose(run(session, [x])[0], model.predict(x), rtol=1e-5, atol=1e-6)
    model.export(str(tmp_path / "as_string.onnx"))  # a str path, format from the suffix
    assert (tmp_path / "as_string.onnx").stat().st_size > 0


def test_verbose_prints_the_path(tmp_path, capsys):
    Sequential([Input((2,)), Dense(1)]).export(tmp_path / "v.onnx", verbose=True)
    assert "v.onnx" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda m, p: m.export(p / "m.keras"), ValueError, "could not tell the format"),
        (lambda m, p: m.export(p / "m", format="tf_saved_model"), ValueError, "'tf_saved_model'"),
        (lambda m, p: m.export(p / "m.onnx", format="openvino"), ValueError, "only format='onnx'"),
        (lambda m, p: m.export(p / "m.onnx", input_signature=[1]), ValueError, "input_signature"),
        (lambda m, p: m.export(p / "m.onnx", opset_version=9), ValueError, "opset_version=9"),
        (lambda m, p: m.export(p / "m.onnx", opset_version="17"), ValueError, "opset_version"),
        (lambda m, p: m.export(p / "m.onnx", dynamic=True), TypeError, "dynamic"),
        (lambda m, p: m.export(3), TypeError, "file path"),
    ],
)
def test_bad_arguments_are_refused(call, error, match, tmp_path):
    model = Sequential([Input((2,)), Dense(1)])
    with pytest.raises(error, match=match):
        call(model, tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.is_file()]


def test_custom_activation_is_refused_by_name(tmp_path, monkeypatch):
    monkeypatch.setattr(engine_custom, "ACTIVATIONS", dict(engine_custom.ACTIVATIONS))
    dlcore.activations.register(
        lambda x, xp: x * x, gradient=lambda x, y, xp: 2 * x, name="onnx_test_square"
    )
    model = Sequential([Input((2,)), Dense(3, activation="onnx_test_square", name="squares")])
    with pytest.raises(ValueError, match=r"layer 'squares' \(Dense\).*'onnx_test_square'"):
        model.export(tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_unknown_layer_is_refused_by_name(tmp_path):
    class Doubling(Dense):
        pass

    model = Sequential([Input((2,)), Dense(2), Doubling(2, name="doubling")])
    with pytest.raises(ValueError, match=r"layer 'doubling' \(Doubling\) has no ONNX form"):
        model.export(tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_unadapted_normalization_is_refused(tmp_path):
    model = Sequential([Input((2,)), Normalization(name="norm"), Dense(1)])
    with pytest.raises(ValueError, match="'norm' has no statistics yet"):
        model.export(tmp_path / "m.onnx")


def test_unbuilt_sequential_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"export\(\): the model has no input shape"):
        Sequential([Dense(2)]).export(tmp_path / "m.onnx")


def test_missing_onnx_package_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    with pytest.raises(ImportError, match=re.escape("pip install dlcore[onnx]")):
        Sequential([Input((2,)), Dense(1)]).export(tmp_path / "m.onnx")


def test_importing_dlcore_does_not_import_onnx():
    code = "import sys, dlcore, dlcore.models; assert 'onnx' not in sys.modules, 'onnx'"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ})


def test_readme_onnx_example_runs(tmp_path, monkeypatch):
    """The ONNX example in README.md runs as written."""
    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    blocks = [
        b
        for b in re.findall(r"```python\n(.*?)```", readme, re.S)
        if 'model.export("model.onnx")' in b
    ]
    assert len(blocks) == 1
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], "README.md", "exec"), {"__name__": "readme_onnx"})
    assert (tmp_path / "model.onnx").exists()
