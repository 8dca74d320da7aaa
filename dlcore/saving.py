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

import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from dlcore import archive, config, custom, losses, optimizers

MODEL_FORMATS = {"Sequential": "dlcore.Sequential", "Functional": "dlcore.Model"}
WEIGHTS_FORMAT = "dlcore.weights"

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
            "metrics": [list(group) for group in model._metric_names],
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


def _restore_compile(
    model: Any, compiled: Mapping[str, Any], arrays: Mapping[str, np.ndarray]
) -> None:
    """Compile ``model`` as described, with the optimizer's state when there is one."""
    loss = compiled["loss"]
    metrics = compiled["metrics"]
    many = len(model.output_names) > 1
    model.compile(
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


def save_model(model: Any, filepath: str | os.PathLike, overwrite: bool = True) -> None:
    """Save architecture, weights, and compile settings with optimizer state to one file.

    Any file name works (``model.h5``, ``model.keras``, ``model.dlcore``); the
    format is dlcore's own safe archive, read back by ``load_model``. The file
    is written to a temporary name first and renamed, so an interrupted save
    never damages an existing file.
    """
    model._ensure_built("save()")
    path = os.fspath(filepath)
    if not overwrite and os.path.exists(path):
        raise FileExistsError(f"{path} exists and overwrite=False; choose another name")
    description, arrays = model_state(model)
    archive.write_archive(path, description, arrays)


def load_model(
    filepath: str | os.PathLike,
    custom_objects: Mapping[str, Any] | None = None,
    compile: bool = True,
) -> Any:
    """Load a model written by ``save`` onto the current engine.

    A compiled model comes back compiled with its optimizer state, so ``fit``
    continues where it stopped. Nothing in the file is unpickled or executed.

    Args:
        filepath: the file ``save`` wrote.
        custom_objects: the custom activations, losses and metrics (and custom layer
            classes) the model uses, by the names it was saved with.
        compile: whether to restore the compile settings and optimizer state.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a dlcore model, is corrupt, or does not match
            its own description.
    """
    path = os.fspath(filepath)
    description, arrays = archive.read_archive(path)
    if description.get("format") not in MODEL_FORMATS.values() or "built" in description:
        raise ValueError(
            f"{path} is a dlcore file but not a saved model (format "
            f"{description.get('format')!r}); load weights with model.load_weights"
        )
    try:
        return restore_model(description, arrays, compile=compile, custom_objects=custom_objects)
    except KeyError as error:
        raise ValueError(f"{path} is not a valid dlcore model file: missing {error}") from None
    except (TypeError, ValueError, AttributeError, IndexError) as error:
        raise ValueError(f"{path} is not a valid dlcore model file: {error}") from None


def save_weights(model: Any, filepath: str | os.PathLike, overwrite: bool = True) -> None:
    """Save only the weights (read back by ``load_weights`` into the same architecture)."""
    model._ensure_built("save_weights()")
    model._claim_layers()
    path = os.fspath(filepath)
    if not overwrite and os.path.exists(path):
        raise FileExistsError(f"{path} exists and overwrite=False; choose another name")
    archive.write_archive(
        path,
        {"format": WEIGHTS_FORMAT, "shapes": [list(s) for s in _own_shapes(model)]},
        {"params": model._built_engine().to_numpy(model._params)},
    )


def load_weights(model: Any, filepath: str | os.PathLike) -> None:
    """Load weights saved by ``save_weights`` (or a whole model saved by ``save``)."""
    model._ensure_built("load_weights()")
    model._claim_layers()
    path = os.fspath(filepath)
    description, arrays = archive.read_archive(path)
    if description.get("format") in MODEL_FORMATS.values():
        try:
            shapes = _shapes_in_file(description)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ValueError(f"the model file {path} is damaged: {error}") from None
    elif description.get("format") == WEIGHTS_FORMAT:
        shapes = [tuple(s) for s in description["shapes"]]
    else:
        raise ValueError(f"{path} holds no dlcore weights")
    own = _own_shapes(model)
    if shapes != own:
        raise ValueError(f"the weights in {path} have shapes {shapes}, this model has {own}")
    try:
        params = _checked_params(arrays, int(model._params.shape[0]))
    except (KeyError, ValueError) as error:
        raise ValueError(f"the weights file {path} is damaged: {error}") from None
    model._set_flat(params)


def _own_shapes(model: Any) -> list[tuple[int, ...]]:
    return [tuple(s) for layer in model._param_layers for s in layer.parameter_shapes()]


def _shapes_in_file(description: Mapping[str, Any]) -> list[tuple[int, ...]]:
    """The parameter shapes of a file's architecture, found without allocating weights."""
    class_key = next(k for k, v in MODEL_FORMATS.items() if v == description.get("format"))
    previous = config.floatx()
    config.set_floatx(description.get("dtype", "float32"))
    try:
        model = _from_config[0]({"class_name": class_key, "config": description["model"]})
        model.build()
    finally:
        config.set_floatx(previous)
    return _own_shapes(model)


def _checked_params(arrays: Mapping[str, np.ndarray], expected: int) -> np.ndarray:
    """The flat ``params`` array of a file, checked against the size the architecture needs."""
    params = arrays["params"]
    if params.dtype.kind != "f":
        raise ValueError(f"params must hold real floats, found dtype {params.dtype}")
    if params.shape != (expected,):
        raise ValueError(
            f"params has shape {params.shape}; the architecture needs ({expected},): "
            f"the file holds {params.size} parameters but its architecture needs {expected}"
        )
    return params
