"""What custom activations, losses and metrics share: registering, resolving, checking.

Users write their own functions against the array API namespace ``xp`` and
register them with ``dlcore.activations.register``, ``dlcore.losses.register``
or ``dlcore.metrics.register``; the engines find them by name in
``dlcore.backends.custom``. This module holds the checks those three share,
``custom_object_scope`` (which makes the functions of
``load_model(..., custom_objects=...)`` resolvable by the names a file holds)
and ``check_engine``, which the model calls before it runs anything on an
engine that cannot call Python functions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import Any

from dlcore.backends import custom as engine_custom
from dlcore.backends.base import Engine

# The mappings of the custom_object_scope blocks being run, innermost last.
_scopes: list[dict[str, Callable[..., Any]]] = []


@contextlib.contextmanager
def custom_object_scope(custom_objects: Mapping[str, Callable[..., Any]] | None) -> Iterator[None]:
    """Make the functions of ``custom_objects`` resolvable by these names inside the block.

    ``load_model(path, custom_objects={"my_fn": my_fn})`` loads inside such a block,
    so a saved layer or compile configuration that names ``"my_fn"`` gets ``my_fn``.
    Each function must have been registered (``dlcore.activations.register``,
    ``dlcore.losses.register``, ``dlcore.metrics.register``): dlcore needs the
    gradient that comes with the registration. A registered function stays
    resolvable by its registered name after the block, as before it.

    Args:
        custom_objects: names mapped to registered functions, or ``None``.

    Raises:
        TypeError: ``custom_objects`` is not a mapping of names to functions.

    Example:
        >>> with dlcore.custom.custom_object_scope({"my_fn": my_fn}):  # doctest: +SKIP
        ...     model = load_model("model.keras")
    """
    if custom_objects is not None and not isinstance(custom_objects, Mapping):
        raise TypeError(
            "custom_objects must map names to functions, e.g. {'my_fn': my_fn}; "
            f"received {type(custom_objects).__name__}"
        )
    mapping = dict(custom_objects or {})
    for key, value in mapping.items():
        if not isinstance(key, str) or not callable(value):
            raise TypeError(
                "custom_objects must map names to functions, e.g. {'my_fn': my_fn}; "
                f"received {key!r}: {value!r}"
            )
    _scopes.append(mapping)
    try:
        yield
    finally:
        _scopes.pop()


def check_engine(
    engine: Engine,
    *,
    activations: Iterable[str] = (),
    losses: Iterable[Any] = (),
    metrics: Iterable[str] = (),
) -> None:
    """Refuse the custom functions that ``engine`` cannot run, before any work is done.

    The model calls this when it is built on an engine and when it is compiled:
    engines whose operations are compiled device kernels (numba) cannot call
    Python functions. Built-in names pass on every engine.

    Args:
        engine: the engine the model runs on.
        activations: the layers' activation names (``layer.activation``).
        losses: the compiled loss: ``Loss`` objects or their names.
        metrics: the compiled metric names.

    Raises:
        RuntimeError: a name is a custom function and the engine cannot run it;
            the message names the function and the engines that can.
    """
    if engine.runs_custom_functions:
        return
    for name in activations:
        engine_custom.refuse(engine.name, engine_custom.ACTIVATIONS, name)
    for item in (*losses, *metrics):
        engine_custom.refuse(engine.name, engine_custom.PER_SAMPLE, getattr(item, "name", item))


# ---------------------------------------------------------------------- shared by the three modules
def scoped(name: str) -> Callable[..., Any] | None:
    """The function an enclosing ``custom_object_scope`` gives ``name``, if any."""
    for mapping in reversed(_scopes):
        if name in mapping:
            return mapping[name]
    return None


def checked_name(kind: str, function: Any, name: Any, builtin: Collection[str]) -> str:
    """The name to register ``function`` under, after checking both.

    Args:
        kind: ``"activation"``, ``"loss"`` or ``"metric"``, for the messages.
        function: what the user passed as the function.
        name: the name the user gave, or ``None`` for ``function.__name__``.
        builtin: the names and aliases the user-facing module resolves by itself, which
            a custom function may not take (compared in lower case, as they are resolved).

    Raises:
        TypeError: ``function`` is not callable, or ``name`` is not a string.
        ValueError: the name is not a Python identifier (a lambda's ``<lambda>``) or
            is a built-in name.
    """
    if not callable(function):
        raise TypeError(
            f"a custom {kind} must be a function, received {type(function).__name__}: {function!r}"
        )
    if name is None:
        name = getattr(function, "__name__", None)
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(
                f"the custom {kind} {engine_custom.describe(function)} has no usable name "
                f"({name!r}); give one with name='my_{kind}'"
            )
    if not isinstance(name, str):
        raise TypeError(f"the name of a custom {kind} must be a string, received {name!r}")
    if not name.isidentifier():
        raise ValueError(
            f"the name of a custom {kind} must be a Python identifier such as 'my_{kind}', "
            f"received {name!r}"
        )
    if name.lower() in builtin:
        builtin_kind = "activation" if kind == "activation" else "loss or metric"
        raise ValueError(
            f"{name!r} names a built-in {builtin_kind}; register "
            f"{engine_custom.describe(function)} under another name, e.g. name='my_{name}'"
        )
    return name


def checked_gradient(kind: str, name: str, gradient: Any, signature: str) -> Callable[..., Any]:
    """``gradient``, after checking that it was given and is callable.

    Raises:
        TypeError: naming the custom function and the gradient it needs.
    """
    if gradient is None:
        raise TypeError(
            f"the custom {kind} {name!r} needs its gradient: dlcore has no automatic "
            f"differentiation, so pass gradient={signature}"
        )
    if not callable(gradient):
        raise TypeError(
            f"the gradient of the custom {kind} {name!r} must be a function {signature}, "
            f"received {type(gradient).__name__}: {gradient!r}"
        )
    return gradient


def unknown_hint(kind: str, name: str, register: str) -> str:
    """The end of an "unknown name" message: how to make a custom function known."""
    return (
        f"; if {name!r} is a custom {kind}, register it with {register} before using it, "
        f"or pass it to load_model in custom_objects={{{name!r}: {name}}}"
    )
