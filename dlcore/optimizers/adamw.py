"""AdamW: Adam with decoupled weight decay."""

from __future__ import annotations

from typing import Any

from .adam import Adam
from .base import _non_negative


class AdamW(Adam):
    """AdamW: Adam with decoupled weight decay (Loshchilov and Hutter, 2019).

    Each step first shrinks the weights, ``w -= w * weight_decay * learning_rate``,
    then takes Adam's step (see ``Adam``); both are one pass of the ``"adamw"`` rule.

    Args:
        learning_rate: positive float or a schedule, defaults to ``0.001``.
        weight_decay: non-negative float, defaults to ``0.004``.
        beta_1: decay rate of the first moment, in ``[0, 1)``, defaults to ``0.9``.
        beta_2: decay rate of the second moment, in ``[0, 1)``, defaults to ``0.999``.
        epsilon: non-negative float added to ``sqrt(v)``, defaults to ``1e-7``.
        amsgrad: whether to use AMSGrad, defaults to ``False``.
        kwargs: ``lr`` (Keras 2's alias of ``learning_rate``) and the options every
            optimizer takes (``clipnorm``, ``use_ema``, ...).
    """

    rule = "adamw"
    fused_weight_decay = True

    def __init__(
        self,
        learning_rate: Any = None,
        weight_decay: float = 0.004,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
        amsgrad: bool = False,
        **kwargs: Any,
    ) -> None:
        # Keras refuses None: AdamW without weight decay is Adam
        weight_decay = _non_negative("AdamW", "weight_decay", weight_decay)
        super().__init__(
            learning_rate, beta_1, beta_2, epsilon, amsgrad, weight_decay=weight_decay, **kwargs
        )

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "weight_decay": self.weight_decay}

    def _step_hyperparameters(self) -> dict[str, float]:
        decay = (self.weight_decay or 0.0) * self._learning_rate
        return {**super()._step_hyperparameters(), "decay": decay}
