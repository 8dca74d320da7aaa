"""What works on this machine: ``python -m dlcore doctor``.

For every registered engine: whether it runs here and on which device. Every
engine that runs trains the same small model from the same initial weights on
the same fixed data, and its loss history and predictions are compared with the
NumPy engine's. On a CUDA GPU, the Numba gemm kernel is timed against CuPy's
matmul (cuBLAS). Without a GPU it says which checks it could not run and why.
Numba and CuPy are imported only inside the checks that need them.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

import dlcore
from dlcore import backends
from dlcore.layers import Dense
from dlcore.models import Sequential
from dlcore.optimizers import Adam

# Largest relative difference from the NumPy engine that passes, per dtype: float64
# engines must agree to rounding; float32 sums in another order drift further.
TOLERANCE = {"float64": 1e-6, "float32": 1e-4}

EPOCHS = 2

# The gemm timing: a 2048-cube product is 17 GFLOP, long enough (about a
# millisecond) that launch overhead hardly counts, small enough to take a moment.
GEMM_SIZE = 2048
GEMM_WARMUP = 3
GEMM_REPEATS = 5  # best of this many samples
GEMM_CALLS = 10  # back-to-back products per sample
# float32 sums of 2048 products carry about 1e-6 of the largest entry in error
GEMM_TOLERANCE = 1e-4

Say = Callable[[str], None]


@dataclass(frozen=True)
class Check:
    """One line of the report: a check that ran (``PASS``/``FAIL``) or a measurement."""

    subject: str
    status: str  # "PASS", "FAIL" or "INFO"
    detail: str


@dataclass(frozen=True)
class TrainingRun:
    """What training the doctor's model on one engine gave."""

    dtype: str
    history: dict[str, list[float]]
    predictions: np.ndarray
    seconds: float


def tiny_dataset() -> tuple[np.ndarray, np.ndarray]:
    """48 fixed samples of 5 features ``(48, 5)`` and one-hot labels of 3 classes ``(48, 3)``."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((48, 5))
    labels = np.argmax(x @ rng.standard_normal((5, 3)), axis=1)
    return x, np.eye(3)[labels]


def train(engine_name: str, dtype: str) -> TrainingRun:
    """Train Dense(8, relu) - Dense(3, softmax) with Adam for ``EPOCHS`` epochs on
    ``tiny_dataset()`` in ``dtype`` on engine ``engine_name``, seeded so that every
    engine starts from the same weights and sees the same batches."""
    x, y = tiny_dataset()
    saved = dlcore.floatx()
    dlcore.set_floatx(dtype)
    try:
        with dlcore.use_backend(engine_name):
            dlcore.set_random_seed(0)
            model = Sequential(
                [Dense(8, activation="relu", input_shape=(5,)), Dense(3, activation="softmax")]
            )
            model.compile(
                optimizer=Adam(learning_rate=0.01),
                loss="categorical_crossentropy",
                metrics=["accuracy"],
            )
            started = time.perf_counter()
            history = model.fit(x, y, batch_size=16, epochs=EPOCHS, verbose=0)
            predictions = model.predict(x)
            seconds = time.perf_counter() - started
    finally:
        dlcore.set_floatx(saved)
    return TrainingRun(dtype, dict(history.history), predictions, seconds)


def max_relative_difference(actual: ArrayLike, expected: ArrayLike) -> float:
    """``max |actual - expected| / |expected|`` elementwise (``|expected|`` at least 1e-12)."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if a.shape != e.shape:
        return float("inf")
    if a.size == 0:
        return 0.0
    with np.errstate(invalid="ignore"):
        difference = np.abs(a - e) / np.maximum(np.abs(e), 1e-12)
    return float(np.max(np.where(np.isnan(difference), np.inf, difference)))


def check_reference(first: TrainingRun, again: TrainingRun) -> Check:
    """The NumPy engine, the reference: finite, softmax rows sum to 1, the loss falls,
    and a second run gives bit-identical results."""
    loss = first.history["loss"]
    rows = np.abs(first.predictions.sum(axis=1) - 1.0).max()
    problems = []
    if not (np.all(np.isfinite(first.predictions)) and np.all(np.isfinite(loss))):
        problems.append("non-finite loss or predictions")
    if rows > 1e-9:
        problems.append(f"predicted probabilities sum to 1 within only {rows:.1e}")
    if not loss[-1] < loss[0]:
        problems.append(f"the loss did not fall ({loss[0]:.4f} -> {loss[-1]:.4f})")
    if again.history != first.history or not np.array_equal(again.predictions, first.predictions):
        problems.append("a second run with the same seed gave different results")
    if problems:
        return Check("numpy", "FAIL", "; ".join(problems))
    return Check(
        "numpy",
        "PASS",
        f"{first.dtype} reference: loss {loss[0]:.4f} -> {loss[-1]:.4f}, repeatable "
        f"({first.seconds:.2f} s)",
    )


