"""Capturing a sequence of launches on the library's stream as a CUDA graph, and replaying it.

A capture begins on ``common.stream()``, lets the caller queue its launches (which
the driver records instead of running), ends with the graph of those launches,
instantiates it once and launches the whole graph with one driver call per replay.
Two implementations share one interface (``StepCapture``):

- ``DriverCapture``, on a GPU: the driver's stream capture in thread-local mode
  (``cuStreamBeginCapture``, ``cuStreamEndCapture``, ``cuGraphInstantiate``,
  ``cuGraphLaunch``) through numba-cuda's wrapped ``cuda.bindings.driver``. Thread-local
  mode makes the calls that cannot be captured (``cuMemAlloc``, a synchronizing copy,
  ``cuStreamSynchronize``) fail in the capturing thread, so a step that allocates or
  reads a value back fails its capture instead of being captured wrong; other threads
  are not affected (global mode would fail theirs too, relaxed mode would let an
  allocation through). Launches made through numba-cuda's dispatcher and through
  ``common.PreparedLaunches`` both end in a launch on the stream, which is captured.
- ``RecordingCapture``, for tests in Numba's CUDA simulator (which has no graphs): it
  takes each launch made through ``common.launch`` during the capture without running
  it, as the driver does, and a replay makes the same launches with the same arguments,
  as a graph does. Only ``use_capture`` installs it.

Both record the arguments of every launch they see (``CapturedLaunch``), so that the
caller can keep every array the graph reads or writes allocated while it lives: a
graph holds raw device pointers, not references.

``gather_slots`` is the kernel that copies a captured step's scalar results out of the
slots the graph writes at each replay into fresh ones.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, Protocol

import numpy as np
from numba import config as numba_config
from numba import cuda

from . import common
from .common import PtxVariant, array, grid_for, launch


class CapturedLaunch(NamedTuple):
    """One launch made while a capture was in progress."""

    kernel: Any
    config: tuple[Any, Any]
    args: tuple[Any, ...]


class StepCapture(Protocol):
    """How a sequence of launches on a stream is captured and replayed."""

    def begin(self, stream: Any, launches: list[CapturedLaunch]) -> None:
        """Start capturing ``stream``; every launch through ``common.launch`` until ``end``
        is appended to ``launches``."""

    def end(self, stream: Any) -> Any:
        """Stop capturing ``stream`` and return the graph (raises if the capture failed)."""

    def instantiate(self, graph: Any) -> Any:
        """The executable form of ``graph`` (which is released)."""

    def launch(self, executable: Any, stream: Any) -> None:
        """Queue one replay of ``executable`` on ``stream``."""

    def destroy(self, executable: Any) -> None:
        """Release ``executable`` (the caller has synchronized the stream)."""

    def discard(self, graph: Any) -> None:
        """Release a graph ``end`` returned that will not be instantiated (``None``: none)."""


class _LaunchRecorder:
    """The ``common.observe_launches`` observer of a capture: records each launch and says
    whether it was taken (``takes``) or is to be made on the capturing stream."""

    def __init__(self, launches: list[CapturedLaunch], takes: bool) -> None:
        self._launches = launches
        self._takes = takes

    def __call__(self, kernel: Any, config: tuple[Any, Any], args: tuple[Any, ...]) -> bool:
        self._launches.append(CapturedLaunch(kernel, config, args))
        return self._takes


class DriverCapture:
    """Stream capture by the CUDA driver (see the module docstring); a GPU only.

    Args:
        driver: numba-cuda's ``numba.cuda.cudadrv.driver.driver``, whose attributes are
            ``cuda.bindings.driver``'s functions returning their results and raising
            ``CudaAPIError`` for an error code.
        mode: the ``CUstreamCaptureMode``, thread-local.
    """

    def __init__(self, driver: Any, mode: Any) -> None:
        self._driver = driver
        self._mode = mode
        self._previous: common.LaunchObserver | None = None

    def begin(self, stream: Any, launches: list[CapturedLaunch]) -> None:
        """Record the launches (they are made, and captured by the driver) and begin."""
        self._driver.cuStreamBeginCapture(stream.handle, self._mode)
        self._previous = common.observe_launches(_LaunchRecorder(launches, takes=False))

    def end(self, stream: Any) -> Any:
        """End the capture: the graph, or ``CudaAPIError`` if the capture was invalidated."""
        common.observe_launches(self._previous)
        return self._driver.cuStreamEndCapture(stream.handle)

    def instantiate(self, graph: Any) -> Any:
        """Instantiate ``graph`` and destroy it (the executable graph is independent of it)."""
        try:
            return self._driver.cuGraphInstantiate(graph, 0)
        finally:
            self._driver.cuGraphDestroy(graph)

    def launch(self, executable: Any, stream: Any) -> None:
        """``cuGraphLaunch``: one driver call for the whole step."""
        self._driver.cuGraphLaunch(executable, stream.handle)

    def destroy(self, executable: Any) -> None:
        """``cuGraphExecDestroy``."""
        self._driver.cuGraphExecDestroy(executable)

    def discard(self, graph: Any) -> None:
        """Destroy a graph that will not be instantiated."""
        if graph is not None:
            self._driver.cuGraphDestroy(graph)


class RecordingCapture:
    """A stand-in for the driver's capture where there are no graphs (the simulator).

    ``begin`` takes every launch made through ``common.launch`` until ``end`` without
    making it; the "graph" is the list of launches, and ``launch`` makes them again, in
    order, with the same arguments (the same array objects, the same scalars): what a
    graph replays. Operations that are not kernel launches through ``common.launch``
    (a host transfer, an allocation) are not taken: they run at capture time, and the
    caller's checks must refuse a step that makes them, as the driver would.
    """

    def __init__(self) -> None:
        self._previous: common.LaunchObserver | None = None

    def begin(self, stream: Any, launches: list[CapturedLaunch]) -> None:
        """Take the launches from now on."""
        self._previous = common.observe_launches(_LaunchRecorder(launches, takes=True))
        self._launches = launches

    def end(self, stream: Any) -> Any:
        """The launches taken, as the graph."""
        common.observe_launches(self._previous)
        return tuple(self._launches)

    def instantiate(self, graph: Any) -> Any:
        """The launches themselves."""
        return graph

    def launch(self, executable: Any, stream: Any) -> None:
        """Make the recorded launches again, through ``common.launch`` (on ``stream``, the
        library's stream: no capture is in progress during a replay)."""
        with warnings.catch_warnings():
            # the simulator's uint64 arithmetic of the dropout generator reports its
            # intended wrap-around; dropout.py's launcher silences it the same way
            warnings.filterwarnings("ignore", "overflow encountered", RuntimeWarning)
            for kernel, config, args in executable:
                launch(kernel, config, *args)

    def destroy(self, executable: Any) -> None:
        """Nothing to release."""

    def discard(self, graph: Any) -> None:
        """Nothing to release."""


# None: not decided yet; a list of one factory (or None: no graphs here) once decided.
_factory: list[Callable[[], Any] | None] = []


def capture() -> Any:
    """A new ``StepCapture`` for this process: ``DriverCapture`` on a GPU, whatever
    ``use_capture`` installed, or ``None`` where graphs cannot be captured (the simulator,
    unless a test installed ``RecordingCapture``; a numba-cuda without the driver calls)."""
    if not _factory:
        _factory.append(None if numba_config.ENABLE_CUDASIM else _driver_capture_factory())
    factory = _factory[0]
    return None if factory is None else factory()


def _driver_capture_factory() -> Callable[[], Any] | None:
    try:
        from cuda.bindings import driver as binding
        from numba.cuda.cudadrv.driver import driver
    except ImportError:
        return None
    mode = binding.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_THREAD_LOCAL
    return lambda: DriverCapture(driver, mode)


def use_capture(factory: Callable[[], Any] | None) -> Callable[[], Any] | None:
    """Make ``factory()`` the capture of later steps (``None``: none); return the factory
    in use until now (``None`` if none or not decided yet). For tests: ``use_capture(
    RecordingCapture)`` lets the simulator "capture" and replay steps."""
    previous = _factory[0] if _factory else None
    _factory[:] = [factory]
    return previous


def forget_capture() -> None:
    """Go back to deciding the capture from the platform at the next ``capture()``."""
    _factory.clear()


# ---------------------------------------------------------------------- the scalar copy
@cuda.jit
def gather_slots_kernel(source, slots, destination):
    """destination[i] = source[slots[i]]: float64 scalar slots, int64 indices."""
    for i in range(cuda.grid(1), destination.size, cuda.gridsize(1)):
        destination[i] = source[slots[i]]


def gather_slots(source: Any, slots: Any, destination: Any) -> None:
    """Copy the float64 slots ``source[slots]`` into ``destination`` in one launch.

    Args:
        source: float64 device vector (a scalar buffer).
        slots: int64 device vector of indices into ``source``.
        destination: float64 device vector of ``slots``' length (a range of a buffer).
    """
    if destination.size == 0:  # no empty grid
        return
    launch(gather_slots_kernel, grid_for(destination.size), source, slots, destination)


def int64_slots(slots: list[int]) -> Any:
    """``slots`` as an int64 device vector."""
    return cuda.to_device(np.asarray(slots, dtype=np.int64), stream=common.stream())


def ptx_variants() -> Iterator[PtxVariant]:
    """The slot gather, as launched."""
    yield (
        "gather_slots",
        gather_slots_kernel,
        (array("float64", 1), array("int64", 1), array("float64", 1)),
    )
