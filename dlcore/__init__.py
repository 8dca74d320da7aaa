"""dlcore: Keras-style dense neural networks on swappable array engines.

Build a ``Sequential`` of layers or a functional ``Model(inputs, outputs)``,
``compile``, ``fit``, ``evaluate``, ``predict``, ``save``; pick the engine that runs the math with
``DLCORE_BACKEND``, ``dlcore.set_backend(name)`` or
``with dlcore.use_backend(name):``. Importing dlcore imports neither CuPy nor
Numba: engines are imported when first selected.
"""

from dlcore import (
    activations,
    backends,
    callbacks,
    custom,
    initializers,
    layers,
    losses,
    metrics,
    models,
    optimizers,
    regularizers,
    utils,
)
from dlcore.config import (
    backend,
    epsilon,
    floatx,
    get_backend,
    set_backend,
    set_floatx,
    set_random_seed,
    use_backend,
)
from dlcore.layers import Input
from dlcore.models import Model, Sequential
from dlcore.saving import ModelFileError

__version__ = "0.1.0"

__all__ = [
    "Input",
    "Model",
    "ModelFileError",
    "Sequential",
    "activations",
    "backend",
    "backends",
    "callbacks",
    "custom",
    "epsilon",
    "floatx",
    "get_backend",
    "initializers",
    "layers",
    "losses",
    "metrics",
    "models",
    "optimizers",
    "regularizers",
    "set_backend",
    "set_floatx",
    "set_random_seed",
    "use_backend",
    "utils",
]
