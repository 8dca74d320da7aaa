"""Fuzzing ``load_model`` with damaged and crafted model files.

The property, for every file the strategies make from a saved model: ``load_model``
either returns a model equal (architecture, weights, optimizer state) to one that
was saved, or raises ``ModelFileError`` naming the file; its peak memory
(tracemalloc) stays under a small multiple of the valid file's contents; and it
writes nothing, anywhere in the test's temporary directory (the working directory
included).

The CI budget is fixed and derandomized (profile ``dlcore-ci``, about a minute for the
module); ``make fuzz`` sets ``FUZZ_EXAMPLES`` (profile ``dlcore-fuzz``: that many
random examples per test).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import os
import tempfile
import tracemalloc
import zipfile
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from model_file_tools import (
    central_directory_offset,
    config_bytes,
    npy_bytes,
    npy_with_header,
    read_members,
    same_model,
    trained_model,
    write_members,
)

import dlcore
from dlcore.models import load_model

_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
# every phase but "explain", which reprints the large drawn values
_PHASES = [Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink]
settings.register_profile(
    "dlcore-ci",
    max_examples=400,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=_SLOW_OK,
    phases=_PHASES,
)
settings.register_profile(
    "dlcore-fuzz",
    max_examples=int(os.environ.get("FUZZ_EXAMPLES") or 1000),
    deadline=None,
    database=None,
    suppress_health_check=_SLOW_OK,
    phases=_PHASES,
    print_blob=True,
)
PROFILE = settings.get_profile("dlcore-fuzz" if os.environ.get("FUZZ_EXAMPLES") else "dlcore-ci")
# Peak memory of a load may reach this many times the valid file's bytes, plus a
# constant for the interpreter's own objects (modules, the engine, the parsed config).
MEMORY_FACTOR = 12
MEMORY_CONSTANT = 4 * 2**20
NAME = "model.dlcore"


@functools.lru_cache(maxsize=1)
def pristine() -> tuple[Any, bytes]:
    """The saved model (about 32,000 parameters, with Adam's state) and its file."""
    model = trained_model(hidden=4000)
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, NAME)
        model.save(path)
        with open(path, "rb") as f:
            return model, f.read()


@dataclasses.dataclass(frozen=True)
class Case:
    """A file to load, and how it was made (what hypothesis prints for a failing one)."""

    how: str
    data: bytes = dataclasses.field(repr=False)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(f"Case({self.how!r})")  # hypothesis's printer would show the bytes


def memory_limit() -> int:
    return MEMORY_FACTOR * len(pristine()[1]) + MEMORY_CONSTANT


def files_under(root: str) -> dict[str, tuple[int, int]]:
    found = {}
    for folder, _, names in os.walk(root):
        for name in names:
            stat = os.stat(os.path.join(folder, name))
            found[os.path.join(folder, name)] = (stat.st_size, stat.st_mtime_ns)
    return found


def check_load(case: Case, accept: Callable[[Any], bool] | None = None) -> None:
    """Load ``case.data`` as a model file and check the property (see the module's docstring).

    ``accept`` judges a model that loaded; by default it must equal the saved one.
    """
    with tempfile.TemporaryDirectory() as root:
        os.mkdir(os.path.join(root, "cwd"))
        path = os.path.join(root, NAME)
        with open(path, "wb") as f:
            f.write(case.data)
        before = files_under(root)
        previous = os.getcwd()
        os.chdir(os.path.join(root, "cwd"))
        tracemalloc.start()
        try:
            model = load_model(path)
        except dlcore.ModelFileError as error:
            model = None
            assert path in str(error)
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            os.chdir(previous)
        assert files_under(root) == before
    assert peak < memory_limit(), f"peak {peak} bytes for a {len(case.data)}-byte file"
    if model is not None:
        assert (accept or (lambda m: same_model(m, pristine()[0])))(model)


def matches_its_file(case: Case) -> Callable[[Any], bool]:
    """For an edited file that is still a valid one (a member copied over another, a
    header rewritten with valid values): the model holds exactly the file's arrays."""

    def accept(model: Any) -> bool:
        with np.load(io.BytesIO(case.data), allow_pickle=False) as arrays:
            state = model.optimizer.get_state() if model.optimizer is not None else {}
            return np.array_equal(
                np.concatenate([w.ravel() for w in model.get_weights()]), arrays["params"]
            ) and all(np.array_equal(value, arrays[f"optimizer/{k}"]) for k, value in state.items())

    return accept


def members() -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, NAME)
        with open(path, "wb") as f:
            f.write(pristine()[1])
        return read_members(path)


def zipped(entries: dict[str, bytes], compression: dict[str, int] | None = None) -> bytes:
    buffer = io.BytesIO()
    write_members(buffer, entries, compression)
    return buffer.getvalue()


