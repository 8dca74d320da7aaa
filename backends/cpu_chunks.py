"""Elementwise passes over flat buffers in cache-sized chunks, on every core.

NumPy's elementwise functions run on one core and stream their whole operands
through memory once per function. An optimizer step is a dozen such functions
over buffers as large as the model, so done naively it reads and writes each
buffer a dozen times from main memory, on one core. ``ChunkRunner`` runs the
whole sequence of functions on one chunk that stays in the core's cache before
moving to the next chunk, and gives each core its own contiguous share of the
chunks (NumPy releases the GIL inside its loops, so the threads run in parallel).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

# One chunk of each operand (an optimizer touches up to six) and the scratch arrays
# stay within a 2 MiB L2 cache at 128 KiB per array.
CHUNK_BYTES = 128 * 1024
# Below this many elements per buffer one core is faster than handing work to threads:
# for NumPy's functions, and for a compiled loop (``split``), which is faster per element
# (measured on 2 cores: Adam over 600k float32 elements takes as long either way).
PARALLEL_MIN_ELEMENTS = 1 << 17
SPLIT_MIN_ELEMENTS = 1 << 20


def cpu_threads() -> int:
    """The number of CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class ChunkRunner:
    """Runs ``kernel`` over aligned chunks of flat arrays, one share of chunks per thread.

    Args:
        threads: worker threads; by default one per core this process may use.
    """

    def __init__(self, threads: int | None = None) -> None:
        self.threads = max(1, threads or cpu_threads())
        self._pool: ThreadPoolExecutor | None = None
        self._scratch: dict[tuple[int, str, int], list[np.ndarray]] = {}

    def run(
        self,
        kernel: Callable[..., None],
        arrays: Sequence[np.ndarray],
        *,
        scratch: int = 0,
        args: tuple[Any, ...] = (),
    ) -> None:
        """Call ``kernel(*chunks, *scratch_arrays, *args)`` over every chunk of ``arrays``.

        Args:
            kernel: works in place on equal-length 1-D chunks of ``arrays`` and may
                use ``scratch`` arrays of the same length and dtype as temporaries.
            arrays: 1-D arrays of one length ``P`` and one float dtype.
            scratch: the number of temporaries the kernel needs; they are allocated
                once per thread and reused by every later call.
            args: passed to every call after the chunks and the scratch arrays.
        """
        self._run(kernel, arrays, max(1, CHUNK_BYTES // arrays[0].dtype.itemsize), scratch, args)

    def split(
        self, kernel: Callable[..., None], arrays: Sequence[np.ndarray], args: tuple[Any, ...]
    ) -> None:
        """Call ``kernel(*parts, *args)`` once per thread on its contiguous part of ``arrays``
        (1-D, one length); for a compiled loop that releases the GIL."""
        if arrays[0].shape[0] < SPLIT_MIN_ELEMENTS:
            kernel(*arrays, *args)  # one thread: the common case of small models, kept short
            return
        self._run(kernel, arrays, None, 0, args)

    def _run(
        self,
        kernel: Callable[..., None],
        arrays: Sequence[np.ndarray],
        chunk_elements: int | None,
        scratch: int,
        args: tuple[Any, ...],
    ) -> None:
        size = int(arrays[0].shape[0])
        dtype = arrays[0].dtype
        chunk = chunk_elements or -(-size // self.threads)
        workers = 1 if size < PARALLEL_MIN_ELEMENTS else min(self.threads, -(-size // chunk))
        chunk = max(1, chunk)
        per_worker = -(-size // workers)
        per_worker = -(-per_worker // chunk) * chunk  # shares start on chunk boundaries
        spans = [(w * per_worker, min(size, (w + 1) * per_worker)) for w in range(workers)]
        spans = [(low, high) for low, high in spans if low < high]
        if not spans:
            return

        def work(worker: int, low: int, high: int) -> None:
            if chunk_elements is None:
                kernel(*[array[low:high] for array in arrays], *args)
                return
            temporaries = self._scratch_for(worker, dtype, chunk, scratch)
            for start in range(low, high, chunk):
                stop = min(start + chunk, high)
                count = stop - start
                kernel(
                    *[array[start:stop] for array in arrays],
                    *[temporary[:count] for temporary in temporaries],
                    *args,
                )

        if len(spans) == 1:
            work(0, *spans[0])
            return
        pool = self._thread_pool()
        futures = [pool.submit(work, w, low, high) for w, (low, high) in enumerate(spans[1:], 1)]
        work(0, *spans[0])
        for future in futures:
            future.result()

    def _scratch_for(self, worker: int, dtype: np.dtype, chunk: int, count: int) -> list:
        key = (worker, dtype.name, count)
        found = self._scratch.get(key)
        if found is None:
            found = self._scratch[key] = [np.empty(chunk, dtype=dtype) for _ in range(count)]
        return found

    def _thread_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="dlcore-cpu")
        return self._pool


def adam_chunk(
    params: np.ndarray,
    grads: np.ndarray,
    m: np.ndarray,
    v: np.ndarray,
    *rest: Any,
) -> None:
    """One Adam step on chunks, in the operation order of ``xp_optimizers.adam``.

    ``rest`` is ``[v_max,] t1, t2, alpha, one_minus_beta_1, one_minus_beta_2, epsilon``:
    the AMSGrad maximum when present, two scratch chunks, then the host scalars.
    """
    *v_max, t1, t2, alpha, one_minus_beta_1, one_minus_beta_2, epsilon = rest
    np.subtract(grads, m, out=t1)
    t1 *= one_minus_beta_1
    m += t1
    np.multiply(grads, grads, out=t1)
    t1 -= v
    t1 *= one_minus_beta_2
    v += t1
    if v_max:
        np.maximum(v_max[0], v, out=v_max[0])
        v = v_max[0]
    np.sqrt(v, out=t1)
    t1 += epsilon
    np.multiply(m, alpha, out=t2)
    t2 /= t1
    params -= t2
