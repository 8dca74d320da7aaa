"""bfloat16 matrix products on the NumPy engine (``backends/cpu_bf16.py``): the rounding
against its formula, oneDNN's products against float64 products of rounded operands, the
compiled step and epoch against a float64 reference, and ``mixed_bfloat16`` models."""

from __future__ import annotations

import os
import signal
import time
import warnings

import numpy as np
import pytest
from dlcore.backends import cpu_bf16, cpu_gemm, cpu_jit
from dlcore.backends.base import Workspace
from dlcore.backends.numpy_engine import NumpyEngine
from stack_reference import bfloat16

import dlcore
from dlcore import mixed_precision
from dlcore.layers import Dense

READY, WHY = cpu_bf16.status()
needs_bf16 = pytest.mark.skipif(not READY, reason=f"no bfloat16 products here: {WHY}")
needs_stack = pytest.mark.skipif(
    not cpu_jit.stack_available(), reason="Numba or SciPy is not installed"
)


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    monkeypatch.setenv(cpu_gemm.CACHE_ENVIRONMENT, "off")
    monkeypatch.delenv(cpu_gemm.ENVIRONMENT, raising=False)
    mixed_precision._warned.clear()
    yield
    mixed_precision._warned.clear()
    mixed_precision.set_global_policy("float32")


# --------------------------------------------------------------------------- rounding
def test_rounding_is_to_nearest_even_as_the_formula_says(rng):
    x = (rng.standard_normal(20000) * np.exp(rng.uniform(-20, 20, 20000))).astype(np.float32)
    got = cpu_bf16.from_bfloat16(cpu_bf16.to_bfloat16(x)).astype(np.float64)
    np.testing.assert_array_equal(got, bfloat16(x))
    # halfway cases: the lower 16 bits exactly 0x8000 go to the even neighbour
    ties = np.array([0x3F808000, 0x3F818000, 0xBF808000], dtype=np.uint32).view(np.float32)
    assert cpu_bf16.to_bfloat16(ties).tolist() == [0x3F80, 0x3F82, 0xBF80]


def test_rounding_keeps_nan_infinities_and_signed_zero_and_overflows_to_infinity():
    special = np.array(
        [np.nan, np.inf, -np.inf, -0.0, np.finfo(np.float32).max, 1e-40], dtype=np.float32
    )
    special[0] = np.array([0x7F800001], dtype=np.uint32).view(np.float32)[0]  # a signalling NaN
    bits = cpu_bf16.to_bfloat16(special)
    values = cpu_bf16.from_bfloat16(bits)
    assert np.isnan(values[0]) and bits[0] & 0x40  # made quiet, not rounded into infinity
    assert values[1] == np.inf and values[2] == -np.inf
    assert bits[3] == 0x8000
    assert values[4] == np.inf  # beyond bfloat16's largest finite value
    assert values[5] == pytest.approx(1e-40, rel=2**-8)  # subnormals round too
    out = np.empty(special.shape, dtype=np.uint16)
    assert cpu_bf16.to_bfloat16(special, out=out) is out
    np.testing.assert_array_equal(out, bits)


# --------------------------------------------------------------------------- status
def test_status_names_what_is_missing_and_the_fix(monkeypatch):
    monkeypatch.setattr(cpu_bf16, "cpu_flags", lambda: frozenset({"avx2"}))
    cpu_bf16.status.cache_clear()
    try:
        ready, why = cpu_bf16.status()
        assert not ready and "neither AVX-512 BF16 nor AMX" in why
        with pytest.raises(RuntimeError, match="not available here: this CPU has neither"):
            cpu_bf16.matmul(np.ones((2, 2), np.float32), np.ones((2, 2), np.float32), None)
        assert cpu_bf16.gemm_address() == 0
        monkeypatch.setattr(cpu_bf16, "cpu_flags", lambda: {"amx_bf16"})
        monkeypatch.setattr(cpu_bf16, "_library", lambda: "oneDNN is not installed (pip x)")
        cpu_bf16.status.cache_clear()
        assert cpu_bf16.status() == (False, "oneDNN is not installed (pip x)")
    finally:
        cpu_bf16.status.cache_clear()


