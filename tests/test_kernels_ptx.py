"""Every Numba kernel compiles for the real chips (sm_80, sm_90) without spills.

The report runs in a subprocess: this test process runs Numba's CUDA simulator
(tests/conftest.py), and ``compile_ptx`` needs the real CUDA target.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from collections import Counter

import pytest
from dlcore.kernels import ptx_report

KERNELS = pathlib.Path(ptx_report.__file__).parent

# Float32 kernels allowed to contain float64 instructions, with the reason:
# {"losses: mse_loss[f32]": "accumulates the scalar loss in float64 by design"}
# Deliberate float64 in float32 kernels: label prefix -> (the float64 opcodes allowed there,
# or None for any, and why). Anything else is double precision that crept in.
_STORE = {"cvt.f64.f32", "st.global.f64"}
_FLAG = {"ld.global.f64", "setp.neu.f64"}
F64_ALLOWED: dict[str, tuple[set[str] | None, str]] = {
    "losses: loss[": (
        _STORE | _FLAG,
        "per-sample losses are stored in float64 for a float64 batch mean; the hinges "
        "read the batch's float64 count of labels other than 0 and 1",
    ),
    "losses: loss_gradient[hinge,": (_FLAG, "reads the float64 count of non-0/1 labels"),
    "losses: loss_gradient[squared_hinge,": (_FLAG, "reads the float64 count of non-0/1 labels"),
    "reductions: reduce[": (None, "scalar results are accumulated in float64 by design"),
    "reductions: argmax_match[": ({"selp.f64", "st.global.f64"}, "writes float64 hit counts"),
    "losses: softmax_crossentropy_batch[": (
        _STORE | {"selp.f64"},
        "writes the float64 per-sample losses (and float64 row hits) that the float64 "
        "reductions average, as loss[ and argmax_match[ do",
    ),
    "memory: copy[f32->f64]": (
        {"cvt.f64.f32", "st.global.f64"},
        "NumbaEngine.cast to float64 converts and stores float64",
    ),
    "memory: copy[f16->f64]": (
        {"cvt.f64.f16", "st.global.f64"},
        "NumbaEngine.cast of a float16 layer's output to a float64 model converts and "
        "stores float64",
    ),
    "fused_mlp: forward[": (
        _STORE,
        "per-sample losses are stored in float64 for a float64 batch mean, as losses.py does",
    ),
    "metrics: accuracy[binary,": (
        _STORE | {"add.f64", "cvt.rn.f64.s64", "div.rn.f64", "mov.f64", "selp.f64"},
        "a row's fraction of matching outputs is counted and stored in float64, the dtype "
        "of every per-sample value the float64 reductions sum",
    ),
    "metrics: accuracy[": ({"selp.f64", "st.global.f64"}, "writes float64 hits, as argmax_match["),
    "metrics: confusion[": (
        None,
        "(weighted) confusion counts are summed in float64 so that a count stays exact "
        "over an epoch",
    ),
}


def _f64_allowed(row: dict) -> bool:
    key = f"{row['module']}: {row['label']}"
    for prefix, (opcodes, _reason) in F64_ALLOWED.items():
        if key.startswith(prefix):
            return opcodes is None or set(row["f64_opcodes"]) <= opcodes
    return False


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    """The JSON report on every module of KERNEL_MODULES, made once for this file."""
    pytest.importorskip("numba")
    path = tmp_path_factory.mktemp("ptx") / "report.json"
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    done = subprocess.run(
        [sys.executable, "-m", "dlcore.kernels.ptx_report", "--json", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    if not path.exists():
        pytest.fail(f"the PTX report did not run (exit {done.returncode}):\n{done.stderr}")
    return json.loads(path.read_text())


def where(row: dict) -> str:
    return f"{row['module']}: {row['label']} on {row['arch']}"


def test_every_module_with_kernels_is_in_the_report():
    with_variants = {
        path.stem for path in KERNELS.glob("*.py") if "def ptx_variants(" in path.read_text()
    }
    assert with_variants <= set(ptx_report.KERNEL_MODULES), (
        "add these modules to KERNEL_MODULES in kernels/ptx_report.py: "
        f"{sorted(with_variants - set(ptx_report.KERNEL_MODULES))}"
    )


@pytest.mark.slow
def test_every_variant_compiles_and_assembles_for_sm80_and_sm90(report):
    rows = report["rows"]
    assert report["modules"] == list(ptx_report.KERNEL_MODULES)
    failed = [f"{where(r)}: {r['error']}" for r in rows if r["error"]]
    assert not failed, "\n".join(failed)
    builds = Counter((r["module"], r["label"], r["arch"]) for r in rows)
    variants = {(module, label) for module, label, _ in builds}
    wrong = [
        f"{module}: {label} on {arch}: built {builds[module, label, arch]} times"
        for module, label in sorted(variants)
        for arch in report["archs"]
        if builds[module, label, arch] != 1
    ]
    assert report["archs"] == ["sm_80", "sm_90"]
    assert not wrong, "labels must be unique within a module:\n" + "\n".join(wrong)
    for module in ptx_report.KERNEL_MODULES:
        assert any(m == module for m, _ in variants), f"{module}.ptx_variants() yields nothing"


@pytest.mark.slow
def test_no_kernel_spills_to_local_memory_or_uses_a_stack_frame(report):
    offenders = [
        f"{where(r)}: {r['stack_bytes']} B stack, spills {r['spill_store_bytes']} B stored "
        f"/ {r['spill_load_bytes']} B loaded"
        for r in report["rows"]
        if r["stack_bytes"] or r["spill_store_bytes"] or r["spill_load_bytes"]
    ]
    assert not offenders, "\n".join(offenders)


@pytest.mark.slow
def test_float32_kernels_compute_in_float32(report):
    # Float16 is a storage format: its kernels compute in float32 too, so float64 in one is
    # as wrong as in a float32 kernel (and F64_ALLOWED's reasons hold for both).
    offenders = [
        f"{where(r)}: {r['f64_ops']} f64 instructions ({', '.join(r['f64_opcodes'])})"
        for r in report["rows"]
        if r["dtype"] in ("float32", "float16") and r["f64_ops"] and not _f64_allowed(r)
    ]
    assert not offenders, (
        "float32 and float16 kernels with float64 instructions (a Python float literal? type "
        "constants with scalar(compute_dtype(dtype)); list deliberate ones in F64_ALLOWED "
        "with the reason):\n" + "\n".join(offenders)
    )


# Fused multiply-adds per shared-memory load instruction in the gemm's main loop, at
# least: the 128 x 128 float32 tile reads 2 + 2 four-float vectors for 64 FMAs (16); the
# other tiles one vector of each slab for 16 FMAs in float32 (8), two two-double ones in
# float64 (4). The strided 4 x 4 tile before them did 8 scalar loads for 16 FMAs (2).
GEMM_FMAS_PER_SHARED_LOAD = {"large,": 8, "": 4}


def _gemm_tile_rows(report: dict) -> list[dict]:
    """sm_90 rows of the gemm module's tile kernels (not the sums of split-K partials)."""
    return [
        r
        for r in report["rows"]
        if r["module"] == "gemm"
        and r["arch"] == "sm_90"
        and not r["label"].startswith("sum_partials[")
    ]


