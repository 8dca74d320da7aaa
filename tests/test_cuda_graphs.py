"""CUDA graph replay of the training step (``config.set_cuda_graphs``), without a GPU.

Numba's CUDA simulator has no graphs, so the numba engine's tests install
``kernels.graphs.RecordingCapture``: it takes the launches made through
``common.launch`` while a step is captured, without making them (as the driver's
capture does), and makes the same launches with the same arguments at each replay
(as a graph does). Everything but the driver's capture, instantiate and launch calls
runs as on a GPU: the trainer's warm-up, capture and replay per batch shape, the
engine's checks and pinning, the copy of the scalar results into fresh slots.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np
import pytest
from dlcore.backends.base import StepCaptureError

import dlcore
from dlcore import backends, config
from dlcore.layers import Dense, Dropout
from dlcore.models import Sequential
from dlcore.optimizers import Adam, LossScaleOptimizer
from dlcore.regularizers import l2
from dlcore.step_graphs import WARMUP_STEPS, StepGraphs

SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
needs_simulator = pytest.mark.skipif(
    not SIMULATED, reason="replaces the driver's capture with the simulator's stand-in"
)


@pytest.fixture(autouse=True)
def graphs_off_after():
    """Every test starts and ends with the switch off and the platform's capture."""
    yield
    config._state["cuda_graphs"] = False
    try:
        from dlcore.kernels import graphs
    except ImportError:
        return
    graphs.forget_capture()


def _switch_on() -> None:
    with pytest.warns(UserWarning, match="has not been run on a GPU"):
        config.set_cuda_graphs(True)


@pytest.fixture
def recording():
    """The simulator's stand-in capture, and the list of every graph launch it makes."""
    pytest.importorskip("numba")
    from dlcore.kernels import graphs

    replays: list[int] = []

    class CountingCapture(graphs.RecordingCapture):
        def launch(self, executable: Any, stream: Any) -> None:
            replays.append(len(executable))
            super().launch(executable, stream)

    graphs.use_capture(CountingCapture)
    return replays


# ---------------------------------------------------------------------- the switch
def test_the_switch_is_off_by_default_checked_and_warns_when_turned_on():
    assert config.cuda_graphs() is False
    for wrong in ("yes", 1, None):
        with pytest.raises(TypeError, match="True or False"):
            config.set_cuda_graphs(wrong)  # type: ignore[arg-type]
    assert config.cuda_graphs() is False
    _switch_on()
    assert config.cuda_graphs() is True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config.set_cuda_graphs(False)  # turning it off says nothing
    assert config.cuda_graphs() is False


def test_engines_capture_nothing_by_default_and_run_nothing():
    engine = backends.get("numpy")
    called = []
    assert engine.capture_step(lambda: called.append(1) or []) is None
    assert called == []


def test_plain_fit_makes_no_step_graphs_when_off(monkeypatch):
    def refuse(*args: Any) -> None:
        raise AssertionError("StepGraphs made with the switch off")

    monkeypatch.setattr("dlcore.step_graphs.StepGraphs.__init__", refuse)
    history, _ = _numpy_fit()
    assert len(history["loss"]) == 2


def test_an_engine_that_cannot_capture_trains_as_without_graphs(monkeypatch):
    plain = _numpy_fit()
    calls = []
    capture_step = type(backends.get("numpy")).capture_step
    monkeypatch.setattr(
        type(backends.get("numpy")),
        "capture_step",
        lambda self, run: calls.append(1) or capture_step(self, run),
    )
    _switch_on()
    on = _numpy_fit()
    assert calls == [1]  # asked once; never again in that fit
    assert on[0] == plain[0]
    assert all(np.array_equal(a, b) for a, b in zip(on[1], plain[1]))


def _numpy_fit() -> tuple[dict[str, list[float]], list[np.ndarray]]:
    dlcore.set_floatx("float64")
    dlcore.set_random_seed(2)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((20, 3)), np.eye(2)[rng.integers(0, 2, 20)]
    with dlcore.use_backend("numpy"):
        model = Sequential([Dense(4, activation="relu", input_shape=(3,)), Dense(2, "softmax")])
        model.compile("adam", "categorical_crossentropy", metrics=["accuracy"])
        history = model.fit(x, y, batch_size=4, epochs=2, verbose=0)
        return history.history, model.get_weights()


# ---------------------------------------------------------------------- StepGraphs
class _Replay:
    def __init__(self, results: list[Any]) -> None:
        self.results = results
        self.calls = 0
        self.released = False

    def __call__(self) -> list[Any]:
        self.calls += 1
        return [f"{value}#{self.calls}" for value in self.results]

    def release(self) -> None:
        self.released = True


