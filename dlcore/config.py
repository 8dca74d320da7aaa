"""Global settings: the current engine, the default float dtype and dtype policy, the
precision of float32 matrix products, the random seed."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import numpy as np

from dlcore import backends
from dlcore.backends.base import Engine

_FLOATX = ("float32", "float64")
_MATMUL_PRECISIONS = ("highest", "high")
_state: dict = {
    "engine": None,
    "floatx": "float32",
    "dtype_policy": None,  # a policy name; None follows floatx
    "matmul_precision": "highest",
    "rng": np.random.default_rng(),
}


def floatx() -> str:
    """The default float dtype of new models: ``"float32"`` (default) or ``"float64"``."""
    return _state["floatx"]


def set_floatx(value: str) -> None:
    """Set the float dtype used by models built from now on (``"float32"`` or ``"float64"``)."""
    if value not in _FLOATX:
        raise ValueError(f"floatx must be one of {', '.join(_FLOATX)}; received {value!r}")
    _state["floatx"] = value


def dtype_policy_name() -> str:
    """The name of the global dtype policy (``dlcore.mixed_precision``): the one last set,
    else ``floatx()``."""
    return _state["dtype_policy"] or _state["floatx"]


def set_dtype_policy_name(name: str | None) -> None:
    """Set the global policy by name (checked by ``mixed_precision.set_global_policy``);
    ``None`` makes it follow ``floatx()`` again."""
    _state["dtype_policy"] = name


def set_dtype_policy(policy: object) -> None:
    """Keras 3's ``keras.config.set_dtype_policy``: ``mixed_precision.set_global_policy``."""
    from dlcore import mixed_precision

    mixed_precision.set_global_policy(policy)


def dtype_policy() -> object:
    """Keras 3's ``keras.config.dtype_policy``: the global ``DTypePolicy``."""
    from dlcore import mixed_precision

    return mixed_precision.global_policy()


def matmul_precision() -> str:
    """How float32 matrix products are computed on engines that can choose:
    ``"highest"`` (float32 arithmetic, the default) or ``"high"`` (TF32 tensor cores)."""
    return _state["matmul_precision"]


def set_matmul_precision(precision: str) -> None:
    """Choose the arithmetic of float32 matrix products, as ``torch.set_float32_matmul_precision``.

    ``"highest"`` (default): float32 multiply-adds, the numbers of the numpy engine.
    ``"high"``: TensorFloat-32 on GPUs of compute capability 8.0 or newer, where the
    engine uses cuBLAS (the cupy engine): operands rounded to 10 mantissa bits,
    sums in float32, several times the float32 rate. The numpy engine and the
    numba engine's own kernels always compute in float32; float64 is never affected.
    Engines read the setting when they multiply, so it applies from the next step.

    Raises:
        ValueError: for another value.
    """
    if precision not in _MATMUL_PRECISIONS:
        raise ValueError(
            f"matmul precision must be one of {', '.join(map(repr, _MATMUL_PRECISIONS))}; "
            f"received {precision!r}"
        )
    _state["matmul_precision"] = precision
    backends.set_matmul_precision(precision)


def epsilon() -> float:
    """The fuzz factor of the losses (Keras's ``1e-7``)."""
    return backends.names.EPSILON


def _check_engine_name(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"engine name must be a string, received {name!r}")
    backends.engine_class(name)  # raises ValueError listing the registered engines
    return name


def get_backend() -> Engine:
    """The current engine. The first call reads ``DLCORE_BACKEND`` (default ``numpy``)."""
    if _state["engine"] is None:
        name = os.environ.get("DLCORE_BACKEND", "numpy") or "numpy"
        try:
            _state["engine"] = backends.get(_check_engine_name(name))
        except (ValueError, RuntimeError) as error:
            raise type(error)(f"DLCORE_BACKEND={name!r}: {error}") from None
    return _state["engine"]


def backend() -> str:
    """The name of the current engine."""
    return get_backend().name


def set_backend(name: str) -> None:
    """Make ``name`` the engine of models built from now on.

    Raises:
        ValueError: unknown engine name (the message lists them).
        RuntimeError: the engine cannot run here (the message says why and
            what to install).
    """
    _state["engine"] = backends.get(_check_engine_name(name))


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[Engine]:
    """Context manager: models built inside the block use engine ``name``."""
    engine = backends.get(_check_engine_name(name))
    previous = _state["engine"]
    _state["engine"] = engine
    try:
        yield engine
    finally:
        _state["engine"] = previous


def set_random_seed(seed: int) -> None:
    """Seed every random choice dlcore makes: weight initialisation, shuffling, dropout.

    The same seed gives the same initial weights, batches and dropout masks on
    every engine, so a run can be repeated exactly.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, received {seed!r}")
    _state["rng"] = np.random.default_rng(int(seed))


def rng() -> np.random.Generator:
    """The global host random generator that ``set_random_seed`` resets."""
    return _state["rng"]
