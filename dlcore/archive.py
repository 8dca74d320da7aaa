"""dlcore's model file: one JSON config and named numeric arrays in a NumPy ``.npz`` archive.

The file is a zip archive of uncompressed ``.npy`` members, readable with ``numpy.load``:

* ``__dlcore_format__``: the marker ``b"dlcore-model"`` as a uint8 array;
* ``__dlcore_format_version__``: the format version, an int64 scalar;
* ``__dlcore_config__``: the config, UTF-8 JSON as a uint8 array;
* one member per user array, named by its key;
* optionally the companion members of Keras 3's ``.keras`` format (``COMPANIONS``:
  ``metadata.json``, ``config.json``, ``model.weights.h5``), which make the same file
  one that Keras loads too. dlcore checks their sizes but never reads them.

Nothing is pickled on writing. Reading is dlcore's own: it parses the zip directory
and each member's ``.npy`` header, refuses anything the writer never makes (compressed
or encrypted members, names that are not ``<key>.npy`` or climb out of the archive,
object or structured dtypes, sizes that disagree with the header), lets the caller
check the declared shapes and dtypes before any array is read (``select``), and
reads only the arrays it selects. Loading a file therefore never executes code from
it, never inflates anything, and never allocates more than the file holds.
Every problem with a file's contents raises ``ModelFileError``.

The file name is used exactly as given, whatever its extension (``"model.h5"``,
``"model.keras"``, ``"model"``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
import struct
import time
import tokenize
import zipfile
import zlib
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

fcntl: Any
try:
    import fcntl
except ImportError:  # Windows: no file locks (see _remove_if_abandoned)
    fcntl = None

FORMAT_VERSION = 1
FORMAT_MARKER = b"dlcore-model"
MARKER_KEY = "__dlcore_format__"
VERSION_KEY = "__dlcore_format_version__"
CONFIG_KEY = "__dlcore_config__"
_RESERVED_PREFIX = "__dlcore"
_MEMBER_SUFFIX = ".npy"
_HDF5_SIGNATURE = b"\x89HDF"
#: members another program's format reads (Keras 3's ``.keras``), written beside
#: dlcore's own so that one file serves both; dlcore never reads them
COMPANIONS = ("metadata.json", "config.json", "model.weights.h5")
_ZIP_SIGNATURES = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header; an empty archive
#: the deepest nesting of lists and dicts a config may have
MAX_CONFIG_DEPTH = 64
_READ_CHUNK = 1 << 20
# What zipfile, zlib, struct and numpy's header parser raise on a damaged archive.
_READ_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    struct.error,
    OSError,
    EOFError,
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    OverflowError,
    UnicodeDecodeError,
    NotImplementedError,
    RuntimeError,
    SyntaxError,
    tokenize.TokenError,  # numpy's header parser tokenizes the header dict
    RecursionError,
)
#: a temporary file of a save: ``.<target name>.<12 hex digits>.tmp`` beside the target
_TEMP_NAME = ".{base}.{token}.tmp"
_TEMP_TOKEN_BYTES = 6
#: where temporary files cannot be locked, those older than this are taken as left by a
#: crashed save
STALE_TEMP_SECONDS = 3600.0


class ModelFileError(ValueError):
    """A file that dlcore cannot load as a model or weights: not a dlcore file, damaged,
    or inconsistent with its own description.

    The message names the file and the problem; ``path`` is the file.
    """

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path


@dataclass(frozen=True)
class MemberHeader:
    """What an array member's ``.npy`` header declares, checked against its size."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    info: zipfile.ZipInfo
    data_offset: int  # where the array's bytes start inside the member

    @property
    def size(self) -> int:
        """The number of elements."""
        return math.prod(self.shape)


# ---------------------------------------------------------------------------- writing
def _check_member_name(name: str) -> str | None:
    """Why ``name`` cannot be an array's name in the file, or ``None`` when it can."""
    if not isinstance(name, str) or not name:
        return "names must be non-empty strings"
    if any(char in name for char in "\\\x00:"):
        return "names must not hold '\\', ':' or NUL"
    if any(part in ("", ".", "..") for part in name.split("/")):
        return "names are '/'-separated words, none of them empty, '.' or '..'"
    return None


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
        why = _check_member_name(name)
        if why is not None:
            raise ValueError(f"array name {name!r} cannot be stored: {why}")
        arr = np.asarray(value)
        if arr.dtype.kind not in "biufc" or arr.dtype.fields is not None:
            raise ValueError(
                f"array {name!r} has dtype {arr.dtype}; a dlcore model file holds numeric "
                f"arrays only (bool, int, float, complex), never Python objects"
            )
        checked[name] = arr
    return checked


