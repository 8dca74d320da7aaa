"""Layers that change the recorded per-sample shape only: ``Flatten`` and ``Reshape``.

On the engine every batch is ``(N, features)``, each sample one row-major flat row,
so both layers are the identity there: they change the shape that the symbolic
tensors record (``KerasTensor.dims``), which decides what later layers accept and
what shape ``predict`` returns.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from .base import Layer, shape_text


class Flatten(Layer):
    """Flattens each sample: ``(None, d1, ..., dk)`` to ``(None, d1 * ... * dk)``,
    row-major, as Keras's default ``data_format="channels_last"``.

    Args:
        data_format: ``None`` or ``"channels_last"`` (the only layout of dlcore).
        name, input_shape, trainable, dtype: see ``Layer``.

    Example:
        >>> Sequential([Input((28, 28)), Flatten(), Dense(10, activation="softmax")])
    """

    def __init__(self, data_format: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if data_format not in (None, "channels_last"):
            raise ValueError(
                "Flatten expected data_format=None or 'channels_last' (samples are row-major), "
                f"received data_format={data_format!r}"
            )
        if self.input_features is not None:
            self.units = self.input_features

    def output_dims(self, input_dims: list[tuple[int, ...]]) -> tuple[int, ...] | None:
        return None  # flat: (input_features,)


class Reshape(Layer):
    """Gives each sample the shape ``target_shape`` (row-major); one entry may be -1,
    inferred from the sample's size.

    Args:
        target_shape: tuple of positive ints (and at most one -1), without the batch.
        name, input_shape, trainable, dtype: see ``Layer``.

    Example:
        >>> Reshape((4, 8))  # (None, 32) to (None, 4, 8)
    """

    def __init__(self, target_shape: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        entries = list(target_shape) if isinstance(target_shape, (list, tuple)) else None
        if (
            not entries
            or any(isinstance(e, bool) or not isinstance(e, numbers.Integral) for e in entries)
            or any(e < 1 and e != -1 for e in entries)
            or entries.count(-1) > 1
        ):
            raise ValueError(
                "Reshape expected target_shape, a tuple of positive integers with at most "
                f"one -1 (the batch left out), received target_shape={target_shape!r}"
            )
        self.target_shape = tuple(int(e) for e in entries)
        if self.input_features is not None:
            self.units = self.input_features

    def output_dims(self, input_dims: list[tuple[int, ...]]) -> tuple[int, ...] | None:
        size = math.prod(input_dims[0])
        known = math.prod(e for e in self.target_shape if e != -1)
        if -1 in self.target_shape:
            if size % known:
                raise ValueError(
                    f"Reshape cannot make target_shape={self.target_shape} from inputs of "
                    f"shape {shape_text(input_dims[0])}: {size} values per sample are not "
                    f"a multiple of {known}"
                )
            return tuple(size // known if e == -1 else e for e in self.target_shape)
        if known != size:
            raise ValueError(
                f"Reshape's target_shape={self.target_shape} holds {known} values per sample, "
                f"its inputs of shape {shape_text(input_dims[0])} hold {size}"
            )
        return self.target_shape

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["target_shape"] = list(self.target_shape)
        return config
