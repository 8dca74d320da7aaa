"""Layers of a dense network, called on symbolic tensors or stacked in a ``Sequential``.

``base`` holds the ``Layer`` class and the graph's tensors and nodes, ``core``
the Input, Dense, Activation, Dropout and PReLU layers, ``merging`` the layers
that join several tensors.
"""

from .activation_layers import ELU, LeakyReLU, ReLU, Softmax
from .base import CallState, KerasTensor, Layer, Node, Variable, assign_weights
from .core import Activation, Dense, Dropout, Input, InputLayer, PReLU
from .merging import Add, Average, Concatenate, Maximum, Merge, Minimum, Multiply, Subtract
from .noise import AlphaDropout, GaussianDropout, GaussianNoise
from .normalization import BatchNormalization, LayerNormalization, Normalization
from .reshaping import Flatten, Reshape

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
        BatchNormalization,
        LayerNormalization,
        Normalization,
        ReLU,
        LeakyReLU,
        Softmax,
        ELU,
        GaussianNoise,
        GaussianDropout,
        AlphaDropout,
        Flatten,
        Reshape,
    )
}

__all__ = [
    "LAYER_CLASSES",
    "Activation",
    "Add",
    "AlphaDropout",
    "Average",
    "BatchNormalization",
    "CallState",
    "Concatenate",
    "Dense",
    "Dropout",
    "ELU",
    "Flatten",
    "GaussianDropout",
    "GaussianNoise",
    "Input",
    "InputLayer",
    "KerasTensor",
    "Layer",
    "LeakyReLU",
    "LayerNormalization",
    "Maximum",
    "Merge",
    "Minimum",
    "Multiply",
    "Node",
    "Normalization",
    "PReLU",
    "ReLU",
    "Reshape",
    "Softmax",
    "Subtract",
    "Variable",
    "assign_weights",
]
