"""Keras's own model files, both ways: Keras 3 ``.keras`` archives and Keras 2 HDF5 files.

Reading (``load_keras_file``) turns a Keras config into dlcore's, layer by layer, for the
layers dlcore has (``KERAS_LAYERS``), and copies the weights in by layer name. Anything
else is refused by its class name; a ``"module"`` that is not Keras's own, a
``Lambda`` layer or a registered custom object is refused too: nothing is
unpickled, imported or executed. Writing (``keras_members``) makes the members of the zip
that ``keras.saving.load_model`` reads: ``metadata.json``, ``config.json`` and
``model.weights.h5`` with each layer's weights under ``layers/<path>/vars/<index>``;
``dlcore.saving`` puts them beside dlcore's own members in one file.

The HDF5 parts need ``h5py`` (``pip install dlcore[keras-files]``), imported only here.
"""

from __future__ import annotations

import datetime
import io
import json
import re
import warnings
import zipfile
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from dlcore import initializers, losses, metric_objects, optimizers, regularizers
from dlcore.archive import ModelFileError
from dlcore.optimizers.base import AVERAGE_SLOT, COMMON_OPTIONS

#: the Keras version whose format the files dlcore writes follow
KERAS_VERSION = "3.15.1"
_KERAS_MODULES = (
    "keras",
    "keras.layers",
    "keras.src.models.functional",
    "keras.models",
    "keras.optimizers",
    "keras.losses",
    "keras.metrics",
)
#: keyword arguments of a layer call that do not change the graph
_CALL_KWARGS = ("training", "mask")
_MODEL_CLASSES = ("Sequential", "Functional", "Model")
_INPUT_KEYS = ("batch_shape", "batch_input_shape")
_MERGES = ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate")
#: Keras layer class -> the config keys dlcore's layer of that name takes as they are
KERAS_LAYERS: dict[str, tuple[str, ...]] = {
    "Dense": ("units", "activation", "use_bias"),
    "Activation": ("activation",),
    "Dropout": ("rate",),
    "PReLU": (),
    "ReLU": ("max_value", "negative_slope", "threshold"),
    "LeakyReLU": ("negative_slope",),
    "ELU": ("alpha",),
    "Softmax": ("axis",),
    "Flatten": (),
    "Reshape": ("target_shape",),
    "GaussianNoise": ("stddev", "seed"),
    "GaussianDropout": ("rate", "seed"),
    "AlphaDropout": ("rate", "noise_shape", "seed"),
    "BatchNormalization": ("axis", "momentum", "epsilon", "center", "scale"),
    "LayerNormalization": ("axis", "epsilon", "center", "scale"),
    "Normalization": ("invert", "mean", "variance"),
    **{name: () for name in _MERGES if name != "Concatenate"},
    "Concatenate": ("axis",),
}
#: Keras layer class -> its config keys that name an initializer, which dlcore's layer
#: takes too (translated both ways by ``_initializer`` and ``_keras_object``)
INITIALIZER_KEYS: dict[str, tuple[str, ...]] = {
    "Dense": ("kernel_initializer", "bias_initializer"),
    "PReLU": ("alpha_initializer",),
    "BatchNormalization": (
        "beta_initializer",
        "gamma_initializer",
        "moving_mean_initializer",
        "moving_variance_initializer",
    ),
    "LayerNormalization": ("beta_initializer", "gamma_initializer"),
}
#: Keras layer class -> its config keys that name a weight regularizer dlcore's layer takes
REGULARIZER_KEYS: dict[str, tuple[str, ...]] = {
    "Dense": ("kernel_regularizer", "bias_regularizer"),
    "PReLU": ("alpha_regularizer",),
    "BatchNormalization": ("beta_regularizer", "gamma_regularizer"),
    "LayerNormalization": ("beta_regularizer", "gamma_regularizer"),
}
#: config keys that change nothing dlcore computes: names, the dtype policy, the input
#: shape (read from the model), random seeds (dlcore draws from its own generator),
#: renormalization settings that only act with ``renorm=True`` (refused below)
_NEUTRAL_KEYS = frozenset(
    (
        "name",
        "trainable",
        "dtype",
        "batch_input_shape",
        "batch_shape",
        "seed",
        "renorm_clipping",
        "renorm_momentum",
    )
)
_NO_CONSTRAINTS = "None (dlcore has no weight constraints)"
#: config keys whose only values dlcore can honour (any other changes the math), and
#: what dlcore supports, in words
_FIXED_KEYS: dict[str, tuple[tuple[Any, ...], str]] = {
    "activity_regularizer": ((None,), "None (dlcore has no activity regularizers)"),
    "kernel_constraint": ((None,), _NO_CONSTRAINTS),
    "bias_constraint": ((None,), _NO_CONSTRAINTS),
    "alpha_constraint": ((None,), _NO_CONSTRAINTS),
    "beta_constraint": ((None,), _NO_CONSTRAINTS),
    "gamma_constraint": ((None,), _NO_CONSTRAINTS),
    "shared_axes": ((None,), "None (dlcore's PReLU has one slope per feature)"),
    "noise_shape": ((None,), "None (dlcore's Dropout decides for each value)"),
    "quantization_config": ((None,), "None (dlcore does not quantize)"),
    "renorm": ((False,), "False"),
    "synchronized": ((False,), "False"),
    "rms_scaling": ((False,), "False (the usual (x - mean) / sqrt(var + epsilon))"),
    "data_format": ((None, "channels_last"), "'channels_last'"),
}
_FEATURE_AXES: tuple[Any, ...] = (-1, 1, [-1], [1])


def _h5py() -> Any:
    try:
        import h5py
    except ImportError:
        raise ImportError(
            "reading and writing Keras model files needs h5py: pip install dlcore[keras-files]"
        ) from None
    return h5py


