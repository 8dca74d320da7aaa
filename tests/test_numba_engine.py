"""The numba engine as a user meets it: selecting it, and a whole ``fit`` against numpy.

Where there is no GPU these run in Numba's CUDA simulator (tests/conftest.py turns
it on), so the models are tiny and train on a few small batches.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import dlcore
from dlcore import backends
from dlcore.layers import Dense, Dropout, PReLU
from dlcore.models import Sequential
from dlcore.optimizers import SGD, Adam, RMSprop
from dlcore.regularizers import l1_l2

pytest.importorskip("numba")
pytestmark = pytest.mark.cudasim

SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


def _gpu_present() -> bool:
    """Whether a real CUDA GPU is usable, asked in a process without the simulator."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    done = subprocess.run(
        [sys.executable, "-c", "from numba import cuda; print(cuda.is_available())"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    return done.stdout.strip() == "True"


@pytest.fixture(scope="module")
def gpu_present() -> bool:
    return _gpu_present()


def test_selecting_numba_without_a_gpu_names_the_simulator(gpu_present):
    if gpu_present:
        pytest.skip("a CUDA GPU is present")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    done = subprocess.run(
        [sys.executable, "-c", "import dlcore; dlcore.set_backend('numba')"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode != 0
    assert "RuntimeError: engine 'numba' cannot run here: no CUDA GPU" in done.stderr
    assert "set NUMBA_ENABLE_CUDASIM=1" in done.stderr
    listing = subprocess.run(
        [sys.executable, "-m", "dlcore", "engines"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert listing.returncode == 0
    numba_line = next(line for line in listing.stdout.splitlines() if "numba" in line)
    assert "NUMBA_ENABLE_CUDASIM=1" in numba_line


def test_available_reports_numba_with_its_device():
    info = {i.name: i for i in backends.available()}["numba"]
    assert info.available
    if SIMULATED:
        assert info.detail == "CUDA simulator on the CPU (NUMBA_ENABLE_CUDASIM=1)"
    else:
        assert "compute capability" in info.detail


def _data(n: int = 40, features: int = 6, classes: int = 3):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, features))
    labels = (x[:, 0] + x[:, 1] > 0).astype(int) + (x[:, 2] > 0.8)
    return x, np.eye(classes)[labels]


def _train(engine_name: str, dtype: str, build, optimizer, loss: str, epochs: int = 2):
    """History, predictions and weights of one small fit on ``engine_name``."""
    x, y = _data()
    dlcore.set_floatx(dtype)
    dlcore.set_random_seed(3)
    with dlcore.use_backend(engine_name):
        model = build()
        model.compile(optimizer=optimizer(), loss=loss, metrics=["accuracy"])
        history = model.fit(
            x, y, batch_size=16, epochs=epochs, validation_split=0.25, shuffle=True, verbose=0
        )
        return history.history, model.predict(x, verbose=0), model.get_weights()


def _mlp():
    return Sequential(
        [
            Dense(7, activation="relu", input_shape=(6,), kernel_regularizer=l1_l2(1e-3, 1e-3)),
            Dense(5, activation="tanh"),
            Dense(3, activation="softmax"),
        ]
    )


def _prelu_mlp():
    return Sequential([Dense(9, input_shape=(6,)), PReLU(), Dense(3, activation="sigmoid")])


CASES = {
    "adam-softmax-cce": (
        _mlp,
        lambda: Adam(learning_rate=0.01, amsgrad=True),
        "categorical_crossentropy",
    ),
    "sgd-nesterov-prelu-bce": (
        _prelu_mlp,
        lambda: SGD(learning_rate=0.1, momentum=0.9, nesterov=True),
        "binary_crossentropy",
    ),
    "rmsprop-centered-mse": (
        _mlp,
        lambda: RMSprop(learning_rate=0.01, centered=True, momentum=0.5),
        "mean_squared_error",
    ),
}


@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-10), ("float32", 1e-4)])
@pytest.mark.parametrize("case", list(CASES))
def test_fit_on_numba_matches_numpy(case, dtype, rtol):
    build, optimizer, loss = CASES[case]
    expected = _train("numpy", dtype, build, optimizer, loss)
    got = _train("numba", dtype, build, optimizer, loss)
    assert set(got[0]) == set(expected[0]) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    for key, values in expected[0].items():
        np.testing.assert_allclose(got[0][key], values, rtol=rtol, atol=rtol * 1e-3, err_msg=key)
    np.testing.assert_allclose(got[1], expected[1], rtol=rtol, atol=rtol * 1e-3)
    for w_got, w_expected in zip(got[2], expected[2]):
        np.testing.assert_allclose(w_got, w_expected, rtol=rtol, atol=rtol * 1e-3)


