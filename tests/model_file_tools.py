"""Helpers of the model-file tests: a small trained model, its file taken apart into raw
members and put back together (with damaged or crafted members), and model equality."""

from __future__ import annotations

import io
import json
import os
import warnings
import zipfile
from collections.abc import Mapping

import numpy as np

from dlcore import archive
from dlcore.layers import Dense
from dlcore.models import Sequential
from dlcore.optimizers import Adam


def trained_model(hidden: int = 5, seed: int = 3, optimizer=None) -> Sequential:
    """A small Sequential trained for one epoch, so that its optimizer has state."""
    rng = np.random.default_rng(seed)
    model = Sequential(
        [Dense(hidden, activation="relu", input_shape=(4,)), Dense(3, activation="softmax")]
    )
    model.compile(optimizer=optimizer or Adam(0.01), loss="categorical_crossentropy")
    x = rng.normal(size=(16, 4)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, size=16)]
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    return model


def npy_bytes(array: np.ndarray) -> bytes:
    """``array`` as a ``.npy`` file's bytes (any dtype numpy can write without pickling)."""
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


def npy_with_header(header: str, data: bytes = b"") -> bytes:
    """A ``.npy`` member with a hand-written header dict (version 1.0), then ``data``."""
    text = header.encode("latin1")
    text += b" " * (-(len(text) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text + data


def read_members(path: str | os.PathLike) -> dict[str, bytes]:
    """The raw members of a zip archive, by name."""
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def write_members(
    path: str | os.PathLike,
    members: Mapping[str, bytes],
    compression: Mapping[str, int] | None = None,
) -> None:
    """A zip archive of ``members`` (stored, unless ``compression`` names a method);
    names that zipfile makes equal (it cuts a name at NUL) give duplicated members."""
    with zipfile.ZipFile(path, "w") as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Duplicate name"
        for name, data in members.items():
            method = (compression or {}).get(name, zipfile.ZIP_STORED)
            zf.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data, method)


def config_bytes(config: dict) -> bytes:
    """The config member for ``config``."""
    return npy_bytes(np.frombuffer(json.dumps(config).encode(), dtype=np.uint8))


def file_config(path: str | os.PathLike) -> dict:
    """The config a valid model file holds."""
    return archive.read_archive(path)[0]


def central_directory_offset(data: bytes, member: str) -> int:
    """Where the central-directory entry of ``member`` starts in an archive's bytes."""
    at = 0
    while True:
        at = data.index(b"PK\x01\x02", at)
        name_length = int.from_bytes(data[at + 28 : at + 30], "little")
        if data[at + 46 : at + 46 + name_length] == member.encode():
            return at
        at += 4


def model_state(model) -> tuple[dict, list[np.ndarray], dict[str, np.ndarray]]:
    """What a saved model must give back: architecture, weights, optimizer state."""
    optimizer = model.optimizer
    state = optimizer.get_state() if optimizer is not None and optimizer.built else {}
    return model.get_config(), model.get_weights(), state


def same_model(a, b) -> bool:
    """Whether two models have equal architecture, weights and optimizer state."""
    config_a, weights_a, state_a = model_state(a)
    config_b, weights_b, state_b = model_state(b)
    return (
        config_a == config_b
        and len(weights_a) == len(weights_b)
        and all(np.array_equal(x, y) for x, y in zip(weights_a, weights_b))
        and state_a.keys() == state_b.keys()
        and all(np.array_equal(state_a[k], state_b[k]) for k in state_a)
    )
