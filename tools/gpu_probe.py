"""The numba engine on a real GPU, beyond what the CUDA simulator can run: ``make gpu-check``.

Three commands, each run by ``tools/gpu_check.py`` in a process of its own, with
dlcore importable (installed, or laid out as an install would be)::

    python tools/gpu_probe.py shapes   [--json FILE] [--small]
    python tools/gpu_probe.py timings  [--json FILE] [--small]
    python tools/gpu_probe.py graphs   [--json FILE] [--small]
    python tools/gpu_probe.py sanitize [--small]

``shapes`` checks large and odd shapes against float64 NumPy through the numba
engine's operations and the kernels' launchers; ``timings`` measures gemm
GFLOP/s, Adam's GB/s and the cost of a kernel launch (plain, and through
``kernels.common.launch`` with and without prepared arguments); ``sanitize`` launches every
kernel family once on small arrays, for ``compute-sanitizer``; ``graphs`` fits a
784-50-50-10 model (batch 32) with CUDA graph replay of the training step off and on
(``dlcore.config.set_cuda_graphs``) and reports the samples/s of each and whether the
histories match. ``--small`` shrinks
every size so that the code paths can be tried in Numba's CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``); its numbers mean nothing.

Errors are normwise: ``max |got - ref| / max |ref|``. A float32 sum of ``K``
rounded terms in any order is off by about ``sqrt(K)`` units of float32 rounding
(``u = 2**-24``) relative to its scale (at most ``K * u``), so a check whose
result sums ``K`` float32 terms passes below ``8 * sqrt(K) * u``
(``accumulation_tolerance``): a single lost or doubled term of a random product
shows up far above it. Everything but NumPy and the standard library is imported
inside the functions that use it, so the pure pieces are testable on any CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

U32 = 2.0**-24  # float32 unit roundoff
TOLERANCE_MARGIN = 8.0  # multiples of the sqrt(K) * u typical error that still pass
DROPOUT_SIGMAS = 6.0  # a kept fraction this many standard deviations off fails

# The shapes, as M x K x N for gemm (C = op(A) @ op(B), C is M x N, the sum runs over K).
FULL = {
    "gemm": ((1027, 2051, 1031), (33, 4099, 65), (4099, 10, 4096)),
    "sum": 100_000_000,
    "column_sums": (100_000, 1000),
    "softmax": ((200_000, 10), (1000, 5000)),
    "take_rows": (60_000, 784),
    "dropout": 10_000_000,
}
SMALL = {  # for trying the code paths in the simulator: odd sizes, tiny
    "gemm": ((17, 65, 9),),
    "sum": 5_001,  # three blocks: the two-pass sum
    "column_sums": (300, 7),
    "softmax": ((40, 10), (3, 300)),
    "take_rows": (50, 13),
    "dropout": 5_000,
}
TRANSPOSES = ((False, False), (True, False), (False, True), (True, True))
DROPOUT_RATE = 0.3
SUM_FRACTION_BITS = 12  # the sum's data: multiples of 2**-12 in [0, 1), summed exactly in float64


# ---------------------------------------------------------------------- pure pieces
def max_relative_error(got: Any, ref: Any) -> float:
    """``max |got - ref| / max |ref|`` in float64 (the absolute error when ``ref`` is all
    zeros); ``inf`` when ``got`` holds a NaN or an infinity, or the shapes differ."""
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape or not np.all(np.isfinite(got)):
        return math.inf
    if got.size == 0:
        return 0.0
    scale = float(np.max(np.abs(ref)))
    error = float(np.max(np.abs(got - ref)))
    return error / scale if scale > 0.0 else error


def accumulation_tolerance(k: int, margin: float = TOLERANCE_MARGIN) -> float:
    """Largest normwise relative error that passes for a float32 result summing ``k`` terms:
    ``margin * sqrt(k) * 2**-24`` (a float32 sum in any order is off by about
    ``sqrt(k) * u`` of its scale on random data, at worst ``k * u``)."""
    if k < 1:
        raise ValueError(f"expected k >= 1 terms, received {k}")
    return margin * math.sqrt(k) * U32


def kept_fraction_tolerance(n: int, rate: float, sigmas: float = DROPOUT_SIGMAS) -> float:
    """Largest relative deviation of dropout's kept fraction from ``1 - rate`` that passes:
    ``sigmas`` binomial standard deviations of the fraction, over ``1 - rate``."""
    if n < 1 or not 0.0 <= rate < 1.0:
        raise ValueError(f"expected n >= 1 and 0 <= rate < 1, received n={n}, rate={rate}")
    keep = 1.0 - rate
    return sigmas * math.sqrt(keep * rate / n) / keep


def judge(name: str, error: float, tolerance: float, **detail: Any) -> dict[str, Any]:
    """One check's record: its name, error, tolerance, whether it passed and its details."""
    passed = bool(math.isfinite(error) and error <= tolerance)
    return {"name": name, "error": error, "tolerance": tolerance, "passed": passed, **detail}


