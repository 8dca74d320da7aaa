"""The library behind each matrix product of the NumPy engine's compiled dense step
(``backends/cpu_gemm.py``): every library computes the step right, ``DLCORE_GEMM`` forces
one and refuses what cannot be used, the fastest candidate is kept, and plans are cached
per process and in ``DLCORE_GEMM_CACHE``'s file."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from dlcore.backends import cpu_gemm, cpu_jit
from dlcore.backends.base import Workspace
from dlcore.backends.numpy_engine import NumpyEngine
from stack_reference import bfloat16, reference_stack_step

import dlcore
from dlcore.layers import Dense
from dlcore.models import Sequential

pytestmark = pytest.mark.skipif(
    not cpu_jit.stack_available(), reason="Numba or SciPy is not installed"
)


@pytest.fixture(autouse=True)
def fresh_plans(monkeypatch):
    """No plan chosen before, no library forced, no cache file."""
    monkeypatch.delenv(cpu_gemm.ENVIRONMENT, raising=False)
    monkeypatch.setenv(cpu_gemm.CACHE_ENVIRONMENT, "off")
    monkeypatch.setattr(cpu_gemm, "_PLANS", {})


def _require(name):
    library = {found.name: found for found in cpu_gemm.libraries()}[name]
    if not library.available:
        pytest.skip(f"{name}: {library.detail}")


def _owners(choices):
    return {cpu_gemm._LIBRARY_OF[code] for code in choices}


def _step(engine, X, Y, weights, biases, activations, dtype, steps=2):
    """``dense_stack_step`` ``steps`` times on fresh workspaces; loss, P and gradients."""
    weight_grads = [np.zeros(W.shape, dtype=dtype) for W in weights]
    bias_grads = [np.zeros(b.shape, dtype=dtype) for b in biases]
    workspaces = [Workspace(engine) for _ in range(len(weights) + 1)]
    for _ in range(steps):  # the second step runs the plan the first one chose
        loss, P = engine.dense_stack_step(
            X,
            Y,
            [W.astype(dtype) for W in weights],
            [b.astype(dtype) for b in biases],
            weight_grads,
            bias_grads,
            list(activations),
            workspaces=workspaces,
        )
    return float(loss), np.array(P), weight_grads, bias_grads


@pytest.mark.parametrize("library", cpu_gemm.LIBRARIES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("sparse", [False, True], ids=["one-hot", "labels"])
def test_every_library_computes_the_step_of_a_float64_reference(
    monkeypatch, rng, library, dtype, sparse
):
    """Forced with ``DLCORE_GEMM``, each library computes every product of the step."""
    _require(library)
    monkeypatch.setenv(cpu_gemm.ENVIRONMENT, library)
    widths, rows, activations = (13, 9, 7, 5), 11, ("relu", "tanh")
    X = rng.standard_normal((rows, widths[0]))
    labels = rng.integers(0, widths[-1], rows)
    weights = [rng.standard_normal((i, o)) for i, o in zip(widths[:-1], widths[1:])]
    biases = [rng.standard_normal(o) for o in widths[1:]]
    targets = labels if sparse else np.eye(widths[-1], dtype=dtype)[labels]
    loss, P, weight_grads, bias_grads = _step(
        NumpyEngine(), X.astype(dtype), targets, weights, biases, activations, dtype
    )
    choices = cpu_gemm.cached_choices(cpu_gemm.plan_key(np.dtype(dtype), rows, widths))
    assert choices is not None and _owners(choices) == {library}
    expected = reference_stack_step(X, labels, weights, biases, activations)
    rtol, atol = (1e-10, 1e-12) if dtype == "float64" else (2e-4, 2e-5)
    np.testing.assert_allclose(loss, expected[0], rtol=rtol)
    np.testing.assert_allclose(P, expected[1], rtol=rtol, atol=atol)
    for got, want in zip(weight_grads + bias_grads, expected[2] + expected[3]):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


# Numba's np.dot warns at compiling it for strided views (the step never passes those)
@pytest.mark.filterwarnings("ignore:np.*is faster on contiguous arrays")
@pytest.mark.parametrize("code", range(len(cpu_gemm.CANDIDATES)), ids=cpu_gemm.CANDIDATES)
@pytest.mark.parametrize("kind", range(len(cpu_gemm.PRODUCTS)), ids=cpu_gemm.PRODUCTS)
@pytest.mark.parametrize("strided", [False, True], ids=["contiguous", "strided"])
def test_each_candidate_computes_a_product_of_any_strides(rng, code, kind, strided):
    """Every candidate against float64 NumPy, on the operands a step passes and on views
    with other strides (BLIS takes any, MKL's kernel then falls back to np.dot)."""
    _require(cpu_gemm._LIBRARY_OF[code])
    m, n, k = 9, 7, 13
    product = cpu_gemm.Product(0, kind, m, n, k)
    trans_a, trans_b = product.transposes
    A = rng.standard_normal((k, m) if trans_a else (m, k)).astype("float32")
    B = rng.standard_normal((n, k) if trans_b else (k, n)).astype("float32")
    if strided:  # every other row and column of larger arrays
        A = np.repeat(np.repeat(A, 2, axis=0), 2, axis=1)[::2, ::2]
        B = np.repeat(np.repeat(B, 2, axis=0), 2, axis=1)[::2, ::2]
    A, B = (A.T if trans_a else A), (B.T if trans_b else B)
    plan = cpu_gemm.empty_plan(1)
    assert cpu_gemm.set_choice(plan, product, code, np.dtype("float32"))
    C = np.full((m, n), np.nan, dtype="float32")
    scratch = cpu_gemm.NO_SCRATCH  # a bfloat16 product allocates its own then
    cpu_gemm.compiled_product()(plan, 0, kind, cpu_gemm.addresses(), scratch, A, B, C)
    if code == cpu_gemm.ONEDNN_BF16:  # its operands rounded to bfloat16, float32 sums
        expected = bfloat16(A) @ bfloat16(B)
        assert np.abs(C - A.astype(float) @ B.astype(float)).max() > 1e-3
    else:
        expected = A.astype(float) @ B.astype(float)
    np.testing.assert_allclose(C, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("library", [None, *cpu_gemm.LIBRARIES], ids=["any", *cpu_gemm.LIBRARIES])
def test_a_forced_library_trains_the_epoch_loop_as_the_steps_do(monkeypatch, library):
    """Within one process the epoch loop and the per-step path share the plan: the same
    weights to the bit with any library. The epoch loop chooses first, timing its steps on
    copies: the model trains from where it was."""
    if library is not None:
        _require(library)
        monkeypatch.setenv(cpu_gemm.ENVIRONMENT, library)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((70, 20)).astype("float32")
    y = np.eye(4, dtype="float32")[rng.integers(0, 4, 70)]

    def train(epoch_loop):
        if not epoch_loop:
            monkeypatch.setattr(NumpyEngine, "dense_stack_epoch", lambda *a, **k: None)
        with dlcore.use_backend("numpy"):
            dlcore.set_random_seed(2)
            model = Sequential(
                [Dense(16, activation="relu", input_shape=(20,)), Dense(4, activation="softmax")]
            )
            model.compile(optimizer="adam", loss="categorical_crossentropy")
            model.fit(x, y, batch_size=16, epochs=2, verbose=0)
        return [np.array(w) for w in model.get_weights()]

    whole = train(True)
    stepped = train(False)
    for a, b in zip(whole, stepped):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("value", ["cublas", "open blas", "1"])
def test_an_unknown_library_is_refused_before_any_step(monkeypatch, value):
    monkeypatch.setenv(cpu_gemm.ENVIRONMENT, value)
    with pytest.raises(cpu_gemm.GemmLibraryError, match="one of openblas, blis, mkl, numba"):
        cpu_gemm.forced_library()
    with dlcore.use_backend("numpy"):
        model = Sequential([Dense(3, activation="softmax", input_shape=(4,))])
        model.compile(optimizer="sgd", loss="categorical_crossentropy")
        before = [np.array(w) for w in model.get_weights()]
        with pytest.raises(cpu_gemm.GemmLibraryError, match=cpu_gemm.ENVIRONMENT):
            model.fit(np.ones((8, 4), "float32"), np.eye(3, dtype="float32")[[0, 1] * 4], verbose=0)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, np.array(b))


def test_a_library_that_is_not_installed_is_refused_with_how_to_install_it(monkeypatch):
    absent = cpu_gemm.Library("blis", False, "not installed (pip install blis)")
    found = [f for f in cpu_gemm.libraries() if f.name != "blis"] + [absent]
    monkeypatch.setattr(cpu_gemm, "libraries", lambda: found)
    monkeypatch.setenv(cpu_gemm.ENVIRONMENT, "BLIS")
    with pytest.raises(cpu_gemm.GemmLibraryError, match=r"pip install blis.*unset DLCORE_GEMM"):
        cpu_gemm.forced_library()


def test_each_product_gets_the_candidate_with_the_fastest_step(monkeypatch):
    """``choose`` keeps, product by product, the candidate whose step timed fastest."""
    monkeypatch.setattr(cpu_gemm, "_TIMING_SECONDS", 0.0)
    products = cpu_gemm.products(32, (784, 50, 50, 10))
    fastest = {(0, cpu_gemm.FORWARD): cpu_gemm.NUMBA, (0, cpu_gemm.WEIGHT_GRADIENT): cpu_gemm.BLIS}
    costs = {cpu_gemm.OPENBLAS: 3.0, cpu_gemm.OPENBLAS_ONE_THREAD: 2.0}

    def time_step(plan):
        total = 0.0
        for product in products:
            code = int(plan[product.layer, product.kind, 0])
            best = fastest.get((product.layer, product.kind))
            total += 1.0 if code == best else costs.get(code, 5.0)
        return total * 1e-6

    monkeypatch.setattr(
        cpu_gemm,
        "candidates",
        lambda product, library, threads: [
            cpu_gemm.OPENBLAS,
            cpu_gemm.OPENBLAS_ONE_THREAD,
            cpu_gemm.BLIS,
            cpu_gemm.NUMBA,
        ],
    )
    plan = cpu_gemm.choose(products, 3, np.dtype("float32"), time_step, lambda p, q: 0.0)
    chosen = {(p.layer, p.kind): int(plan[p.layer, p.kind, 0]) for p in products}
    assert chosen[0, cpu_gemm.FORWARD] == cpu_gemm.NUMBA
    assert chosen[0, cpu_gemm.WEIGHT_GRADIENT] == cpu_gemm.BLIS
    # the products under MINOR_PRODUCT_SHARE of the FLOPs are not timed: they keep the first
    minor = [p for p in products if p.flops < 0.01 * sum(q.flops for q in products)]
    assert minor and all(chosen[p.layer, p.kind] == cpu_gemm.OPENBLAS for p in minor)
    timed = [p for p in products if p not in minor and (p.layer, p.kind) not in fastest]
    assert all(chosen[p.layer, p.kind] == cpu_gemm.OPENBLAS_ONE_THREAD for p in timed)


def test_products_large_enough_for_every_core_stay_on_openblas_threads():
    large = cpu_gemm.Product(0, cpu_gemm.FORWARD, 512, 1024, 1024)
    small = cpu_gemm.Product(0, cpu_gemm.FORWARD, 32, 50, 784)  # 2.5 MFLOP
    assert large.flops > cpu_gemm.ONE_CORE_MAX_FLOPS > small.flops
    assert cpu_gemm.candidates(large, None, threads=2) == [cpu_gemm.OPENBLAS]
    assert len(cpu_gemm.candidates(large, None, threads=1)) > 1
    assert len(cpu_gemm.candidates(small, None, threads=2)) > 1
    # a forced library computes every product, however large
    assert {cpu_gemm._LIBRARY_OF[c] for c in cpu_gemm.candidates(large, "numba", 2)} == {"numba"}


def test_products_of_a_step_have_the_shapes_of_its_layers():
    got = [(p.layer, p.kind, p.m, p.n, p.k) for p in cpu_gemm.products(32, (784, 50, 10))]
    F, G, D = cpu_gemm.FORWARD, cpu_gemm.WEIGHT_GRADIENT, cpu_gemm.INPUT_GRADIENT
    assert got == [
        (0, F, 32, 50, 784),
        (0, G, 784, 50, 32),
        (1, F, 32, 10, 50),
        (1, G, 50, 10, 32),
        (1, D, 32, 50, 10),
    ]


def test_plans_are_kept_in_the_cache_file_and_read_back(monkeypatch, tmp_path):
    path = tmp_path / "gemm.json"
    monkeypatch.setenv(cpu_gemm.CACHE_ENVIRONMENT, str(path))
    widths, rows = (12, 8, 4), 6
    plan, products = cpu_jit.plan_for_widths(widths, rows)
    machines = json.loads(path.read_text())["machines"]
    key = cpu_gemm.plan_key(np.dtype("float32"), rows, widths)
    assert machines[cpu_gemm._machine_key()][key] == [int(c) for c in plan[:, :, 0].ravel()]
    # a new process would find it: no timing now
    monkeypatch.setattr(cpu_gemm, "_PLANS", {})

    def no_timing(*args, **kwargs):
        raise AssertionError("timed again although the cache file holds the plan")

    monkeypatch.setattr(cpu_gemm, "choose", no_timing)
    again, _ = cpu_jit.plan_for_widths(widths, rows)
    np.testing.assert_array_equal(again[:, :, 0], plan[:, :, 0])


def test_the_cache_file_is_the_users_cache_folder_unless_named_or_off(monkeypatch, tmp_path):
    monkeypatch.delenv(cpu_gemm.CACHE_ENVIRONMENT)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert cpu_gemm.cache_path() == str(tmp_path / "cache" / "dlcore" / "gemm-plans.json")
    cpu_jit.plan_for_widths((12, 8, 4), 6)  # the folder is made
    assert (tmp_path / "cache" / "dlcore" / "gemm-plans.json").is_file()
    for off in ("", "0", "OFF"):
        monkeypatch.setenv(cpu_gemm.CACHE_ENVIRONMENT, off)
        assert cpu_gemm.cache_path() is None


def test_plans_of_other_machines_in_the_file_are_kept(monkeypatch, tmp_path):
    path = tmp_path / "gemm.json"
    other = {"another CPU; 64 CPUs": {"float32/6/12-8-4/any": [0] * 6}}
    path.write_text(json.dumps({"machines": other}))
    monkeypatch.setenv(cpu_gemm.CACHE_ENVIRONMENT, str(path))
    cpu_jit.plan_for_widths((12, 8, 4), 6)
    machines = json.loads(path.read_text())["machines"]
    assert machines["another CPU; 64 CPUs"] == other["another CPU; 64 CPUs"]
    assert cpu_gemm._machine_key() in machines


def test_a_cache_file_that_cannot_be_written_leaves_the_plan_to_the_process(monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(cpu_gemm.CACHE_ENVIRONMENT, str(blocker / "gemm.json"))
    plan, _ = cpu_jit.plan_for_widths((12, 8, 4), 6)
    key = cpu_gemm.plan_key(np.dtype("float32"), 6, (12, 8, 4))
    assert cpu_gemm.cached_choices(key) == [int(c) for c in plan[:, :, 0].ravel()]
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize(
    "content",
    ["{not json", '{"machines": {"another CPU": {}}}', '["a list"]', "", '{"machines": 3}'],
    ids=["broken", "other-machine", "not-a-table", "empty", "machines-not-a-table"],
)
def test_a_cache_file_that_does_not_apply_is_ignored_and_rewritten(monkeypatch, tmp_path, content):
    path = tmp_path / "gemm.json"
    path.write_text(content)
    monkeypatch.setenv(cpu_gemm.CACHE_ENVIRONMENT, str(path))
    cpu_jit.plan_for_widths((12, 8, 4), 6)
    machines = json.loads(path.read_text())["machines"]
    assert len(machines[cpu_gemm._machine_key()]) == 1


def test_a_cached_plan_naming_a_library_now_absent_is_timed_again(monkeypatch):
    widths, rows = (12, 8, 4), 6
    key = cpu_gemm.plan_key(np.dtype("float32"), rows, widths)
    cpu_gemm._PLANS[key] = [cpu_gemm.BLIS] * 6
    absent = cpu_gemm.Library("blis", False, "not installed (pip install blis)")
    found = [f for f in cpu_gemm.libraries() if f.name != "blis"] + [absent]
    monkeypatch.setattr(cpu_gemm, "libraries", lambda: found)
    plan, _ = cpu_jit.plan_for_widths(widths, rows)
    assert cpu_gemm.BLIS not in plan[:, :, 0]


def test_the_engines_command_lists_the_libraries_and_what_it_picked():
    result = subprocess.run(
        [sys.executable, "-m", "dlcore", "engines"], capture_output=True, text=True, check=True
    )
    for library in cpu_gemm.libraries():
        assert f"  {library.name} " in result.stdout
    assert "picked for the tiny case (batch 32):" in result.stdout
    assert "layer 0 forward (32x784 @ 784x50): " in result.stdout
