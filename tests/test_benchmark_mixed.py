"""``python -m dlcore bench --precision mixed_...``: the second table, what ran, and the
global settings put back. Smoke runs on the numpy engine; nothing here asserts a speed."""

from __future__ import annotations

import json
import math
import re

import pytest
from dlcore.backends import cpu_bf16

import dlcore
from dlcore import config, mixed_precision
from dlcore.__main__ import main
from dlcore.benchmark import cases, report, runner

# The numpy engine has no float16 kernels (and bfloat16 products only on CPUs with
# AVX-512 BF16 or AMX): it warns once and computes float32, which is what these tests
# check the report says.
NO_HALF_KERNELS = pytest.mark.filterwarnings(
    "ignore:the numpy engine has no .*float16 kernels:RuntimeWarning"
)
SMOKE_TINY = ["bench", "--smoke", "--engines", "numpy", "--cases", "tiny", "--repeats", "1"]


@pytest.fixture
def no_measuring(monkeypatch):
    """Fail the test if anything is measured."""

    def measured(*args, **kwargs):
        raise AssertionError("the benchmark started measuring")

    monkeypatch.setattr(runner, "run", measured)


@pytest.fixture
def global_settings():
    """The global dtype policy and matmul precision as they are, put back after the test."""
    policy, matmul = config.dtype_policy_name(), config.matmul_precision()
    yield policy, matmul
    mixed_precision.set_global_policy(policy)
    config.set_matmul_precision(matmul)


# ---------------------------------------------------------------------- the command line
@pytest.mark.parametrize("value", ["half", "float16", "mixed"])
def test_an_unknown_precision_is_refused_with_the_valid_ones_before_any_work(
    value, no_measuring, capsys
):
    with pytest.raises(SystemExit) as stopped:
        main(["bench", "--precision", value])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "--precision" in err and f"invalid choice: '{value}'" in err
    assert all(name in err for name in cases.PRECISIONS)