def is_keras_zip(path: str) -> bool:
    """Whether ``path`` is a Keras 3 ``.keras`` archive (a zip with ``config.json`` and
    ``model.weights.h5``), judged by its content, not its name."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
    except (OSError, zipfile.BadZipFile, ValueError):
        return False
    return {"config.json", "model.weights.h5"} <= names


def is_hdf5(path: str) -> bool:
    """Whether ``path`` starts with HDF5's signature."""
    with open(path, "rb") as f:
        return f.read(8) == b"\x89HDF\r\n\x1a\n"


# ------------------------------------------------------------------------------ reading
def load_keras_file(path: str, *, compile: bool = True) -> Any:
    """A dlcore model on the current engine from a Keras 3 ``.keras`` or Keras 2 ``.h5``
    file: the architecture, the float32 weights and, when ``compile`` and they map to
    dlcore's, the optimizer, loss and metrics (else uncompiled, with a warning). The
    optimizer's variables Keras saved (``.keras``, and Keras 3's ``.h5``) become the
    dlcore optimizer's state, so ``fit`` continues as Keras's would; a file without them
    gives a fresh optimizer.

    Raises:
        ModelFileError: the file is damaged, holds a layer, a module or a setting that
            dlcore does not have (named in the message), or optimizer variables of
            another count or shape than this optimizer and model have in Keras.
        ImportError: h5py is missing.
    """
    h5py = _h5py()
    try:
        if is_hdf5(path):
            with h5py.File(path, "r") as f:
                config = _json_attr(f, "model_config")
                training = (
                    _json_attr(f, "training_config") if "training_config" in f.attrs else None
                )
                group = f["model_weights"] if "model_weights" in f else f
                weights = _h5_legacy_weights(group)
                state = _h5_legacy_optimizer_values(f, path)
            compile_config = _legacy_compile(training)
        else:
            with zipfile.ZipFile(path) as zf:
                config = json.loads(_zip_member(zf, "config.json"))
                data = _zip_member(zf, "model.weights.h5")
            with h5py.File(io.BytesIO(data), "r") as f:
                weights = _h5_v3_weights(f)
                state = _h5_v3_optimizer_values(f)
            compile_config = config.get("compile_config") if isinstance(config, dict) else None
        model = _model_from_keras(config)
        _assign(model, weights)
    except ModelFileError:
        raise
    except _READ_ERRORS as error:
        what = f"missing {error}" if isinstance(error, KeyError) else str(error)
        raise ModelFileError(path, f"{path} is not a Keras model dlcore can read: {what}") from None
    if compile and compile_config:
        _compile(model, compile_config, path)
        if state is not None and model.compiled:
            _restore_optimizer(model, state, path)
    return model


def load_keras_weights(model: Any, path: str) -> None:
    """Copy the weights of a Keras 3 ``.weights.h5`` file (``save_weights``) into
    ``model``, a built dlcore model of the same architecture, by layer order.

    Keras names each layer's weights by its class, ``layers/<snake_case class>`` and
    ``_1``, ``_2``... for later layers of one class, in the model's layer order; the
    user's layer names play no part, so neither do they here. Every shape is checked
    before any weight is written: a refused file leaves the model as it was.

    Raises:
        ModelFileError: the file holds no Keras weights, or weights of another count
            or shape than this model's (the layer and its Keras path are named).
        ImportError: h5py is missing.
    """
    h5py = _h5py()
    try:
        with h5py.File(path, "r") as f:
            if "layers" not in f:
                raise ModelFileError(
                    path, f"{path} is an HDF5 file without Keras 3 weights (no 'layers' group)"
                )
            found = {
                key: [_read(group["vars"][str(i)]) for i in range(len(group["vars"]))]
                for key, group in f["layers"].items()
                if "vars" in group
            }
    except (OSError, KeyError) as error:
        raise ModelFileError(path, f"{path} is a damaged weights file: {error}") from None
    planned: list[tuple[Any, list[np.ndarray]]] = []
    used: set[str] = set()
    for key, layer in _keras_paths(model):
        own = layer.get_weights()
        given = _ours_from_keras(layer, found.get(key, []))
        used.add(key)
        if len(given) != len(own):
            raise ModelFileError(
                path,
                f"layer {layer.name!r} ({type(layer).__name__}, Keras's layers/{key}) has "
                f"{len(own)} weights, {path} holds {len(given)} there: the file was saved "
                "from another architecture",
            )
        for i, (mine, theirs) in enumerate(zip(own, given)):
            if mine.shape != theirs.shape:
                raise ModelFileError(
                    path,
                    f"layer {layer.name!r} ({type(layer).__name__}, Keras's layers/{key}): "
                    f"weight {i} has shape {theirs.shape} in {path}, {mine.shape} in the model",
                )
        if own:
            planned.append((layer, given))
    extra = sorted(key for key, values in found.items() if values and key not in used)
    if extra:
        raise ModelFileError(
            path,
            f"{path} holds weights of layers this model does not have: "
            f"{', '.join('layers/' + key for key in extra)}",
        )
    for layer, given in planned:
        layer.set_weights(given)
        if type(layer).__name__ == "Normalization":
            layer.adapted = True  # its statistics came from the file


def _json_attr(f: Any, key: str) -> Any:
    value = f.attrs[key]
    return json.loads(value.decode() if isinstance(value, bytes) else str(value))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# What a damaged or crafted file makes zipfile, zlib, json, h5py and the rebuilding raise.
_READ_ERRORS = (
    KeyError,
    ValueError,
    TypeError,
    OSError,
    IndexError,
    AttributeError,
    EOFError,
    RecursionError,
    OverflowError,
    RuntimeError,
    zipfile.BadZipFile,
    zlib.error,
)
#: a member or dataset may hold at most this many times the bytes the file stores for
#: it (above ``_BOMB_FLOOR_BYTES``): more is a decompression (or fill-value) bomb
_MAX_EXPANSION = 100
_BOMB_FLOOR_BYTES = 1 << 26  # 64 MiB


