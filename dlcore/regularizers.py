"""Weight regularizers with Keras 3 names and defaults.

A regularizer is described completely by two non-negative factors, ``l1`` and
``l2``; the engine adds ``l1 * sum(|W|) + l2 * sum(W**2)`` to the loss and its
gradient ``l1 * sign(W) + 2 * l2 * W`` to ``dW``. Calling a regularizer on a
host array computes the same penalty in float64, as a reference.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np


def _check_factor(value: Any, name: str, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(
            f"expected {name} to be a non-negative finite number, received {name}={value!r}"
        )
    if value < 0:
        raise ValueError(f"expected {name} >= 0, received {name}={value!r}")
    return float(value)


class Regularizer:
    """Base class: a weight penalty ``l1 * sum(|W|) + l2 * sum(W**2)``.

    Attributes:
        l1: the L1 factor, a Python float ``>= 0``.
        l2: the L2 factor, a Python float ``>= 0``.
    """

    l1: float = 0.0
    l2: float = 0.0

    def __call__(self, W: np.ndarray) -> float:
        """Return the penalty of a weight array, computed in float64 on the host.

        Args:
            W: a numeric array of any shape.

        Returns:
            ``l1 * sum(|W|) + l2 * sum(W**2)`` as a Python float.
        """
        w = np.asarray(W, dtype=np.float64)
        return float(self.l1 * np.sum(np.abs(w)) + self.l2 * np.sum(w * w))

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments as a JSON-serialisable dict."""
        return {"l1": self.l1, "l2": self.l2}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Regularizer:
        """Rebuild a regularizer from the dict returned by ``get_config``."""
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return (
            type(self) is type(other)
            and self.l1 == other.l1  # type: ignore[attr-defined]
            and self.l2 == other.l2  # type: ignore[attr-defined]
        )

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.l1, self.l2))


class L1(Regularizer):
    """L1 penalty ``l1 * sum(|W|)``.

    Args:
        l1: non-negative factor (``None`` means the default 0.01).
    """

    def __init__(self, l1: float = 0.01) -> None:
        self.l1 = _check_factor(l1, "l1", 0.01)
        self.l2 = 0.0

    def get_config(self) -> dict[str, Any]:
        return {"l1": self.l1}


class L2(Regularizer):
    """L2 penalty ``l2 * sum(W**2)``.

    Args:
        l2: non-negative factor (``None`` means the default 0.01).
    """

    def __init__(self, l2: float = 0.01) -> None:
        self.l1 = 0.0
        self.l2 = _check_factor(l2, "l2", 0.01)

    def get_config(self) -> dict[str, Any]:
        return {"l2": self.l2}


class L1L2(Regularizer):
    """Both penalties, ``l1 * sum(|W|) + l2 * sum(W**2)``.

    The defaults are 0 (as in Keras), so ``L1L2(l2=0.1)`` has no L1 part; the
    string ``"l1_l2"`` and the function ``l1_l2()`` use 0.01 for both.

    Args:
        l1: non-negative L1 factor (``None`` means 0).
        l2: non-negative L2 factor (``None`` means 0).
    """

    def __init__(self, l1: float = 0.0, l2: float = 0.0) -> None:
        self.l1 = _check_factor(l1, "l1", 0.0)
        self.l2 = _check_factor(l2, "l2", 0.0)


def l1(l1: float = 0.01) -> L1:
    """Return ``L1(l1)``, an L1 penalty ``l1 * sum(|W|)``."""
    return L1(l1)


def l2(l2: float = 0.01) -> L2:
    """Return ``L2(l2)``, an L2 penalty ``l2 * sum(W**2)``."""
    return L2(l2)


def l1_l2(l1: float = 0.01, l2: float = 0.01) -> L1L2:
    """Return ``L1L2(l1, l2)``, with 0.01 for both factors by default (Keras 2's helper)."""
    return L1L2(l1, l2)


_NAMES: dict[str, Any] = {"l1": l1, "l2": l2, "l1_l2": l1_l2}
_CLASSES: dict[str, type[Regularizer]] = {"L1": L1, "L2": L2, "L1L2": L1L2}


def serialize(regularizer: Regularizer) -> dict[str, Any]:
    """Return ``{"class_name": ..., "config": ...}`` for a regularizer, as Keras does."""
    if not isinstance(regularizer, Regularizer):
        raise ValueError(f"expected a dlcore regularizer, received {type(regularizer).__name__}")
    return {"class_name": type(regularizer).__name__, "config": regularizer.get_config()}


def get(identifier: str | dict[str, Any] | Regularizer | None) -> Regularizer | None:
    """Resolve a regularizer from a name, a config dict or an instance.

    Args:
        identifier: ``None`` (no regularization), ``"l1"``, ``"l2"``, ``"l1_l2"``
            (factors 0.01), a dict ``{"class_name": "L1" | "L2" | "L1L2", "config":
            {...}}`` as returned by ``serialize``, or a ``Regularizer`` instance.

    Returns:
        A ``Regularizer`` instance, or ``None``.
    """
    if identifier is None or isinstance(identifier, Regularizer):
        return identifier
    if isinstance(identifier, str):
        if identifier in _NAMES:
            return _NAMES[identifier]()
        if identifier in _CLASSES:
            return _CLASSES[identifier]()
        raise ValueError(f"unknown regularizer {identifier!r}; available: {', '.join(_NAMES)}")
    if isinstance(identifier, dict):
        name = identifier.get("class_name")
        if name in ("l1", "l2", "l1_l2"):
            name = {"l1": "L1", "l2": "L2", "l1_l2": "L1L2"}[name]
        if name not in _CLASSES:
            raise ValueError(
                f"expected a regularizer config dict whose 'class_name' is one of "
                f"{', '.join(_CLASSES)}, received class_name={name!r}"
            )
        try:
            return _CLASSES[name].from_config(identifier.get("config") or {})
        except TypeError as e:
            raise ValueError(f"invalid config for regularizer {name}: {e}") from None
    raise ValueError(
        f"expected a regularizer name (one of {', '.join(_NAMES)}), a config dict, an L1/L2/L1L2 "
        f"instance or None, received {identifier!r} of type {type(identifier).__name__}; "
        f"dlcore's engines compute penalties from l1 and l2 factors, so custom callables "
        f"are not supported"
    )
