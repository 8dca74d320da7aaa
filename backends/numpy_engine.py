"""The NumPy engine: the reference operations on the host CPU."""

from __future__ import annotations

import os

import numpy as np

from .base import Array
from .generic import ArrayAPIEngine


class NumpyEngine(ArrayAPIEngine):
    """Runs on the CPU with NumPy (whose main namespace follows the array API).

    Overrides the dense backward pass to write ``dW`` and ``db`` straight into
    the model's gradient buffer instead of through temporaries.
    """

    name = "numpy"

    def __init__(self) -> None:
        super().__init__()
        self.xp = np
        self._device = "cpu"

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        return True, f"CPU ({os.cpu_count()} cores), NumPy {np.__version__}"

    @property
    def device(self) -> str:
        return "cpu"

    def asarray(self, data: np.ndarray, *, dtype: str) -> Array:
        return np.asarray(data, dtype=dtype)

    def to_numpy(self, A: Array) -> np.ndarray:
        return np.array(A, copy=True)

    def synchronize(self) -> None:
        return None

    def dense_backward(
        self,
        dY: Array,
        X: Array,
        W: Array,
        Z: Array,
        Y: Array,
        activation: str,
        *,
        dW: Array,
        db: Array | None,
        need_dX: bool = True,
    ) -> Array | None:
        dZ = dY if activation == "linear" else self.backprop_activation(activation, dY, Z, Y)
        np.matmul(X.T, dZ, out=dW)
        if db is not None:
            np.sum(dZ, axis=0, out=db)
        return dZ @ W.T if need_dX else None
