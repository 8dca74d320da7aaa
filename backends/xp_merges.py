"""Merges of several layers' outputs, forward and backward, written against the Python array API.

Every function takes the array namespace ``xp`` and uses only functions of the
2023.12 standard, so the generic engine runs them unchanged on every namespace.
Each returns new arrays: the gradients never share memory with their arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import ModuleType

from .base import Array


def _fold(binary: Callable[[Array, Array], Array], inputs: Sequence[Array]) -> Array:
    result = binary(inputs[0], inputs[1]) if len(inputs) > 1 else inputs[0] * 1.0
    for X in inputs[2:]:
        result = binary(result, X)
    return result


_FORWARD: dict[str, Callable[[ModuleType, Sequence[Array]], Array]] = {
    "add": lambda xp, inputs: _fold(lambda A, B: A + B, inputs),
    "subtract": lambda xp, inputs: inputs[0] - inputs[1],
    "multiply": lambda xp, inputs: _fold(lambda A, B: A * B, inputs),
    "average": lambda xp, inputs: _fold(lambda A, B: A + B, inputs) * (1.0 / len(inputs)),
    "maximum": lambda xp, inputs: _fold(xp.maximum, inputs),
    "minimum": lambda xp, inputs: _fold(xp.minimum, inputs),
    "concatenate": lambda xp, inputs: xp.concat(list(inputs), axis=-1),
}


def forward(xp: ModuleType, op: str, inputs: Sequence[Array]) -> Array:
    """Merge ``inputs`` with ``op``.

    Args:
        xp: the array namespace of the inputs.
        op: a name from ``names.MERGES``; any other raises ``KeyError``.
        inputs: float ``(N, F)`` arrays of one dtype, at least one (exactly two for
            ``"subtract"``); for ``"concatenate"`` ``(N, F_i)``.

    Returns:
        A new float array ``(N, F)``, or ``(N, sum of F_i)`` for ``"concatenate"``.
    """
    return _FORWARD[op](xp, inputs)


def _first_matches(xp: ModuleType, dY: Array, inputs: Sequence[Array], Y: Array) -> list[Array]:
    """``dY`` where an input equals ``Y`` and no earlier input does, else zero."""
    zero = xp.zeros_like(dY)
    taken = xp.zeros_like(Y, dtype=xp.bool)
    grads = []
    for X in inputs:
        hit = (X == Y) & ~taken
        grads.append(xp.where(hit, dY, zero))
        taken = taken | hit
    return grads


def _products_of_the_others(dY: Array, inputs: Sequence[Array]) -> list[Array]:
    grads = []
    for i in range(len(inputs)):
        grad = dY * 1.0
        for j, X in enumerate(inputs):
            if j != i:
                grad = grad * X
        grads.append(grad)
    return grads


def _column_blocks(xp: ModuleType, dY: Array, inputs: Sequence[Array]) -> list[Array]:
    grads, start = [], 0
    for X in inputs:
        width = X.shape[-1]
        # asarray(copy=True): a slice may be a view of dY
        grads.append(xp.asarray(dY[:, start : start + width], copy=True))
        start += width
    return grads


_BACKWARD: dict[str, Callable[[ModuleType, Array, Sequence[Array], Array], list[Array]]] = {
    "add": lambda xp, dY, inputs, Y: [dY * 1.0 for _ in inputs],
    "subtract": lambda xp, dY, inputs, Y: [dY * 1.0, -dY],
    "multiply": lambda xp, dY, inputs, Y: _products_of_the_others(dY, inputs),
    "average": lambda xp, dY, inputs, Y: [dY * (1.0 / len(inputs)) for _ in inputs],
    "maximum": _first_matches,
    "minimum": _first_matches,
    "concatenate": lambda xp, dY, inputs, Y: _column_blocks(xp, dY, inputs),
}


def backward(xp: ModuleType, op: str, dY: Array, inputs: Sequence[Array], Y: Array) -> list[Array]:
    """Gradient of a merge with respect to each of its inputs.

    Args:
        xp: the array namespace of the arrays.
        op: a name from ``names.MERGES``; any other raises ``KeyError``.
        dY: float, the shape of ``Y``: the gradient of the loss with respect to ``Y``.
        inputs: the arrays given to ``forward``.
        Y: what ``forward`` returned for them.

    Returns:
        One new float array per input, of its shape. ``"maximum"`` and ``"minimum"``
        route each element of ``dY`` to the first input equal to ``Y`` there.
    """
    return _BACKWARD[op](xp, dY, inputs, Y)
