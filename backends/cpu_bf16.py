"""bfloat16 matrix products on the CPU, for layers whose dtype policy computes in bfloat16.

The NumPy engine has no bfloat16 arrays: a layer of policy ``"mixed_bfloat16"`` keeps
its activations and gradients in float32 there, and its matrix products take their
operands rounded to bfloat16 (round to nearest even) and accumulate in float32. They run
on oneDNN's ``dnnl_gemm_bf16bf16f32``, which uses the CPU's AVX-512 BF16 (``vdpbf16ps``)
or AMX instructions, from the ``onednn-cpu-gomp`` wheel (oneDNN 3.2, GNU OpenMP, no other
runtime). On a 2-core Zen 4 it ran a 512x784 @ 784x1024 product at 209 GFLOP/s against
OpenBLAS's float32 at 100.

``status()`` says whether this process can do it, and why not: no such instructions, or
no oneDNN. Nothing here is loaded until it is asked.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import os
import platform
import sys
from functools import cache

import numpy as np

#: the /proc/cpuinfo flags of instructions that multiply bfloat16 pairs into float32
INSTRUCTION_FLAGS = ("amx_bf16", "avx512_bf16")
#: the wheel that carries oneDNN, and the function its products call
PACKAGE = "onednn-cpu-gomp"
FUNCTION = "dnnl_gemm_bf16bf16f32"
#: the OpenMP runtime ``PACKAGE``'s oneDNN links (the system's GNU OpenMP, not in the wheel)
OPENMP_RUNTIME = "libgomp.so.1"

_DIM = ctypes.c_int64
_ARGUMENTS = [ctypes.c_char, ctypes.c_char, _DIM, _DIM, _DIM, ctypes.c_float, ctypes.c_void_p]
_ARGUMENTS += [_DIM, ctypes.c_void_p, _DIM, ctypes.c_float, ctypes.c_void_p, _DIM]


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int), ("patch", ctypes.c_int)]


def cpu_flags() -> frozenset[str]:
    """The flags of ``dlcore.benchmark.machine.GEMM_FLAGS`` this CPU has (among them
    ``INSTRUCTION_FLAGS``); empty where ``/proc/cpuinfo`` cannot be read."""
    from dlcore.benchmark import machine

    return frozenset(machine.cpu_info().isa)


@cache
def _library() -> ctypes.CDLL | str:
    """oneDNN loaded with ``FUNCTION`` typed, or why it cannot be."""
    paths = [os.path.join(sys.prefix, "lib", "libdnnl.so.3")]
    found = ctypes.util.find_library("dnnl")
    failures = []
    for path in [p for p in paths if os.path.exists(p)] + ([found] if found else []):
        try:
            library = ctypes.CDLL(path)
            gemm = getattr(library, FUNCTION)
        except (OSError, AttributeError) as error:
            failures.append(str(error))
            continue
        gemm.restype = ctypes.c_int
        gemm.argtypes = _ARGUMENTS
        library.dnnl_version.restype = ctypes.POINTER(_Version)
        os.register_at_fork(after_in_child=_one_openmp_thread_after_fork)
        return library
    if failures:  # installed, but the system lacks what it links, such as GNU OpenMP
        return (
            f"oneDNN is installed but cannot be loaded ({'; '.join(failures)}); install "
            f"the system library it names ({OPENMP_RUNTIME} is the package libgomp1 on "
            "Debian and Ubuntu)"
        )
    return f"oneDNN is not installed (pip install {PACKAGE}, or dlcore[cpu])"


def _one_openmp_thread_after_fork() -> None:
    """Run at fork in the child of a process that loaded oneDNN. Where the parent's
    products ran on GNU OpenMP's threads, the forking thread's OpenMP thread pool is copied
    but its threads are not: its next parallel product would wait for them forever. The
    child's first thread therefore runs its products on one OpenMP thread (threads it
    starts make pools of their own)."""
    try:
        openmp = ctypes.CDLL(OPENMP_RUNTIME, mode=os.RTLD_NOLOAD)
    except OSError:  # oneDNN built on another runtime: GNU OpenMP is not loaded
        return
    openmp.omp_set_num_threads(1)


@cache
def status() -> tuple[bool, str]:
    """``(True, what runs the products)`` where bfloat16 products are accelerated here,
    else ``(False, why not and the fix)``."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return (
            False,
            f"looked for on x86-64 Linux only, this is {sys.platform} {platform.machine()}",
        )
    flags = cpu_flags()
    instructions = [flag for flag in INSTRUCTION_FLAGS if flag in flags]
    if not instructions:
        return False, (
            "this CPU has neither AVX-512 BF16 nor AMX (no avx512_bf16 or amx_bf16 in "
            "/proc/cpuinfo); bfloat16 products would be slower than float32 here"
        )
    library = _library()
    if isinstance(library, str):
        return False, library
    version = library.dnnl_version().contents
    return True, (
        f"oneDNN {version.major}.{version.minor}.{version.patch} ({PACKAGE} "
        f"{importlib.metadata.version(PACKAGE)}) {FUNCTION} on {instructions[0]}"
    )


