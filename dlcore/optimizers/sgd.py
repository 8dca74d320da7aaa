"""SGD: gradient descent, with optional momentum and Nesterov momentum."""

from __future__ import annotations

from typing import Any

from .base import Optimizer, _flag, _momentum


class SGD(Optimizer):
    """Gradient descent, with optional momentum and Nesterov momentum.

    Update of the parameters ``w`` with gradient ``g``: ``w -= learning_rate * g``
    when ``momentum`` is 0; otherwise ``velocity = momentum * velocity -
    learning_rate * g`` then ``w += velocity``, or with ``nesterov``
    ``w += momentum * velocity - learning_rate * g``.

    Args:
        learning_rate: positive float, defaults to ``0.01``.
        momentum: float in ``[0, 1]``, defaults to ``0.0``.
        nesterov: whether to use Nesterov momentum, defaults to ``False``.
        lr: Keras 2 alias of ``learning_rate``.

    Example:

    >>> opt = SGD(lr=0.1, momentum=0.9)
    >>> opt.learning_rate
    0.1
    """

    default_learning_rate = 0.01
    rule = "sgd"

    def __init__(
        self,
        learning_rate: float | None = None,
        momentum: float = 0.0,
        nesterov: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(learning_rate, kwargs)
        self.momentum = _momentum("SGD", momentum)
        self.nesterov = _flag("SGD", "nesterov", nesterov)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov}

    def _slot_init(self) -> dict[str, float | None]:
        return {"velocity": 0.0 if self.momentum != 0 else None}

    def _step_hyperparameters(self) -> dict[str, float]:
        return {
            "learning_rate": self._learning_rate,
            "momentum": self.momentum,
            "nesterov": self.nesterov,
        }
