"""``check_same`` under mpiexec: the last rank's input shape differs from the others'.
Each process writes the message it raised, or ``NONE``, to ``<argv[1]>/rank<r>.txt``;
a matching setting raises nothing first."""

from __future__ import annotations

import sys
from pathlib import Path

from dlcore.distribute.failure import check_same, install_abort_on_exception
from dlcore.distribute.mpi import MPICommunicator

comm = MPICommunicator()
install_abort_on_exception(comm)
WHAT = "fit()"

check_same(comm, WHAT, {"input shape": "(None, 4)", "layers": 3})  # the same everywhere

last = comm.rank == comm.size - 1
setting = {"input shape": "(None, 5)" if last else "(None, 4)", "layers": 3}
if last:
    setting["loss"] = "mse"
message = "NONE"
try:
    check_same(comm, WHAT, setting)
except ValueError as error:
    message = str(error)
Path(sys.argv[1], f"rank{comm.rank}.txt").write_text(message)
