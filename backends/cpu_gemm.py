"""Which library computes each matrix product of the NumPy engine's compiled dense step.

A dense layer's training step runs three matrix products: the forward ``X @ W``, the
weight gradient ``X.T @ delta`` and the input gradient ``delta @ W.T``. At a small
model's sizes (32 rows, 50 columns) a library's fixed costs and threading decide what a
product costs, not its peak, and which library is fastest changes with the CPU and the
shape. So the NumPy engine chooses per product, by measurement (``plan``), among:

- ``openblas``: SciPy's OpenBLAS, which Numba's ``np.dot`` calls, on all its threads;
- ``openblas/1``: the same on one thread. Within a step its other threads can cost more
  than they save: on a 2-core Zen 4 a tiny model's epoch took 0.128 ms per step with one
  thread against 0.154 ms with two, although each product alone was faster on two;
- ``blis``: BLIS, from the ``blis`` package (the one thinc uses), one thread;
- ``mkl``: Intel MKL, from the ``mkl`` package: its small-matrix kernels generated for
  each shape (``mkl_cblas_jit_create_sgemm``), sequential. On CPUs without JIT support
  (AMD) MKL hands back its standard GEMM, which is what gets timed there;
- ``numba``: a register-blocked loop compiled by Numba (``cpu_small_gemm``).

The products of a step with layers whose dtype policy computes in bfloat16 are not
chosen: those layers' run on ``onednn/bf16``, oneDNN's bfloat16 product with float32
accumulation (``cpu_bf16``), their operands rounded to bfloat16 as they are copied for
it, and the other layers' on ``openblas/1``. OpenBLAS's threads, waiting for work between
their calls, take the cores from oneDNN's OpenMP threads: the bench's medium step on a
2-core Zen 4 took 17.6-21.8 ms with every product in bfloat16, and 30-34 ms once its
float32 output layer ran on OpenBLAS's two threads or oneDNN's float32 product, against
20.6-21.7 ms with it on one OpenBLAS thread (26.4 ms all in float32).

Because threads interfere with what runs between the products, a step of at most
``STEP_TIMING_MAX_SECONDS`` is timed whole: each product in turn (the largest first)
tries every candidate while the others keep their best so far, and keeps the fastest
step. Longer steps time each product alone. Products under ``MINOR_PRODUCT_SHARE`` of
the step's FLOPs are not timed: they stay on OpenBLAS. Products over ``ONE_CORE_MAX_FLOPS`` go to
OpenBLAS on all its threads when the process has more than one core: every other
candidate runs on one core.

``DLCORE_GEMM=openblas|blis|mkl|numba`` allows one library only (openblas still measures
its two thread counts); naming one that is not installed raises ``GemmLibraryError``.
Plans are kept per process and in a JSON file (``cache_path()``: by default
``~/.cache/dlcore/gemm-plans.json``, ``DLCORE_GEMM_CACHE=FILE`` names another, ``off``
none), under a key naming the CPU and the libraries' versions, so that later processes
on the machine skip the timing and, above all, compute with the same libraries: the
libraries round differently, and a script run twice must give the same numbers.
Nothing here imports Numba, SciPy, BLIS or MKL until a plan is asked for.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import importlib.util
import json
import os
import sys
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from functools import cache, partial
from typing import Any

import numpy as np

from . import cpu_bf16

#: what ``DLCORE_GEMM`` may name
LIBRARIES = ("openblas", "blis", "mkl", "numba")
#: the candidates, by their code in a plan
CANDIDATES = ("openblas", "openblas/1", "blis", "mkl", "numba", "onednn/bf16")
OPENBLAS, OPENBLAS_ONE_THREAD, BLIS, MKL, NUMBA, ONEDNN_BF16 = range(len(CANDIDATES))
_LIBRARY_OF = ("openblas", "openblas", "blis", "mkl", "numba", "onednn")

#: the products of one layer, by their index in a plan
PRODUCTS = ("forward", "weight gradient", "input gradient")
FORWARD, WEIGHT_GRADIENT, INPUT_GRADIENT = range(len(PRODUCTS))

# A plan is int64 (layers, 3, PLAN_FIELDS): per product the candidate's code, then for MKL
# its kernel and jitter addresses and the leading dimensions of A and B it was made for
# (negative: that operand is transposed).
PLAN_FIELDS = 5
# The library addresses the compiled products read, int64 (ADDRESSES,).
SET_THREADS, GET_THREADS, BLIS_F32, BLIS_F64, ONEDNN_GEMM_BF16 = range(5)
ADDRESSES = 5

#: the scratch of compiled products without bfloat16 ones (``scratch_elements``)
NO_SCRATCH = np.empty(0, dtype=np.uint16)

ENVIRONMENT = "DLCORE_GEMM"
CACHE_ENVIRONMENT = "DLCORE_GEMM_CACHE"

#: steps up to this long are timed whole; longer ones product by product
STEP_TIMING_MAX_SECONDS = 0.005
#: products above this many FLOPs stay on OpenBLAS's threads (where there are several
#: cores): a one-core candidate then loses by about the core count (the small case, with
#: products of 16-51 MFLOP, trained at 1.88 ms per step on one thread against 1.29 on two
#: on a 2-core Zen 4), and only looks faster when another program holds the other cores
ONE_CORE_MAX_FLOPS = 8e6
#: products under this share of a step's FLOPs keep the first candidate, untimed
MINOR_PRODUCT_SHARE = 0.01
# each candidate is timed as the best of this many runs of at least _TIMING_SECONDS
_TIMING_RUNS = 3
_TIMING_SECONDS = 0.0004


class GemmLibraryError(ValueError):
    """``DLCORE_GEMM`` names an unknown library, or one that is not installed here."""


@dataclass(frozen=True)
class Library:
    """One matrix product library as found in this process.

    Attributes:
        name: one of ``LIBRARIES``.
        available: whether the NumPy engine's compiled step can call it here.
        detail: its version and build, or why it cannot be used and how to install it.
    """

    name: str
    available: bool
    detail: str


# --------------------------------------------------------------------------- libraries
@cache
def _openblas() -> tuple[int, int, str] | None:
    """``(set_num_threads address, get_num_threads address, detail)`` of SciPy's OpenBLAS
    (addresses 0 where its build does not export them), or ``None`` without SciPy."""
    if importlib.util.find_spec("scipy") is None:
        return None
    import scipy.linalg.cython_blas as cython_blas

    # symbols of the OpenBLAS that cython_blas links are found through its own handle
    handle = ctypes.CDLL(cython_blas.__file__)

    def symbol(*names: str) -> Any:
        for name in names:
            try:
                return getattr(handle, name)
            except AttributeError:
                continue
        return None

    setter = symbol("scipy_openblas_set_num_threads", "openblas_set_num_threads")
    getter = symbol("scipy_openblas_get_num_threads", "openblas_get_num_threads")
    config = symbol("scipy_openblas_get_config", "openblas_get_config")
    detail = f"SciPy {importlib.metadata.version('scipy')}'s BLAS"
    if config is not None:
        config.restype = ctypes.c_char_p
        detail += f" ({config().decode(errors='replace').strip()})"
    if setter is None or getter is None:
        return 0, 0, detail + "; its thread count cannot be set, so openblas/1 is not tried"
    return (
        ctypes.cast(setter, ctypes.c_void_p).value or 0,
        ctypes.cast(getter, ctypes.c_void_p).value or 0,
        detail,
    )


@cache
def _blis() -> tuple[int, int, str] | str:
    """``(bli_sgemm address, bli_dgemm address, detail)``, or why BLIS cannot be used."""
    if importlib.util.find_spec("blis") is None:
        return "not installed (pip install blis)"
    spec = importlib.util.find_spec("blis.cy")
    if spec is None or spec.origin is None:
        return "the blis package has no blis.cy extension"
    handle = ctypes.CDLL(spec.origin)
    try:
        addresses = [ctypes.cast(handle[name], ctypes.c_void_p).value or 0 for name in _BLIS]
    except AttributeError:
        return f"{spec.origin} does not export {' and '.join(_BLIS)}"
    return addresses[0], addresses[1], f"blis {importlib.metadata.version('blis')}, one thread"


_BLIS = ("bli_sgemm", "bli_dgemm")


@cache
def _mkl() -> ctypes.CDLL | str:
    """MKL's single dynamic library, loaded and set sequential, or why it cannot be used."""
    if sys.platform != "linux":
        return "looked for on Linux only (libmkl_rt.so)"
    paths = [os.path.join(sys.prefix, "lib", f"libmkl_rt.so.{major}") for major in (3, 2)]
    found = ctypes.util.find_library("mkl_rt")
    for path in [p for p in paths if os.path.exists(p)] + ([found] if found else []):
        try:
            library = ctypes.CDLL(path)
            library.mkl_cblas_jit_create_sgemm  # noqa: B018 (raises where it is missing)
        except (OSError, AttributeError):
            continue
        library.MKL_Set_Threading_Layer(_MKL_THREADING_SEQUENTIAL)
        for name, restype, argtypes in _MKL_FUNCTIONS:
            function = getattr(library, name)
            function.restype = restype
            function.argtypes = argtypes
        return library
    return "not installed (pip install mkl)"


