"""Learning rate schedules: Keras 3's ``keras.optimizers.schedules``.

A schedule is a function of the optimizer's step count (the steps applied before
the current one, starting at 0) that gives the learning rate of the current step.
Optimizers evaluate it on the host once per step, in float64, and pass the result
to the engine as a number, like the bias corrections: a schedule does no device work.

Each schedule takes plain numbers, checked in its constructor; ``get_config`` and
``from_config`` round-trip them, and ``serialize`` / ``deserialize`` wrap them in
Keras's ``{"class_name": ..., "config": ...}`` form, which optimizers write into
their own configs.

Example:

>>> from dlcore.optimizers.schedules import ExponentialDecay
>>> schedule = ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)
>>> schedule(10)
0.05
"""

from __future__ import annotations

import abc
import bisect
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "CosineDecay",
    "CosineDecayRestarts",
    "ExponentialDecay",
    "InverseTimeDecay",
    "LearningRateSchedule",
    "PiecewiseConstantDecay",
    "PolynomialDecay",
    "deserialize",
    "serialize",
]


def _real(owner: str, name: str, value: Any, ok: Callable[[float], bool], expected: str) -> float:
    """``value`` as a float if it is a finite real number (not a schedule, not a bool)
    that passes ``ok``."""
    if isinstance(value, LearningRateSchedule):
        raise TypeError(
            f"{owner} expected {name} to be a number, received the schedule {value!r}; "
            "schedules do not nest: pass a float"
        )
    if (
        isinstance(value, (bool, np.bool_))
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or not ok(float(value))
    ):
        raise ValueError(f"{owner} expected {name} to be {expected}, received {name}={value!r}")
    return float(value)


def _any(owner: str, name: str, value: Any) -> float:
    return _real(owner, name, value, lambda x: True, "a finite number")


def _positive(owner: str, name: str, value: Any) -> float:
    return _real(owner, name, value, lambda x: x > 0, "a positive number")


def _non_negative(owner: str, name: str, value: Any) -> float:
    return _real(owner, name, value, lambda x: x >= 0, "a non-negative number")


def _flag(owner: str, name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{owner} expected {name} to be True or False, received {name}={value!r}")
    return bool(value)


def _name(owner: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{owner} expected name to be a string, received name={value!r}")
    return value


def _step(owner: str, step: Any) -> float:
    if (
        isinstance(step, (bool, np.bool_))
        or not isinstance(step, numbers.Real)
        or not math.isfinite(step)
        or float(step) < 0
    ):
        raise ValueError(
            f"{owner} expected the step to be a non-negative number (the optimizer's "
            f"iterations), received {step!r}"
        )
    return float(step)


class LearningRateSchedule(abc.ABC):
    """Base class of the schedules: ``schedule(step) -> learning rate`` (a float).

    A subclass implements ``_value(step)`` for a float ``step >= 0`` and ``get_config``
    (its constructor arguments); ``__call__`` checks the step.
    """

    def __call__(self, step: Any) -> float:
        """The learning rate at ``step`` (a non-negative number), a Python float."""
        return float(self._value(_step(type(self).__name__, step)))

    @abc.abstractmethod
    def _value(self, step: float) -> float:
        """The learning rate at ``step``, a float ``>= 0``."""

    @abc.abstractmethod
    def get_config(self) -> dict[str, Any]:
        """The constructor arguments as a JSON-serialisable dict."""

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> LearningRateSchedule:
        """A new schedule from a ``get_config`` dict."""
        if not isinstance(config, Mapping):
            raise TypeError(
                f"{cls.__name__}.from_config expected a dict, received {type(config).__name__}"
            )
        return cls(**dict(config))

    def __repr__(self) -> str:
        arguments = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({arguments})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.get_config() == self.get_config()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, repr(sorted(self.get_config().items()))))


