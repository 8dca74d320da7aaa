"""Adadelta: a per-weight step size from moving averages of gradients and updates."""

from __future__ import annotations

from typing import Any

from .base import Optimizer, _non_negative, _unit


class Adadelta(Optimizer):
    """Adadelta (Zeiler, 2012).

    ``a_g = rho * a_g + (1 - rho) * g**2``;
    ``delta = -sqrt(a_d + epsilon) * g / sqrt(a_g + epsilon)``;
    ``a_d = rho * a_d + (1 - rho) * delta**2``; ``w += learning_rate * delta``.

    Args:
        learning_rate: positive float or a schedule, defaults to ``0.001``.
        rho: decay rate of both moving averages, in ``[0, 1)``, defaults to ``0.95``.
        epsilon: non-negative float added under the square roots, defaults to ``1e-7``.
        kwargs: ``lr`` (Keras 2's alias of ``learning_rate``) and the options every
            optimizer takes (``weight_decay``, ``clipnorm``, ``use_ema``, ...).
    """

    rule = "adadelta"
    non_negative_slots = frozenset({"accumulated_grad", "accumulated_delta_var"})

    def __init__(
        self,
        learning_rate: Any = None,
        rho: float = 0.95,
        epsilon: float = 1e-7,
        **kwargs: Any,
    ) -> None:
        super().__init__(learning_rate, kwargs)
        self.rho = _unit("Adadelta", "rho", rho)
        self.epsilon = _non_negative("Adadelta", "epsilon", epsilon)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "rho": self.rho, "epsilon": self.epsilon}

    def _slot_init(self) -> dict[str, float | None]:
        return {"accumulated_grad": 0.0, "accumulated_delta_var": 0.0}

    def _step_hyperparameters(self) -> dict[str, float]:
        return {"learning_rate": self._learning_rate, "rho": self.rho, "epsilon": self.epsilon}