_MKL_THREADING_SEQUENTIAL = 1
_MKL_ROW_MAJOR, _MKL_NO_TRANS, _MKL_TRANS = 101, 111, 112
_MKL_JIT_SUCCESS, _MKL_NO_JIT = 0, 1
_INT = ctypes.c_int
_MKL_FUNCTIONS: list[tuple[str, Any, list[Any]]] = [
    (
        f"mkl_cblas_jit_create_{letter}gemm",
        _INT,
        [ctypes.POINTER(ctypes.c_void_p), _INT, _INT, _INT, _INT, _INT, _INT, real]
        + [_INT, _INT, real, _INT],
    )
    for letter, real in (("s", ctypes.c_float), ("d", ctypes.c_double))
] + [(f"mkl_jit_get_{letter}gemm_ptr", ctypes.c_void_p, [ctypes.c_void_p]) for letter in "sd"]
_MKL_FUNCTIONS.append(("mkl_jit_destroy", _INT, [ctypes.c_void_p]))


def _mkl_detail(library: ctypes.CDLL) -> str:
    buffer = ctypes.create_string_buffer(256)
    library.mkl_get_version_string(buffer, len(buffer))
    jit = "JIT kernels" if _mkl_jits(library) else "no JIT on this CPU: its standard GEMM"
    return f"{buffer.value.decode(errors='replace').strip()}, sequential, {jit}"


