"""The CuPy engine: the generic code on CuPy's namespace, on an NVIDIA GPU.

Its work runs on one non-default ``cupy.cuda.Stream`` per device, ``engine.stream``,
shared by every engine object on that device. CuPy's current stream is per thread:
the engine makes its stream current on the thread that creates it, so every
operation called from that thread (and any CuPy code the user runs there) goes to
it. Code that calls the engine from another thread, or changes the current stream
around it, wraps the calls in ``with engine.stream:``. Host transfers (``asarray``,
``to_numpy``) are queued on the stream and ``to_numpy`` waits for it. Numba kernels
can join the stream through ``numba.cuda.external_stream(engine.stream.ptr)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Array
from .generic import ArrayAPIEngine

_INSTALL = "pip install 'dlcore[cuda12]' (CuPy for CUDA 12) on a machine with an NVIDIA GPU"

# The engines' streams, by device id.
_streams: dict[int, Any] = {}


def device_stream(cupy: Any, device_id: int) -> Any:
    """The engines' ``cupy.cuda.Stream`` of device ``device_id`` (the current device),
    created at the first call; blocking, so the legacy default stream still orders with it."""
    stream = _streams.get(device_id)
    if stream is None:
        stream = _streams[device_id] = cupy.cuda.Stream(non_blocking=False)
    return stream


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
        self.stream = device_stream(cupy, self._device.id)
        self.stream.use()  # this thread's current stream: every CuPy call below goes to it
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

    def supports_dtype(self, dtype: str) -> bool:
        # float16 products run on cuBLAS's tensor cores; CuPy has no bfloat16 dtype
        return dtype in ("float16", "float32", "float64")

    def set_matmul_precision(self, precision: str) -> None:
        from cupy._core import _routines_linalg as linalg

        compute_type = (
            linalg.COMPUTE_TYPE_TF32 if precision == "high" else linalg.COMPUTE_TYPE_DEFAULT
        )
        linalg.set_compute_type(np.float32, compute_type)

    def capture_step(self, run: Any) -> None:
        # Not yet: a step's CuPy temporaries come from CuPy's memory pool, which frees a
        # block when its array dies and hands it to the next request, so a graph would
        # write memory the pool has since given to other arrays unless the capture ran
        # with a graph-private pool (``cupy.cuda.graph`` and ``MemoryAsyncPool``), and
        # cuBLAS needs its workspace set for capture. Left for a session with a GPU.
        return None

    @property
    def device(self) -> str:
        props = self._cupy.cuda.runtime.getDeviceProperties(self._device.id)
        name = props["name"]
        return name.decode() if isinstance(name, bytes) else str(name)

    def asarray(self, data: np.ndarray, *, dtype: str) -> Array:
        with self.stream:
            return self._cupy.asarray(np.ascontiguousarray(data, dtype=dtype))

    def to_numpy(self, A: Array) -> np.ndarray:
        host = self._cupy.asnumpy(A, stream=self.stream)
        self.stream.synchronize()
        return host

    def synchronize(self) -> None:
        self.stream.synchronize()

    def seed(self, seed: int) -> None:
        super().seed(seed)
        self._gpu_rng = self._cupy.random.default_rng(seed)

    def dropout(self, X: Array, *, rate: float) -> tuple[Array, Array]:
        keep = self._gpu_rng.random(X.shape, dtype=X.dtype) >= rate
        mask = keep.astype(X.dtype) * (1.0 / (1.0 - rate))
        return X * mask, mask
