"""``python -m dlcore bench``: the command line on small sizes, the targets, the GEMM bound.

Nothing here asserts a speed: the runs are smoke runs on the numpy engine, and the
target logic is checked on made-up measurements.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import types

import numpy as np
import pytest

import dlcore
from dlcore.__main__ import main
from dlcore.benchmark import cases, report, runner
from dlcore.benchmark.cases import Case

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def weights_of(widths):
    """Kernels and biases of a stack of dense layers, counted again independently."""
    return sum(n_in * n_out + n_out for n_in, n_out in zip(widths[:-1], widths[1:]))


@pytest.fixture
def no_measuring(monkeypatch):
    """Fail the test if anything is measured."""

    def measured(*args, **kwargs):
        raise AssertionError("the benchmark started measuring")

    monkeypatch.setattr(runner, "run", measured)
    monkeypatch.setattr(runner, "measure_case", measured)


# ---------------------------------------------------------------------- the command line
def test_smoke_run_prints_every_case_and_writes_the_documented_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    code = main(["bench", "--smoke", "--engines", "numpy", "--repeats", "2", "--json", str(path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "samples/s" in out and "ms/step" in out and "of bound" in out
    for name, case in cases.CASES.items():
        small = case.scaled(runner.SMOKE_FACTOR)
        row = next(line for line in out.splitlines() if line.startswith(f"{name} "))
        assert "-".join(map(str, small.widths)) in row and " numpy " in row
    assert "SMOKE RUN" in out and "0 met, 0 not met" in out

    data = json.loads(path.read_text())
    assert set(data) == {
        "settings",
        "machine",
        "engines",
        "skipped",
        "results",
        "peaks",
        "targets",
        "all_targets_met",
        "sweep",
    }
    assert data["settings"]["steps"] == runner.SMOKE_STEPS and data["settings"]["smoke"] is True
    assert data["settings"]["engines"] == ["numpy"] and data["settings"]["repeats"] == 2
    assert {"platform", "cpu_count", "python", "numpy", "blas", "peers"} <= set(data["machine"])
    assert data["machine"]["numpy"] == np.__version__ and data["machine"]["cpu_count"] >= 1
    assert [r["case"] for r in data["results"]] == list(cases.CASES)
    for result in data["results"]:
        steps, batch = result["steps"], result["batch_size"]
        fastest = min(result["epoch_seconds"])
        step_seconds = fastest / steps
        assert len(result["epoch_seconds"]) == 2 and result["samples"] == steps * batch
        assert result["samples_per_second"] == pytest.approx(steps * batch / fastest)
        assert result["ms_per_step"] == pytest.approx(step_seconds * 1e3)
        median = statistics.median(result["epoch_seconds"])
        assert result["median_ms_per_step"] == pytest.approx(median / steps * 1e3)
        bound = 6 * batch * weights_of(result["widths"]) / result["peak_flops"]
        assert result["bound_fraction"] == pytest.approx(bound / step_seconds)
        assert result["peak_flops"] == pytest.approx(max(data["peaks"][result["case"]]["numpy"]))
        assert np.isfinite(result["warmup_loss"]) and np.isfinite(result["loss"])
    # a smoke run computes the targets' numbers but judges none of them
    assert data["targets"] and all(t["status"] == "not measured" for t in data["targets"])
    bound = [t for t in data["targets"] if t["target"] == "bound"]
    assert [t["case"] for t in bound] == ["medium", "large"]
    assert all(t["value"] is not None and "smoke run" in t["note"] for t in bound)


def test_the_module_entry_point_runs_and_reports_progress_on_stderr():
    done = subprocess.run(
        [sys.executable, "-m", "dlcore", "bench", "--smoke", "--engines", "numpy"]
        + ["--cases", "tiny", "--repeats", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert any(line.startswith("tiny ") for line in done.stdout.splitlines())
    assert "tiny: warm-up epoch on numpy" in done.stderr


def test_importing_the_benchmark_imports_no_peer_and_no_matplotlib():
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, dlcore.__main__, dlcore.benchmark.runner, dlcore.benchmark.report\n"
            "print([m for m in ('torch', 'jax', 'matplotlib') if m in sys.modules])",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "argv, named",
    [
        (["--engines", "numpy", "tensorflow"], "tensorflow"),
        (["--cases", "huge"], "huge"),
    ],
)
def test_unknown_names_are_rejected_with_the_valid_ones_before_any_work(
    argv, named, no_measuring, capsys
):
    with pytest.raises(SystemExit) as stopped:
        main(["bench", *argv])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert f"invalid choice: '{named}'" in err
    valid = dlcore.backends.engine_names() if argv[0] == "--engines" else tuple(cases.CASES)
    assert all(name in err for name in valid)


@pytest.mark.parametrize("option", ["--steps", "--repeats"])
@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_steps_and_repeats_must_be_positive_whole_numbers(option, value, no_measuring, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["bench", option, value])
    assert stopped.value.code == 2
    assert option in capsys.readouterr().err


def test_an_output_file_in_a_missing_folder_is_refused_before_any_work(
    tmp_path, no_measuring, capsys
):
    code = main(["bench", "--json", str(tmp_path / "nowhere" / "bench.json")])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err


def test_plot_without_matplotlib_says_what_to_install_before_any_work(
    tmp_path, monkeypatch, no_measuring, capsys
):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    code = main(["bench", "--smoke", "--plot", str(tmp_path / "throughput.png")])
    assert code == 2
    assert 'pip install "dlcore[bench]"' in capsys.readouterr().err
    assert not (tmp_path / "throughput.png").exists()


def test_plot_draws_the_sweep_to_a_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    picture, numbers = tmp_path / "throughput.png", tmp_path / "bench.json"
    argv = ["bench", "--smoke", "--engines", "numpy", "--cases", "tiny", "--repeats", "1"]
    code = main([*argv, "--plot", str(picture), "--json", str(numbers)])
    assert code == 0, capsys.readouterr().err
    assert picture.read_bytes()[:8] == PNG_SIGNATURE
    sweep = json.loads(numbers.read_text())["sweep"]
    factor = runner.SMOKE_FACTOR
    assert [p["value"] for p in sweep if p["axis"] == "batch_size"] == [
        b // factor for b in runner.SWEEP_BATCH_SIZES
    ]
    assert [p["value"] for p in sweep if p["axis"] == "width"] == [
        w // factor for w in runner.SWEEP_WIDTHS
    ]
    assert all(p["runner"] == "numpy" and p["samples_per_second"] > 0 for p in sweep)


def _tiny_case_with_bound_target(monkeypatch, min_bound_fraction):
    """A 'tiny' case small enough to train 100 steps in a moment, with a bound target,
    and a small GEMM for the peak, so that a run follows the protocol cheaply."""
    case = Case("tiny", (8, 4, 3), 4, min_bound_fraction=min_bound_fraction)
    monkeypatch.setitem(cases.CASES, "tiny", case)
    monkeypatch.setattr(runner, "GEMM_SIZE", 32)


@pytest.mark.parametrize(
    "min_bound_fraction, code, verdict",
    [(1e-12, 0, "OK: 1 met, 0 not met"), (1e9, 1, "FAILED: 0 met, 1 not met")],
)
def test_exit_status_says_whether_every_measured_target_is_met(
    monkeypatch, capsys, min_bound_fraction, code, verdict
):
    _tiny_case_with_bound_target(monkeypatch, min_bound_fraction)
    argv = ["bench", "--engines", "numpy", "--cases", "tiny", "--repeats", "1", "--steps", "100"]
    assert main(argv) == code
    out = capsys.readouterr().out
    assert verdict in out
    line = next(line for line in out.splitlines() if "of the GEMM bound" in line)
    assert ("NOT met" in line) == (code == 1)


def test_fewer_steps_than_the_protocol_are_not_judged(monkeypatch, capsys):
    _tiny_case_with_bound_target(monkeypatch, 1e9)
    argv = ["bench", "--engines", "numpy", "--cases", "tiny", "--repeats", "1", "--steps", "5"]
    assert main(argv) == 0
    assert "--steps 5 < 100" in capsys.readouterr().out


# ---------------------------------------------------------------------- engines
def test_the_simulated_numba_engine_is_refused_for_timing(monkeypatch, capsys):
    monkeypatch.setenv("NUMBA_ENABLE_CUDASIM", "1")
    timed, skipped = runner.select_engines(["numba", "numpy"])
    assert timed == ["numpy"]
    assert "simulator" in skipped["numba"] and "NUMBA_ENABLE_CUDASIM" in skipped["numba"]
    assert main(["bench", "--smoke", "--engines", "numba"]) == 2
    assert "simulator" in capsys.readouterr().err


def test_engines_that_cannot_run_are_skipped_with_their_reason():
    cannot = [info for info in dlcore.backends.available() if not info.available]
    if not cannot:
        pytest.skip("every engine runs on this machine")
    timed, skipped = runner.select_engines([cannot[0].name, "numpy"])
    assert timed == ["numpy"] and skipped == {cannot[0].name: cannot[0].detail}


def test_by_default_every_runnable_engine_but_the_test_engine_is_timed():
    timed, skipped = runner.select_engines(None)
    assert "numpy" in timed
    assert "array_api_strict" not in timed and "array_api_strict" not in skipped
    assert set(timed) | set(skipped) == set(dlcore.backends.engine_names()) - {"array_api_strict"}


# ---------------------------------------------------------------------- peers
class FakePeer:
    """Trains nothing; records when it is asked for an epoch."""

    def __init__(self, name, calls, weights, broken=False, precision="float32"):
        self.name, self.calls, self.weights, self.broken = name, calls, weights, broken
        self.precision = precision

    def epoch(self):
        if self.broken:
            raise RuntimeError("no such device")
        self.calls.append(self.name)
        return 0.5

    def get_weights(self):
        return self.weights

    def arithmetic(self):
        return f"fake {self.precision}"


@pytest.fixture
def fake_peers(monkeypatch):
    """A stand-in for dlcore.benchmark.peers with jax (so also jax-floor) installed and
    torch missing."""
    calls, received = [], {}
    fake = types.ModuleType("dlcore.benchmark.peers")
    fake.PEERS = ("jax", "jax-floor", "torch")
    fake.peer_versions = lambda: {"jax": "0.0.fake", "jax-floor": "0.0.fake", "torch": None}
    fake.broken = False

    def make_trainer(peer, case, x, y, weights, seed, precision="float32"):
        received[case.name] = (x, y, weights, seed)
        received[case.name, "precision"] = precision
        return FakePeer(peer, calls, weights, fake.broken, precision)

    fake.make_trainer = make_trainer
    monkeypatch.setitem(sys.modules, "dlcore.benchmark.peers", fake)
    monkeypatch.setattr(runner, "peer_peak_flops", lambda peer, size=None: 1e9)
    original = runner.DlcoreTrainer.epoch

    def recorded(self):
        calls.append(self.name)
        return original(self)

    monkeypatch.setattr(runner.DlcoreTrainer, "epoch", recorded)
    return types.SimpleNamespace(module=fake, calls=calls, received=received)


def test_peers_train_interleaved_from_the_same_data_and_weights(fake_peers):
    result = runner.run(
        ["numpy"], ["tiny", "medium"], peers=True, repeats=3, smoke=True, say=lambda _: None
    )
    trainers = ["numpy", "jax", "jax-floor"]
    # warm-up, then three rounds whose order rotates
    per_case = trainers + trainers + trainers[1:] + trainers[:1] + trainers[2:] + trainers[:2]
    assert fake_peers.calls == per_case * 2
    tiny = cases.CASES["tiny"].scaled(runner.SMOKE_FACTOR)
    x, y, weights, seed = fake_peers.received["tiny"]
    expected_x, expected_y = tiny.data(runner.SMOKE_STEPS, 0)
    assert seed == 0 and np.array_equal(x, expected_x) and np.array_equal(y, expected_y)
    with dlcore.use_backend("numpy"):
        dlcore.set_random_seed(0)
        model = runner.build_model(tiny)
    assert all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights()))

    found = {(m.case, m.runner): m for m in result.measurements}
    jax, numpy = found["tiny", "jax"], found["tiny", "numpy"]
    assert jax.kind == "peer" and jax.peak_source == "numpy" and jax.peak_flops == numpy.peak_flops
    assert jax.own_peak_flops == 1e9 and len(jax.epoch_seconds) == 3
    assert result.machine["peers"] == {"jax": "0.0.fake", "jax-floor": "0.0.fake", "torch": None}
    assert result.settings["peers"] == ["jax", "jax-floor"]
    assert "not installed" in result.skipped["torch"]
    assert 'pip install "dlcore[peers]"' in result.skipped["torch"]
    checks = {(c.case, c.peer): c for c in result.checks if c.target == "peer"}
    floor = found["tiny", "jax-floor"]
    assert floor.kind == "peer" and len(floor.epoch_seconds) == 3
    for peer, theirs in (("jax", jax), ("jax-floor", floor)):
        ratio = numpy.samples_per_second / theirs.samples_per_second
        assert checks["tiny", peer].value == pytest.approx(ratio)
    assert checks["tiny", "jax"].threshold == 2.0 and checks["tiny", "jax-floor"].threshold == 1.3
    assert checks["medium", "torch"].value is None
    assert "not installed" in checks["medium", "torch"].note
    assert all(c.status == runner.NOT_MEASURED for c in result.checks)  # a smoke run


def test_a_peer_that_fails_is_reported_and_the_engines_still_measured(fake_peers):
    fake_peers.module.broken = True
    result = runner.run(["numpy"], ["tiny"], peers=True, repeats=1, smoke=True, say=print)
    assert [m.runner for m in result.measurements] == ["numpy"]
    for peer in ("jax", "jax-floor"):
        assert "no such device" in result.skipped[peer]
        (check,) = [c for c in result.checks if c.peer == peer]
        assert check.status == runner.NOT_MEASURED and "no such device" in check.note


# ---------------------------------------------------------------------- arithmetic
@pytest.mark.parametrize(
    "name, weights",
    [("tiny", 42_310), ("small", 269_322), ("medium", 1_863_690), ("large", 21_020_682)],
)
def test_gemm_bound_is_six_flops_per_weight_and_sample_at_the_peak(name, weights):
    case = cases.CASES[name]
    assert case.weights == weights
    peak = 7.5e12
    bound = 6 * case.batch_size * weights / peak
    assert case.gemm_bound_seconds(peak) == pytest.approx(bound, rel=1e-12)
    m = runner.measurement(case, "numpy", "engine", 100, [2.0, 1.0, 3.0], peak, "numpy")
    assert m.bound_step_seconds == pytest.approx(bound, rel=1e-12)
    # the fastest epoch (1.0 s) counts; the median (2.0 s) is reported beside it
    assert m.bound_fraction == pytest.approx(bound / (1.0 / 100), rel=1e-12)
    assert m.samples_per_second == pytest.approx(100 * case.batch_size / 1.0)
    assert m.ms_per_step == pytest.approx(10.0) and m.median_ms_per_step == pytest.approx(20.0)


def made_up(name, runner_name, kind, samples_per_second, bound_fraction=0.5):
    """A measurement of case ``name`` at the given samples/s and fraction of the bound."""
    case = cases.CASES[name]
    steps = 100
    seconds = steps * case.batch_size / samples_per_second
    peak = 6 * case.batch_size * case.weights / (bound_fraction * seconds / steps)
    return runner.measurement(case, runner_name, kind, steps, [seconds], peak, "numpy")


@pytest.mark.parametrize(
    "peer, threshold, ours, theirs, status",
    [
        ("jax", 2.0, 25_000, 10_000, runner.MET),
        ("jax", 2.0, 20_000, 10_000, runner.MET),
        ("jax", 2.0, 15_000, 10_000, "NOT met"),
        ("jax-floor", 1.3, 15_000, 10_000, runner.MET),
        ("jax-floor", 1.3, 13_000, 10_000, runner.MET),
        ("jax-floor", 1.3, 12_000, 10_000, "NOT met"),
    ],
)
def test_a_peer_target_compares_samples_per_second(peer, threshold, ours, theirs, status):
    measured = [made_up("tiny", "numpy", "engine", ours), made_up("tiny", peer, "peer", theirs)]
    checks = {c.peer: c for c in runner.evaluate_targets(cases.CASES["tiny"], measured)}
    assert set(checks) == {"jax", "jax-floor"}
    check = checks[peer]
    assert (check.engine, check.target, check.threshold) == ("numpy", "peer", threshold)
    assert check.value == pytest.approx(ours / theirs) and check.status == status
    (other,) = [c for name, c in checks.items() if name != peer]
    assert other.status == runner.NOT_MEASURED and "--peers" in other.note


@pytest.mark.parametrize(
    "name, ratios",
    [("tiny", {"jax": 2.0, "jax-floor": 1.3}), ("small", {"jax": 1.3, "jax-floor": 1.3})],
)
def test_tiny_and_small_judge_jax_and_its_floor_each_at_its_own_ratio(name, ratios):
    """dlcore at 1.5x JAX and 1.35x JAX's floor: each peer judged against its own ratio."""
    measured = [
        made_up(name, "numpy", "engine", 27_000),
        made_up(name, "jax", "peer", 18_000),
        made_up(name, "jax-floor", "peer", 20_000),
    ]
    checks = runner.evaluate_targets(cases.CASES[name], measured)
    assert [(c.target, c.peer) for c in checks] == [("peer", "jax"), ("peer", "jax-floor")]
    found = {c.peer: c for c in checks}
    assert {peer: c.threshold for peer, c in found.items()} == ratios
    assert found["jax"].value == pytest.approx(1.5)
    assert found["jax-floor"].value == pytest.approx(1.35)
    for peer, check in found.items():
        assert check.status == (runner.MET if check.value >= ratios[peer] else "NOT met")
    line = report.format_check(found["jax-floor"])
    assert "samples/s >= 1.3 x jax-floor" in line and "1.35x" in line