@cache
def _mkl_jits(library: ctypes.CDLL) -> bool:
    """Whether MKL generates kernels on this CPU (it does not on AMD's)."""
    jitter = ctypes.c_void_p()
    status = library.mkl_cblas_jit_create_sgemm(
        ctypes.byref(jitter),
        _MKL_ROW_MAJOR,
        _MKL_NO_TRANS,
        _MKL_NO_TRANS,
        8,
        8,
        8,
        1.0,
        8,
        8,
        0.0,
        8,
    )
    if jitter.value:
        library.mkl_jit_destroy(jitter)
    return int(status) == _MKL_JIT_SUCCESS


# jitters live as long as the process: compiled plans point at them
_MKL_KERNELS: dict[tuple[Any, ...], tuple[int, int]] = {}


def _mkl_kernel(
    dtype: np.dtype, trans_a: bool, trans_b: bool, m: int, n: int, k: int, lda: int, ldb: int
) -> tuple[int, int] | None:
    """``(kernel address, jitter address)`` of MKL's product ``C(m, n) = op(A) @ op(B)``,
    row-major with ``ldc = n``, or ``None`` where MKL cannot make one."""
    library = _mkl()
    if isinstance(library, str):
        return None
    key = (dtype.char, trans_a, trans_b, m, n, k, lda, ldb)
    if key not in _MKL_KERNELS:
        letter = "s" if dtype == np.float32 else "d"
        jitter = ctypes.c_void_p()
        status = getattr(library, f"mkl_cblas_jit_create_{letter}gemm")(
            ctypes.byref(jitter),
            _MKL_ROW_MAJOR,
            _MKL_TRANS if trans_a else _MKL_NO_TRANS,
            _MKL_TRANS if trans_b else _MKL_NO_TRANS,
            m,
            n,
            k,
            1.0,
            lda,
            ldb,
            0.0,
            n,
        )
        if int(status) not in (_MKL_JIT_SUCCESS, _MKL_NO_JIT) or not jitter.value:
            return None
        kernel = getattr(library, f"mkl_jit_get_{letter}gemm_ptr")(jitter)
        _MKL_KERNELS[key] = (int(kernel or 0), int(jitter.value))
    kernel, jitter_address = _MKL_KERNELS[key]
    return (kernel, jitter_address) if kernel else None


@cache
def libraries() -> tuple[Library, ...]:
    """Every library of ``LIBRARIES``, then ``onednn`` (bfloat16 products only): whether
    the compiled step can call it here, and its version or why not; found once per
    process (each product's candidates ask). Loads the libraries that are installed (not
    Numba's JIT)."""
    found = []
    numba_ready = importlib.util.find_spec("numba") is not None
    openblas = _openblas()
    if openblas is None or not numba_ready:
        found.append(Library("openblas", False, "needs SciPy and Numba (pip install dlcore[cpu])"))
    else:
        found.append(Library("openblas", True, openblas[2]))
    blis = _blis()
    found.append(
        Library("blis", False, blis) if isinstance(blis, str) else Library("blis", True, blis[2])
    )
    mkl = _mkl()
    found.append(
        Library("mkl", False, mkl)
        if isinstance(mkl, str)
        else Library("mkl", True, _mkl_detail(mkl))
    )
    found.append(
        Library("numba", True, f"Numba {importlib.metadata.version('numba')}, one thread")
        if numba_ready
        else Library("numba", False, "not installed (pip install numba)")
    )
    bf16_ready, bf16_detail = cpu_bf16.status()
    found.append(Library("onednn", bf16_ready and numba_ready, f"bfloat16 products: {bf16_detail}"))
    return tuple(found)


def forced_library() -> str | None:
    """The library ``DLCORE_GEMM`` allows alone, or ``None`` when it is unset or empty.

    Raises:
        GemmLibraryError: it names something other than ``LIBRARIES``, or a library that
            is not installed here.
    """
    name = os.environ.get(ENVIRONMENT, "").strip().lower()
    if not name:
        return None
    if name not in LIBRARIES:
        raise GemmLibraryError(
            f"{ENVIRONMENT}={os.environ[ENVIRONMENT]!r} is not a matrix product library; "
            f"set it to one of {', '.join(LIBRARIES)}, or unset it to choose by measurement"
        )
    library = next(found for found in libraries() if found.name == name)
    if not library.available:
        raise GemmLibraryError(
            f"{ENVIRONMENT}={name} but {name} cannot be used here: {library.detail}; "
            f"install it or unset {ENVIRONMENT}"
        )
    return name


@cache
def addresses() -> np.ndarray:
    """int64 ``(ADDRESSES,)``, read-only: the library functions the compiled products call
    (0 where a library is absent)."""
    table = np.zeros(ADDRESSES, dtype=np.int64)
    openblas = _openblas()
    if openblas is not None:
        table[SET_THREADS], table[GET_THREADS] = openblas[0], openblas[1]
    blis = _blis()
    if not isinstance(blis, str):
        table[BLIS_F32], table[BLIS_F64] = blis[0], blis[1]
    table[ONEDNN_GEMM_BF16] = cpu_bf16.gemm_address()
    table.flags.writeable = False
    return table


