"""The machine class a measurement belongs to: CPU model, vendor, the ISA extensions that
matter for GEMM, core count, and the BLAS that NumPy (and whatever else is loaded) runs.

A number measured on an AMD Zen CPU with AVX-512 and no AMX says little about an Intel
Xeon with AMX, so ``python -m dlcore bench`` and ``python -m dlcore engines`` name the
class. ``/proc/cpuinfo`` is read on Linux; elsewhere only ``platform.processor()`` is
known. The BLAS comes from threadpoolctl's ``threadpool_info()`` when it is installed
(``pip install "dlcore[bench]"``), else from ``numpy.show_config()``.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# the flags of /proc/cpuinfo that decide which GEMM kernels a BLAS can run, in this order
GEMM_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_bf16",
    "avx512_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)

_VENDORS = {"AuthenticAMD": "AMD", "GenuineIntel": "Intel"}
_BRANDS = ("EPYC", "Ryzen", "Threadripper", "Xeon", "Core")

CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class CpuInfo:
    """One CPU as ``/proc/cpuinfo`` describes it.

    ``isa`` holds the members of ``GEMM_FLAGS`` the CPU has, in that order; ``logical_cpus``
    counts the ``processor`` entries, ``physical_cores`` the distinct (package, core) pairs
    (``None`` when the file does not say); ``family`` is the x86 ``cpu family`` number.
    """

    model: str
    vendor: str
    isa: tuple[str, ...]
    logical_cpus: int | None
    physical_cores: int | None
    family: int | None = None

    @property
    def label(self) -> str:
        """The machine class in a few words, e.g. ``AMD EPYC Zen 5 (AVX-512, no AMX)`` or
        ``Intel Xeon (AVX-512, AMX)``."""
        return machine_label(self)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types: every field, ``isa`` as a list, and ``label``."""
        data = asdict(self)
        data["isa"] = list(self.isa)
        data["label"] = self.label
        return data


