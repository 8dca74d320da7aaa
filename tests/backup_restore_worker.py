"""A training run for tests/test_callbacks_keras.py's BackupAndRestore tests, in its own process.

Usage: ``python backup_restore_worker.py BACKUP_DIR OUT_FILE MODE`` where MODE is

* ``crash``: trains with BackupAndRestore and kills the process (``os._exit``, no cleanup,
  no ``on_train_end``) at the end of epoch 2 of 5, after the backup of that epoch;
* ``resume``: the same script without the crash: resumes from the backup, if any;
* ``plain``: the same training without BackupAndRestore, uninterrupted.

At the end it writes the final weights and the epochs it ran to OUT_FILE (``.npz``).
Every run seeds dlcore identically, as rerunning the same script would.
"""

from __future__ import annotations

import os
import sys

import numpy as np

import dlcore
from dlcore.callbacks import BackupAndRestore, Callback
from dlcore.layers import Dense
from dlcore.models import Sequential
from dlcore.optimizers import Adam

CRASH_EPOCH = 2
EPOCHS = 5


class CrashAfterEpoch(Callback):
    """Ends the process abruptly at the end of epoch ``CRASH_EPOCH``."""

    def on_epoch_end(self, epoch, logs=None):
        if epoch == CRASH_EPOCH:
            sys.stdout.flush()
            os._exit(17)


def main(backup_dir: str, out_file: str, mode: str) -> None:
    dlcore.set_backend("numpy")
    dlcore.set_floatx("float64")
    dlcore.set_random_seed(7)
    data = np.random.default_rng(3)
    x = data.normal(size=(29, 4))
    y = np.eye(3)[data.integers(0, 3, 29)]
    model = Sequential([Dense(6, activation="tanh"), Dense(3, activation="softmax")])
    model.build((None, 4))
    model.compile(optimizer=Adam(learning_rate=0.05), loss="categorical_crossentropy")
    callbacks: list[Callback] = []
    if mode != "plain":
        callbacks.append(BackupAndRestore(backup_dir))
    if mode == "crash":
        callbacks.append(CrashAfterEpoch())
    history = model.fit(
        x, y, batch_size=8, epochs=EPOCHS, shuffle=True, verbose=0, callbacks=callbacks
    )
    np.savez(
        out_file,
        *model.get_weights(),
        epochs=np.asarray(history.epoch),
        iterations=np.asarray(model.optimizer.iterations),
    )


if __name__ == "__main__":
    main(*sys.argv[1:4])
