"""Dynamic loss scaling for float16 training: Keras 3's ``LossScaleOptimizer``.

Gradients computed in float16 lose what falls under its smallest normal number
(6.1e-5). The model multiplies the loss gradient by ``loss_scale`` (a power of
two, so the scaling itself is exact); this optimizer divides the gradients by it
before the wrapped optimizer's step. A step whose gradients are not all finite is
skipped and halves the scale; ``dynamic_growth_steps`` finite steps in a row
double it.

Deciding whether to skip reads one boolean from the engine per step: on a GPU
engine that is a synchronisation inside the training step, the price of skipping
on the host.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .base import Array, Engine, Optimizer, _is_index, _number


class LossScaleOptimizer(Optimizer):
    """Wraps ``inner_optimizer`` with dynamic loss scaling.

    Args:
        inner_optimizer: the optimizer whose step is applied (an ``Optimizer``, or a
            name or config dict ``optimizers.get`` understands).
        initial_scale: the first loss scale, a positive number (Keras's ``2**15``).
        dynamic_growth_steps: after this many steps in a row with finite gradients
            the scale doubles (Keras's 2000).

    ``learning_rate`` and ``iterations`` are the inner optimizer's: skipped steps do
    not count, as in Keras.
    """

    def __init__(
        self,
        inner_optimizer: Any,
        initial_scale: float = 2.0**15,
        dynamic_growth_steps: int = 2000,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        from . import get

        if kwargs:
            raise TypeError(
                f"LossScaleOptimizer got unexpected keyword argument(s) "
                f"{', '.join(map(repr, kwargs))}; set learning_rate and the rest on the "
                "inner optimizer"
            )
        inner = get(inner_optimizer)
        if isinstance(inner, LossScaleOptimizer):
            raise ValueError("LossScaleOptimizer cannot wrap another LossScaleOptimizer")
        self.inner_optimizer = inner
        self.initial_scale = _number(
            "LossScaleOptimizer", "initial_scale", initial_scale, lambda x: x > 0, "positive"
        )
        if not _is_index(dynamic_growth_steps) or dynamic_growth_steps < 1:
            raise ValueError(
                "LossScaleOptimizer expected dynamic_growth_steps to be a positive integer, "
                f"received dynamic_growth_steps={dynamic_growth_steps!r}"
            )
        self.dynamic_growth_steps = int(dynamic_growth_steps)
        self.name = name or "loss_scale_optimizer"
        self._loss_scale = self.initial_scale
        self._finite_steps = 0  # Keras's step_counter: finite steps since the scale changed
        self._workspace: Any = None

    # ------------------------------------------------------------------ what it wraps
    @property
    def loss_scale(self) -> float:
        """The factor the model multiplies the loss gradient by, this step."""
        return self._loss_scale

    @property
    def learning_rate(self) -> float:
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, value: float) -> None:
        self.inner_optimizer.learning_rate = value

    @property
    def iterations(self) -> int:
        return self.inner_optimizer.iterations

    @property
    def built(self) -> bool:
        return self.inner_optimizer.built

    @property
    def _size(self) -> int | None:  # type: ignore[override]
        return self.inner_optimizer._size

    @_size.setter
    def _size(self, value: int | None) -> None:
        return None  # the inner optimizer owns the size

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "inner_optimizer": {
                "class_name": type(self.inner_optimizer).__name__,
                "config": self.inner_optimizer.get_config(),
            },
            "initial_scale": self.initial_scale,
            "dynamic_growth_steps": self.dynamic_growth_steps,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> LossScaleOptimizer:
        if not isinstance(config, Mapping) or "inner_optimizer" not in config:
            raise ValueError(
                "LossScaleOptimizer.from_config expected a dict with an 'inner_optimizer' "
                f"entry, received {config!r}"
            )
        return cls(**dict(config))

    def __repr__(self) -> str:
        return (
            f"LossScaleOptimizer({self.inner_optimizer!r}, initial_scale={self.initial_scale!r}, "
            f"dynamic_growth_steps={self.dynamic_growth_steps!r})"
        )

    # the base class's hooks for a rule of its own; the inner optimizer's rule runs
    def _slot_init(self) -> dict[str, float | None]:
        return {}

    def _step_hyperparameters(self) -> dict[str, float]:
        return {}

    # ------------------------------------------------------------------ steps
    def build(self, engine: Engine, size: int, dtype: str) -> None:
        self.inner_optimizer.build(engine, size, dtype)

    def apply(
        self,
        engine: Engine,
        params: Array,
        grads: Array,
        segments: Sequence[tuple[int, int]] | None = None,
        variables: Sequence[tuple[int, int]] | None = None,
    ) -> None:
        """One step from gradients of the loss multiplied by ``loss_scale``: skipped (and
        the scale halved) when any gradient in ``segments`` is not finite, else the inner
        optimizer's step on the gradients divided by the scale.

        Args: as ``Optimizer.apply``; ``grads`` are left as they are.
        """
        if not self.built:
            raise RuntimeError("LossScaleOptimizer.apply called before build(engine, size, dtype)")
        ranges = [(0, int(grads.shape[0]))] if segments is None else list(segments)
        if not all(
            engine.all_finite(engine.slice_rows(grads, start, stop))
            for start, stop in ranges
            if stop > start
        ):
            self._loss_scale /= 2.0
            self._finite_steps = 0
            return
        from dlcore.backends.base import Workspace

        if self._workspace is None or self._workspace.engine is not engine:
            self._workspace = Workspace(engine)
        unscaled = engine.scale(grads, 1.0 / self._loss_scale, workspace=self._workspace)
        self.inner_optimizer.apply(engine, params, unscaled, segments, variables)
        if self._finite_steps == self.dynamic_growth_steps - 1:
            self._loss_scale *= 2.0
            self._finite_steps = 0
        else:
            self._finite_steps += 1

    def finalize_variable_values(self, engine: Engine, params: Array) -> None:
        """The inner optimizer's end of training (its moving average, if any)."""
        self.inner_optimizer.finalize_variable_values(engine, params)

    # ------------------------------------------------------------------ state
    def get_state(self) -> dict[str, np.ndarray]:
        """The inner optimizer's state, with ``loss_scale`` and ``loss_scale_steps``."""
        state = self.inner_optimizer.get_state()
        state["loss_scale"] = np.asarray(self._loss_scale, dtype=np.float64)
        state["loss_scale_steps"] = np.asarray(self._finite_steps, dtype=np.int64)
        return state

    def state_shapes(self, size: int) -> dict[str, tuple[int, ...]]:
        """The inner optimizer's entries, with the scalars ``loss_scale`` and
        ``loss_scale_steps``."""
        return {**self.inner_optimizer.state_shapes(size), "loss_scale": (), "loss_scale_steps": ()}

    def set_state(self, engine: Engine, state: Mapping[str, Any], dtype: str) -> None:
        """Restore a ``get_state`` result; nothing changes when any entry is invalid."""
        inner = dict(state)
        scale = np.asarray(inner.pop("loss_scale", self.initial_scale))
        steps = np.asarray(inner.pop("loss_scale_steps", 0))
        if (
            scale.shape != ()
            or scale.dtype.kind not in "iuf"
            or not math.isfinite(float(scale))
            or float(scale) <= 0
        ):
            raise ValueError(
                f"LossScaleOptimizer state expected a positive loss_scale, received {scale!r}"
            )
        if steps.shape != () or steps.dtype.kind not in "iu" or not 0 <= int(steps) < 2**63:
            raise ValueError(
                "LossScaleOptimizer state expected loss_scale_steps to be a non-negative "
                f"integer, received {steps!r}"
            )
        self.inner_optimizer.set_state(engine, inner, dtype)
        self._loss_scale = float(scale)
        self._finite_steps = int(steps)

    def to_engine(self, engine: Engine) -> None:
        self.inner_optimizer.to_engine(engine)
        self._workspace = None