@pytest.mark.slow
def test_gemm_main_loops_do_many_fmas_per_shared_memory_load(report):
    rows = _gemm_tile_rows(report)
    large = [r for r in rows if "[large," in r["label"]]
    # float32 and float16 (float32 arithmetic on float16 storage) take the large tile
    assert {r["dtype"] for r in large} == {"float32", "float16"} and len(large) == 2 * (4 + 13)
    low = []
    for r in rows:
        least = GEMM_FMAS_PER_SHARED_LOAD["large," if "[large," in r["label"] else ""]
        fmas, loads = r["main_loop_fmas"], r["main_loop_shared_loads"]
        if not fmas or fmas < least * loads:
            low.append(f"{r['label']}: {fmas} FMAs for {loads} shared loads (want {least}:1)")
    assert not low, "\n".join(low)


LOOPS_PTX = """\
$L__BB0_1:
\tld.shared.v4.f32 \t{%f1, %f2, %f3, %f4}, [%rd1];
$L__BB0_2:
\tld.shared.v4.f32 \t{%f5, %f6, %f7, %f8}, [%rd2];
\tld.shared.f32 \t%f9, [%rd3];
\tfma.rn.f32 \t%f10, %f5, %f9, %f10;
\tfma.rn.f32 \t%f11, %f6, %f9, %f11;
\t@%p1 bra \t$L__BB0_2;
\tbar.sync \t0;
\t@%p2 bra \t$L__BB0_1;
$L__BB0_3:
\tld.shared.f32 \t%f12, [%rd4];
\tfma.rn.f32 \t%f13, %f12, %f12, %f12;
\tbra.uni \t$L__BB0_3;
"""


