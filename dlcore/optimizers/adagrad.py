"""Adagrad: per-parameter learning rates shrinking with the squared gradients seen."""

from __future__ import annotations

from typing import Any

from .base import Optimizer, _non_negative


class Adagrad(Optimizer):
    """Adagrad: per-parameter learning rates shrinking with the squared gradients seen.

    ``accumulator += g**2``; ``w -= learning_rate * g / sqrt(accumulator + epsilon)``.

    Args:
        learning_rate: positive float, defaults to ``0.001``.
        initial_accumulator_value: non-negative starting value of the
            accumulator, defaults to ``0.1``.
        epsilon: non-negative float added under the square root, defaults to ``1e-7``.
        lr: Keras 2 alias of ``learning_rate``.
    """

    rule = "adagrad"
    non_negative_slots = frozenset({"accumulator"})

    def __init__(
        self,
        learning_rate: float | None = None,
        initial_accumulator_value: float = 0.1,
        epsilon: float = 1e-7,
        **kwargs: Any,
    ) -> None:
        super().__init__(learning_rate, kwargs)
        self.initial_accumulator_value = _non_negative(
            "Adagrad", "initial_accumulator_value", initial_accumulator_value
        )
        self.epsilon = _non_negative("Adagrad", "epsilon", epsilon)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "initial_accumulator_value": self.initial_accumulator_value,
            "epsilon": self.epsilon,
        }

    def _slot_init(self) -> dict[str, float | None]:
        return {"accumulator": self.initial_accumulator_value}

    def _step_hyperparameters(self) -> dict[str, float]:
        return {"learning_rate": self._learning_rate, "epsilon": self.epsilon}