def test_an_installed_onednn_that_cannot_load_says_why_and_the_fix(tmp_path, monkeypatch):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "libdnnl.so.3").write_text("not a shared library")
    monkeypatch.setattr(cpu_bf16.sys, "prefix", str(tmp_path))
    monkeypatch.setattr(cpu_bf16.ctypes.util, "find_library", lambda name: None)
    why = cpu_bf16._library.__wrapped__()  # not the process's cached answer
    assert isinstance(why, str)
    assert why.startswith("oneDNN is installed but cannot be loaded (")
    assert str(tmp_path / "lib" / "libdnnl.so.3") in why and "libgomp1" in why
    monkeypatch.setattr(cpu_bf16.sys, "prefix", str(tmp_path / "elsewhere"))
    assert cpu_bf16._library.__wrapped__().startswith("oneDNN is not installed (pip install")


def test_cpu_flags_are_the_first_cpus_gemm_flags(tmp_path, monkeypatch):
    from dlcore.benchmark import machine

    path = tmp_path / "cpuinfo"
    path.write_text("processor\t: 0\nflags\t\t: fpu avx512_bf16 amx_tile\n\nflags : other\n")
    read = machine.cpu_info
    monkeypatch.setattr(machine, "cpu_info", lambda: read(path))
    assert cpu_bf16.cpu_flags() == {"avx512_bf16", "amx_tile"}
    monkeypatch.setattr(machine, "cpu_info", lambda: read(tmp_path / "missing"))
    assert cpu_bf16.cpu_flags() == frozenset()


# --------------------------------------------------------------------------- products
@needs_bf16
@pytest.mark.parametrize("transposes", [(False, False), (True, False), (False, True)])
def test_matmul_is_the_float64_product_of_the_rounded_operands(rng, transposes):
    m, k, n = 37, 53, 29
    A = rng.standard_normal((k, m) if transposes[0] else (m, k)).astype(np.float32)
    B = rng.standard_normal((n, k) if transposes[1] else (k, n)).astype(np.float32)
    A, B = (A.T if transposes[0] else A), (B.T if transposes[1] else B)
    out = np.empty((m, n), dtype=np.float32)
    assert cpu_bf16.matmul(A, B, out) is out
    reference = bfloat16(A) @ bfloat16(B)
    scale = np.abs(bfloat16(A)) @ np.abs(bfloat16(B))
    assert np.all(np.abs(out - reference) <= 1e-6 * scale)  # float32 accumulation
    assert np.abs(out - A.astype(np.float64) @ B).max() > 1e-3  # it did round


@needs_bf16
def test_matmul_of_empty_operands_and_bad_outputs():
    out = np.full((3, 2), 7.0, dtype=np.float32)
    cpu_bf16.matmul(np.ones((3, 0), np.float32), np.ones((0, 2), np.float32), out)
    assert not out.any()
    with pytest.raises(ValueError, match=r"out must be float32 C-contiguous \(3, 2\)"):
        cpu_bf16.matmul(np.ones((3, 4), np.float32), np.ones((4, 2), np.float32), out.T.T[:, :1])


# --------------------------------------------------------------------------- the step
def _reference(X, labels, weights, biases, bfloat16_layers):
    """A ReLU stack's float64 step (softmax, cross-entropy) whose products in
    ``bfloat16_layers`` take operands rounded (from float32) to bfloat16."""

    def product(layer, A, B):
        if layer in bfloat16_layers:
            return bfloat16(A) @ bfloat16(B)
        return A @ B

    outputs = [X.astype(np.float64)]
    for layer, (W, b) in enumerate(zip(weights, biases)):
        Z = product(layer, outputs[-1], W) + b
        outputs.append(np.maximum(Z, 0) if layer < len(weights) - 1 else Z)
    logits = outputs[-1]
    P = np.exp(logits - logits.max(axis=1, keepdims=True))
    P /= P.sum(axis=1, keepdims=True)
    delta = (P - np.eye(P.shape[1])[labels]) / len(X)
    gradients = [None] * len(weights)
    for layer in range(len(weights) - 1, -1, -1):
        if layer < len(weights) - 1:
            delta = delta * (outputs[layer + 1] > 0)
        gradients[layer] = product(layer, outputs[layer].T, delta)
        delta = product(layer, delta, weights[layer].T)
    return gradients


