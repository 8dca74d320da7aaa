"""CUDA graph replay of the training step during one ``fit`` (``config.set_cuda_graphs``).

``Trainer.fit`` makes a ``StepGraphs`` when the switch is on and hands it, at every
step, the step's input arrays and a function that queues the gradient computation
(forward, losses, metrics, backward) and returns its losses and metric values. The
optimizer's update is not in the graph: its bias corrections and learning rate are
host numbers passed as kernel arguments, which a graph would freeze, so the trainer
launches it after each step as usual.

Per batch shape (more exactly, per set of input arrays: the trainer gathers each
batch into the same workspace arrays, so one shape is one set) the first
``WARMUP_STEPS`` steps run plainly and allocate every workspace, scratch and recycled
array the step needs; the next one is captured (``Engine.capture_step``) and every
later one is a replay. The last, smaller batch of an epoch is a shape of its own and
is captured at its third occurrence, the third epoch. A capture that fails (the step
still allocated, or the engine refused it) is not tried again for that shape during
the fit, and the first failure warns with the reason. An engine that cannot capture
(``capture_step`` returns ``None``) runs every step plainly.

Graphs live for one ``fit``: the plan, the dropout generator (reseeded per fit) and
the data arrays are made anew by the next one. They are dropped as soon as the
trainer's plan changes, and released (after the queued replays finish) when the fit
ends.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dlcore.backends.base import Array, CapturedStep, Engine, StepCaptureError

# Plain steps of a shape before its capture: the first allocates the workspaces and
# recycled arrays, the second the arrays that the first step's results still held.
WARMUP_STEPS = 2

StepResults = tuple[list[Array], list[Array]]
"""``(loss terms, metric values)`` of one step, as ``Trainer._gradient_step`` returns them."""


@dataclass
class _Graph:
    """One captured step and what its replays need."""

    replay: CapturedStep
    loss_terms: int  # how many of the results are loss terms (the rest: metric values)
    inputs: list[Array]  # the arrays the graph reads the batch from, kept while it lives


class StepGraphs:
    """The captured training steps of one ``fit``, by the arrays each step reads."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._plan: Any = None
        self._seen: dict[tuple[int, ...], int] = {}
        self._graphs: dict[tuple[int, ...], _Graph] = {}
        #: why each refused shape's capture failed, by its input shapes
        self.refused: dict[tuple[tuple[int, ...], ...], str] = {}
        self._refused_keys: set[tuple[int, ...]] = set()
        self._unsupported = False
        self._warned = False

    @property
    def may_capture(self) -> bool:
        """False once the engine has said it cannot capture (its steps all run plainly)."""
        return not self._unsupported

    @property
    def captured(self) -> int:
        """How many step graphs are held."""
        return len(self._graphs)

    def run(
        self, plan: Any, inputs: Sequence[Array], step: Callable[[], StepResults]
    ) -> StepResults:
        """One step on ``inputs``: plainly (``step()``), captured, or replayed.

        Args:
            plan: the trainer's plan; another plan than the last step's drops the graphs.
            inputs: the arrays ``step`` reads the batch from, refilled for this step.
            step: queues the step's operations and returns its loss terms and metric values.
        """
        if plan is not self._plan:
            self.release()
            self._plan = plan
        key = tuple(id(array) for array in inputs)
        graph = self._graphs.get(key)
        if graph is not None:
            return _split(graph.replay(), graph.loss_terms)
        seen = self._seen.get(key, 0)
        if self._unsupported or key in self._refused_keys or seen < WARMUP_STEPS:
            self._seen[key] = seen + 1
            return step()
        return self._capture(key, inputs, step)

    def _capture(
        self, key: tuple[int, ...], inputs: Sequence[Array], step: Callable[[], StepResults]
    ) -> StepResults:
        """Capture ``step`` and run it from the graph; plainly if it cannot be captured."""
        counts: list[int] = []

        def flat_step() -> list[Array]:
            loss_terms, metric_values = step()
            counts.append(len(loss_terms))
            return [*loss_terms, *metric_values]

        try:
            replay = self._engine.capture_step(flat_step)
        except StepCaptureError as error:
            self._refuse(key, inputs, str(error))
            return step()
        if replay is None:
            self._unsupported = True
            return step()
        graph = _Graph(replay, counts[0], list(inputs))
        self._graphs[key] = graph
        return _split(replay(), graph.loss_terms)

    def _refuse(self, key: tuple[int, ...], inputs: Sequence[Array], reason: str) -> None:
        """Never capture ``key`` again in this fit; warn the first time a capture fails."""
        self._refused_keys.add(key)
        shapes = tuple(tuple(int(n) for n in array.shape) for array in inputs)
        self.refused[shapes] = reason
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"the training step on inputs of shapes {list(shapes)} could not be captured "
                f"as a CUDA graph ({reason}); its batches run without one",
                RuntimeWarning,
                stacklevel=4,
            )

    def release(self) -> None:
        """Release every graph (after the replays queued) and start counting afresh."""
        for graph in self._graphs.values():
            graph.replay.release()
        self._graphs.clear()
        self._seen.clear()
        self._refused_keys.clear()


def _split(values: list[Array], loss_terms: int) -> StepResults:
    return values[:loss_terms], values[loss_terms:]
