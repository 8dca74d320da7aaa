"""Activation names as users write them, mapped onto the engines' canonical names."""

from __future__ import annotations

from dlcore.backends import names

NAMES: tuple[str, ...] = names.ACTIVATIONS

ALIASES: dict[str, str] = {"silu": "swish"}


def get(identifier: str | None) -> str:
    """The canonical activation name for ``identifier``.

    Args:
        identifier: an activation name (``"relu"``, ``"silu"``, ...) or ``None``
            for the identity, as Keras accepts.

    Returns:
        A name from ``NAMES``.

    Raises:
        ValueError: unknown name; the message lists the valid ones.
        TypeError: ``identifier`` is neither a string nor ``None``.
    """
    if identifier is None:
        return "linear"
    if not isinstance(identifier, str):
        raise TypeError(
            "activation must be a name such as 'relu' or None, "
            f"received {type(identifier).__name__}: {identifier!r}"
        )
    key = identifier.lower()
    key = ALIASES.get(key, key)
    if key not in NAMES:
        valid = ", ".join(sorted(set(NAMES) | set(ALIASES)))
        raise ValueError(f"unknown activation {identifier!r}; available: {valid}")
    return key