def _read(dataset: Any) -> np.ndarray:
    """An HDF5 dataset's values, after checking that they are numbers and that their
    size is not a bomb: a dataset declaring far more bytes than the file stores for it
    (compressed, or chunks left to the fill value) is refused before anything is read."""
    dtype = np.dtype(dataset.dtype)
    if dtype.kind not in "biuf" or dtype.fields is not None:
        raise ValueError(f"the dataset {dataset.name!r} holds {dtype}, not numbers")
    declared = int(np.prod(dataset.shape, dtype=np.int64)) * dtype.itemsize
    stored = int(dataset.id.get_storage_size())
    if declared > _BOMB_FLOOR_BYTES and declared > _MAX_EXPANSION * stored:
        raise ValueError(
            f"the dataset {dataset.name!r} declares {declared} bytes but the file stores "
            f"{stored} for it; refusing a possible decompression bomb"
        )
    return np.asarray(dataset)


def _zip_member(zf: zipfile.ZipFile, name: str) -> bytes:
    """A member of a ``.keras`` zip, refusing a decompression bomb before inflating it."""
    info = zf.getinfo(name)
    if info.file_size > _BOMB_FLOOR_BYTES and info.file_size > _MAX_EXPANSION * info.compress_size:
        raise ValueError(
            f"the member {name!r} declares {info.file_size} bytes but stores "
            f"{info.compress_size}; refusing a possible decompression bomb"
        )
    return zf.read(name)


def _h5_v3_weights(f: Any) -> dict[str, list[np.ndarray]]:
    """Layer name -> its weights, from a Keras 3 ``model.weights.h5``."""
    found: dict[str, list[np.ndarray]] = {}
    layers = f["layers"] if "layers" in f else {}
    for key in layers:
        vars_group = layers[key].get("vars")
        if vars_group is None:
            continue
        name = _text(vars_group.attrs.get("name", key))
        found[name] = [_read(vars_group[str(i)]) for i in range(len(vars_group))]
    return found


def _h5_v3_optimizer_values(f: Any) -> list[np.ndarray] | None:
    """Keras's ``optimizer.variables`` from a Keras 3 ``model.weights.h5``
    (``optimizer/vars/<index>``), or ``None`` when it holds none."""
    group = f.get("optimizer/vars")
    if group is None or not len(group):
        return None
    return [_read(group[str(i)]) for i in range(len(group))]


def _h5_legacy_optimizer_values(f: Any, path: str) -> list[np.ndarray] | None:
    """Keras 3's ``optimizer.variables`` from its HDF5 file (``optimizer_weights``, in
    the order of its ``weight_names``), or ``None`` when it holds none. Keras 2 (tf.keras)
    ordered its optimizers' slots otherwise, version by version: they are not read,
    with a warning."""
    if "optimizer_weights" not in f:
        return None
    group = f["optimizer_weights"]
    if _text(f.attrs.get("keras_version", "3")).startswith(("1.", "2.")):
        warnings.warn(
            f"{path}: the optimizer state of a Keras 2 file is not read (Keras 2 ordered "
            "its slots otherwise); training continues with a fresh optimizer",
            stacklevel=4,
        )
        return None
    names = list(group.attrs.get("weight_names", []))
    chunk = 0
    while f"weight_names{chunk}" in group.attrs:  # Keras splits long name lists
        names += list(group.attrs[f"weight_names{chunk}"])
        chunk += 1
    return [_read(group[_text(name)]) for name in names] or None


def _h5_legacy_weights(group: Any) -> dict[str, list[np.ndarray]]:
    """Layer name -> its weights, from a Keras 2 ``model_weights`` group."""
    found = {}
    for name in (_text(n) for n in group.attrs["layer_names"]):
        layer = group[name]
        found[name] = [_read(layer[_text(w)]) for w in layer.attrs["weight_names"]]
    return found


def _legacy_compile(training: Any) -> dict[str, Any] | None:
    if not isinstance(training, dict):
        return None
    return {
        "optimizer": training.get("optimizer_config"),
        "loss": training.get("loss"),
        "metrics": training.get("metrics"),
    }


def _check_module(entry: Mapping[str, Any]) -> None:
    """Refuse objects that are not Keras's own: they would need code to be imported."""
    module = entry.get("module")
    if module is not None and module not in _KERAS_MODULES:
        raise ValueError(
            f"{entry.get('class_name')!r} comes from module {module!r}, which is not one of "
            "Keras's own; dlcore never imports code from a model file"
        )
    if entry.get("registered_name") not in (None, entry.get("class_name"), "Functional"):
        raise ValueError(
            f"{entry.get('registered_name')!r} is a registered custom object; dlcore never "
            "runs code from a model file"
        )


def _layer_config(entry: Mapping[str, Any]) -> dict[str, Any]:
    """dlcore's ``{"class_name", "config"}`` of one Keras layer entry: every key of the
    Keras config is copied, translated, harmless or refused by name (``_refuse``)."""
    _check_module(entry)
    cls = str(entry.get("class_name"))
    config = entry["config"]
    if cls == "InputLayer":
        shape = next((config[k] for k in _INPUT_KEYS if config.get(k) is not None), None)
        if shape is None:
            raise ValueError(f"the InputLayer {config.get('name')!r} has no batch_shape")
        return {
            "class_name": "InputLayer",
            "config": {"name": config["name"], "batch_shape": shape},
        }
    if cls not in KERAS_LAYERS:
        raise ValueError(f"{cls} is not a layer dlcore has")
    name = str(config["name"])
    ours: dict[str, Any] = {"name": name, "trainable": config.get("trainable", True)}
    for key, value in config.items():
        if key in KERAS_LAYERS[cls]:
            if value is not None:
                ours[key] = list(value) if isinstance(value, (list, tuple)) else value
        elif key in INITIALIZER_KEYS.get(cls, ()):
            ours[key] = _initializer(value, name, cls, key)
        elif key in REGULARIZER_KEYS.get(cls, ()):
            ours[key] = _regularizer(value, name, cls, key)
        elif key in _FIXED_KEYS:
            allowed, supported = _FIXED_KEYS[key]
            if not any(value is a or (value == a and type(value) is type(a)) for a in allowed):
                raise _refuse(name, cls, key, value, supported)
        elif cls == "Normalization" and key == "axis":
            axis = list(value) if isinstance(value, (list, tuple)) else value
            if axis not in _FEATURE_AXES:
                raise _refuse(name, cls, key, value, "-1 (one mean and variance per feature)")
            ours["axis"] = axis
        elif cls == "LeakyReLU" and key == "alpha":
            ours.setdefault("negative_slope", value)  # Keras 2's spelling
        elif key not in _NEUTRAL_KEYS:
            raise ValueError(
                f"layer {name!r} ({cls}) has the setting {key}={value!r}, which dlcore does "
                f"not know; it reads only {', '.join(_known_keys(cls))}"
            )
    if cls == "Normalization" and ours.get("mean") is None:
        ours["adapted"] = True  # the statistics are weights in the file
    if isinstance(ours.get("activation"), dict):
        raise ValueError(f"layer {name!r} has a custom activation {ours['activation']}")
    return {"class_name": cls, "config": ours}


