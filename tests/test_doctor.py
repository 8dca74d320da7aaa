"""``python -m dlcore doctor``: what it checks here, what it cannot, and its exit status."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest

from dlcore import __main__ as cli
from dlcore import backends, doctor


def test_doctor_command_passes_and_says_what_it_could_not_check():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    done = subprocess.run(
        [sys.executable, "-m", "dlcore", "doctor"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    for name in backends.engine_names():
        assert any(line.split()[:1] == [name] for line in lines), f"{name} not listed"
    assert any(line.split()[:2] == ["numpy", "PASS"] for line in lines), done.stdout
    assert "OK: every check that could run here passed" in done.stdout
    gpu, _ = doctor.find_cuda_gpu()
    if gpu is None:
        assert "not run: no CUDA GPU here (" in done.stdout
        assert "Not checked here:" in done.stdout
        assert "training and the gemm timing on a real CUDA GPU:" in done.stdout
    else:
        assert f"on {gpu}" in done.stdout


def test_a_disagreeing_engine_fails_the_doctor(monkeypatch, capsys):
    train = doctor.train

    def off_by_a_little(engine_name: str, dtype: str) -> doctor.TrainingRun:
        run = train(engine_name, dtype)
        if engine_name == "numpy":
            return run
        return dataclasses.replace(run, predictions=run.predictions * (1 + 1e-4))

    monkeypatch.setattr(doctor, "train", off_by_a_little)
    assert cli.main(["doctor", "--engine", "numpy", "--engine", "array_api_strict"]) == 1
    output = capsys.readouterr().out
    assert any(line.split()[:2] == ["array_api_strict", "FAIL"] for line in output.splitlines())
    assert "FAILED: array_api_strict" in output


def test_an_engine_that_raises_is_reported_and_fails(monkeypatch):
    def broken(engine_name: str, dtype: str) -> doctor.TrainingRun:
        raise RuntimeError("kernel launch failed\nmore detail")

    monkeypatch.setattr(doctor, "train", broken)
    lines: list[str] = []
    assert not doctor.run(["numpy"], say=lines.append)
    assert "  numpy              FAIL  RuntimeError: kernel launch failed" in lines


def test_max_relative_difference():
    expected = np.array([1.0, -2.0, 0.0])
    assert doctor.max_relative_difference(expected, expected) == 0.0
    assert doctor.max_relative_difference(expected * 1.5, expected) == pytest.approx(0.5)
    assert doctor.max_relative_difference(np.array([1.0, -2.0, np.nan]), expected) == np.inf
    assert doctor.max_relative_difference(expected[:2], expected) == np.inf


def test_importing_the_doctor_imports_neither_cupy_nor_numba():
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, dlcore.doctor; print('numba' in sys.modules, 'cupy' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.split() == ["False", "False"], done.stderr