def test_data_too_large_for_the_device_is_copied_batch_by_batch():
    from dlcore.backends import numba_engine

    expected = _train("numpy", "float64", *CASES["adam-softmax-cce"])
    engine = backends.get("numba")
    x, _ = _data()
    engine.device_data_limit = x.nbytes // 2  # the weights fit, the training set does not
    try:
        assert isinstance(engine.asarray(x, dtype="float64"), numba_engine.HostRows)
        got = _train("numba", "float64", *CASES["adam-softmax-cce"])
    finally:
        engine.device_data_limit = None
    np.testing.assert_allclose(got[0]["loss"], expected[0]["loss"], rtol=1e-10)
    np.testing.assert_allclose(got[1], expected[1], rtol=1e-10)


def test_scalars_are_read_back_in_one_transfer_per_buffer(monkeypatch):
    from dlcore.backends import numba_engine

    monkeypatch.setattr(numba_engine, "SCALAR_SLOTS", 3)
    engine = numba_engine.NumbaEngine()
    W = np.arange(-3.0, 3.0).reshape(2, 3)
    device_W = engine.asarray(W, dtype="float64")
    scalars = [engine.penalty(device_W, l1=float(k), l2=0.0) for k in range(7)]
    assert len({id(s.buffer) for s in scalars}) == 3  # 7 scalars in buffers of 3 slots
    np.testing.assert_allclose(engine.scalars_to_numpy(scalars), np.arange(7) * np.abs(W).sum())
    assert engine.to_numpy(scalars[5]).shape == ()


def test_dropout_trains_and_masks_repeat_with_the_seed():
    x, y = _data()
    dlcore.set_random_seed(5)

    def run():
        dlcore.set_random_seed(5)
        with dlcore.use_backend("numba"):
            model = Sequential(
                [
                    Dense(8, activation="relu", input_shape=(6,)),
                    Dropout(0.5),
                    Dense(3, activation="softmax"),
                ]
            )
            model.compile(optimizer="adam", loss="categorical_crossentropy")
            return model.fit(x, y, batch_size=20, epochs=2, verbose=0).history["loss"]

    first, second = run(), run()
    assert np.all(np.isfinite(first))
    assert first == second


class _CountDeviceAllocations(dlcore.callbacks.Callback):
    """Counts ``cuda.device_array``/``to_device`` calls (every device allocation the engine
    and its kernels make) during each training step."""

    def __init__(self, monkeypatch):
        super().__init__()
        from numba import cuda

        self.per_step: list[int] = []
        self._calls = 0
        for name in ("device_array", "to_device", "device_array_like"):
            original = getattr(cuda, name)

            def counting(*args, _original=original, **kwargs):
                self._calls += 1
                return _original(*args, **kwargs)

            monkeypatch.setattr(cuda, name, counting)

    def on_train_batch_begin(self, batch, logs=None):
        self._start = self._calls

    def on_train_batch_end(self, batch, logs=None):
        self.per_step.append(self._calls - self._start)


def test_a_training_step_allocates_no_device_array_after_the_first_epoch(monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((10, 4)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 10)]
    with dlcore.use_backend("numba"):
        dlcore.set_random_seed(0)
        model = Sequential(
            [Dense(5, activation="relu", input_shape=(4,)), Dense(3, activation="softmax")]
        )
        model.compile(optimizer="adam", loss="categorical_crossentropy")
        counter = _CountDeviceAllocations(monkeypatch)
        model.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=[counter])
    # 3 steps an epoch (4, 4 and 2 rows): the first epoch allocates the workspaces of
    # both batch sizes, the second nothing
    assert all(count > 0 for count in counter.per_step[:1])
    assert counter.per_step[3:] == [0, 0, 0]


