"""Activations, losses and metrics that users write as Python functions, found by name.

``dlcore.activations.register``, ``dlcore.losses.register`` and
``dlcore.metrics.register`` check a user's functions and enter them here under
the name that layers and compiled models then hold; an engine looks a name up
here when it is not one of the built-in names of ``names.py`` (registration
refuses those). A custom function is written against the array API namespace
``xp`` it is given, so the engines built on the array API (numpy, cupy,
array_api_strict) call it with their own ``xp`` from ``xp_activations`` and
``xp_losses``. Engines whose operations are compiled device kernels cannot call
Python (``Engine.runs_custom_functions`` is false) and refuse custom names with
``refuse``.

dlcore has no automatic differentiation: an activation or a loss comes with
its gradient, written out by its author.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from .base import Array, dtype_name
from .names import ACTIVATIONS as BUILTIN_ACTIVATIONS
from .names import LOSSES as BUILTIN_LOSSES


@dataclass(frozen=True)
class Activation:
    """An elementwise activation: ``forward(x, xp) -> y`` and ``gradient(x, y, xp) -> dy/dx``,
    both of the shape and dtype of ``x``."""

    name: str
    forward: Callable[[Array, ModuleType], Array]
    gradient: Callable[[Array, Array, ModuleType], Array]
    kind: str = "activation"


@dataclass(frozen=True)
class PerSample:
    """A loss or a metric: ``function(y_true, y_pred, xp)`` gives one value per sample,
    ``(N,)``; a loss also has ``gradient(y_true, y_pred, xp)``, the derivative of each
    sample's value with respect to its row of ``y_pred``, ``(N, C)``. A metric has no
    gradient."""

    name: str
    function: Callable[[Array, Array, ModuleType], Array]
    gradient: Callable[[Array, Array, ModuleType], Array] | None
    kind: str  # "loss" or "metric"


# name -> function. Losses and metrics share their names, as Keras's built-in ones do:
# a registered loss also serves as a metric.
ACTIVATIONS: dict[str, Activation] = {}
PER_SAMPLE: dict[str, PerSample] = {}


def describe(function: Callable[..., Any]) -> str:
    """``module.qualname`` of a function, as error messages name it."""
    module = getattr(function, "__module__", None)
    qualname = getattr(function, "__qualname__", None) or repr(function)
    return f"{module}.{qualname}" if module else qualname


def _activation(name: str) -> Activation:
    entry = ACTIVATIONS.get(name)
    if entry is None:
        available = ", ".join((*BUILTIN_ACTIVATIONS, *ACTIVATIONS))
        raise KeyError(f"unknown activation {name!r}; available: {available}")
    return entry


def _per_sample(name: str) -> PerSample:
    entry = PER_SAMPLE.get(name)
    if entry is None:
        available = ", ".join((*BUILTIN_LOSSES, *PER_SAMPLE))
        raise KeyError(f"unknown loss {name!r}; available: {available}")
    return entry


def _checked(
    result: Any, entry: Activation | PerSample, part: str, like: Array, shape: tuple[int, ...]
) -> Array:
    """``result``, after checking that the user's ``part`` gave ``shape`` and ``like``'s dtype."""
    got_shape = tuple(getattr(result, "shape", ()))
    got_dtype = getattr(result, "dtype", None)
    if got_shape != tuple(shape) or got_dtype != like.dtype:
        function = describe(getattr(entry, part))
        got = type(result).__name__ if got_dtype is None else _dtype_text(got_dtype)
        raise ValueError(
            f"the {part} of the custom {entry.kind} {entry.name!r} ({function}) "
            f"must return an array of shape {tuple(shape)} and dtype {dtype_name(like.dtype)}; "
            f"it returned shape {got_shape} and dtype {got}"
        )
    return result


def _dtype_text(dtype: Any) -> str:
    try:
        return dtype_name(dtype)
    except TypeError:
        return str(dtype)


def forward(xp: ModuleType, name: str, Z: Array) -> Array:
    """``Y``: the custom activation ``name`` applied to ``Z`` (any shape).

    Raises:
        KeyError: ``name`` is not a registered activation.
        ValueError: the function did not return the shape and dtype of ``Z``.
    """
    entry = _activation(name)
    return _checked(entry.forward(Z, xp), entry, "forward", Z, Z.shape)


def backward(xp: ModuleType, name: str, dY: Array, Z: Array, Y: Array) -> Array:
    """``dZ = dY * gradient(Z, Y)`` for the custom activation ``name``.

    Raises:
        KeyError: ``name`` is not a registered activation.
        ValueError: the gradient did not return the shape and dtype of ``Z``.
    """
    entry = _activation(name)
    return dY * _checked(entry.gradient(Z, Y, xp), entry, "gradient", Z, Z.shape)


def values(xp: ModuleType, name: str, Y_pred: Array, Y_true: Array) -> Array:
    """The per-sample values ``(N,)`` of the custom loss or metric ``name``.

    Raises:
        KeyError: ``name`` is not a registered loss or metric.
        ValueError: the function did not return ``(N,)`` in the dtype of ``Y_pred``.
    """
    entry = _per_sample(name)
    result = entry.function(Y_true, Y_pred, xp)
    return _checked(result, entry, "function", Y_pred, Y_pred.shape[:1])


def gradient(xp: ModuleType, name: str, Y_pred: Array, Y_true: Array) -> Array:
    """The derivative ``(N, C)`` of each sample's value of the custom loss ``name``
    with respect to ``Y_pred`` (no ``1 / N``).

    Raises:
        KeyError: ``name`` is not a registered loss, or is a metric (no gradient).
        ValueError: the gradient did not return the shape and dtype of ``Y_pred``.
    """
    entry = _per_sample(name)
    if entry.gradient is None:
        raise KeyError(f"the custom metric {name!r} has no gradient and cannot be a loss")
    result = entry.gradient(Y_true, Y_pred, xp)
    return _checked(result, entry, "gradient", Y_pred, Y_pred.shape)


def refuse(engine_name: str, table: Mapping[str, Activation | PerSample], name: str) -> None:
    """Raise when ``name`` is a custom function of ``table`` (``ACTIVATIONS`` or
    ``PER_SAMPLE``): for engines that cannot call Python functions.

    Raises:
        RuntimeError: naming the function and the engines and names that can be used instead.
    """
    entry = table.get(name)
    if entry is None:
        return
    function = entry.forward if isinstance(entry, Activation) else entry.function
    if entry.kind == "activation":
        builtin = f"a built-in activation ({', '.join(BUILTIN_ACTIVATIONS)})"
    elif entry.kind == "loss":
        builtin = f"a built-in loss ({', '.join(BUILTIN_LOSSES)})"
    else:
        builtin = "a built-in metric ('accuracy' or a loss name such as 'mae')"
    raise RuntimeError(
        f"the {engine_name} engine cannot run the custom {entry.kind} {name!r} "
        f"(the Python function {describe(function)}): its operations are compiled device "
        "kernels, which cannot call Python functions. Use the numpy or cupy engine "
        f"(dlcore.set_backend('numpy')), or {builtin}"
    )