def test_main_loop_is_the_innermost_loop_with_the_most_fmas():
    # The outer loop holds more of everything, the epilogue's loop fewer FMAs.
    assert ptx_report.main_loop(LOOPS_PTX) == (2, 2)
    assert ptx_report.main_loop("\tfma.rn.f32 \t%f1, %f2, %f3, %f4;\n") == (0, 0)


PTXAS_OUTPUT = """\
ptxas warning : For profile sm_80 adjusting per thread register count of 16 to lower bound of 24
ptxas info    : 16 bytes gmem, 16 bytes cmem[4]
ptxas info    : Function properties for helper
    16 bytes stack frame, 4 bytes spill stores, 8 bytes spill loads
ptxas info    : Compiling entry function 'the_kernel' for 'sm_80'
ptxas info    : Function properties for the_kernel
    8 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 24 registers, used 1 barriers, 8 bytes cumulative stack size, \
4096 bytes smem, 520 bytes cmem[0], 376 bytes cmem[2]
ptxas info    : Compile time = 26.538 ms
"""


def test_ptxas_report_is_read_for_the_entry_function_and_its_callees():
    found = ptx_report.parse_ptxas(PTXAS_OUTPUT)
    assert found["entry"] == "the_kernel"
    assert (found["registers"], found["barriers"], found["smem_bytes"]) == (24, 1, 4096)
    assert found["cmem_bytes"] == 896
    assert found["stack_bytes"] == 16
    assert (found["spill_store_bytes"], found["spill_load_bytes"]) == (12, 20)
    assert len(found["warnings"]) == 1


def test_ptxas_report_without_smem_or_cmem():
    text = (
        "ptxas info    : Compiling entry function 'k' for 'sm_90'\n"
        "ptxas info    : Function properties for k\n"
        "    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n"
        "ptxas info    : Used 30 registers, used 0 barriers\n"
    )
    found = ptx_report.parse_ptxas(text)
    assert (found["registers"], found["smem_bytes"], found["cmem_bytes"]) == (30, 0, None)
    with pytest.raises(ValueError, match="expected one entry function"):
        ptx_report.parse_ptxas(text + text)


def test_f64_instructions_ignore_declarations_and_float_registers_named_f64():
    ptx = """\
\t.reg .f64 \t%fd<3>;
\t.param .f64 p;
\tex2.approx.ftz.f32 \t%f64, %f63;
\tcvt.f64.f32 \t%fd1, %f1;
\t@%p1 fma.rn.f64 \t%fd2, %fd1, 0d3FB999999999999A, 0d3FF4CCCCCCCCCCCD;
$L__BB0_2:
\tcvt.rn.f32.f64 \t%f2, %fd2;
// add.f64 in a comment
"""
    assert ptx_report.f64_instructions(ptx) == ["cvt.f64.f32", "fma.rn.f64", "cvt.rn.f32.f64"]


def test_the_report_refuses_to_run_in_the_simulator():
    done = subprocess.run(
        [sys.executable, "-m", "dlcore.kernels.ptx_report", "--module", "activations"],
        capture_output=True,
        text=True,
        env={**os.environ, "NUMBA_ENABLE_CUDASIM": "1"},
        timeout=120,
    )
    assert done.returncode == 2
    assert "NUMBA_ENABLE_CUDASIM=1 is set" in done.stderr
