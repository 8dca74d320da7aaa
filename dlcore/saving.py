"""Saving and loading models: ``save_model``, ``load_model``, the weights-only files, and
the in-memory copies that ``copy.deepcopy`` and ``pickle`` make.

A model file is dlcore's safe archive (``dlcore.archive``): a JSON description
(format, dtype, architecture, compile settings) and flat float arrays (the
parameters and the optimizer's state). Nothing in a file is unpickled or
executed; sizes and shapes are checked against the architecture before
anything is allocated. The model classes register themselves here
(``register_model_classes``), so this module never imports ``dlcore.models``.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from dlcore import archive, config, custom, distribute, losses, metric_objects, optimizers
from dlcore.archive import MemberHeader, ModelFileError
from dlcore.layers import LAYER_CLASSES, InputLayer, Layer

MODEL_FORMATS = {"Sequential": "dlcore.Sequential", "Functional": "dlcore.Model"}
WEIGHTS_FORMAT = "dlcore.weights"
_OPTIMIZER_PREFIX = "optimizer/"
# What a damaged or crafted description makes the code that rebuilds a model raise.
_DESCRIPTION_ERRORS = (
    TypeError,
    ValueError,
    AttributeError,
    IndexError,
    KeyError,
    OverflowError,
    RecursionError,
    ArithmeticError,
)

_classes: dict[str, Any] = {}
_from_config: list[Callable[..., Any]] = []


def register_model_classes(classes: Mapping[str, Any], from_config: Callable[..., Any]) -> None:
    """Called by ``dlcore.models``: the model classes and the function that makes a
    model from ``{"class_name", "config"}``."""
    _classes.update(classes)
    _from_config[:] = [from_config]


def model_state(model: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The description and arrays that ``save_model`` writes and ``restore_model`` reads.

    A model without weights yet (a ``Sequential`` whose input width is unknown) has a
    description with ``"built": False`` and no arrays: ``copy.deepcopy`` and ``pickle``
    copy it that way; ``save`` refuses it.
    """
    class_key = model._class_key()
    description: dict[str, Any] = {
        "format": MODEL_FORMATS[class_key],
        "model": model.get_config(),
        "compile": None,
    }
    arrays: dict[str, np.ndarray] = {}
    if model.built:
        model._claim_layers()
        description["dtype"] = model.dtype
        description["trainable"] = [layer.trainable for layer in model._param_layers]
        arrays["params"] = model._built_engine().to_numpy(model._params)
    else:
        description["built"] = False
    if model.compiled:
        optimizer = model._compiled_optimizer()
        description["compile"] = {
            "loss": [loss.get_config() for loss in model._losses],
            "loss_weights": list(model._loss_weights),
            "metrics": [
                [metric_objects.serialize(m) for m in group] for group in model._metric_names
            ],
            "weighted_metrics": [
                [metric_objects.serialize(m) for m in group]
                for group in getattr(model, "_weighted_metric_names", [])
            ],
            "optimizer": {
                "class_name": type(optimizer).__name__,
                "config": optimizer.get_config(),
            },
            "optimizer_built": optimizer.built and model.built,
        }
        if optimizer.built and model.built:
            for key, value in optimizer.get_state().items():
                arrays[f"optimizer/{key}"] = value
    return description, arrays


def restore_model(
    description: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray],
    *,
    compile: bool = True,
    custom_objects: Mapping[str, Any] | None = None,
) -> Any:
    """A model on the current engine from ``model_state``'s output (or a file's contents)."""
    class_key = next((k for k, v in MODEL_FORMATS.items() if v == description.get("format")), None)
    if class_key is None:
        raise ValueError(
            f"not a saved model (format {description.get('format')!r}); load weights "
            "with model.load_weights"
        )
    architecture = {"class_name": class_key, "config": description["model"]}
    with custom.custom_object_scope(custom_objects or {}):
        if description.get("built", True) is False:
            model = _from_config[0](architecture, custom_objects)
            if compile and description.get("compile"):
                _restore_compile(model, description["compile"], arrays)
            return model
        dtype = description["dtype"]
        if dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be float32 or float64, found {dtype!r}")
        if class_key == "Sequential":
            features = description["model"].get("input_features")
            if isinstance(features, bool) or not isinstance(features, int) or features < 1:
                raise ValueError(f"input_features must be a positive integer, found {features!r}")
        previous = config.floatx()
        config.set_floatx(dtype)
        try:
            model = _from_config[0](architecture, custom_objects)
            model.build()
        finally:
            config.set_floatx(previous)
        model._claim_layers()
        trainable = description.get("trainable")
        if trainable is not None:
            if len(trainable) != len(model._param_layers):
                raise ValueError("the trainable flags do not match the architecture")
            for layer, flag in zip(model._param_layers, trainable):
                layer.trainable = bool(flag)
        model._set_flat(_checked_params(arrays, int(model._params.shape[0])))
        if compile and description.get("compile"):
            _restore_compile(model, description["compile"], arrays)
    return model


