"""Layers of a dense network, called on symbolic tensors or stacked in a ``Sequential``.

``base`` holds the ``Layer`` class and the graph's tensors and nodes, ``core``
the Input, Dense, Activation, Dropout and PReLU layers, ``merging`` the layers
that join several tensors.
"""

from .base import CallState, KerasTensor, Layer, Node, Variable, assign_weights
from .core import Activation, Dense, Dropout, Input, InputLayer, PReLU
from .merging import Add, Average, Concatenate, Maximum, Merge, Minimum, Multiply, Subtract

LAYER_CLASSES: dict[str, type[Layer]] = {
    cls.__name__: cls
    for cls in (
        InputLayer,
        Dense,
        Activation,
        Dropout,
        PReLU,
        Add,
        Subtract,
        Multiply,
        Average,
        Maximum,
        Minimum,
        Concatenate,
    )
}

__all__ = [
    "LAYER_CLASSES",
    "Activation",
    "Add",
    "Average",
    "CallState",
    "Concatenate",
    "Dense",
    "Dropout",
    "Input",
    "InputLayer",
    "KerasTensor",
    "Layer",
    "Maximum",
    "Merge",
    "Minimum",
    "Multiply",
    "Node",
    "PReLU",
    "Subtract",
    "Variable",
    "assign_weights",
]