# --------------------------------------------------------------------------- planning
@dataclass(frozen=True)
class Product:
    """One matrix product ``C(m, n) = op(A) @ op(B)`` of a dense stack's step.

    Attributes:
        layer: the layer's index; kind: one of ``FORWARD``, ``WEIGHT_GRADIENT``,
            ``INPUT_GRADIENT``.
        m, n, k: the product's sizes.
    """

    layer: int
    kind: int
    m: int
    n: int
    k: int

    @property
    def flops(self) -> int:
        return 2 * self.m * self.n * self.k

    @property
    def transposes(self) -> tuple[bool, bool]:
        """Whether ``A`` and ``B`` are transposed views of C-contiguous arrays."""
        return self.kind == WEIGHT_GRADIENT, self.kind == INPUT_GRADIENT


def products(rows: int, widths: Sequence[int]) -> list[Product]:
    """Every product of a training step of dense layers ``widths`` (inputs first) on a
    batch of ``rows``; the first layer has no input gradient."""
    found = []
    for layer, (inputs, outputs) in enumerate(zip(widths[:-1], widths[1:])):
        found.append(Product(layer, FORWARD, rows, outputs, inputs))
        found.append(Product(layer, WEIGHT_GRADIENT, inputs, outputs, rows))
        if layer > 0:
            found.append(Product(layer, INPUT_GRADIENT, rows, inputs, outputs))
    return found


def candidates(product: Product, library: str | None, threads: int) -> list[int]:
    """The candidate codes to time for ``product``: those of the libraries found (only
    ``library``'s when one is forced), one-core ones left out above ``ONE_CORE_MAX_FLOPS``
    when OpenBLAS has ``threads > 1`` and may choose."""
    available = {found.name for found in libraries() if found.available}
    codes = [
        code
        for code, owner in enumerate(_LIBRARY_OF)
        if owner in available and (library is None or owner == library) and code != ONEDNN_BF16
    ]
    openblas = _openblas()
    if openblas is None or not openblas[0]:  # its thread count cannot be set
        codes = [code for code in codes if code != OPENBLAS_ONE_THREAD]
    if library is None and threads > 1 and product.flops > ONE_CORE_MAX_FLOPS:
        codes = [code for code in codes if code == OPENBLAS]
    return codes


def empty_plan(layers: int, code: int = OPENBLAS) -> np.ndarray:
    """int64 ``(layers, 3, PLAN_FIELDS)``: every product on ``code``."""
    plan = np.zeros((layers, len(PRODUCTS), PLAN_FIELDS), dtype=np.int64)
    plan[:, :, 0] = code
    return plan


def set_choice(plan: np.ndarray, product: Product, code: int, dtype: np.dtype) -> bool:
    """Put candidate ``code`` in ``plan`` for ``product``; ``False`` (plan unchanged) where
    it cannot compute that product (MKL without a kernel for it)."""
    fields = np.zeros(PLAN_FIELDS, dtype=np.int64)
    fields[0] = code
    if code == MKL:
        trans_a, trans_b = product.transposes
        lda = product.m if trans_a else product.k
        ldb = product.k if trans_b else product.n
        kernel = _mkl_kernel(dtype, trans_a, trans_b, product.m, product.n, product.k, lda, ldb)
        if kernel is None:
            return False
        fields[1:] = (*kernel, -lda if trans_a else lda, -ldb if trans_b else ldb)
    plan[product.layer, product.kind] = fields
    return True


def choose(
    step_products: Sequence[Product],
    layers: int,
    dtype: np.dtype,
    time_step: Callable[[np.ndarray], float],
    time_product: Callable[[np.ndarray, Product], float],
    bfloat16_layers: Collection[int] = (),
) -> np.ndarray:
    """The plan of a step of ``step_products``, chosen by measurement.

    Args:
        step_products: the step's products (``products``).
        layers: the number of layers (the plan's first dimension).
        dtype: float32 or float64.
        time_step: seconds of one whole step computed with a given plan.
        time_product: seconds of one product computed with a given plan.
        bfloat16_layers: the layers whose products run in bfloat16 (``ONEDNN_BF16``,
            untimed; float32 only, and only where ``cpu_bf16.status()`` allows); the
            other layers' products then run on ``OPENBLAS_ONE_THREAD``.

    Returns:
        The plan, int64 ``(layers, 3, PLAN_FIELDS)``.

    Raises:
        GemmLibraryError: ``DLCORE_GEMM`` is invalid (``forced_library``).
    """
    library = forced_library()
    threads = _openblas_threads()
    options = {
        product: _bfloat16_step_options(product, bfloat16_layers, library, threads)
        if bfloat16_layers
        else candidates(product, library, threads)
        for product in step_products
    }
    plan = empty_plan(layers, options[step_products[0]][0] if step_products else OPENBLAS)
    for product in step_products:
        set_choice(plan, product, options[product][0], dtype)
    if all(len(codes) == 1 for codes in options.values()):
        return plan
    whole = _best_seconds(partial(time_step, plan)) <= STEP_TIMING_MAX_SECONDS
    negligible = MINOR_PRODUCT_SHARE * sum(product.flops for product in step_products)
    for product in sorted(step_products, key=lambda p: -p.flops):
        if len(options[product]) < 2 or product.flops < negligible:
            continue
        trials = {}
        for code in options[product]:
            if set_choice(plan, product, code, dtype):
                trials[code] = plan.copy()
        runs = {
            code: partial(time_step, trial) if whole else partial(time_product, trial, product)
            for code, trial in trials.items()
        }
        timings = _interleaved_best_seconds(runs)
        set_choice(plan, product, min(timings, key=timings.__getitem__), dtype)
    return plan


