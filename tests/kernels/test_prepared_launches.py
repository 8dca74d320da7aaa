"""``common.PreparedLaunches``: the launch cache's logic with a fake driver, and the
dispatcher path that every launch takes in the simulator."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from dlcore.kernels import common, memory
from numba import config as numba_config
from numba import cuda, types


class FakeArray:
    """What the cache reads of a device array: its pointer, shape, strides and dtype."""

    def __init__(self, pointer: int, shape=(4,), dtype=np.float32) -> None:
        self.device_ctypes_pointer = ctypes.c_void_p(pointer)
        self.shape = shape
        self.dtype = np.dtype(dtype)
        self.strides = (self.dtype.itemsize,)


class FakeOverload:
    debug = False
    cooperative = False

    def __init__(self) -> None:
        self.prepared: list[int] = []
        function = type("Function", (), {"kernel": "driver function"})()
        self._codelibrary = type("Library", (), {"get_cufunc": lambda _: function})()

    def _prepare_args(self, argtype, value, stream, copies_back, parts):
        self.prepared.append(value.device_ctypes_pointer.value)
        parts.extend(["array", value.device_ctypes_pointer.value])


class FakeKernel:
    targetoptions: dict = {}
    _launch_config_sensitive = False
    specialized = False

    def __init__(self) -> None:
        self.overloads: dict = {}

    def typeof_pyval(self, value):
        return types.Array(types.float32, 1, "C")


@pytest.fixture
def driver(monkeypatch):
    """A cache whose driver records ``(stream, config, function, arguments)`` per launch."""
    launches: list[tuple] = []
    monkeypatch.setattr(common, "_stream", "library stream")
    cache = common.PreparedLaunches(
        lambda stream, config, function, *args: launches.append((stream, config, function, args)),
        lambda grid, block: ("config", grid, block),
        lambda stream: f"core {stream}",
        (FakeArray,),
    )
    return cache, launches


ARRAY = types.Array(types.float32, 1, "C")


def test_a_kernel_not_compiled_for_the_types_goes_to_the_dispatcher(driver):
    cache, launches = driver
    kernel = FakeKernel()
    assert not cache.launch(kernel, (1, 32), (FakeArray(64), np.float32(2.0)))
    assert launches == []


def test_arrays_are_prepared_once_and_scalars_converted_at_every_launch(driver):
    cache, launches = driver
    kernel, overload = FakeKernel(), FakeOverload()
    kernel.overloads[(ARRAY, ARRAY, types.float32, types.int64)] = overload
    a, b = FakeArray(64), FakeArray(128)
    for scale in (2.0, 3.0):
        assert cache.launch(kernel, (1, 32), (a, b, np.float32(scale), 16))
    # a new view of the same memory is the same argument
    assert cache.launch(kernel, (1, 32), (FakeArray(64), b, np.float32(4.0), 16))
    assert overload.prepared == [64, 128]
    stream, config, function, args = launches[-1]
    assert (stream, config, function) == (
        "core library stream",
        ("config", (1, 1, 1), (32, 1, 1)),
        "driver function",
    )
    assert args[:4] == ("array", 64, "array", 128)
    assert isinstance(args[4], ctypes.c_float) and args[4].value == 4.0
    assert isinstance(args[5], ctypes.c_int64) and args[5].value == 16


def test_other_memory_shapes_or_dtypes_are_prepared_anew(driver):
    cache, _ = driver
    kernel, overload = FakeKernel(), FakeOverload()
    kernel.overloads[(ARRAY,)] = overload
    for array in (FakeArray(64), FakeArray(72), FakeArray(64, shape=(3,))):
        assert cache.launch(kernel, (1, 32), (array,))
    assert overload.prepared == [64, 72, 64]


def test_what_the_cache_does_not_reproduce_goes_to_the_dispatcher(driver):
    cache, _ = driver
    kernel, overload = FakeKernel(), FakeOverload()
    kernel.overloads[(ARRAY,)] = overload
    assert not cache.launch(kernel, (1, 32), (np.zeros(4, np.float32),))  # a host array
    kernel._launch_config_sensitive = True
    assert not cache.launch(kernel, (1, 32), (FakeArray(64),))
    kernel._launch_config_sensitive = False
    overload.debug = True
    assert not cache.launch(kernel, (1, 32), (FakeArray(64),))


def test_a_new_library_stream_is_picked_up(driver, monkeypatch):
    cache, launches = driver
    kernel = FakeKernel()
    kernel.overloads[(ARRAY,)] = FakeOverload()
    cache.launch(kernel, (2, 64), (FakeArray(64),))
    monkeypatch.setattr(common, "_stream", "another stream")
    cache.launch(kernel, ((2, 3), 64), (FakeArray(64),))
    assert [launch[0] for launch in launches] == ["core library stream", "core another stream"]
    assert launches[1][1] == ("config", (2, 3, 1), (64, 1, 1))


@pytest.mark.skipif(not numba_config.ENABLE_CUDASIM, reason="the simulator's fallback")
def test_the_simulator_launches_through_the_dispatcher():
    assert common._prepared_launches() is None
    A = cuda.to_device(np.zeros(5))
    memory.fill(A, 2.5)
    np.testing.assert_array_equal(A.copy_to_host(), np.full(5, 2.5))
