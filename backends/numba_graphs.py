"""The numba engine's training step captured as a CUDA graph (``NumbaEngine.capture_step``).

``capture`` runs the trainer's step function once with its launches captured on the
engine's stream (``kernels/graphs.py``: the driver's stream capture on a GPU, the
launch recorder in tests), checks that the step did nothing a graph cannot replay,
and returns a ``ReplayedStep``: each call launches the whole graph with one driver
call, then copies the step's scalar results into fresh slots.

What makes a replay correct:

- **The same memory.** A graph holds raw device pointers. The replayed step keeps
  every array the captured launches took (workspaces, weights, gradients, scratch
  buffers, the scalar buffer's slots), and the arrays ``NumbaEngine._recycled`` handed
  out during the capture: holding those views keeps their memory off the engine's
  free list, so nothing else writes there between replays and nothing frees it.
- **No allocation, no transfer.** The step must have reached its steady state: it
  may not allocate device memory (an engine allocation, a new scalar buffer, a scratch
  buffer allocated or grown, the dropout generator created) nor pass host memory to a
  kernel. On a GPU the driver also fails the capture of any call it cannot capture
  (thread-local mode); numba-cuda's deferred frees are held off while capturing.
- **Fresh results.** The graph writes the step's losses and counts into the same
  scalar slots at every replay; one ``gather_slots`` launch copies them into new
  slots, so the epoch's totals see every step.

A refused capture raises ``StepCaptureError`` with the reason; nothing of the step
has run then (a capture runs nothing), and the caller runs it plainly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
from dlcore.kernels import common, graphs

from .base import Array, StepCaptureError
from .numba_engine import DeviceScalar, NumbaEngine


class CaptureLog:
    """What the engine reports while a step is being captured (``NumbaEngine._step_capture``)."""

    def __init__(self) -> None:
        self.recycled: list[Array] = []
        self.allocations: list[str] = []

    def recycled_view(self, view: Array) -> None:
        """``_recycled`` handed out ``view``: the graph keeps it (and so its memory)."""
        self.recycled.append(view)

    def allocation(self, shape: tuple[int, ...], dtype: Any) -> None:
        """The engine allocated device memory: the capture is refused."""
        self.allocations.append(f"{tuple(shape)} {np.dtype(dtype).name}")


class _State(NamedTuple):
    """What a captured step must leave as it found it."""

    scalar_buffer: Any
    next_slot: int
    scratch: dict[Any, int]  # id of each scratch buffer by key
    generator: Any


def _state(engine: NumbaEngine) -> _State:
    return _State(
        engine._scalar_buffer,
        engine._next_slot,
        {key: id(buffer) for key, buffer in common._scratch.items()},
        engine._generator,
    )


def capture(engine: NumbaEngine, run: Callable[[], Sequence[Array]]) -> ReplayedStep | None:
    """``run()``'s launches captured as a graph, or ``None`` where graphs cannot be captured.

    Raises:
        StepCaptureError: ``run`` raised, allocated, read back, passed host memory or
            returned something other than scalars of this capture; nothing has run.
    """
    capturer = graphs.capture()
    if capturer is None:
        return None
    stream = engine.stream
    launches: list[graphs.CapturedLaunch] = []
    log = CaptureLog()
    before = _state(engine)
    results: list[Array] | None = None
    graph = error = None
    with engine._cuda.defer_cleanup():
        try:
            capturer.begin(stream, launches)
        except Exception as raised:
            raise StepCaptureError(f"the capture could not begin ({raised})") from raised
        engine._step_capture = log
        try:
            results = list(run())
        except Exception as raised:
            error = raised
        finally:
            engine._step_capture = None
            try:
                graph = capturer.end(stream)
            except Exception as raised:
                error = error or raised
    reason = _refusal(error, log, before, _state(engine), results, launches)
    if reason is not None:
        capturer.discard(graph)
        # The error's traceback would keep this frame, and through it the step's arrays,
        # alive as long as the caller keeps the error: let the memory go back now.
        launches.clear()
        log.recycled.clear()
        results = error = None
        raise StepCaptureError(reason)
    assert results is not None  # no refusal: run returned
    try:
        executable = capturer.instantiate(graph)
    except Exception as raised:
        raise StepCaptureError(f"the graph could not be instantiated ({raised})") from raised
    return ReplayedStep(engine, capturer, executable, launches, log.recycled, results)


def _refusal(
    error: BaseException | None,
    log: CaptureLog,
    before: _State,
    after: _State,
    results: list[Array] | None,
    launches: list[graphs.CapturedLaunch],
) -> str | None:
    """Why the capture cannot be replayed, or ``None``."""
    if error is not None:
        return f"the step failed while captured ({type(error).__name__}: {error})"
    if log.allocations:
        return f"the step allocated device memory ({', '.join(log.allocations[:3])})"
    if after.scalar_buffer is not before.scalar_buffer:
        return "the step started a new scalar buffer"
    if after.scratch != before.scratch:
        return "a kernel's scratch buffer was allocated or grown"
    if after.generator is not before.generator:
        return "the dropout generator was created"
    if not launches:
        return "the step launched no kernel"
    if any(isinstance(arg, np.ndarray) for launch in launches for arg in _flat(launch.args)):
        return "a kernel was given host memory"
    if results is None or not all(_captured_scalar(value, before) for value in results):
        return "the step returned values that are not scalars it computed"
    return None


def _captured_scalar(value: Any, before: _State) -> bool:
    """Whether ``value`` is a scalar slot taken during the capture."""
    return (
        isinstance(value, DeviceScalar)
        and value.buffer is before.scalar_buffer
        and value.slot >= before.next_slot
    )


def _flat(args: Sequence[Any]) -> list[Any]:
    """The arguments of a launch with tuples (of arrays) opened, recursively."""
    flat: list[Any] = []
    for arg in args:
        flat.extend(_flat(arg) if isinstance(arg, tuple) else [arg])
    return flat


class ReplayedStep:
    """A captured training step: each call launches its graph and returns fresh scalars.

    It holds everything the graph's pointers refer to until ``release``: the captured
    launches' arguments, the recycled arrays of the capture and its scalar results.
    """

    def __init__(
        self,
        engine: NumbaEngine,
        capturer: Any,
        executable: Any,
        launches: list[graphs.CapturedLaunch],
        recycled: list[Array],
        results: list[DeviceScalar],
    ) -> None:
        self._engine = engine
        self._capturer = capturer
        self._executable = executable
        self._pinned: tuple[Any, ...] = (launches, recycled, results)
        self._source = results[0].buffer if results else None
        self._slots: Any = graphs.int64_slots([r.slot for r in results]) if results else None
        self._dtypes = [value.dtype for value in results]

    @property
    def pinned(self) -> tuple[Any, ...]:
        """``(captured launches, recycled arrays, scalar results)`` held for the graph."""
        return self._pinned

    @property
    def launches(self) -> int:
        """The number of kernel launches the graph replays."""
        return len(self._pinned[0])

    def __call__(self) -> list[DeviceScalar]:
        """Run the step once more; its scalar results, in fresh slots."""
        if self._executable is None:
            raise RuntimeError("this captured step was released")
        self._capturer.launch(self._executable, self._engine.stream)
        return self._fresh_results()

    def _fresh_results(self) -> list[DeviceScalar]:
        """The captured slots copied into new ones, one launch per run of new slots that
        are consecutive in one buffer (one run unless a new buffer starts among them)."""
        fresh = [self._engine._new_scalar(dtype)[0] for dtype in self._dtypes]
        start = 0
        for stop in range(1, len(fresh) + 1):
            if stop == len(fresh) or not _follows(fresh[stop - 1], fresh[stop]):
                first, last = fresh[start], fresh[stop - 1]
                graphs.gather_slots(
                    self._source,
                    self._slots[start:stop],
                    first.buffer[first.slot : last.slot + 1],
                )
                start = stop
        return fresh

    def release(self) -> None:
        """Wait for the replays queued, destroy the graph and let its memory go."""
        if self._executable is None:
            return
        self._engine.synchronize()
        self._capturer.destroy(self._executable)
        self._executable = None
        self._pinned = ()


def _follows(previous: DeviceScalar, value: DeviceScalar) -> bool:
    return value.buffer is previous.buffer and value.slot == previous.slot + 1
