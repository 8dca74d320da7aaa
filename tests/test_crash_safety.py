"""Saves killed with SIGKILL at random points: the target file is always one
complete version, versions never go back, and the next save removes the temporary
files the killed saves left. 50 kills, about 20 seconds.

``crash_safety_worker.py`` imports dlcore once and forks the process to kill for each
trial, so that a trial costs its own run time and no interpreter start.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys

import numpy as np
import pytest

from dlcore import archive
from dlcore.models import load_model

pytestmark = pytest.mark.skipif(
    sys.platform == "win32" or not hasattr(os, "fork"), reason="needs fork and SIGKILL"
)

WORKER = os.path.join(os.path.dirname(__file__), "crash_safety_worker.py")
SAVE_KILLS, FIT_KILLS = 35, 15


@pytest.fixture(scope="module")
def worker():
    env = dict(
        os.environ,
        DLCORE_BACKEND="numpy",
        DLCORE_CPU_JIT="0",  # no compiling in every forked child
        OPENBLAS_NUM_THREADS="1",  # no threads in the process that forks
        OMP_NUM_THREADS="1",
    )
    process = subprocess.Popen(
        [sys.executable, WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    yield process
    assert process.stdin is not None
    process.stdin.close()
    process.wait(timeout=30)
    process.stdout.close()


def kill_during(worker, command: str) -> None:
    worker.stdin.write(command + "\n")
    worker.stdin.flush()
    assert worker.stdout.readline().strip() == "killed"


def temp_files(target) -> list[str]:
    pattern = archive.temp_file_pattern(target)
    return [name for name in os.listdir(os.path.dirname(target)) if pattern.fullmatch(name)]


def flat_weights(model) -> np.ndarray:
    return np.concatenate([w.ravel() for w in model.get_weights()])


def version_in(path) -> int:
    """The ``k`` of the file that ``save_forever`` wrote: every weight, the step count and
    every optimizer slot must equal the same ``k``."""
    model = load_model(path)
    weights = flat_weights(model)
    k = weights[0]
    assert k == int(k) and np.all(weights == k)
    state = model.optimizer.get_state()
    assert all(np.all(value == k) for value in state.values()), state
    return int(k)


def test_a_killed_save_leaves_a_complete_version(worker, tmp_path):
    import crash_safety_worker as job

    target = str(tmp_path / "model.keras")
    first = job.model()
    job.build_optimizer_state(first)
    job.set_state(first, 0)
    first.save(target)
    rng = random.Random(11)
    versions = [0]
    for _ in range(SAVE_KILLS):
        kill_during(worker, f"save {target} {versions[-1] + 1} {rng.uniform(0.02, 0.25):.4f}")
        versions.append(version_in(target))
        assert versions[-1] >= versions[-2], versions  # never an older version
        assert len(temp_files(target)) <= 1  # each save removed the ones before it
    assert versions[-1] > 0, "no save completed before its kill"
    load_model(target).save(target)
    assert temp_files(target) == []
    assert sorted(os.listdir(tmp_path)) == ["model.keras"]


def test_a_killed_fit_with_model_checkpoint_leaves_a_complete_version(worker, tmp_path):
    import crash_safety_worker as job

    target = str(tmp_path / "checkpoint.keras")
    first = job.model()
    first.save(target)
    complete = {flat_weights(first).tobytes()}
    rng = random.Random(12)
    for trial in range(FIT_KILLS):
        states = tmp_path / f"states_{trial}"
        states.mkdir()
        kill_during(worker, f"fit {target} {states} {rng.uniform(0.05, 0.4):.4f}")
        complete |= {np.load(p).tobytes() for p in states.glob("epoch_*.npy")}
        assert flat_weights(load_model(target)).tobytes() in complete
    assert len(complete) > 1, "no epoch ended before its kill"
    load_model(target).save(target)
    assert temp_files(target) == []