def _stack(rng, widths=(64, 24, 16, 10), rows=32):
    X = rng.standard_normal((rows, widths[0])).astype(np.float32)
    labels = rng.integers(0, widths[-1], rows)
    weights = [
        (rng.standard_normal((i, o)) * np.sqrt(2 / i)).astype(np.float32)
        for i, o in zip(widths[:-1], widths[1:])
    ]
    biases = [(0.1 * rng.standard_normal(o)).astype(np.float32) for o in widths[1:]]
    return X, labels, weights, biases


def _step_gradients(engine, step, X, labels, weights, biases, product_dtypes):
    weight_grads = [np.zeros_like(W) for W in weights]
    bias_grads = [np.zeros_like(b) for b in biases]
    workspaces = [Workspace(engine) for _ in range(len(weights) + 1)]
    for _ in range(2):  # the second step runs the plan the first one made
        step(
            X,
            labels,
            weights,
            biases,
            weight_grads,
            bias_grads,
            ["relu"] * (len(weights) - 1),
            workspaces=workspaces,
            product_dtypes=product_dtypes,
        )
    return weight_grads


@needs_bf16
@needs_stack
@pytest.mark.parametrize("bfloat16_layers", [(0, 1, 2), (1,)], ids=["all", "middle"])
def test_the_compiled_step_rounds_the_products_of_its_bfloat16_layers(
    rng, monkeypatch, bfloat16_layers
):
    engine = NumpyEngine()
    X, labels, weights, biases = _stack(rng)
    product_dtypes = ["bfloat16" if i in bfloat16_layers else None for i in range(3)]
    got = _step_gradients(
        engine, engine.dense_stack_step, X, labels, weights, biases, product_dtypes
    )
    rounded = _reference(X, labels, weights, biases, bfloat16_layers)
    exact = _reference(X, labels, weights, biases, ())
    for layer, (g, r, e) in enumerate(zip(got, rounded, exact)):
        scale = np.abs(e).max()
        assert np.abs(g - r).max() <= 2e-5 * scale, layer
        if layer <= max(bfloat16_layers):  # the rounding reaches the layers below it
            assert np.abs(g - e).max() > 1e-4 * scale, layer
    # the operation-by-operation path without Numba (oneDNN through ctypes) computes the
    # same products
    monkeypatch.setattr(cpu_jit, "stack_available", lambda: False)
    unfused = _step_gradients(
        engine,
        super(NumpyEngine, engine).dense_stack_step,
        X,
        labels,
        weights,
        biases,
        product_dtypes,
    )
    for g, u in zip(got, unfused):
        np.testing.assert_allclose(g, u, rtol=1e-5, atol=1e-7 * np.abs(u).max())


def test_the_numpy_engine_refuses_other_product_dtypes_before_any_work(rng):
    engine = NumpyEngine()
    X, labels, weights, biases = _stack(rng)
    with pytest.raises(ValueError, match="float32 products in bfloat16 only, not float32 prod"):
        engine.dense_forward(X, weights[0], biases[0], "relu", product_dtype="float16")
    X64 = X.astype(np.float64)
    with pytest.raises(ValueError, match="bfloat16 only, not float64 products in bfloat16"):
        engine.dense_forward(
            X64, weights[0].astype(np.float64), None, "relu", product_dtype="bfloat16"
        )


def test_engines_without_reduced_products_refuse_them():
    from dlcore.backends.array_api_strict_engine import ArrayAPIStrictEngine

    engine = ArrayAPIStrictEngine()
    assert engine.products_in("bfloat16") == (False, "")
    with pytest.raises(ValueError, match="has no bfloat16 matrix products"):
        engine.dense_forward(None, None, None, "relu", product_dtype="bfloat16")


