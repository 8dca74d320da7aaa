"""Shared fixtures: every conformance test runs once per available engine.

``pytest --engine NAME`` (repeatable) narrows the run to the named engines.
"""

from __future__ import annotations

import numpy as np
import pytest

import dlcore
from dlcore import backends, config

DEFAULT_ENGINES = ("numpy", "array_api_strict")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--engine",
        action="append",
        default=None,
        help="run the engine-parametrized tests on this engine only (repeatable); "
        f"one of {', '.join(backends.engine_names())}",
    )


def selected_engines(config_: pytest.Config) -> list[str]:
    """Engines the conformance tests run on: --engine, else every one available here."""
    chosen = config_.getoption("--engine")
    if chosen:
        for name in chosen:
            backends.engine_class(name)  # unknown names fail loudly
        return list(chosen)
    return [info.name for info in backends.available() if info.available]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "engine_name" in metafunc.fixturenames:
        names = selected_engines(metafunc.config)
        marks = {"cupy": [pytest.mark.gpu]}
        metafunc.parametrize(
            "engine_name", [pytest.param(n, marks=marks.get(n, []), id=n) for n in names]
        )


@pytest.fixture
def engine(engine_name: str):
    """The engine instance under test, also made the current engine for the test."""
    with dlcore.use_backend(engine_name) as current:
        yield current


@pytest.fixture(autouse=True)
def _restore_global_state():
    """Tests may change floatx, the seed or the engine; undo it afterwards."""
    saved = dict(config._state)
    yield
    config._state.clear()
    config._state.update(saved)


@pytest.fixture
def to_host(engine):
    """Copy an engine array back to NumPy."""
    return engine.to_numpy


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
