"""Optimizers with Keras 3's update rules, defaults and configs.

An optimizer updates one flat parameter buffer of shape ``(P,)`` from one flat
gradient buffer of the same shape, both owned by the model on its engine. The
optimizer owns its state slots (flat ``(P,)`` engine arrays of the model's float
dtype) and a few host scalars (the step count, Nadam's momentum product); one
step is one fused engine call over the whole buffer, whatever the number of
layers. Everything engine-specific happens in the engine's ``*_update`` method.

Example:

>>> from dlcore.optimizers import SGD
>>> opt = SGD(learning_rate=0.1, momentum=0.9, nesterov=True)
>>> opt.get_config()
{'name': 'SGD', 'learning_rate': 0.1, 'momentum': 0.9, 'nesterov': True}
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

Array = Any
Engine = Any


def _number(owner: str, name: str, value: Any, ok: Callable[[float], bool], expected: str) -> float:
    """``value`` as a float if it is a finite real number that passes ``ok``."""
    if (
        isinstance(value, (bool, np.bool_))
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or not ok(float(value))
    ):
        raise ValueError(f"{owner} expected {name} to be {expected}, received {name}={value!r}")
    return float(value)


def _flag(owner: str, name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{owner} expected {name} to be True or False, received {name}={value!r}")
    return bool(value)


def _learning_rate(owner: str, value: Any) -> float:
    return _number(owner, "learning_rate", value, lambda x: x > 0, "a positive number")


def _unit(owner: str, name: str, value: Any) -> float:
    """A decay rate in ``[0, 1)``."""
    return _number(owner, name, value, lambda x: 0 <= x < 1, "a number in [0, 1)")


def _momentum(owner: str, value: Any) -> float:
    return _number(owner, "momentum", value, lambda x: 0 <= x <= 1, "a number in [0, 1]")


def _non_negative(owner: str, name: str, value: Any) -> float:
    return _number(owner, name, value, lambda x: x >= 0, "a non-negative number")


class Optimizer:
    """Base class of the optimizers: learning rate, step count, state slots.

    Subclasses declare their slots in ``_slot_init`` and run one step in
    ``_update``; this class allocates, saves, restores and moves the slots.

    Args:
        learning_rate: a positive number; ``None`` means the subclass default.
        kwargs: only ``lr``, the Keras 2 alias of ``learning_rate``.
    """

    default_learning_rate: float = 0.001

    def __init__(self, learning_rate: float | None, kwargs: dict[str, Any]) -> None:
        owner = type(self).__name__
        lr = kwargs.pop("lr", None)
        if kwargs:
            raise TypeError(
                f"{owner} got unexpected keyword argument(s) {', '.join(map(repr, kwargs))}; "
                f"valid arguments: {', '.join(self._argument_names())} "
                "(and lr, the Keras 2 alias of learning_rate)"
            )
        if lr is not None and learning_rate is not None:
            raise ValueError(
                f"{owner} expected one of learning_rate and its Keras 2 alias lr, "
                f"received both: learning_rate={learning_rate!r}, lr={lr!r}"
            )
        if learning_rate is None:
            learning_rate = self.default_learning_rate if lr is None else lr
        self._learning_rate = _learning_rate(owner, learning_rate)
        self._iterations = 0
        self._slots: dict[str, Array | None] = {}
        self._engine: Engine | None = None
        self._size: int | None = None
        self._dtype: str | None = None

    @classmethod
    def _argument_names(cls) -> list[str]:
        parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
        return [p.name for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD]

    # ------------------------------------------------------------------ hyperparameters
    @property
    def learning_rate(self) -> float:
        """The learning rate, a positive float; settable (e.g. by a callback)."""
        return self._learning_rate

    @learning_rate.setter
    def learning_rate(self, value: float) -> None:
        self._learning_rate = _learning_rate(type(self).__name__, value)

    @property
    def iterations(self) -> int:
        """The number of steps applied so far."""
        return self._iterations

    @property
    def built(self) -> bool:
        """Whether the state slots exist (after ``build`` or ``set_state``)."""
        return self._size is not None

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments as a JSON-serialisable dict, with ``"name"``."""
        return {"name": type(self).__name__, "learning_rate": self._learning_rate}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Optimizer:
        """A new optimizer from a ``get_config`` dict (its ``"name"`` is ignored)."""
        if not isinstance(config, Mapping):
            raise TypeError(
                f"{cls.__name__}.from_config expected a dict, received {type(config).__name__}"
            )
        arguments = {key: value for key, value in config.items() if key != "name"}
        return cls(**arguments)

    def __repr__(self) -> str:
        arguments = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "name")
        return f"{type(self).__name__}({arguments})"

    # ------------------------------------------------------------------ state
    def _slot_engine(self) -> Engine:
        """The engine holding the slots; set whenever a slot exists."""
        if self._engine is None:
            # AttributeError, as the attribute access on None raised before this check
            raise AttributeError(f"{type(self).__name__} has no state slots on an engine yet")
        return self._engine

    def _slot_init(self) -> dict[str, float | None]:
        """Each slot's name and initial value, or ``None`` for a slot not in use."""
        raise NotImplementedError

    def _host_state(self) -> dict[str, float]:
        """Host scalars saved with the state besides ``iterations``."""
        return {}

    def _set_host_state(self, values: dict[str, float]) -> None:
        """Restore the scalars returned by ``_host_state``."""

    def build(self, engine: Engine, size: int, dtype: str) -> None:
        """Allocate the state slots for a parameter buffer of ``size`` scalars.

        Building again with the same size and dtype keeps the state (training
        continues where it stopped), moving it to ``engine`` if it differs.

        Args:
            engine: the engine the parameter buffer lives on.
            size: ``P``, the number of scalars in the parameter buffer.
            dtype: ``"float32"`` or ``"float64"``, the buffer's dtype.

        Raises:
            ValueError: when already built for another size or dtype.
        """
        if self.built:
            if (size, dtype) != (self._size, self._dtype):
                raise ValueError(
                    f"{type(self).__name__} was built for {self._size} {self._dtype} "
                    f"parameters, received {size} {dtype} parameters; an optimizer "
                    "serves one model: create a new one for this model"
                )
            if engine is not self._engine:
                self.to_engine(engine)
            return
        self._allocate(engine, size, dtype)

    def _allocate(self, engine: Engine, size: int, dtype: str) -> None:
        """Create the slots with their initial values."""
        slots: dict[str, Array | None] = {}
        for name, initial in self._slot_init().items():
            if initial is None:
                slots[name] = None
            elif initial == 0.0:
                slots[name] = engine.zeros((size,), dtype=dtype)
            else:
                slots[name] = engine.asarray(np.full((size,), initial, dtype=dtype), dtype=dtype)
        self._slots, self._engine, self._size, self._dtype = slots, engine, size, dtype

    def apply(self, engine: Engine, params: Array, grads: Array) -> None:
        """One step: update ``params`` in place from ``grads``.

        Args:
            engine: the engine of the buffers (the one given to ``build``).
            params: float ``(P,)`` engine array, updated in place.
            grads: float ``(P,)`` engine array of the same dtype.
        """
        if not self.built:
            raise RuntimeError(
                f"{type(self).__name__}.apply called before build(engine, size, dtype)"
            )
        self._iterations += 1
        self._update(engine, params, grads)

    def _update(self, engine: Engine, params: Array, grads: Array) -> None:
        """Call the engine's update for step ``self.iterations``."""
        raise NotImplementedError

    def get_state(self) -> dict[str, np.ndarray]:
        """The state on the host: each slot in use and the host scalars.

        Returns:
            ``{"iterations": int64 0-d array, <slot>: float (P,) array, ...}``
            plus any host scalar as a float64 0-d array (Nadam's ``mu_product``).
        """
        state = {"iterations": np.asarray(self._iterations, dtype=np.int64)}
        for name, value in self._host_state().items():
            state[name] = np.asarray(value, dtype=np.float64)
        for name, slot in self._slots.items():
            if slot is not None:
                state[name] = self._slot_engine().to_numpy(slot)
        return state

    def set_state(self, engine: Engine, state: Mapping[str, Any], dtype: str) -> None:
        """Restore a state returned by ``get_state`` onto ``engine``.

        Args:
            engine: the engine the parameter buffer lives on.
            state: ``{"iterations": ..., <slot>: (P,) array, <host scalar>: ...}``.
            dtype: the dtype of the slots on the engine.

        A state saved before the first step (``iterations`` 0, no slots)
        resets the optimizer to its initial state.

        Raises:
            ValueError: when a slot or scalar is missing, unexpected, or of the
                wrong size (when built, ``P`` is the built size; otherwise the
                first slot's size). Nothing is changed then.
        """
        owner = type(self).__name__
        if not isinstance(state, Mapping):
            raise ValueError(f"{owner} expected a state dict, received {type(state).__name__}")
        used = [name for name, initial in self._slot_init().items() if initial is not None]
        expected = ["iterations", *self._host_state(), *used]
        unexpected = sorted(set(state) - set(expected))
        if unexpected:
            raise ValueError(
                f"{owner} state has unexpected entries {unexpected}; with this configuration "
                f"it expected {expected} (was it saved with other options?)"
            )
        fresh = not any(name in state for name in used)
        for name in expected:
            if name not in state and not (fresh and name in used):
                raise ValueError(f"{owner} state expected an entry {name!r}, received none")
        iterations = np.asarray(state["iterations"])
        if iterations.shape != () or iterations.dtype.kind not in "iu" or iterations < 0:
            raise ValueError(
                f"{owner} state expected iterations to be a non-negative integer, "
                f"received {state['iterations']!r}"
            )
        host = {}
        for name in self._host_state():
            value = np.asarray(state[name])
            if value.shape != () or value.dtype.kind != "f" or not np.isfinite(value):
                raise ValueError(
                    f"{owner} state expected {name} to be a finite float, received {value!r}"
                )
            host[name] = float(value)
        if fresh and used:
            if iterations != 0:
                raise ValueError(
                    f"{owner} state expected the entries {used} after {int(iterations)} "
                    "steps, received none of them"
                )
            self._iterations = 0
            self._set_host_state(host)
            if self._size is not None:  # built
                self._allocate(engine, self._size, dtype)
            return
        size = self._size
        arrays = {}
        for name in used:
            array = np.asarray(state[name])
            if size is None:
                size = array.size
            if array.shape != (size,):
                raise ValueError(
                    f"{owner} state slot {name!r} expected shape ({size},), "
                    f"received shape {array.shape}"
                )
            arrays[name] = array
        self._iterations = int(iterations)
        self._set_host_state(host)
        if size is None:
            return  # no slot in use and not built: build() will allocate nothing
        self._slots = {
            # a private copy: the updates run in place and must not write into the caller's arrays
            name: (engine.asarray(arrays[name].copy(), dtype=dtype) if name in arrays else None)
            for name in self._slot_init()
        }
        self._engine, self._size, self._dtype = engine, size, dtype

    def to_engine(self, engine: Engine) -> None:
        """Move the state slots to ``engine`` (used when the model changes engine)."""
        if self.built and engine is not self._engine:
            self._slots = {
                name: None
                if slot is None
                else engine.asarray(self._slot_engine().to_numpy(slot), dtype=self._dtype)
                for name, slot in self._slots.items()
            }
        self._engine = engine


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

    def _update(self, engine: Engine, params: Array, grads: Array) -> None:
        engine.sgd_update(
            params,
            grads,
            self._slots["velocity"],
            learning_rate=self._learning_rate,
            momentum=self.momentum,
            nesterov=self.nesterov,
        )


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

    def _update(self, engine: Engine, params: Array, grads: Array) -> None:
        engine.adam_update(
            params,
            grads,
            self._slots["m"],
            self._slots["v"],
            self._slots["v_max"],
            learning_rate=self._learning_rate,
            beta_1=self.beta_1,
            beta_2=self.beta_2,
            epsilon=self.epsilon,
            step=self._iterations,
        )


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

    def _update(self, engine: Engine, params: Array, grads: Array) -> None:
        engine.rmsprop_update(
            params,
            grads,
            self._slots["velocity"],
            self._slots["average_grad"],
            self._slots["momentum_buffer"],
            learning_rate=self._learning_rate,
            rho=self.rho,
            momentum=self.momentum,
            epsilon=self.epsilon,
        )


