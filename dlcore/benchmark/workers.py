"""Trainers in processes of their own, so that no framework slows another down.

In one process, PyTorch's OpenMP threads, XLA's thread pool and the BLAS threads
of NumPy and SciPy share two cores and each other's caches, and a framework's
idle threads keep spinning while the next one trains; measured on a 2-core
machine, dlcore's tiny case ran at half its speed with PyTorch and JAX loaded
beside it, and JAX at two thirds of its own. A ``ProcessTrainer`` builds its
trainer (a dlcore engine through ``model.fit``, or a peer) in a child process
started with ``spawn``, which loads only what that trainer needs; the parent
asks for one epoch at a time, so epochs still interleave, and each epoch is timed
inside the child.
"""

from __future__ import annotations

import multiprocessing
import time
import traceback
from typing import Any

import numpy as np

from dlcore.benchmark.cases import FLOAT32, Case


class ProcessTrainer:
    """A trainer of ``case`` run in a child process.

    Args:
        kind: ``"engine"`` (``name`` is a dlcore engine) or ``"peer"`` (``name`` is one
            of ``peers.PEERS``).
        name: the engine or peer.
        case: the benchmark case; the child makes its data with ``case.data(steps,
            seed)`` and its initial weights with ``runner.initial_weights(case, seed)``,
            exactly as the parent does.
        steps: batches per epoch.
        seed: the data's, the weights' and the shuffling's seed.
        precision: one of ``cases.PRECISIONS``: what the trainer computes in.

    Raises:
        RuntimeError: the child could not build the trainer; the message holds the
            child's traceback.
    """

    def __init__(
        self,
        kind: str,
        name: str,
        case: Case,
        steps: int,
        seed: int,
        *,
        precision: str = FLOAT32,
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self._connection, child = context.Pipe()
        self._process = context.Process(
            target=_serve,
            args=(child, kind, name, case, steps, seed, precision),
            name=f"dlcore-bench-{name}",
            daemon=True,
        )
        self._process.start()
        child.close()
        self.name = name
        self.last_seconds = float("nan")
        try:
            self._ask(("ready",))
        except RuntimeError:
            self.close()
            raise

    def epoch(self) -> float:
        """Train one epoch in the child; returns its loss and sets ``last_seconds``, the
        epoch's wall time measured in the child."""
        loss, self.last_seconds = self._ask(("epoch",))
        return loss

    def peak_flops(self, size: int) -> float | None:
        """FLOP/s of the trainer's own float32 matrix product on a ``size``³ product."""
        return self._ask(("peak", size))

    def get_weights(self) -> list[np.ndarray]:
        """The child's current weights, in Keras order."""
        return self._ask(("weights",))

    def arithmetic(self) -> Any:
        """What the child's trainer computed in, as ``runner.trainer_arithmetic`` reads it
        there (a ``runner.Arithmetic``)."""
        return self._ask(("arithmetic",))

    def close(self) -> None:
        """Stop the child (also done when the parent exits: the child is a daemon)."""
        if self._process.is_alive():
            try:
                self._connection.send(("stop",))
            except (BrokenPipeError, OSError):
                pass
            self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.kill()
        self._connection.close()

    def _ask(self, request: tuple[Any, ...]) -> Any:
        try:
            self._connection.send(request)
            status, value = self._connection.recv()
        except (EOFError, BrokenPipeError, OSError):
            raise RuntimeError(
                f"the benchmark process of {self.name} ended unexpectedly "
                f"(exit code {self._process.exitcode})"
            ) from None
        if status == "error":
            raise RuntimeError(f"{self.name} failed in its benchmark process:\n{value}")
        return value


def _serve(
    connection: Any, kind: str, name: str, case: Case, steps: int, seed: int, precision: str
) -> None:
    """The child's loop: build the trainer, then answer requests until ``stop``."""
    from dlcore.benchmark import runner

    trainer: Any = None
    while True:
        try:
            request = connection.recv()
        except EOFError:  # the parent has gone
            return
        command = request[0]
        if command == "stop":
            return
        try:
            if command == "ready":
                x, y = case.data(steps, seed)
                weights = runner.initial_weights(case, seed)
                if kind == "engine":
                    import dlcore

                    trainer = runner.DlcoreTrainer(name, case, x, y, weights, precision)
                    # the shuffles of the in-process runner, which seeds before the warm-up
                    dlcore.set_random_seed(seed)
                else:
                    from dlcore.benchmark import peers

                    trainer = peers.make_trainer(
                        name, case, x, y, weights, seed, precision=precision
                    )
                value: Any = None
            elif command == "epoch":
                started = time.perf_counter()
                loss = trainer.epoch()
                value = (loss, time.perf_counter() - started)
            elif command == "peak":
                if kind == "engine":
                    from dlcore import backends

                    value = runner.gemm_peak_flops(backends.get(name), request[1])
                else:
                    value = runner.peer_peak_flops(name, request[1])
            elif command == "weights":
                value = trainer.get_weights()
            elif command == "arithmetic":
                value = runner.trainer_arithmetic(trainer)
            else:
                raise ValueError(f"unknown request {command!r}")
        except Exception:
            connection.send(("error", traceback.format_exc()))
        else:
            connection.send(("ok", value))