def _known_keys(cls: str) -> list[str]:
    return sorted(
        {*KERAS_LAYERS[cls], *INITIALIZER_KEYS.get(cls, ()), *REGULARIZER_KEYS.get(cls, ())}
        | set(_NEUTRAL_KEYS)
        | set(_FIXED_KEYS)
    )


def _describe(value: Any) -> str:
    """A Keras config value as a refusal names it: its class and its settings."""
    if isinstance(value, Mapping) and "class_name" in value:
        return f"{value['class_name']}({value.get('config') or {}})"
    return f"{value!r} (a {type(value).__name__})"


def _refuse(layer: str, cls: str, key: str, value: Any, supported: str) -> ValueError:
    """The error for a setting that changes the math and that dlcore cannot honour."""
    return ValueError(
        f"layer {layer!r} ({cls}) has {key}={_describe(value)}, which dlcore cannot honour "
        f"(it would compute other numbers than Keras); dlcore supports {key}={supported}"
    )


def _initializer_names() -> str:
    return ", ".join(sorted({c.__name__ for c in initializers._CLASSES.values()}))


def _keras_own(value: Mapping[str, Any], module: str) -> bool:
    """Whether a serialized Keras object is one of Keras's own from ``module``."""
    return value.get("module") in (None, module) and value.get("registered_name") in (
        None,
        value.get("class_name"),
    )


def _initializer(value: Any, layer: str, cls: str, key: str) -> dict[str, Any] | None:
    """dlcore's ``{"class_name", "config"}`` of a Keras initializer (Keras 3 or 2 form)."""
    supported = f"one of {_initializer_names()} (or their snake_case names)"
    if value is None:
        return None
    if isinstance(value, Mapping) and isinstance(value.get("class_name"), str):
        if not _keras_own(value, "keras.initializers"):
            raise _refuse(layer, cls, key, value, supported)
        config = dict(value.get("config") or {})
        seed = config.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            del config["seed"]  # a seed generator's state: the weights come from the file
        for axes in ("input_axes", "output_axes"):  # Keras's default fans, as dlcore's
            if axes in config and config[axes] is None:
                del config[axes]
        value = {"class_name": value["class_name"], "config": config}
    elif not isinstance(value, str):
        raise _refuse(layer, cls, key, value, supported)
    return _made_by(initializers.get, value, layer, cls, key, supported)


def _regularizer(value: Any, layer: str, cls: str, key: str) -> dict[str, Any] | None:
    """dlcore's ``{"class_name", "config"}`` of a Keras weight regularizer. Keras's and
    dlcore's penalties are the same sums, ``l1 * sum(|W|) + l2 * sum(W**2)``, added to
    the loss of every batch, so the factors carry over as they are."""
    supported = "None, L1, L2 or L1L2 (or 'l1', 'l2', 'l1_l2')"
    if value is None:
        return None
    if isinstance(value, Mapping):
        if not _keras_own(value, "keras.regularizers"):
            raise _refuse(layer, cls, key, value, supported)
        value = {"class_name": value.get("class_name"), "config": value.get("config") or {}}
    return _made_by(regularizers.get, value, layer, cls, key, supported)


def _made_by(
    get: Any, value: Any, layer: str, cls: str, key: str, supported: str
) -> dict[str, Any] | None:
    """dlcore's ``{"class_name", "config"}`` of the object ``get`` (``initializers.get``,
    ``regularizers.get``) makes of a name or a ``{"class_name", "config"}``, or the
    refusal of ``value``."""
    if not isinstance(value, (str, Mapping)):
        raise _refuse(layer, cls, key, value, supported)
    try:
        found = get(value)
    except ValueError:
        raise _refuse(layer, cls, key, value, supported) from None
    if found is None:
        return None
    return {"class_name": type(found).__name__, "config": found.get_config()}


def _tensor_refs(node: Any) -> tuple[list[list[Any]], bool]:
    """The ``[layer, node, index]`` references one Keras call reads, and whether it
    read a list; both Keras 3's ``{"args", "kwargs"}`` and Keras 2's list forms."""
    if isinstance(node, dict):
        extra = sorted(set(node.get("kwargs") or {}) - set(_CALL_KWARGS))
        if extra:
            raise ValueError(f"a layer call has keyword arguments {extra}")
        arg = node["args"][0]
        tensors = arg if isinstance(arg, list) else [arg]
        refs = [list(t["config"]["keras_history"]) for t in tensors]
        return refs, isinstance(arg, list)
    refs = [list(ref[:3]) for ref in node]
    return refs, len(refs) > 1


