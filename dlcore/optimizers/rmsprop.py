"""RMSprop: the gradient divided by a moving root mean square of past gradients."""

from __future__ import annotations

from typing import Any

from .base import Optimizer, _flag, _momentum, _non_negative, _unit


class RMSprop(Optimizer):
    """RMSprop: divide the gradient by a moving root mean square of past gradients.

    ``velocity = rho * velocity + (1 - rho) * g**2``; centered, also
    ``average_grad = rho * average_grad + (1 - rho) * g`` and the denominator is
    ``sqrt(velocity - average_grad**2 + epsilon)``, else ``sqrt(velocity + epsilon)``;
    ``increment = learning_rate * g / denominator``; with momentum
    ``buffer = momentum * buffer + increment`` and ``w -= buffer``, else
    ``w -= increment``.

    Args:
        learning_rate: positive float, defaults to ``0.001``.
        rho: decay rate of the moving averages, in ``[0, 1)``, defaults to ``0.9``.
        momentum: float in ``[0, 1]``, defaults to ``0.0``.
        epsilon: non-negative float added under the square root, defaults to ``1e-7``.
        centered: normalise by the estimated variance of the gradient instead of
            its second moment, defaults to ``False``.
        lr: Keras 2 alias of ``learning_rate``.
    """

    rule = "rmsprop"
    non_negative_slots = frozenset({"velocity"})

    def __init__(
        self,
        learning_rate: float | None = None,
        rho: float = 0.9,
        momentum: float = 0.0,
        epsilon: float = 1e-7,
        centered: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(learning_rate, kwargs)
        self.rho = _unit("RMSprop", "rho", rho)
        self.momentum = _momentum("RMSprop", momentum)
        self.epsilon = _non_negative("RMSprop", "epsilon", epsilon)
        self.centered = _flag("RMSprop", "centered", centered)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "rho": self.rho,
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            "centered": self.centered,
        }

    def _slot_init(self) -> dict[str, float | None]:
        return {
            "velocity": 0.0,
            "average_grad": 0.0 if self.centered else None,
            "momentum_buffer": 0.0 if self.momentum > 0 else None,
        }

    def _step_hyperparameters(self) -> dict[str, float]:
        return {
            "learning_rate": self._learning_rate,
            "rho": self.rho,
            "momentum": self.momentum,
            "epsilon": self.epsilon,
        }
