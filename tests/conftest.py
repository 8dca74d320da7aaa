"""Shared fixtures: every conformance test runs once per available engine.

``pytest --engine NAME`` (repeatable) narrows the run to the named engines.
"""

from __future__ import annotations

import ctypes.util
import os
import sys

# Without a CUDA driver, the numba engine and the kernel tests run in Numba's CUDA
# simulator. It must be chosen before numba is first imported. The simulator runs
# each CUDA thread as an OS thread; a short GIL switch interval makes the threads
# of a block meet at cuda.syncthreads() about ten times sooner.
if "NUMBA_ENABLE_CUDASIM" not in os.environ and ctypes.util.find_library("cuda") is None:
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
# On a GPU, numba-cuda warns (NumbaPerformanceWarning) at every launch of fewer than 128
# blocks, which is most launches of the tests' small shapes, and the tests turn warnings
# into errors. Numba reads this when it is first imported, so it is set here too
# (pyproject.toml also ignores that one message).
os.environ["NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS"] = "0"
if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    sys.setswitchinterval(1e-4)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import dlcore  # noqa: E402
from dlcore import backends, config  # noqa: E402

DEFAULT_ENGINES = ("numpy", "array_api_strict")
SIMULATED_ENGINES = ("numba",) if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" else ()


# Model-level tests train for many steps. In Numba's CUDA simulator a training step of
# the smallest model takes seconds, and these modules would take hours
# on two cores; by default they run there only with --full-simulation. The kernel
# tests, the operation-level conformance modules and tests/test_numba_engine.py (whole
# fits against numpy) always run on the simulated engine.
MODEL_LEVEL_MODULES = (
    "test_models",
    "test_saving",
    "test_keras_course",
    "test_demo_and_cli",
    "test_functional",
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--full-simulation",
        action="store_true",
        default=False,
        help="also run the model-level tests (" + ", ".join(MODEL_LEVEL_MODULES) + ") on "
        "engines that run in Numba's CUDA simulator (hours on 2 cores)",
    )
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
        marks: dict[str, list] = {"cupy": [pytest.mark.gpu], "numba": [pytest.mark.gpu]}
        if "numba" in SIMULATED_ENGINES:
            marks["numba"] = [pytest.mark.cudasim]
            model_level = metafunc.module.__name__.rsplit(".", 1)[-1] in MODEL_LEVEL_MODULES
            if model_level and not metafunc.config.getoption("--full-simulation"):
                marks["numba"].append(
                    pytest.mark.skip(
                        reason="model-level test on the CUDA simulator: run with --full-simulation"
                    )
                )
        metafunc.parametrize(
            "engine_name", [pytest.param(n, marks=marks.get(n, []), id=n) for n in names]
        )


@pytest.fixture
def simulated(engine_name: str) -> bool:
    """Whether the engine under test runs in Numba's CUDA simulator, one OS thread per
    CUDA thread: a training step there takes seconds, so tests that train for many
    steps or differentiate numerically take fewer steps or coordinates."""
    return engine_name in SIMULATED_ENGINES


@pytest.fixture
def engine(engine_name: str):
    """The engine instance under test, also made the current engine for the test."""
    with dlcore.use_backend(engine_name) as current:
        yield current


@pytest.fixture(autouse=True)
def _restore_global_state():
    """Tests may change floatx, the seed, the engine or the distribution; undo it
    afterwards."""
    saved = dict(config._state)
    yield
    config._state.clear()
    config._state.update(saved)
    dlcore.distribute.shutdown()


@pytest.fixture
def to_host(engine):
    """Copy an engine array back to NumPy."""
    return engine.to_numpy


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Kernel tests (tests/kernels/) carry the ``cudasim`` marker: ``-m cudasim`` selects
    every test that runs CUDA kernels."""
    for item in items:
        if "kernels" in item.path.parts[-2:-1]:
            item.add_marker(pytest.mark.cudasim)
