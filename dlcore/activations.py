"""Activation names as users write them, mapped onto the engines' canonical names,
and custom activations written as Python functions (``register``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dlcore import custom
from dlcore.backends import custom as engine_custom
from dlcore.backends import names

NAMES: tuple[str, ...] = names.ACTIVATIONS

ALIASES: dict[str, str] = {"silu": "swish"}


def register(
    forward: Callable[..., Any] | None = None,
    *,
    gradient: Callable[..., Any] | None = None,
    name: str | None = None,
) -> Callable[..., Any]:
    """Register an activation written as Python functions, under a name.

    dlcore has no automatic differentiation, so an activation comes with its
    derivative, written out. Both functions are elementwise and use the
    functions of the array API namespace ``xp`` they are given (NumPy, CuPy's,
    ``array_api_strict``), so the numpy, cupy and array_api_strict engines run
    them; the numba engine cannot call Python and refuses them. Layers hold the
    name, so a saved model refers to the activation by it. Registering a name
    again replaces its functions, as redefining them in a notebook does.

    Args:
        forward: ``forward(x, xp) -> y``, an array of the shape and dtype of ``x``.
            Leave it out to use ``register`` as a decorator.
        gradient: ``gradient(x, y, xp) -> dy/dx``, elementwise, of the shape and
            dtype of ``x``, where ``y = forward(x, xp)``.
        name: the name to register under; ``forward.__name__`` by default.

    Returns:
        ``forward`` itself, which ``Dense(..., activation=forward)`` then accepts, as
        it accepts the name; without ``forward``, a decorator that registers the
        function it decorates and returns it.

    Raises:
        TypeError: ``forward`` or ``gradient`` is not a function, or ``gradient``
            is missing.
        ValueError: the name is not a Python identifier, or is a built-in
            activation or alias.

    Example:
        >>> def scaled_tanh_gradient(x, y, xp):
        ...     return 1.7159 * (2.0 / 3.0) * (1.0 - (y / 1.7159) ** 2)
        >>> @register(gradient=scaled_tanh_gradient)
        ... def scaled_tanh(x, xp):
        ...     return 1.7159 * xp.tanh(x * (2.0 / 3.0))
        >>> get(scaled_tanh)
        'scaled_tanh'
    """
    if forward is None:
        return lambda function: register(function, gradient=gradient, name=name)
    key = custom.checked_name("activation", forward, name, {*NAMES, *ALIASES})
    checked = custom.checked_gradient("activation", key, gradient, "gradient(x, y, xp)")
    engine_custom.ACTIVATIONS[key] = engine_custom.Activation(key, forward, checked)
    return forward


def get(identifier: str | Callable[..., Any] | None) -> str:
    """The canonical activation name for ``identifier``.

    Args:
        identifier: an activation name (``"relu"``, ``"silu"``, the name of a
            registered custom activation, ...), a function registered with
            ``register``, or ``None`` for the identity, as Keras accepts. Inside a
            ``custom.custom_object_scope`` its names resolve to its functions.

    Returns:
        A name from ``NAMES``, or the registered name of a custom activation.

    Raises:
        ValueError: unknown name; the message lists the valid ones.
        TypeError: ``identifier`` is neither a string, a registered function nor ``None``.
    """
    if identifier is None:
        return "linear"
    if not isinstance(identifier, str):
        if callable(identifier):
            return _registered_name(identifier)
        raise TypeError(
            "activation must be a name such as 'relu' or None, or a function registered "
            f"with dlcore.activations.register; received {type(identifier).__name__}: "
            f"{identifier!r}"
        )
    key = identifier.lower()
    key = ALIASES.get(key, key)
    if key in NAMES:
        return key
    function = custom.scoped(identifier)
    if function is not None:
        return _registered_name(function)
    if identifier in engine_custom.ACTIVATIONS:
        return identifier
    valid = ", ".join(sorted(set(NAMES) | set(ALIASES) | set(engine_custom.ACTIVATIONS)))
    hint = custom.unknown_hint(
        "activation", identifier, "dlcore.activations.register(fn, gradient=...)"
    )
    raise ValueError(f"unknown activation {identifier!r}; available: {valid}{hint}")


def _registered_name(function: Callable[..., Any]) -> str:
    """The name ``function`` was last registered under as an activation."""
    for entry in reversed(engine_custom.ACTIVATIONS.values()):
        if entry.forward is function:
            return entry.name
    raise TypeError(
        f"the activation function {engine_custom.describe(function)} is not registered: "
        "dlcore has no automatic differentiation, so register it with its gradient first: "
        "dlcore.activations.register(fn, gradient=gradient(x, y, xp))"
    )
