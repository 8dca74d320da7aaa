"""Regularization layers that add noise in training: ``GaussianNoise``,
``GaussianDropout`` and ``AlphaDropout``; each is the identity at inference.

The noise comes from the engine's generator, the one dropout draws from, which
``dlcore.set_random_seed`` (or a model's seed) seeds: on the numba engine it is
drawn on the device. ``seed=`` is accepted and saved for Keras compatibility.
"""

from __future__ import annotations

import abc
import numbers
from typing import Any

from dlcore.backends.base import Array

from .base import CallState, Layer, shape_text


def _fraction(value: Any, name: str, owner: str, *, one_allowed: bool) -> float:
    """``value`` as a float in ``[0, 1)`` (``[0, 1]`` with ``one_allowed``), else refused."""
    # float is listed for mypy, which does not know that float is a numbers.Real
    ok = not isinstance(value, bool) and isinstance(value, (float, numbers.Real))
    if ok:
        ok = 0 <= value <= 1 if one_allowed else 0 <= value < 1
    if not ok:
        interval = "[0, 1]" if one_allowed else "[0, 1)"
        raise ValueError(f"{owner} expected {name} in {interval}, received {name}={value!r}")
    return float(value)


def _seed(value: Any, owner: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, numbers.Integral)) or value < 0:
        raise ValueError(
            f"{owner} expected seed=None or a non-negative integer, received seed={value!r}"
        )
    return int(value)


class _Noise(Layer, abc.ABC):
    """A weightless layer, elementwise, active only in training."""

    elementwise = True

    def __init__(self, seed: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seed = _seed(seed, type(self).__name__)
        if self.input_features is not None:
            self.units = self.input_features

    def _active(self) -> bool:
        return True

    @abc.abstractmethod
    def _noise(self, X: Any) -> tuple[Array, Array | None]:
        """The noisy batch and the mask its gradient is multiplied by (``None``: the
        identity), from the engine's generator."""

    def forward(self, X: Any, *, training: bool, state: CallState | None = None) -> Array:
        if not training or state is None or not self._active():
            if state is not None:
                state.cache = None
            return X
        Y, state.cache = self._noise(X)
        return Y

    def backward(self, dY, *, state, need_dX, param_grads):
        if not need_dX:
            return None
        if state.cache is None:  # additive noise, or not active
            return dY
        return self.bound_engine().backprop_dropout(dY, state.cache)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["seed"] = self.seed
        return config


class GaussianNoise(_Noise):
    """Adds zero-centred Gaussian noise of standard deviation ``stddev`` in training.

    Args:
        stddev: float in ``[0, 1]`` (Keras's range), the noise's standard deviation.
        seed: ``None`` or a non-negative int, saved for Keras compatibility; the noise
            comes from the engine's generator (``dlcore.set_random_seed``).
        name, input_shape, trainable, dtype: see ``Layer``.
    """

    def __init__(self, stddev: float, seed: Any = None, **kwargs: Any) -> None:
        super().__init__(seed=seed, **kwargs)
        self.stddev = _fraction(stddev, "stddev", "GaussianNoise", one_allowed=True)

    def _active(self) -> bool:
        return self.stddev > 0

    def _noise(self, X: Any) -> tuple[Array, Array | None]:
        return self.bound_engine().gaussian_noise(X, stddev=self.stddev), None

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["stddev"] = self.stddev
        return config


class GaussianDropout(_Noise):
    """Multiplies its inputs by 1-centred Gaussian noise of standard deviation
    ``sqrt(rate / (1 - rate))`` in training.

    Args:
        rate: float in ``[0, 1)``, the drop probability of the equivalent dropout.
        seed: see ``GaussianNoise``.
        name, input_shape, trainable, dtype: see ``Layer``.
    """

    def __init__(self, rate: float, seed: Any = None, **kwargs: Any) -> None:
        super().__init__(seed=seed, **kwargs)
        self.rate = _fraction(rate, "rate", "GaussianDropout", one_allowed=False)

    def _active(self) -> bool:
        return self.rate > 0

    def _noise(self, X: Any) -> tuple[Array, Array | None]:
        return self.bound_engine().gaussian_dropout(X, rate=self.rate)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["rate"] = self.rate
        return config


class AlphaDropout(_Noise):
    """Dropout that keeps the mean and variance of standard normal inputs (for SELU
    networks): dropped units take SELU's negative saturation, then an affine map
    restores the moments (Keras's formula, ``Engine.alpha_dropout``).

    Args:
        rate: float in ``[0, 1)``, the fraction of units dropped.
        noise_shape: ``None`` (a decision per value) or Keras's shape of the dropout
            decisions, ``(batch, *sample)`` with ``None`` for "as the input": the batch
            entry ``None`` or 1 (1: one decision for every sample), the sample entries
            all as the input's (``None`` or the size) or all 1 (one decision per sample).
        seed: see ``GaussianNoise``.
        name, input_shape, trainable, dtype: see ``Layer``.
    """

    def __init__(
        self, rate: float, noise_shape: Any = None, seed: Any = None, **kwargs: Any
    ) -> None:
        super().__init__(seed=seed, **kwargs)
        self.rate = _fraction(rate, "rate", "AlphaDropout", one_allowed=False)
        if noise_shape is not None:
            entries = list(noise_shape) if isinstance(noise_shape, (list, tuple)) else None
            if (
                not entries
                or len(entries) < 2
                or any(
                    e is not None and (isinstance(e, bool) or not isinstance(e, numbers.Integral))
                    for e in entries
                )
            ):
                raise ValueError(
                    "AlphaDropout expected noise_shape=None or (batch, *sample) of ints and "
                    f"None, such as (None, 1), received noise_shape={noise_shape!r}"
                )
            noise_shape = [None if e is None else int(e) for e in entries]
        self.noise_shape: list[int | None] | None = noise_shape
        self._per_sample = False  # one decision for a whole sample
        self._per_batch = False  # one decision for every sample of the batch

    def output_dims(self, input_dims: list[tuple[int, ...]]) -> tuple[int, ...] | None:
        dims = input_dims[0]
        if self.noise_shape is not None:
            batch, *sample = self.noise_shape
            full = len(sample) == len(dims) and all(
                s is None or s == d for s, d in zip(sample, dims)
            )
            ones = len(sample) == len(dims) and all(s == 1 for s in sample)
            if batch not in (None, 1) or not (full or ones):
                raise ValueError(
                    f"AlphaDropout's noise_shape={self.noise_shape!r} does not fit inputs of "
                    f"shape {shape_text(dims)}: give the batch entry None or 1, and the "
                    "sample entries all as the input's (None) or all 1"
                )
            self._per_batch = batch == 1
            self._per_sample = ones and not full
        return super().output_dims(input_dims)

    def _active(self) -> bool:
        return self.rate > 0

    def _noise(self, X: Any) -> tuple[Array, Array | None]:
        n, features = (int(d) for d in X.shape)
        noise_shape = (1 if self._per_batch else n, 1 if self._per_sample else features)
        return self.bound_engine().alpha_dropout(X, rate=self.rate, noise_shape=noise_shape)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(rate=self.rate, noise_shape=self.noise_shape)
        return config


__all__ = ["AlphaDropout", "GaussianDropout", "GaussianNoise"]