class _Engine:
    """Captures by calling the step once (to learn its results) and replaying fakes."""

    def __init__(self, refuse: str | None = None) -> None:
        self.refuse = refuse
        self.replays: list[_Replay] = []

    def capture_step(self, run: Any) -> _Replay:
        results = run()
        if self.refuse:
            raise StepCaptureError(self.refuse)
        self.replays.append(_Replay(results))
        return self.replays[-1]


class _Input:
    def __init__(self, *shape: int) -> None:
        self.shape = shape


def _step(log: list[str]) -> Any:
    def step() -> tuple[list[str], list[str]]:
        log.append("plain")
        return ["loss"], ["accuracy"]

    return step


def test_a_shape_is_captured_after_its_warm_up_steps_then_replayed():
    engine, log = _Engine(), []
    graphs = StepGraphs(engine)
    plan, batch = object(), [_Input(4, 3), _Input(4, 2)]
    results = [graphs.run(plan, batch, _step(log)) for _ in range(WARMUP_STEPS + 3)]
    assert results[:WARMUP_STEPS] == [(["loss"], ["accuracy"])] * WARMUP_STEPS
    assert results[WARMUP_STEPS:] == [([f"loss#{i}"], [f"accuracy#{i}"]) for i in (1, 2, 3)]
    # the warm-up steps and the captured run
    assert log == ["plain"] * (WARMUP_STEPS + 1)
    assert graphs.captured == 1
    other = [_Input(2, 3), _Input(2, 2)]  # another shape warms up on its own
    graphs.run(plan, other, _step(log))
    assert graphs.captured == 1
    graphs.release()
    assert engine.replays[0].released and graphs.captured == 0


def test_another_plan_drops_the_graphs_and_warms_up_again():
    engine, log = _Engine(), []
    graphs = StepGraphs(engine)
    batch = [_Input(4, 3)]
    first, second = object(), object()
    for _ in range(WARMUP_STEPS + 1):
        graphs.run(first, batch, _step(log))
    assert graphs.captured == 1
    graphs.run(second, batch, _step(log))
    assert engine.replays[0].released and graphs.captured == 0
    for _ in range(WARMUP_STEPS):
        graphs.run(second, batch, _step(log))
    assert graphs.captured == 1 and len(engine.replays) == 2


def test_a_refused_capture_runs_plainly_warns_once_and_is_not_retried():
    engine, log = _Engine(refuse="the step allocated device memory ((4, 5) float64)"), []
    graphs = StepGraphs(engine)
    plan, batch, last = object(), [_Input(4, 3)], [_Input(2, 3)]
    with pytest.warns(RuntimeWarning, match=r"could not be captured .*allocated") as caught:
        for _ in range(WARMUP_STEPS + 3):
            assert graphs.run(plan, batch, _step(log)) == (["loss"], ["accuracy"])
        for _ in range(WARMUP_STEPS + 1):
            graphs.run(plan, last, _step(log))
    assert len(caught) == 1
    assert set(graphs.refused) == {((4, 3),), ((2, 3),)}
    # per shape: the warm-up steps, the failed capture's run, its plain rerun, the rest
    assert len(log) == (WARMUP_STEPS + 4) + (WARMUP_STEPS + 2)
    assert graphs.captured == 0


def test_an_engine_that_cannot_capture_is_asked_once():
    class NoGraphs:
        def capture_step(self, run: Any) -> None:
            return None

    graphs, log = StepGraphs(NoGraphs()), []  # type: ignore[arg-type]
    for _ in range(WARMUP_STEPS + 3):
        assert graphs.run(None, [_Input(4, 3)], _step(log)) == (["loss"], ["accuracy"])
    assert not graphs.may_capture and graphs.captured == 0
    assert log == ["plain"] * (WARMUP_STEPS + 3)


# ---------------------------------------------------------------------- the numba engine
@pytest.fixture
def numba_engine():
    pytest.importorskip("numba")
    return backends.get("numba")


def _warm_step(engine: Any, X: Any, T: Any) -> Any:
    """A step of engine operations: a recycled activation, a loss into a scalar slot."""

    def run() -> list[Any]:
        Y = engine.activation("tanh", X)
        dY = engine.backprop_loss("mean_squared_error", Y, T)
        return [engine.loss("mean_squared_error", Y, T), engine.penalty(dY, l1=0.0, l2=1.0)]

    run()
    run()  # the free list now holds the step's memory
    return run


