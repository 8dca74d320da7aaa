"""Rank 1 raises while the others wait in an all-reduce it never joins: the abort hook
must end every process."""

from __future__ import annotations

import numpy as np

from dlcore import backends
from dlcore.distribute.failure import install_abort_on_exception
from dlcore.distribute.mpi import MPICommunicator

comm = MPICommunicator()
install_abort_on_exception(comm)
if comm.rank == 1:
    raise RuntimeError(f"deliberate failure on rank {comm.rank}")
comm.allreduce_sum(backends.get("numpy"), np.zeros(4))
print(f"rank {comm.rank} was never aborted", flush=True)
