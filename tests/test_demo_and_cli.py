"""The demo, the command line, engine selection and import hygiene."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

import dlcore
from dlcore import demo


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
    )


def test_demo_reaches_keras_accuracy_and_reloads_identically(engine_name, tmp_path):
    path = tmp_path / "digits.h5"
    result = demo.run(engine_name, verbose=0, save_path=str(path))
    assert result.engine == engine_name
    assert result.val_accuracy >= 0.92
    assert result.reload_max_difference == 0.0
    assert path.exists()


def test_demo_command_prints_progress_summary_and_accuracy():
    done = subprocess.run(
        [sys.executable, "-m", "dlcore", "demo", "--verbose", "2", "--epochs", "3"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "Epoch 3/3" in done.stdout and "val_accuracy" in done.stdout
    assert "Total params: 6,310" in done.stdout
    assert "validation accuracy on the last 30% of the digits" in done.stdout
    assert "largest prediction difference 0.0e+00" in done.stdout


def test_demo_on_a_missing_engine_says_what_to_install():
    done = subprocess.run(
        [sys.executable, "-m", "dlcore", "demo", "--backend", "cupy", "--verbose", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if dlcore.backends.engine_class("cupy").availability()[0]:
        pytest.skip("this machine has a usable CuPy")
    assert done.returncode == 2
    assert "engine 'cupy' cannot run here" in done.stderr and "pip install" in done.stderr


def test_engines_command_lists_every_engine():
    done = subprocess.run(
        [sys.executable, "-m", "dlcore", "engines"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0
    for name in dlcore.backends.engine_names():
        assert name in done.stdout


def test_importing_dlcore_imports_neither_cupy_nor_numba():
    done = run_python(
        "import sys, dlcore, dlcore.models, dlcore.layers, dlcore.backends\n"
        "dlcore.backends.available()\n"
        "heavy = [m for m in ('cupy', 'numba', 'array_api_strict') if m in sys.modules]\n"
        "print(heavy)"
    )
    assert done.returncode == 0, done.stderr
    # available() asks array_api_strict and numba (is there a GPU?) whether they can run;
    # importing dlcore and building models imports neither
    probed = [m for m in ("numba", "array_api_strict") if importlib.util.find_spec(m)]
    assert done.stdout.strip() == str(probed)


def test_plain_import_loads_no_engine_library():
    done = run_python(
        "import sys, dlcore\n"
        "print([m for m in ('cupy', 'numba', 'array_api_strict', 'array_api_compat') "
        "if m in sys.modules])"
    )
    assert done.stdout.strip() == "[]", done.stderr


def test_environment_variable_selects_the_engine():
    done = run_python("import dlcore; print(dlcore.backend())", DLCORE_BACKEND="array_api_strict")
    assert done.stdout.strip() == "array_api_strict", done.stderr
    done = run_python("import dlcore; dlcore.get_backend()", DLCORE_BACKEND="tensorflow")
    assert "DLCORE_BACKEND='tensorflow': unknown engine 'tensorflow'; available:" in done.stderr


def test_set_backend_and_use_backend():
    assert dlcore.backend() == "numpy"
    with dlcore.use_backend("array_api_strict") as engine:
        assert engine.name == "array_api_strict" and dlcore.backend() == "array_api_strict"
    assert dlcore.backend() == "numpy"
    dlcore.set_backend("array_api_strict")
    assert dlcore.backend() == "array_api_strict"
    with pytest.raises(ValueError, match="unknown engine 'jax'; available: numpy, cupy"):
        dlcore.set_backend("jax")
