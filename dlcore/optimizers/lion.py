"""Lion: steps of the sign of an interpolated momentum."""

from __future__ import annotations

from typing import Any

from .base import Optimizer, _momentum_in, _number


class Lion(Optimizer):
    """Lion, "evolved sign momentum" (Chen et al., 2023).

    ``w -= learning_rate * sign(beta_1 * m + (1 - beta_1) * g)``;
    ``m = beta_2 * m + (1 - beta_2) * g``. Every weight moves by the learning rate, so
    Lion wants a learning rate 3 to 10 times smaller than Adam's.

    Args:
        learning_rate: positive float or a schedule, defaults to ``0.001``.
        beta_1: the interpolation of the step's direction, in ``(0, 1]``, defaults to
            ``0.9``.
        beta_2: the momentum's decay rate, in ``[0, 1]``, defaults to ``0.99``.
        kwargs: ``lr`` (Keras 2's alias of ``learning_rate``) and the options every
            optimizer takes (``weight_decay``, ``clipnorm``, ``use_ema``, ...).
    """

    rule = "lion"

    def __init__(
        self,
        learning_rate: Any = None,
        beta_1: float = 0.9,
        beta_2: float = 0.99,
        **kwargs: Any,
    ) -> None:
        super().__init__(learning_rate, kwargs)
        # beta_1 = 0 would make Lion signSGD, which Keras refuses
        self.beta_1 = _number("Lion", "beta_1", beta_1, lambda x: 0 < x <= 1, "in (0, 1]")
        self.beta_2 = _momentum_in("Lion", "beta_2", beta_2)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2}

    def _slot_init(self) -> dict[str, float | None]:
        return {"momentum": 0.0}

    def _step_hyperparameters(self) -> dict[str, float]:
        return {"learning_rate": self._learning_rate, "beta_1": self.beta_1, "beta_2": self.beta_2}