def test_a_peer_that_was_not_measured_is_not_measured_not_passed():
    measured = [made_up("tiny", "numpy", "engine", 1e6)]
    missing = {
        peer: f'{peer} is not installed (pip install "dlcore[peers]")'
        for peer in ("jax", "jax-floor")
    }
    checks = runner.evaluate_targets(cases.CASES["tiny"], measured, peers_missing=missing)
    assert [c.peer for c in checks] == ["jax", "jax-floor"]
    for check in checks:
        assert check.status == runner.NOT_MEASURED and check.value is None
        assert check.note == missing[check.peer]
    checks = runner.evaluate_targets(cases.CASES["tiny"], measured)
    assert all(c.status == runner.NOT_MEASURED and "--peers" in c.note for c in checks)


def test_medium_checks_both_peers_and_the_bound():
    measured = [
        made_up("medium", "cupy", "engine", 12_000, bound_fraction=0.95),
        made_up("medium", "numba", "engine", 9_000, bound_fraction=0.6),
        made_up("medium", "jax", "peer", 10_000),
    ]
    checks = runner.evaluate_targets(cases.CASES["medium"], measured)
    found = {(c.engine, c.peer or c.target): c for c in checks}
    assert {key: c.status for key, c in found.items()} == {
        ("cupy", "jax"): runner.MET,
        ("cupy", "torch"): runner.NOT_MEASURED,
        ("cupy", "bound"): runner.MET,
        ("numba", "jax"): "NOT met",
        ("numba", "torch"): runner.NOT_MEASURED,
        ("numba", "bound"): "NOT met",
    }
    assert found["cupy", "bound"].value == pytest.approx(0.95)
    assert found["numba", "bound"].value == pytest.approx(0.6)
    assert not runner.BenchmarkRun({}, {}, checks=checks).all_met
    met_or_unmeasured = [c for c in checks if c.engine == "cupy"]
    assert runner.BenchmarkRun({}, {}, checks=met_or_unmeasured).all_met