# ---------------------------------------------------------------- raw damage
@st.composite
def damaged_bytes(draw: st.DrawFn) -> Case:
    """The file with bits flipped, bytes overwritten, cut or spliced."""
    data = bytearray(pristine()[1])
    kind = draw(st.sampled_from(["flip", "overwrite", "truncate", "splice"]))
    if kind == "flip":
        flips = draw(
            st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(0, 7)), min_size=1)
        )
        for at, bit in flips:
            data[at] ^= 1 << bit
        how = f"bits flipped (byte, bit): {flips}"
    elif kind == "overwrite":
        at = draw(st.integers(0, len(data) - 1))
        chunk = draw(st.binary(min_size=1, max_size=64))
        data[at : at + len(chunk)] = chunk
        how = f"{chunk!r} written at {at}"
    elif kind == "truncate":
        at = draw(st.integers(0, len(data) - 1))
        del data[at:]
        how = f"cut at {at}"
    else:
        at = draw(st.integers(0, len(data)))
        chunk = draw(st.binary(min_size=1, max_size=64))
        data[at:at] = chunk
        how = f"{chunk!r} inserted at {at}"
    return Case(how, bytes(data))


@PROFILE
@given(damaged_bytes())
def test_damaged_files_load_equal_or_raise_model_file_error(case):
    check_load(case)


@PROFILE
@given(st.sampled_from(["flag", "method"]), st.integers(0, 7), st.integers(0, 4))
def test_damaged_zip_directory_fields(field, bit, which):
    data = bytearray(pristine()[1])
    name = sorted(members())[which]
    at = central_directory_offset(bytes(data), name) + (8 if field == "flag" else 10)
    data[at] ^= 1 << bit
    check_load(Case(f"bit {bit} of the {field} of {name!r} flipped", bytes(data)))


# ---------------------------------------------------------------- member edits
TRAVERSAL_NAMES = [
    "../evil.npy",
    "../../etc/passwd.npy",
    "/tmp/evil.npy",
    "a/../../evil.npy",
    "C:\\evil.npy",
    "..\\evil.npy",
    "params.npy/../x.npy",
    "./params.npy",
    "params",
    "params.npy\x00.txt",
    "",
]


@st.composite
def edited_archives(draw: st.DrawFn) -> Case:
    """The file's members dropped, renamed (path traversal included), replaced with
    random bytes, duplicated, compressed or joined by extra ones."""
    entries = members()
    names = sorted(entries)
    compression: dict[str, int] = {}
    edits = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["drop", "rename", "random", "copy", "compress", "add"]))
        name = draw(st.sampled_from(names))
        if name not in entries:
            continue
        edits.append((kind, name))
        if kind == "drop":
            del entries[name]
        elif kind == "rename":
            new = draw(st.sampled_from(TRAVERSAL_NAMES) | st.text(max_size=20))
            entries[new] = entries.pop(name)
            edits.append(("to", new))
        elif kind == "random":
            entries[name] = draw(st.binary(max_size=256))
        elif kind == "copy":
            entries[draw(st.sampled_from(names))] = entries[name]
        elif kind == "compress":
            compression[name] = draw(st.sampled_from([zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2]))
        else:
            added = draw(st.sampled_from(TRAVERSAL_NAMES + ["extra.npy", "optimizer/x.npy"]))
            entries[added] = npy_bytes(np.zeros(draw(st.integers(0, 64)), dtype=np.float32))
            edits.append(("as", added))
    return Case(f"members edited: {edits}", zipped(entries, compression))


@PROFILE
@given(edited_archives())
def test_edited_members_load_as_their_file_says_or_raise_model_file_error(case):
    check_load(case, accept=matches_its_file(case))


@functools.cache
def zip_bomb(name: str) -> bytes:
    """The file with the member ``name`` (an extra one, or one of the format's) holding
    an array that inflates to 64 MiB from about 64 KB."""
    entries = members()
    entries[name] = npy_bytes(np.zeros(2**24, dtype=np.float32))
    return zipped(entries, {name: zipfile.ZIP_DEFLATED})


@PROFILE
@given(st.sampled_from(["bomb.npy", "params.npy", "optimizer/m.npy", "../bomb.npy"]))
def test_zip_bombs_are_refused_before_inflating(name):
    check_load(Case(f"zip bomb as {name!r}", zip_bomb(name)))


# ---------------------------------------------------------------- crafted .npy headers
DESCRS = ["'<f4'", "'>f4'", "'<f8'", "'<f2'", "'<i8'", "'|b1'", "'<c8'", "'|O'", "'<U4'"]
DESCRS += ["'|V4'", "'<m8[s]'", "'<M8[D]'", "[('a', '<f4')]", "('<f4', (2,))", "'x'", "None"]


