"""The optimizer base class: learning rate, step count, state slots, argument checks.

An optimizer updates one flat parameter buffer of shape ``(P,)`` from one flat
gradient buffer of the same shape, both owned by the model on its engine. The
optimizer owns its state slots (flat ``(P,)`` engine arrays of the model's float
dtype) and a few host scalars (the step count, Nadam's momentum product). A step
computes the rule's numbers on the host (bias corrections, schedules) and hands
them to one engine call, ``Engine.optimizer_step``, over the whole buffer whatever
the number of layers, or one call per range of the buffer when only some layers train.

Every optimizer also takes Keras 3's common options: a learning rate schedule in
place of the number (``schedules.py``, evaluated on the host at the step count
before each step), ``weight_decay`` (decoupled: ``w -= w * weight_decay * lr``
before the update), one of ``clipnorm`` (each weight's gradient clipped to that
norm), ``global_clipnorm`` (all trained gradients together) and ``clipvalue``, and
an exponential moving average of the weights (``use_ema``), which replaces them
at the end of ``fit`` and every ``ema_overwrite_frequency`` steps. Clipping and
weight decay are one engine pass (``Engine.clip_and_decay``) before the rule's,
the norms one reduction per range (``Engine.gradient_norm_scale``) that leaves its
factor on the engine: no number comes back to the host.
"""

from __future__ import annotations

import abc
import inspect
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import numpy as np

from . import schedules as schedules_module

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


def _momentum_in(owner: str, name: str, value: Any) -> float:
    return _number(owner, name, value, lambda x: 0 <= x <= 1, "a number in [0, 1]")


def _optional_number(owner: str, name: str, value: Any) -> float | None:
    """``None``, or a non-negative number (0 turns clipping off, as in Keras)."""
    if value is None:
        return None
    return _non_negative(owner, name, value)


#: The options every optimizer takes besides its own arguments, with their defaults
#: (Keras 3's ``BaseOptimizer``); ``get_config`` writes those that differ.
COMMON_OPTIONS: dict[str, Any] = {
    "weight_decay": None,
    "clipnorm": None,
    "clipvalue": None,
    "global_clipnorm": None,
    "use_ema": False,
    "ema_momentum": 0.99,
    "ema_overwrite_frequency": None,
}

#: the state slot holding the moving average of the weights (``use_ema``)
AVERAGE_SLOT = "average"


#: the most steps a state can count: ``get_state`` writes ``iterations`` as an int64
_MAX_STEPS = 2**63 - 1


