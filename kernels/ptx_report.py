"""What every kernel costs on the real chips: ``python -m dlcore.kernels.ptx_report``.

Compiles every variant that the modules in ``KERNEL_MODULES`` list in their
``ptx_variants()`` to PTX for compute capability 8.0 and 9.0 (A100, H100) with
``numba.cuda.compile_ptx``, assembles it with ``ptxas -v`` and reads back the
resources: registers, shared and constant memory, stack frame and local-memory
spills. It also counts float64 instructions, which in a float32 kernel mean
double-precision math crept in (usually through a Python float). No GPU is
needed, but the simulator must be off: ``compile_ptx`` needs the real CUDA
target.

Usage::

    python -m dlcore.kernels.ptx_report [--json FILE] [--markdown] [--module NAME] [--jobs N]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import importlib
import importlib.util
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

# Every module of kernels/ that launches kernels, in the order of the report.
KERNEL_MODULES = (
    "activations",
    "param_activations",
    "gemm",
    "softmax",
    "dense_backward",
    "prelu",
    "merges",
    "losses",
    "reductions",
    "metrics",
    "optimizers",
    "dropout",
    "noise",
    "normalization",
    "memory",
    "fused_mlp",
    "graphs",
)

ARCHS = (("sm_80", (8, 0)), ("sm_90", (9, 0)))

# Variants per worker task: few enough that both workers stay busy to the end,
# enough that a task's overhead (a pickle round trip) stays negligible.
CHUNK = 4

_INSTALL = 'pip install "numba-cuda[cu12]" (it brings ptxas in the nvidia-cuda-nvcc-cu12 wheel)'


class ReportError(RuntimeError):
    """The report cannot be made here; the message says why and what to do."""


@dataclass(frozen=True)
class KernelResources:
    """What ``ptxas -v`` reports for one kernel variant on one architecture.

    Spill bytes are summed over the entry function and any device function it
    calls that the compiler did not inline; ``stack_bytes`` is the largest
    stack frame among them. ``cmem_bytes`` is the constant memory (kernel
    parameters, literals) summed over the banks on the kernel's ``Used N
    registers`` line, ``None`` when ``ptxas`` shows none there. ``f64_ops``
    counts PTX instructions of type ``.f64`` (arithmetic, conversions, loads
    and stores alike). ``error`` is empty unless compiling or assembling
    failed, and then the numbers are 0. ``main_loop_fmas`` and
    ``main_loop_shared_loads`` count the fused multiply-adds and the shared-memory
    loads (a vector load counts once) in the kernel's main loop (``main_loop``); both
    are 0 for a kernel without a loop that does multiply-adds.
    """

    module: str
    label: str
    dtype: str
    arch: str
    registers: int = 0
    barriers: int = 0
    smem_bytes: int = 0
    cmem_bytes: int | None = None
    stack_bytes: int = 0
    spill_store_bytes: int = 0
    spill_load_bytes: int = 0
    f64_ops: int = 0
    f64_opcodes: tuple[str, ...] = ()
    entry: str = ""
    warnings: tuple[str, ...] = ()
    error: str = ""
    main_loop_fmas: int = 0
    main_loop_shared_loads: int = 0


def find_ptxas() -> str:
    """The ``ptxas`` of the nvidia-cuda-nvcc-cu12 wheel, else the one on ``PATH``.

    Raises:
        ReportError: neither exists; the message says what to install.
    """
    spec = importlib.util.find_spec("nvidia")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = os.path.join(folder, "cuda_nvcc", "bin", "ptxas")
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("ptxas")
    if found:
        return found
    raise ReportError(f"ptxas not found in the nvidia-cuda-nvcc-cu12 wheel nor on PATH: {_INSTALL}")


def _check_real_target() -> None:
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        raise ReportError(
            "NUMBA_ENABLE_CUDASIM=1 is set: compile_ptx needs Numba's real CUDA target, not "
            "the simulator; run without it (env -u NUMBA_ENABLE_CUDASIM python -m "
            "dlcore.kernels.ptx_report)"
        )
    try:
        from numba import config
    except ImportError:
        raise ReportError(f"Numba is not installed: {_INSTALL}") from None
    if getattr(config, "ENABLE_CUDASIM", 0):
        raise ReportError("Numba's CUDA simulator is enabled (by a config file); turn it off")


class _Device:
    """Stands in for the current GPU when Numba compiles device functions."""

    compute_capability = ARCHS[0][1]


def _compile_without_a_gpu() -> None:
    """Let kernels that call device functions compile on a machine without a GPU.

    ``compile_ptx`` takes the compute capability as an argument, but the
    device functions a kernel calls are compiled (to LLVM IR, once each, then
    cached on their dispatcher) for the *current device*, which needs a driver.
    Their IR depends on the compute capability only for features that every
    chip from 7.5 on has (``tanh.approx``, float64 ``atomicAdd``), so the
    lowest architecture of the report stands in; the PTX itself is generated
    per kernel for the ``cc`` asked.
    """
    from numba.cuda import dispatcher

    dispatcher.get_current_device = _Device  # type: ignore[attr-defined]


@functools.cache
def _variants(module_name: str) -> list[Any]:
    module = importlib.import_module(f"{__package__ or 'dlcore.kernels'}.{module_name}")
    if not hasattr(module, "ptx_variants"):
        raise ReportError(f"kernels/{module_name}.py has no ptx_variants()")
    return list(module.ptx_variants())


def _dtype_of(argtypes: Sequence[Any]) -> str:
    """The float dtype a variant computes in: its first float array, else float scalar."""
    from numba import types

    arrays = [t.dtype for t in argtypes if isinstance(t, types.Array)]
    scalars = [t for t in argtypes if isinstance(t, types.Float)]
    floats = [t for t in arrays + scalars if isinstance(t, types.Float)]
    return str(floats[0]) if floats else ""


_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\d+)'")
_PROPERTIES = re.compile(
    r"Function properties for (\S+)\s*\n\s*(\d+) bytes stack frame, "
    r"(\d+) bytes spill stores, (\d+) bytes spill loads"
)
_USED = re.compile(r"Used (\d+) registers([^\n]*)")
_BARRIERS = re.compile(r"used (\d+) barriers")
_SMEM = re.compile(r"(\d+) bytes smem")
_CMEM = re.compile(r"(\d+) bytes cmem\[\d+\]")


def parse_ptxas(report: str) -> dict[str, Any]:
    """The resources of the one entry function in ``ptxas -v`` output.

    Returns:
        ``entry``, ``registers``, ``barriers``, ``smem_bytes``, ``cmem_bytes``
        (``None`` if not shown), ``stack_bytes``, ``spill_store_bytes``,
        ``spill_load_bytes`` and ``warnings`` (the ``ptxas warning`` lines).

    Raises:
        ValueError: the output does not name exactly one entry function, or
            lacks its register line.
    """
    entries = list(_ENTRY.finditer(report))
    if len(entries) != 1:
        raise ValueError(f"expected one entry function in ptxas output, found {len(entries)}")
    used = _USED.search(report, entries[0].end())
    if used is None:
        raise ValueError("ptxas output has no 'Used N registers' line for the entry function")
    rest = used.group(2)
    barriers = _BARRIERS.search(rest)
    cmem = [int(n) for n in _CMEM.findall(rest)]
    properties = [tuple(map(int, m.groups()[1:])) for m in _PROPERTIES.finditer(report)]
    return {
        "entry": entries[0].group(1),
        "registers": int(used.group(1)),
        "barriers": int(barriers.group(1)) if barriers else 0,
        "smem_bytes": sum(int(n) for n in _SMEM.findall(rest)),
        "cmem_bytes": sum(cmem) if cmem else None,
        "stack_bytes": max((p[0] for p in properties), default=0),
        "spill_store_bytes": sum(p[1] for p in properties),
        "spill_load_bytes": sum(p[2] for p in properties),
        "warnings": tuple(line.strip() for line in report.splitlines() if "warning" in line),
    }


def f64_instructions(ptx: str) -> list[str]:
    """The opcode of every PTX instruction that operates on ``.f64`` values, in order."""
    opcodes = []
    for line in ptx.splitlines():
        words = line.split()
        if words and words[0].startswith("@"):  # a predicate guards the instruction
            words = words[1:]
        if not words or words[0].startswith((".", "/", "{", "}", "$")):
            continue  # directives and declarations (.reg .f64), comments, braces, labels
        opcode = words[0].rstrip(";")
        if "f64" in opcode.split("."):
            opcodes.append(opcode)
    return opcodes


def _opcode(line: str) -> str:
    """The opcode of a PTX instruction line ("" for labels, directives and comments)."""
    words = line.split()
    if words and words[0].startswith("@"):  # a predicate guards the instruction
        words = words[1:]
    if not words or words[0].startswith((".", "/", "{", "}", "$")):
        return ""
    return words[0].rstrip(";")


_LABEL = re.compile(r"^\s*(\$\w+):")
_BRANCH = re.compile(r"\bbra(?:\.uni)?\s+(\$\w+);")


def main_loop(ptx: str) -> tuple[int, int]:
    """``(fused multiply-adds, shared-memory loads)`` in the kernel's main loop.

    A loop is the code from a label to a branch back to it; the main loop is the
    innermost loop (one that holds no other) with the most ``fma.rn`` instructions, so
    that neither an enclosing loop nor an epilogue's loop is counted with it. A vector
    load (``ld.shared.v4.f32``) is one load. ``(0, 0)`` when no loop multiply-adds.
    """
    lines = ptx.splitlines()
    labels: dict[str, int] = {}
    loops = []
    for number, line in enumerate(lines):
        label = _LABEL.match(line)
        if label:
            labels[label.group(1)] = number
        branch = _BRANCH.search(line)
        if branch and branch.group(1) in labels:
            loops.append((labels[branch.group(1)], number))
    best = (0, 0)
    for first, last in loops:
        if any(first <= a and b <= last and (a, b) != (first, last) for a, b in loops):
            continue
        opcodes = [_opcode(text) for text in lines[first : last + 1]]
        fmas = sum(op.startswith("fma.rn.") for op in opcodes)
        loads = sum(op.startswith("ld.shared.") for op in opcodes)
        best = max(best, (fmas, loads) if fmas else (0, 0))
    return best


def _assemble(ptxas: str, ptx: str, arch: str, scratch: str) -> str:
    path = os.path.join(scratch, f"kernel_{arch}.ptx")
    with open(path, "w") as file:
        file.write(ptx)
    done = subprocess.run(
        [ptxas, "-v", f"-arch={arch}", path, "-o", os.devnull],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(f"ptxas failed: {(done.stderr or done.stdout).strip()}")
    return done.stdout + done.stderr


def _report_chunk(module_name: str, start: int, stop: int, ptxas: str) -> list[KernelResources]:
    """Compile and assemble variants ``start:stop`` of a module for every architecture."""
    from numba import cuda

    rows = []
    with tempfile.TemporaryDirectory(prefix="ptx_report_") as scratch:
        for label, dispatcher, argtypes in _variants(module_name)[start:stop]:
            dtype = _dtype_of(argtypes)
            for arch, cc in ARCHS:
                try:
                    ptx, _ = cuda.compile_ptx(dispatcher.py_func, tuple(argtypes), cc=cc)
                    found = parse_ptxas(_assemble(ptxas, ptx, arch, scratch))
                except Exception as error:  # one broken kernel must not hide the others
                    message = f"{type(error).__name__}: {error}".strip().splitlines()
                    rows.append(KernelResources(module_name, label, dtype, arch, error=message[0]))
                    continue
                opcodes = f64_instructions(ptx)
                fmas, shared_loads = main_loop(ptx)
                rows.append(
                    KernelResources(
                        module_name,
                        label,
                        dtype,
                        arch,
                        f64_ops=len(opcodes),
                        f64_opcodes=tuple(sorted(set(opcodes))),
                        main_loop_fmas=fmas,
                        main_loop_shared_loads=shared_loads,
                        **found,
                    )
                )
    return rows


def _start_worker() -> None:
    _compile_without_a_gpu()


def run(
    modules: Iterable[str] = KERNEL_MODULES, *, jobs: int | None = None
) -> tuple[list[KernelResources], float]:
    """Compile and assemble every variant of ``modules`` for sm_80 and sm_90.

    Args:
        modules: names of modules in ``kernels/``; each must exist and define
            ``ptx_variants()``.
        jobs: worker processes (default: the number of CPUs).

    Returns:
        One row per variant and architecture, in module and variant order, and
        the seconds the whole run took.

    Raises:
        ReportError: the simulator is on, ptxas is missing, or a module does
            not exist or has no ``ptx_variants()``.
    """
    started = time.perf_counter()
    _check_real_target()
    ptxas = find_ptxas()
    modules = tuple(modules)
    package = __package__ or "dlcore.kernels"
    missing = [n for n in modules if importlib.util.find_spec(f"{package}.{n}") is None]
    if missing:
        files = ", ".join(f"kernels/{name}.py" for name in missing)
        raise ReportError(f"kernel modules listed in KERNEL_MODULES do not exist: {files}")
    counts = {name: len(_variants(name)) for name in modules}
    tasks = [
        (name, start, min(start + CHUNK, count), ptxas)
        for name, count in counts.items()
        for start in range(0, count, CHUNK)
    ]
    # spawn: each worker starts clean, whatever the parent imported or patched
    context = multiprocessing.get_context("spawn")
    workers = max(1, min(jobs or os.cpu_count() or 1, len(tasks)))
    with concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=context, initializer=_start_worker
    ) as pool:
        chunks = pool.map(_report_chunk, *zip(*tasks)) if tasks else []
        rows = [row for chunk in chunks for row in chunk]
    return rows, time.perf_counter() - started


def _spills(rows: Sequence[KernelResources]) -> str:
    stores = max(r.spill_store_bytes for r in rows)
    loads = max(r.spill_load_bytes for r in rows)
    return "0" if stores == loads == 0 else f"{stores} st / {loads} ld"


def markdown(rows: Sequence[KernelResources]) -> str:
    """A table per module: registers per architecture, shared memory, stack, spills, f64 ops.

    ``f64 ops`` is shown for float32 kernels only (float64 kernels compute in it).
    """
    by_variant: dict[tuple[str, str], dict[str, KernelResources]] = {}
    for row in rows:
        by_variant.setdefault((row.module, row.label), {})[row.arch] = row
    lines: list[str] = []
    module = None
    for (name, label), archs in by_variant.items():
        if name != module:
            module = name
            lines += [""] if lines else []
            lines += [
                f"### {name}",
                "",
                "| kernel | dtype | regs sm_80 | regs sm_90 | smem bytes | stack | spills "
                "| f64 ops |",
                "|---|---|--:|--:|--:|--:|--:|--:|",
            ]
        failed = [r for r in archs.values() if r.error]
        dtype = next(iter(archs.values())).dtype
        if failed:
            lines.append(f"| {label} | {dtype} | FAILED: {failed[0].arch}: {failed[0].error} |")
            continue
        regs = [str(archs[arch].registers) if arch in archs else "-" for arch, _ in ARCHS]
        smem = sorted({r.smem_bytes for r in archs.values()})
        f64 = str(max(r.f64_ops for r in archs.values())) if dtype == "float32" else "-"
        lines.append(
            f"| {label} | {dtype} | {regs[0]} | {regs[1]} | {' / '.join(map(str, smem))} "
            f"| {max(r.stack_bytes for r in archs.values())} | {_spills(list(archs.values()))} "
            f"| {f64} |"
        )
    return "\n".join(lines)


def problems(rows: Sequence[KernelResources]) -> list[str]:
    """One line per row that failed, spills, uses a stack frame or has f64 ops in float32."""
    found = []
    for r in rows:
        where = f"{r.module}: {r.label} on {r.arch}"
        if r.error:
            found.append(f"{where}: {r.error}")
            continue
        if r.spill_store_bytes or r.spill_load_bytes:
            found.append(f"{where}: spills {r.spill_store_bytes} B / loads {r.spill_load_bytes} B")
        if r.stack_bytes:
            found.append(f"{where}: {r.stack_bytes} bytes stack frame")
        if r.dtype == "float32" and r.f64_ops:
            found.append(f"{where}: {r.f64_ops} f64 instructions ({', '.join(r.f64_opcodes)})")
    return found


def _summary(rows: Sequence[KernelResources], seconds: float) -> str:
    lines = []
    for name in dict.fromkeys(r.module for r in rows):
        mine = [r for r in rows if r.module == name and not r.error]
        variants = len({r.label for r in rows if r.module == name})
        most = max((r.registers for r in mine), default=0)
        lines.append(f"{name:<16} {variants:>4} variants  most registers {most:>3}")
    found = problems(rows)
    lines.append(
        f"{len(rows)} kernel builds in {seconds:.1f} s; "
        + (f"{len(found)} problems:" if found else "no spills, stack frames or f64 in float32")
    )
    return "\n".join(lines + [f"  {p}" for p in found])


def main(argv: list[str] | None = None) -> int:
    """Entry point; exit status 0, 1 when a variant failed to compile or assemble, 2 when
    the report cannot run here."""
    parser = argparse.ArgumentParser(
        prog="python -m dlcore.kernels.ptx_report", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--json", metavar="FILE", help="write every row to FILE as JSON")
    parser.add_argument("--markdown", action="store_true", help="print a table per module")
    parser.add_argument(
        "--module",
        action="append",
        choices=KERNEL_MODULES,
        help="report on this module only (repeatable; default: all)",
    )
    parser.add_argument("--jobs", type=int, help="worker processes (default: CPU count)")
    args = parser.parse_args(argv)
    try:
        rows, seconds = run(args.module or KERNEL_MODULES, jobs=args.jobs)
    except ReportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        import json

        document = {
            "seconds": seconds,
            "archs": [arch for arch, _ in ARCHS],
            "modules": list(dict.fromkeys(r.module for r in rows)),
            "rows": [asdict(r) for r in rows],
        }
        with open(args.json, "w") as file:
            json.dump(document, file, indent=1)
    print(markdown(rows) if args.markdown else _summary(rows, seconds))
    return 1 if any(r.error for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