@needs_simulator
def test_a_captured_step_replays_the_launches_and_returns_fresh_scalars(numba_engine, recording):
    engine = numba_engine
    rng = np.random.default_rng(1)
    x, t = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    X, T = engine.asarray(x, dtype="float64"), engine.asarray(t, dtype="float64")
    run = _warm_step(engine, X, T)
    expected = engine.scalars_to_numpy(run())
    engine.assign(X, engine.asarray(x + 1.0, dtype="float64"))
    shifted = engine.scalars_to_numpy(run())
    engine.assign(X, engine.asarray(x, dtype="float64"))
    replay = engine.capture_step(run)
    assert recording == []  # capturing ran nothing
    first = replay()
    engine.assign(X, engine.asarray(x + 1.0, dtype="float64"))  # the graph reads X anew
    second = replay()
    assert len(recording) == 2 and recording[0] == replay.launches
    np.testing.assert_array_equal(engine.scalars_to_numpy(first), expected)
    np.testing.assert_array_equal(engine.scalars_to_numpy(second), shifted)
    assert {s.slot for s in first}.isdisjoint({s.slot for s in second})
    replay.release()
    assert replay.pinned == ()
    with pytest.raises(RuntimeError, match="released"):
        replay()


@needs_simulator
def test_a_captured_step_keeps_its_recycled_arrays_and_launch_arguments(numba_engine, recording):
    engine = numba_engine
    X = engine.asarray(np.ones((6, 2)), dtype="float64")
    T = engine.asarray(np.zeros((6, 2)), dtype="float64")
    replay = engine.capture_step(_warm_step(engine, X, T))
    launches, recycled, results = replay.pinned
    assert len(recycled) == 2  # tanh's output and the loss gradient
    free = [_address(m) for memories in engine._free.values() for m in memories]
    for view in recycled:  # their memory stays off the free list while the graph lives
        assert _address(view) not in free
    arguments = [arg for launch in launches for arg in launch.args]
    assert _address(X) in {_address(arg) for arg in arguments if hasattr(arg, "copy_to_host")}
    assert all(s.buffer is results[0].buffer for s in results)
    engine.capture_step(_warm_step(engine, X, T))  # a second graph takes other memory
    replay.release()


def _address(array: Any) -> int:
    """Where a simulator device array's data starts."""
    return array.__array_interface__["data"][0]


@needs_simulator
def test_a_step_that_allocates_is_refused_and_nothing_of_it_runs(numba_engine, recording):
    engine = numba_engine
    X = engine.asarray(np.ones((3, 2)), dtype="float64")

    def allocating() -> list[Any]:
        engine.assign(X, engine.zeros((3, 2), dtype="float64"))
        engine.zeros((17, 19), dtype="float64")
        return [engine.penalty(X, l1=1.0, l2=0.0)]

    with pytest.raises(StepCaptureError, match=r"allocated device memory \(\(3, 2\) float64"):
        engine.capture_step(allocating)
    np.testing.assert_array_equal(engine.to_numpy(X), np.ones((3, 2)))
    assert recording == []


@needs_simulator
def test_a_step_that_fails_or_returns_arrays_is_refused(numba_engine, recording):
    engine = numba_engine
    X = engine.asarray(np.ones((3, 2)), dtype="float64")
    run = _warm_step(engine, X, X)

    def failing() -> list[Any]:
        run()
        raise ValueError("boom")

    with pytest.raises(StepCaptureError, match="ValueError: boom"):
        engine.capture_step(failing)
    with pytest.raises(StepCaptureError, match="not scalars"):
        engine.capture_step(lambda: [*run(), X])
    from dlcore.kernels import common

    assert common._observer is None  # the launches go to the stream again


@needs_simulator
def test_gather_slots_copies_scalar_slots(numba_engine):
    from dlcore.kernels import graphs
    from numba import cuda

    source = cuda.to_device(np.arange(10, dtype=np.float64))
    destination = cuda.to_device(np.zeros(4))
    graphs.gather_slots(source, graphs.int64_slots([7, 2, 2, 9]), destination)
    np.testing.assert_array_equal(destination.copy_to_host(), [7.0, 2.0, 2.0, 9.0])


# ---------------------------------------------------------------------- whole fits
def _data(n: int = 10) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 4))
    return x, np.eye(3)[(x[:, 0] + x[:, 1] > 0).astype(int) + (x[:, 2] > 0.8)]


def _dropout_l2() -> Sequential:
    """Node by node: dropout, a penalty among the loss terms."""
    return Sequential(
        [
            Dense(5, activation="relu", input_shape=(4,), kernel_regularizer=l2(1e-2)),
            Dropout(0.3),
            Dense(3, activation="softmax"),
        ]
    )