def _model_from_keras(config: Any) -> Any:
    """A built dlcore model from a Keras model config."""
    from dlcore.models import Model, Sequential

    if not isinstance(config, dict):
        raise ValueError("its model config is not a JSON object")
    _check_module(config)
    cls = config.get("class_name")
    if cls not in _MODEL_CLASSES:
        raise ValueError(f"{cls} is not a model class dlcore has (Sequential, Functional)")
    body = config["config"]
    entries = body["layers"]
    if cls == "Sequential":
        layers = [_layer_config(e) for e in entries]
        shape = body.get("build_input_shape")
        if layers and layers[0]["class_name"] == "InputLayer":
            shape = layers.pop(0)["config"]["batch_shape"]
        first = entries[0]["config"] if entries else {}
        shape = shape or first.get("batch_input_shape") or first.get("batch_shape")
        if not shape:
            raise ValueError("the Sequential model has no input shape")
        dims = [int(d) for d in shape[1:]]
        ours = {
            "name": body.get("name"),
            "input_features": int(np.prod(dims)),
            "input_shape": dims,
            "layers": layers,
        }
        model: Any = Sequential.from_config(ours)
    else:
        layers = []
        for entry in entries:
            layer = _layer_config(entry)
            calls = [_tensor_refs(node) for node in entry.get("inbound_nodes", [])]
            layer["name"] = layer["config"]["name"]
            layer["inbound_nodes"] = [refs for refs, _ in calls]
            layer["merges"] = [merged or entry["class_name"] in _MERGES for _, merged in calls]
            layers.append(layer)

        def refs(value: Any) -> list[list[Any]]:
            return (
                [list(value)] if value and isinstance(value[0], str) else [list(v) for v in value]
            )

        ours = {
            "name": body.get("name"),
            "layers": layers,
            "input_layers": refs(body["input_layers"]),
            "output_layers": refs(body["output_layers"]),
        }
        model = Model.from_config(ours)
    model.build()
    return model


def _assign(model: Any, weights: Mapping[str, list[np.ndarray]]) -> None:
    """Copy each layer's weights from the file, checking names and shapes."""
    for layer in model.layers:
        own = layer.get_weights()
        given = _ours_from_keras(layer, weights.get(layer.name, []))
        if len(given) != len(own):
            raise ValueError(
                f"layer {layer.name!r} has {len(own)} weights but the file holds {len(given)}"
            )
        for mine, theirs in zip(own, given):
            if mine.shape != theirs.shape:
                raise ValueError(
                    f"layer {layer.name!r}: a weight of shape {theirs.shape} in the file, "
                    f"{mine.shape} in the model"
                )
        if own:
            layer.set_weights(given)


def _ours_from_keras(layer: Any, given: list[np.ndarray]) -> list[np.ndarray]:
    """A layer's weights as a Keras file holds them -> as dlcore's layer holds them.

    Keras's ``Normalization`` keeps ``mean``, ``variance`` and an unused ``count`` when
    adapted, and no weights at all when its config gives the statistics (dlcore's layer
    then made them from the config)."""
    if type(layer).__name__ != "Normalization":
        return given
    if len(given) == 3 and np.shape(given[2]) == ():
        return given[:2]
    if not given and layer.input_mean is not None:
        return layer.get_weights()
    return given


def _compile(model: Any, compiled: Mapping[str, Any], path: str) -> None:
    """Compile ``model`` with the file's settings when dlcore has them; else warn."""
    try:
        opt = compiled.get("optimizer")
        if isinstance(opt, dict):
            _check_module(opt)
            known = {
                *optimizers.get(str(opt["class_name"]).lower()).get_config(),
                *COMMON_OPTIONS,  # use_ema, clipnorm...: left out of a default's config
            }
            opt = {
                "class_name": opt["class_name"],
                "config": {k: v for k, v in opt["config"].items() if k in known},
            }
        loss = compiled.get("loss")
        metrics = compiled.get("metrics") or None
        if isinstance(loss, dict) or (
            isinstance(metrics, list) and any(not isinstance(m, str) for m in metrics)
        ):
            raise ValueError("a loss or metric that is not a Keras name")
        model.compile(optimizer=optimizers.get(opt), loss=losses.get(loss), metrics=metrics)
    except (ValueError, TypeError, KeyError) as error:
        warnings.warn(
            f"{path}: the compile settings do not map to dlcore's ({error}); the model is "
            "loaded uncompiled: call model.compile()",
            stacklevel=3,
        )


