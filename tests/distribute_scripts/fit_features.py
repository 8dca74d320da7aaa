"""Data-parallel fit, evaluate and predict features, one MODE per run:

    mpiexec -n 3 python fit_features.py MODE OUT_DIR

MODE ``files``: verbose=2 progress, a CSVLogger, a ModelCheckpoint and model.save,
written by rank 0 only. ``predict``: evaluate and predict over the whole data, saved by
rank 0 with a one-process reference computed on every rank. ``mismatch``: rank 1
builds a wider model, which fit refuses; ``names``: rank 1's layers have other default
names, which does not matter. ``fail``: rank 1 raises inside fit, in epoch 2.
"""

from __future__ import annotations

import os
import sys

import numpy as np

import dlcore
from dlcore.callbacks import Callback, CSVLogger, EarlyStopping, ModelCheckpoint
from dlcore.layers import Dense, Input
from dlcore.models import Sequential


def model(width: int = 6) -> Sequential:
    dlcore.set_random_seed(1)
    net = Sequential([Input((4,)), Dense(width, activation="relu"), Dense(2, activation="softmax")])
    net.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return net


def data(n: int = 26) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(n, 4))
    return x, (x[:, 0] > 0).astype(np.int64)


class FailInEpoch2(Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1 and dlcore.distribute.rank() == 1:
            raise RuntimeError("rank 1 lost its data in epoch 2")


def main() -> None:
    mode, out = sys.argv[1], sys.argv[2]
    dlcore.set_floatx("float64")
    parallel = dlcore.distribute.init()
    rank = parallel.communicator.rank
    x, y = data()
    if mode == "files":
        net = model()
        net.fit(
            x,
            y,
            batch_size=8,
            epochs=2,
            verbose=2,
            callbacks=[
                CSVLogger(os.path.join(out, "log.csv")),
                ModelCheckpoint(os.path.join(out, "best.keras")),
                EarlyStopping(monitor="loss", patience=5),
            ],
        )
        net.save(os.path.join(out, "final.dlcore"))
        print(f"rank {rank} done", flush=True)
    elif mode == "predict":
        net = model()
        net.fit(x, y, batch_size=8, epochs=2, verbose=0)
        together = net.predict(x, batch_size=5, verbose=0)
        evaluated = net.evaluate(x, y, batch_size=5, verbose=0)
        dlcore.distribute.shutdown()  # the same model, alone, on every process
        alone = net.predict(x, batch_size=5, verbose=0)
        evaluated_alone = net.evaluate(x, y, batch_size=5, verbose=0)
        np.savez(
            os.path.join(out, f"predict{rank}.npz"),
            together=together,
            alone=alone,
            evaluated=np.asarray(evaluated),
            evaluated_alone=np.asarray(evaluated_alone),
        )
    elif mode == "mismatch":
        net = model(width=7 if rank == 1 else 6)
        net.fit(x, y, epochs=1, verbose=0)
    elif mode == "names":  # rank 1 numbers its layers' default names after another model's
        if rank == 1:
            model()
        net = model()
        net.fit(x, y, epochs=1, verbose=0)
        print(f"rank {rank} trained {[layer.name for layer in net.layers]}", flush=True)
    elif mode == "fail":
        net = model()
        net.fit(x, y, epochs=3, verbose=0, callbacks=[FailInEpoch2()])


if __name__ == "__main__":
    main()