def _fields(block: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in block.splitlines():
        key, colon, value = line.partition(":")
        if colon:
            found.setdefault(key.strip(), value.strip())
    return found


def parse_cpuinfo(text: str) -> CpuInfo:
    """The ``CpuInfo`` of a ``/proc/cpuinfo`` text (x86 layout: one block per logical CPU,
    separated by blank lines; the first block names the model, vendor and flags).

    Raises:
        ValueError: ``text`` has no ``processor`` entry; the message shows its start.
    """
    blocks = [_fields(block) for block in text.split("\n\n") if block.strip()]
    cpus = [block for block in blocks if "processor" in block]
    if not cpus:
        raise ValueError(
            f"no 'processor' entry in the cpuinfo text (it starts {text[:60]!r}); pass the "
            "contents of /proc/cpuinfo"
        )
    first = cpus[0]
    flags = set(first.get("flags", "").split())
    cores = {
        (block["physical id"], block["core id"])
        for block in cpus
        if "physical id" in block and "core id" in block
    }
    family = first.get("cpu family", "")
    vendor_id = first.get("vendor_id", "")
    return CpuInfo(
        model=first.get("model name", "") or platform.processor() or "unknown CPU",
        vendor=_VENDORS.get(vendor_id, vendor_id),
        isa=tuple(flag for flag in GEMM_FLAGS if flag in flags),
        logical_cpus=len(cpus),
        physical_cores=len(cores) or None,
        family=int(family) if family.isdigit() else None,
    )


def cpu_info(path: str | os.PathLike[str] = CPUINFO) -> CpuInfo:
    """This machine's CPU: ``parse_cpuinfo`` of ``path`` where it can be read, else what
    ``platform`` knows (the model, no ISA flags)."""
    try:
        return parse_cpuinfo(Path(path).read_text(encoding="utf-8", errors="replace"))
    except (OSError, ValueError):
        return CpuInfo(
            model=platform.processor() or platform.machine() or "unknown CPU",
            vendor="",
            isa=(),
            logical_cpus=os.cpu_count(),
            physical_cores=None,
        )


def _zen(cpu: CpuInfo) -> str | None:
    """AMD's core generation from the x86 family: 0x17 Zen-Zen 2, 0x19 Zen 3 or (with
    AVX-512) Zen 4, 0x1A Zen 5."""
    if cpu.family == 0x1A:
        return "Zen 5"
    if cpu.family == 0x19:
        return "Zen 4" if "avx512f" in cpu.isa else "Zen 3"
    if cpu.family == 0x17:
        return "Zen 2 or earlier"
    return None


def machine_label(cpu: CpuInfo) -> str:
    """The machine class of ``cpu``: vendor, brand (EPYC, Xeon, ...), AMD's Zen generation,
    then the widest vectors (AVX-512, AVX2 or neither) and whether it has AMX."""
    brand = next((b for b in _BRANDS if b.lower() in cpu.model.lower()), "")
    words = [cpu.vendor or cpu.model, brand]
    if cpu.vendor == "AMD":
        words.append(_zen(cpu) or "")
    if "avx512f" in cpu.isa:
        vectors = "AVX-512"
    elif "avx2" in cpu.isa:
        vectors = "AVX2"
    else:
        vectors = "no AVX2"
    amx = "AMX" if "amx_tile" in cpu.isa else "no AMX"
    return f"{' '.join(word for word in words if word)} ({vectors}, {amx})"


def blas_libraries() -> list[dict[str, Any]]:
    """The BLAS libraries loaded in this process, one dict each with ``internal_api``
    (``openblas``, ``mkl``, ``blis``), ``version``, ``architecture`` (the kernels OpenBLAS
    picked: ``Zen``, ``SkylakeX``, ``SapphireRapids``, ...), ``num_threads``,
    ``threading_layer``, ``library`` (the file name) and ``source`` (``threadpoolctl``).
    Without threadpoolctl: NumPy's build-time BLAS from ``numpy.show_config()`` (name and
    version; architecture and threads ``None``, source ``numpy.show_config``), or ``[]``."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return _numpy_blas()
    found = []
    for library in threadpool_info():
        if library.get("user_api") != "blas":
            continue
        found.append(
            {
                "internal_api": library.get("internal_api"),
                "version": library.get("version"),
                "architecture": library.get("architecture"),
                "num_threads": library.get("num_threads"),
                "threading_layer": library.get("threading_layer"),
                "library": os.path.basename(str(library.get("filepath", ""))),
                "source": "threadpoolctl",
            }
        )
    return found or _numpy_blas()


def _numpy_blas() -> list[dict[str, Any]]:
    import numpy as np

    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    except Exception:  # show_config's layout is NumPy's own; say nothing rather than fail
        return []
    return [
        {
            "internal_api": blas.get("name"),
            "version": blas.get("version"),
            "architecture": None,
            "num_threads": None,
            "threading_layer": None,
            "library": None,
            "source": "numpy.show_config",
        }
    ]


def describe() -> dict[str, Any]:
    """``{"cpu": cpu_info().to_dict(), "blas_libraries": blas_libraries()}``: what the
    bench's JSON adds under ``machine``."""
    return {"cpu": cpu_info().to_dict(), "blas_libraries": blas_libraries()}


def machine_line(cpu: dict[str, Any]) -> str:
    """One line naming the machine class, from ``CpuInfo.to_dict()``: the label, the model,
    the cores and the GEMM flags present."""
    cores = f"{cpu.get('logical_cpus')} logical CPUs"
    if cpu.get("physical_cores"):
        cores += f" on {cpu['physical_cores']} cores"
    flags = " ".join(cpu.get("isa") or []) or "none of " + " ".join(GEMM_FLAGS)
    return f"machine class: {cpu.get('label')}; {cpu.get('model')}, {cores}; GEMM flags: {flags}"


def blas_line(libraries: list[dict[str, Any]]) -> str:
    """One line naming the BLAS libraries of ``blas_libraries()``: api, version, the
    kernels picked and the threads."""
    if not libraries:
        return "BLAS: not found (neither threadpoolctl nor numpy.show_config() names one)"
    parts = []
    for lib in libraries:
        details = [
            f"{lib['architecture']} kernels" if lib.get("architecture") else "",
            f"{lib['num_threads']} threads" if lib.get("num_threads") else "",
            lib.get("library") or "",
        ]
        text = f"{lib.get('internal_api')} {lib.get('version')}"
        inside = ", ".join(d for d in details if d)
        parts.append(f"{text} ({inside})" if inside else text)
    source = libraries[0].get("source")
    return f"BLAS: {'; '.join(parts)} [{source}]"