@st.composite
def crafted_headers(draw: st.DrawFn) -> Case:
    """A member replaced by one with a hand-written header: any dtype, any declared
    shape (huge, negative, bools, nested), and some data."""
    entries = members()
    name = draw(st.sampled_from(sorted(entries)))
    dims = st.one_of(
        st.integers(-2, 50_000),
        st.sampled_from([10**12, 2**63, 6000 * 20000, True, False]),
        st.just("(1,)"),
    )
    shape = draw(st.lists(dims, max_size=3))
    shape_text = "(" + "".join(f"{d}," for d in shape) + ")"
    descr = draw(st.sampled_from(DESCRS))
    fortran = draw(st.booleans())
    header = f"{{'descr': {descr}, 'fortran_order': {fortran}, 'shape': {shape_text}, }}"
    body = draw(st.sampled_from([b"", bytes(8), bytes(4 * 32003)]) | st.binary(max_size=64))
    entries[name] = npy_with_header(header, body)
    return Case(f"{name!r} with header {header} and {len(body)} bytes", zipped(entries))


@PROFILE
@given(crafted_headers())
def test_crafted_headers_load_as_their_file_says_or_raise_model_file_error(case):
    check_load(case, accept=matches_its_file(case))


# ---------------------------------------------------------------- crafted JSON
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats()
    | st.text(max_size=8)
    | st.sampled_from([10**6, 10**9, 6000, 20000, "float64", "float16", "Dense", "relu"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)


def paths_into(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path of keys and indices into a JSON value."""
    found = [prefix]
    items = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else []
    )
    for key, child in items:
        found += paths_into(child, (*prefix, key))
    return found


def replaced(value: Any, path: tuple, new: Any) -> Any:
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = replaced(value[path[0]], path[1:], new)
    return copy


@st.composite
def crafted_configs(draw: st.DrawFn) -> Case:
    """The config with one value replaced by random JSON (huge widths, wrong types,
    deep nesting), the arrays as saved."""
    entries = members()
    config = json.loads(np.load(io.BytesIO(entries["__dlcore_config__.npy"])).tobytes())
    path = draw(st.sampled_from(paths_into(config)[1:]))
    deep = draw(st.integers(0, 3)) == 0
    new = json.loads("[" * 200 + "]" * 200) if deep else draw(json_values)
    config = replaced(config, path, new)
    entries["__dlcore_config__.npy"] = config_bytes(config)
    what = "200 nested lists" if deep else repr(new)
    return Case(f"config at {list(path)} set to {what}", zipped(entries))


def consistent_with_file(model: Any) -> bool:
    """A model loaded from an edited config: the saved weights and optimizer state, and
    it saves and loads back equal to itself."""
    saved = pristine()[0]
    weights_equal = all(
        np.array_equal(a, b) for a, b in zip(model.get_weights(), saved.get_weights())
    )
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, NAME)
        model.save(path)
        return weights_equal and same_model(load_model(path), model)


@PROFILE
@given(crafted_configs())
def test_crafted_configs_load_consistently_or_raise_model_file_error(case):
    check_load(case, accept=consistent_with_file)


# ---------------------------------------------------------------- optimizer state values
@st.composite
def crafted_state(draw: st.DrawFn) -> Case:
    """An optimizer slot replaced by an array of any dtype and any values (NaN,
    infinities, negatives)."""
    entries = members()
    slot = draw(st.sampled_from(["m", "v", "iterations"]))
    size = 32003 if slot != "iterations" else 1
    dtype = draw(st.sampled_from(["<f4", "<f8", ">f4", "<f2", "<i4", "|b1", "<c8", "<u8"]))
    value = draw(st.sampled_from([0.0, 1.0, -1.0, np.nan, np.inf, -np.inf, 1e-30, 2.0**70]))
    with np.errstate(all="ignore"):
        array = np.full(size, value).astype(dtype)
    if slot == "iterations":
        array = array.reshape(())
    entries[f"optimizer/{slot}.npy"] = npy_bytes(array)
    return Case(f"optimizer slot {slot!r} full of {value!r} as {dtype}", zipped(entries))


def state_is_sound(model: Any) -> bool:
    state = model.optimizer.get_state()
    return (
        all(np.all(np.isfinite(state[k])) and state[k].dtype.kind == "f" for k in ("m", "v"))
        and bool(np.all(state["v"] >= 0))
        and int(state["iterations"]) >= 0
    )


@PROFILE
@given(crafted_state())
def test_crafted_optimizer_state_is_checked(case):
    check_load(case, accept=state_is_sound)


def test_the_profile_is_derandomized_in_ci():
    if os.environ.get("FUZZ_EXAMPLES"):
        pytest.skip("a long fuzzing run (make fuzz) is random by design")
    assert PROFILE.derandomize and PROFILE.database is None