def _deserialized_metrics(groups: Any) -> list[Any]:
    """The compile settings' metric groups with their metric objects rebuilt."""
    return [
        [metric_objects.deserialize(m) for m in group] if isinstance(group, list) else group
        for group in groups
    ]


def _restore_compile(
    model: Any, compiled: Mapping[str, Any], arrays: Mapping[str, np.ndarray]
) -> None:
    """Compile ``model`` as described, with the optimizer's state when there is one."""
    loss = compiled["loss"]
    metrics = _deserialized_metrics(compiled["metrics"])
    weighted = _deserialized_metrics(compiled.get("weighted_metrics") or [])
    many = len(model.output_names) > 1
    model.compile(
        weighted_metrics=weighted if many or not weighted else weighted[0],
        optimizer=optimizers.get(compiled["optimizer"]),
        loss=[losses.get(item) for item in loss] if isinstance(loss, list) else losses.get(loss),
        metrics=metrics if many or not metrics or not isinstance(metrics[0], list) else metrics[0],
        loss_weights=compiled.get("loss_weights") if many else None,
    )
    if compiled.get("optimizer_built"):
        state = {
            key.split("/", 1)[1]: value
            for key, value in arrays.items()
            if key.startswith("optimizer/")
        }
        optimizer, engine = model._compiled_optimizer(), model._built_engine()
        optimizer.build(engine, int(model._params.shape[0]), model.dtype)
        optimizer.set_state(engine, state, model.dtype)


def save_model(
    model: Any,
    filepath: str | os.PathLike,
    overwrite: bool = True,
    save_format: str | None = None,
) -> None:
    """Save architecture, weights, and compile settings with optimizer state to one file.

    The file is dlcore's safe archive, which keeps the optimizer's state, dtype
    policies and custom functions and needs nothing but NumPy to read. A name ending in
    ``.keras`` (or ``save_format="keras"``) also gets the members of Keras 3's format
    in the same zip (``dlcore.keras_files``, needs h5py), so ``keras.saving.load_model``
    opens it too, with the architecture, weights, compile settings and the optimizer's
    variables, so that Keras continues training where dlcore stopped. Where Keras cannot
    express the model (a custom activation, a layer Keras lacks) or h5py is missing, a
    ``.keras`` name gets dlcore's members only, with a warning that says why;
    ``save_format="keras"`` raises instead.
    ``save_format="dlcore"`` never adds Keras's members. ``load_model`` reads all
    of them. The file is written to a temporary name first and renamed, so an
    interrupted save never damages an existing file.

    Raises:
        ValueError: an unknown ``save_format``; with ``save_format="keras"``, a model
            Keras cannot express.
        ImportError: ``save_format="keras"`` without h5py.
        FileExistsError: the file exists and ``overwrite=False``.
    """
    model._ensure_built("save()")
    path = os.fspath(filepath)
    if save_format not in (None, "keras", "dlcore"):
        raise ValueError(f"save_format must be None, 'keras' or 'dlcore', received {save_format!r}")
    if not overwrite and os.path.exists(path):
        raise FileExistsError(f"{path} exists and overwrite=False; choose another name")
    wants_keras = save_format == "keras" or (
        save_format is None and path.lower().endswith(".keras")
    )
    companions = _keras_members(model, path, strict=save_format == "keras") if wants_keras else None
    if not distribute.is_chief():
        return  # data-parallel: every process holds the same model; rank 0 writes it
    description, arrays = model_state(model)
    archive.write_archive(path, description, arrays, companions)


