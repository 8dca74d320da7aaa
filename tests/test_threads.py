"""Threads and asyncio tasks: context-local settings, concurrent predict, one trainer per
model (README, "Thread safety")."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import dlcore
from dlcore import config
from dlcore.callbacks import Callback
from dlcore.layers import Add, Dense, Input
from dlcore.models import Model, Sequential

ENGINES = ("numpy", "array_api_strict")
THREADS = 8


def _in_threads(count: int, work: Callable[[int], Any]) -> list[Any]:
    """``work(i)`` in ``count`` threads started together; their results, or the first
    exception any of them raised."""
    results: list[Any] = [None] * count
    errors: list[BaseException] = []
    start = threading.Barrier(count)

    def run(i: int) -> None:
        try:
            start.wait()
            results[i] = work(i)
        except BaseException as error:  # re-raised in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,), name=f"worker-{i}") for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def _small_model(seed: int = 0) -> Sequential:
    dlcore.set_random_seed(seed)
    return Sequential([Dense(5, activation="relu", input_shape=(4,)), Dense(3)])


def _branching_model(float64_layer: bool = False) -> Model:
    """Two inputs, a shared layer, a merge; with ``float64_layer`` one layer computes in
    float64 in a float32 model, on cast copies of its weights."""
    dlcore.set_random_seed(7)
    a, b = Input(shape=(6,)), Input(shape=(6,))
    shared = Dense(8, activation="tanh")
    merged = Add()([shared(a), shared(b)])
    hidden = Dense(8, activation="relu", dtype="float64" if float64_layer else None)(merged)
    return Model([a, b], [Dense(2, activation="softmax")(hidden), Dense(1)(merged)])


# ---------------------------------------------------------------- context-local settings
def test_use_backend_blocks_in_two_threads_build_on_their_own_engines():
    before = dlcore.backend()
    meeting = threading.Barrier(2)
    for _ in range(15):
        engines = _in_threads(2, lambda i: _engine_of_a_model_built_in(ENGINES[i], meeting))
        assert engines == list(ENGINES)
        assert dlcore.backend() == before


def _engine_of_a_model_built_in(name: str, meeting: threading.Barrier) -> str:
    """The engine a model built inside ``use_backend(name)`` lands on, while another
    thread is inside its own block (both wait at ``meeting``)."""
    with dlcore.use_backend(name):
        meeting.wait()  # both threads are inside their blocks now
        model = _small_model()
        model.get_weights()  # places the weights on the current engine
        meeting.wait()
        assert model.engine is not None
        return model.engine.name


def test_set_random_seed_in_a_thread_leaves_the_other_threads_weights():
    expected = [_small_model(seed).get_weights() for seed in (1, 2)]
    meeting = threading.Barrier(2)

    def build(i: int) -> list[np.ndarray]:
        dlcore.set_random_seed(i + 1)
        meeting.wait()  # the other thread has seeded its own generator too
        model = Sequential([Dense(5, activation="relu", input_shape=(4,)), Dense(3)])
        return model.get_weights()

    for _ in range(5):
        got = _in_threads(2, build)
        for weights, reference in zip(got, expected):
            for array, ref in zip(weights, reference):
                np.testing.assert_array_equal(array, ref)


def test_a_new_thread_sees_the_main_threads_settings_and_keeps_its_own():
    dlcore.set_floatx("float64")
    dlcore.set_backend("array_api_strict")

    def settings_seen(_: int) -> tuple[str, str]:
        seen = (dlcore.floatx(), dlcore.backend())
        dlcore.set_floatx("float32")
        dlcore.set_backend("numpy")
        return seen

    assert _in_threads(1, settings_seen) == [("float64", "array_api_strict")]
    assert (dlcore.floatx(), dlcore.backend()) == ("float64", "array_api_strict")


def test_use_backend_restores_exactly_the_previous_engine_of_its_context():
    def nested(_: int) -> list[str]:
        seen = []
        dlcore.set_backend("array_api_strict")  # this thread's own value
        with dlcore.use_backend("numpy"):
            with dlcore.use_backend("array_api_strict"):
                seen.append(dlcore.backend())
            seen.append(dlcore.backend())
        seen.append(dlcore.backend())
        return seen

    default = dlcore.backend()
    assert _in_threads(1, nested) == [["array_api_strict", "numpy", "array_api_strict"]]
    assert dlcore.backend() == default


def test_a_threads_use_backend_block_does_not_leak_into_the_main_thread():
    meeting = threading.Barrier(2)
    with dlcore.use_backend("numpy"):
        _in_threads(2, lambda i: _engine_of_a_model_built_in(ENGINES[i], meeting))
        assert dlcore.backend() == "numpy"


def test_asyncio_tasks_each_see_their_own_engine_and_seed():
    async def task(name: str, seed: int) -> tuple[str, list[np.ndarray]]:
        with dlcore.use_backend(name):
            dlcore.set_random_seed(seed)
            await asyncio.sleep(0)  # the other task runs and seeds here
            await asyncio.sleep(0)
            model = Sequential([Dense(5, activation="relu", input_shape=(4,)), Dense(3)])
            return dlcore.backend(), model.get_weights()

    async def both() -> list[tuple[str, list[np.ndarray]]]:
        return list(await asyncio.gather(task("array_api_strict", 1), task("numpy", 2)))

    default = dlcore.backend()
    (name_a, weights_a), (name_b, weights_b) = asyncio.run(both())
    assert (name_a, name_b) == ("array_api_strict", "numpy")
    for weights, seed in ((weights_a, 1), (weights_b, 2)):
        for array, ref in zip(weights, _small_model(seed).get_weights()):
            np.testing.assert_array_equal(array, ref)
    assert dlcore.backend() == default


def test_set_in_the_main_thread_inside_use_backend_changes_the_default_after_it():
    dlcore.set_backend("numpy")
    with dlcore.use_backend("array_api_strict"):
        dlcore.set_backend("array_api_strict")
        assert dlcore.backend() == "array_api_strict"
    assert dlcore.backend() == "array_api_strict"
    assert config._state["engine"].name == "array_api_strict"


# ---------------------------------------------------------------- concurrent predict
@pytest.mark.parametrize("name", ENGINES)
@pytest.mark.parametrize("float64_layer", [False, True], ids=["float32", "with_cast_layer"])
def test_predict_from_8_threads_gives_the_serial_results(name, float64_layer):
    with dlcore.use_backend(name):
        model = _branching_model(float64_layer)
        inputs = _thread_inputs(model)
        serial = [model.predict(x, batch_size=16) for x in inputs]

    def predict_many(i: int) -> list[Any]:
        return [model.predict(inputs[(i + r) % THREADS], batch_size=16) for r in range(25)]

    for repeat in range(3):
        for i, outputs in enumerate(_in_threads(THREADS, predict_many)):
            for r, output in enumerate(outputs):
                for got, expected in zip(output, serial[(i + r) % THREADS]):
                    np.testing.assert_array_equal(got, expected, err_msg=f"repeat {repeat}")


def _thread_inputs(model: Model) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(3)
    return [
        [rng.normal(size=(40 + i, t.features)).astype("float32") for t in model._inputs]
        for i in range(THREADS)
    ]


@pytest.mark.parametrize("name", ENGINES)
def test_threads_predicting_on_an_unbuilt_model_build_and_place_it_once(name):
    dlcore.set_random_seed(5)
    model = Sequential([Dense(6, activation="relu"), Dense(2)])
    x = np.random.default_rng(0).normal(size=(30, 4)).astype("float32")

    def predict(_: int) -> np.ndarray:
        with dlcore.use_backend(name):
            return model.predict(x)

    outputs = _in_threads(THREADS, predict)
    assert model.engine is not None and model.engine.name == name
    for output in outputs[1:]:
        np.testing.assert_array_equal(output, outputs[0])
    np.testing.assert_array_equal(model.predict(x), outputs[0])


# ---------------------------------------------------------------- one trainer per model
class _Pause(Callback):
    """Holds the first training batch until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.paused = threading.Event()
        self.release = threading.Event()

    def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
        if not self.paused.is_set():
            self.paused.set()
            assert self.release.wait(timeout=60)


