"""Damaged and crafted model files: ``load_model`` and ``load_weights`` raise
``ModelFileError`` naming the file, check sizes before allocating anything, check the
optimizer's state, and saves remove the temporary files that crashed saves left."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
import zipfile

import numpy as np
import pytest
from model_file_tools import (
    central_directory_offset,
    config_bytes,
    file_config,
    npy_bytes,
    npy_with_header,
    read_members,
    same_model,
    trained_model,
    write_members,
)

import dlcore
from dlcore import archive, saving
from dlcore.models import load_model
from dlcore.optimizers import Adam, LossScaleOptimizer

PARAMS = "params.npy"
CONFIG = "__dlcore_config__.npy"


@pytest.fixture
def saved(tmp_path):
    """A trained model and the file it was saved to."""
    model = trained_model()
    path = tmp_path / "model.dlcore"
    model.save(path)
    return model, path


def assert_refused(path, pattern: str = "", loader=load_model) -> dlcore.ModelFileError:
    with pytest.raises(dlcore.ModelFileError, match=pattern) as caught:
        loader(path)
    assert str(path) in str(caught.value)
    assert caught.value.path == os.fspath(path)
    return caught.value


def peak_bytes_of(call) -> int:
    tracemalloc.start()
    try:
        call()
    except dlcore.ModelFileError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_model_file_error_is_exported_and_a_value_error():
    assert dlcore.ModelFileError is saving.ModelFileError is archive.ModelFileError
    assert issubclass(dlcore.ModelFileError, ValueError)


def test_a_valid_file_still_loads_equal(saved):
    model, path = saved
    assert same_model(load_model(path), model)


# ---------------------------------------------------------------- one exception type
def flip(path, at: int, bit: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 1 << bit
    path.write_bytes(bytes(data))


def test_a_flipped_bit_in_the_compression_method_is_a_model_file_error(saved):
    _, path = saved
    flip(path, central_directory_offset(path.read_bytes(), PARAMS) + 10)  # was NotImplementedError
    assert_refused(path, r"compressed \(method 1\)")


def test_a_member_flagged_encrypted_is_a_model_file_error(saved):
    _, path = saved
    flip(path, central_directory_offset(path.read_bytes(), PARAMS) + 8)  # was RuntimeError
    assert_refused(path, r"the member 'params\.npy' is encrypted")


def test_a_header_declaring_a_huge_array_is_refused_before_allocating(saved):
    _, path = saved
    members = read_members(path)
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000,), }"
    members[PARAMS] = npy_with_header(header, bytes(64))  # was MemoryError
    write_members(path, members)
    assert peak_bytes_of(lambda: assert_refused(path, r"declares shape \(1000000000000,\)")) < 2**20


def test_deeply_nested_json_is_a_model_file_error(saved):
    _, path = saved
    members = read_members(path)
    text = '{"model": ' + "[" * 100_000 + "]" * 100_000 + "}"
    members[CONFIG] = npy_bytes(np.frombuffer(text.encode(), dtype=np.uint8))  # RecursionError
    write_members(path, members)
    assert_refused(path, r"config is not valid JSON: RecursionError")


def test_json_nested_past_the_limit_is_refused(saved):
    _, path = saved
    members = read_members(path)
    config = file_config(path)
    config["deep"] = json.loads("[" * 70 + "]" * 70)
    members[CONFIG] = config_bytes(config)
    write_members(path, members)
    assert_refused(path, r"nests deeper than 64 levels")


def test_a_boolean_shape_is_a_model_file_error(saved):
    _, path = saved
    members = read_members(path)
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (True,), }"
    members[PARAMS] = npy_with_header(header, bytes(4))  # was TypeError
    write_members(path, members)
    assert_refused(path, r"declares the shape \(True,\)")


def test_a_member_that_is_not_an_array_is_a_model_file_error(saved):
    _, path = saved
    members = read_members(path)
    members["notes.txt"] = b"hello"  # was AttributeError: 'bytes' object has no attribute 'shape'
    write_members(path, members)
    assert_refused(path, r"the member 'notes\.txt' is not a \.npy array")


@pytest.mark.parametrize(
    "name",
    ["../evil.npy", "/abs.npy", "a/../../evil.npy", "a\\..\\evil.npy", "./x.npy", "a//b.npy"],
)
def test_member_names_that_leave_the_archive_are_refused(saved, name):
    _, path = saved
    members = read_members(path)
    members[name] = npy_bytes(np.zeros(3, dtype=np.float32))
    write_members(path, members)
    before = sorted(os.listdir(path.parent.parent))
    assert_refused(path, r"is not allowed")
    assert sorted(os.listdir(path.parent.parent)) == before


def test_an_unknown_array_member_is_refused(saved):
    _, path = saved
    members = read_members(path)
    members["extra.npy"] = npy_bytes(np.zeros(3, dtype=np.float32))
    write_members(path, members)
    assert_refused(path, r"the array 'extra' is not part of a dlcore model file")


def test_a_duplicated_member_is_refused(saved):
    _, path = saved
    members = read_members(path)
    with zipfile.ZipFile(path, "a") as zf, pytest.warns(UserWarning, match="Duplicate name"):
        zf.writestr(PARAMS, members[PARAMS])
    assert_refused(path, r"several members named \['params\.npy'\]")


def test_a_header_that_disagrees_with_the_member_size_is_refused(saved):
    _, path = saved
    members = read_members(path)
    members[PARAMS] = members[PARAMS] + bytes(8)
    write_members(path, members)
    assert_refused(path, r"declares shape .* but holds")


@pytest.mark.parametrize("descr", ["'|O'", "'<U3'", "'|V8'", "'<m8[s]'", "[('a', '<f4')]"])
def test_non_numeric_dtypes_are_refused(saved, descr):
    _, path = saved
    members = read_members(path)
    members[PARAMS] = npy_with_header(
        f"{{'descr': {descr}, 'fortran_order': False, 'shape': (0,), }}"
    )
    write_members(path, members)
    assert_refused(path, r"pickled Python objects|the format holds numeric arrays only")


# ---------------------------------------------------------------- sizes before allocation
def big_architecture_file(path, saved_path) -> None:
    """The issue's 3.6 KB file: a 6000 -> 20000 -> 3 model with the small model's arrays."""
    config = file_config(saved_path)
    config["model"]["input_features"] = 6000
    config["model"]["layers"][0]["config"].update(units=20000, input_shape=[6000])
    config["model"]["layers"][1]["config"]["input_shape"] = [20000]
    members = read_members(saved_path)
    members[CONFIG] = config_bytes(config)
    write_members(path, members)


def test_a_small_file_declaring_a_huge_layer_takes_no_memory(saved, tmp_path):
    _, saved_path = saved
    path = tmp_path / "big.keras"
    big_architecture_file(path, saved_path)
    assert path.stat().st_size < 8000
    # 1.4 GB and 4.5 s of initializers before the fix
    peak = peak_bytes_of(lambda: assert_refused(path, r"holds 43 parameters .* needs 120080003"))
    assert peak < 2**20


def test_load_weights_checks_shapes_before_reading(saved, tmp_path):
    model, saved_path = saved
    path = tmp_path / "big.keras"
    big_architecture_file(path, saved_path)
    before = model.get_weights()
    peak = peak_bytes_of(lambda: assert_refused(path, r"have shapes", loader=model.load_weights))
    assert peak < 2**20
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def test_a_zip_bomb_is_refused_without_inflating(saved):
    _, path = saved
    members = read_members(path)
    members["bomb.npy"] = npy_bytes(np.zeros(2**24, dtype=np.float32))  # 64 MiB of zeros
    write_members(path, members, compression={"bomb.npy": zipfile.ZIP_DEFLATED})
    assert path.stat().st_size < 2**20
    assert peak_bytes_of(lambda: assert_refused(path, r"compressed \(method 8\)")) < 2**20


def test_compressed_members_are_refused_even_when_small(saved):
    _, path = saved
    write_members(path, read_members(path), compression={PARAMS: zipfile.ZIP_DEFLATED})
    assert_refused(path, r"the member 'params\.npy' is compressed")


# ---------------------------------------------------------------- optimizer state
def with_state_entry(path, name: str, array) -> None:
    members = read_members(path)
    members[f"optimizer/{name}.npy"] = npy_bytes(array)
    write_members(path, members)


@pytest.mark.parametrize(
    "slot, make, pattern",
    [
        ("v", lambda v: np.full_like(v, np.nan), r"Adam state slot 'v' expected finite numbers"),
        ("m", lambda v: np.full_like(v, np.inf), r"Adam state slot 'm' expected finite numbers"),
        (
            "v",
            lambda v: -np.ones_like(v),
            r"Adam state slot 'v' expected non-negative numbers, received -1\.0",
        ),
        (
            "v",
            lambda v: np.ones(v.shape, dtype=np.int32),
            r"Adam state slot 'v' expected an array of floats",
        ),
        (
            "m",
            lambda v: np.ones(v.shape, dtype=bool),
            r"Adam state slot 'm' expected an array of floats",
        ),
        ("m", lambda v: v.astype(np.complex64), r"Adam state slot 'm' expected an array of floats"),
        ("v", lambda v: np.full(v.shape, "x"), r"the format holds numeric arrays only"),
        ("v", lambda v: np.zeros(v.shape, "f4,f4"), r"the format holds numeric arrays only"),
        ("v", lambda v: np.zeros(v.shape, "m8[s]"), r"the format holds numeric arrays only"),
    ],
)
def test_bad_adam_state_is_refused(saved, slot, make, pattern):
    model, path = saved
    state = model.optimizer.get_state()
    with_state_entry(path, slot, make(state[slot]))
    assert_refused(path, pattern)
    if "numeric arrays only" not in pattern:  # compile=False reads no optimizer state
        assert same_model(load_model(path, compile=False), load_model_without_optimizer(model))


def load_model_without_optimizer(model):
    """``model``'s architecture and weights, uncompiled, as ``compile=False`` loads them."""
    copy = dlcore.models.model_from_json(model.to_json())
    copy.set_weights(model.get_weights())
    return copy