def _is_index(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


class EpochSteps(NamedTuple):
    """An optimizer's part of steps run in one engine call (``Optimizer.epoch_steps``)."""

    rule: str
    slots: tuple[Array | None, ...]
    hyperparameters: list[dict[str, float]]
    #: advances the optimizer's host state past the steps, once they have run
    commit: Callable[[], None]


class Optimizer(abc.ABC):
    """Base class of the optimizers: learning rate, step count, state slots.

    A subclass names its engine rule in ``rule`` (one of
    ``dlcore.backends.names.OPTIMIZER_RULES``), declares the rule's slots in order in
    ``_slot_init`` and computes each step's numbers in ``_step_hyperparameters``;
    this class allocates, saves, restores and moves the slots and runs the steps.

    Args:
        learning_rate: a positive number; ``None`` means the subclass default.
        kwargs: only ``lr``, the Keras 2 alias of ``learning_rate``.
    """

    default_learning_rate: float = 0.001
    #: the name of the update rule ``Engine.optimizer_step`` runs
    rule: ClassVar[str]
    #: the slots that can never hold a negative number (second moments, accumulators):
    #: ``set_state`` refuses a state where they do
    non_negative_slots: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, learning_rate: Any, kwargs: dict[str, Any]) -> None:
        owner = type(self).__name__
        lr = kwargs.pop("lr", None)
        kwargs.pop("name", None)  # Keras's name of the instance: the config names the class
        options = {key: kwargs.pop(key) for key in list(kwargs) if key in COMMON_OPTIONS}
        if kwargs:
            raise TypeError(
                f"{owner} got unexpected keyword argument(s) {', '.join(map(repr, kwargs))}; "
                f"valid arguments: {', '.join(self._argument_names())} "
                "(and lr, the Keras 2 alias of learning_rate); every optimizer also takes "
                f"{', '.join(COMMON_OPTIONS)}"
            )
        if lr is not None and learning_rate is not None:
            raise ValueError(
                f"{owner} expected one of learning_rate and its Keras 2 alias lr, "
                f"received both: learning_rate={learning_rate!r}, lr={lr!r}"
            )
        if learning_rate is None:
            learning_rate = self.default_learning_rate if lr is None else lr
        self._schedule: schedules_module.LearningRateSchedule | None = None
        self._learning_rate = 0.0
        self._set_learning_rate(learning_rate)
        self._set_options(**{**COMMON_OPTIONS, **options})
        self._iterations = 0
        self._set_slots({})
        self._engine: Engine | None = None
        self._size: int | None = None
        self._dtype: str | None = None
        # engine scratch of the clipped gradients and the clipping factors, made at the
        # first step that needs them: {name: (engine, array)}
        self._buffers: dict[str, tuple[Engine, Array]] = {}
        # the ranges the last step updated, which finalize_variable_values overwrites
        self._last_ranges: list[tuple[int, int]] = []

    def _set_learning_rate(self, value: Any) -> None:
        owner = type(self).__name__
        if isinstance(value, Mapping):  # a schedule as optimizer configs write it
            value = schedules_module.deserialize(value)
        if isinstance(value, schedules_module.LearningRateSchedule):
            self._schedule = value
            self._learning_rate = value(0)
            return
        if callable(value):
            raise TypeError(
                f"{owner} expected learning_rate to be a positive number or a "
                "dlcore.optimizers.schedules.LearningRateSchedule, received the callable "
                f"{value!r}; subclass LearningRateSchedule to write your own"
            )
        self._learning_rate = _learning_rate(owner, value)

    def _set_options(
        self,
        weight_decay: Any,
        clipnorm: Any,
        clipvalue: Any,
        global_clipnorm: Any,
        use_ema: Any,
        ema_momentum: Any,
        ema_overwrite_frequency: Any,
    ) -> None:
        """Check and keep the common options (``COMMON_OPTIONS``)."""
        owner = type(self).__name__
        self.weight_decay = _optional_number(owner, "weight_decay", weight_decay)
        self.clipnorm = _optional_number(owner, "clipnorm", clipnorm)
        self.clipvalue = _optional_number(owner, "clipvalue", clipvalue)
        self.global_clipnorm = _optional_number(owner, "global_clipnorm", global_clipnorm)
        given = [
            f"{name}={value!r}"
            for name, value in (
                ("clipnorm", clipnorm),
                ("clipvalue", clipvalue),
                ("global_clipnorm", global_clipnorm),
            )
            if value is not None
        ]
        if len(given) > 1:
            raise ValueError(
                f"{owner} expected at most one of clipnorm, clipvalue and global_clipnorm, "
                f"received {', '.join(given)}; keep one of them"
            )
        self.use_ema = _flag(owner, "use_ema", use_ema)
        self.ema_momentum = _momentum_in(owner, "ema_momentum", ema_momentum)
        if ema_overwrite_frequency is not None and (
            not _is_index(ema_overwrite_frequency) or ema_overwrite_frequency < 1
        ):
            raise ValueError(
                f"{owner} expected ema_overwrite_frequency to be None or an integer >= 1, "
                f"received ema_overwrite_frequency={ema_overwrite_frequency!r}"
            )
        self.ema_overwrite_frequency = (
            None if ema_overwrite_frequency is None else int(ema_overwrite_frequency)
        )

    def _options(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in COMMON_OPTIONS}

    @classmethod
    def _argument_names(cls) -> list[str]:
        parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
        return [p.name for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD]

    # ------------------------------------------------------------------ hyperparameters
    @property
    def learning_rate(self) -> float:
        """The learning rate of the next step, a float: the schedule's value at
        ``iterations`` when made with a schedule. Settable (e.g. by a callback) to a
        positive number or a schedule, except on an optimizer made with a schedule."""
        if self._schedule is not None:
            return self._schedule(self._iterations)
        return self._learning_rate

    @learning_rate.setter
    def learning_rate(self, value: Any) -> None:
        if self._schedule is not None and not isinstance(
            value, (schedules_module.LearningRateSchedule, Mapping)
        ):
            raise TypeError(
                f"{type(self).__name__} was made with a LearningRateSchedule as its "
                "learning_rate, so its learning rate cannot be set to a number; make the "
                "optimizer with a float learning_rate to change it during training"
            )
        self._set_learning_rate(value)

    @property
    def schedule(self) -> schedules_module.LearningRateSchedule | None:
        """The learning rate schedule, or ``None`` for a constant learning rate."""
        return self._schedule

    @property
    def iterations(self) -> int:
        """The number of steps applied so far."""
        return self._iterations

    @property
    def built(self) -> bool:
        """Whether the state slots exist (after ``build`` or ``set_state``)."""
        return self._size is not None

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments as a JSON-serialisable dict, with ``"name"``: the
        learning rate (a schedule as ``schedules.serialize`` writes it), the optimizer's
        own arguments and those common options that differ from their defaults."""
        learning_rate: Any = (
            self._learning_rate
            if self._schedule is None
            else schedules_module.serialize(self._schedule)
        )
        options = {
            name: value for name, value in self._options().items() if value != COMMON_OPTIONS[name]
        }
        return {"name": type(self).__name__, "learning_rate": learning_rate, **options}

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

    # ------------------------------------------------------------------ the subclass's part
    @abc.abstractmethod
    def _slot_init(self) -> dict[str, float | None]:
        """The rule's slots in its order: each one's initial value, or ``None`` for a
        slot not in use."""

    @abc.abstractmethod
    def _step_hyperparameters(self) -> dict[str, float]:
        """The numbers of the rule for step ``self.iterations`` (counting from 1), by the
        names the rule reads; called once per step, so it may advance host state."""

    def _host_state(self) -> dict[str, float]:
        """Host scalars saved with the state besides ``iterations``."""
        return {}

    def _set_host_state(self, values: dict[str, float]) -> None:
        """Restore the scalars returned by ``_host_state`` (none by default)."""
        return None

    # ------------------------------------------------------------------ state
    def _all_slot_init(self) -> dict[str, float | None]:
        """The rule's slots, then the moving average of the weights when ``use_ema``."""
        slots = dict(self._slot_init())
        if self.use_ema:
            slots[AVERAGE_SLOT] = 0.0
        return slots

    #: whether the rule itself applies ``weight_decay`` (a ``decay`` hyperparameter that
    #: ``_step_hyperparameters`` gives)
    fused_weight_decay: ClassVar[bool] = False

    def _set_slots(self, slots: dict[str, Array | None]) -> None:
        self._slots = slots
        # what each step passes to the engine, in the rule's order
        self._slot_values: tuple[Array | None, ...] = tuple(
            value for name, value in slots.items() if name != AVERAGE_SLOT
        )

    def _slot_engine(self) -> Engine:
        """The engine holding the slots; set whenever a slot exists."""
        if self._engine is None:
            raise AttributeError(f"{type(self).__name__} has no state slots on an engine yet")
        return self._engine

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
        for name, initial in self._all_slot_init().items():
            if initial is None:
                slots[name] = None
            elif initial == 0.0:
                slots[name] = engine.zeros((size,), dtype=dtype)
            else:
                slots[name] = engine.asarray(np.full((size,), initial, dtype=dtype), dtype=dtype)
        self._set_slots(slots)
        self._engine, self._size, self._dtype = engine, size, dtype

    def apply(
        self,
        engine: Engine,
        params: Array,
        grads: Array,
        segments: Sequence[tuple[int, int]] | None = None,
        variables: Sequence[tuple[int, int]] | None = None,
    ) -> None:
        """One step: update ``params`` in place from ``grads``.

        Args:
            engine: the engine of the buffers (the one given to ``build``).
            params: float ``(P,)`` engine array, updated in place.
            grads: float ``(P,)`` engine array of the same dtype, left unchanged.
            segments: half-open ranges ``(start, stop)`` of the buffers to update, in
                increasing order and not overlapping (a model passes those of its
                trainable layers); the parameters and state outside them stay
                unchanged. ``None``, the default, updates the whole buffer.
            variables: the ranges of the individual weights inside the updated ranges,
                in increasing order, covering them exactly (a model passes each trained
                kernel's and bias's); ``clipnorm`` clips each one's gradient. ``None``:
                each updated range is one weight.

        The step count advances by one per call, whatever the segments.

        Raises:
            RuntimeError: before ``build``.
            ValueError: for segments out of ``[0, P]``, reversed or overlapping, or
                variables that do not cover them.
        """
        if self._size is None:
            raise RuntimeError(
                f"{type(self).__name__}.apply called before build(engine, size, dtype)"
            )
        if self._schedule is not None:
            # Keras evaluates the schedule at the step count before the step
            self._learning_rate = self._schedule(self._iterations)
        decay = self._decay()
        plain = not (decay or self.use_ema or self._clipping())
        if segments is None and plain:  # the common case, kept short
            self._iterations += 1
            hyperparameters = self._step_hyperparameters()
            engine.optimizer_step(self.rule, params, grads, self._slot_values, hyperparameters)
            self._last_ranges = [(0, self._size)]
            return
        ranges = [(0, self._size)] if segments is None else self._ranges(segments)
        if not plain:
            grads = self._prepared_gradients(engine, params, grads, ranges, variables, decay)
        first = self._iterations == 0
        self._iterations += 1
        hyperparameters = self._step_hyperparameters()
        for start, stop in ranges:
            engine.optimizer_step(
                self.rule,
                engine.slice_rows(params, start, stop),
                engine.slice_rows(grads, start, stop),
                [
                    None if slot is None else engine.slice_rows(slot, start, stop)
                    for slot in self._slot_values
                ],
                hyperparameters,
            )
        self._last_ranges = ranges
        if self.use_ema:
            self._update_average(engine, params, ranges, first)

    def epoch_steps(self, steps: int) -> EpochSteps | None:
        """What ``steps`` calls of ``apply`` over the whole buffer would hand the engine, for
        an engine that runs them in one call (``Engine.dense_stack_epoch``); ``None`` when
        a step needs more than the rule's update (clipping, weight decay outside the
        rule, a moving average, a subclass's own ``apply`` such as loss scaling).

        Nothing changes until the caller runs the steps and calls ``commit()``: the step
        count, the learning rate of a schedule and the host scalars then advance as
        ``steps`` calls of ``apply`` would have advanced them.
        """
        if type(self).apply is not Optimizer.apply or self._size is None or steps < 1:
            return None
        if self.use_ema or self._clipping():
            return None
        if not self.fused_weight_decay and self.weight_decay:
            return None
        before = (self._iterations, self._learning_rate, self._host_state())
        hyperparameters = []
        for _ in range(steps):  # as apply does per step
            if self._schedule is not None:
                self._learning_rate = self._schedule(self._iterations)
            self._iterations += 1
            hyperparameters.append(self._step_hyperparameters())
        after = (self._iterations, self._learning_rate, self._host_state())
        self._iterations, self._learning_rate = before[0], before[1]
        self._set_host_state(before[2])

        def commit() -> None:
            self._iterations, self._learning_rate = after[0], after[1]
            self._set_host_state(after[2])
            self._last_ranges = [(0, int(self._size))]  # type: ignore[arg-type]

        return EpochSteps(self.rule, self._slot_values, hyperparameters, commit)

    # ------------------------------------------------------------------ clipping, decay, EMA
    def _decay(self) -> float:
        """The factor of this step's decoupled weight decay applied before the rule
        (``weight_decay * learning_rate``); 0 when the rule applies it itself."""
        if self.fused_weight_decay or not self.weight_decay:
            return 0.0
        return self.weight_decay * self._learning_rate

    def _clipping(self) -> tuple[str, float] | None:
        """The gradient clipping in force, ``("clipnorm" | "global_clipnorm" | "clipvalue",
        bound)``, or ``None`` (a bound of 0 clips nothing, as in Keras)."""
        for name in ("clipnorm", "global_clipnorm", "clipvalue"):
            bound = getattr(self, name)
            if bound:
                return name, bound
        return None

    def _buffer(self, engine: Engine, name: str, size: int) -> Array:
        """The engine scratch ``name`` of ``size`` elements, made once per engine."""
        held = self._buffers.get(name)
        if held is None or held[0] is not engine or int(held[1].shape[0]) != size:
            held = (engine, engine.zeros((size,), dtype=self._dtype))
            self._buffers[name] = held
        return held[1]

    def _variable_ranges(
        self, variables: Sequence[tuple[int, int]] | None, ranges: list[tuple[int, int]]
    ) -> list[tuple[int, int]]:
        """``variables`` checked against the updated ``ranges`` (or the ranges themselves)."""
        if variables is None:
            return ranges
        checked: list[tuple[int, int]] | None = []
        end = 0
        for variable in variables:
            if not (
                isinstance(variable, (tuple, list))
                and len(variable) == 2
                and _is_index(variable[0])
                and _is_index(variable[1])
                and end <= variable[0] <= variable[1]
            ):
                checked = None
                break
            end = int(variable[1])
            if variable[1] > variable[0]:
                checked.append((int(variable[0]), int(variable[1])))  # type: ignore[union-attr]
        inside = checked is not None and all(
            any(a <= start and stop <= b for a, b in ranges) for start, stop in checked
        )
        covered = checked is not None and sum(b - a for a, b in checked) == sum(
            b - a for a, b in ranges
        )
        if not (inside and covered):
            raise ValueError(
                f"{type(self).__name__}.apply expected variables to be (start, stop) ranges "
                f"in increasing order that cover the updated ranges {ranges} exactly, "
                f"received variables={list(variables)!r}"
            )
        return checked  # type: ignore[return-value]

    def _prepared_gradients(
        self,
        engine: Engine,
        params: Array,
        grads: Array,
        ranges: list[tuple[int, int]],
        variables: Sequence[tuple[int, int]] | None,
        decay: float,
    ) -> Array:
        """Apply this step's weight decay to ``params`` and return the clipped gradients
        (``grads`` itself when nothing clips), one engine pass per range."""
        clipping = self._clipping()
        if clipping is None:
            if decay:
                for start, stop in ranges:
                    engine.clip_and_decay(
                        engine.slice_rows(params, start, stop),
                        engine.slice_rows(grads, start, stop),
                        None,
                        decay=decay,
                    )
            return grads
        kind, bound = clipping
        size = int(self._size)  # type: ignore[arg-type]
        clipped = self._buffer(engine, "clipped_gradients", size)
        passes: list[tuple[int, int, Array | None]]
        if kind == "clipnorm":
            pieces = self._variable_ranges(variables, ranges)
            scales = self._buffer(engine, "clip_scales", max(len(pieces), 1))
            engine.gradient_norm_scale(grads, pieces, bound, scales, each=True)
            passes = [
                (start, stop, engine.slice_rows(scales, k, k + 1))
                for k, (start, stop) in enumerate(pieces)
            ]
        elif kind == "global_clipnorm":
            scales = self._buffer(engine, "clip_scales", 1)
            engine.gradient_norm_scale(grads, ranges, bound, scales, each=False)
            passes = [(start, stop, scales) for start, stop in ranges]
        else:
            passes = [(start, stop, None) for start, stop in ranges]
        clipvalue = bound if kind == "clipvalue" else None
        for start, stop, scale in passes:
            engine.clip_and_decay(
                engine.slice_rows(params, start, stop),
                engine.slice_rows(grads, start, stop),
                engine.slice_rows(clipped, start, stop),
                scale=scale,
                clipvalue=clipvalue,
                decay=decay,
            )
        return clipped

    def _update_average(
        self, engine: Engine, params: Array, ranges: list[tuple[int, int]], first: bool
    ) -> None:
        """Move the average toward the updated weights (it starts at them, as Keras's
        momentum is 0 at the first step), and overwrite the weights with it every
        ``ema_overwrite_frequency`` steps."""
        average = self._slots[AVERAGE_SLOT]
        for start, stop in ranges:
            target = engine.slice_rows(average, start, stop)
            values = engine.slice_rows(params, start, stop)
            if first:
                engine.assign(target, values)
            else:
                engine.moving_average(target, values, self.ema_momentum)
        frequency = self.ema_overwrite_frequency
        if frequency and self._iterations % frequency == 0:
            self._overwrite_with_average(engine, params, ranges)

    def _overwrite_with_average(
        self, engine: Engine, params: Array, ranges: list[tuple[int, int]]
    ) -> None:
        average = self._slots[AVERAGE_SLOT]
        for start, stop in ranges:
            engine.assign(
                engine.slice_rows(params, start, stop), engine.slice_rows(average, start, stop)
            )

    def finalize_variable_values(self, engine: Engine, params: Array) -> None:
        """At the end of training: with ``use_ema``, replace the weights the last step
        updated by their moving averages (Keras's ``finalize_variable_values``); nothing
        otherwise, or before the first step.

        Args:
            engine: the engine of the buffers.
            params: the float ``(P,)`` parameter buffer ``apply`` updated.
        """
        if self.use_ema and self.built and self._iterations > 0 and self._last_ranges:
            self._overwrite_with_average(engine, params, self._last_ranges)

    def _ranges(self, segments: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
        """``segments`` checked, the empty ones dropped and the adjacent ones joined (one
        engine call each)."""
        ranges: list[tuple[int, int]] = []
        end = 0
        for segment in segments:
            if not (
                isinstance(segment, (tuple, list))
                and len(segment) == 2
                and _is_index(segment[0])
                and _is_index(segment[1])
                and end <= segment[0] <= segment[1] <= self._size  # type: ignore[operator]
            ):
                raise ValueError(
                    f"{type(self).__name__}.apply expected segments to be (start, stop) "
                    f"ranges with 0 <= start <= stop <= {self._size}, in increasing order "
                    f"and not overlapping, received segments={list(segments)!r}"
                )
            start, stop = int(segment[0]), int(segment[1])
            end = stop
            if start == stop:
                continue
            if ranges and ranges[-1][1] == start:
                ranges[-1] = (ranges[-1][0], stop)
            else:
                ranges.append((start, stop))
        return ranges

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

    def _slots_in_use(self) -> list[str]:
        return [name for name, initial in self._all_slot_init().items() if initial is not None]

    def state_shapes(self, size: int) -> dict[str, tuple[int, ...]]:
        """The shape of each entry ``get_state`` returns for ``size`` parameters, with this
        configuration: ``()`` for ``iterations`` and the host scalars, ``(size,)`` for
        each slot in use. A file's state is checked against it before it is read."""
        shapes: dict[str, tuple[int, ...]] = {"iterations": ()}
        shapes.update({name: () for name in self._host_state()})
        shapes.update({name: (size,) for name in self._slots_in_use()})
        return shapes

    def _checked_slot(self, name: str, array: np.ndarray) -> np.ndarray:
        """``array`` if it can be the slot ``name``: real floats, finite, and non-negative
        where the rule keeps it so."""
        owner = type(self).__name__
        if array.dtype.kind != "f" or array.dtype.fields is not None:
            raise ValueError(
                f"{owner} state slot {name!r} expected an array of floats, "
                f"received dtype {array.dtype}"
            )
        if array.size and not (np.isfinite(array.min()) and np.isfinite(array.max())):
            raise ValueError(
                f"{owner} state slot {name!r} expected finite numbers, received NaN or infinity"
            )
        if name in self.non_negative_slots and array.size and array.min() < 0:
            raise ValueError(
                f"{owner} state slot {name!r} expected non-negative numbers, received "
                f"{float(array.min())!r}"
            )
        return array

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
                first slot's size), or a slot is not finite floats or breaks its
                rule's bounds (a negative second moment). Nothing is changed then.
        """
        owner = type(self).__name__
        if not isinstance(state, Mapping):
            raise ValueError(f"{owner} expected a state dict, received {type(state).__name__}")
        used = self._slots_in_use()
        expected = list(self.state_shapes(0))
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
        if (
            iterations.shape != ()
            or iterations.dtype.kind not in "iu"
            or not 0 <= int(iterations) <= _MAX_STEPS
        ):
            raise ValueError(
                f"{owner} state expected iterations to be a non-negative integer (an int64), "
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
            arrays[name] = self._checked_slot(name, array)
        self._iterations = int(iterations)
        self._set_host_state(host)
        if size is None:
            return  # no slot in use and not built: build() will allocate nothing
        self._set_slots(
            {
                # a private copy: the steps run in place and must not write into the
                # caller's arrays
                name: (engine.asarray(arrays[name].copy(), dtype=dtype) if name in arrays else None)
                for name in self._all_slot_init()
            }
        )
        self._engine, self._size, self._dtype = engine, size, dtype

    def to_engine(self, engine: Engine) -> None:
        """Move the state slots to ``engine`` (used when the model changes engine)."""
        if self.built and engine is not self._engine:
            self._set_slots(
                {
                    name: None
                    if slot is None
                    else engine.asarray(self._slot_engine().to_numpy(slot), dtype=self._dtype)
                    for name, slot in self._slots.items()
                }
            )
        self._engine = engine
        self._buffers = {}
