"""Layers that merge several tensors into one: ``Add``, ``Subtract``, ``Multiply``,
``Average``, ``Maximum``, ``Minimum`` and ``Concatenate``.

Each is called on a list of tensors, ``Add()([a, b])``; all but ``Concatenate``
need inputs of one width. The engine computes the merge and its gradient
(``Engine.merge`` and ``Engine.backprop_merge``).
"""

from __future__ import annotations

from typing import Any, ClassVar

from dlcore.backends.base import Array

from .base import CallState, KerasTensor, Layer


class Merge(Layer):
    """Base class of the merging layers: the engine's merge operation ``op``."""

    op: ClassVar[str] = ""
    min_inputs: ClassVar[int] = 2
    max_inputs: ClassVar[int | None] = None

    def _check_call(self, tensors: list[KerasTensor], merges: bool) -> None:
        cls = type(self).__name__
        if not merges:
            raise TypeError(
                f"layer {self.name!r} ({cls}) must be called on a list of tensors, "
                f"e.g. {cls}()([a, b]); received one tensor"
            )
        count = len(tensors)
        if count < self.min_inputs or (self.max_inputs is not None and count > self.max_inputs):
            wanted = (
                f"exactly {self.min_inputs}"
                if self.max_inputs == self.min_inputs
                else f"at least {self.min_inputs}"
            )
            raise ValueError(
                f"layer {self.name!r} ({cls}) takes {wanted} tensors, received {count}"
            )

    def output_features(self, input_features: Any) -> int:
        widths = [int(w) for w in input_features]
        if self.input_features is not None and list(self.input_features) != widths:
            raise ValueError(
                f"layer {self.name!r} was built for inputs of widths {list(self.input_features)}, "
                f"received {widths}"
            )
        self.units = self._merged_width(widths)
        self.input_features = widths
        return self.units

    def _merged_width(self, widths: list[int]) -> int:
        if len(set(widths)) != 1:
            shapes = ", ".join(f"(None, {w})" for w in widths)
            raise ValueError(
                f"layer {self.name!r} ({type(self).__name__}) needs inputs of one shape, "
                f"received shapes {shapes}; use Concatenate to join tensors of other widths"
            )
        return widths[0]

    def forward(self, X: Any, *, training: bool, state: CallState | None = None) -> Array:
        Y = self.bound_engine().merge(
            self.op, X, workspace=state.workspace if training and state is not None else None
        )
        if training and state is not None:
            state.cache = (list(X), Y)
        return Y

    def backward(self, dY, *, state, need_dX, param_grads):
        if not need_dX:
            return None
        inputs, Y = state.kept(self)
        return self.bound_engine().backprop_merge(self.op, dY, inputs, Y, workspace=state.workspace)

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "trainable": self.trainable}


class Add(Merge):
    """Elementwise sum of its inputs: ``Add()([a, b])``."""

    op = "add"


class Subtract(Merge):
    """``a - b`` of exactly two inputs: ``Subtract()([a, b])``."""

    op = "subtract"
    max_inputs = 2


class Multiply(Merge):
    """Elementwise product of its inputs."""

    op = "multiply"


class Average(Merge):
    """Elementwise mean of its inputs."""

    op = "average"


class Maximum(Merge):
    """Elementwise maximum of its inputs; the gradient goes to the first input holding it."""

    op = "maximum"


class Minimum(Merge):
    """Elementwise minimum of its inputs; the gradient goes to the first input holding it."""

    op = "minimum"


class Concatenate(Merge):
    """Joins its inputs along the feature axis: ``(None, a)`` and ``(None, b)`` give
    ``(None, a + b)``.

    Args:
        axis: ``-1`` (or ``1``), the feature axis; dense networks have no other.
    """

    op = "concatenate"

    def __init__(self, axis: int = -1, **kwargs: Any) -> None:
        if axis not in (-1, 1):
            raise ValueError(
                f"Concatenate joins (None, features) tensors along the features, axis=-1; "
                f"received axis={axis!r}"
            )
        super().__init__(**kwargs)
        self.axis = -1

    def _merged_width(self, widths: list[int]) -> int:
        return sum(widths)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["axis"] = self.axis
        return config