class Adagrad(Optimizer):
    """Adagrad: per-parameter learning rates shrinking with the squared gradients seen.

    ``accumulator += g**2``; ``w -= learning_rate * g / sqrt(accumulator + epsilon)``.

    Args:
        learning_rate: positive float, defaults to ``0.001``.
        initial_accumulator_value: non-negative starting value of the
            accumulator, defaults to ``0.1``.
        epsilon: non-negative float added under the square root, defaults to ``1e-7``.
        lr: Keras 2 alias of ``learning_rate``.
    """

    def __init__(
        self,
        learning_rate: float | None = None,
        initial_accumulator_value: float = 0.1,
        epsilon: float = 1e-7,
        **kwargs: Any,
    ) -> None:
        super().__init__(learning_rate, kwargs)
        self.initial_accumulator_value = _non_negative(
            "Adagrad", "initial_accumulator_value", initial_accumulator_value
        )
        self.epsilon = _non_negative("Adagrad", "epsilon", epsilon)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "initial_accumulator_value": self.initial_accumulator_value,
            "epsilon": self.epsilon,
        }

    def _slot_init(self) -> dict[str, float | None]:
        return {"accumulator": self.initial_accumulator_value}

    def _update(self, engine: Engine, params: Array, grads: Array) -> None:
        engine.adagrad_update(
            params,
            grads,
            self._slots["accumulator"],
            learning_rate=self._learning_rate,
            epsilon=self.epsilon,
        )


