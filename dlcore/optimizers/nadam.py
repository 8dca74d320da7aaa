"""Nadam: Adam with Nesterov momentum, on Keras's momentum schedule."""

from __future__ import annotations

from typing import Any

from .base import Optimizer, _non_negative, _unit


class Nadam(Optimizer):
    """Nadam: Adam with Nesterov momentum (Dozat, 2015), on Keras's momentum schedule.

    At step ``t`` the momentum is ``mu_t = beta_1 * (1 - 0.5 * 0.96**t)``; with
    ``prod_t = mu_1 * ... * mu_t``: ``m += (g - m) * (1 - beta_1)``;
    ``v += (g**2 - v) * (1 - beta_2)``;
    ``m_hat = mu_{t+1} * m / (1 - prod_t * mu_{t+1}) + (1 - mu_t) * g / (1 - prod_t)``;
    ``v_hat = v / (1 - beta_2**t)``; ``w -= learning_rate * m_hat / (sqrt(v_hat) + epsilon)``.

    Args:
        learning_rate: positive float, defaults to ``0.001``.
        beta_1: decay rate of the first moment, in ``[0, 1)``, defaults to ``0.9``.
        beta_2: decay rate of the second moment, in ``[0, 1)``, defaults to ``0.999``.
        epsilon: non-negative float added to ``sqrt(v_hat)``, defaults to ``1e-7``.
        lr: Keras 2 alias of ``learning_rate``.
    """

    rule = "nadam"
    non_negative_slots = frozenset({"v"})

    def __init__(
        self,
        learning_rate: float | None = None,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
        **kwargs: Any,
    ) -> None:
        super().__init__(learning_rate, kwargs)
        self.beta_1 = _unit("Nadam", "beta_1", beta_1)
        self.beta_2 = _unit("Nadam", "beta_2", beta_2)
        self.epsilon = _non_negative("Nadam", "epsilon", epsilon)
        self._mu_product = 1.0

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "beta_1": self.beta_1,
            "beta_2": self.beta_2,
            "epsilon": self.epsilon,
        }

    def _slot_init(self) -> dict[str, float | None]:
        return {"m": 0.0, "v": 0.0}

    def _host_state(self) -> dict[str, float]:
        return {"mu_product": self._mu_product}

    def _set_host_state(self, values: dict[str, float]) -> None:
        self._mu_product = values["mu_product"]

    def _mu(self, step: int) -> float:
        return self.beta_1 * (1.0 - 0.5 * 0.96**step)

    def _step_hyperparameters(self) -> dict[str, float]:
        step = self._iterations
        mu_t, mu_next = self._mu(step), self._mu(step + 1)
        # the product runs over every step taken, so it lives here, not on the engine
        self._mu_product *= mu_t
        return {
            "learning_rate": self._learning_rate,
            "beta_1": self.beta_1,
            "beta_2": self.beta_2,
            "epsilon": self.epsilon,
            "m_weight": mu_next / (1.0 - self._mu_product * mu_next),
            "g_weight": (1.0 - mu_t) / (1.0 - self._mu_product),
            "v_correction": 1.0 - self.beta_2**step,
        }
