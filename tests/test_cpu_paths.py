"""The NumPy engine's fast paths: workspaces, the Numba CPU JIT optimizers, cache-sized
chunks, and a training step that allocates no array and stays within its memory budget."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from dlcore.backends import cpu_bf16, cpu_chunks, cpu_gemm, cpu_jit, xp_optimizers
from dlcore.backends.base import Engine, Workspace
from dlcore.backends.names import OPTIMIZER_RULES
from dlcore.backends.numpy_engine import NumpyEngine
from stack_reference import reference_stack_step
from test_optimizers import CASE_IDS, CASES, _problem

import dlcore
from dlcore import backends
from dlcore.layers import Dense
from dlcore.models import Sequential
from dlcore.optimizers import Adam

# NumPy reports every array buffer it allocates to tracemalloc in this domain.
NUMPY_DOMAIN = np.lib.tracemalloc_domain


@pytest.fixture
def without_jit(monkeypatch):
    """The NumPy engine as it runs where Numba is not installed."""
    monkeypatch.setattr(cpu_jit, "available", lambda: False)


def _steps(optimizer, w0, grads, dtype):
    engine = backends.get("numpy")
    params = engine.asarray(w0.copy(), dtype=dtype)
    optimizer.build(engine, w0.size, dtype)
    for g in grads:
        optimizer.apply(engine, params, engine.asarray(g, dtype=dtype))
    return params


def _long_problem(size: int):
    """The optimizer tests' problem tiled to ``size`` elements (several chunks and threads)."""
    w0, grads = _problem()
    reps = -(-size // w0.size)
    return np.tile(w0, reps)[:size], [np.tile(g, reps)[:size] for g in grads]


@pytest.mark.skipif(not cpu_jit.available(), reason="Numba is not installed")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_jit_optimizers_round_like_the_numpy_code(monkeypatch, case, dtype):
    _, cls, _, hyper = case
    w0, grads = _long_problem(3 * cpu_chunks.PARALLEL_MIN_ELEMENTS + 5)
    # split over three threads into uneven parts, as large models are
    monkeypatch.setattr(cpu_chunks, "SPLIT_MIN_ELEMENTS", 1000)
    monkeypatch.setattr(backends.get("numpy"), "_chunks", cpu_chunks.ChunkRunner(threads=3))
    jitted = _steps(cls(**hyper), w0, grads, dtype)
    monkeypatch.setattr(cpu_jit, "available", lambda: False)
    plain = _steps(cls(**hyper), w0, grads, dtype)
    # the same operations in the same order and dtype; the last bit may differ where
    # the compiler fuses a multiply and an add, so not bit-identical
    tolerance = 1e-6 if dtype == "float32" else 1e-14
    np.testing.assert_allclose(jitted, plain, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("amsgrad", [False, True])
def test_chunked_adam_over_several_threads_matches_the_generic_code(
    monkeypatch, without_jit, amsgrad
):
    monkeypatch.setattr(cpu_chunks, "CHUNK_BYTES", 64 * 8)  # 64 float64 elements a chunk
    monkeypatch.setattr(cpu_chunks, "PARALLEL_MIN_ELEMENTS", 100)
    w0, grads = _long_problem(1000 + 3)
    engine = backends.get("numpy")
    engine._chunks = cpu_chunks.ChunkRunner(threads=3)  # uneven shares, a short last chunk
    hyper = dict(learning_rate=0.1, beta_1=0.7, beta_2=0.8, epsilon=1e-3, amsgrad=amsgrad)
    chunked = _steps(Adam(**hyper), w0, grads, "float64")
    engine._chunks = cpu_chunks.ChunkRunner()
    strict = backends.get("array_api_strict")
    params = strict.asarray(w0.copy(), dtype="float64")
    optimizer = Adam(**hyper)
    optimizer.build(strict, w0.size, "float64")
    for g in grads:
        optimizer.apply(strict, params, strict.asarray(g, dtype="float64"))
    np.testing.assert_array_equal(chunked, strict.to_numpy(params))


def test_fast_steps_are_for_known_rules():
    assert set(NumpyEngine._JIT_STEPS) <= set(OPTIMIZER_RULES)
    assert set(NumpyEngine._CHUNKED_STEPS) <= set(OPTIMIZER_RULES)


@pytest.mark.parametrize("jit", [True, False], ids=["with-numba", "without-numba"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_a_rule_without_a_fast_step_runs_the_generic_one(monkeypatch, case, jit):
    _, cls, _, hyper = case
    monkeypatch.setattr(cpu_jit, "available", lambda: jit)
    monkeypatch.delitem(NumpyEngine._JIT_STEPS, cls.rule, raising=False)
    monkeypatch.delitem(NumpyEngine._CHUNKED_STEPS, cls.rule, raising=False)
    calls = []
    generic = xp_optimizers.STEPS[cls.rule]
    monkeypatch.setitem(
        xp_optimizers.STEPS, cls.rule, lambda *args: calls.append(1) or generic(*args)
    )
    w0, grads = _problem()
    numpy_result = _steps(cls(**hyper), w0, grads, "float32")
    assert len(calls) == len(grads)
    strict = backends.get("array_api_strict")
    params = strict.asarray(w0.copy(), dtype="float32")
    optimizer = cls(**hyper)
    optimizer.build(strict, w0.size, "float32")
    for g in grads:
        optimizer.apply(strict, params, strict.asarray(g, dtype="float32"))
    np.testing.assert_array_equal(numpy_result, strict.to_numpy(params))


def test_workspace_reuses_one_array_per_name_shape_and_dtype():
    engine = backends.get("numpy")
    workspace = Workspace(engine)
    first = workspace.array("Z", (4, 3), "float32")
    assert workspace.array("Z", (4, 3), np.dtype("float32")) is not None
    assert workspace.array("Z", (4, 3), "float32") is first
    assert workspace.array("Z", (2, 3), "float32") is not first  # a smaller last batch
    assert workspace.array("Y", (4, 3), "float32") is not first
    assert workspace.array("Z", (4, 3), "float64").dtype == np.float64
    assert workspace.array("mask", (4, 3), "bool").dtype == np.bool_
    assert workspace.nbytes == 4 * 3 * 4 + 2 * 3 * 4 + 4 * 3 * 4 + 4 * 3 * 8 + 4 * 3 * 1
    workspace.clear()
    assert workspace.array("Z", (4, 3), "float32") is not first


@pytest.mark.parametrize("activation", ["linear", "relu", "tanh", "sigmoid", "softmax", "gelu"])
def test_operations_give_the_same_results_with_a_workspace(engine, rng, activation):
    N, I, O = 7, 5, 4
    X, W, b = rng.standard_normal((N, I)), rng.standard_normal((I, O)), rng.standard_normal(O)
    upstream = rng.standard_normal((N, O))
    labels = np.eye(O)[rng.integers(0, O, N)]
    to = lambda a: engine.asarray(a, dtype="float64")  # noqa: E731
    workspace = Workspace(engine)

    def step(ws):
        Z, Y = engine.dense_forward(to(X), to(W), to(b), activation, workspace=ws)
        outputs = {"Y": engine.to_numpy(Y)}
        dW, db = engine.zeros((I, O), dtype="float64"), engine.zeros((O,), dtype="float64")
        dX = engine.dense_backward(
            to(upstream), to(X), to(W), Z, Y, activation, dW=dW, db=db, workspace=ws
        )
        outputs |= {"dX": engine.to_numpy(dX), "dW": engine.to_numpy(dW), "db": engine.to_numpy(db)}
        P = np.exp(X @ W) / np.exp(X @ W).sum(axis=1, keepdims=True)
        loss = engine.loss("categorical_crossentropy", to(P), to(labels), workspace=ws)
        outputs["loss"] = engine.scalars_to_numpy([loss])
        gradient = engine.backprop_softmax_crossentropy(to(P), to(labels), workspace=ws)
        outputs["gradient"] = engine.to_numpy(gradient)
        rows = engine.take_rows(
            to(X),
            engine.asarray(np.array([3, 0, 6]), dtype="int64"),
            out=None if ws is None else ws.array("rows", (3, I), "float64"),
        )
        outputs["rows"] = engine.to_numpy(rows)
        label_ids = engine.asarray(labels.argmax(axis=1), dtype="int64")
        counts = [
            engine.count_correct("categorical", to(P), to(labels), workspace=ws),
            engine.count_correct("sparse", to(P), label_ids, workspace=ws),
            engine.count_correct("binary", to(P), to(labels), workspace=ws),
        ]
        outputs["counts"] = engine.scalars_to_numpy(counts)
        return outputs

    fresh = step(None)
    step(workspace)  # fills the workspace; the second call reuses it
    reused = step(workspace)
    for key, value in fresh.items():
        np.testing.assert_allclose(reused[key], value, rtol=1e-12, atol=1e-14, err_msg=key)
    np.testing.assert_array_equal(fresh["rows"], X[[3, 0, 6]])
    P = np.exp(X @ W) / np.exp(X @ W).sum(axis=1, keepdims=True)
    agree = P.argmax(axis=1) == labels.argmax(axis=1)
    expected_counts = [agree.sum(), agree.sum(), ((P > 0.5) == (labels > 0.5)).sum()]
    np.testing.assert_array_equal(reused["counts"], expected_counts)


def _course_model(widths, seed=0, metrics=None):
    dlcore.set_random_seed(seed)
    model = Sequential(
        [Dense(widths[1], activation="relu", input_shape=(widths[0],))]
        + [Dense(w, activation="relu") for w in widths[2:-1]]
        + [Dense(widths[-1], activation="softmax")]
    )
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=metrics)
    return model


def _data(samples, widths, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((samples, widths[0]), dtype=np.float32)
    y = np.eye(widths[-1], dtype=np.float32)[rng.integers(0, widths[-1], samples)]
    return x, y


class _CountArrays(dlcore.callbacks.Callback):
    """Per training step: the NumPy array buffers still alive at its end that were not
    at its start (exact), and how far traced memory rose above its start at any moment
    (catches arrays allocated and freed within the step)."""

    def __init__(self):
        super().__init__()
        self.new_arrays: list[int] = []
        self.peak_rise: list[int] = []

    def on_train_batch_begin(self, batch, logs=None):
        self._before = tracemalloc.take_snapshot()
        tracemalloc.reset_peak()
        self._start = tracemalloc.get_traced_memory()[0]

    def on_train_batch_end(self, batch, logs=None):
        self.peak_rise.append(tracemalloc.get_traced_memory()[1] - self._start)
        only_arrays = [tracemalloc.DomainFilter(inclusive=True, domain=NUMPY_DOMAIN)]
        new = tracemalloc.take_snapshot().filter_traces(only_arrays)
        diff = new.compare_to(self._before.filter_traces(only_arrays), "traceback")
        self.new_arrays.append(sum(max(stat.count_diff, 0) for stat in diff))


# Every array of a step of this model holds at least batch × 128 float32 values (64 KiB).
# What a step may allocate and free: NumPy's iteration buffer of a broadcasting ufunc
# (bias add, row normalisation; np.getbufsize() float32 elements), and
# Python's own small objects (views, tuples, floats).
WIDTHS, BATCH = (128, 256, 256, 128), 128
SMALLEST_ARRAY_BYTES = BATCH * min(WIDTHS) * 4
TRANSIENT_BYTES = np.getbufsize() * 4 + 8 * 1024


def _fit_counting(epochs, model=None, metrics=None):
    x, y = _data(2 * BATCH + 40, WIDTHS)  # two full batches and a last one of 40
    counter = _CountArrays()
    with dlcore.use_backend("numpy"):
        if model is None:
            model = _course_model(WIDTHS, metrics=metrics)
        tracemalloc.start()
        try:
            model.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0, callbacks=[counter])
        finally:
            tracemalloc.stop()
    return model, counter


@pytest.mark.parametrize("metrics", [None, ["accuracy"]], ids=["loss", "accuracy"])
@pytest.mark.parametrize(
    ("jit", "policy"),
    [(True, "float32"), (False, "float32"), (True, "mixed_bfloat16"), ("layers", "mixed_bfloat16")],
    ids=["numba-jit", "numpy-only", "numba-jit-bfloat16-products", "bfloat16-layer-by-layer"],
)
def test_a_training_step_allocates_no_array_after_the_first_epoch(
    monkeypatch, jit, policy, metrics
):
    if jit and not cpu_jit.available():
        pytest.skip("Numba is not installed")
    if policy == "mixed_bfloat16" and not cpu_bf16.status()[0]:
        pytest.skip(f"no bfloat16 products here: {cpu_bf16.status()[1]}")
    if not jit:
        monkeypatch.setattr(cpu_jit, "available", lambda: False)
    if jit == "layers":  # each Dense layer's products on their own, through its workspace
        monkeypatch.setattr(NumpyEngine, "dense_stack_step", Engine.dense_stack_step)
        monkeypatch.setattr(NumpyEngine, "dense_stack_epoch", Engine.dense_stack_epoch)
    dlcore.mixed_precision.set_global_policy(policy)  # undone by conftest
    model, _ = _fit_counting(epochs=1, metrics=metrics)
    assert {layer.product_dtype for layer in model.layers} == {
        "bfloat16" if policy == "mixed_bfloat16" else None
    }
    _, counter = _fit_counting(epochs=2, model=model)
    assert counter.new_arrays == [0] * 6
    assert max(counter.peak_rise) < TRANSIENT_BYTES < SMALLEST_ARRAY_BYTES, counter.peak_rise


def test_the_first_steps_allocate_and_the_counter_sees_it():
    """The counter above can fail: a new model's first steps allocate its workspaces."""
    _, counter = _fit_counting(epochs=1)
    assert counter.new_arrays[0] > 0
    assert counter.peak_rise[0] > SMALLEST_ARRAY_BYTES


@pytest.mark.parametrize("choosing", [False, True], ids=["steady", "choosing-products"])
def test_peak_memory_of_fit_stays_within_its_budget(choosing):
    """Peak traced memory of fit is at most 1.2 × (weights + Adam's state + one batch's
    activations + the training data). The fit that chooses the matrix product libraries
    (the first of a batch size in a process) may add one copy of the weights and of the
    optimizer state, on which the epoch loop times its steps."""
    widths, batch = (784, 256, 256, 10), 128
    with dlcore.use_backend("numpy"):
        # Numba's compiling of the kernels for these shapes is the process's, once: done
        # first, with the choice of libraries, which is made again inside if `choosing`
        warm_x, warm_y = _data(batch, widths)
        _course_model(widths).fit(warm_x, warm_y, batch_size=batch, epochs=1, verbose=0)
        if choosing:
            cpu_gemm._PLANS.clear()
        tracemalloc.start()
        try:
            x, y = _data(40 * batch, widths)
            model = _course_model(widths)
            model.fit(x, y, batch_size=batch, epochs=2, verbose=0)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    itemsize = 4
    weights = model.count_params() * itemsize
    optimizer_state = 2 * weights  # Adam's m and v
    activations = batch * sum(widths) * itemsize  # every layer's output, the input included
    data = x.nbytes + y.nbytes
    budget = weights + optimizer_state + activations + data
    timing_copies = weights + optimizer_state if choosing else 0
    assert peak <= 1.2 * budget + timing_copies, (
        f"peak {peak / 1e6:.2f} MB, budget {budget / 1e6:.2f} MB "
        f"+ {timing_copies / 1e6:.2f} MB of copies to time on"
    )


# ---------------------------------------------------------------------- dense_stack_step
@pytest.mark.parametrize(
    "activations",
    [(), ("relu",), ("tanh", "sigmoid"), ("linear", "relu", "tanh")],
    ids=["softmax-only", "relu", "tanh-sigmoid", "linear-relu-tanh"],
)
@pytest.mark.parametrize("sparse", [False, True], ids=["one-hot", "labels"])
def test_dense_stack_step_matches_a_float64_reference(engine, rng, activations, sparse):
    widths = [7, 6, 5, 4][: len(activations) + 1] + [3]
    N = 9
    X = rng.standard_normal((N, widths[0]))
    labels = rng.integers(0, widths[-1], N)
    Y = labels if sparse else np.eye(widths[-1])[labels]
    weights = [rng.standard_normal((i, o)) for i, o in zip(widths[:-1], widths[1:])]
    biases = [rng.standard_normal(o) for o in widths[1:]]
    to = lambda a: engine.asarray(a, dtype="float64")  # noqa: E731
    weight_grads = [engine.zeros(W.shape, dtype="float64") for W in weights]
    bias_grads = [engine.zeros(b.shape, dtype="float64") for b in biases]
    workspaces = [Workspace(engine) for _ in range(len(weights) + 1)]
    for _ in range(2):  # the second step reuses the workspaces
        loss, P = engine.dense_stack_step(
            to(X),
            engine.asarray(Y, dtype="int64" if sparse else "float64"),
            [to(W) for W in weights],
            [to(b) for b in biases],
            weight_grads,
            bias_grads,
            list(activations),
            workspaces=workspaces,
        )
    expected = reference_stack_step(X, Y, weights, biases, activations)
    np.testing.assert_allclose(engine.scalars_to_numpy([loss])[0], expected[0], rtol=1e-12)
    np.testing.assert_allclose(engine.to_numpy(P), expected[1], rtol=1e-12, atol=1e-15)
    for got, want in zip(weight_grads + bias_grads, expected[2] + expected[3]):
        np.testing.assert_allclose(engine.to_numpy(got), want, rtol=1e-10, atol=1e-13)


@pytest.mark.skipif(not cpu_jit.stack_available(), reason="Numba or SciPy is not installed")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fit_with_the_compiled_stack_equals_fit_without_it(monkeypatch, dtype):
    x, y = _data(100, (12, 10, 8, 4))

    def train():
        previous = dlcore.floatx()
        dlcore.set_floatx(dtype)
        try:
            with dlcore.use_backend("numpy"):
                model = _course_model((12, 10, 8, 4), seed=3)
                model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["acc"])
                history = model.fit(x, y, batch_size=16, epochs=3, verbose=0, validation_split=0.2)
        finally:
            dlcore.set_floatx(previous)
        return history.history, model.get_weights(), model._stack is not None

    compiled_history, compiled_weights, used_stack = train()
    monkeypatch.setattr(cpu_jit, "stack_available", lambda: False)
    plain_history, plain_weights, _ = train()
    assert used_stack
    tolerance = 2e-5 if dtype == "float32" else 1e-12
    for key, values in plain_history.items():
        np.testing.assert_allclose(compiled_history[key], values, rtol=tolerance, err_msg=key)
    for got, want in zip(compiled_weights, plain_weights):
        np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance)


def test_models_the_stack_step_cannot_train_take_the_layer_by_layer_path():
    with dlcore.use_backend("numpy"):
        regularized = Sequential(
            [
                Dense(4, activation="relu", input_shape=(3,), kernel_regularizer="l2"),
                Dense(2, activation="softmax"),
            ]
        )
        logits = Sequential([Dense(2, input_shape=(3,))])
        gelu = Sequential(
            [Dense(4, activation="gelu", input_shape=(3,)), Dense(2, activation="softmax")]
        )
        plain = Sequential(
            [Dense(4, activation="relu", input_shape=(3,)), Dense(2, activation="softmax")]
        )
        x, y = _data(8, (3, 2))
        for model, loss, expected in [
            (regularized, "categorical_crossentropy", False),
            (logits, dlcore.losses.CategoricalCrossentropy(from_logits=True), False),
            (gelu, "categorical_crossentropy", False),
            (plain, "mse", False),
            (plain, "categorical_crossentropy", True),
        ]:
            model.compile(optimizer="sgd", loss=loss)
            model.fit(x, y, epochs=1, verbose=0)
            assert (model._stack is not None) is expected, (model.layers, loss)
