"""Every launch goes to the library's one stream, and the engine's transfers wait for it.

In the simulator a launch configuration's stream is accepted and ignored, so the
streams are recorded where the simulator's kernels are configured.
"""

from __future__ import annotations

import ast
import pathlib

import numpy as np
import pytest
from dlcore.kernels import common, losses, memory, optimizers, reductions, softmax
from numba import config as numba_config
from numba import cuda

pytestmark = pytest.mark.skipif(
    not numba_config.ENABLE_CUDASIM, reason="records launches through the simulator's kernels"
)

KERNELS = pathlib.Path(common.__file__).parent
LAUNCH_SITE = "common.py"  # the one place a kernel is configured and called


@pytest.fixture
def streams(monkeypatch):
    """``(kernel module, stream)`` of every launch during the test (``None``: no stream)."""
    from numba.cuda.simulator import kernel

    recorded: list[tuple[str, object]] = []
    configure = kernel.FakeCUDAKernel.__getitem__

    def recording(self, configuration):
        stream = configuration[2] if len(configuration) > 2 else None
        recorded.append((self.fn.__module__, stream))
        return configure(self, configuration)

    monkeypatch.setattr(kernel.FakeCUDAKernel, "__getitem__", recording)
    return recorded


def test_no_kernel_module_launches_outside_common_launch():
    """No ``kernel[grid, block](...)`` call (a call of a subscript) outside common.py."""
    offenders = []
    for path in sorted(KERNELS.glob("*.py")):
        if path.name == LAUNCH_SITE:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Subscript):
                offenders.append(f"{path.name}:{node.lineno}: {ast.unparse(node)[:80]}")
    assert offenders == []


def test_launchers_launch_on_the_library_stream(streams):
    rng = np.random.default_rng(0)
    P = cuda.to_device(rng.random((5, 3)))
    labels = cuda.to_device(np.array([0, 2, 1, 1, 0]))
    out = cuda.device_array(1, np.float64)
    dZ = cuda.device_array((5, 3))
    softmax.softmax(P, dZ)
    losses.loss("sparse_categorical_crossentropy", P, labels, out)
    reductions.count_correct("sparse", P, labels, out)
    memory.fill(dZ, 0.0)
    flat = [cuda.to_device(np.ones(7)) for _ in range(4)]
    h = {"alpha": 1e-3, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7}
    optimizers.adam(flat[0], flat[1], [flat[2], flat[3], None], h)
    assert len(streams) >= 6
    assert all(stream is common.stream() for _, stream in streams), streams


def test_use_stream_moves_later_launches_and_returns_the_old_stream(streams):
    mine = cuda.stream()
    old = common.use_stream(mine)
    try:
        memory.fill(cuda.device_array(4), 1.0)
        assert streams[-1][1] is mine
        assert common.stream() is mine
    finally:
        assert common.use_stream(old) is mine
    assert common.stream() is old


def test_a_numba_fit_launches_on_the_engine_stream(streams):
    import dlcore

    engine = dlcore.backends.get("numba")
    assert engine.stream is common.stream()
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((6, 3)), rng.integers(0, 2, 6)
    with dlcore.use_backend("numba"):
        model = dlcore.models.Sequential(
            [dlcore.layers.Input((3,)), dlcore.layers.Dense(2, activation="softmax")]
        )
        model.compile(
            optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"]
        )
        model.fit(x, y, batch_size=3, epochs=1, verbose=0)
    ours = [stream for _module, stream in streams]
    assert ours and all(stream is engine.stream for stream in ours)


class CountingStream:
    """A simulator stream that counts how often the host waited for it."""

    def __init__(self) -> None:
        self.inner = cuda.stream()
        self.waits = 0

    def synchronize(self) -> None:
        self.waits += 1
        self.inner.synchronize()


def test_engine_reads_wait_for_the_stream_and_are_complete():
    import dlcore

    engine = dlcore.backends.get("numba")
    counting = CountingStream()
    old = common.use_stream(counting)
    try:
        values = np.arange(12.0).reshape(3, 4)
        A = engine.asarray(values, dtype="float64")
        np.testing.assert_array_equal(engine.to_numpy(A), values)
        assert counting.waits == 1
        scalars = [engine.loss("mean_squared_error", A, A) for _ in range(3)]
        np.testing.assert_array_equal(engine.scalars_to_numpy(scalars), np.zeros(3))
        assert counting.waits == 2
        engine.synchronize()
        assert counting.waits == 3
    finally:
        common.use_stream(old)