def _compiled(name: str = "trained_once") -> Sequential:
    dlcore.set_random_seed(0)
    model = Sequential(
        [Dense(4, activation="relu", input_shape=(3,)), Dense(2, activation="softmax")],
        name=name,
    )
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    return model


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20, 3)).astype("float32")
    return x, np.eye(2, dtype="float32")[rng.integers(0, 2, size=20)]


@pytest.mark.parametrize("second_call", ["fit", "train_on_batch"])
def test_training_one_model_from_a_second_thread_is_refused(second_call):
    model = _compiled()
    x, y = _data()
    pause = _Pause()
    first = threading.Thread(
        target=model.fit, args=(x, y), kwargs={"epochs": 2, "verbose": 0, "callbacks": [pause]}
    )
    first.start()
    try:
        assert pause.paused.wait(timeout=60)
        message = (
            rf"{second_call}\(\): model 'trained_once' is already training in thread "
            rf"{re.escape(repr(first.name))}.*one model trains in one thread at a time"
        )
        with pytest.raises(RuntimeError, match=message):
            if second_call == "fit":
                model.fit(x, y, epochs=1, verbose=0)
            else:
                model.train_on_batch(x, y)
    finally:
        pause.release.set()
        first.join()
    assert model.history is not None and len(model.history.history["loss"]) == 2
    model.fit(x, y, epochs=1, verbose=0)  # the first fit has returned: training is free


def test_predict_runs_while_another_thread_trains():
    model = _compiled()
    x, y = _data()
    pause = _Pause()
    first = threading.Thread(
        target=model.fit, args=(x, y), kwargs={"epochs": 1, "verbose": 0, "callbacks": [pause]}
    )
    first.start()
    try:
        assert pause.paused.wait(timeout=60)
        assert model.predict(x).shape == (20, 2)
    finally:
        pause.release.set()
        first.join()


def test_a_fit_that_fails_leaves_the_model_free_to_train():
    model = _compiled()
    x, y = _data()
    with pytest.raises(ValueError):
        model.fit(x, y[:5], verbose=0)
    model.fit(x, y, epochs=1, verbose=0)


def test_fit_called_from_its_own_callback_is_refused():
    model = _compiled()
    x, y = _data()

    class Nested(Callback):
        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            model.fit(x, y, epochs=1, verbose=0)

    with pytest.raises(RuntimeError, match="one model trains in one thread at a time"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[Nested()])
    model.fit(x, y, epochs=1, verbose=0)


@pytest.mark.parametrize("name", ENGINES)
def test_two_threads_training_their_own_models_get_the_serial_weights(name):
    x, y = _data()

    def train(i: int) -> list[np.ndarray]:
        with dlcore.use_backend(name):
            model = _compiled(f"model_{i}")
            dlcore.set_random_seed(10 + i)  # this thread's shuffling
            model.fit(x, y, epochs=3, batch_size=4, verbose=0)
            return model.get_weights()

    serial = [train(i) for i in range(2)]
    for weights, reference in zip(_in_threads(2, train), serial):
        for array, ref in zip(weights, reference):
            np.testing.assert_array_equal(array, ref)
