"""dlcore: Keras-style dense neural networks on swappable array engines.

Build a ``Sequential`` of ``Dense`` layers, ``compile``, ``fit``, ``evaluate``,
``predict``, ``save``; pick the engine that runs the math with
``DLCORE_BACKEND``, ``dlcore.set_backend(name)`` or
``with dlcore.use_backend(name):``. Importing dlcore imports neither CuPy nor
Numba: engines are imported when first selected.
"""

from dlcore import (
    activations,
    backends,
    callbacks,
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

__version__ = "0.1.0"

__all__ = [
    "activations",
    "backend",
    "backends",
    "callbacks",
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
