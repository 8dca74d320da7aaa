"""Optimizers with Keras 3's update rules, defaults and configs.

``base.Optimizer`` holds what every optimizer shares (learning rate, step count,
state slots and their saving, restoring and moving, argument checks); each
optimizer is one module here with its class, the name of its engine rule and its
host-side scalars. A step is one ``Engine.optimizer_step`` call over the model's
flat parameter buffer (one per range of it when some layers are frozen).
``get`` builds an optimizer from a name, a config or an instance, through the
registry ``_CLASSES``.

Example:

>>> from dlcore.optimizers import SGD
>>> opt = SGD(learning_rate=0.1, momentum=0.9, nesterov=True)
>>> opt.get_config()
{'name': 'SGD', 'learning_rate': 0.1, 'momentum': 0.9, 'nesterov': True}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import schedules
from .adadelta import Adadelta
from .adagrad import Adagrad
from .adam import Adam
from .adamax import Adamax
from .adamw import AdamW
from .base import Optimizer
from .ftrl import Ftrl
from .lion import Lion
from .loss_scale import LossScaleOptimizer
from .nadam import Nadam
from .rmsprop import RMSprop
from .sgd import SGD

__all__ = [
    "SGD",
    "Adadelta",
    "Adagrad",
    "Adam",
    "AdamW",
    "Adamax",
    "Ftrl",
    "Lion",
    "LossScaleOptimizer",
    "Nadam",
    "Optimizer",
    "RMSprop",
    "get",
    "schedules",
]

# The registry: each optimizer by its lowercased class name.
_CLASSES: dict[str, type[Optimizer]] = {
    cls.__name__.lower(): cls
    for cls in (SGD, Adam, RMSprop, Adagrad, Adamax, Nadam, AdamW, Adadelta, Lion, Ftrl)
}
# Optimizers that wrap another: made from a config dict or an instance, not a bare name.
_WRAPPERS: dict[str, type[Optimizer]] = {"lossscaleoptimizer": LossScaleOptimizer}


def _by_name(name: Any) -> type[Optimizer]:
    cls = _CLASSES.get(name.lower()) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"unknown optimizer {name!r}; available: {', '.join(sorted(_CLASSES))}")
    return cls


def get(identifier: Any) -> Optimizer:
    """An optimizer from an instance, a name or a config dict.

    Args:
        identifier: an ``Optimizer`` (returned as is); a name, case-insensitive
            (``"sgd"``, ``"adam"``, ``"rmsprop"``, ``"adagrad"``, ``"adamax"``,
            ``"nadam"``, ``"adamw"``, ``"adadelta"``, ``"lion"``, ``"ftrl"``), giving the
            optimizer with Keras's defaults; or a dict
            ``{"class_name": name, "config": get_config() dict}`` (``"name"`` is
            accepted for ``"class_name"``; ``"LossScaleOptimizer"`` too).

    Returns:
        An ``Optimizer``.

    Raises:
        ValueError: for an unknown name, listing the available ones.
        TypeError: for anything else.
    """
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str):
        if identifier.lower() in _WRAPPERS:
            raise ValueError(
                f"{identifier!r} wraps another optimizer: pass an instance, e.g. "
                "LossScaleOptimizer(dlcore.optimizers.Adam())"
            )
        # every registered subclass has defaults for all its arguments; the base has none
        return _by_name(identifier)()  # type: ignore[call-arg]
    if isinstance(identifier, Mapping):
        name = identifier.get("class_name", identifier.get("name"))
        if name is None:
            raise ValueError(
                "an optimizer config expected a 'class_name' entry, e.g. "
                f"{{'class_name': 'Adam', 'config': {{'learning_rate': 0.001}}}}, "
                f"received keys {sorted(identifier)}"
            )
        wrapper = _WRAPPERS.get(name.lower()) if isinstance(name, str) else None
        return (wrapper or _by_name(name)).from_config(identifier.get("config", {}))
    raise TypeError(
        "expected an optimizer name (e.g. 'adam'), an Optimizer instance or a config dict, "
        f"received {identifier!r}"
    )