class ExponentialDecay(LearningRateSchedule):
    """``initial_learning_rate * decay_rate ** (step / decay_steps)``; with ``staircase``
    the exponent is floored.

    Args:
        initial_learning_rate: a float.
        decay_steps: a positive number of steps.
        decay_rate: a finite float.
        staircase: whether to floor ``step / decay_steps``.
        name: the schedule's name, defaults to ``"ExponentialDecay"``.
    """

    def __init__(
        self,
        initial_learning_rate: float,
        decay_steps: float,
        decay_rate: float,
        staircase: bool = False,
        name: str = "ExponentialDecay",
    ) -> None:
        owner = "ExponentialDecay"
        self.initial_learning_rate = _any(owner, "initial_learning_rate", initial_learning_rate)
        self.decay_steps = _positive(owner, "decay_steps", decay_steps)
        self.decay_rate = _any(owner, "decay_rate", decay_rate)
        self.staircase = _flag(owner, "staircase", staircase)
        self.name = _name(owner, name)
        self._config_steps = decay_steps

    def _value(self, step: float) -> float:
        p = step / self.decay_steps
        if self.staircase:
            p = math.floor(p)
        return self.initial_learning_rate * self.decay_rate**p

    def get_config(self) -> dict[str, Any]:
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self._config_steps,
            "decay_rate": self.decay_rate,
            "staircase": self.staircase,
            "name": self.name,
        }


class PiecewiseConstantDecay(LearningRateSchedule):
    """``values[0]`` while ``step <= boundaries[0]``, ``values[i]`` while
    ``boundaries[i-1] < step <= boundaries[i]``, ``values[-1]`` after the last boundary.

    Args:
        boundaries: increasing numbers of steps.
        values: one more float than ``boundaries``.
        name: defaults to ``"PiecewiseConstant"``.
    """

    def __init__(
        self, boundaries: Sequence[float], values: Sequence[float], name: str = "PiecewiseConstant"
    ) -> None:
        owner = "PiecewiseConstantDecay"
        if isinstance(boundaries, (str, bytes)) or not isinstance(boundaries, Sequence):
            raise ValueError(
                f"{owner} expected boundaries to be a list of numbers, received {boundaries!r}"
            )
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            raise ValueError(
                f"{owner} expected values to be a list of numbers, received {values!r}"
            )
        if len(boundaries) != len(values) - 1:
            raise ValueError(
                f"{owner} expected one more value than boundaries, received "
                f"{len(boundaries)} boundaries {list(boundaries)!r} and {len(values)} values "
                f"{list(values)!r}"
            )
        self.boundaries = [_any(owner, "boundaries", b) for b in boundaries]
        if any(b >= c for b, c in zip(self.boundaries, self.boundaries[1:])):
            raise ValueError(
                f"{owner} expected strictly increasing boundaries, received {list(boundaries)!r}"
            )
        self.values = [_any(owner, "values", v) for v in values]
        self.name = _name(owner, name)
        self._config = {"boundaries": list(boundaries), "values": list(values)}

    def _value(self, step: float) -> float:
        # the first boundary >= step: step <= boundaries[i] selects values[i]
        return self.values[bisect.bisect_left(self.boundaries, step)]

    def get_config(self) -> dict[str, Any]:
        return {**self._config, "name": self.name}


class PolynomialDecay(LearningRateSchedule):
    """``(initial - end) * (1 - step / decay_steps) ** power + end`` with the step capped at
    ``decay_steps``; with ``cycle`` the horizon is the first multiple of ``decay_steps``
    at or after the step instead.

    Args:
        initial_learning_rate: a float.
        decay_steps: a positive number of steps.
        end_learning_rate: the final rate, defaults to ``0.0001``.
        power: the polynomial's power, defaults to ``1.0``.
        cycle: whether to restart after ``decay_steps``.
        name: defaults to ``"PolynomialDecay"``.
    """

    def __init__(
        self,
        initial_learning_rate: float,
        decay_steps: float,
        end_learning_rate: float = 0.0001,
        power: float = 1.0,
        cycle: bool = False,
        name: str = "PolynomialDecay",
    ) -> None:
        owner = "PolynomialDecay"
        self.initial_learning_rate = _any(owner, "initial_learning_rate", initial_learning_rate)
        self.decay_steps = _positive(owner, "decay_steps", decay_steps)
        self.end_learning_rate = _any(owner, "end_learning_rate", end_learning_rate)
        self.power = _any(owner, "power", power)
        self.cycle = _flag(owner, "cycle", cycle)
        self.name = _name(owner, name)
        self._config_steps = decay_steps

    def _value(self, step: float) -> float:
        horizon = self.decay_steps
        if self.cycle:
            horizon *= 1.0 if step == 0 else math.ceil(step / self.decay_steps)
        else:
            step = min(step, horizon)
        fraction = step / horizon
        span = self.initial_learning_rate - self.end_learning_rate
        return span * (1.0 - fraction) ** self.power + self.end_learning_rate

    def get_config(self) -> dict[str, Any]:
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self._config_steps,
            "end_learning_rate": self.end_learning_rate,
            "power": self.power,
            "cycle": self.cycle,
            "name": self.name,
        }


