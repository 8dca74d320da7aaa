"""Data that already lives on the engine: tensors of other libraries (DLPack,
``__cuda_array_interface__``) and the engine's own arrays, checked where they are.

``fit``, ``evaluate`` and ``predict`` take such data without a copy to the host.
``on_engine`` wraps it when ``Engine.from_external`` can view it; the checks here read
its shape and dtype, and the engine counts the values that fail a check
(``Engine.count_outside``, one number read back per check); the data then trains as it
is, converted on the engine where its dtype is not the model's. Only when a check
fails is the data copied to the host, where the checks of ``dlcore.data_checks`` say
what is wrong and where, in the words they use for host arrays.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from dlcore import data_checks
from dlcore.backends.base import Array, Engine, dtype_name


class EngineData:
    """An array of samples ``(N, ...)`` on the engine, as the checks and ``fit`` see it.

    It has what the training loop reads from a NumPy array: ``shape``, ``dtype``,
    ``ndim``, ``size``, ``len()`` and row slices (``data[a:b]``, a view on the engine).
    """

    def __init__(self, engine: Engine, array: Array) -> None:
        self.engine = engine
        self.array = array

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.array.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(dtype_name(self.array.dtype))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> EngineData:
        if not isinstance(rows, slice) or rows.step not in (None, 1):
            raise TypeError(f"EngineData takes contiguous row slices, received {rows!r}")
        start, stop, _ = rows.indices(len(self))
        return EngineData(self.engine, self.engine.slice_rows(self.array, start, max(start, stop)))

    def to_numpy(self) -> np.ndarray:
        """A host copy (what a failed check reads to say where the problem is)."""
        return self.engine.to_numpy(self.array)

    def __repr__(self) -> str:
        return f"EngineData(shape={self.shape}, dtype={self.dtype}, engine={self.engine.name!r})"


def on_engine(data: Any, engine: Engine) -> EngineData | None:
    """``data`` as ``EngineData`` when ``engine`` can take it without a copy, else ``None``.

    NumPy arrays and Python data return ``None``: they take the host checks.
    """
    if isinstance(data, EngineData):
        return data
    if data is None or isinstance(data, (np.ndarray, list, tuple, dict, int, float)):
        return None
    array = engine.from_external(data)
    return None if array is None else EngineData(engine, array)


def _reshaped(data: EngineData, shape: tuple[int, ...]) -> EngineData:
    return EngineData(data.engine, data.engine.reshape(data.array, shape))


def _as_dtype(data: EngineData, dtype: str) -> EngineData:
    if data.dtype == np.dtype(dtype):
        return data
    return EngineData(data.engine, data.engine.cast(data.array, dtype))


def _converted(
    data: EngineData, dtype: str, low: float = -math.inf, high: float = math.inf
) -> EngineData | None:
    """``data`` in ``dtype``, or ``None`` when an element is NaN, outside ``[low, high]``
    or beyond the range of ``dtype`` (checked before a narrowing conversion, which would
    overflow)."""
    limit = float(np.finfo(dtype).max)
    if data.dtype.kind == "f" and data.dtype.itemsize > np.dtype(dtype).itemsize:
        if data.engine.count_outside(data.array, max(low, -limit), min(high, limit)):
            return None
        return _as_dtype(data, dtype)
    converted = _as_dtype(data, dtype)
    return None if data.engine.count_outside(converted.array, low, high) else converted


def _to_engine(engine: Engine, host: np.ndarray, dtype: str) -> EngineData:
    return EngineData(engine, engine.asarray(host, dtype=dtype))


def check_features(
    data: EngineData,
    dims: tuple[int, ...] | None,
    features: int | None,
    *,
    dtype: str,
    name: str,
) -> tuple[EngineData, tuple[int, ...] | None]:
    """``data_checks.flatten_samples`` and ``check_features`` for inputs on the engine.

    Args:
        data: the inputs, ``(N, features)`` or ``(N, *dims)``, float or int64.
        dims: the per-sample shape the model expects, ``None`` before it is built.
        features: the model's input width, ``None`` before it is built.
        dtype: the model's float dtype: the inputs are converted to it on the engine.

    Returns:
        ``(inputs, sample dims)``: the inputs ``(N, features)`` in ``dtype``, and the
        multi-dimensional per-sample shape found (``None`` when flat).
    """
    found = None
    if data.ndim > 2 or (dims is not None and len(dims) > 1 and data.ndim > 0 and data.size):
        found = data_checks.sample_dims(data.shape, dims, name)
        if found is not None:
            data = _reshaped(data, (len(data), math.prod(found)))
    if data.ndim == 1 and features == 1:
        data = _reshaped(data, (len(data), 1))
    shaped = data.ndim == 2 and data.size and (features is None or data.shape[1] == features)
    converted = _converted(data, dtype) if shaped else None
    if converted is None:
        checked = data_checks.check_features(data.to_numpy(), features, dtype=dtype, name=name)
        converted = _to_engine(data.engine, checked, dtype)  # had it passed
    return converted, found


def check_targets(
    data: EngineData, loss_name: str, units: int, *, dtype: str, name: str
) -> EngineData:
    """``data_checks.check_targets`` for targets on the engine: int64 labels ``(N,)`` for
    ``sparse_categorical_crossentropy``, else ``(N, units)`` in the model's ``dtype``."""
    engine = data.engine

    def explained() -> EngineData:
        """The host check of a copy, which raises with its message (had it passed, its
        result goes back to the engine)."""
        checked = data_checks.check_targets(
            data.to_numpy(), loss_name, units, dtype=dtype, name=name
        )
        return _to_engine(engine, checked, "int64" if checked.dtype.kind == "i" else dtype)

    if data.ndim == 0 or data.size == 0:
        return explained()
    if loss_name == "sparse_categorical_crossentropy":
        labels = data
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = _reshaped(labels, (len(labels),))
        whole = labels.dtype.kind == "f"
        if labels.ndim != 1 or engine.count_outside(labels.array, 0, units - 1, whole=whole):
            return explained()
        return _as_dtype(labels, "int64")
    targets = data
    if targets.ndim == 1 and units == 1:
        targets = _reshaped(targets, (len(targets), 1))
    elif targets.ndim == 1 and loss_name == "categorical_crossentropy":
        integers = targets.dtype.kind == "i" or not engine.count_outside(
            targets.array, -math.inf, math.inf, whole=True
        )
        if integers:  # labels given where one-hot rows are expected
            return explained()
    if targets.ndim != 2 or targets.shape[1] != units:
        return explained()
    low, high = {
        "binary_crossentropy": (0.0, 1.0),
        "categorical_crossentropy": (0.0, math.inf),
    }.get(loss_name, (-math.inf, math.inf))
    converted = _converted(targets, dtype, low, high)
    return explained() if converted is None else converted
