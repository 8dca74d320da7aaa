"""dlcore's model file: one JSON config and named numeric arrays in a NumPy ``.npz`` archive.

The file is a zip archive of ``.npy`` members, readable with ``numpy.load``:

* ``__dlcore_format__``: the marker ``b"dlcore-model"`` as a uint8 array;
* ``__dlcore_format_version__``: the format version, an int64 scalar;
* ``__dlcore_config__``: the config, UTF-8 JSON as a uint8 array;
* one member per user array, named by its key.

Nothing is pickled on writing, and reading uses ``allow_pickle=False``, so
loading a file never executes code from it. The file name is used exactly as
given, whatever its extension (``"model.h5"``, ``"model.keras"``, ``"model"``).
"""

from __future__ import annotations

import json
import os
import secrets
import zipfile
import zlib
from typing import Any

import numpy as np

FORMAT_VERSION = 1
FORMAT_MARKER = b"dlcore-model"
MARKER_KEY = "__dlcore_format__"
VERSION_KEY = "__dlcore_format_version__"
CONFIG_KEY = "__dlcore_config__"
_RESERVED_PREFIX = "__dlcore"
_HDF5_SIGNATURE = b"\x89HDF"
_ZIP_SIGNATURES = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header; an empty archive
# What numpy and zipfile raise on a truncated or damaged archive.
_READ_ERRORS = (ValueError, zipfile.BadZipFile, OSError, EOFError, KeyError, zlib.error)


def _check_arrays(arrays: dict[str, Any]) -> dict[str, np.ndarray]:
    if not isinstance(arrays, dict):
        raise ValueError(
            f"expected arrays to be a dict of name -> numpy array, received {type(arrays).__name__}"
        )
    checked = {}
    for name, value in arrays.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"expected array names to be non-empty strings, received {name!r}")
        if name.startswith(_RESERVED_PREFIX):
            raise ValueError(
                f"array name {name!r} is reserved: names starting with {_RESERVED_PREFIX!r} "
                f"hold the file's own header; rename the array"
            )
        arr = np.asarray(value)
        if arr.dtype.kind not in "biufc":
            raise ValueError(
                f"array {name!r} has dtype {arr.dtype}; a dlcore model file holds numeric "
                f"arrays only (bool, int, float, complex), never Python objects"
            )
        checked[name] = arr
    return checked


def _write_npz(fileobj: Any, members: dict[str, np.ndarray]) -> None:
    # Members are written one by one, as numpy.savez does, so that no array name
    # can collide with one of numpy.savez's own keyword arguments.
    with zipfile.ZipFile(fileobj, mode="w", compression=zipfile.ZIP_STORED) as zf:
        for name, arr in members.items():
            with zf.open(name + ".npy", mode="w", force_zip64=True) as member:
                np.lib.format.write_array(member, arr, allow_pickle=False)