class InverseTimeDecay(LearningRateSchedule):
    """``initial_learning_rate / (1 + decay_rate * step / decay_steps)``; with
    ``staircase`` the ratio is floored.

    Args:
        initial_learning_rate: a float.
        decay_steps: a positive number of steps.
        decay_rate: a finite float.
        staircase: whether to floor ``step / decay_steps``.
        name: defaults to ``"InverseTimeDecay"``.
    """

    def __init__(
        self,
        initial_learning_rate: float,
        decay_steps: float,
        decay_rate: float,
        staircase: bool = False,
        name: str = "InverseTimeDecay",
    ) -> None:
        owner = "InverseTimeDecay"
        self.initial_learning_rate = _any(owner, "initial_learning_rate", initial_learning_rate)
        self.decay_steps = _positive(owner, "decay_steps", decay_steps)
        self.decay_rate = _any(owner, "decay_rate", decay_rate)
        self.staircase = _flag(owner, "staircase", staircase)
        self.name = _name(owner, name)
        self._config_steps = decay_steps

    def _value(self, step: float) -> float:
        p = step / self.decay_steps
        if self.staircase:
            p = math.floor(p)
        return self.initial_learning_rate / (1.0 + self.decay_rate * p)

    def get_config(self) -> dict[str, Any]:
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self._config_steps,
            "decay_rate": self.decay_rate,
            "staircase": self.staircase,
            "name": self.name,
        }


class CosineDecay(LearningRateSchedule):
    """Cosine decay, after an optional linear warmup.

    Without ``warmup_target``: ``initial * ((1 - alpha) * 0.5 * (1 + cos(pi * s / decay_steps))
    + alpha)`` with ``s = min(step, decay_steps)``. With it: during the first
    ``warmup_steps`` steps the rate goes linearly from ``initial_learning_rate`` to
    ``warmup_target``, then decays as above from ``warmup_target`` over ``decay_steps``.

    Args:
        initial_learning_rate: a float.
        decay_steps: a positive number of steps.
        alpha: the final rate as a fraction of the decay's start, defaults to ``0.0``.
        name: defaults to ``"CosineDecay"``.
        warmup_target: the rate at the end of the warmup, or ``None`` for no warmup.
        warmup_steps: a non-negative number of warmup steps, defaults to ``0``.
    """

    def __init__(
        self,
        initial_learning_rate: float,
        decay_steps: float,
        alpha: float = 0.0,
        name: str = "CosineDecay",
        warmup_target: float | None = None,
        warmup_steps: float = 0,
    ) -> None:
        owner = "CosineDecay"
        self.initial_learning_rate = _any(owner, "initial_learning_rate", initial_learning_rate)
        self.decay_steps = _positive(owner, "decay_steps", decay_steps)
        self.alpha = _any(owner, "alpha", alpha)
        self.name = _name(owner, name)
        self.warmup_target = (
            None if warmup_target is None else _any(owner, "warmup_target", warmup_target)
        )
        self.warmup_steps = _non_negative(owner, "warmup_steps", warmup_steps)
        self._config_steps = (decay_steps, warmup_steps)

    def _decayed(self, step: float, start: float) -> float:
        cosine = 0.5 * (1.0 + math.cos(math.pi * (step / self.decay_steps)))
        return start * ((1.0 - self.alpha) * cosine + self.alpha)

    def _value(self, step: float) -> float:
        if self.warmup_target is None:
            return self._decayed(min(step, self.decay_steps), self.initial_learning_rate)
        step = min(step, self.decay_steps + self.warmup_steps)
        if step < self.warmup_steps:
            delta = self.warmup_target - self.initial_learning_rate
            return delta * (step / self.warmup_steps) + self.initial_learning_rate
        return self._decayed(step - self.warmup_steps, self.warmup_target)

    def get_config(self) -> dict[str, Any]:
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self._config_steps[0],
            "alpha": self.alpha,
            "name": self.name,
            "warmup_target": self.warmup_target,
            "warmup_steps": self._config_steps[1],
        }