class Adamax(Optimizer):
    """Adamax: Adam with the infinity norm in place of the second moment.

    ``m += (g - m) * (1 - beta_1)``; ``u = max(beta_2 * u, |g|)``;
    ``w -= learning_rate / (1 - beta_1**t) * m / (u + epsilon)`` at step ``t``.

    Args:
        learning_rate: positive float, defaults to ``0.001``.
        beta_1: decay rate of the first moment, in ``[0, 1)``, defaults to ``0.9``.
        beta_2: decay rate of the infinity norm, in ``[0, 1)``, defaults to ``0.999``.
        epsilon: non-negative float added to ``u``, defaults to ``1e-7``.
        lr: Keras 2 alias of ``learning_rate``.
    """

    def __init__(
        self,
        learning_rate: float | None = None,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
        **kwargs: Any,
    ) -> None:
        super().__init__(learning_rate, kwargs)
        self.beta_1 = _unit("Adamax", "beta_1", beta_1)
        self.beta_2 = _unit("Adamax", "beta_2", beta_2)
        self.epsilon = _non_negative("Adamax", "epsilon", epsilon)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "beta_1": self.beta_1,
            "beta_2": self.beta_2,
            "epsilon": self.epsilon,
        }

    def _slot_init(self) -> dict[str, float | None]:
        return {"m": 0.0, "u": 0.0}

    def _update(self, engine: Engine, params: Array, grads: Array) -> None:
        engine.adamax_update(
            params,
            grads,
            self._slots["m"],
            self._slots["u"],
            learning_rate=self._learning_rate,
            beta_1=self.beta_1,
            beta_2=self.beta_2,
            epsilon=self.epsilon,
            step=self._iterations,
        )


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

    def _update(self, engine: Engine, params: Array, grads: Array) -> None:
        step = self._iterations
        mu_t, mu_next = self._mu(step), self._mu(step + 1)
        # The product runs over every step taken, so it lives here, not on the engine.
        self._mu_product *= mu_t
        engine.nadam_update(
            params,
            grads,
            self._slots["m"],
            self._slots["v"],
            learning_rate=self._learning_rate,
            beta_1=self.beta_1,
            beta_2=self.beta_2,
            epsilon=self.epsilon,
            step=step,
            mu_t=mu_t,
            mu_next=mu_next,
            mu_product=self._mu_product,
            mu_product_next=self._mu_product * mu_next,
        )


