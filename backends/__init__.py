"""Engine registry: engines are found by name and imported only when asked for.

Adding an engine is adding its module to this package and one line to
``_ENGINES``. Nothing here imports CuPy or Numba.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from .base import Engine

# name -> "module:Class", imported lazily by that name
_ENGINES: dict[str, str] = {
    "numpy": "numpy_engine:NumpyEngine",
    "cupy": "cupy_engine:CupyEngine",
    "numba": "numba_engine:NumbaEngine",
    "array_api_strict": "array_api_strict_engine:ArrayAPIStrictEngine",
}

_instances: dict[str, Engine] = {}

# dlcore.config.set_matmul_precision's setting, given to every engine when it is made
_matmul_precision = "highest"


@dataclass(frozen=True)
class EngineInfo:
    """What ``available()`` reports about one engine."""

    name: str
    available: bool
    detail: str  # the device when available, else why not and what to install


def engine_names() -> tuple[str, ...]:
    """Every registered engine name, in registry order."""
    return tuple(_ENGINES)


def engine_class(name: str) -> type[Engine]:
    """The engine class registered as ``name``.

    Raises:
        ValueError: ``name`` is not registered; the message lists the valid names.
    """
    if name not in _ENGINES:
        raise ValueError(f"unknown engine {name!r}; available: {', '.join(_ENGINES)}")
    module_name, class_name = _ENGINES[name].split(":")
    module = importlib.import_module(f"{__name__}.{module_name}")
    return getattr(module, class_name)


def get(name: str) -> Engine:
    """The shared instance of engine ``name``, created on first use.

    Raises:
        ValueError: unknown engine name.
        RuntimeError: the engine cannot run here; the message says why and what to install.
    """
    if name not in _instances:
        cls = engine_class(name)
        ok, detail = cls.availability()
        if not ok:
            raise RuntimeError(f"engine {name!r} cannot run here: {detail}")
        engine = cls()
        engine.set_matmul_precision(_matmul_precision)
        _instances[name] = engine
    return _instances[name]


def set_matmul_precision(precision: str) -> None:
    """Give ``precision`` to the engines made so far and to those made later."""
    global _matmul_precision
    _matmul_precision = precision
    for engine in _instances.values():
        engine.set_matmul_precision(precision)


def available() -> list[EngineInfo]:
    """Every registered engine, whether it can run on this machine, and why not."""
    infos = []
    for name in _ENGINES:
        ok, detail = engine_class(name).availability()
        infos.append(EngineInfo(name, ok, detail))
    return infos


__all__ = [
    "Engine",
    "EngineInfo",
    "available",
    "engine_class",
    "engine_names",
    "get",
    "set_matmul_precision",
]
