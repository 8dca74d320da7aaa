"""Adam: adaptive moment estimation, optionally AMSGrad."""

from __future__ import annotations

import math
from typing import Any

from .base import Optimizer, _flag, _non_negative, _unit


class Adam(Optimizer):
    """Adam: adaptive moment estimation (Kingma and Ba, 2014), optionally AMSGrad.

    ``m += (g - m) * (1 - beta_1)``; ``v += (g**2 - v) * (1 - beta_2)``;
    ``w -= learning_rate * sqrt(1 - beta_2**t) / (1 - beta_1**t) * m / (sqrt(v) + epsilon)``
    at step ``t``; AMSGrad uses the running maximum of ``v`` in place of ``v``.

    Args:
        learning_rate: positive float, defaults to ``0.001``.
        beta_1: decay rate of the first moment, in ``[0, 1)``, defaults to ``0.9``.
        beta_2: decay rate of the second moment, in ``[0, 1)``, defaults to ``0.999``.
        epsilon: non-negative float added to ``sqrt(v)``, defaults to ``1e-7``.
        amsgrad: whether to use AMSGrad, defaults to ``False``.
        lr: Keras 2 alias of ``learning_rate``.
    """

    rule = "adam"
    non_negative_slots = frozenset({"v", "v_max"})

    def __init__(
        self,
        learning_rate: float | None = None,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
        amsgrad: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(learning_rate, kwargs)
        self.beta_1 = _unit("Adam", "beta_1", beta_1)
        self.beta_2 = _unit("Adam", "beta_2", beta_2)
        self.epsilon = _non_negative("Adam", "epsilon", epsilon)
        self.amsgrad = _flag("Adam", "amsgrad", amsgrad)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "beta_1": self.beta_1,
            "beta_2": self.beta_2,
            "epsilon": self.epsilon,
            "amsgrad": self.amsgrad,
        }

    def _slot_init(self) -> dict[str, float | None]:
        return {"m": 0.0, "v": 0.0, "v_max": 0.0 if self.amsgrad else None}

    def _step_hyperparameters(self) -> dict[str, float]:
        step, beta_1, beta_2 = self._iterations, self.beta_1, self.beta_2
        # both bias corrections fold into one step size, as Keras does
        alpha = self._learning_rate * math.sqrt(1.0 - beta_2**step) / (1.0 - beta_1**step)
        return {"alpha": alpha, "beta_1": beta_1, "beta_2": beta_2, "epsilon": self.epsilon}