_CLASSES: dict[str, type[Optimizer]] = {
    cls.__name__.lower(): cls for cls in (SGD, Adam, RMSprop, Adagrad, Adamax, Nadam)
}


def _by_name(name: Any) -> type[Optimizer]:
    cls = _CLASSES.get(name.lower()) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"unknown optimizer {name!r}; available: {', '.join(sorted(_CLASSES))}")
    return cls


def get(identifier: Any) -> Optimizer:
    """An optimizer from an instance, a name or a config dict.

    Args:
        identifier: an ``Optimizer`` (returned as is); a name, case-insensitive
            (``"sgd"``, ``"adam"``, ``"rmsprop"``, ``"adagrad"``, ``"adamax"``,
            ``"nadam"``), giving the optimizer with Keras's defaults; or a dict
            ``{"class_name": name, "config": get_config() dict}`` (``"name"`` is
            accepted for ``"class_name"``).

    Returns:
        An ``Optimizer``.

    Raises:
        ValueError: for an unknown name, listing the available ones.
        TypeError: for anything else.
    """
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str):
        # every registered subclass has defaults for all its arguments; the base has none
        return _by_name(identifier)()  # type: ignore[call-arg]
    if isinstance(identifier, Mapping):
        name = identifier.get("class_name", identifier.get("name"))
        if name is None:
            raise ValueError(
                "an optimizer config expected a 'class_name' entry, e.g. "
                f"{{'class_name': 'Adam', 'config': {{'learning_rate': 0.001}}}}, "
                f"received keys {sorted(identifier)}"
            )
        return _by_name(name).from_config(identifier.get("config", {}))
    raise TypeError(
        "expected an optimizer name (e.g. 'adam'), an Optimizer instance or a config dict, "
        f"received {identifier!r}"
    )
