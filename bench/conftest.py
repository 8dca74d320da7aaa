"""Options of the throughput benchmarks: which sizes they train.

With timing off (the normal test run: ``addopts`` has ``--benchmark-disable``) every
benchmark trains its case divided by ``runner.SMOKE_FACTOR`` for a couple of batches,
so CI runs them in seconds and they cannot rot; with ``--benchmark-enable`` (``make
bench``) they train the real sizes. ``--bench-size`` overrides either.
"""

from __future__ import annotations

import pytest

from dlcore import backends
from dlcore.benchmark import runner


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--bench-size",
        choices=("auto", "smoke", "full"),
        default="auto",
        help="sizes the benchmarks in bench/ train: the real cases (full), the cases divided "
        "by 16 for two batches (smoke), or full exactly when timing is on (auto, default)",
    )


@pytest.fixture(scope="session")
def bench_full(pytestconfig: pytest.Config) -> bool:
    """Whether the benchmarks train the real sizes (else the smoke sizes)."""
    size = pytestconfig.getoption("--bench-size")
    if size != "auto":
        return size == "full"
    # pytest-benchmark's own rule: --benchmark-enable wins over --benchmark-disable
    disabled = pytestconfig.getoption("benchmark_disable") and not pytestconfig.getoption(
        "benchmark_enable"
    )
    return not disabled


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``engine``: every engine that runs here (``--engine NAME`` of tests/conftest.py
    narrows it when given); the numba engine in the CUDA simulator is skipped."""
    if "engine" not in metafunc.fixturenames:
        return
    chosen = metafunc.config.getoption("--engine", default=None)
    names = chosen or [info.name for info in backends.available() if info.available]
    params = []
    for name in names:
        why = runner.refusal(name)
        marks = [pytest.mark.skip(reason=why)] if why else []
        params.append(pytest.param(name, marks=marks, id=name))
    metafunc.parametrize("engine", params)
