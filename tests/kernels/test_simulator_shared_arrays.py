"""The CUDA simulator gives every thread of a block the same shared array (see common.py)."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest
from dlcore.kernels import common  # noqa: F401  (importing it locks the simulator's arrays)
from numba import config

pytestmark = pytest.mark.skipif(not config.ENABLE_CUDASIM, reason="a real GPU is in use")


def _ids_seen_by_threads(array_function, threads: int = 32) -> set[int]:
    from numba.cuda.simulator import kernelapi

    shared = kernelapi.FakeCUDAShared(0)
    start = threading.Barrier(threads)
    ids: list[int] = []

    def thread() -> None:
        start.wait()
        ids.append(id(array_function(shared, (8,), np.float64)))

    workers = [threading.Thread(target=thread) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return set(ids)


def test_threads_of_a_block_share_one_array():
    from numba.cuda.simulator import kernelapi

    saved = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        for _ in range(100):  # the unlocked simulator fails about one trial in 20
            assert len(_ids_seen_by_threads(kernelapi.FakeCUDAShared.array)) == 1
    finally:
        sys.setswitchinterval(saved)