def scratch_elements(step_products: Sequence[Product], bfloat16_layers: Collection[int]) -> int:
    """The uint16 elements the compiled products of a step round their bfloat16 operands
    into: the largest ``m k + k n`` among the products of ``bfloat16_layers``."""
    return max(
        (p.m * p.k + p.k * p.n for p in step_products if p.layer in bfloat16_layers), default=0
    )


def _bfloat16_step_options(
    product: Product, bfloat16_layers: Collection[int], library: str | None, threads: int
) -> list[int]:
    """The candidates of ``product`` in a step with layers ``bfloat16_layers`` in bfloat16:
    ``ONEDNN_BF16`` for theirs; for the others OpenBLAS on one thread, or the library
    ``DLCORE_GEMM`` forces (timed as usual)."""
    if product.layer in bfloat16_layers:
        return [ONEDNN_BF16]
    if library is not None:
        return candidates(product, library, threads)
    one_thread = candidates(product, "openblas", 1)
    return [OPENBLAS_ONE_THREAD] if OPENBLAS_ONE_THREAD in one_thread else [OPENBLAS]


def _interleaved_best_seconds(runs: Mapping[int, Callable[[], float]]) -> dict[int, float]:
    """Per candidate, the least of ``_TIMING_RUNS`` mean times of its ``run`` (each mean
    over at least ``_TIMING_SECONDS``), the candidates taking turns so that a slow spell of
    the machine falls on all of them; ``run`` returns the seconds of one call."""
    for run in runs.values():
        run()
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(_TIMING_RUNS):
        for code, run in runs.items():
            best[code] = min(best[code], _mean_seconds(run))
    return best


def _mean_seconds(run: Callable[[], float]) -> float:
    """The mean seconds per call of ``run`` over at least ``_TIMING_SECONDS``."""
    total, calls = run(), 1
    while total < _TIMING_SECONDS:
        total += run()
        calls += 1
    return total / calls


def _best_seconds(run: Callable[[], float]) -> float:
    """The least of ``_TIMING_RUNS`` mean times of ``run`` (after a first untimed call)."""
    return _interleaved_best_seconds({0: run})[0]


def _openblas_threads() -> int:
    """The threads SciPy's OpenBLAS runs on now (1 where that cannot be read)."""
    openblas = _openblas()
    if openblas is None or not openblas[1]:
        return 1
    getter = ctypes.CFUNCTYPE(ctypes.c_int)(openblas[1])
    return max(1, int(getter()))


def describe(plan: np.ndarray, step_products: Sequence[Product]) -> list[str]:
    """One line per product of ``plan``: its shape and the candidate computing it."""
    return [
        f"layer {p.layer} {PRODUCTS[p.kind]} ({p.m}x{p.k} @ {p.k}x{p.n}): "
        f"{CANDIDATES[int(plan[p.layer, p.kind, 0])]}"
        for p in step_products
    ]


# --------------------------------------------------------------------------- plan cache
_PLANS: dict[str, list[int]] = {}


def plan_key(
    dtype: np.dtype, rows: int, widths: Sequence[int], bfloat16_layers: Collection[int] = ()
) -> str:
    """The key of a dense stack's plan: dtype, batch rows, widths, ``DLCORE_GEMM`` and the
    layers computing in bfloat16."""
    forced = os.environ.get(ENVIRONMENT, "").strip().lower() or "any"
    key = f"{np.dtype(dtype).name}/{rows}/{'-'.join(map(str, widths))}/{forced}"
    if bfloat16_layers:
        key += f"/bfloat16:{','.join(map(str, sorted(bfloat16_layers)))}"
    return key


def cached_choices(key: str) -> list[int] | None:
    """The candidate codes (``plan[:, :, 0]`` flattened) chosen before under ``key``, in
    this process or in ``cache_path()``'s file, or ``None``."""
    if key in _PLANS:
        return _PLANS[key]
    stored = _read_cache().get(key)
    if isinstance(stored, list) and all(
        isinstance(c, int) and 0 <= c < len(CANDIDATES) for c in stored
    ):
        _PLANS[key] = stored
        return stored
    return None


def cache_path() -> str | None:
    """The file plans are kept in across processes: ``DLCORE_GEMM_CACHE`` when set (empty,
    ``0`` or ``off``: none), else ``dlcore/gemm-plans.json`` in the user's cache folder
    (``$XDG_CACHE_HOME`` or ``~/.cache``)."""
    value = os.environ.get(CACHE_ENVIRONMENT)
    if value is not None:
        return None if value.strip().lower() in ("", "0", "off") else value
    folder = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(folder, "dlcore", "gemm-plans.json")


