"""The CuPy engine: the generic code on CuPy's namespace, on an NVIDIA GPU."""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Array
from .generic import ArrayAPIEngine

_INSTALL = "pip install 'dlcore[cuda12]' (CuPy for CUDA 12) on a machine with an NVIDIA GPU"


class CupyEngine(ArrayAPIEngine):
    """The generic engine on ``array_api_compat.cupy``, with dropout masks drawn
    on the GPU so that no mask crosses from the host during training."""

    name = "cupy"

    def __init__(self) -> None:
        super().__init__()
        import array_api_compat.cupy as xp
        import cupy

        self._cupy: Any = cupy
        self.xp = xp
        self._device = cupy.cuda.Device()
        self._gpu_rng = cupy.random.default_rng()

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        try:
            import array_api_compat  # noqa: F401
            import cupy
        except ImportError:
            return False, f"CuPy is not installed: {_INSTALL}"
        try:
            count = cupy.cuda.runtime.getDeviceCount()
        except Exception as error:  # CuPy raises its own CUDARuntimeError without a driver
            return False, (
                f"CuPy is installed but found no usable CUDA GPU ({error}); "
                "use the numpy engine on this machine"
            )
        if count == 0:
            return False, "CuPy is installed but this machine has no CUDA GPU; use the numpy engine"
        name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
        return True, name.decode() if isinstance(name, bytes) else str(name)

    @property
    def device(self) -> str:
        props = self._cupy.cuda.runtime.getDeviceProperties(self._device.id)
        name = props["name"]
        return name.decode() if isinstance(name, bytes) else str(name)

    def asarray(self, data: np.ndarray, *, dtype: str) -> Array:
        return self._cupy.asarray(np.ascontiguousarray(data, dtype=dtype))

    def to_numpy(self, A: Array) -> np.ndarray:
        return self._cupy.asnumpy(A)

    def synchronize(self) -> None:
        self._device.synchronize()

    def seed(self, seed: int) -> None:
        super().seed(seed)
        self._gpu_rng = self._cupy.random.default_rng(seed)

    def dropout(self, X: Array, *, rate: float) -> tuple[Array, Array]:
        keep = self._gpu_rng.random(X.shape, dtype=X.dtype) >= rate
        mask = keep.astype(X.dtype) * (1.0 / (1.0 - rate))
        return X * mask, mask