def test_a_negative_second_moment_no_longer_reaches_the_weights(saved):
    model, path = saved
    state = model.optimizer.get_state()
    with_state_entry(path, "v", -np.abs(state["v"]) - 1)
    assert_refused(path, r"Adam state slot 'v' expected non-negative numbers")


def test_set_state_checks_every_slot_before_changing_anything():
    model = trained_model()
    optimizer, engine = model.optimizer, model.engine
    before = optimizer.get_state()
    bad = dict(before, v=before["v"].copy())
    bad["v"][0] = -1e-3
    with pytest.raises(ValueError, match=r"Adam state slot 'v' expected non-negative numbers"):
        optimizer.set_state(engine, bad, model.dtype)
    after = optimizer.get_state()
    assert all(np.array_equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("scale", [0.0, -2.0, np.nan, np.inf, True])
def test_a_bad_loss_scale_is_refused(tmp_path, scale):
    model = trained_model(optimizer=LossScaleOptimizer(Adam(0.01)))
    path = tmp_path / "scaled.keras"
    model.save(path)
    with_state_entry(path, "loss_scale", np.asarray(scale))
    assert_refused(path, r"LossScaleOptimizer state expected a positive loss_scale")


def test_an_optimizer_entry_the_optimizer_lacks_is_refused(saved):
    _, path = saved
    with_state_entry(path, "velocity", np.zeros(43, dtype=np.float32))
    assert_refused(path, r"unexpected entry 'velocity'")


# ---------------------------------------------------------------- temporary files of crashed saves
def make_temp(directory, target: str, token: str = "0123456789ab") -> str:
    path = os.path.join(directory, f".{target}.{token}.tmp")
    with open(path, "wb") as f:
        f.write(b"half a save")
    return path


def test_a_save_removes_the_temporary_files_crashed_saves_of_its_target_left(tmp_path):
    model = trained_model()
    left = [make_temp(tmp_path, "m.keras", t) for t in ("0123456789ab", "ffffffffffff")]
    others = [
        make_temp(tmp_path, "other.keras"),  # another target's
        make_temp(tmp_path, "m.keras", "0123"),  # not dlcore's pattern
        make_temp(tmp_path, "m.keras", "0123456789AB"),  # not dlcore's pattern
        str(tmp_path / ".m.keras.0123456789ab.tmp.bak"),
    ]
    open(others[-1], "wb").close()
    model.save(tmp_path / "m.keras")
    assert not any(os.path.exists(p) for p in left)
    assert all(os.path.exists(p) for p in others)
    assert same_model(load_model(tmp_path / "m.keras"), model)


@pytest.mark.skipif(sys.platform == "win32", reason="file locks are POSIX here")
def test_a_save_keeps_the_temporary_file_another_process_is_writing(tmp_path):
    model = trained_model()
    busy = make_temp(tmp_path, "m.keras")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDWR)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('locked', flush=True)\n"
            "time.sleep(60)\n",
            busy,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        model.save(tmp_path / "m.keras")
        assert os.path.exists(busy)
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()  # type: ignore[union-attr]
    model.save(tmp_path / "m.keras")
    assert not os.path.exists(busy)
    assert sorted(os.listdir(tmp_path)) == ["m.keras"]


def test_a_header_that_does_not_tokenize_is_a_model_file_error(saved):
    _, path = saved
    members = read_members(path)
    header = (
        "{'descr': '<f4', 'fortran_order': False, 'shape': (43,}"  # a flipped bit, found by fuzzing
    )
    members[PARAMS] = npy_with_header(header, bytes(4 * 43))  # was tokenize.TokenError
    write_members(path, members)
    assert_refused(path, r"the array 'params' cannot be read")