def test_an_unjudged_run_keeps_the_numbers_but_judges_nothing():
    measured = [made_up("large", "numpy", "engine", 500, bound_fraction=0.2)]
    checks = runner.evaluate_targets(cases.CASES["large"], measured, unjudged="smoke run")
    (check,) = [c for c in checks if c.target == "bound"]
    assert check.status == runner.NOT_MEASURED and check.value == pytest.approx(0.2)
    assert check.note.startswith("smoke run; ")
    assert all(c.status == runner.NOT_MEASURED for c in checks)


def test_target_lines_name_the_goal_the_verdict_and_the_numbers():
    measured = [
        made_up("small", "numpy", "engine", 26_000),
        made_up("small", "jax", "peer", 10_000),
    ]
    (check,) = [
        c for c in runner.evaluate_targets(cases.CASES["small"], measured) if c.peer == "jax"
    ]
    line = report.format_check(check)
    assert "small" in line and "1.3 x jax" in line and " met " in line and "2.60x" in line
    assert "numpy 26,000 vs jax 10,000 samples/s" in line


def test_json_holds_no_nan(tmp_path):
    measured = runner.measurement(
        cases.CASES["tiny"], "numpy", "engine", 100, [1.0], 1e9, "numpy"
    )  # warm-up and last losses left at NaN
    path = tmp_path / "bench.json"
    report.write_json(runner.BenchmarkRun({}, {}, measurements=[measured]), path)
    text = path.read_text()
    assert "NaN" not in text and json.loads(text)["results"][0]["loss"] is None