class CosineDecayRestarts(LearningRateSchedule):
    """Cosine decay with warm restarts (SGDR, Loshchilov and Hutter).

    The first period decays from ``initial_learning_rate`` to ``alpha`` times it over
    ``first_decay_steps``; each following period is ``t_mul`` times longer and starts
    at ``m_mul`` times the previous period's start.

    Args:
        initial_learning_rate: a float.
        first_decay_steps: a positive number of steps.
        t_mul: a positive factor of the periods' lengths, defaults to ``2.0``.
        m_mul: a factor of the periods' starting rates, defaults to ``1.0``.
        alpha: the floor as a fraction of each period's start, defaults to ``0.0``.
        name: defaults to ``"SGDRDecay"``.
    """

    def __init__(
        self,
        initial_learning_rate: float,
        first_decay_steps: float,
        t_mul: float = 2.0,
        m_mul: float = 1.0,
        alpha: float = 0.0,
        name: str = "SGDRDecay",
    ) -> None:
        owner = "CosineDecayRestarts"
        self.initial_learning_rate = _any(owner, "initial_learning_rate", initial_learning_rate)
        self.first_decay_steps = _positive(owner, "first_decay_steps", first_decay_steps)
        self.t_mul = _positive(owner, "t_mul", t_mul)
        self.m_mul = _any(owner, "m_mul", m_mul)
        self.alpha = _any(owner, "alpha", alpha)
        self.name = _name(owner, name)
        self._config_steps = first_decay_steps

    def _value(self, step: float) -> float:
        fraction = step / self.first_decay_steps
        t_mul = self.t_mul
        if t_mul == 1.0:
            restart = math.floor(fraction)
            fraction -= restart
        else:
            restart = math.floor(math.log(1.0 - fraction * (1.0 - t_mul)) / math.log(t_mul))
            elapsed = (1.0 - t_mul**restart) / (1.0 - t_mul)
            fraction = (fraction - elapsed) / t_mul**restart
        cosine = 0.5 * self.m_mul**restart * (1.0 + math.cos(math.pi * fraction))
        return self.initial_learning_rate * ((1.0 - self.alpha) * cosine + self.alpha)

    def get_config(self) -> dict[str, Any]:
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "first_decay_steps": self._config_steps,
            "t_mul": self.t_mul,
            "m_mul": self.m_mul,
            "alpha": self.alpha,
            "name": self.name,
        }


#: The schedules by class name, for ``deserialize``.
SCHEDULES: dict[str, type[LearningRateSchedule]] = {
    cls.__name__: cls
    for cls in (
        ExponentialDecay,
        PiecewiseConstantDecay,
        PolynomialDecay,
        InverseTimeDecay,
        CosineDecay,
        CosineDecayRestarts,
    )
}


def serialize(schedule: LearningRateSchedule) -> dict[str, Any]:
    """``schedule`` as ``{"module", "class_name", "config", "registered_name"}``, Keras's
    form (what optimizers write as their ``learning_rate`` in ``get_config``)."""
    if not isinstance(schedule, LearningRateSchedule):
        raise TypeError(
            f"serialize expected a LearningRateSchedule, received {type(schedule).__name__}"
        )
    return {
        "module": "keras.optimizers.schedules",
        "class_name": type(schedule).__name__,
        "config": schedule.get_config(),
        "registered_name": None,
    }


def deserialize(config: Mapping[str, Any]) -> LearningRateSchedule:
    """A schedule from ``serialize``'s dict (``"class_name"`` and ``"config"``; the other
    keys are ignored).

    Raises:
        ValueError: for an unknown class name (listing the known ones) or a dict without
            ``"class_name"``.
    """
    if not isinstance(config, Mapping) or "class_name" not in config:
        raise ValueError(
            "a learning rate schedule config expected a dict with 'class_name' and "
            f"'config', e.g. {{'class_name': 'ExponentialDecay', 'config': {{...}}}}, "
            f"received {config!r}"
        )
    name = config["class_name"]
    cls = SCHEDULES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(
            f"unknown learning rate schedule {name!r}; available: {', '.join(sorted(SCHEDULES))}"
        )
    return cls.from_config(config.get("config", {}))