def _keras_members(model: Any, path: str, *, strict: bool) -> dict[str, bytes] | None:
    """Keras's members of ``path``, or ``None`` (with a warning) when the model has no
    Keras form or h5py is missing and not ``strict``."""
    from dlcore import keras_files

    try:
        return keras_files.keras_members(model)
    except (ValueError, ImportError) as error:
        if strict:
            raise type(error)(
                f"cannot write {path} in Keras's format: {error}; leave save_format out "
                "for dlcore's own format, which keeps everything"
            ) from None
        warnings.warn(
            f"{path} is written in dlcore's format only, which keras.saving.load_model "
            f"cannot open: {error}. dlcore.load_model reads it with everything; pass "
            "save_format='dlcore' (or another suffix) to silence this",
            stacklevel=4,
        )
        return None


def load_model(
    filepath: str | os.PathLike,
    custom_objects: Mapping[str, Any] | None = None,
    compile: bool = True,
) -> Any:
    """Load a model written by ``save`` (or by Keras: a ``.keras`` or HDF5 file, told
    apart by content; see ``dlcore.keras_files``) onto the current engine.

    A compiled model comes back compiled with its optimizer state, so ``fit``
    continues where it stopped. Nothing in the file is unpickled or executed, nothing
    is written, and the shapes the file declares are checked against its
    architecture before any array is read or any weight is made.

    Args:
        filepath: the file ``save`` wrote.
        custom_objects: the custom activations, losses and metrics (and custom layer
            classes) the model uses, by the names it was saved with.
        compile: whether to restore the compile settings and optimizer state.

    Raises:
        FileNotFoundError: no such file (``IsADirectoryError``: a directory).
        ModelFileError: (a ``ValueError``) the file is not a dlcore model, is
            damaged, or does not match its own description; the message names the
            file and the problem.
    """
    path = os.fspath(filepath)
    if os.path.isfile(path):
        from dlcore import keras_files

        keras_only = keras_files.is_keras_zip(path) and not archive.is_archive(path)
        if keras_only or keras_files.is_hdf5(path):
            return keras_files.load_keras_file(path, compile=compile)
    description, arrays = archive.read_archive(
        path, _model_members(path, compile=compile, custom_objects=custom_objects)
    )
    with _file_errors(path):
        return restore_model(description, arrays, compile=compile, custom_objects=custom_objects)


@contextlib.contextmanager
def _file_errors(path: str, what: str = "is not a valid dlcore model file") -> Iterator[None]:
    """Turns what rebuilding a model from a damaged description raises into a
    ``ModelFileError`` naming ``path``."""
    try:
        yield
    except ModelFileError:
        raise
    except KeyError as error:
        raise ModelFileError(path, f"{path} {what}: missing {error}") from None
    except _DESCRIPTION_ERRORS as error:
        raise ModelFileError(path, f"{path} {what}: {error}") from None


def _model_members(
    path: str, *, compile: bool, custom_objects: Mapping[str, Any] | None
) -> archive.Select:
    """``read_archive``'s check of a model file: the arrays' declared shapes against the
    architecture and the optimizer, before anything is read; it reads the parameters,
    and the optimizer state when ``compile``."""

    def select(description: dict[str, Any], headers: Mapping[str, MemberHeader]) -> list[str]:
        if description.get("format") not in MODEL_FORMATS.values() or "built" in description:
            raise ModelFileError(
                path,
                f"{path} is a dlcore file but not a saved model (format "
                f"{description.get('format')!r}); load weights with model.load_weights",
            )
        with _file_errors(path):
            size = sum(map(_count, _architecture_shapes(description, custom_objects)))
            _check_params(headers["params"], size)
            state = _optimizer_state_shapes(description, size) if compile else None
            optimizer_names = _checked_optimizer_members(headers, size, state)
        return ["params", *(optimizer_names if compile else [])]

    return select


