"""Global settings: the current engine, the default float dtype and dtype policy, the
precision of float32 matrix products, CUDA graph replay of training steps, the random
seed.

The engine, floatx, the dtype policy and the random generator are context-local
(``contextvars``): each has a process default, in ``_state``, and a value of the
current context, which each thread and asyncio task has of its own. ``set_*`` at the
top level of the main thread (no event loop running) sets the process default, which
every thread and task sees until it sets its own value; ``set_*`` anywhere else sets
the value of the calling thread or task only. ``use_backend`` changes the engine of the
current context for its block and restores exactly the previous value on exit. The
matmul precision and CUDA graph replay stay process-wide.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
import threading
import warnings
from collections.abc import Iterator
from typing import Any

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
    "cuda_graphs": False,
    "rng": np.random.default_rng(),
}
_UNSET: Any = object()  # a context that has no value of its own: it reads the process default
_LOCAL: dict[str, contextvars.ContextVar[Any]] = {
    key: contextvars.ContextVar(f"dlcore_{key}", default=_UNSET)
    for key in ("engine", "floatx", "dtype_policy", "rng")
}
_ENGINE_LOCK = threading.RLock()  # two threads asking for a new engine make one instance


def _get(key: str) -> Any:
    """The current context's value of setting ``key``, else the process default."""
    value = _LOCAL[key].get()
    return _state[key] if value is _UNSET else value


def _sets_process_defaults() -> bool:
    """Whether ``set_*`` called here sets the process defaults: in the main thread, outside
    any running event loop (where each task has its own context)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    asyncio = sys.modules.get("asyncio")  # no loop can run before asyncio is imported
    if asyncio is None:
        return True
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return True
    return False


def _set(key: str, value: Any) -> None:
    """Set ``key`` where ``_sets_process_defaults`` says, and in the current context when
    that context has a value of its own (inside a ``use_backend`` block)."""
    local = _LOCAL[key]
    if _sets_process_defaults():
        _state[key] = value
        if local.get() is _UNSET:
            return
    local.set(value)


def floatx() -> str:
    """The default float dtype of new models: ``"float32"`` (default) or ``"float64"``."""
    return _get("floatx")


def set_floatx(value: str) -> None:
    """Set the float dtype used by models built from now on (``"float32"`` or ``"float64"``)."""
    if value not in _FLOATX:
        raise ValueError(f"floatx must be one of {', '.join(_FLOATX)}; received {value!r}")
    _set("floatx", value)


def dtype_policy_name() -> str:
    """The name of the global dtype policy (``dlcore.mixed_precision``): the one last set,
    else ``floatx()``."""
    return _get("dtype_policy") or _get("floatx")


def set_dtype_policy_name(name: str | None) -> None:
    """Set the global policy by name (checked by ``mixed_precision.set_global_policy``);
    ``None`` makes it follow ``floatx()`` again."""
    _set("dtype_policy", name)


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


GRAPHS_UNVERIFIED = (
    "CUDA graph replay of the training step has not been run on a GPU yet: it is tested "
    "only with a stand-in for the driver's capture in Numba's CUDA simulator. Compare a "
    "fit's history with set_cuda_graphs(False) before relying on it (tools/gpu_probe.py "
    "graphs does that and times both)."
)


def cuda_graphs() -> bool:
    """Whether ``fit`` replays training steps as CUDA graphs where the engine can capture
    them (``set_cuda_graphs``); ``False`` by default."""
    return _state["cuda_graphs"]


def set_cuda_graphs(enabled: bool) -> None:
    """Replay each training step of ``fit`` as a CUDA graph (``True``) or launch its kernels
    one by one (``False``, the default).

    With it on, an engine that can capture a step (the numba engine on a GPU) captures
    one step per batch shape after two warm-up steps, then replays the forward pass,
    losses, metrics and backward pass with one launch per step; the optimizer's update
    is launched after it as usual. Models compiled with a ``LossScaleOptimizer`` and
    engines that cannot capture run plainly. Host numbers a step reads (a dropout rate, a
    loss weight) are frozen at the capture, as the plan of a fit is. Off by default until
    a GPU run has shown it correct and faster; turning it on warns so.

    Raises:
        TypeError: ``enabled`` is not a bool.
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"set_cuda_graphs expects True or False, received {enabled!r}")
    if enabled:
        warnings.warn(GRAPHS_UNVERIFIED, UserWarning, stacklevel=2)
    _state["cuda_graphs"] = enabled


def epsilon() -> float:
    """The fuzz factor of the losses (Keras's ``1e-7``)."""
    return backends.names.EPSILON


def _check_engine_name(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"engine name must be a string, received {name!r}")
    backends.engine_class(name)  # raises ValueError listing the registered engines
    return name


def _engine_named(name: str) -> Engine:
    """The shared instance of engine ``name``, made once even when threads ask at once."""
    with _ENGINE_LOCK:
        return backends.get(_check_engine_name(name))


def _default_engine() -> Engine:
    """The process default engine, read from ``DLCORE_BACKEND`` (default ``numpy``) at the
    first call that needs it."""
    with _ENGINE_LOCK:
        if _state["engine"] is None:
            name = os.environ.get("DLCORE_BACKEND", "numpy") or "numpy"
            try:
                _state["engine"] = _engine_named(name)
            except (ValueError, RuntimeError) as error:
                raise type(error)(f"DLCORE_BACKEND={name!r}: {error}") from None
        return _state["engine"]


def get_backend() -> Engine:
    """The current engine: the one this thread or task chose (``use_backend``,
    ``set_backend``), else the process default. The first call reads ``DLCORE_BACKEND``
    (default ``numpy``)."""
    engine = _get("engine")
    return _default_engine() if engine is None else engine


def backend() -> str:
    """The name of the current engine."""
    return get_backend().name


def set_backend(name: str) -> None:
    """Make ``name`` the engine of models built from now on: the process default when
    called at the top level of the main thread, else the calling thread's or task's own.

    Raises:
        ValueError: unknown engine name (the message lists them).
        RuntimeError: the engine cannot run here (the message says why and
            what to install).
    """
    _set("engine", _engine_named(name))


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[Engine]:
    """Context manager: models built inside the block use engine ``name``. Only the
    current thread or asyncio task sees the change; on exit its previous engine is back."""
    engine = _engine_named(name)
    token = _LOCAL["engine"].set(engine)
    try:
        yield engine
    finally:
        _LOCAL["engine"].reset(token)


def set_random_seed(seed: int) -> None:
    """Seed every random choice dlcore makes: weight initialisation, shuffling, dropout.

    The same seed gives the same initial weights, batches and dropout masks on
    every engine, so a run can be repeated exactly. Called at the top level of the main
    thread it seeds the process generator, which threads and tasks that have not seeded
    their own share; called elsewhere it gives the calling thread or task a generator of
    its own.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, received {seed!r}")
    _set("rng", np.random.default_rng(int(seed)))


def rng() -> np.random.Generator:
    """The host random generator of the current thread or task (``set_random_seed``),
    else the process one."""
    return _get("rng")