def gemm_address() -> int:
    """The address of ``FUNCTION`` (for compiled callers); 0 where ``status()`` is False."""
    if not status()[0]:
        return 0
    library = _library()
    assert not isinstance(library, str)
    return ctypes.cast(getattr(library, FUNCTION), ctypes.c_void_p).value or 0


def to_bfloat16(X: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """float32 ``X`` (any shape) rounded to bfloat16, to nearest even, as its bits: uint16
    of ``X``'s shape (``out`` when given). Infinities stay infinite; NaNs stay NaN (quiet);
    finite values beyond bfloat16's range become infinite, as IEEE rounding says."""
    bits = np.ascontiguousarray(X, dtype=np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    nan = (bits & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    rounded[nan] = (bits[nan] >> np.uint32(16)) | np.uint32(0x40)
    if out is None:
        return rounded.astype(np.uint16)
    np.copyto(out, rounded, casting="unsafe")
    return out


def from_bfloat16(bits: np.ndarray) -> np.ndarray:
    """bfloat16 ``bits`` (uint16, any shape) as the float32 values they hold."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


def matmul(A: np.ndarray, B: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out = A @ B`` with ``A`` and ``B`` rounded to bfloat16 and float32 accumulation.

    Args:
        A: float32 ``(m, k)``, any strides (a transposed view is read as one).
        B: float32 ``(k, n)``, any strides.
        out: float32 C-contiguous ``(m, n)``, overwritten.

    Returns:
        ``out``.

    Raises:
        RuntimeError: ``status()`` is False (its reason), or oneDNN reports an error.
    """
    ready, why = status()
    if not ready:
        raise RuntimeError(f"bfloat16 products are not available here: {why}")
    (m, k), n = A.shape, B.shape[1]
    if out.shape != (m, n) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be float32 C-contiguous {(m, n)}, got {out.dtype} {out.shape}")
    if m == 0 or n == 0 or k == 0:
        out.fill(0.0)
        return out
    a, trans_a = _operand(A)
    b, trans_b = _operand(B)
    library = _library()
    assert not isinstance(library, str)
    code = getattr(library, FUNCTION)(
        trans_a,
        trans_b,
        m,
        n,
        k,
        1.0,
        a.ctypes.data,
        max(a.shape[1], 1),
        b.ctypes.data,
        max(b.shape[1], 1),
        0.0,
        out.ctypes.data,
        max(n, 1),
    )
    if code != 0:
        raise RuntimeError(f"{FUNCTION} failed with oneDNN status {code} on {(m, k)} @ {(k, n)}")
    return out


def _operand(X: np.ndarray) -> tuple[np.ndarray, bytes]:
    """``X``'s bfloat16 bits as a C-contiguous array and oneDNN's transpose flag: a
    transposed view of a C-contiguous array is rounded as stored and flagged ``T``."""
    if not X.flags.c_contiguous and X.T.flags.c_contiguous:
        return to_bfloat16(X.T), b"T"
    return to_bfloat16(X), b"N"
