"""The data-parallel path on a GPU engine, for ``make gpu-check``:

    mpiexec -n 2 python gpu_data_parallel.py ENGINE OUT.json

Both processes train the same float32 model on ENGINE (cupy or numba) with
``dlcore.distribute.init()``: NCCL sums the gradients where CuPy has it (two ranks may
share one GPU, which NCCL may refuse: the error is the finding), else MPI through the
host. Rank 0 then trains the model alone and writes the transport, the largest
difference of the weights and of the epoch losses, and the seconds per epoch.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

import dlcore
from dlcore.layers import Dense, Dropout, Input
from dlcore.models import Sequential


def train(x: np.ndarray, y: np.ndarray) -> tuple[list[float], list[np.ndarray], float]:
    dlcore.set_random_seed(0)
    model = Sequential(
        [Input((64,)), Dense(256, "relu"), Dropout(0.2), Dense(256, "relu"), Dense(10, "softmax")]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    started = time.perf_counter()
    history = model.fit(x, y, batch_size=256, epochs=3, verbose=0)
    return history.history["loss"], model.get_weights(), (time.perf_counter() - started) / 3


def main() -> None:
    engine, out = sys.argv[1], sys.argv[2]
    dlcore.set_backend(engine)
    parallel = dlcore.distribute.init()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4096, 64)).astype(np.float32)
    y = rng.integers(0, 10, size=4096)
    losses, weights, seconds = train(x, y)
    transport = type(parallel.communicator).__name__
    if parallel.communicator.rank == 0:
        dlcore.distribute.shutdown()
        alone_losses, alone_weights, alone_seconds = train(x, y)
        report = {
            "engine": engine,
            "processes": parallel.communicator.size,
            "transport": transport,
            "max_weight_difference": max(
                float(np.max(np.abs(a - b))) for a, b in zip(weights, alone_weights)
            ),
            "max_loss_difference": float(np.max(np.abs(np.subtract(losses, alone_losses)))),
            "seconds_per_epoch": seconds,
            "seconds_per_epoch_alone": alone_seconds,
        }
        with open(out, "w") as f:
            json.dump(report, f, indent=1)
        print(json.dumps(report))


if __name__ == "__main__":
    main()