def remember(key: str, plan: np.ndarray) -> None:
    """Keep ``plan``'s candidate codes under ``key`` for this process and in
    ``cache_path()``'s file, beside the plans of other machines and library versions kept
    there. A file that cannot be written leaves the plan to this process alone."""
    choices = [int(code) for code in plan[:, :, 0].ravel()]
    _PLANS[key] = choices
    path = cache_path()
    if path is None:
        return
    machines = _read_machines(path)
    plans = machines.get(_machine_key())
    machines[_machine_key()] = {**(plans if isinstance(plans, dict) else {}), key: choices}
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(temporary, "w", encoding="utf-8") as file:
            json.dump({"machines": machines}, file, indent=1, sort_keys=True)
        os.replace(temporary, path)
    except OSError:
        return


def _read_machines(path: str) -> dict[str, Any]:
    """The file's plans by machine key; empty when missing, unreadable or not a table."""
    try:
        with open(path, encoding="utf-8") as file:
            document = json.load(file)
    except (OSError, ValueError):
        return {}
    machines = document.get("machines") if isinstance(document, dict) else None
    return machines if isinstance(machines, dict) else {}


def _read_cache() -> dict[str, Any]:
    """The plans in ``cache_path()``'s file made on this machine with these libraries."""
    path = cache_path()
    plans = {} if path is None else _read_machines(path).get(_machine_key())
    return plans if isinstance(plans, dict) else {}


@cache
def _machine_key() -> str:
    """The CPU model, core count and every library's version: a plan holds for these."""
    from dlcore.benchmark import machine

    model = machine.cpu_info().model
    versions = "; ".join(f"{found.name}: {found.detail}" for found in libraries())
    return f"{model}; {os.cpu_count()} CPUs; {versions}"


def restore(
    choices: Sequence[int],
    step_products: Sequence[Product],
    layers: int,
    dtype: np.dtype,
    bfloat16_layers: Collection[int] = (),
) -> np.ndarray | None:
    """The plan of cached candidate ``choices``, or ``None`` where one no longer applies
    (a library gone, not the one ``DLCORE_GEMM`` allows, or not the precision a layer
    of ``bfloat16_layers`` (``choose``) asks for)."""
    if len(choices) != layers * len(PRODUCTS):
        return None
    library = forced_library()
    available = {found.name for found in libraries() if found.available}
    plan = empty_plan(layers)
    plan[:, :, 0] = np.asarray(choices, dtype=np.int64).reshape(layers, len(PRODUCTS))
    for product in step_products:
        code = int(plan[product.layer, product.kind, 0])
        owner = _LIBRARY_OF[code]
        if product.layer in bfloat16_layers:
            if code != ONEDNN_BF16 or owner not in available:
                return None
        elif code == ONEDNN_BF16 or owner not in available or library not in (None, owner):
            return None
        if not set_choice(plan, product, code, dtype):
            return None
    return plan


# --------------------------------------------------------------------------- compiled
# _product calls the intrinsics of ``_intrinsics`` and ``cpu_small_gemm``'s kernel, which
# ``compiled_product`` binds in this module's globals before compiling it (F821 below).
def _product(plan, layer, kind, addresses, scratch, A, B, C):
    """``C = A @ B`` (``np.dot(A, B, C)``'s operands: ``A``, ``B`` possibly transposed
    views) by the candidate ``plan[layer, kind]`` names; NumPy's ``np.dot`` where MKL's
    kernel was made for other strides than these. ``scratch``: uint16 ``(n,)`` where a
    bfloat16 product rounds its operands to (``scratch_elements``; allocated here when
    it is shorter)."""
    code = plan[layer, kind, 0]
    size = C.itemsize
    if code == BLIS:
        address = addresses[BLIS_F32] if size == 4 else addresses[BLIS_F64]
        _blis_gemm(  # noqa: F821
            address,
            C.shape[0],
            C.shape[1],
            A.shape[1],
            A.ctypes.data,
            A.strides[0] // size,
            A.strides[1] // size,
            B.ctypes.data,
            B.strides[0] // size,
            B.strides[1] // size,
            C.ctypes.data,
            C.strides[0] // size,
            C.strides[1] // size,
            C.dtype.type(1.0),
        )
    elif code == MKL and _mkl_fits(plan[layer, kind], A, B, C):
        _call_kernel(  # noqa: F821
            plan[layer, kind, 1], plan[layer, kind, 2], A.ctypes.data, B.ctypes.data, C.ctypes.data
        )
    elif code == NUMBA:
        _small_matmul(A, B, C)  # noqa: F821
    elif code == ONEDNN_BF16:
        _bfloat16_product(addresses[ONEDNN_GEMM_BF16], A, B, C, scratch)
    elif code == OPENBLAS_ONE_THREAD and addresses[SET_THREADS] != 0:
        threads = _call_int(addresses[GET_THREADS])  # noqa: F821
        _call_with_int(addresses[SET_THREADS], 1)  # noqa: F821
        np.dot(A, B, C)
        _call_with_int(addresses[SET_THREADS], threads)  # noqa: F821
    else:
        np.dot(A, B, C)


