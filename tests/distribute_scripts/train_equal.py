"""Trains one small model, data-parallel under mpiexec or alone, and saves what it got.

    mpiexec -n 3 python train_equal.py OUT.npz OPTIMIZER DROPOUT BUCKET_BYTES [SHARDS]

``train`` is imported by tests/test_distribute_training.py for the one-process run
that the data-parallel runs must equal. Rank 0 writes the history and the weights.
"""

from __future__ import annotations

import json
import sys

import numpy as np

import dlcore
from dlcore.layers import Dense, Dropout, Input
from dlcore.models import Sequential

SAMPLES, FEATURES, CLASSES = 29, 5, 3


def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(SAMPLES, FEATURES))
    labels = (x[:, 0] + x[:, 1] > 0).astype(int) + (x[:, 2] > 1).astype(int)
    return x, np.eye(CLASSES)[labels]


def train(optimizer: str, dropout: bool, x=None, y=None) -> tuple[dict, list[np.ndarray]]:
    """3 epochs of 23 samples in batches of 7 (the last: 2 rows, none for a third
    process), shuffled, after a validation split of 6, in float64."""
    dlcore.set_floatx("float64")
    dlcore.set_random_seed(0)
    layers = [Input((FEATURES,)), Dense(8, activation="relu")]
    if dropout:
        layers.append(Dropout(0.3))
    layers += [Dense(6, activation="tanh"), Dense(CLASSES, activation="softmax")]
    model = Sequential(layers)
    model.compile(optimizer=optimizer, loss="categorical_crossentropy", metrics=["accuracy"])
    if x is None:
        x, y = data()
    history = model.fit(x, y, batch_size=7, epochs=3, validation_split=0.2, shuffle=True, verbose=0)
    return history.history, model.get_weights()


def main() -> None:
    out, optimizer, dropout, bucket = sys.argv[1:5]
    shards = len(sys.argv) > 5 and sys.argv[5] == "shards"
    dlcore.set_backend("numpy")
    parallel = dlcore.distribute.init(
        bucket_bytes=None if bucket == "none" else int(bucket), auto_shard_dataset=not shards
    )
    x, y = data()
    if shards:  # each process passes only its rows
        rank, size = parallel.communicator.rank, parallel.communicator.size
        x, y = x[rank::size], y[rank::size]
    history, weights = train(optimizer, dropout == "dropout", x, y)
    rank = dlcore.distribute.rank()
    gathered = parallel.communicator.gather_objects(
        [float(np.sum(w)) for w in weights]  # every process ends with the same weights
    )
    if rank == 0:
        np.savez(
            out,
            history=json.dumps(history),
            sums=json.dumps(gathered),
            **{f"w{i}": w for i, w in enumerate(weights)},
        )


if __name__ == "__main__":
    main()