# ------------------------------------------------------------------------------ writing
def _snake(name: str) -> str:
    """Keras's ``to_snake_case``: how its weights file names a layer of a class."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _keras_layer(layer: Any, input_shape: Any) -> dict[str, Any]:
    """One layer's Keras 3 config entry; refuses what Keras's layer cannot express."""
    cls = type(layer).__name__
    if cls not in KERAS_LAYERS:
        raise ValueError(f"{cls} has no Keras counterpart; save to another suffix (.dlcore)")
    ours = layer.get_config()
    config: dict[str, Any] = {"name": layer.name, "trainable": layer.trainable, "dtype": "float32"}
    for key in KERAS_LAYERS[cls]:
        if key in ours:
            config[key] = ours[key]
    for key in INITIALIZER_KEYS.get(cls, ()):
        config[key] = _keras_object(ours[key], "keras.initializers", layer.name, key)
    for key in REGULARIZER_KEYS.get(cls, ()):
        config[key] = _keras_object(ours[key], "keras.regularizers", layer.name, key)
    if cls == "Normalization":
        if not layer.ready:
            raise ValueError(
                f"Normalization layer {layer.name!r} has no statistics yet: call adapt(data) "
                "before saving it in Keras's format"
            )
        # Keras's adapted form: the statistics travel as weights (see keras_weights)
        config.update(axis=[ours["axis"]], mean=None, variance=None)
    from dlcore.backends import names

    activation = config.get("activation")
    if activation is not None and activation not in names.ACTIVATIONS:
        raise ValueError(f"layer {layer.name!r} has the custom activation {activation!r}")
    entry: dict[str, Any] = {
        "module": "keras.layers",
        "class_name": cls,
        "config": config,
        "registered_name": None,
    }
    if input_shape is not None:
        entry["build_config"] = {"input_shape": input_shape}
    return entry


def _keras_object(ours: Any, module: str, layer: str, key: str) -> dict[str, Any] | None:
    """Keras 3's serialized form of dlcore's ``{"class_name", "config"}`` of an
    initializer or regularizer (``None`` stays ``None``)."""
    if ours is None:
        return None
    known = (
        {c.__name__ for c in initializers._CLASSES.values()}
        if module == "keras.initializers"
        else {"L1", "L2", "L1L2"}
    )
    if ours["class_name"] not in known:
        raise ValueError(
            f"layer {layer!r} has {key}={ours['class_name']}, which Keras does not have "
            f"(Keras's own: {', '.join(sorted(known))})"
        )
    return {
        "module": module,
        "class_name": ours["class_name"],
        "config": dict(ours["config"]),
        "registered_name": None,
    }


def keras_weights(layer: Any) -> list[np.ndarray]:
    """A dlcore layer's weights as Keras's layer of that class holds them (float32;
    ``Normalization`` adds Keras's unused int32 ``count``)."""
    values = [np.asarray(value, dtype=np.float32) for value in layer.get_weights()]
    if type(layer).__name__ == "Normalization":
        values.append(np.asarray(0, dtype=np.int32))
    return values


def _keras_order(model: Any) -> list[Any]:
    """``model``'s layers in the order Keras's model of that architecture has them."""
    if model._class_key() == "Sequential":
        return list(model.layers)
    by_name = {layer.name: layer for layer in model.layers}
    return [by_name[item["name"]] for item in model.get_config()["layers"]]


def _keras_paths(model: Any) -> list[tuple[str, Any]]:
    """``(path, layer)``: where Keras's weights files keep each layer's weights,
    ``layers/<path>/vars``, in Keras's layer order."""
    used: dict[str, int] = {}
    paths = []
    for layer in _keras_order(model):
        key = _snake(type(layer).__name__)
        count = used.get(key, 0)
        used[key] = count + 1
        paths.append((key if not count else f"{key}_{count}", layer))
    return paths


def _tensor(ref: list[Any], width: int) -> dict[str, Any]:
    return {
        "class_name": "__keras_tensor__",
        "config": {"shape": [None, width], "dtype": "float32", "keras_history": ref},
    }


def keras_config(model: Any) -> tuple[dict[str, Any], list[Any]]:
    """Keras 3's ``config.json`` of ``model`` and its layers in Keras's order (the order
    that names their weights)."""
    if model._class_key() == "Sequential":
        width = int(model.input_features)
        shape = [None, *model.input_shape[1:]]
        entries = [
            {
                "module": "keras.layers",
                "class_name": "InputLayer",
                "config": {"batch_shape": shape, "dtype": "float32", "name": "input_layer"},
                "registered_name": None,
            }
        ]
        for layer in model.layers:
            entries.append(_keras_layer(layer, [None, width] if layer.get_weights() else None))
            width = layer.output_features(width)
        body = {"name": model.name, "trainable": True, "layers": entries}
        return {
            "module": "keras",
            "class_name": "Sequential",
            "config": body,
            "registered_name": None,
            "build_config": {"input_shape": shape},
        }, model.layers
    ours = model.get_config()
    widths = {layer.name: layer for layer in model.layers}
    entries = []
    for item in ours["layers"]:
        layer = widths[item["name"]]
        if item["class_name"] == "InputLayer":
            entry: dict[str, Any] = {
                "module": "keras.layers",
                "class_name": "InputLayer",
                "config": {
                    "batch_shape": item["config"]["batch_shape"],
                    "dtype": "float32",
                    "name": layer.name,
                },
                "registered_name": None,
            }
            entry.update(name=layer.name, inbound_nodes=[])
            entries.append(entry)
            continue
        nodes: list[Any] = []
        for refs, merged in zip(item["inbound_nodes"], item["merges"]):
            tensors = [_tensor(list(ref), _width(model, ref)) for ref in refs]
            nodes.append({"args": [tensors if merged else tensors[0]], "kwargs": {}})
        first = [[None, _width(model, ref)] for ref in item["inbound_nodes"][0]]
        entry = _keras_layer(layer, (first if item["merges"][0] else first[0]) if first else None)
        entry.update(name=layer.name, inbound_nodes=nodes)
        entries.append(entry)
    one = len(ours["input_layers"]) == 1
    body = {
        "name": model.name,
        "trainable": True,
        "layers": entries,
        "input_layers": ours["input_layers"][0] if one else ours["input_layers"],
        "output_layers": (
            ours["output_layers"][0] if len(ours["output_layers"]) == 1 else ours["output_layers"]
        ),
    }
    order = [widths[item["name"]] for item in ours["layers"]]
    return {
        "module": "keras.src.models.functional",
        "class_name": "Functional",
        "config": body,
        "registered_name": "Functional",
        "build_config": {"input_shape": None},
    }, order


def _width(model: Any, ref: list[Any]) -> int:
    """The width of the tensor ``[layer, node, index]`` of ``model``."""
    layer = model.get_layer(str(ref[0]))
    if type(layer).__name__ == "InputLayer":
        return int(layer.output.features)
    nodes = [node for node in model._nodes if node.layer is layer]
    return int(nodes[int(ref[1])].output.features)


def _keras_compile(model: Any) -> dict[str, Any] | None:
    """The compile settings in Keras's names, or ``None`` when there are none to write."""
    if not model.compiled or len(model.output_names) != 1:
        return None
    optimizer = model._compiled_optimizer()
    loss = model._losses[0].get_config()
    metrics = [metric_objects.serialize(m) for m in model._metric_names[0]]
    return {
        "optimizer": {
            "module": "keras.optimizers",
            "class_name": type(optimizer).__name__,
            "config": optimizer.get_config(),
            "registered_name": None,
        },
        "loss": loss.get("name") if isinstance(loss, dict) else loss,
        "metrics": metrics or None,
        "loss_weights": None,
        "weighted_metrics": None,
    }


def keras_members(model: Any) -> dict[str, bytes]:
    """The members of Keras 3's ``.keras`` zip for ``model``: ``metadata.json``,
    ``config.json`` and ``model.weights.h5``, as bytes. ``dlcore.saving`` writes them
    beside dlcore's own members, so that ``keras.saving.load_model`` reads the file too.

    A compiled model's weights file also holds its optimizer's variables where Keras
    keeps them (``optimizer/vars/<index>``, in Keras's ``optimizer.variables`` order:
    ``keras_optimizer_layout``), so Keras continues training where dlcore stopped.
    Every optimizer both libraries have is written (``KERAS_OPTIMIZER_SLOTS``); dlcore's
    ``LossScaleOptimizer`` is not (Keras then warns and starts it from zero).

    Raises:
        ValueError: a layer, an activation or a setting has no Keras counterpart.
        ImportError: h5py is missing.
    """
    h5py = _h5py()
    model._claim_layers()
    config, order = keras_config(model)
    compiled = _keras_compile(model)
    if compiled is not None:
        config["compile_config"] = compiled
    used: dict[str, int] = {}
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        layers = f.create_group("layers")
        for layer in order:
            key = _snake(type(layer).__name__)
            count = used.get(key, 0)
            used[key] = count + 1
            group = layers.create_group(key if not count else f"{key}_{count}")
            variables = group.create_group("vars")
            variables.attrs["name"] = layer.name
            for index, value in enumerate(keras_weights(layer)):
                variables.create_dataset(str(index), data=value)
        f.create_group("vars").attrs["name"] = model.name
        state = keras_optimizer_values(model) if compiled is not None else None
        if state is not None:
            variables = f.create_group("optimizer").create_group("vars")
            variables.attrs["name"] = type(model._compiled_optimizer()).__name__.lower()
            for index, value in enumerate(state):
                variables.create_dataset(str(index), data=value)
    metadata = {
        "keras_version": KERAS_VERSION,
        "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S"),
    }
    return {
        "metadata.json": json.dumps(metadata).encode(),
        "config.json": json.dumps(config).encode(),
        "model.weights.h5": buffer.getvalue(),
    }