def _leading(X, size):
    """The signed leading dimension of ``X`` as a plan records it (negative: ``X`` is the
    transposed view of a C-contiguous array), or 0 when it is neither."""
    if X.strides[1] == size and X.strides[0] >= X.shape[1] * size:
        return X.strides[0] // size
    if X.strides[0] == size and X.strides[1] >= X.shape[0] * size:
        return -(X.strides[1] // size)
    return 0


def _mkl_fits(fields, A, B, C):
    """Whether MKL's kernel in plan ``fields`` was made for these operands' layout."""
    size = C.itemsize
    return (
        fields[1] != 0
        and C.strides[1] == size
        and C.strides[0] == C.shape[1] * size
        and _leading(A, size) == fields[3]
        and _leading(B, size) == fields[4]
    )


def _bfloat16_product(address, A, B, C, scratch):
    """``C = A @ B`` by oneDNN's ``dnnl_gemm_bf16bf16f32`` at ``address``: float32 ``A``
    and ``B`` (any strides) rounded to bfloat16 into ``scratch``, float32 accumulation,
    ``C`` float32 with unit column stride."""
    m, n, k = C.shape[0], C.shape[1], A.shape[1]
    if m == 0 or n == 0:
        return
    if k == 0:
        C[:] = 0.0
        return
    if scratch.shape[0] < m * k + k * n:
        scratch = np.empty(m * k + k * n, dtype=np.uint16)
    a, b = scratch[: m * k], scratch[m * k : m * k + k * n]
    transpose_a, lda = _round_operand(A, a)
    transpose_b, ldb = _round_operand(B, b)
    status = _onednn_gemm(  # noqa: F821
        address,
        transpose_a,
        transpose_b,
        m,
        n,
        k,
        a.ctypes.data,
        lda,
        b.ctypes.data,
        ldb,
        C.ctypes.data,
        C.strides[0] // 4,
    )
    if status != 0:
        raise RuntimeError("dnnl_gemm_bf16bf16f32 failed")


# oneDNN's transpose flags, as characters
_NO_TRANSPOSE, _TRANSPOSE = ord("N"), ord("T")


def _round_operand(X, out):
    """Round float32 ``X`` to bfloat16 into ``out`` as it is stored (a transposed view of
    a C-contiguous array as that array); oneDNN's transpose flag and leading dimension
    for the result."""
    if _leading(X, 4) < 0:
        _round_to_bfloat16(X.T, out)
        return _TRANSPOSE, X.shape[0]
    _round_to_bfloat16(X, out)
    return _NO_TRANSPOSE, X.shape[1]


def _round_to_bfloat16(X, out):
    """Write float32 ``X`` (any strides) rounded to bfloat16, to nearest even, into the
    first ``X.size`` elements of uint16 ``out`` as the bits of a row-major array; read in
    memory order."""
    rows, columns = X.shape
    if X.strides[0] >= X.strides[1]:
        for i in range(rows):
            for j in range(columns):
                out[i * columns + j] = _bfloat16_bits(X[i, j])
    else:
        for j in range(columns):
            for i in range(rows):
                out[i * columns + j] = _bfloat16_bits(X[i, j])


def _bfloat16_bits(value):
    """The bfloat16 nearest float32 ``value`` (ties to even; NaN stays a quiet NaN)."""
    bits = _float32_bits(value)  # noqa: F821
    if (bits & 0x7FFFFFFF) > 0x7F800000:
        return np.uint16((bits >> 16) | 0x40)
    return np.uint16((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16)


_HELPERS = {
    "_leading": _leading,
    "_mkl_fits": _mkl_fits,
    "_bfloat16_bits": _bfloat16_bits,
    "_round_to_bfloat16": _round_to_bfloat16,
    "_round_operand": _round_operand,
    "_bfloat16_product": _bfloat16_product,
}


@cache
def compiled_product() -> Callable[..., Any]:
    """``_product`` compiled by Numba, with the functions it calls."""
    import numba

    from . import cpu_small_gemm

    # the names _product calls are looked up in this module's globals when it compiles
    globals().update(_intrinsics())
    globals()["_small_matmul"] = cpu_small_gemm.compiled("matmul")
    jit = numba.njit(cache=True, nogil=True, error_model="numpy")
    for name, helper in _HELPERS.items():
        globals()[name] = jit(helper)
    return jit(_product)


def compiled_bfloat16_product() -> Callable[..., Any]:
    """The bfloat16 product ``_product`` runs, compiled: ``f(address, A, B, C, scratch)``
    with ``addresses()[ONEDNN_GEMM_BF16]``, float32 ``A (m, k)``, ``B (k, n)`` of any
    strides, float32 ``C (m, n)`` with unit column stride, and uint16 ``scratch`` of at
    least ``m k + k n`` elements (allocated per call when shorter)."""
    compiled_product()
    return globals()["_bfloat16_product"]


@cache
def _intrinsics() -> dict[str, Any]:
    """Numba intrinsics that call a C function at an address held in an int64."""
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic

    i32, i64 = ir.IntType(32), ir.IntType(64)
    pointer = ir.IntType(8).as_pointer()

    def function(builder, address, returns, arguments):
        signature = ir.FunctionType(returns, arguments)
        return builder.inttoptr(address, signature.as_pointer())

    def as_i64(context, builder, value, kind):
        return context.cast(builder, value, kind, types.int64)

    @intrinsic
    def _call_int(typingctx, address):
        """``int f(void)`` at ``address``, as an int64."""

        def codegen(context, builder, signature, arguments):
            target = as_i64(context, builder, arguments[0], signature.args[0])
            result = builder.call(function(builder, target, i32, []), [])
            return builder.sext(result, i64)

        return types.int64(address), codegen

    @intrinsic
    def _call_with_int(typingctx, address, value):
        """``void f(int)`` at ``address``."""

        def codegen(context, builder, signature, arguments):
            target = as_i64(context, builder, arguments[0], signature.args[0])
            argument = context.cast(builder, arguments[1], signature.args[1], types.int32)
            builder.call(function(builder, target, ir.VoidType(), [i32]), [argument])
            return context.get_dummy_value()

        return types.void(address, value), codegen

    @intrinsic
    def _call_kernel(typingctx, address, jitter, a, b, c):
        """MKL's ``void kernel(void *jitter, T *a, T *b, T *c)`` at ``address``."""

        def codegen(context, builder, signature, arguments):
            values = [
                as_i64(context, builder, value, kind)
                for value, kind in zip(arguments, signature.args)
            ]
            target = function(builder, values[0], ir.VoidType(), [pointer] * 4)
            builder.call(target, [builder.inttoptr(value, pointer) for value in values[1:]])
            return context.get_dummy_value()

        return types.void(address, jitter, a, b, c), codegen

    @intrinsic
    def _blis_gemm(typingctx, address, m, n, k, a, rsa, csa, b, rsb, csb, c, rsc, csc, one):
        """BLIS's ``bli_?gemm`` at ``address``: ``C = A @ B`` with no transposes and
        every operand given by its row and column strides; ``one`` is 1 in the dtype."""

        def codegen(context, builder, signature, arguments):
            real = context.get_value_type(signature.args[-1])
            values = [
                as_i64(context, builder, value, kind)
                for value, kind in zip(arguments[:-1], signature.args[:-1])
            ]
            alpha = cgutils.alloca_once_value(builder, arguments[-1])
            beta = cgutils.alloca_once_value(builder, ir.Constant(real, 0.0))
            (target, m_, n_, k_, a_, rsa_, csa_, b_, rsb_, csb_, c_, rsc_, csc_) = values
            no_transpose = ir.Constant(i32, 0)
            callee = function(
                builder,
                target,
                ir.VoidType(),
                [i32, i32, i64, i64, i64, pointer, pointer, i64, i64]
                + [pointer, i64, i64, pointer, pointer, i64, i64],
            )
            builder.call(
                callee,
                [
                    no_transpose,
                    no_transpose,
                    m_,
                    n_,
                    k_,
                    builder.bitcast(alpha, pointer),
                    builder.inttoptr(a_, pointer),
                    rsa_,
                    csa_,
                    builder.inttoptr(b_, pointer),
                    rsb_,
                    csb_,
                    builder.bitcast(beta, pointer),
                    builder.inttoptr(c_, pointer),
                    rsc_,
                    csc_,
                ],
            )
            return context.get_dummy_value()

        return (
            types.void(address, m, n, k, a, rsa, csa, b, rsb, csb, c, rsc, csc, one),
            codegen,
        )

    @intrinsic
    def _float32_bits(typingctx, value):
        """The bits of float32 ``value``, as a non-negative int64."""

        def codegen(context, builder, signature, arguments):
            single = context.cast(builder, arguments[0], signature.args[0], types.float32)
            return builder.zext(builder.bitcast(single, i32), i64)

        return types.int64(value), codegen

    @intrinsic
    def _onednn_gemm(typingctx, address, transa, transb, m, n, k, a, lda, b, ldb, c, ldc):
        """oneDNN's row-major ``dnnl_gemm_bf16bf16f32`` at ``address``: ``C = op(A) @
        op(B)``, ``transa``/``transb`` the characters N or T, alpha 1, beta 0; returns its
        status (0: success)."""

        def codegen(context, builder, signature, arguments):
            values = [
                as_i64(context, builder, value, kind)
                for value, kind in zip(arguments, signature.args)
            ]
            target, ta_, tb_, m_, n_, k_, a_, lda_, b_, ldb_, c_, ldc_ = values
            single, char = ir.FloatType(), ir.IntType(8)
            callee = function(
                builder,
                target,
                i32,
                [char, char, i64, i64, i64, single, pointer, i64, pointer, i64]
                + [single, pointer, i64],
            )
            result = builder.call(
                callee,
                [
                    builder.trunc(ta_, char),
                    builder.trunc(tb_, char),
                    m_,
                    n_,
                    k_,
                    ir.Constant(single, 1.0),
                    builder.inttoptr(a_, pointer),
                    lda_,
                    builder.inttoptr(b_, pointer),
                    ldb_,
                    ir.Constant(single, 0.0),
                    builder.inttoptr(c_, pointer),
                    ldc_,
                ],
            )
            return builder.sext(result, i64)

        return types.int64(address, transa, transb, m, n, k, a, lda, b, ldb, c, ldc), codegen

    return {
        "_float32_bits": _float32_bits,
        "_onednn_gemm": _onednn_gemm,
        "_call_int": _call_int,
        "_call_with_int": _call_with_int,
        "_call_kernel": _call_kernel,
        "_blis_gemm": _blis_gemm,
    }