def _hinge_model(inputs: int, hidden: int | None):
    """A linear unit trained with the hinge loss (no fused gradient: ``backprop_loss``);
    with ``hidden``, after an L1-L2 regularised layer of ``inputs * hidden`` weights."""
    layers = []
    if hidden is not None:
        regularizer = l1_l2(1e-3, 1e-3)
        layers.append(
            Dense(hidden, activation="tanh", input_shape=(inputs,), kernel_regularizer=regularizer)
        )
        layers.append(Dense(1))
    else:
        layers.append(Dense(1, input_shape=(inputs,)))
    return Sequential(layers)


# (inputs, hidden units, batch size). More than 2048 elements take the reductions'
# two-pass path with its partial sums: 65 * 32 = 2080 regularised weights (the
# penalty), and 2050 rows (the loss's per-sample mean, the hinge label count and the
# binary accuracy). Widths stay near the kernels' 32-wide tiles: in the simulator a
# product costs its padded size, one OS thread per CUDA thread.
ALLOCATION_CASES = {"penalty-over-2048-weights": (65, 32, 4), "batch-over-2048": (1, None, 2050)}


@pytest.mark.parametrize("case", list(ALLOCATION_CASES))
def test_hinge_penalty_and_binary_accuracy_allocate_nothing_after_the_first_batch(
    case, monkeypatch
):
    inputs, hidden, batch = ALLOCATION_CASES[case]
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2 * batch, inputs)).astype(np.float32)
    y = (x[:, :1] > 0).astype(np.float32)  # 0/1 labels: the hinge turns them into -1/1
    with dlcore.use_backend("numba"):
        dlcore.set_random_seed(0)
        model = _hinge_model(inputs, hidden)
        model.compile(optimizer="sgd", loss="hinge", metrics=["binary_accuracy"])
        counter = _CountDeviceAllocations(monkeypatch)
        history = model.fit(x, y, batch_size=batch, epochs=1, verbose=0, callbacks=[counter])
    assert np.all(np.isfinite(history.history["loss"]))
    assert counter.per_step[0] > 0
    assert counter.per_step[1:] == [0]


def test_results_without_a_workspace_reuse_memory_only_once_released(monkeypatch):
    from dlcore.backends import numba_engine
    from numba import cuda

    engine = numba_engine.NumbaEngine()
    Z = engine.asarray(np.array([[-1.0, 2.0]]), dtype="float64")
    allocations = []
    original = cuda.device_array

    def counting(*args, **kwargs):
        allocations.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(cuda, "device_array", counting)
    first = engine.activation("relu", Z)
    second = engine.activation("tanh", Z)  # `first` is still held: new memory
    assert len(allocations) == 2
    np.testing.assert_array_equal(engine.to_numpy(first), [[0.0, 2.0]])
    del first
    third = engine.activation("relu", Z)  # the memory `first` released
    assert len(allocations) == 2
    np.testing.assert_array_equal(engine.to_numpy(third), [[0.0, 2.0]])
    np.testing.assert_allclose(engine.to_numpy(second), np.tanh([[-1.0, 2.0]]))


def test_low_occupancy_warnings_are_off_in_the_tests():
    """On a GPU, numba-cuda warns at every launch of fewer than 128 blocks; with warnings
    as errors every small test would fail. tests/conftest.py turns them off before numba
    is imported, and pyproject.toml ignores that message and no other."""
    import warnings

    from numba.core.errors import NumbaPerformanceWarning

    assert os.environ["NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS"] == "0"
    message = "Grid size 1 will likely result in GPU under-utilization due to low occupancy."
    warnings.warn(NumbaPerformanceWarning(message), stacklevel=1)  # ignored
    with pytest.raises(NumbaPerformanceWarning):
        warnings.warn(NumbaPerformanceWarning("another performance warning"), stacklevel=1)
