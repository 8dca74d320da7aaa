"""Checks of the arrays users pass to fit, evaluate and predict.

Each check runs on the host before any work starts and raises an exception
that says what was expected, what was received and how to fix it.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np


def as_numeric(data: Any, name: str) -> np.ndarray:
    """``data`` as a NumPy array of real numbers, or a TypeError/ValueError that says why not."""
    if data is None:
        raise ValueError(f"{name} is None; pass a NumPy array (or nested lists) of numbers")
    array = host_view(data, name)
    if array.dtype.kind == "O":
        array = _object_as_numbers(array, name)
    if array.dtype.kind == "c":
        raise _complex_error(array, name)
    if array.dtype.kind not in "biuf":
        raise _not_numbers_error(array, name)
    if array.size == 0:
        raise ValueError(f"{name} is empty (shape {array.shape}); pass at least one sample")
    _check_finite(array, name)
    return array


# DLPack device types whose memory the host reads: CPU, CUDA pinned host, CUDA managed
_HOST_DLPACK_DEVICES = (1, 3, 13)


def host_view(data: Any, name: str) -> np.ndarray:
    """``data`` as a NumPy array, sharing the memory of a host tensor of another library.

    A PyTorch, JAX or other tensor that speaks DLPack (``__dlpack__``) and lives in host
    memory is taken with ``np.from_dlpack``: no copy, so a float32 tensor trains a float32
    model in place. A tensor that is not C-contiguous (a slice with a step, a transpose)
    or that is read-only (a JAX array) is copied into a C-contiguous array. Anything else
    goes through ``np.asarray``.

    Raises:
        ValueError: ``data`` cannot be read as an array on the host (a tensor on a GPU
            that the engine does not run on, one that requires grad, a dtype NumPy lacks
            such as bfloat16), saying why and what to pass instead.
    """
    if isinstance(data, np.ndarray):
        return data
    dlpack_error = None
    if hasattr(data, "__dlpack__"):
        where = _dlpack_device(data)
        if where is not None and where[0] not in _HOST_DLPACK_DEVICES:
            raise ValueError(
                f"{name} is a {type(data).__name__} on a device (DLPack device {where}) that "
                "the engine does not run on (a GPU engine takes a tensor on its own device "
                "as it is): use the engine of that device (dlcore.set_backend('cupy') or "
                "'numba'), or pass a host copy (e.g. x.cpu() for PyTorch, cupy.asnumpy(x) "
                "for CuPy)"
            )
        try:
            array = np.from_dlpack(data)
        except (BufferError, RuntimeError, TypeError, ValueError) as error:
            dlpack_error = error  # np.asarray may still read it; else the message says why
        else:
            if array.flags.c_contiguous and array.flags.writeable:
                return array
            # the compiled CPU paths (Numba) take writable C-contiguous arrays only
            return np.array(array, order="C")
    try:
        return np.asarray(data)
    except (ValueError, TypeError, RuntimeError) as error:
        reason = f"{error}; through DLPack: {dlpack_error}" if dlpack_error else f"{error}"
        raise ValueError(
            f"{name} could not be converted to a numeric array ({reason}); "
            "pass a rectangular NumPy array of numbers"
        ) from None


def _dlpack_device(data: Any) -> tuple[int, int] | None:
    """``data.__dlpack_device__()`` as ``(device type, id)``, or ``None`` when it has none."""
    try:
        kind, index = data.__dlpack_device__()
    except (AttributeError, TypeError, ValueError, RuntimeError):
        return None
    return int(kind), int(index)


def _object_as_numbers(array: np.ndarray, name: str) -> np.ndarray:
    """An object array (mixed Python numbers, huge ints) as float64, or complex128 for
    complex numbers (refused next); a TypeError naming the first element that is neither."""
    missing = [index for index, item in enumerate(array.reshape(-1)) if item is None]
    if missing:
        where = tuple(int(i) for i in np.unravel_index(missing[0], array.shape))
        raise ValueError(
            f"{name} contains {len(missing)} missing value(s) (None), the first at index "
            f"{where}; remove or impute them before training"
        )
    try:
        return array.astype(np.float64)
    except (TypeError, ValueError, OverflowError):
        pass
    for index, item in enumerate(array.reshape(-1)):
        if isinstance(item, numbers.Complex) and not isinstance(item, numbers.Real):
            try:
                return array.astype(np.complex128)
            except (TypeError, ValueError):
                continue  # a non-number comes later; name it
        where = tuple(int(i) for i in np.unravel_index(index, array.shape))
        try:
            float(item)
        except OverflowError:
            raise ValueError(
                f"{name} holds an integer of {len(str(abs(item)))} digits at index {where}, "
                "beyond the range of float64 (about 1.8e308); rescale the data, or fix the "
                "value if it is a mistake"
            ) from None
        except (TypeError, ValueError):
            raise TypeError(
                f"{name} must hold numbers; received an array of Python objects whose element "
                f"at index {where} is {item!r} ({type(item).__name__}). Replace or remove the "
                f"non-numbers, then convert with np.asarray({name}, dtype='float32')"
            ) from None
    return array.astype(np.float64)  # pragma: no cover - some element failed above


def _complex_error(array: np.ndarray, name: str) -> TypeError:
    """The error for complex data: dlcore trains on real numbers only."""
    imaginary = np.flatnonzero(array.reshape(-1).imag)
    if imaginary.size == 0:
        return TypeError(
            f"{name} must hold real numbers; received complex numbers (dtype {array.dtype}) "
            f"whose imaginary parts are all zero. Pass {name}.real instead"
        )
    item = array.reshape(-1)[imaginary[0]].item()
    return TypeError(
        f"{name} must hold real numbers; received complex numbers (dtype {array.dtype}) such "
        f"as {item!r}. Split each into two real features, e.g. "
        f"np.concatenate([{name}.real, {name}.imag], axis=-1), or pass np.abs({name})"
    )


def _not_numbers_error(array: np.ndarray, name: str) -> TypeError:
    """The error for text, dates, durations and other non-numeric dtypes."""
    example = array.reshape(-1)[:1].tolist()
    if array.dtype.kind in "mM":
        fix = (
            f"Convert them to numbers first, e.g. {name} / np.timedelta64(1, 's') for "
            "durations in seconds"
        )
    else:
        fix = (
            f"Convert it with np.asarray({name}, dtype='float32') after encoding any text "
            "as numbers"
        )
    return TypeError(
        f"{name} must hold numbers; received an array of dtype {array.dtype} "
        f"(e.g. {example}). {fix}"
    )


def _check_finite(array: np.ndarray, name: str) -> None:
    """Raise when a float ``array`` holds NaN or infinity, naming the first place."""
    if array.dtype.kind != "f":
        return
    # A sum is finite only if every term is; only when it is not does the exact test
    # (a boolean array as large as the data) run, to say where and to rule out overflow,
    # which is then no error and must not warn either.
    with np.errstate(over="ignore", invalid="ignore"):
        # the column sums first: one pass that vectorises across each row, twice as fast
        # as a pairwise sum over the whole array
        total = np.sum(np.sum(array, axis=0)) if array.ndim > 1 else np.sum(array)
    if np.isfinite(total) or np.isfinite(array).all():
        return
    bad = np.argwhere(~np.isfinite(array))[0]
    count = int(np.count_nonzero(~np.isfinite(array)))
    raise ValueError(
        f"{name} contains {count} NaN or infinite value(s), the first at index "
        f"{tuple(int(i) for i in bad)}; remove or impute them before training"
    )


def check_range(array: np.ndarray, dtype: str, name: str) -> None:
    """Raise when finite values of ``array`` would overflow to infinity in ``dtype``."""
    limit = float(np.finfo(dtype).max)
    if array.dtype.kind != "f" or array.dtype.itemsize <= np.dtype(dtype).itemsize:
        return  # integers and floats no wider than dtype always fit
    largest = max(abs(float(np.max(array))), abs(float(np.min(array))))
    if largest > limit:
        raise ValueError(
            f"{name} holds values up to {largest:g}, beyond the range of the model's {dtype} "
            f"(largest {limit:g}); rescale them or use dlcore.set_floatx('float64') before "
            "building the model"
        )


def check_features(
    x: Any, features: int | None, *, dtype: str = "float64", name: str = "x"
) -> np.ndarray:
    """Validate model inputs: a finite numeric ``(N, features)`` array.

    Args:
        x: the user's inputs.
        features: the model's input width, or ``None`` when the model is not built yet.
        dtype: the model's float dtype; values beyond its range are rejected.

    Returns:
        ``x`` as a NumPy array of shape ``(N, F)``.
    """
    array = as_numeric(x, name)
    if array.ndim == 0:
        raise _single_input_error(array, features, name)
    if array.ndim == 1 and features == 1:
        array = array.reshape(-1, 1)
    if array.ndim != 2:
        if array.ndim > 2:
            hint = f" (use {name}.reshape(len({name}), -1) to flatten each sample)"
        elif features is not None and len(array) == features:
            hint = f" (use {name}.reshape(1, -1) for a single sample)"
        else:
            hint = f" (use {name}.reshape(-1, 1) for one feature per sample)"
        raise ValueError(
            f"expected {name} of shape (samples, features), received {name}.shape={array.shape}"
            + hint
        )
    if features is not None and array.shape[1] != features:
        raise ValueError(
            f"the model expects inputs with {features} features (input_shape=({features},)), "
            f"received {name}.shape={array.shape}"
        )
    check_range(array, dtype, name)
    return array


def flatten_samples(
    x: Any, dims: tuple[int, ...] | None, *, name: str = "x"
) -> tuple[Any, tuple[int, ...] | None]:
    """Samples of a multi-dimensional per-sample shape as flat rows, for ``check_features``.

    Args:
        x: the user's inputs.
        dims: the per-sample shape the model expects, or ``None`` when the model is not
            built yet (then an array of more than 2 dimensions gives its own shape).

    Returns:
        ``(x, dims)``: ``x`` reshaped to ``(N, prod(dims))`` (row-major, a view of a
        C-contiguous array) when the per-sample shape has several dimensions, else ``x``
        as given; and the per-sample shape found (``None`` when flat or not an array).
    """
    if dims is not None and len(dims) == 1:
        return x, None
    try:
        array = host_view(x, name)
    except ValueError:
        return x, None  # check_features says what is wrong with it
    if array.dtype.kind not in "biuf" or array.ndim == 0 or array.size == 0:
        return x, None
    dims = sample_dims(array.shape, dims, name)
    if dims is None:
        return x, None
    return array.reshape(len(array), -1), tuple(dims)


def sample_dims(
    shape: tuple[int, ...], dims: tuple[int, ...] | None, name: str
) -> tuple[int, ...] | None:
    """The multi-dimensional per-sample shape of inputs of ``shape``: ``dims`` when
    they match it, their own ``shape[1:]`` before the model is built (``dims`` is
    ``None``), or ``None`` for flat ``(N, features)`` inputs; a ValueError when the
    inputs' sample shape is not the model's."""
    if dims is None:
        return tuple(int(d) for d in shape[1:]) if len(shape) > 2 else None
    if tuple(shape[1:]) != tuple(dims):
        expected = "(" + ", ".join(["None", *(str(d) for d in dims)]) + ")"
        raise ValueError(
            f"the model expects inputs of shape {expected}, received {name}.shape={shape}"
        )
    return tuple(dims)


def _single_input_error(array: np.ndarray, features: int | None, name: str) -> ValueError:
    """The error for a 0-d input: a model reads rows of features, never a lone number."""
    value = array.item()
    if features == 1:
        fix = (
            f"for one sample of the model's one feature pass [[{value!r}]] or "
            f"np.reshape({name}, (1, 1))"
        )
    elif features is not None:
        fix = (
            f"pass one row of {features} features per sample, e.g. an array of shape "
            f"(1, {features})"
        )
    else:
        fix = (
            f"pass one row of features per sample, e.g. [[{value!r}]] for one sample of one feature"
        )
    return ValueError(
        f"expected {name} of shape (samples, features), received the single number "
        f"{name}={value!r} (shape ()); {fix}"
    )


def check_sample_counts(x: np.ndarray, y: np.ndarray, *, x_name: str = "x", y_name: str = "y"):
    """Raise when ``x`` and ``y`` do not hold the same number of samples."""
    if len(x) != len(y):
        raise ValueError(
            f"{x_name} and {y_name} must hold the same number of samples; received "
            f"{x_name}.shape={x.shape} and {y_name}.shape={y.shape}"
        )


def check_targets(
    y: Any, loss_name: str, units: int, *, dtype: str = "float64", name: str = "y"
) -> np.ndarray:
    """Validate targets for ``loss_name`` and an output layer of ``units`` units.

    Returns:
        int64 labels ``(N,)`` for ``sparse_categorical_crossentropy``, else a
        float64 array ``(N, units)``.
    """
    array = as_numeric(y, name)
    if array.ndim == 0:
        raise _single_target_error(array, loss_name, units, name)
    if loss_name == "sparse_categorical_crossentropy":
        if array.ndim == 2 and array.shape[1] == 1:
            array = array[:, 0]
        if array.ndim != 1:
            raise ValueError(
                f"sparse_categorical_crossentropy expects integer class labels of shape "
                f"(samples,), received {name}.shape={array.shape}; for one-hot targets use "
                "loss='categorical_crossentropy'"
            )
        return check_labels(array, units, name=name, given=y)
    if array.ndim == 1:
        if units == 1:
            array = array.reshape(-1, 1)
        elif loss_name == "categorical_crossentropy" and np.all(array == np.round(array)):
            raise ValueError(
                f"categorical_crossentropy expects one-hot targets of shape (samples, {units}), "
                f"received integer labels {name}.shape={array.shape}; convert them with "
                f"dlcore.utils.to_categorical({name}, {units}) or use "
                "loss='sparse_categorical_crossentropy'"
            )
    if array.ndim != 2 or array.shape[1] != units:
        raise ValueError(
            f"the model's output layer has {units} units, so {loss_name} expects {name} of "
            f"shape (samples, {units}); received {name}.shape={array.shape}"
        )
    if loss_name == "binary_crossentropy" and (array.min() < 0 or array.max() > 1):
        raise ValueError(
            f"binary_crossentropy expects targets in [0, 1], received values from "
            f"{array.min().item()!r} to {array.max().item()!r}"
        )
    if loss_name == "categorical_crossentropy" and array.min() < 0:
        raise ValueError(
            f"categorical_crossentropy expects non-negative (one-hot) targets, received "
            f"a minimum of {array.min().item()!r}"
        )
    check_range(array, dtype, name)
    return array.astype(np.float64, copy=False)


def _single_target_error(array: np.ndarray, loss_name: str, units: int, name: str) -> ValueError:
    """The error for a 0-d target: fit and evaluate take one target per sample."""
    value = array.item()
    if loss_name == "sparse_categorical_crossentropy":
        expected, example = "integer class labels of shape (samples,)", f"[{value!r}]"
    else:
        expected, example = f"targets of shape (samples, {units})", f"[[{value!r}]]"
        if units > 1:
            example = f"an array of shape (1, {units})"
    return ValueError(
        f"{loss_name} expects {expected}, received the single number {name}={value!r} "
        f"(shape ()); pass one target per sample of x, e.g. {example} for one sample"
    )


def check_labels(
    labels: np.ndarray, units: int, *, name: str = "y", given: Any = None, against: str = ""
) -> np.ndarray:
    """Integer class labels in ``0..units-1`` as int64, checked before any cast.

    Args:
        labels: a 1-D array of real numbers (``as_numeric`` has ruled out NaN).
        units: the number of classes, the output layer's width.
        name: what the user calls the labels, for the messages.
        given: the user's own data, whose element is quoted when ``labels`` was
            converted from Python objects (huge ints), so that the message shows the
            value as written.
        against: what gives the number of classes, for the message; the output layer
            unless said otherwise.

    Returns:
        ``labels`` as int64.
    """
    if labels.dtype.kind == "f":
        fractional = labels != np.round(labels)
        if fractional.any():
            raise ValueError(
                f"sparse_categorical_crossentropy expects integer class labels, received "
                f"non-integer values such as {labels[fractional][0].item()!r}; round them "
                "or map each class to an index 0..n-1"
            )
    # Compared in the labels' own dtype: a cast first would wrap huge or unsigned values.
    low, high = labels.argmin(), labels.argmax()
    if labels[low] < 0 or labels[high] >= units:
        index = int(low if labels[low] < 0 else high)
        against = against or f"the output layer of {units} units"
        raise ValueError(
            f"label {_given_label(labels, index, given)} in {name} is out of range for "
            f"{against} (valid labels 0..{units - 1}); give the last Dense layer as many "
            "units as there are classes"
        )
    return labels.astype(np.int64)


def _given_label(labels: np.ndarray, index: int, given: Any) -> str:
    """The label at ``index`` as the user wrote it: an int when it is one, else the float."""
    if labels.dtype.kind in "biu":
        return str(labels[index].item())
    if given is not None:
        original = np.asarray(given, dtype=object).reshape(-1)
        if original.size == labels.size and isinstance(original[index], numbers.Integral):
            return str(int(original[index]))
    value = labels[index]
    # Integral below 2**53: exact as an int; beyond, the float's shortest repr in its dtype.
    return str(int(value)) if abs(float(value)) < 2**53 else str(value)


def check_positive_int(value: Any, name: str, *, allow_none: bool = False) -> int | None:
    """``value`` as a positive int, or a ValueError naming ``name``."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, received {name}={value!r}")
    return int(value)