# --------------------------------------------------------------------------- models
def _model(output_dtype=None):
    return dlcore.Sequential(
        [
            Dense(24, activation="relu", input_shape=(64,)),
            Dense(16, activation="relu"),
            Dense(10, activation="softmax", **({"dtype": output_dtype} if output_dtype else {})),
        ]
    )


@needs_bf16
def test_a_mixed_bfloat16_model_predicts_with_bfloat16_products_and_no_warning(rng):
    X, labels, weights, biases = _stack(rng, rows=9)
    mixed_precision.set_global_policy("mixed_bfloat16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = _model(output_dtype="float32")
        model.build((None, 64))
        model.set_weights([a for pair in zip(weights, biases) for a in pair])
        got = model.predict(X, verbose=0)
    assert [layer.product_dtype for layer in model.layers] == ["bfloat16", "bfloat16", None]
    assert {layer.run_dtype for layer in model.layers} == {"float32"}
    assert got.dtype == np.float32
    hidden = X.astype(np.float64)
    for W, b in zip(weights[:2], biases[:2]):
        hidden = np.maximum(bfloat16(hidden) @ bfloat16(W) + b, 0)
    logits = hidden @ weights[2] + biases[2]  # the float32 output layer does not round
    P = np.exp(logits - logits.max(axis=1, keepdims=True))
    P /= P.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(got, P, rtol=1e-4, atol=1e-6)


@needs_bf16
@needs_stack
def test_mixed_bfloat16_fit_runs_the_epoch_loop_to_the_bit_of_the_steps(rng, monkeypatch):
    epochs_run = []
    original = NumpyEngine.dense_stack_epoch

    def spy(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        epochs_run.append(result is not None)
        return result

    monkeypatch.setattr(NumpyEngine, "dense_stack_epoch", spy)
    x = rng.standard_normal((70, 64)).astype(np.float32)
    y = rng.integers(0, 10, 70)

    class BatchHook(dlcore.callbacks.Callback):  # fit then runs the steps one by one
        def on_train_batch_begin(self, batch, logs=None):
            return None

    results = []
    mixed_precision.set_global_policy("mixed_bfloat16")
    for callbacks in ([], [BatchHook()]):
        dlcore.set_random_seed(5)
        model = _model()
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        history = model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=callbacks)
        results.append((history.history["loss"], model.get_weights()))
        assert [layer.product_dtype for layer in model.layers] == ["bfloat16"] * 3
    assert epochs_run == [True, True]  # the first fit's epochs; the second ran steps
    (loss_a, weights_a), (loss_b, weights_b) = results
    assert loss_a == loss_b
    for a, b in zip(weights_a, weights_b):
        np.testing.assert_array_equal(a, b)
    dlcore.set_random_seed(5)
    mixed_precision.set_global_policy("float32")
    plain = _model()
    plain.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    plain_loss = plain.fit(x, y, batch_size=16, epochs=2, verbose=0).history["loss"]
    assert plain_loss != loss_a  # bfloat16 rounding changed the numbers
    np.testing.assert_allclose(plain_loss, loss_a, rtol=2e-2)


def _train_wide_bfloat16_model() -> float:
    """Two epochs of a seeded ``mixed_bfloat16`` model wide enough for oneDNN to run its
    products on several OpenMP threads; the last epoch's loss."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((512, 784)).astype(np.float32)
    y = rng.integers(0, 10, 512)
    mixed_precision.set_global_policy("mixed_bfloat16")
    dlcore.set_random_seed(3)
    model = dlcore.Sequential(
        [Dense(256, activation="relu", input_shape=(784,)), Dense(10, activation="softmax")]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    history = model.fit(x, y, batch_size=128, epochs=2, verbose=0)
    assert [layer.product_dtype for layer in model.layers] == ["bfloat16"] * 2
    return float(history.history["loss"][-1])


@needs_bf16
@needs_stack
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_child_forked_after_bfloat16_products_trains_in_bfloat16_too():
    # GNU OpenMP's threads do not survive fork(): without cpu_bf16's fork hook the child's
    # first parallel product waits for them forever
    parent_loss = _train_wide_bfloat16_model()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report the loss, never return into pytest
        code = 1
        try:
            os.write(write_end, repr(_train_wide_bfloat16_model()).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    deadline = time.monotonic() + 120
    done, status = os.waitpid(pid, os.WNOHANG)
    while not done:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read_end)
            pytest.fail("the forked child's bfloat16 fit hung for 120 s")
        time.sleep(0.02)
        done, status = os.waitpid(pid, os.WNOHANG)
    with os.fdopen(read_end) as pipe:
        reported = pipe.read()
    assert os.waitstatus_to_exitcode(status) == 0, "the forked child's bfloat16 fit failed"
    child_loss = float(reported)
    np.testing.assert_allclose(child_loss, parent_loss, rtol=1e-3)


def test_without_bfloat16_products_the_policy_warns_why_and_computes_float32(monkeypatch):
    reason = "this CPU has neither AVX-512 BF16 nor AMX (test)"
    monkeypatch.setattr(NumpyEngine, "products_in", lambda self, dtype: (False, reason))
    mixed_precision.set_global_policy("mixed_bfloat16")
    model = _model()
    with pytest.warns(
        RuntimeWarning,
        match=r"no bfloat16 kernels \(bfloat16 is not accelerated here: this CPU has neither",
    ):
        model.predict(np.ones((2, 64), dtype=np.float32), verbose=0)
    assert [layer.product_dtype for layer in model.layers] == [None] * 3


def test_a_float64_model_keeps_float64_products(monkeypatch):
    monkeypatch.setattr(NumpyEngine, "products_in", lambda self, dtype: (True, "oneDNN"))
    dlcore.set_floatx("float64")
    mixed_precision.set_global_policy("mixed_bfloat16")
    model = _model()
    with pytest.warns(RuntimeWarning, match="compute in float64"):
        model.predict(np.ones((2, 64)), verbose=0)
    assert [layer.product_dtype for layer in model.layers] == [None] * 3


@needs_bf16
@needs_stack
def test_a_step_with_bfloat16_layers_runs_the_others_on_one_openblas_thread(monkeypatch):
    """No timing: bfloat16 layers on oneDNN, the rest on OpenBLAS's calling thread alone
    (its waiting threads would take the cores from oneDNN's), restored only for the same
    layers."""
    step_products = cpu_gemm.products(32, (64, 24, 10))

    def never(*_):
        raise AssertionError("a step with bfloat16 layers is not timed")

    plan = cpu_gemm.choose(step_products, 2, np.dtype("float32"), never, never, (0,))
    assert plan[0, :, 0].tolist()[:2] == [cpu_gemm.ONEDNN_BF16] * 2
    assert plan[1, :, 0].tolist() == [cpu_gemm.OPENBLAS_ONE_THREAD] * 3
    choices = plan[:, :, 0].ravel().tolist()
    float32 = np.dtype("float32")
    assert cpu_gemm.restore(choices, step_products, 2, float32, (0,)) is not None
    assert cpu_gemm.restore(choices, step_products, 2, float32, (0, 1)) is None
    assert cpu_gemm.restore(choices, step_products, 2, float32) is None
    widths = (64, 24, 10)
    assert cpu_gemm.plan_key(float32, 32, widths, (0,)) != cpu_gemm.plan_key(float32, 32, widths)
    # a library forced with DLCORE_GEMM computes the float32 layers' products
    monkeypatch.setenv(cpu_gemm.ENVIRONMENT, "numba")
    plan = cpu_gemm.choose(step_products, 2, float32, never, never, (0,))
    assert plan[0, :2, 0].tolist() == [cpu_gemm.ONEDNN_BF16] * 2
    assert plan[1, :, 0].tolist() == [cpu_gemm.NUMBA] * 3