def _count(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def _optimizer_state_shapes(
    description: Mapping[str, Any], size: int
) -> dict[str, tuple[int, ...]] | None:
    """The shapes of the optimizer state the description's compile settings make, or
    ``None`` when the file holds no optimizer state."""
    compiled = description.get("compile")
    if not compiled or not compiled.get("optimizer_built"):
        return None
    return dict(optimizers.get(compiled["optimizer"]).state_shapes(size))


def _checked_optimizer_members(
    headers: Mapping[str, MemberHeader], size: int, state: Mapping[str, tuple[int, ...]] | None
) -> list[str]:
    """The names of the optimizer's arrays, each checked: a name the optimizer has (when
    known), and the shape it has; every other array of the file is refused."""
    names = []
    for name, header in headers.items():
        if name == "params":
            continue
        if not name.startswith(_OPTIMIZER_PREFIX):
            raise ValueError(f"the array {name!r} is not part of a dlcore model file")
        entry = name[len(_OPTIMIZER_PREFIX) :]
        if state is not None and entry not in state:
            raise ValueError(
                f"the optimizer state has an unexpected entry {entry!r}; with its "
                f"configuration it has {sorted(state)}"
            )
        allowed = {(), (size,)} if state is None else {state[entry]}
        if header.shape not in allowed:
            raise ValueError(
                f"the optimizer state entry {entry!r} has shape {header.shape}; "
                f"expected {' or '.join(map(str, sorted(allowed)))}"
            )
        names.append(name)
    return names


def save_weights(model: Any, filepath: str | os.PathLike, overwrite: bool = True) -> None:
    """Save only the weights (read back by ``load_weights`` into the same architecture);
    in a data-parallel run only rank 0 writes."""
    model._ensure_built("save_weights()")
    model._claim_layers()
    path = os.fspath(filepath)
    if not overwrite and os.path.exists(path):
        raise FileExistsError(f"{path} exists and overwrite=False; choose another name")
    if not distribute.is_chief():
        return  # data-parallel: rank 0 writes the weights every process holds
    archive.write_archive(
        path,
        {"format": WEIGHTS_FORMAT, "shapes": [list(s) for s in _own_shapes(model)]},
        {"params": model._built_engine().to_numpy(model._params)},
    )


def load_weights(model: Any, filepath: str | os.PathLike) -> None:
    """Load weights saved by ``save_weights`` (or a whole model saved by ``save``), or
    a Keras 3 ``.weights.h5`` file (``keras_model.save_weights``, told by its HDF5
    signature; needs h5py) into a model of the same architecture, by layer order.

    The shapes the file declares are checked against this model before anything is
    read; the model is unchanged when the file is refused.

    Raises:
        FileNotFoundError: no such file.
        ModelFileError: (a ``ValueError``) the file holds no dlcore weights, is
            damaged, or its weights have other shapes than this model's.
    """
    model._ensure_built("load_weights()")
    model._claim_layers()
    path = os.fspath(filepath)
    if os.path.isfile(path):
        from dlcore import keras_files

        if keras_files.is_hdf5(path):
            keras_files.load_keras_weights(model, path)
            return
    own = _own_shapes(model)

    def select(description: dict[str, Any], headers: Mapping[str, MemberHeader]) -> list[str]:
        shapes = _weight_shapes_in_file(path, description)
        if shapes != own:
            raise ModelFileError(
                path, f"the weights in {path} have shapes {shapes}, this model has {own}"
            )
        with _file_errors(path, "is a damaged weights file"):
            _check_params(headers["params"], int(model._params.shape[0]))
        return ["params"]

    _, arrays = archive.read_archive(path, select)
    model._set_flat(arrays["params"])


def _weight_shapes_in_file(path: str, description: Mapping[str, Any]) -> list[tuple[int, ...]]:
    """The parameter shapes a model or weights file declares."""
    if description.get("format") in MODEL_FORMATS.values():
        with _file_errors(path, "is a damaged model file"):
            return _architecture_shapes(description, None)
    if description.get("format") == WEIGHTS_FORMAT:
        with _file_errors(path, "is a damaged weights file"):
            return [_shape(s) for s in description["shapes"]]
    raise ModelFileError(path, f"{path} holds no dlcore weights")


def _shape(value: Any) -> tuple[int, ...]:
    """A list of dimensions from a file's description, checked."""
    if not isinstance(value, list) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in value
    ):
        raise ValueError(f"a parameter shape is {value!r}, not a list of sizes")
    return tuple(value)