# ------------------------------------------------------------------ the optimizer's variables
#: dlcore optimizer class -> its state slots in the groups Keras 3's optimizer of that
#: class makes them, each pair ``(dlcore's slot, Keras's name)``. Keras's
#: ``optimizer.variables`` are ``iteration``, ``learning_rate`` (unless a schedule),
#: the moving ``average`` group with ``use_ema``, then these groups one after the other;
#: inside a group, every slot of the first trainable variable, then of the next...
#: A slot dlcore does not use (SGD without momentum, Adam without AMSGrad) is one Keras
#: does not make either. Nadam ends with its momentum product, ``mu_product``.
#: Not here, so written without variables (Keras warns and starts that optimizer from
#: zero) and read as a fresh optimizer: dlcore's ``LossScaleOptimizer``.
KERAS_OPTIMIZER_SLOTS: dict[str, tuple[tuple[tuple[str, str], ...], ...]] = {
    "SGD": ((("velocity", "momentum"),),),
    "Adam": ((("m", "momentum"), ("v", "velocity")), (("v_max", "velocity_hat"),)),
    "AdamW": ((("m", "momentum"), ("v", "velocity")), (("v_max", "velocity_hat"),)),
    "RMSprop": (
        (("velocity", "velocity"),),
        (("momentum_buffer", "momentum"),),
        (("average_grad", "average_gradient"),),
    ),
    "Adagrad": ((("accumulator", "accumulator"),),),
    "Adadelta": (
        (
            ("accumulated_grad", "accumulated_grad"),
            ("accumulated_delta_var", "accumulated_delta_var"),
        ),
    ),
    "Adamax": ((("m", "momentum"), ("u", "norm")),),
    "Nadam": ((("m", "momentum"), ("v", "velocity")),),
    "Lion": ((("momentum", "momentum"),),),
    "Ftrl": ((("accumulator", "accumulator"), ("linear", "linear")),),
}
#: the host scalars of dlcore's optimizers that Keras keeps as a last variable
_TRAILING_SCALARS = {"Nadam": "mu_product"}


class _OptimizerVariable:
    """One entry of Keras's ``optimizer.variables`` for a dlcore optimizer and model:
    ``what`` is ``"iterations"``, ``"learning_rate"``, a host scalar or a dlcore slot;
    a slot's entry has the ``(start, stop)`` of its weight in the flat buffer."""

    def __init__(
        self,
        what: str,
        label: str,
        shape: tuple[int, ...] = (),
        span: tuple[int, int] | None = None,
    ) -> None:
        self.what, self.label, self.shape, self.span = what, label, shape, span


def _trainable_variables(model: Any) -> list[tuple[str, tuple[int, ...], tuple[int, int]]]:
    """``(label, shape, (start, stop))`` of each weight Keras's model trains, in Keras's
    order (layer by layer, each layer's trainable weights in order; the weights of a
    frozen layer and moving statistics are not trainable)."""
    found = []
    for layer in _keras_order(model):
        shapes = [tuple(int(d) for d in s) for s in layer.parameter_shapes()]
        if not shapes:
            continue
        start = model._layer_ranges[id(layer)][0]
        for shape, flag, weight in zip(shapes, layer.weight_trainable(), layer.weights):
            stop = start + int(np.prod(shape, dtype=np.int64))
            if flag:
                found.append((weight.path, shape, (start, stop)))
            start = stop
    return found


