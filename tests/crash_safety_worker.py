"""The process ``tests/test_crash_safety.py`` kills: it imports dlcore once, then for each
command read from stdin forks a child that saves (or fits with ``ModelCheckpoint``)
into a target file in a loop, lets it run for the given time, and kills it with
SIGKILL.

Commands, one per line: ``save <target> <first k> <seconds>`` or
``fit <target> <states> <seconds>``; the answer is one line, ``killed``. ``save``
writes state ``k`` (every weight, the optimizer's step count and its moments equal
to ``k``) for ``k`` = first, first + 1, ...; ``fit`` records each epoch's weights
in ``<states>/epoch_<n>.npy`` before ``ModelCheckpoint`` saves that epoch.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
import time

import numpy as np

from dlcore.callbacks import Callback, ModelCheckpoint
from dlcore.layers import Dense
from dlcore.models import Sequential

FEATURES, HIDDEN, CLASSES = 20, 1000, 4


def model() -> Sequential:
    """The model both loops use (about 25,000 parameters, Adam)."""
    net = Sequential(
        [Dense(HIDDEN, activation="relu", input_shape=(FEATURES,)), Dense(CLASSES, "softmax")]
    )
    net.compile(optimizer="adam", loss="categorical_crossentropy")
    return net


def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, FEATURES)).astype(np.float32)
    return x, np.eye(CLASSES, dtype=np.float32)[rng.integers(0, CLASSES, size=64)]


def set_state(net: Sequential, k: int) -> None:
    """Make every weight, the step count and every optimizer slot equal ``k``."""
    net.set_weights([np.full(w.shape, k, dtype=w.dtype) for w in net.get_weights()])
    state = net.optimizer.get_state()
    state = {name: np.full_like(value, k) for name, value in state.items()}
    net.optimizer.set_state(net.engine, state, net.dtype)


def build_optimizer_state(net: Sequential) -> None:
    x, y = data()
    net.fit(x[:8], y[:8], epochs=1, batch_size=8, verbose=0)


def save_forever(target: str, first: int) -> None:
    net = model()
    build_optimizer_state(net)
    for k in itertools.count(first):
        set_state(net, k)
        net.save(target)


class RecordWeights(Callback):
    """Writes each epoch's weights, completely, before the checkpoint of that epoch."""

    def __init__(self, directory: str) -> None:
        super().__init__()
        self.directory = directory

    def on_epoch_end(self, epoch, logs=None):
        path = os.path.join(self.directory, f"epoch_{epoch}.npy")
        with open(path + ".part", "wb") as f:
            np.save(f, np.concatenate([w.ravel() for w in self.model.get_weights()]))
            f.flush()
            os.fsync(f.fileno())
        os.replace(path + ".part", path)


def fit_forever(target: str, states: str) -> None:
    net = model()
    x, y = data()
    net.fit(
        x,
        y,
        epochs=1_000_000,
        batch_size=16,
        verbose=0,
        callbacks=[RecordWeights(states), ModelCheckpoint(target, monitor="loss")],
    )


def run_and_kill(job, *arguments: object, seconds: float) -> None:
    pid = os.fork()
    if pid == 0:
        try:
            job(*arguments)
        finally:
            os._exit(0)
    time.sleep(seconds)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def main() -> None:
    print("ready", flush=True)
    for line in sys.stdin:
        words = line.split()
        if words[0] == "save":
            target, first, seconds = words[1], int(words[2]), float(words[3])
            run_and_kill(save_forever, target, first, seconds=seconds)
        elif words[0] == "fit":
            target, states, seconds = words[1], words[2], float(words[3])
            run_and_kill(fit_forever, target, states, seconds=seconds)
        print("killed", flush=True)


if __name__ == "__main__":
    main()