def compare(name: str, run: TrainingRun, reference: TrainingRun) -> Check:
    """``run`` against the NumPy engine's ``reference`` in the same dtype."""
    limit = TOLERANCE[run.dtype]
    keys = sorted(set(run.history) | set(reference.history))
    history = max(
        max_relative_difference(run.history.get(k, []), reference.history.get(k, [])) for k in keys
    )
    predictions = max_relative_difference(run.predictions, reference.predictions)
    status = "PASS" if max(history, predictions) <= limit else "FAIL"
    return Check(
        name,
        status,
        f"{run.dtype}: history {history:.1e}, predictions {predictions:.1e} "
        f"(limit {limit:.0e}; {run.seconds:.2f} s)",
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def _numba_simulated() -> bool:
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def find_cuda_gpu() -> tuple[str | None, str]:
    """``(device name, "")`` when CuPy or Numba sees a real CUDA GPU, else ``(None, why not)``."""
    why = []
    try:
        import cupy

        count = cupy.cuda.runtime.getDeviceCount()
    except ImportError:
        why.append("CuPy is not installed")
    except Exception as error:  # CuPy raises its own CUDARuntimeError without a driver
        why.append(f"CuPy found no CUDA driver ({_first_line(error)})")
    else:
        if count:
            name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
            return (name.decode() if isinstance(name, bytes) else str(name)), ""
        why.append("CuPy sees no CUDA GPU")
    if _numba_simulated():
        why.append("NUMBA_ENABLE_CUDASIM=1 is set, so Numba runs only its CPU simulator")
    elif importlib.util.find_spec("numba") is None:
        why.append("Numba is not installed")
    else:
        try:
            from numba import cuda

            if cuda.is_available():
                name = cuda.get_current_device().name
                return (name.decode() if isinstance(name, bytes) else str(name)), ""
            why.append("Numba found no CUDA driver or GPU")
        except Exception as error:
            why.append(f"Numba cannot use CUDA ({_first_line(error)})")
    return None, "; ".join(why)


def _best_seconds(run: Callable[[], None], synchronize: Callable[[], None]) -> float:
    """Seconds per call of ``run``: the best of ``GEMM_REPEATS`` samples of
    ``GEMM_CALLS`` back-to-back calls, after ``GEMM_WARMUP`` calls."""
    for _ in range(GEMM_WARMUP):
        run()
    synchronize()
    best = float("inf")
    for _ in range(GEMM_REPEATS):
        started = time.perf_counter()
        for _ in range(GEMM_CALLS):
            run()
        synchronize()
        best = min(best, (time.perf_counter() - started) / GEMM_CALLS)
    return best


def time_gemm(n: int = GEMM_SIZE) -> list[Check]:
    """Time the Numba gemm kernel and CuPy's matmul (cuBLAS) on ``n x n`` float32
    matrices on the GPU, and check a slice of each product against NumPy in float64."""
    rng = np.random.default_rng(0)
    A = rng.standard_normal((n, n), dtype=np.float32)
    B = rng.standard_normal((n, n), dtype=np.float32)
    rows = 16
    expected = A[:rows].astype(np.float64) @ B.astype(np.float64)
    flops = 2.0 * n**3
    checks, rates = [], {}

    def measured(subject: str, seconds: float, product: np.ndarray) -> None:
        error = float(np.abs(product - expected).max() / np.abs(expected).max())
        rates[subject] = flops / seconds / 1e12
        checks.append(
            Check(
                subject,
                "PASS" if error <= GEMM_TOLERANCE else "FAIL",
                f"{rates[subject]:6.1f} TFLOP/s ({seconds * 1e3:.3f} ms), "
                f"error {error:.1e} vs float64",
            )
        )

    if _numba_simulated():
        checks.append(Check("numba gemm", "INFO", "not timed: the simulator's times mean nothing"))
    elif importlib.util.find_spec("numba") is None:
        checks.append(Check("numba gemm", "INFO", "not timed: Numba is not installed"))
    else:
        try:
            from numba import cuda

            from dlcore.kernels import gemm

            if not cuda.is_available():
                raise RuntimeError("Numba finds no CUDA GPU")
            dA, dB, dC = cuda.to_device(A), cuda.to_device(B), cuda.device_array((n, n), "f4")
            seconds = _best_seconds(lambda: gemm.gemm(dA, dB, dC), cuda.synchronize)
            measured("numba gemm", seconds, dC[:rows].copy_to_host())
        except Exception as error:
            checks.append(Check("numba gemm", "FAIL", _first_line(error)))
    try:
        import cupy

        has_gpu = cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # not installed, or no driver: CuPy raises its own error then
        checks.append(Check("cupy matmul", "INFO", "not timed: no CuPy with a GPU here"))
    else:
        try:
            if not has_gpu:
                raise RuntimeError("CuPy finds no CUDA GPU")
            cA, cB, cC = cupy.asarray(A), cupy.asarray(B), cupy.empty((n, n), np.float32)
            synchronize = cupy.cuda.Device().synchronize
            seconds = _best_seconds(lambda: cupy.matmul(cA, cB, out=cC), synchronize)
            measured("cupy matmul", seconds, cupy.asnumpy(cC[:rows]))
        except Exception as error:
            checks.append(Check("cupy matmul", "FAIL", _first_line(error)))
    if len(rates) == 2:
        ratio = rates["numba gemm"] / rates["cupy matmul"]
        checks.append(Check("numba / cuBLAS", "INFO", f"{ratio:.2f} of cuBLAS's throughput"))
    return checks


def _line(check: Check, say: Say) -> None:
    say(f"  {check.subject:<18} {check.status:<5} {check.detail}")


def run(engines: Sequence[str] | None = None, *, say: Say = print) -> bool:
    """Check what works here, printing as it goes.

    Args:
        engines: the engines to check (default: every registered one).
        say: where the report lines go.

    Returns:
        Whether every check that could run passed.
    """
    names = list(engines or backends.engine_names())
    say(
        f"dlcore {dlcore.__version__} doctor: Python {platform.python_version()}, "
        f"NumPy {np.__version__}, {platform.system()} {platform.machine()}"
    )
    say("")
    say("Engines")
    runnable, cannot = [], {}
    for name in names:
        ok, detail = backends.engine_class(name).availability()
        say(f"  {name:<18} {'runs' if ok else 'no':<5} {detail}")
        if ok:
            runnable.append(name)
        else:
            cannot[name] = detail

    checks: list[Check] = []
    say("")
    say(
        f"Training check: Dense(8, relu) - Dense(3, softmax), Adam, {EPOCHS} epochs on "
        f"{len(tiny_dataset()[0])} fixed samples;"
    )
    say("  largest relative difference from the numpy engine's loss history and predictions")
    references: dict[str, TrainingRun] = {}
    for name in ["numpy"] + [n for n in runnable if n != "numpy"]:
        try:
            if name == "numpy":
                first = references["float64"] = train("numpy", "float64")
                check = check_reference(first, train("numpy", "float64"))
            else:
                engine = backends.get(name)
                dtype = "float64" if engine.supports_dtype("float64") else "float32"
                if dtype not in references:
                    references[dtype] = train("numpy", dtype)
                check = compare(name, train(name, dtype), references[dtype])
        except Exception as error:  # the report goes on to the other engines
            check = Check(name, "FAIL", _first_line(error))
        checks.append(check)
        _line(check, say)

    not_checked = [f"the {name} engine: {detail}" for name, detail in cannot.items()]
    gpu, no_gpu = find_cuda_gpu()
    say("")
    say(f"GEMM timing: {GEMM_SIZE} x {GEMM_SIZE} x {GEMM_SIZE} float32, best of {GEMM_REPEATS}")
    if gpu is None:
        say(f"  not run: no CUDA GPU here ({no_gpu})")
        not_checked.insert(0, f"training and the gemm timing on a real CUDA GPU: {no_gpu}")
    else:
        say(f"  on {gpu}")
        for check in time_gemm():
            checks.append(check)
            _line(check, say)

    say("")
    say(f"Checked here: {', '.join(c.subject for c in checks)}")
    if not_checked:
        say("Not checked here:")
        for line in not_checked:
            say(f"  - {line}")
    failed = [c.subject for c in checks if c.status == "FAIL"]
    passed = sum(c.status == "PASS" for c in checks)
    say("")
    if failed:
        say(f"FAILED: {', '.join(failed)} ({passed} of {passed + len(failed)} checks passed)")
    else:
        say(f"OK: every check that could run here passed ({passed} of {passed})")
    return not failed


if __name__ == "__main__":
    sys.exit(0 if run() else 1)
