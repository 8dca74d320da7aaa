"""FTRL-Proximal: follow the regularized leader, with L1, L2 and shrinkage."""

from __future__ import annotations

from typing import Any

from .base import Optimizer, _non_negative, _number


class Ftrl(Optimizer):
    """FTRL-Proximal (McMahan et al., 2013), Keras's version.

    With ``p = -learning_rate_power``, ``n`` the accumulator and ``z`` the linear slot:
    ``n' = n + g**2``; ``z += g + 2 * l2_shrinkage * w - (n'**p - n**p) / learning_rate * w``;
    ``w = (clip(z, -l1, l1) - z) / (n'**p / learning_rate + 2 * (l2 + beta / (2 *
    learning_rate)))``.

    Args:
        learning_rate: positive float or a schedule, defaults to ``0.001``.
        learning_rate_power: a number ``<= 0``, defaults to ``-0.5``.
        initial_accumulator_value: a number ``>= 0``, defaults to ``0.1``.
        l1_regularization_strength: a number ``>= 0``, defaults to ``0.0``.
        l2_regularization_strength: a number ``>= 0``, defaults to ``0.0``.
        l2_shrinkage_regularization_strength: a number ``>= 0``, defaults to ``0.0``.
        beta: a number ``>= 0``, defaults to ``0.0``.
        kwargs: ``lr`` (Keras 2's alias of ``learning_rate``) and the options every
            optimizer takes (``weight_decay``, ``clipnorm``, ``use_ema``, ...).
    """

    rule = "ftrl"
    non_negative_slots = frozenset({"accumulator"})

    def __init__(
        self,
        learning_rate: Any = None,
        learning_rate_power: float = -0.5,
        initial_accumulator_value: float = 0.1,
        l1_regularization_strength: float = 0.0,
        l2_regularization_strength: float = 0.0,
        l2_shrinkage_regularization_strength: float = 0.0,
        beta: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(learning_rate, kwargs)
        self.learning_rate_power = _number(
            "Ftrl", "learning_rate_power", learning_rate_power, lambda x: x <= 0, "<= 0"
        )
        self.initial_accumulator_value = _non_negative(
            "Ftrl", "initial_accumulator_value", initial_accumulator_value
        )
        self.l1_regularization_strength = _non_negative(
            "Ftrl", "l1_regularization_strength", l1_regularization_strength
        )
        self.l2_regularization_strength = _non_negative(
            "Ftrl", "l2_regularization_strength", l2_regularization_strength
        )
        self.l2_shrinkage_regularization_strength = _non_negative(
            "Ftrl", "l2_shrinkage_regularization_strength", l2_shrinkage_regularization_strength
        )
        self.beta = _non_negative("Ftrl", "beta", beta)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "learning_rate_power": self.learning_rate_power,
            "initial_accumulator_value": self.initial_accumulator_value,
            "l1_regularization_strength": self.l1_regularization_strength,
            "l2_regularization_strength": self.l2_regularization_strength,
            "l2_shrinkage_regularization_strength": self.l2_shrinkage_regularization_strength,
            "beta": self.beta,
        }

    def _slot_init(self) -> dict[str, float | None]:
        return {"accumulator": self.initial_accumulator_value, "linear": 0.0}

    def _step_hyperparameters(self) -> dict[str, float]:
        learning_rate = self._learning_rate
        return {
            "learning_rate": learning_rate,
            "power": -self.learning_rate_power,
            "l1": self.l1_regularization_strength,
            "l2": self.l2_regularization_strength + self.beta / (2.0 * learning_rate),
            "shrinkage": 2.0 * self.l2_shrinkage_regularization_strength,
        }
