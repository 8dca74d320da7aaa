"""The machine class the bench and ``python -m dlcore engines`` report
(dlcore/benchmark/machine.py): /proc/cpuinfo parsing, the label, the BLAS, the JSON keys."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dlcore.__main__ import main
from dlcore.benchmark import machine, report, runner

# two logical CPUs of one core each, trimmed to the fields the parser reads and a few others
ZEN5 = """\
processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 26
model\t\t: 2
model name\t: AMD EPYC 9755 128-Core Processor
physical id\t: 0
core id\t\t: 0
cpu cores\t: 128
flags\t\t: fpu sse2 avx fma avx2 avx512f avx512dq avx512_bf16 avx512_vnni avx_vnni \
avx512_vp2intersect movdiri

processor\t: 1
vendor_id\t: AuthenticAMD
cpu family\t: 26
model name\t: AMD EPYC 9755 128-Core Processor
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu sse2 avx fma avx2 avx512f avx512dq avx512_bf16 avx512_vnni avx_vnni
"""

SAPPHIRE_RAPIDS = """\
processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8480+
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu sse2 avx fma avx2 avx512f avx512bw avx512_vnni avx512_bf16 avx512_fp16 \
amx_bf16 amx_tile amx_int8 avx_vnni

processor\t: 1
vendor_id\t: GenuineIntel
cpu family\t: 6
model name\t: Intel(R) Xeon(R) Platinum 8480+
physical id\t: 0
core id\t\t: 1
flags\t\t: fpu sse2 avx fma avx2 avx512f avx512bw avx512_vnni avx512_bf16 amx_tile

