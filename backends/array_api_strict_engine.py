"""A test engine: the generic code on ``array_api_strict``, on a simulated device.

It proves that the generic engine uses nothing beyond the array API standard,
which is what CuPy implements, and, because its arrays live on the simulated
non-CPU device ``Device("device1")``, that no host NumPy array is ever mixed
with engine arrays: such a mix raises here as it would fail on a GPU.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Array
from .generic import ArrayAPIEngine


class ArrayAPIStrictEngine(ArrayAPIEngine):
    """The generic engine on ``array_api_strict`` arrays on ``Device("device1")``."""

    name = "array_api_strict"

    def __init__(self) -> None:
        super().__init__()
        import array_api_strict

        self.xp = array_api_strict
        self._device = array_api_strict.Device("device1")
        self._host: Any = array_api_strict.Device("CPU_DEVICE")

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        try:
            import array_api_strict
        except ImportError:
            return False, "array_api_strict is not installed: pip install array-api-strict"
        return True, f"array_api_strict {array_api_strict.__version__}, simulated device1"

    @property
    def device(self) -> str:
        return "array_api_strict device1 (simulated)"

    def asarray(self, data: np.ndarray, *, dtype: str) -> Array:
        host = np.ascontiguousarray(data, dtype=dtype)
        return self.xp.asarray(host, device=self._device, copy=True)

    def to_numpy(self, A: Array) -> np.ndarray:
        return np.array(np.from_dlpack(A.to_device(self._host)), copy=True)

    def synchronize(self) -> None:
        return None