def _own_shapes(model: Any) -> list[tuple[int, ...]]:
    return [tuple(s) for layer in model._param_layers for s in layer.parameter_shapes()]


def _architecture_shapes(
    description: Mapping[str, Any], custom_objects: Mapping[str, Any] | None
) -> list[tuple[int, ...]]:
    """The parameter shapes of a file's architecture, found from the layers' widths
    alone: no model is built and no weight is made."""
    class_key = next(k for k, v in MODEL_FORMATS.items() if v == description.get("format"))
    architecture = description["model"]
    with custom.custom_object_scope(custom_objects or {}):
        if class_key == "Sequential":
            layers = _sequential_widths(architecture, custom_objects)
        else:
            layers = _functional_widths(architecture, custom_objects)
    return [tuple(s) for layer in layers for s in layer.parameter_shapes()]


def _layer(entry: Mapping[str, Any], custom_objects: Mapping[str, Any] | None) -> Layer:
    """A layer, without weights, from a file's ``{"class_name", "config"}``."""
    name = str(entry["class_name"])
    cls = LAYER_CLASSES.get(name) or (custom_objects or {}).get(name)
    if not (isinstance(cls, type) and issubclass(cls, Layer)):
        raise ValueError(
            f"unknown layer type {name!r}; pass its class in custom_objects={{{name!r}: cls}}"
        )
    return cls.from_config(dict(entry["config"]))


def _sequential_widths(
    architecture: Mapping[str, Any], custom_objects: Mapping[str, Any] | None
) -> list[Layer]:
    """A ``Sequential``'s layers with their input widths set, in order."""
    width = architecture["input_features"]
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"input_features must be a positive integer, found {width!r}")
    layers = [_layer(entry, custom_objects) for entry in architecture["layers"]]
    for layer in layers:
        width = layer.output_features(width)
    return layers


def _functional_widths(
    architecture: Mapping[str, Any], custom_objects: Mapping[str, Any] | None
) -> list[Layer]:
    """A functional model's layers with their input widths set, following each call's
    inbound tensors as ``Model.from_config`` does, without making tensors or weights."""
    layers: dict[str, Layer] = {}
    widths: dict[tuple[str, int], int] = {}
    pending = []
    for entry in architecture["layers"]:
        layer = _layer(entry, custom_objects)
        if layer.name in layers:
            raise ValueError(f"two layers are named {layer.name!r}")
        layers[layer.name] = layer
        if isinstance(layer, InputLayer):
            widths[(layer.name, 0)] = int(layer.units or 0)
        calls = list(entry.get("inbound_nodes", []))
        merges = entry.get("merges") or [False] * len(calls)
        pending += [(layer, i, refs, merge) for i, (refs, merge) in enumerate(zip(calls, merges))]
    while pending:
        remaining = []
        for layer, index, refs, merge in pending:
            keys = [(str(ref[0]), int(ref[1])) for ref in refs]
            if not all(key in widths for key in keys) or (
                index and (layer.name, index - 1) not in widths
            ):
                remaining.append((layer, index, refs, merge))
                continue
            inputs = [widths[key] for key in keys]
            widths[(layer.name, index)] = layer.output_features(inputs if merge else inputs[0])
        if len(remaining) == len(pending):
            names = sorted({item[0].name for item in remaining})
            raise ValueError(
                f"the layer graph cannot be rebuilt: layers {names} read tensors that no "
                "layer makes"
            )
        pending = remaining
    return list(layers.values())


def _check_params(params: Any, expected: int) -> None:
    """Check the ``params`` array (or its declared header) against the size the
    architecture needs."""
    if params.dtype.kind != "f":
        raise ValueError(f"params must hold real floats, found dtype {params.dtype}")
    if tuple(params.shape) != (expected,):
        raise ValueError(
            f"params has shape {tuple(params.shape)}; the architecture needs ({expected},): "
            f"the file holds {math.prod(params.shape)} parameters but its architecture "
            f"needs {expected}"
        )


def _checked_params(arrays: Mapping[str, np.ndarray], expected: int) -> np.ndarray:
    """The flat ``params`` array of a file, checked against the size the architecture needs."""
    params = arrays["params"]
    _check_params(params, expected)
    return params
