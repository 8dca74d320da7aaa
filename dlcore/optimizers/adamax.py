"""Adamax: Adam with the infinity norm in place of the second moment."""

from __future__ import annotations

from typing import Any

from .base import Optimizer, _non_negative, _unit


class Adamax(Optimizer):
    """Adamax: Adam with the infinity norm in place of the second moment.

    ``m += (g - m) * (1 - beta_1)``; ``u = max(beta_2 * u, |g|)``;
    ``w -= learning_rate / (1 - beta_1**t) * m / (u + epsilon)`` at step ``t``.

    Args:
        learning_rate: positive float, defaults to ``0.001``.
        beta_1: decay rate of the first moment, in ``[0, 1)``, defaults to ``0.9``.
        beta_2: decay rate of the infinity norm, in ``[0, 1)``, defaults to ``0.999``.
        epsilon: non-negative float added to ``u``, defaults to ``1e-7``.
        lr: Keras 2 alias of ``learning_rate``.
    """

    rule = "adamax"
    non_negative_slots = frozenset({"u"})

    def __init__(
        self,
        learning_rate: float | None = None,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
        **kwargs: Any,
    ) -> None:
        super().__init__(learning_rate, kwargs)
        self.beta_1 = _unit("Adamax", "beta_1", beta_1)
        self.beta_2 = _unit("Adamax", "beta_2", beta_2)
        self.epsilon = _non_negative("Adamax", "epsilon", epsilon)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "beta_1": self.beta_1,
            "beta_2": self.beta_2,
            "epsilon": self.epsilon,
        }

    def _slot_init(self) -> dict[str, float | None]:
        return {"m": 0.0, "u": 0.0}

    def _step_hyperparameters(self) -> dict[str, float]:
        return {
            "learning_rate": self._learning_rate,
            "beta_1": self.beta_1,
            "beta_2": self.beta_2,
            "epsilon": self.epsilon,
            "bias_correction": 1.0 - self.beta_1**self._iterations,
        }