processor\t: 2
vendor_id\t: GenuineIntel
cpu family\t: 6
model name\t: Intel(R) Xeon(R) Platinum 8480+
physical id\t: 1
core id\t\t: 0
flags\t\t: fpu sse2 avx fma avx2 avx512f
"""

HASWELL_LAPTOP = """\
processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model name\t: Intel(R) Core(TM) i7-4770 CPU @ 3.40GHz
flags\t\t: fpu sse2 avx fma avx2
"""


def test_zen5_sample_parses_to_its_flags_cores_and_label():
    cpu = machine.parse_cpuinfo(ZEN5)
    assert cpu.model == "AMD EPYC 9755 128-Core Processor"
    assert cpu.vendor == "AMD" and cpu.family == 26
    # GEMM_FLAGS order; avx_vnni and the rest of the flags line are not GEMM flags here
    assert cpu.isa == ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni")
    assert cpu.logical_cpus == 2 and cpu.physical_cores == 1  # two threads of core 0
    assert cpu.label == "AMD EPYC Zen 5 (AVX-512, no AMX)"


def test_sapphire_rapids_sample_parses_to_its_flags_cores_and_label():
    cpu = machine.parse_cpuinfo(SAPPHIRE_RAPIDS)
    assert cpu.model == "Intel(R) Xeon(R) Platinum 8480+"
    assert cpu.vendor == "Intel" and cpu.family == 6
    assert cpu.isa == machine.GEMM_FLAGS  # the first block's flags: every one of them
    assert cpu.logical_cpus == 3 and cpu.physical_cores == 3  # (0, 0), (0, 1), (1, 0)
    assert cpu.label == "Intel Xeon (AVX-512, AMX)"


@pytest.mark.parametrize(
    ("family", "flags", "label"),
    [
        (25, "avx2 fma avx512f", "AMD EPYC Zen 4 (AVX-512, no AMX)"),
        (25, "avx2 fma", "AMD EPYC Zen 3 (AVX2, no AMX)"),
        (23, "avx2 fma", "AMD EPYC Zen 2 or earlier (AVX2, no AMX)"),
        (21, "avx", "AMD EPYC (no AVX2, no AMX)"),
    ],
)
def test_amd_label_names_the_zen_generation_from_family_and_flags(family, flags, label):
    text = ZEN5.replace("cpu family\t: 26", f"cpu family\t: {family}")
    text = "\n".join(
        f"flags\t\t: {flags}" if line.startswith("flags") else line for line in text.splitlines()
    )
    assert machine.parse_cpuinfo(text).label == label


def test_label_without_avx512_or_core_ids():
    cpu = machine.parse_cpuinfo(HASWELL_LAPTOP)
    assert cpu.label == "Intel Core (AVX2, no AMX)"
    assert cpu.logical_cpus == 1 and cpu.physical_cores is None


def test_text_without_processors_is_refused_with_what_it_got():
    with pytest.raises(ValueError, match=r"no 'processor' entry .*'hello'.*/proc/cpuinfo"):
        machine.parse_cpuinfo("hello")


def test_unreadable_cpuinfo_falls_back_to_platform(tmp_path):
    cpu = machine.cpu_info(tmp_path / "missing")
    assert cpu.model and cpu.isa == () and cpu.vendor == ""
    assert cpu.label.endswith("(no AVX2, no AMX)")


def test_this_machine_has_a_model_name_and_a_label():
    cpu = machine.cpu_info()
    assert cpu.model.strip() and cpu.logical_cpus and cpu.logical_cpus >= 1
    assert set(cpu.isa) <= set(machine.GEMM_FLAGS)
    assert "AMX" in cpu.label


def test_blas_libraries_name_numpys_blas():
    libraries = machine.blas_libraries()
    assert libraries, "NumPy links a BLAS; neither threadpoolctl nor show_config found it"
    keys = {"internal_api", "version", "architecture", "num_threads", "library", "source"}
    assert all(keys <= set(lib) for lib in libraries)
    assert all(lib["internal_api"] for lib in libraries)
    assert machine.blas_line(libraries).startswith(f"BLAS: {libraries[0]['internal_api']} ")


def test_blas_without_threadpoolctl_comes_from_numpy_show_config(monkeypatch):
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)  # import raises ImportError
    libraries = machine.blas_libraries()
    assert len(libraries) == 1 and libraries[0]["source"] == "numpy.show_config"
    assert libraries[0]["architecture"] is None and libraries[0]["internal_api"]


def test_lines_name_the_class_flags_cores_and_kernels():
    line = machine.machine_line(machine.parse_cpuinfo(SAPPHIRE_RAPIDS).to_dict())
    assert line.startswith("machine class: Intel Xeon (AVX-512, AMX); Intel(R) Xeon(R)")
    assert "3 logical CPUs on 3 cores" in line and "amx_bf16 amx_int8" in line
    libraries = [
        {"internal_api": "openblas", "version": "0.3.30", "architecture": "SapphireRapids"}
        | {"num_threads": 56, "library": "libopenblas.so", "source": "threadpoolctl"}
    ]
    assert machine.blas_line(libraries) == (
        "BLAS: openblas 0.3.30 (SapphireRapids kernels, 56 threads, libopenblas.so) [threadpoolctl]"
    )
    assert machine.blas_line([]).startswith("BLAS: not found")


def test_bench_json_and_header_name_the_machine_class(tmp_path, capsys):
    path = tmp_path / "bench.json"
    code = main(
        ["bench", "--smoke", "--engines", "numpy", "--cases", "tiny", "--repeats", "1"]
        + ["--json", str(path)]
    )
    out = capsys.readouterr().out
    assert code == 0
    cpu = machine.cpu_info()
    data = json.loads(path.read_text())["machine"]
    assert data["cpu"] == json.loads(json.dumps(cpu.to_dict()))
    assert set(data["cpu"]) == {
        "model",
        "vendor",
        "isa",
        "logical_cpus",
        "physical_cores",
        "family",
        "label",
    }
    assert data["blas_libraries"] and data["blas_libraries"][0]["internal_api"]
    assert machine.machine_line(data["cpu"]) in out
    assert machine.blas_line(data["blas_libraries"]) in out
    table_top = out.splitlines().index(next(s for s in out.splitlines() if s.startswith("case ")))
    assert out.splitlines()[table_top - 1] == f"measured on: {cpu.label}, {cpu.model}"


def test_report_of_an_older_json_without_the_machine_class_still_prints():
    result = runner.BenchmarkRun(
        settings={"steps": 1, "repeats": 1, "dtype": "float32", "smoke": True, "gemm_size": 8},
        machine={"dlcore": "0", "platform": "p", "cpu_count": 1, "python": "3", "numpy": "2"},
        engines={},
        skipped={},
        measurements=[],
        peaks={},
        checks=[],
    )
    lines: list[str] = []
    report.print_report(result, lines.append)
    assert "measured on: unknown machine class, ?" in lines
    assert not any(line.startswith(("machine class:", "BLAS:")) for line in lines)


def test_engines_command_prints_the_machine_line_and_the_blas():
    done = subprocess.run(
        [sys.executable, "-m", "dlcore", "engines"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-2] == machine.machine_line(machine.cpu_info().to_dict())
    assert lines[-1].startswith("BLAS: ") and "not found" not in lines[-1]


def test_readme_example_runs(capsys):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("**The machine class.**") :]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == machine.cpu_info().label and printed[1].startswith("BLAS: ")