def keras_optimizer_layout(model: Any) -> list[_OptimizerVariable] | None:
    """What Keras 3.15.1's ``optimizer.variables`` hold, in order, for ``model``'s
    compiled dlcore optimizer, or ``None`` for an optimizer Keras's files cannot carry
    (not in ``KERAS_OPTIMIZER_SLOTS``). ``model`` is built and placed on its engine."""
    optimizer = model._compiled_optimizer()
    cls = type(optimizer).__name__
    if cls not in KERAS_OPTIMIZER_SLOTS:
        return None
    used = set(optimizer._slots_in_use())
    layout = [_OptimizerVariable("iterations", "iteration")]
    if optimizer.schedule is None:
        layout.append(_OptimizerVariable("learning_rate", "learning_rate"))
    groups = KERAS_OPTIMIZER_SLOTS[cls]
    if optimizer.use_ema:
        groups = (((AVERAGE_SLOT, "average"),), *groups)
    variables = _trainable_variables(model)
    for group in groups:
        slots = [pair for pair in group if pair[0] in used]
        for label, shape, span in variables if slots else []:
            for ours, theirs in slots:
                layout.append(_OptimizerVariable(ours, f"{label} {theirs}", shape, span))
    if cls in _TRAILING_SCALARS:
        name = _TRAILING_SCALARS[cls]
        layout.append(_OptimizerVariable(name, name))
    return layout


def keras_optimizer_values(model: Any) -> list[np.ndarray] | None:
    """The values of Keras's ``optimizer.variables`` for ``model``'s optimizer, as Keras
    saves them: ``iteration`` int64 ``()``, the learning rate and host scalars float32
    ``()``, each slot float32 in its weight's shape (an optimizer that has not stepped
    yet gives the slots' initial values); ``None`` when Keras cannot carry them
    (``keras_optimizer_layout``)."""
    layout = keras_optimizer_layout(model)
    if layout is None:
        return None
    optimizer = model._compiled_optimizer()
    state = optimizer.get_state()
    initial = optimizer._all_slot_init()
    values = []
    for entry in layout:
        if entry.what == "iterations":
            values.append(np.asarray(optimizer.iterations, dtype=np.int64))
        elif entry.what == "learning_rate":
            values.append(np.asarray(optimizer.learning_rate, dtype=np.float32))
        elif entry.span is None:
            values.append(np.asarray(state[entry.what], dtype=np.float32))
        elif entry.what in state:
            start, stop = entry.span
            values.append(state[entry.what][start:stop].reshape(entry.shape).astype(np.float32))
        else:
            values.append(np.full(entry.shape, initial[entry.what], dtype=np.float32))
    return values


def _restore_optimizer(model: Any, values: list[np.ndarray], path: str) -> None:
    """Put Keras's optimizer variables ``values`` (in ``optimizer.variables`` order)
    into ``model``'s compiled dlcore optimizer, built on the model's engine.

    A file saved before Keras's optimizer was built holds only its leading scalars
    (``iteration`` 0, the learning rate): the optimizer then starts fresh.

    Raises:
        ModelFileError: another count of variables than this optimizer and model have
            in Keras, a variable of another shape or kind, or a state the optimizer
            refuses (a negative second moment, a non-finite value).
    """
    model._claim_layers()
    optimizer = model._compiled_optimizer()
    cls = type(optimizer).__name__
    layout = keras_optimizer_layout(model)
    if layout is None:
        warnings.warn(
            f"{path}: dlcore cannot read Keras's variables of a {cls}; its optimizer "
            "starts from zero",
            stacklevel=4,
        )
        return
    scalars = len(
        [e for e in layout if e.span is None and e.what in ("iterations", "learning_rate")]
    )
    unbuilt = len(values) == scalars < len(layout)
    if len(values) != len(layout) and not unbuilt:
        trained = len(_trainable_variables(model))
        raise ModelFileError(
            path,
            f"{path} holds {len(values)} optimizer variables, but Keras's {cls} of this model "
            f"has {len(layout)} ({', '.join(e.label for e in layout[:scalars])}, then its "
            f"slots for {trained} trainable weights): the optimizer state was saved with "
            "other optimizer settings or another model",
        )
    for index, (entry, value) in enumerate(zip(layout, values)):
        kind = "iu" if entry.what == "iterations" else "f"
        if value.shape != entry.shape or value.dtype.kind not in kind:
            expected = "an integer" if kind == "iu" else "floats"
            raise ModelFileError(
                path,
                f"{path}: optimizer variable {index} ({entry.label}) has shape "
                f"{value.shape} and dtype {value.dtype}; Keras's {cls} of this model has "
                f"shape {entry.shape} of {expected} there",
            )
    iterations = int(values[0])
    learning_rate = next(
        (float(v) for e, v in zip(layout, values) if e.what == "learning_rate"), None
    )
    if unbuilt and iterations:
        raise ModelFileError(
            path,
            f"{path}: the optimizer took {iterations} steps but the file holds none of "
            f"its slots (only {', '.join(e.label for e in layout[:scalars])})",
        )
    engine, dtype = model._built_engine(), model._built_dtype()
    size = int(model._params.shape[0])
    initial = optimizer._all_slot_init()
    state: dict[str, np.ndarray] = {"iterations": np.asarray(iterations, dtype=np.int64)}
    for entry, value in zip(layout, values):
        if entry.span is not None:
            if entry.what not in state:
                # weights Keras does not train keep the slot's initial value
                state[entry.what] = np.full(size, initial[entry.what], dtype=np.float64)
            start, stop = entry.span
            state[entry.what][start:stop] = np.asarray(value, dtype=np.float64).reshape(-1)
        elif entry.what not in ("iterations", "learning_rate"):
            state[entry.what] = np.asarray(value, dtype=np.float64)
    try:
        if not unbuilt:  # else the optimizer starts fresh, as Keras's had not stepped
            optimizer.build(engine, size, dtype)
            optimizer.set_state(engine, state, dtype)
        if learning_rate is not None and np.float32(learning_rate) != np.float32(
            optimizer.learning_rate
        ):  # changed during training (else the config's own number stays)
            optimizer.learning_rate = learning_rate
    except (ValueError, TypeError) as error:
        raise ModelFileError(path, f"{path}: its optimizer state is refused: {error}") from None
