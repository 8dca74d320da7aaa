"""``run_mpi``: run a script under ``mpiexec`` from a test, and never hang.

The ``mpiexec`` used is the one next to ``sys.executable`` (the ``mpich`` wheel of
``dlcore[mpi]`` puts it there), so the processes run the same Python and MPI library as
the test. Tests that need it are skipped, with the reason, when mpi4py or that
``mpiexec`` is missing.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).parent / "distribute_scripts"
ROOT = Path(__file__).resolve().parent.parent


def mpiexec() -> Path:
    """The ``mpiexec`` next to ``sys.executable``; skips the test when there is none or
    mpi4py is not installed."""
    if importlib.util.find_spec("mpi4py") is None:
        pytest.skip("mpi4py is not installed: pip install dlcore[mpi]")
    path = Path(sys.executable).parent / "mpiexec"
    if not path.exists():
        pytest.skip(f"no mpiexec next to {sys.executable}: pip install dlcore[mpi]")
    return path


def run_mpi(
    n: int, script: str | Path, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``mpiexec -n n python script args`` and return its exit code and output
    (stdout and stderr, as text).

    ``script`` is a path, or a file name in ``tests/distribute_scripts/``. Each process
    runs one thread of OpenMP and Numba (the machine is shared). On ``timeout`` seconds
    the whole process group is killed and the test fails with the output so far.
    """
    path = Path(script)
    if not path.is_absolute() and not path.exists():
        path = SCRIPTS / path
    command = [str(mpiexec()), "-n", str(n), sys.executable, str(path), *map(str, args)]
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), str(SCRIPTS), env.get("PYTHONPATH", "")) if p
    )
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
        start_new_session=True,  # its own process group, killed whole on timeout
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(
            f"{' '.join(command)} ran past {timeout} s and was killed\n"
            f"--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
        )
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