def test_the_precision_option_is_documented_in_the_help(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--precision PRECISION [PRECISION ...]" in out
    assert all(name in out for name in cases.PRECISIONS)
    assert "torch.autocast" in out and "LossScaleOptimizer" in out


def test_the_runner_refuses_an_unknown_precision_before_any_work():
    with pytest.raises(ValueError, match=r"unknown precision 'fp16'; available: float32, mixed"):
        runner.run(["numpy"], ["tiny"], precisions=["fp16"], smoke=True)


@NO_HALF_KERNELS
def test_a_mixed_smoke_run_prints_its_own_table_with_what_really_ran(
    tmp_path, capsys, global_settings
):
    path = tmp_path / "bench.json"
    code = main([*SMOKE_TINY, "--precision", "mixed_float16", "--json", str(path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "=== MIXED PRECISION: mixed_float16 ===" in out and "none of its targets" in out
    # no float32 table, so neither its bound nor its targets
    assert "=== FLOAT32 ===" not in out and "Targets" not in out and "of bound" not in out
    row = next(line for line in out.splitlines() if line.startswith("tiny "))
    assert " numpy " in row and "float32 (no float16 kernels); loss scaling" in row
    assert "note: numpy did not compute mixed_float16" in out

    data = json.loads(path.read_text())
    assert data["settings"]["dtype"] is None
    assert data["settings"]["mixed"] == {
        "precisions": ["mixed_float16"],
        "matmul_precision": "high",
    }
    assert data["results"] == [] and data["targets"] == [] and data["all_targets_met"] is True
    (mixed,) = data["mixed"]
    assert mixed["precision"] == "mixed_float16" and mixed["runner"] == "numpy"
    assert mixed["layer_dtypes"] == ["float32", "float32", "float32"]
    assert "no float16 kernels" in mixed["fallback"]
    assert mixed["peak_flops"] is None and mixed["bound_fraction"] is None
    assert math.isfinite(mixed["warmup_loss"]) and mixed["samples_per_second"] > 0
    assert global_settings == (config.dtype_policy_name(), config.matmul_precision())


@NO_HALF_KERNELS
def test_float32_and_mixed_in_one_run_keep_the_targets_on_the_float32_table(tmp_path, capsys):
    path = tmp_path / "bench.json"
    argv = [*SMOKE_TINY, "--precision", "float32", "mixed_bfloat16", "--json", str(path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    float32_at, mixed_at = out.index("=== FLOAT32 ==="), out.index("=== MIXED PRECISION")
    assert float32_at < out.index("Targets") < mixed_at
    mixed_row = next(line for line in out[mixed_at:].splitlines() if line.startswith("tiny "))
    # the numpy engine runs bfloat16 products where the CPU and oneDNN allow
    computed = (
        "bfloat16 products, float32 output (float32 arrays)"
        if cpu_bf16.status()[0]
        else "float32 (no bfloat16 kernels)"
    )
    assert computed in mixed_row
    assert re.fullmatch(r"\d+\.\d\dx", mixed_row.split()[7])  # samples/s vs float32
    assert "loss scaling" not in mixed_row  # only mixed_float16 scales the loss
    data = json.loads(path.read_text())
    assert [m["runner"] for m in data["results"]] == ["numpy"]
    assert [m["precision"] for m in data["mixed"]] == ["mixed_bfloat16"]
    assert {t["case"] for t in data["targets"]} == {"tiny"}
    assert len(data["targets"]) == len(cases.PEER_TARGETS["tiny"])


def test_the_default_run_has_no_mixed_table(capsys):
    assert main(SMOKE_TINY) == 0
    out = capsys.readouterr().out
    assert "MIXED" not in out and "===" not in out
    assert "; float32, Dense ReLU layers" in out


# ---------------------------------------------------------------------- the runner
@NO_HALF_KERNELS
def test_peers_get_the_precision_and_report_what_they_ran(fake_peers_module):
    result = runner.run(
        ["numpy"], ["tiny"], peers=True, precisions=["mixed_float16"], repeats=1, smoke=True,
        say=lambda _: None,
    )  # fmt: skip
    assert fake_peers_module.precisions == ["mixed_float16"]
    found = {row.measurement.runner: row for row in result.mixed}
    assert found["jax"].arithmetic == runner.Arithmetic("fake mixed_float16")
    assert found["numpy"].arithmetic.layer_dtypes == ("float32",) * 3
    assert result.measurements == [] and result.checks == [] and result.all_met


@NO_HALF_KERNELS
@pytest.mark.parametrize("precision", cases.MIXED_PRECISIONS)
def test_global_policy_and_matmul_precision_are_restored_after_a_run(precision):
    mixed_precision.set_global_policy("float64")
    config.set_matmul_precision("high")
    try:
        runner.run(["numpy"], ["tiny"], precisions=[precision], repeats=1, smoke=True)
        assert config.dtype_policy_name() == "float64" and config.matmul_precision() == "high"
    finally:
        config.set_dtype_policy_name(None)
        config.set_matmul_precision("highest")
    runner.run(["numpy"], ["tiny"], precisions=[precision], repeats=1, smoke=True)
    assert mixed_precision.global_policy().name == dlcore.floatx()
    assert config.matmul_precision() == "highest"


def test_precision_scope_sets_both_and_puts_them_back_on_an_error(global_settings):
    with pytest.raises(KeyError), runner.precision_scope("mixed_bfloat16"):
        assert mixed_precision.global_policy().name == "mixed_bfloat16"
        assert config.matmul_precision() == runner.MIXED_MATMUL_PRECISION
        raise KeyError("while training")
    assert (config.dtype_policy_name(), config.matmul_precision()) == global_settings
    mixed_precision.set_global_policy("mixed_float16")
    config.set_matmul_precision("high")
    with runner.precision_scope("float32"):  # the float32 table is float32 whatever was set
        assert mixed_precision.global_policy().name == "float32"
        assert config.matmul_precision() == "highest"
    assert (config.dtype_policy_name(), config.matmul_precision()) == ("mixed_float16", "high")


@pytest.mark.parametrize("precision", cases.MIXED_PRECISIONS)
def test_the_mixed_model_computes_its_output_layer_in_float32(precision):
    with runner.precision_scope(precision):
        model = runner.build_model(cases.CASES["tiny"])
    assert [layer.dtype_policy.name for layer in model.layers] == [precision] * 2 + ["float32"]
    assert [layer.compute_dtype for layer in model.layers][-1] == "float32"


@NO_HALF_KERNELS
def test_the_trainer_reports_the_dtypes_its_layers_ran_in():
    case = cases.CASES["tiny"].scaled(runner.SMOKE_FACTOR)
    x, y = case.data(2)
    trainer = runner.DlcoreTrainer(
        "numpy", case, x, y, runner.initial_weights(case), "mixed_float16"
    )
    assert math.isfinite(trainer.epoch())
    found = trainer.arithmetic()
    assert found.layer_dtypes == ("float32", "float32", "float32")
    assert found.summary == "float32 (no float16 kernels); loss scaling"
    assert found.fallback == "the numpy engine has no float16 kernels: its layers ran in float32"
    assert all(w.dtype == "float32" for w in trainer.get_weights())


def test_an_engine_that_computes_the_policy_reports_it_without_a_fallback():
    class Ran:
        def __init__(self, dtype, product_dtype=None):
            self.run_dtype = dtype
            self.product_dtype = product_dtype

    model = type("FakeModel", (), {})()
    model.layers = [Ran("float16"), Ran("float16"), Ran("float32")]
    model.engine = type("FakeEngine", (), {"name": "cupy"})()
    model.optimizer = dlcore.optimizers.LossScaleOptimizer(dlcore.optimizers.Adam())
    found = runner.model_arithmetic(model, "mixed_float16")
    assert found == runner.Arithmetic(
        "float16, float32 output; loss scaling", ("float16", "float16", "float32"), None
    )
    # the numpy engine's bfloat16: products in bfloat16, arrays in float32
    model.layers = [Ran("float32", "bfloat16"), Ran("float32", "bfloat16"), Ran("float32")]
    model.engine = type("FakeEngine", (), {"name": "numpy"})()
    model.optimizer = dlcore.optimizers.Adam()
    found = runner.model_arithmetic(model, "mixed_bfloat16")
    assert found == runner.Arithmetic(
        "bfloat16 products, float32 output (float32 arrays)", ("float32",) * 3, None
    )


def test_the_mixed_table_compares_with_float32_only_where_both_ran():
    tiny = cases.CASES["tiny"]
    float32 = [runner.measurement(tiny, "numpy", "engine", 10, [2.0], 1e9, "numpy")]
    mixed = [
        runner.MixedMeasurement(
            "mixed_float16",
            runner.Arithmetic("float16, float32 output"),
            runner.measurement(tiny, name, kind, 10, [1.0], math.nan, "none"),
        )
        for name, kind in (("numpy", "engine"), ("jax", "peer"))
    ]
    rows = report.format_mixed_table(mixed, float32).splitlines()[2:]
    vs_float32 = [row.split()[7] for row in rows]
    assert vs_float32 == ["2.00x", "-"]  # jax trained no float32 epoch here
    assert rows[0].endswith("float16, float32 output")


@pytest.fixture
def fake_peers_module(monkeypatch):
    """A stand-in for dlcore.benchmark.peers with only jax, recording the precisions."""
    import sys
    import types

    fake = types.ModuleType("dlcore.benchmark.peers")
    fake.PEERS = ("jax",)
    fake.peer_versions = lambda: {"jax": "0.0.fake"}
    fake.precisions = []

    class Peer:
        name = "jax"

        def __init__(self, weights, precision):
            self.weights, self.precision = weights, precision

        def epoch(self):
            return 0.5

        def get_weights(self):
            return self.weights

        def arithmetic(self):
            return f"fake {self.precision}"

    def make_trainer(peer, case, x, y, weights, seed, precision="float32"):
        fake.precisions.append(precision)
        return Peer(weights, precision)

    fake.make_trainer = make_trainer
    monkeypatch.setitem(sys.modules, "dlcore.benchmark.peers", fake)
    return fake
