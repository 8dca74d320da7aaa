"""The data-parallel benchmark (dlcore.benchmark.distributed): the table on paper against
hand-computed ring all-reduce costs, efficiencies and compute times; the README's table
against the code; its bad arguments refused; and the measuring worker under
``mpiexec -n 2`` on the medium case divided by 16 for two steps (seconds)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from mpi_run import ROOT, run_mpi

from dlcore.benchmark import distributed
from dlcore.benchmark.cases import CASES
from dlcore.benchmark.distributed import (
    Link,
    ScalingRow,
    compute_seconds,
    hiding_bandwidth,
    ring_allreduce_seconds,
)

NVLINK_8 = Link("8 GPUs", 8, 400e9, 1e-6)


def test_ring_allreduce_cost_by_hand():
    # 8 MB over 8 GPUs at 400 GB/s, 1 us per ring step:
    # 14 steps x 1 us + 2 x 7/8 x 8e6 B / 4e11 B/s = 14 us + 35 us
    assert ring_allreduce_seconds(8e6, 8, 400e9, 1e-6) == pytest.approx(49e-6, rel=1e-12)
    # two processes, no latency: each sends and receives half twice = the whole buffer once
    assert ring_allreduce_seconds(1e6, 2, 1e9) == pytest.approx(1e-3, rel=1e-12)
    # 100 Gb/s = 12.5 GB/s; 4 processes: 2 x 3/4 x 1.2e7 / 1.25e10 = 1.44 ms, + 6 x 2 us
    assert ring_allreduce_seconds(1.2e7, 4, 100e9 / 8, 2e-6) == pytest.approx(1.452e-3)
    assert ring_allreduce_seconds(1e9, 1, 1e9, 1e-3) == 0.0


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((1e6, 0, 1e9), "processes must be an int >= 1, received 0"),
        ((1e6, True, 1e9), "processes must be an int >= 1, received True"),
        ((1e6, 2.0, 1e9), r"processes must be an int >= 1, received 2\.0"),
        ((1e6, 2, 0.0), r"bus_bytes_per_s must be positive .*received 0\.0"),
        ((-1.0, 2, 1e9), r"nbytes and hop_seconds must be >= 0, received -1\.0"),
        ((1.0, 2, 1e9, -1e-6), "nbytes and hop_seconds must be >= 0"),
    ],
)
def test_ring_allreduce_refuses_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        ring_allreduce_seconds(*args)


def test_compute_seconds_by_hand():
    medium = CASES["medium"]
    params = 784 * 1024 + 1024 + 1024 * 1024 + 1024 + 1024 * 10 + 10
    assert medium.weights == params == 1_863_690
    # 6 x params x batch FLOPs at 0.7 x 67 TFLOP/s: about 0.122 ms
    expected = 6 * params * 512 / (0.7 * 67e12)
    assert compute_seconds(medium) == pytest.approx(expected, rel=1e-12)
    assert compute_seconds(medium, peak_flops=1e12, fraction=0.5) == pytest.approx(
        6 * params * 512 / 0.5e12, rel=1e-12
    )
    # tiny: 8 MFLOP are far below the launches' floor: 7 launches (the fused step) x 5 us
    assert distributed.launches_per_step(CASES["tiny"]) == 7
    assert compute_seconds(CASES["tiny"]) == pytest.approx(35e-6, rel=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fraction": 0.0}, r"fraction must be in \(0, 1\], received 0\.0"),
        ({"fraction": 1.5}, r"fraction must be in \(0, 1\], received 1\.5"),
        ({"peak_flops": -1.0}, r"peak_flops must be positive, received -1\.0"),
    ],
)
def test_compute_seconds_refuses_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        compute_seconds(CASES["medium"], **kwargs)


def test_efficiencies_follow_their_definitions():
    # compute 3 ms: forward 1 ms, backward 2 ms
    hidden = ScalingRow("x", NVLINK_8, 10, 3e-3, 1e-3)
    assert hidden.efficiency_serial == pytest.approx(0.75)  # 3 / (3 + 1)
    assert hidden.efficiency_overlapped == pytest.approx(1.0)  # 3 / (1 + max(2, 1))
    exposed = ScalingRow("x", NVLINK_8, 10, 3e-3, 4e-3)
    assert exposed.efficiency_serial == pytest.approx(3 / 7)
    assert exposed.efficiency_overlapped == pytest.approx(0.6)  # 3 / (1 + 4)
    assert ScalingRow("x", NVLINK_8, 250_000, 1.0, 1.0).gradient_mb == pytest.approx(1.0)


def test_rows_combine_the_case_and_the_link():
    medium = CASES["medium"]
    (row,) = distributed.scaling_rows([medium], [NVLINK_8])
    assert row.params == medium.weights
    assert row.compute_s == compute_seconds(medium)
    # 14 x 1 us + 1.75 x 7,454,760 B / 400 GB/s = 14 us + 32.61 us
    assert row.allreduce_s == pytest.approx(14e-6 + 1.75 * 7_454_760 / 400e9, rel=1e-12)
    links = distributed.links()
    assert [link.bus_bytes_per_s for link in links] == [400e9, 12.5e9, 25e9, 50e9]
    assert all(link.processes == 8 for link in links)
    assert len(distributed.scaling_rows()) == len(CASES) * len(links)


def test_hiding_bandwidth_makes_the_allreduce_fill_the_backward_pass():
    medium = CASES["medium"]
    need = hiding_bandwidth(medium, 8, 1e-6)
    at_need = ring_allreduce_seconds(medium.weights * 4, 8, need, 1e-6)
    assert at_need == pytest.approx(2 * compute_seconds(medium) / 3, rel=1e-12)
    # tiny's 35 us step has a 23 us backward pass: 14 ring steps of 2 us already outlast it
    assert math.isinf(hiding_bandwidth(CASES["tiny"], 8, 2e-6))


def test_table_command_prints_the_readme_table(capsys):
    distributed.main(["--table"])
    printed = capsys.readouterr().out
    assert printed.strip() == distributed.scaling_markdown()
    readme = (ROOT / "README.md").read_text()
    for line in distributed.scaling_markdown().splitlines():
        assert line in readme, f"README.md lacks the computed table's line {line!r}"


def test_measure_refuses_bad_arguments():
    with pytest.raises(ValueError, match="unknown case 'huge'; available: tiny, small"):
        distributed.measure("huge")
    with pytest.raises(ValueError, match="steps must be an int >= 1, received 0"):
        distributed.measure("medium", steps=0)
    with pytest.raises(ValueError, match="a bucket size is a positive int, 'none' or 'default'"):
        distributed.main(["--worker", "--buckets", "0"])


def test_worker_under_mpiexec_measures_both_bucket_sizes(tmp_path: Path):
    out = tmp_path / "worker.json"
    script = Path(distributed.__file__)
    args = ["--worker", "--mpi", "--case", "medium", "--scale", "16", "--steps", "2"]
    args += ["--repeats", "1", "--buckets", "none", "1024", "--out", str(out)]
    result = run_mpi(2, script, *args, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    measured = json.loads(out.read_text())
    case = CASES["medium"].scaled(16)
    assert measured["processes"] == 2
    assert measured["params"] == case.weights
    assert [run["bucket_bytes"] for run in measured["runs"]] == [None, 1024]
    for run in measured["runs"]:
        assert len(run["epoch_s"]) == 1
        assert run["samples_per_s"] == pytest.approx(2 * case.batch_size / run["epoch_s"][0])
        assert run["sync_ms_per_step"] > 0
        assert run["ready_calls_per_step"] >= 0
    allreduce = measured["allreduce"]
    assert allreduce["bytes"] == 4 * case.weights
    assert allreduce["median_ms"] >= allreduce["min_ms"] > 0
    # bus bandwidth = 2 (n-1)/n x bytes / time = bytes / time for two processes
    assert allreduce["bus_gb_per_s"] == pytest.approx(
        allreduce["bytes"] / (allreduce["median_ms"] / 1e3) / 1e9
    )


def test_measured_markdown_names_the_machine_and_every_run():
    run = {"bucket_bytes": None, "samples_per_s": 1000.0, "median_samples_per_s": 900.0}
    run["best_epoch_s"] = 0.5
    single = {"processes": 1, "runs": [run], "allreduce": None}
    parallel = {
        "processes": 2,
        "params": 100,
        "runs": [
            {**run, "samples_per_s": 1500.0, "sync_ms_per_step": 1.25, "ready_calls_per_step": 0},
            {**run, "bucket_bytes": 25 * 2**20, "sync_ms_per_step": 2.0},
        ],
        "allreduce": {"bytes": 400, "median_ms": 0.5, "min_ms": 0.25, "bus_gb_per_s": 0.0008},
    }
    result = {
        "machine": {"cpu": "Test CPU 9000", "cores": 2},
        "case": {"name": "medium", "widths": [4, 8, 2], "batch_size": 10},
        "steps": 5,
        "repeats": 3,
        "processes": 2,
        "threads": 2,
        "configurations": {"1x2": single, "1x1": single, "2x1": parallel},
    }
    text = distributed.measured_markdown(result)
    assert "Measured on Test CPU 9000 (2 cores), case medium (4-8-2, global batch 10)" in text
    rows = [line for line in text.splitlines() if re.match(r"\| \d × \d \|", line)]
    assert len(rows) == 4
    assert rows[2].startswith("| 2 × 1 | `None` | 1,500 | 900 | 100.00 | 1.50× | 1.50× | 1.25 |")
    assert "25 MiB (default)" in rows[3]
    assert "median 0.50 ms" in text