def stored_operands(
    a: np.ndarray, b: np.ndarray, trans_a: bool, trans_b: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The C-contiguous arrays to pass gemm so that ``op(A) @ op(B) == a @ b``."""
    A = np.ascontiguousarray(a.T) if trans_a else a
    B = np.ascontiguousarray(b.T) if trans_b else b
    return A, B


def mode_name(trans_a: bool, trans_b: bool) -> str:
    """BLAS's name of a transpose mode: ``NN``, ``TN``, ``NT`` or ``TT``."""
    return ("T" if trans_a else "N") + ("T" if trans_b else "N")


def gemm_flops(M: int, K: int, N: int) -> int:
    """FLOPs of an ``M x K`` by ``K x N`` product: a multiply and an add per term."""
    return 2 * M * K * N


def adam_bytes(params: int, itemsize: int = 4) -> int:
    """Bytes one Adam step moves: params, grads, m and v read; params, m and v written."""
    return 7 * params * itemsize


def layer_gemms(widths: tuple[int, ...], batch: int) -> list[tuple[str, int, int, int, bool, bool]]:
    """The products of one training step of a dense stack, ``(label, M, K, N, trans_a,
    trans_b)``: per layer ``i -> o`` the forward ``X @ W`` (batch x i x o), the weight
    gradient ``X.T @ dZ`` (i x batch x o, TN) and, past the first layer, the input
    gradient ``dZ @ W.T`` (batch x o x i, NT)."""
    shapes = []
    for layer, (i, o) in enumerate(zip(widths[:-1], widths[1:])):
        shapes.append((f"L{layer} fwd", batch, i, o, False, False))
        shapes.append((f"L{layer} dW", i, batch, o, True, False))
        if layer > 0:
            shapes.append((f"L{layer} dX", batch, o, i, False, True))
    return shapes


def softmax64(z: np.ndarray) -> np.ndarray:
    """Row softmax in float64."""
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def crossentropy64(p: np.ndarray, y: np.ndarray, epsilon: float = 1e-7) -> float:
    """Keras 3's categorical cross-entropy of probabilities, the batch mean, in float64:
    rows normalised to sum to 1, clipped to ``[epsilon, 1 - epsilon]``."""
    p = np.asarray(p, dtype=np.float64)
    p = np.clip(p / p.sum(axis=1, keepdims=True), epsilon, 1.0 - epsilon)
    return float(np.mean(-np.sum(np.asarray(y, dtype=np.float64) * np.log(p), axis=1)))


def crossentropy_logits64(z: np.ndarray, y: np.ndarray) -> float:
    """Categorical cross-entropy of logits, the batch mean, in float64."""
    z = np.asarray(z, dtype=np.float64)
    shifted = z - z.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(np.mean(-np.sum(np.asarray(y, dtype=np.float64) * log_p, axis=1)))


def best_seconds(
    call: Callable[[], Any],
    sync: Callable[[], Any],
    *,
    min_sample: float = 0.05,
    samples: int = 3,
    max_calls: int = 1 << 16,
) -> tuple[float, int]:
    """Seconds per ``call``, the best of ``samples`` samples of back-to-back calls, each
    at least ``min_sample`` seconds long (up to ``max_calls`` calls); and the calls per
    sample. ``call`` is warmed up (compiled) first; ``sync`` waits for the device."""
    call()
    sync()
    calls = 1
    while True:
        start = time.perf_counter()
        for _ in range(calls):
            call()
        sync()
        elapsed = time.perf_counter() - start
        if elapsed >= min_sample or calls >= max_calls:
            break
        calls = min(max_calls, calls * 2 if elapsed <= 0 else int(calls * min_sample / elapsed) + 1)
    best = elapsed / calls
    for _ in range(samples - 1):
        start = time.perf_counter()
        for _ in range(calls):
            call()
        sync()
        best = min(best, (time.perf_counter() - start) / calls)
    return best, calls


def format_check(check: dict[str, Any]) -> str:
    """One line of the probe's output for a check."""
    status = "PASS" if check["passed"] else "FAIL"
    line = f"{status} {check['name']:<44} err {check['error']:.2e}  tol {check['tolerance']:.2e}"
    if check.get("note"):
        line += f"  ({check['note']})"
    return line


# ---------------------------------------------------------------------- shapes
def _engine() -> Any:
    import dlcore

    dlcore.set_backend("numba")
    return dlcore.backends.get("numba")


def _shape_checks(engine: Any, sizes: dict[str, Any], rng: np.random.Generator) -> Iterator[Any]:
    """Yield each check's record (or a ``(name, exception)`` pair) as it completes."""
    from dlcore.kernels import dense_backward, gemm, reductions
    from numba import cuda

    f32 = np.float32
    for M, K, N in sizes["gemm"]:
        a = rng.standard_normal((M, K), dtype=f32)
        b = rng.standard_normal((K, N), dtype=f32)
        ref = a.astype(np.float64) @ b.astype(np.float64)
        tol = accumulation_tolerance(K)
        for trans_a, trans_b in TRANSPOSES:
            name = f"gemm {mode_name(trans_a, trans_b)} {M}x{K}x{N}"
            try:
                A, B = stored_operands(a, b, trans_a, trans_b)
                got = engine.gemm(
                    cuda.to_device(A), cuda.to_device(B), trans_a=trans_a, trans_b=trans_b
                ).copy_to_host()
                yield judge(name, max_relative_error(got, ref), tol, K=K)
                # the launcher with a preallocated output, as dense_backward calls it
                C = cuda.device_array((M, N), f32)
                gemm.gemm(cuda.to_device(A), cuda.to_device(B), C, trans_a=trans_a, trans_b=trans_b)
                got = C.copy_to_host()
                yield judge(name + " (launcher)", max_relative_error(got, ref), tol, K=K)
            except Exception as error:
                yield name, error
        del a, b, ref

    n = sizes["sum"]
    name = f"sum_all over {n:,} float32"
    try:
        scale = 2**SUM_FRACTION_BITS
        x = (rng.integers(0, scale, n, dtype=np.int32) / np.float32(scale)).astype(f32)
        exact = float(np.sum(x, dtype=np.float64))  # exact: 12 fractional bits, at most 2**27
        out = cuda.device_array(1, np.float64)
        reductions.sum_all(cuda.to_device(x), out)
        total = float(out.copy_to_host()[0])
        yield judge(
            name, max_relative_error(total, exact), 1e-12, note="float64 accumulation: exact"
        )
        del x
    except Exception as error:
        yield name, error

    rows, cols = sizes["column_sums"]
    name = f"column_sums {rows}x{cols}"
    try:
        x = rng.standard_normal((rows, cols), dtype=f32)
        out = cuda.device_array(cols, f32)
        dense_backward.column_sums(cuda.to_device(x), out)
        ref = x.sum(axis=0, dtype=np.float64)
        got = out.copy_to_host()
        yield judge(name, max_relative_error(got, ref), accumulation_tolerance(rows), K=rows)
        del x
    except Exception as error:
        yield name, error

    for N, O in sizes["softmax"]:
        z = (3.0 * rng.standard_normal((N, O))).astype(f32)
        labels = rng.integers(0, O, N)
        y = np.zeros((N, O), f32)
        y[np.arange(N), labels] = 1.0
        p_ref = softmax64(z)
        p32 = p_ref.astype(f32)
        Z, Y, P = (engine.asarray(v, dtype="float32") for v in (z, y, p32))
        row_tol = accumulation_tolerance(O)
        name = f"softmax {N}x{O}"
        try:
            got = engine.to_numpy(engine.activation("softmax", Z))
            yield judge(name, max_relative_error(got, p_ref), row_tol, K=O)
        except Exception as error:
            yield name, error
        name = f"crossentropy {N}x{O}"
        try:
            value = float(engine.to_numpy(engine.loss("categorical_crossentropy", P, Y)))
            yield judge(name, max_relative_error(value, crossentropy64(p32, y)), 2 * row_tol, K=O)
        except Exception as error:
            yield name, error
        name = f"crossentropy from logits {N}x{O}"
        try:
            loss = engine.loss("categorical_crossentropy", Z, Y, from_logits=True)
            value = float(engine.to_numpy(loss))
            err = max_relative_error(value, crossentropy_logits64(z, y))
            yield judge(name, err, 2 * row_tol, K=O)
        except Exception as error:
            yield name, error
        name = f"softmax-crossentropy gradient {N}x{O}"
        try:
            got = engine.to_numpy(engine.backprop_softmax_crossentropy(P, Y))
            ref = (p32.astype(np.float64) - y) / N
            yield judge(name, max_relative_error(got, ref), TOLERANCE_MARGIN * U32)
        except Exception as error:
            yield name, error
        del z, y, p_ref, p32, Z, Y, P

    rows, width = sizes["take_rows"]
    name = f"take_rows {rows}x{width}"
    try:
        x = rng.standard_normal((rows, width), dtype=f32)
        order = rng.permutation(rows).astype(np.int64)
        got = engine.to_numpy(
            engine.take_rows(engine.asarray(x, dtype="float32"), cuda.to_device(order))
        )
        yield judge(name, max_relative_error(got, x[order]), 0.0, note="a copy: exact")
    except Exception as error:
        yield name, error

    n = sizes["dropout"]
    name = f"dropout kept fraction over {n:,} (rate {DROPOUT_RATE})"
    try:
        engine.seed(1234)
        x = rng.standard_normal(n, dtype=f32)
        Y_out, mask = engine.dropout(engine.asarray(x, dtype="float32"), rate=DROPOUT_RATE)
        m, y_out = engine.to_numpy(mask), engine.to_numpy(Y_out)
        kept = np.count_nonzero(m) / n
        keep = 1.0 - DROPOUT_RATE
        scale_ok = bool(np.all((m == 0) | (m == np.float32(1.0 / keep))))
        product_ok = bool(np.array_equal(y_out, x * m))
        check = judge(
            name,
            abs(kept - keep) / keep,
            kept_fraction_tolerance(n, DROPOUT_RATE),
            kept=kept,
            note=f"kept {kept:.5f}; mask values {'ok' if scale_ok else 'WRONG'}; "
            f"Y = X * mask {'ok' if product_ok else 'WRONG'}",
        )
        check["passed"] = check["passed"] and scale_ok and product_ok
        yield check
    except Exception as error:
        yield name, error


Save = Callable[[dict[str, Any]], None]


def run_shapes(small: bool, save: Save) -> dict[str, Any]:
    engine = _engine()
    print(f"numba engine on {engine.device}", flush=True)
    checks: list[dict[str, Any]] = []
    failed: list[str] = []
    result = {"device": engine.device, "checks": checks, "failed": failed, "complete": False}
    rng = np.random.default_rng(0)
    for item in _shape_checks(engine, SMALL if small else FULL, rng):
        if isinstance(item, tuple):
            name, error = item
            item = judge(name, math.inf, 0.0, note=f"{type(error).__name__}: {error}")
            traceback.print_exception(error, file=sys.stdout)
        checks.append(item)
        if not item["passed"]:
            failed.append(item["name"])
        print(format_check(item), flush=True)
        save(result)  # a run cut short keeps what it checked
    print(f"{len(checks) - len(failed)} of {len(checks)} checks passed", flush=True)
    result["complete"] = True
    return result


# ---------------------------------------------------------------------- timings
def run_timings(small: bool, save: Save) -> dict[str, Any]:
    from dlcore.kernels import gemm
    from numba import cuda

    from dlcore.benchmark import cases

    engine = _engine()
    print(f"numba engine on {engine.device}", flush=True)
    min_sample = 0.001 if small else 0.05
    sync = cuda.synchronize
    rng = np.random.default_rng(0)
    f32 = np.float32
    cupy = _cupy()
    result: dict[str, Any] = {"device": engine.device, "complete": False}

    def time_gemm(M: int, K: int, N: int, trans_a: bool, trans_b: bool) -> dict[str, Any]:
        a = rng.standard_normal((M, K), dtype=f32)
        b = rng.standard_normal((K, N), dtype=f32)
        A, B = (cuda.to_device(v) for v in stored_operands(a, b, trans_a, trans_b))
        C = cuda.device_array((M, N), f32)
        seconds, _ = best_seconds(
            lambda: gemm.gemm(A, B, C, trans_a=trans_a, trans_b=trans_b),
            sync,
            min_sample=min_sample,
        )
        row: dict[str, Any] = {
            "M": M,
            "K": K,
            "N": N,
            "mode": mode_name(trans_a, trans_b),
            "gflops": gemm_flops(M, K, N) / seconds / 1e9,
        }
        if cupy is not None:
            ca, cb = cupy.asarray(A.copy_to_host()), cupy.asarray(B.copy_to_host())
            opa = ca.T if trans_a else ca
            opb = cb.T if trans_b else cb
            cupy_seconds, _ = best_seconds(
                lambda: cupy.matmul(opa, opb),
                cupy.cuda.Device().synchronize,
                min_sample=min_sample,
            )
            row["cupy_gflops"] = gemm_flops(M, K, N) / cupy_seconds / 1e9
        return row

    def say_gemm(label: str, row: dict[str, Any]) -> None:
        peer = f"  cupy {row['cupy_gflops']:8.1f}" if "cupy_gflops" in row else ""
        shape = f"{row['M']}x{row['K']}x{row['N']} {row['mode']}"
        print(f"gemm {label:<14} {shape:<22} {row['gflops']:8.1f} GFLOP/s{peer}", flush=True)

    size = 64 if small else 4096
    result["gemm_cube"] = time_gemm(size, size, size, False, False)
    say_gemm(f"{size}^3", result["gemm_cube"])
    save(result)

    layers = []
    for case in cases.CASES.values():
        shown = case.scaled(16) if small else case
        for label, M, K, N, ta, tb in layer_gemms(shown.widths, shown.batch_size):
            row = {"case": case.name, "label": label, **time_gemm(M, K, N, ta, tb)}
            layers.append(row)
            say_gemm(f"{case.name} {label}", row)
    result["layers"] = layers
    save(result)

    params = 1000 if small else cases.CASES["large"].weights
    buffers = [
        engine.asarray(rng.standard_normal(params, dtype=f32), dtype="float32") for _ in range(2)
    ]
    slots = [engine.zeros((params,), dtype="float32") for _ in range(2)]
    h = {"alpha": 1e-3, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7}
    seconds, _ = best_seconds(
        lambda: engine.optimizer_step("adam", buffers[0], buffers[1], [*slots, None], h),
        sync,
        min_sample=min_sample,
    )
    result["adam"] = {
        "params": params,
        "microseconds": seconds * 1e6,
        "gbytes_per_s": adam_bytes(params) / seconds / 1e9,
    }
    print(
        f"adam {params} float32 params: {seconds * 1e6:.1f} us per step, "
        f"{result['adam']['gbytes_per_s']:.1f} GB/s (7 x 4 bytes per parameter)",
        flush=True,
    )
    save(result)

    @cuda.jit
    def empty_kernel(a, b, c):
        pass

    arrays = [cuda.device_array(32, f32) for _ in range(3)]
    launches = 20 if small else 2000

    def launch_many() -> None:
        for _ in range(launches):
            empty_kernel[1, 32](*arrays)

    seconds, _ = best_seconds(launch_many, sync, min_sample=min_sample, max_calls=1)
    synced, _ = best_seconds(
        lambda: (empty_kernel[1, 32](*arrays), sync()),
        sync,
        min_sample=min_sample,
        max_calls=launches,
    )
    result["launch"] = {"microseconds": seconds / launches * 1e6, "synchronized": synced * 1e6}
    print(
        f"empty kernel, 3 array arguments: {seconds / launches * 1e6:.2f} us per launch "
        f"back to back, {synced * 1e6:.2f} us with a synchronize after each",
        flush=True,
    )
    for label, prepared in (("dispatcher", False), ("prepared", True)):
        result["launch"][label] = library_launch_microseconds(
            empty_kernel, arrays, prepared, launches, sync, min_sample
        )
    print(
        f"the same through kernels.common.launch on the library stream: "
        f"{result['launch']['dispatcher']:.2f} us per launch through numba-cuda's dispatcher, "
        f"{result['launch']['prepared']:.2f} us with prepared arguments",
        flush=True,
    )
    result["complete"] = True
    return result


def library_launch_microseconds(
    kernel: Any,
    arrays: list[Any],
    prepared: bool,
    launches: int,
    sync: Callable[[], Any],
    min_sample: float,
) -> float:
    """Host microseconds per back-to-back ``kernels.common.launch`` of ``kernel`` on one
    block of 32 threads, with the prepared-launch cache on or off (left on afterwards)."""
    from dlcore.kernels import common

    common.set_prepared_launches(prepared)
    try:

        def launch_many() -> None:
            for _ in range(launches):
                common.launch(kernel, (1, 32), *arrays)

        seconds, _ = best_seconds(launch_many, sync, min_sample=min_sample, max_calls=1)
    finally:
        common.set_prepared_launches(True)
    return seconds / launches * 1e6


def _cupy() -> Any:
    """CuPy, when it imports and sees a device; else ``None``."""
    try:
        import cupy

        cupy.cuda.runtime.getDeviceCount()
        return cupy
    except Exception as error:  # CuPy is optional: the timings go on without its numbers
        print(f"cupy not used: {type(error).__name__}: {error}", flush=True)
        return None


# ---------------------------------------------------------------------- graphs
# The graph probe's model: the benchmark's tiny case, launch-bound on any GPU. "fused" is
# the dense stack the fused narrow-MLP kernels run (few launches to save); "nodes", the
# same model with an L2 penalty, runs node by node (about 20 launches per step).
GRAPH_WIDTHS = {"full": (784, 50, 50, 10), "small": (12, 8, 8, 4)}
GRAPH_SAMPLES = {"full": 8192, "small": 72}  # 256 and 2 full batches, plus a partial one
GRAPH_EPOCHS = {"full": 3, "small": 3}  # a shape is captured at its third step
GRAPH_BATCH = 32


def histories_match(plain: dict[str, list[float]], graphs: dict[str, list[float]]) -> dict:
    """``{"identical": ..., "max_relative_difference": ...}`` between two fits' histories:
    the same keys and values, relative to each value's magnitude (``inf`` when the keys or
    lengths differ)."""
    if plain.keys() != graphs.keys() or any(len(plain[k]) != len(graphs[k]) for k in plain):
        return {"identical": False, "max_relative_difference": math.inf}
    worst = 0.0
    for key in plain:
        a = np.asarray(plain[key], dtype=np.float64)
        b = np.asarray(graphs[key], dtype=np.float64)
        scale = np.maximum(np.abs(a), np.finfo(np.float64).tiny)
        worst = max(worst, float(np.max(np.abs(a - b) / scale)) if a.size else 0.0)
    return {"identical": plain == graphs, "max_relative_difference": worst}


def run_graphs(small: bool, save: Save) -> dict[str, Any]:
    """Fit the probe's model with graph replay off and on, timed; compare the histories."""
    import warnings

    import dlcore
    from dlcore import config

    engine = _engine()
    size = "small" if small else "full"
    print(f"numba engine on {engine.device}", flush=True)
    rng = np.random.default_rng(0)
    widths = GRAPH_WIDTHS[size]
    x = rng.standard_normal((GRAPH_SAMPLES[size], widths[0])).astype(np.float32)
    y = np.eye(widths[-1], dtype=np.float32)[rng.integers(0, widths[-1], len(x))]
    result: dict[str, Any] = {"device": engine.device, "complete": False, "cases": {}}
    for case in ("fused", "nodes"):
        fits = {}
        for replay in (False, True):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                config.set_cuda_graphs(replay)
                fits[replay] = _timed_fit(dlcore, engine, case, widths, x, y, GRAPH_EPOCHS[size])
            fits[replay]["warnings"] = [
                str(w.message) for w in caught if "has not been run on a GPU" not in str(w.message)
            ]
        config.set_cuda_graphs(False)
        row = {
            "plain_samples_per_s": fits[False]["samples_per_s"],
            "graphs_samples_per_s": fits[True]["samples_per_s"],
            "captures": fits[True]["captures"],
            "refused": fits[True]["refused"],
            "warnings": fits[True]["warnings"],
            **histories_match(fits[False]["history"], fits[True]["history"]),
        }
        result["cases"][case] = row
        print(
            f"graphs {case}: {row['plain_samples_per_s']:.0f} samples/s plain, "
            f"{row['graphs_samples_per_s']:.0f} with graph replay ({row['captures']} captured, "
            f"{len(row['refused'])} refused); histories "
            f"{'identical' if row['identical'] else 'differ'} "
            f"(max relative difference {row['max_relative_difference']:.3g})",
            flush=True,
        )
        for reason in row["refused"] + row["warnings"]:
            print(f"  {reason}", flush=True)
        save(result)
    result["complete"] = True
    return result


def _timed_fit(
    dlcore: Any,
    engine: Any,
    case: str,
    widths: tuple[int, ...],
    x: np.ndarray,
    y: np.ndarray,
    epochs: int,
) -> dict[str, Any]:
    """One compile-then-fit of the probe's model (after an untimed one that compiles the
    kernels): samples/s, the history, and what ``engine.capture_step`` did."""
    from dlcore.layers import Dense
    from dlcore.models import Sequential
    from dlcore.regularizers import l2

    captures: list[int] = []
    refused: list[str] = []
    capture_step = type(engine).capture_step

    def counted(run: Any) -> Any:
        try:
            replay = capture_step(engine, run)
        except Exception as error:
            refused.append(str(error))
            raise
        captures.append(replay is not None)
        return replay

    def fit(samples: int) -> tuple[dict[str, list[float]], float]:
        dlcore.set_random_seed(0)
        regularizer = l2(1e-4) if case == "nodes" else None
        layers = [
            Dense(w, activation="relu", input_shape=(i,), kernel_regularizer=regularizer)
            for i, w in zip(widths[:-2], widths[1:-1])
        ]
        model = Sequential([*layers, Dense(widths[-1], activation="softmax")])
        model.compile("adam", "categorical_crossentropy", metrics=["accuracy"])
        start = time.perf_counter()
        history = model.fit(
            x[:samples], y[:samples], batch_size=GRAPH_BATCH, epochs=epochs, verbose=0
        )
        engine.synchronize()
        return history.history, time.perf_counter() - start

    engine.capture_step = counted  # an instance attribute: counts this probe's captures only
    try:
        fit(3 * GRAPH_BATCH)
        captures.clear()
        refused.clear()
        history, seconds = fit(len(x))
    finally:
        del engine.capture_step
    return {
        "samples_per_s": len(x) * epochs / seconds,
        "history": history,
        "captures": sum(captures),
        "refused": refused,
    }


# ---------------------------------------------------------------------- sanitize
def run_sanitize(small: bool, save: Save) -> dict[str, Any]:
    """Launch every kernel family on small arrays: a run for ``compute-sanitizer``."""
    from dlcore.backends import names
    from dlcore.kernels import dense_backward, reductions
    from numba import cuda

    import dlcore
    from dlcore.layers import Dense, Dropout, PReLU
    from dlcore.models import Sequential
    from dlcore.optimizers import SGD, Adagrad, Adam, Adamax, Nadam, RMSprop

    engine = _engine()
    rng = np.random.default_rng(0)
    f32 = np.float32
    N, I, O, C = 70, 65, 37, 10

    def put(x: np.ndarray) -> Any:
        return engine.asarray(np.asarray(x, f32), dtype="float32")

    X, W, b = put(rng.standard_normal((N, I))), put(rng.standard_normal((I, O))), put(np.ones(O))
    dY = put(rng.standard_normal((N, O)))
    labels = rng.integers(0, C, N)
    onehot = np.eye(C, dtype=f32)[labels]
    P = put(softmax64(rng.standard_normal((N, C))))
    T, L = put(onehot), cuda.to_device(labels.astype(np.int64))
    B01 = put(rng.integers(0, 2, (N, C)))
    done = []

    def family(name: str) -> None:
        engine.synchronize()
        done.append(name)
        print(f"{name}: launched", flush=True)

    for ta, tb in TRANSPOSES:
        engine.gemm(
            engine.asarray(rng.standard_normal((I, N) if ta else (N, I)), dtype="float32"),
            W if not tb else put(rng.standard_normal((O, I))),
            trans_a=ta,
            trans_b=tb,
        )
    family("gemm")
    for act in ("linear", "relu", "tanh", "softmax"):
        Z, Y = engine.dense_forward(X, W, b, act)
        dW, db = engine.zeros((I, O), dtype="float32"), engine.zeros((O,), dtype="float32")
        engine.dense_backward(dY, X, W, Z, Y, act, dW=dW, db=db)
    tall = put(rng.standard_normal((300, 7)))  # several row blocks: the two-pass column sums
    dense_backward.column_sums(tall, engine.zeros((7,), dtype="float32"))
    family("dense forward and backward")
    for act in names.ACTIVATIONS:
        Y = engine.activation(act, dY)
        engine.backprop_activation(act, dY, dY, Y)
    family("activations")
    alpha = put(np.full(O, 0.25))
    engine.prelu(dY, alpha)
    engine.backprop_prelu(dY, dY, alpha, dalpha=engine.zeros((O,), dtype="float32"))
    family("prelu")
    other = put(rng.standard_normal((N, O)))
    for op in names.MERGES:
        Y = engine.merge(op, [dY, other])
        engine.backprop_merge(op, put(rng.standard_normal(Y.shape)), [dY, other], Y)
    engine.accumulate(other, dY)
    engine.scale(other, 0.5)
    family("merges")
    for loss in names.LOSSES:
        target = L if loss == "sparse_categorical_crossentropy" else T
        if loss in ("binary_crossentropy", "hinge", "squared_hinge"):
            target = B01
        for logits in (False, True) if loss in names.CROSSENTROPIES else (False,):
            engine.loss(loss, P, target, from_logits=logits)
            engine.backprop_loss(loss, P, target, from_logits=logits)
    engine.backprop_softmax_crossentropy(P, T)
    engine.backprop_softmax_crossentropy(P, L)
    engine.backprop_sigmoid_crossentropy(P, B01)
    many = 5000  # several blocks: the two-pass row-mean of the per-sample losses
    engine.loss(
        "categorical_crossentropy",
        put(softmax64(np.ones((many, C)))),
        put(np.eye(C, dtype=f32)[np.arange(many) % C]),
    )
    family("losses")
    engine.penalty(W, l1=0.01, l2=0.01)
    engine.backprop_penalty(W, engine.zeros((I, O), dtype="float32"), l1=0.01, l2=0.01)
    for kind, target in (("binary", B01), ("categorical", T), ("sparse", L)):
        engine.count_correct(kind, P, target)
    reductions.sum_all(put(rng.standard_normal(70_001)), cuda.device_array(1, np.float64))
    family("reductions")
    size = 1000
    for optimizer in (
        SGD(),
        SGD(momentum=0.9, nesterov=True),
        Adam(),
        Adam(amsgrad=True),
        RMSprop(),
        RMSprop(centered=True, momentum=0.9),
        Adagrad(),
        Adamax(),
        Nadam(),
    ):
        params, grads = put(rng.standard_normal(size)), put(rng.standard_normal(size))
        optimizer.build(engine, size, "float32")
        optimizer.apply(engine, params, grads)
    family("optimizers")
    engine.seed(0)
    Y, mask = engine.dropout(dY, rate=0.3)
    engine.backprop_dropout(dY, mask)
    family("dropout")
    copy = engine.zeros((N, O), dtype="float32")
    engine.assign(copy, dY)
    engine.take_rows(dY, cuda.to_device(rng.permutation(N).astype(np.int64)))
    family("memory")
    dlcore.set_backend("numba")
    model = Sequential(
        [
            Dense(O, activation="relu", input_shape=(I,)),
            Dropout(0.2),
            PReLU(),
            Dense(C, activation="softmax"),
        ]
    )
    model.compile("adam", "categorical_crossentropy", metrics=["accuracy"])
    x = rng.standard_normal((N, I)).astype(f32)
    model.fit(x, onehot, batch_size=33, epochs=1, verbose=0)
    model.evaluate(x, onehot, verbose=0)
    family("model fit, evaluate")
    print(f"sanitize run done: {len(done)} families", flush=True)
    return {"families": done}


# ---------------------------------------------------------------------- command line
COMMANDS: dict[str, Callable[[bool, Save], dict[str, Any]]] = {
    "shapes": run_shapes,
    "timings": run_timings,
    "graphs": run_graphs,
    "sanitize": run_sanitize,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=tuple(COMMANDS))
    parser.add_argument("--json", metavar="FILE", help="write the results to FILE")
    parser.add_argument(
        "--small", action="store_true", help="tiny sizes, to try the code in the CUDA simulator"
    )
    args = parser.parse_args(argv)

    def save(result: dict[str, Any]) -> None:
        if args.json:
            with open(args.json + ".partial", "w", encoding="utf-8") as file:
                json.dump(plain(result), file, indent=2)
            os.replace(args.json + ".partial", args.json)

    result = COMMANDS[args.command](args.small, save)
    save(result)
    return 1 if result.get("failed") else 0


def plain(value: Any) -> Any:
    """``value`` in plain JSON types: NumPy scalars as Python numbers, non-finite floats
    as ``None``."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


if __name__ == "__main__":
    sys.exit(main())