def _fsync_directory(directory: str) -> None:
    # Makes the rename itself durable; directories cannot be opened on Windows.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_archive(
    path: str | os.PathLike[str], config: dict[str, Any], arrays: dict[str, np.ndarray]
) -> None:
    """Write a config and named arrays to one file, atomically.

    The data go to a temporary file in the same directory, which is flushed to
    disk and then renamed over ``path``: a crash or an error never leaves a
    half-written file there, and an existing file stays intact until the new one
    is complete.

    Args:
        path: the file to write, used exactly as given (any extension or none).
            Its directory must exist.
        config: a JSON-serialisable dict.
        arrays: name -> numeric array of any shape and of a bool, int, float or
            complex dtype. Names must not start with ``"__dlcore"``.

    Raises:
        FileNotFoundError: the directory of ``path`` does not exist.
        ValueError: ``config`` is not JSON-serialisable, or an array has a
            non-numeric (e.g. object) dtype or a reserved name.
    """
    target = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"cannot save to {target!r}: the directory {directory!r} does not exist; "
            f"create it first (os.makedirs)"
        )
    if os.path.isdir(target):
        raise IsADirectoryError(f"cannot save to {target!r}: it is a directory; pass a file name")
    if not isinstance(config, dict):
        raise ValueError(f"expected config to be a dict, received {type(config).__name__}")
    try:
        config_json = json.dumps(config)
    except (TypeError, ValueError) as e:
        raise ValueError(f"the model config is not JSON-serialisable: {e}") from None
    members: dict[str, np.ndarray] = {
        MARKER_KEY: np.frombuffer(FORMAT_MARKER, dtype=np.uint8),
        VERSION_KEY: np.asarray(FORMAT_VERSION, dtype=np.int64),
        CONFIG_KEY: np.frombuffer(config_json.encode("utf-8"), dtype=np.uint8),
        **_check_arrays(arrays),
    }

    base = os.path.basename(target)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = os.path.join(directory, f".{base}.{secrets.token_hex(6)}.tmp")
        try:
            # Mode 0o666 lets the user's umask decide the final permissions, as for open().
            fd = os.open(tmp, flags, 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            _write_npz(f, members)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    _fsync_directory(directory)


def _not_ours(path: str, why: str) -> ValueError:
    return ValueError(f"{path!r} is not a dlcore model file or is corrupted: {why}")


def read_archive(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read a file written by ``write_archive``; never unpickles anything.

    Args:
        path: the file to read.

    Returns:
        ``(config, arrays)``: the config dict, and name -> ``numpy.ndarray`` with
        the shapes and dtypes that were written.

    Raises:
        FileNotFoundError: there is no file at ``path``.
        ValueError: the file is not a dlcore model file (for example a Keras HDF5
            or ``.keras`` file), is truncated or corrupted, holds pickled data, or
            was written by a newer dlcore.
    """
    source = os.fspath(path)
    if not os.path.exists(source):
        raise FileNotFoundError(f"no model file at {source!r}: the file does not exist")
    if os.path.isdir(source):
        raise IsADirectoryError(f"cannot load {source!r}: it is a directory, not a model file")
    with open(source, "rb") as f:
        head = f.read(8)
        if not head:
            raise _not_ours(source, "the file is empty")
        if head.startswith(_HDF5_SIGNATURE):
            raise _not_ours(
                source,
                "it looks like a Keras HDF5 file, which dlcore cannot read; re-save the model "
                "with dlcore (build it with dlcore's layers and call model.save())",
            )
        if not head.startswith(_ZIP_SIGNATURES):
            raise _not_ours(source, f"it is not a zip archive (it starts with {head!r})")
        f.seek(0)
        try:
            npz = np.load(f, allow_pickle=False)
        except _READ_ERRORS as e:
            raise _not_ours(source, f"{type(e).__name__}: {e}") from None
        with npz:
            return _read_members(source, npz)


def _member(source: str, npz: Any, name: str) -> np.ndarray:
    try:
        return npz[name]
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise _not_ours(
                source,
                f"the array {name!r} holds pickled Python objects, which dlcore never loads "
                f"because unpickling can run arbitrary code",
            ) from None
        raise _not_ours(source, f"the array {name!r} cannot be read: {e}") from None
    except _READ_ERRORS as e:
        raise _not_ours(
            source, f"the array {name!r} cannot be read: {type(e).__name__}: {e}"
        ) from None


def _read_members(source: str, npz: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    keys = set(npz.files)
    if MARKER_KEY not in keys or bytes(_member(source, npz, MARKER_KEY)) != FORMAT_MARKER:
        if {"config.json", "metadata.json"} <= set(npz.zip.namelist()):
            raise ValueError(
                f"{source!r} is not a dlcore model file: it looks like a Keras 3 .keras "
                f"file, which dlcore cannot read; re-save the model with dlcore (build it "
                f"with dlcore's layers and call model.save())"
            )
        raise ValueError(
            f"{source!r} is not a dlcore model file: it is a zip archive without the dlcore "
            f"format marker"
        )
    if VERSION_KEY not in keys or CONFIG_KEY not in keys:
        raise _not_ours(source, "the format version or the config is missing")
    version_arr = _member(source, npz, VERSION_KEY)
    if version_arr.shape != () or version_arr.dtype.kind not in "iu":
        raise _not_ours(
            source,
            f"the format version has shape {version_arr.shape} and dtype {version_arr.dtype}, "
            f"expected an integer scalar",
        )
    version = int(version_arr)
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{source!r} was written by a newer dlcore (format {version}); this version reads "
            f"format {FORMAT_VERSION}; upgrade dlcore"
        )
    if version < 1:
        raise _not_ours(source, f"the format version is {version}")
    try:
        config = json.loads(bytes(_member(source, npz, CONFIG_KEY)).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _not_ours(source, f"the config is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise _not_ours(source, f"the config is a JSON {type(config).__name__}, not an object")
    arrays = {
        name: _member(source, npz, name)
        for name in npz.files
        if not name.startswith(_RESERVED_PREFIX)
    }
    return config, arrays