def _write_npz(
    fileobj: Any, members: dict[str, np.ndarray], companions: Mapping[str, bytes]
) -> None:
    # Members are written one by one, as numpy.savez does, so that no array name
    # can collide with one of numpy.savez's own keyword arguments.
    with zipfile.ZipFile(fileobj, mode="w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in companions.items():
            zf.writestr(name, data)
        for name, arr in members.items():
            with zf.open(name + _MEMBER_SUFFIX, mode="w", force_zip64=True) as member:
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


def _try_lock(fd: int) -> bool:
    """Take an exclusive lock on the open file ``fd`` without waiting; whether it was taken.

    The lock goes with the open file: the system drops it when the process that holds
    it ends, however it ends.
    """
    assert fcntl is not None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def temp_file_pattern(target: str | os.PathLike[str]) -> re.Pattern[str]:
    """The names of the temporary files that saves to ``target`` write beside it."""
    base = re.escape(os.path.basename(os.fspath(target)))
    return re.compile(rf"\.{base}\.[0-9a-f]{{{2 * _TEMP_TOKEN_BYTES}}}\.tmp")


def _remove_if_stale(path: str) -> bool:
    """Remove ``path`` if untouched for ``STALE_TEMP_SECONDS``; whether it was removed."""
    try:
        if time.time() - os.stat(path).st_mtime <= STALE_TEMP_SECONDS:
            return False
        os.remove(path)
    except OSError:
        return False
    return True


def _remove_if_abandoned(path: str) -> bool:
    """Remove the temporary file ``path`` if no running save holds it; whether it was removed.

    A save holds a lock on its temporary file from its creation until it has been
    renamed over the target, and the system drops that lock when the process ends,
    however it ends: a temporary file that can be locked was left by a save that died.
    Where files cannot be locked (Windows), a file untouched for
    ``STALE_TEMP_SECONDS`` is taken as left by a crash.
    """
    if fcntl is None:
        return _remove_if_stale(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        # Removed while locked: a save that created the file but has not locked it yet
        # finds it removed once it has the lock (_create_locked_temp) and starts over.
        if not _try_lock(fd):
            return False
        os.remove(path)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def remove_crashed_temp_files(target: str | os.PathLike[str]) -> list[str]:
    """Remove the temporary files that interrupted saves to ``target`` left beside it.

    Only files named as dlcore names the temporary files of saves to this very target
    (``.<name>.<12 hex digits>.tmp``, ``temp_file_pattern``) are considered, and of
    those only the ones no running save holds (``_remove_if_abandoned``). Errors are
    ignored: cleaning up never makes a save fail.

    Returns:
        the paths removed.
    """
    target = os.fspath(target)
    directory = os.path.dirname(os.path.abspath(target))
    pattern = temp_file_pattern(target)
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    candidates = [os.path.join(directory, name) for name in names if pattern.fullmatch(name)]
    return [path for path in candidates if _remove_if_abandoned(path)]


def _create_locked_temp(directory: str, base: str) -> tuple[str, int]:
    """A new temporary file for a save of ``base`` in ``directory``, open and locked."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        token = secrets.token_hex(_TEMP_TOKEN_BYTES)
        tmp = os.path.join(directory, _TEMP_NAME.format(base=base, token=token))
        try:
            # Mode 0o666 lets the user's umask decide the final permissions, as for open().
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
        if fcntl is None:
            return tmp, fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # waits only while a cleaner checks this file
        except OSError:
            return tmp, fd  # a file system without locks: cleaners cannot lock it either
        if os.fstat(fd).st_nlink > 0:
            return tmp, fd
        os.close(fd)  # a cleaner removed it before it was locked


def write_archive(
    path: str | os.PathLike[str],
    config: dict[str, Any],
    arrays: dict[str, np.ndarray],
    companions: Mapping[str, bytes] | None = None,
) -> None:
    """Write a config and named arrays to one file, atomically.

    The data go to a temporary file in the same directory, which is flushed to
    disk and then renamed over ``path``: a crash or an error never leaves a
    half-written file there, and an existing file stays intact until the new one
    is complete. The temporary files that earlier, interrupted saves to ``path``
    left are removed first (``remove_crashed_temp_files``).

    Args:
        path: the file to write, used exactly as given (any extension or none).
            Its directory must exist.
        config: a JSON-serialisable dict.
        arrays: name -> numeric array of any shape and of a bool, int, float or
            complex dtype. Names must not start with ``"__dlcore"``.
        companions: name -> bytes of members of ``COMPANIONS`` (Keras's ``.keras``
            members), stored beside dlcore's own.

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
    companions = dict(companions or {})
    unknown = sorted(set(companions) - set(COMPANIONS))
    if unknown:
        raise ValueError(f"the companion members {unknown} are not among {list(COMPANIONS)}")
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
    remove_crashed_temp_files(target)
    tmp, fd = _create_locked_temp(directory, os.path.basename(target))
    try:
        with open(fd, "wb", closefd=False) as f:
            _write_npz(f, members, companions)
            f.flush()
            os.fsync(f.fileno())
        if fcntl is None:  # Windows renames no open file
            os.close(fd)
            fd = -1
        os.replace(tmp, target)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    finally:
        if fd >= 0:
            os.close(fd)  # releases the lock, after the rename
    _fsync_directory(directory)


# ---------------------------------------------------------------------------- reading
def is_archive(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a zip holding dlcore's format marker, judged by content."""
    try:
        with zipfile.ZipFile(path) as zf:
            return MARKER_KEY + _MEMBER_SUFFIX in zf.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def _not_ours(path: str, why: str) -> ModelFileError:
    return ModelFileError(path, f"{path!r} is not a dlcore model file or is corrupted: {why}")


#: ``select(config, headers)``: the names of the arrays to read, given the config and
#: every array's declared header; raises ``ValueError`` to refuse the file.
Select = Callable[[dict[str, Any], Mapping[str, MemberHeader]], Collection[str]]


def read_archive(
    path: str | os.PathLike[str], select: Select | None = None
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read a file written by ``write_archive``; never unpickles or inflates anything.

    Args:
        path: the file to read.
        select: called with the config and each array's ``MemberHeader`` (declared
            shape and dtype, already checked against the member's size) before any
            array is read; returns the names of the arrays to read, or raises
            ``ValueError`` to refuse the file (its message then says why). By
            default every array is read.

    Returns:
        ``(config, arrays)``: the config dict, and name -> ``numpy.ndarray`` with
        the shapes and dtypes that were written.

    Raises:
        FileNotFoundError: there is no file at ``path``.
        IsADirectoryError: ``path`` is a directory.
        ModelFileError: (a ``ValueError``) the file is not a dlcore model file (for
            example a Keras HDF5 or ``.keras`` file), is truncated or corrupted,
            holds members the format does not have (compressed, encrypted, pickled,
            misnamed), was written by a newer dlcore, or ``select`` refused it.
    """
    source = os.fspath(path)
    if not os.path.exists(source):
        raise FileNotFoundError(f"no model file at {source!r}: the file does not exist")
    if os.path.isdir(source):
        raise IsADirectoryError(f"cannot load {source!r}: it is a directory, not a model file")
    with open(source, "rb") as f:
        _check_signature(source, f.read(8))
        f.seek(0)
        try:
            with zipfile.ZipFile(f) as zf:
                return _read_zip(source, zf, os.fstat(f.fileno()).st_size, select)
        except ModelFileError:
            raise
        except _READ_ERRORS as e:
            raise _not_ours(source, f"{type(e).__name__}: {e}") from None


def _check_signature(source: str, head: bytes) -> None:
    if not head:
        raise _not_ours(source, "the file is empty")
    if head.startswith(_HDF5_SIGNATURE):
        raise _not_ours(
            source,
            "it looks like a Keras HDF5 file, not dlcore's archive: open a Keras model with "
            "dlcore.load_model (pip install dlcore[keras-files]), or re-save the model with "
            "dlcore (model.save())",
        )
    if not head.startswith(_ZIP_SIGNATURES):
        raise _not_ours(source, f"it is not a zip archive (it starts with {head!r})")


def _read_zip(
    source: str, zf: zipfile.ZipFile, file_size: int, select: Select | None
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    infos = _checked_members(source, zf, file_size)
    headers = {
        name[: -len(_MEMBER_SUFFIX)]: _member_header(source, zf, info)
        for name, info in infos.items()
    }
    config = _read_config(source, zf, headers)
    arrays = {
        name: header for name, header in headers.items() if not name.startswith(_RESERVED_PREFIX)
    }
    wanted = list(arrays) if select is None else _selected(source, select, config, arrays)
    return config, {name: _read_array(source, zf, arrays[name]) for name in wanted}


def _selected(
    source: str, select: Select, config: dict[str, Any], headers: Mapping[str, MemberHeader]
) -> list[str]:
    try:
        wanted = list(select(config, headers))
    except ModelFileError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, RecursionError) as e:
        raise ModelFileError(source, f"{source!r} is not a valid dlcore model file: {e}") from None
    unknown = sorted(set(wanted) - set(headers))
    if unknown:
        raise ModelFileError(source, f"{source!r} has no arrays named {unknown}")
    return wanted


def _checked_members(
    source: str, zf: zipfile.ZipFile, file_size: int
) -> dict[str, zipfile.ZipInfo]:
    """The archive's members by name, each one of the format's: refuses the rest."""
    infos = zf.infolist()
    names = [info.filename for info in infos]
    if MARKER_KEY + _MEMBER_SUFFIX not in names:
        if {"config.json", "metadata.json"} <= set(names):
            raise ModelFileError(
                source,
                f"{source!r} is not a dlcore model file: it looks like a Keras 3 .keras "
                f"file without dlcore's members; open it with dlcore.load_model (pip "
                f"install dlcore[keras-files]), or re-save the model with dlcore "
                f"(model.save())",
            )
        raise ModelFileError(
            source,
            f"{source!r} is not a dlcore model file: it is a zip archive without the dlcore "
            f"format marker",
        )
    if len(set(names)) != len(names):
        duplicated = sorted({name for name in names if names.count(name) > 1})
        raise _not_ours(source, f"the archive holds several members named {duplicated}")
    total = 0
    for info in infos:
        _check_member(source, info, file_size)
        total += info.compress_size
    if total > file_size:
        raise _not_ours(source, f"its members declare {total} bytes, the file has {file_size}")
    return {info.filename: info for info in infos if info.filename not in COMPANIONS}


def _check_member(source: str, info: zipfile.ZipInfo, file_size: int) -> None:
    name = info.filename
    if name not in COMPANIONS and not name.endswith(_MEMBER_SUFFIX):
        raise _not_ours(source, f"the member {name!r} is not a .npy array")
    why = None if name in COMPANIONS else _check_member_name(name[: -len(_MEMBER_SUFFIX)])
    if why is not None:
        raise _not_ours(source, f"the member name {name!r} is not allowed: {why}")
    if info.flag_bits & 0x1:
        raise _not_ours(source, f"the member {name!r} is encrypted")
    if info.compress_type != zipfile.ZIP_STORED:
        raise _not_ours(
            source,
            f"the member {name!r} is compressed (method {info.compress_type}); dlcore "
            f"writes and reads uncompressed members only",
        )
    if info.compress_size != info.file_size or info.header_offset + info.file_size > file_size:
        raise _not_ours(
            source,
            f"the member {name!r} declares {info.file_size} bytes ({info.compress_size} "
            f"stored), which the file of {file_size} bytes cannot hold",
        )


def _member_header(source: str, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> MemberHeader:
    """The member's ``.npy`` header, checked: a plain numeric dtype, and a shape whose
    bytes are exactly the rest of the member."""
    name = info.filename[: -len(_MEMBER_SUFFIX)]
    with _reading(source, info), zf.open(info) as member:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(member)
        elif version == (2, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(member)
        else:
            raise _not_ours(source, f"the array {name!r} has .npy format version {version}")
        offset = member.tell()
    if dtype.hasobject:
        raise _not_ours(
            source,
            f"the array {name!r} holds pickled Python objects, which dlcore never loads "
            f"because unpickling can run arbitrary code",
        )
    if dtype.kind not in "biufc" or dtype.fields is not None or dtype.subdtype is not None:
        raise _not_ours(
            source, f"the array {name!r} has dtype {dtype}; the format holds numeric arrays only"
        )
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise _not_ours(source, f"the array {name!r} declares the shape {shape!r}")
    header = MemberHeader(tuple(shape), dtype, bool(fortran_order), info, offset)
    if header.size * dtype.itemsize != info.file_size - offset:
        raise _not_ours(
            source,
            f"the array {name!r} declares shape {header.shape} of {dtype} "
            f"({header.size * dtype.itemsize} bytes) but holds {info.file_size - offset} bytes",
        )
    return header


def _config_depth(value: Any) -> int:
    """How deeply lists and dicts nest in ``value`` (0 for a scalar), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, depth + 1)
            if deepest > MAX_CONFIG_DEPTH:
                return deepest
            stack.extend((child, depth + 1) for child in item)
    return deepest


def _read_config(
    source: str, zf: zipfile.ZipFile, headers: Mapping[str, MemberHeader]
) -> dict[str, Any]:
    """Check the marker and the format version; the config dict."""
    for key in (VERSION_KEY, CONFIG_KEY):
        if key not in headers:
            raise _not_ours(source, "the format version or the config is missing")
    marker = _read_array(source, zf, headers[MARKER_KEY])
    if marker.dtype != np.uint8 or marker.tobytes() != FORMAT_MARKER:
        raise ModelFileError(
            source,
            f"{source!r} is not a dlcore model file: it is a zip archive without the dlcore "
            f"format marker",
        )
    version_arr = _read_array(source, zf, headers[VERSION_KEY])
    if version_arr.shape != () or version_arr.dtype.kind not in "iu":
        raise _not_ours(
            source,
            f"the format version has shape {version_arr.shape} and dtype {version_arr.dtype}, "
            f"expected an integer scalar",
        )
    version = int(version_arr)
    if version > FORMAT_VERSION:
        raise ModelFileError(
            source,
            f"{source!r} was written by a newer dlcore (format {version}); this version reads "
            f"format {FORMAT_VERSION}; upgrade dlcore",
        )
    if version < 1:
        raise _not_ours(source, f"the format version is {version}")
    text = _read_array(source, zf, headers[CONFIG_KEY])
    if text.dtype != np.uint8 or text.ndim != 1:
        raise _not_ours(source, f"the config is an array of {text.dtype}, not UTF-8 bytes")
    try:
        config = json.loads(text.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _not_ours(source, f"the config is not valid JSON: {type(e).__name__}: {e}") from None
    if not isinstance(config, dict):
        raise _not_ours(source, f"the config is a JSON {type(config).__name__}, not an object")
    if _config_depth(config) > MAX_CONFIG_DEPTH:
        raise _not_ours(source, f"the config nests deeper than {MAX_CONFIG_DEPTH} levels")
    return config


def _read_array(source: str, zf: zipfile.ZipFile, header: MemberHeader) -> np.ndarray:
    """The member's array: its bytes read into an array of the declared shape and dtype,
    in chunks, and checked against the member's CRC."""
    with _reading(source, header.info):
        return _read_array_bytes(source, zf, header)


@contextlib.contextmanager
def _reading(source: str, info: zipfile.ZipInfo) -> Iterator[None]:
    """Turns what zipfile and numpy raise while reading the member into a ModelFileError."""
    try:
        yield
    except ModelFileError:
        raise
    except _READ_ERRORS as e:
        name = info.filename[: -len(_MEMBER_SUFFIX)]
        raise _not_ours(
            source, f"the array {name!r} cannot be read: {type(e).__name__}: {e}"
        ) from None


def _read_array_bytes(source: str, zf: zipfile.ZipFile, header: MemberHeader) -> np.ndarray:
    flat = np.empty(header.size, dtype=header.dtype)
    buffer = flat.view(np.uint8).data
    member: Any
    with zf.open(header.info) as member:
        member.seek(header.data_offset)
        filled = 0
        while filled < len(buffer):
            count = member.readinto(buffer[filled : filled + _READ_CHUNK])
            if not count:
                name = header.info.filename
                raise _not_ours(source, f"the array {name!r} ends after {filled} bytes")
            filled += count
        member.read()  # the end of the member, where zipfile checks its CRC
    return flat.reshape(header.shape, order="F" if header.fortran_order else "C")