def _stack() -> Sequential:
    """The dense stack (``dense_stack_step``)."""
    return Sequential([Dense(5, activation="tanh", input_shape=(4,)), Dense(3, "softmax")])


def _numba_fit(build: Any, *, graphs: bool, shuffle: bool = True, epochs: int = 3, **fit: Any):
    x, y = _data()
    dlcore.set_floatx("float64")
    dlcore.set_random_seed(5)
    config._state["cuda_graphs"] = graphs  # the switch, without its warning
    with dlcore.use_backend("numba"):
        model = build()
        model.compile(Adam(learning_rate=0.05), "categorical_crossentropy", metrics=["accuracy"])
        history = model.fit(x, y, batch_size=4, epochs=epochs, shuffle=shuffle, verbose=0, **fit)
        return history.history, model.get_weights(), model


@needs_simulator
@pytest.mark.parametrize(
    ("build", "options"),
    [(_dropout_l2, {"shuffle": True}), (_stack, {"shuffle": False, "validation_split": 0.2})],
    ids=["dropout-l2-shuffled", "stack-unshuffled-validation"],
)
def test_a_fit_with_graph_replay_matches_the_plain_fit_exactly(
    numba_engine, recording, build, options
):
    plain = _numba_fit(build, graphs=False, **options)
    replayed = _numba_fit(build, graphs=True, **options)
    assert replayed[0] == plain[0]
    for got, expected in zip(replayed[1], plain[1]):
        np.testing.assert_array_equal(got, expected)
    # 10 samples (8 with the validation split) in batches of 4: two full batches and a
    # partial one (none) per epoch; a shape is captured at its third step, then replayed
    n = 8 if "validation_split" in options else 10
    full_steps, partial_steps = 3 * (n // 4), 3 * (n % 4 > 0)
    expected_replays = (full_steps - WARMUP_STEPS) + max(0, partial_steps - WARMUP_STEPS)
    assert len(recording) == expected_replays


@needs_simulator
def test_graphs_are_captured_anew_after_a_recompile(numba_engine, recording, monkeypatch):
    captured: list[Any] = []
    capture_step = type(numba_engine).capture_step

    def counting(self: Any, run: Any) -> Any:
        captured.append(capture_step(self, run))
        return captured[-1]

    monkeypatch.setattr(type(numba_engine), "capture_step", counting)
    x, y = _data(8)
    dlcore.set_floatx("float64")

    def two_fits(graphs: bool) -> list[np.ndarray]:
        dlcore.set_random_seed(5)
        config._state["cuda_graphs"] = graphs
        with dlcore.use_backend("numba"):
            model = _stack()
            model.compile(Adam(learning_rate=0.05), "categorical_crossentropy")
            model.fit(x, y, batch_size=4, epochs=2, verbose=0)
            model.compile(Adam(learning_rate=0.01), "mean_squared_error")
            model.fit(x, y, batch_size=4, epochs=2, verbose=0)
            return model.get_weights()

    plain = two_fits(False)
    assert captured == []
    replayed = two_fits(True)
    assert len(captured) == 2 and captured[0] is not captured[1]
    assert all(step.pinned == () for step in captured)  # released at the end of each fit
    for got, expected in zip(replayed, plain):
        np.testing.assert_array_equal(got, expected)


@needs_simulator
def test_a_failed_capture_falls_back_to_plain_steps_and_warns_once(
    numba_engine, recording, monkeypatch
):
    def failing(self: Any, run: Any) -> Any:
        raise StepCaptureError("the step allocated device memory (test)")

    plain = _numba_fit(_stack, graphs=False)
    monkeypatch.setattr(type(numba_engine), "capture_step", failing)
    with pytest.warns(RuntimeWarning, match="could not be captured") as caught:
        replayed = _numba_fit(_stack, graphs=True)
    assert len(caught) == 1
    assert recording == []
    assert replayed[0] == plain[0]
    for got, expected in zip(replayed[1], plain[1]):
        np.testing.assert_array_equal(got, expected)


@needs_simulator
def test_a_loss_scale_optimizer_model_is_not_captured(numba_engine, recording, monkeypatch):
    calls = []
    monkeypatch.setattr(type(numba_engine), "capture_step", lambda self, run: calls.append(1))
    x, y = _data(8)
    dlcore.set_floatx("float32")
    dlcore.set_random_seed(5)
    config._state["cuda_graphs"] = True
    with dlcore.use_backend("numba"):
        model = _stack()
        model.compile(LossScaleOptimizer(Adam()), "categorical_crossentropy")
        assert model._step_graphs(numba_engine) is None
        model.fit(x, y, batch_size=4, epochs=2, verbose=0)
    assert calls == []
