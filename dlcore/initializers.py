"""Weight initializers with Keras 3 names, defaults and formulas, computed on the host.

Every initializer is called as ``init(shape, dtype="float32", rng=None)`` and
returns a host ``numpy.ndarray`` of that shape and dtype; the model then copies
it to the engine, so one seed gives the same initial weights on every engine.

Where random numbers come from:

* ``seed=<int>``: a fresh ``numpy.random.Generator(PCG64(seed))`` on every
  call, so the initializer returns the same values each time it is called with
  the same shape (as Keras 3 integer seeds do). Two layers sharing one seeded
  initializer instance therefore get identical weights when their shapes match.
* ``seed=None``: the ``rng`` Generator passed by the model (derived from
  dlcore's global seed), or ``numpy.random.default_rng()`` when ``rng`` is None.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

# Keras's truncated normal keeps draws within two standard deviations; the
# standard deviation of a unit normal truncated to [-2, 2] is this number, so
# dividing by it makes the *truncated* distribution have the requested variance.
TRUNCATED_NORMAL_STDDEV_CORRECTION = 0.87962566103423978


def _check_shape(shape: Any) -> tuple[int, ...]:
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        shape = (shape,)
    try:
        dims = tuple(shape)
    except TypeError:
        raise ValueError(
            f"expected shape to be a tuple of non-negative ints, received shape={shape!r}"
        ) from None
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 0:
            raise ValueError(
                f"expected shape to be a tuple of non-negative ints, received shape={shape!r}"
            )
    return tuple(int(d) for d in dims)


def _check_dtype(dtype: Any, *, floating: bool) -> np.dtype:
    if dtype is None:  # Keras's "use floatx"; dlcore's default float is float32
        dtype = "float32"
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise ValueError(
            f"expected a numeric dtype such as 'float32', received dtype={dtype!r}"
        ) from None
    if floating and dt.kind != "f":
        raise ValueError(
            f"random initializers produce floating values; expected a float dtype "
            f"('float32' or 'float64'), received dtype={dtype!r}"
        )
    if dt.kind not in "biuf":
        raise ValueError(f"expected a numeric dtype such as 'float32', received dtype={dtype!r}")
    return dt


def _check_finite(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"expected {name} to be a finite number, received {name}={value!r}")
    return float(value)


def compute_fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """Number of input and output units of a weight of this shape (Keras's rule).

    Args:
        shape: the weight's shape. ``()`` -> ``(1, 1)``; ``(n,)`` -> ``(n, n)``;
            a Dense kernel ``(in, out)`` -> ``(in, out)``; higher ranks are read as
            convolution kernels ``(*receptive_field, in, out)``.

    Returns:
        ``(fan_in, fan_out)`` as Python ints.
    """
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


class Initializer:
    """Base class: a callable that returns a host array of a given shape and dtype."""

    def __call__(
        self,
        shape: tuple[int, ...],
        dtype: str = "float32",
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        """Return initial values.

        Args:
            shape: shape of the weight, e.g. ``(in, out)`` for a Dense kernel.
            dtype: floating dtype of the result, ``"float32"`` (default) or ``"float64"``.
            rng: the Generator to draw from when the initializer has no seed of its own.

        Returns:
            A new ``numpy.ndarray`` of ``shape`` and ``dtype``.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement __call__")

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments as a JSON-serialisable dict."""
        return {}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Initializer:
        """Rebuild an initializer from the dict returned by ``get_config``."""
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class Zeros(Initializer):
    """All zeros."""

    def __call__(
        self,
        shape: tuple[int, ...],
        dtype: str = "float32",
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        """Return ``numpy.zeros(shape, dtype)``; ``rng`` is unused."""
        return np.zeros(_check_shape(shape), dtype=_check_dtype(dtype, floating=False))


class Ones(Initializer):
    """All ones."""

    def __call__(
        self,
        shape: tuple[int, ...],
        dtype: str = "float32",
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        """Return ``numpy.ones(shape, dtype)``; ``rng`` is unused."""
        return np.ones(_check_shape(shape), dtype=_check_dtype(dtype, floating=False))


class Constant(Initializer):
    """Every element equal to one scalar.

    Args:
        value: a finite Python scalar.
    """

    def __init__(self, value: float = 0.0) -> None:
        self.value = _check_finite(value, "value")

    def __call__(
        self,
        shape: tuple[int, ...],
        dtype: str = "float32",
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        """Return an array of ``shape`` and ``dtype`` filled with ``value``; ``rng`` is unused."""
        return np.full(_check_shape(shape), self.value, dtype=_check_dtype(dtype, floating=False))

    def get_config(self) -> dict[str, Any]:
        return {"value": self.value}


class RandomInitializer(Initializer):
    """Base of the random initializers: owns the ``seed`` and picks the Generator.

    Args:
        seed: ``None`` (draw from the ``rng`` passed by the model) or a non-negative
            int (draw from a fresh Generator seeded with it on every call).
    """

    def __init__(self, seed: int | None = None) -> None:
        if seed is not None and (
            isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0
        ):
            raise ValueError(
                f"expected seed to be None or a non-negative int, received seed={seed!r}"
            )
        self.seed = None if seed is None else int(seed)

    def _generator(self, rng: np.random.Generator | None) -> np.random.Generator:
        if self.seed is not None:
            return np.random.default_rng(self.seed)
        if rng is not None:
            if not isinstance(rng, np.random.Generator):
                raise ValueError(
                    f"expected rng to be a numpy.random.Generator or None, "
                    f"received {type(rng).__name__}"
                )
            return rng
        return np.random.default_rng()

    def get_config(self) -> dict[str, Any]:
        return {"seed": self.seed}


def _truncated_standard_normal(gen: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Unit normal draws restricted to [-2, 2] by redrawing the ones outside (float64)."""
    z = gen.standard_normal(shape)
    outside = np.abs(z) > 2.0
    while outside.any():
        z[outside] = gen.standard_normal(int(outside.sum()))
        outside = np.abs(z) > 2.0
    return z


class RandomNormal(RandomInitializer):
    """Draws from a normal distribution ``N(mean, stddev**2)``.

    Args:
        mean: mean of the values.
        stddev: standard deviation, ``>= 0``.
        seed: see ``RandomInitializer``.
    """

    def __init__(self, mean: float = 0.0, stddev: float = 0.05, seed: int | None = None) -> None:
        self.mean = _check_finite(mean, "mean")
        self.stddev = _check_finite(stddev, "stddev")
        if self.stddev < 0:
            raise ValueError(f"expected stddev >= 0, received stddev={stddev!r}")
        super().__init__(seed)

    def __call__(
        self,
        shape: tuple[int, ...],
        dtype: str = "float32",
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        """Return normal draws of ``shape`` and float ``dtype``."""
        shape, dt = _check_shape(shape), _check_dtype(dtype, floating=True)
        gen = self._generator(rng)
        return (self.mean + self.stddev * gen.standard_normal(shape)).astype(dt)

    def get_config(self) -> dict[str, Any]:
        return {"mean": self.mean, "stddev": self.stddev, **super().get_config()}


class TruncatedNormal(RandomInitializer):
    """Normal draws within two standard deviations of the mean (others are redrawn).

    ``stddev`` is that of the normal before truncation, as in Keras.

    Args:
        mean: mean of the values.
        stddev: standard deviation of the untruncated normal, ``>= 0``.
        seed: see ``RandomInitializer``.
    """

    def __init__(self, mean: float = 0.0, stddev: float = 0.05, seed: int | None = None) -> None:
        self.mean = _check_finite(mean, "mean")
        self.stddev = _check_finite(stddev, "stddev")
        if self.stddev < 0:
            raise ValueError(f"expected stddev >= 0, received stddev={stddev!r}")
        super().__init__(seed)

    def __call__(
        self,
        shape: tuple[int, ...],
        dtype: str = "float32",
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        """Return truncated normal draws of ``shape`` and float ``dtype``."""
        shape, dt = _check_shape(shape), _check_dtype(dtype, floating=True)
        z = _truncated_standard_normal(self._generator(rng), shape)
        return (self.mean + self.stddev * z).astype(dt)

    def get_config(self) -> dict[str, Any]:
        return {"mean": self.mean, "stddev": self.stddev, **super().get_config()}


class RandomUniform(RandomInitializer):
    """Draws uniformly from ``[minval, maxval)``.

    Args:
        minval: lower bound (inclusive).
        maxval: upper bound (exclusive), greater than ``minval``.
        seed: see ``RandomInitializer``.
    """

    def __init__(
        self, minval: float = -0.05, maxval: float = 0.05, seed: int | None = None
    ) -> None:
        self.minval = _check_finite(minval, "minval")
        self.maxval = _check_finite(maxval, "maxval")
        if self.minval >= self.maxval:
            raise ValueError(
                f"expected minval < maxval, received minval={minval!r}, maxval={maxval!r}"
            )
        super().__init__(seed)

    def __call__(
        self,
        shape: tuple[int, ...],
        dtype: str = "float32",
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        """Return uniform draws of ``shape`` and float ``dtype``."""
        shape, dt = _check_shape(shape), _check_dtype(dtype, floating=True)
        gen = self._generator(rng)
        return gen.uniform(self.minval, self.maxval, size=shape).astype(dt)

    def get_config(self) -> dict[str, Any]:
        return {"minval": self.minval, "maxval": self.maxval, **super().get_config()}


_MODES = ("fan_in", "fan_out", "fan_avg")
_DISTRIBUTIONS = ("truncated_normal", "untruncated_normal", "uniform")


class VarianceScaling(RandomInitializer):
    """Scale-aware draws: variance ``scale / n`` with ``n`` taken from the weight's fans.

    ``n`` is ``fan_in``, ``fan_out`` or their mean (``mode``), at least 1 (see
    ``compute_fans``). ``"truncated_normal"`` draws a normal truncated at two
    standard deviations with stddev ``sqrt(scale / n) / 0.8796...``, so the
    truncated values have variance ``scale / n``; ``"untruncated_normal"`` uses
    stddev ``sqrt(scale / n)``; ``"uniform"`` draws from ``[-limit, limit)`` with
    ``limit = sqrt(3 * scale / n)``.

    Args:
        scale: positive scaling factor.
        mode: ``"fan_in"``, ``"fan_out"`` or ``"fan_avg"``.
        distribution: ``"truncated_normal"`` (alias ``"normal"``),
            ``"untruncated_normal"`` or ``"uniform"``.
        seed: see ``RandomInitializer``.
    """

    def __init__(
        self,
        scale: float = 1.0,
        mode: str = "fan_in",
        distribution: str = "truncated_normal",
        seed: int | None = None,
    ) -> None:
        scale_f = _check_finite(scale, "scale")
        if scale_f <= 0:
            raise ValueError(f"expected scale > 0, received scale={scale!r}")
        if mode not in _MODES:
            raise ValueError(
                f"expected mode to be one of {', '.join(_MODES)}; received mode={mode!r}"
            )
        dist = distribution.lower() if isinstance(distribution, str) else distribution
        if dist == "normal":
            dist = "truncated_normal"
        if dist not in _DISTRIBUTIONS:
            raise ValueError(
                f"expected distribution to be one of {', '.join(_DISTRIBUTIONS)}; "
                f"received distribution={distribution!r}"
            )
        self.scale = scale_f
        self.mode = mode
        self.distribution = dist
        super().__init__(seed)

    def __call__(
        self,
        shape: tuple[int, ...],
        dtype: str = "float32",
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        """Return draws of ``shape`` and float ``dtype`` with variance ``scale / n``."""
        shape, dt = _check_shape(shape), _check_dtype(dtype, floating=True)
        fan_in, fan_out = compute_fans(shape)
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2.0}[self.mode]
        variance = self.scale / max(1.0, n)
        gen = self._generator(rng)
        if self.distribution == "truncated_normal":
            stddev = math.sqrt(variance) / TRUNCATED_NORMAL_STDDEV_CORRECTION
            values = stddev * _truncated_standard_normal(gen, shape)
        elif self.distribution == "untruncated_normal":
            values = math.sqrt(variance) * gen.standard_normal(shape)
        else:
            limit = math.sqrt(3.0 * variance)
            values = gen.uniform(-limit, limit, size=shape)
        return values.astype(dt)

    def get_config(self) -> dict[str, Any]:
        return {
            "scale": self.scale,
            "mode": self.mode,
            "distribution": self.distribution,
            **super().get_config(),
        }


class _FixedVarianceScaling(VarianceScaling):
    """A VarianceScaling whose scale, mode and distribution are fixed by the subclass."""

    _scale: float
    _mode: str
    _distribution: str

    def __init__(self, seed: int | None = None) -> None:
        super().__init__(self._scale, self._mode, self._distribution, seed)

    def get_config(self) -> dict[str, Any]:
        return {"seed": self.seed}


class GlorotUniform(_FixedVarianceScaling):
    """Uniform on ``[-limit, limit)`` with ``limit = sqrt(6 / (fan_in + fan_out))``.

    Args:
        seed: see ``RandomInitializer``.
    """

    _scale, _mode, _distribution = 1.0, "fan_avg", "uniform"


class GlorotNormal(_FixedVarianceScaling):
    """Truncated normal with variance ``2 / (fan_in + fan_out)`` after truncation.

    Args:
        seed: see ``RandomInitializer``.
    """

    _scale, _mode, _distribution = 1.0, "fan_avg", "truncated_normal"


class HeNormal(_FixedVarianceScaling):
    """Truncated normal with variance ``2 / fan_in`` after truncation.

    Args:
        seed: see ``RandomInitializer``.
    """

    _scale, _mode, _distribution = 2.0, "fan_in", "truncated_normal"


class HeUniform(_FixedVarianceScaling):
    """Uniform on ``[-limit, limit)`` with ``limit = sqrt(6 / fan_in)``.

    Args:
        seed: see ``RandomInitializer``.
    """

    _scale, _mode, _distribution = 2.0, "fan_in", "uniform"


class LecunNormal(_FixedVarianceScaling):
    """Truncated normal with variance ``1 / fan_in`` after truncation.

    Args:
        seed: see ``RandomInitializer``.
    """

    _scale, _mode, _distribution = 1.0, "fan_in", "truncated_normal"


class LecunUniform(_FixedVarianceScaling):
    """Uniform on ``[-limit, limit)`` with ``limit = sqrt(3 / fan_in)``.

    Args:
        seed: see ``RandomInitializer``.
    """

    _scale, _mode, _distribution = 1.0, "fan_in", "uniform"


class Orthogonal(RandomInitializer):
    """A (semi-)orthogonal matrix from the QR decomposition of normal draws, times ``gain``.

    A shape ``(*lead, cols)`` is treated as a matrix with ``rows = prod(lead)``:
    its columns are orthonormal when ``rows >= cols``, its rows otherwise.

    Args:
        gain: multiplicative factor.
        seed: see ``RandomInitializer``.
    """

    def __init__(self, gain: float = 1.0, seed: int | None = None) -> None:
        self.gain = _check_finite(gain, "gain")
        super().__init__(seed)

    def __call__(
        self,
        shape: tuple[int, ...],
        dtype: str = "float32",
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        """Return a (semi-)orthogonal array of ``shape`` (rank >= 2) and float ``dtype``."""
        shape, dt = _check_shape(shape), _check_dtype(dtype, floating=True)
        if len(shape) < 2:
            raise ValueError(
                f"Orthogonal expected a shape of rank >= 2, received shape={shape} "
                f"of rank {len(shape)}; use another initializer for biases"
            )
        rows, cols = math.prod(shape[:-1]), shape[-1]
        a = self._generator(rng).standard_normal((max(rows, cols), min(rows, cols)))
        q, r = np.linalg.qr(a)
        # Multiplying by the signs of diag(r) makes the factorisation unique, so Q is
        # uniformly distributed over orthogonal matrices (Mezzadri 2007).
        q = q * np.sign(np.diag(r))
        if rows < cols:
            q = q.T
        return (self.gain * q).reshape(shape).astype(dt)

    def get_config(self) -> dict[str, Any]:
        return {"gain": self.gain, **super().get_config()}


_CLASSES: dict[str, type[Initializer]] = {
    "zeros": Zeros,
    "ones": Ones,
    "constant": Constant,
    "random_normal": RandomNormal,
    "random_uniform": RandomUniform,
    "truncated_normal": TruncatedNormal,
    "variance_scaling": VarianceScaling,
    "glorot_uniform": GlorotUniform,
    "glorot_normal": GlorotNormal,
    "he_normal": HeNormal,
    "he_uniform": HeUniform,
    "lecun_normal": LecunNormal,
    "lecun_uniform": LecunUniform,
    "orthogonal": Orthogonal,
}
_ALIASES: dict[str, type[Initializer]] = {
    "zero": Zeros,
    "one": Ones,
    "normal": RandomNormal,
    "uniform": RandomUniform,
    **{cls.__name__: cls for cls in _CLASSES.values()},
}


def _lookup(name: str) -> type[Initializer]:
    cls = _CLASSES.get(name) or _ALIASES.get(name)
    if cls is None:
        raise ValueError(f"unknown initializer {name!r}; available: {', '.join(_CLASSES)}")
    return cls


def serialize(initializer: Initializer) -> dict[str, Any]:
    """Return ``{"class_name": ..., "config": ...}`` for an initializer, as Keras does."""
    if not isinstance(initializer, Initializer):
        raise ValueError(f"expected a dlcore initializer, received {type(initializer).__name__}")
    return {"class_name": type(initializer).__name__, "config": initializer.get_config()}


def get(identifier: str | dict[str, Any] | Initializer | type[Initializer]) -> Initializer:
    """Resolve an initializer from a name, a config dict, a class or an instance.

    Args:
        identifier: a Keras name (``"glorot_uniform"``, ``"he_normal"``, ``"zeros"``,
            ... or the class name ``"GlorotUniform"``), a dict
            ``{"class_name": ..., "config": {...}}`` as returned by ``serialize``,
            an ``Initializer`` subclass (instantiated with defaults) or instance
            (returned as is).

    Returns:
        An ``Initializer`` instance.
    """
    if isinstance(identifier, Initializer):
        return identifier
    if isinstance(identifier, type) and issubclass(identifier, Initializer):
        return identifier()
    if isinstance(identifier, str):
        return _lookup(identifier)()
    if isinstance(identifier, dict):
        if "class_name" not in identifier:
            raise ValueError(
                f"expected an initializer config dict with keys 'class_name' and 'config', "
                f"received keys {sorted(identifier)}"
            )
        cls = _lookup(identifier["class_name"])
        config = identifier.get("config") or {}
        try:
            return cls.from_config(config)
        except TypeError as e:
            raise ValueError(f"invalid config for initializer {cls.__name__}: {e}") from None
    raise ValueError(
        f"expected an initializer name (one of {', '.join(_CLASSES)}), a config dict or an "
        f"Initializer instance, received {identifier!r} of type {type(identifier).__name__}"
    )
