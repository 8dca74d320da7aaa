import io
import json
import os
import zipfile

import numpy as np
import pytest

from dlcore.archive import ModelFileError, read_archive, write_archive

CONFIG = {
    "name": "sequential_1",
    "layers": [{"class_name": "Dense", "config": {"units": 3, "activation": "relu"}}],
    "lr": 0.001,
    "seed": None,
    "text": "naïve ☃",
}


def _arrays():
    rng = np.random.default_rng(0)
    return {
        "dense/W": rng.normal(size=(4, 3)).astype(np.float32),
        "dense/b": rng.normal(size=(3,)),
        "step": np.asarray(17, dtype=np.int64),
        "counts": np.arange(6, dtype=np.int64).reshape(2, 3),
        "empty": np.zeros((0, 5), dtype=np.float32),
        "transposed": rng.normal(size=(3, 5)).T,
        "mask": np.array([True, False]),
    }


def _npz_bytes(members, allow_pickle=False):
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=allow_pickle, **members)
    return buf.getvalue()


def _header(version=1, config=CONFIG):
    return {
        "__dlcore_format__": np.frombuffer(b"dlcore-model", dtype=np.uint8),
        "__dlcore_format_version__": np.asarray(version, dtype=np.int64),
        "__dlcore_config__": np.frombuffer(json.dumps(config).encode(), dtype=np.uint8),
    }


@pytest.mark.parametrize("name", ["m.h5", "m.keras", "m"])
def test_round_trip_keeps_name_config_and_arrays(tmp_path, name):
    arrays = _arrays()
    write_archive(tmp_path / name, CONFIG, arrays)
    assert os.listdir(tmp_path) == [name]
    config, loaded = read_archive(str(tmp_path / name))
    assert config == CONFIG
    assert sorted(loaded) == sorted(arrays)
    for key, value in arrays.items():
        assert loaded[key].dtype == value.dtype and loaded[key].shape == value.shape
        np.testing.assert_array_equal(loaded[key], value)


def test_file_is_a_plain_npz(tmp_path):
    path = tmp_path / "model.h5"
    write_archive(path, CONFIG, {"w": np.ones(3)})
    with np.load(path, allow_pickle=False) as npz:
        assert bytes(npz["__dlcore_format__"]) == b"dlcore-model"
        assert int(npz["__dlcore_format_version__"]) == 1
        assert json.loads(bytes(npz["__dlcore_config__"])) == CONFIG
        np.testing.assert_array_equal(npz["w"], np.ones(3))


def test_reads_an_archive_written_by_numpy_savez(tmp_path):
    path = tmp_path / "m.h5"
    path.write_bytes(_npz_bytes({**_header(), "w": np.arange(3.0)}))
    config, arrays = read_archive(path)
    assert config == CONFIG
    np.testing.assert_array_equal(arrays["w"], [0.0, 1.0, 2.0])


def test_overwrite_replaces_content(tmp_path):
    path = tmp_path / "m.keras"
    write_archive(path, {"v": 1}, {"w": np.zeros(2)})
    write_archive(path, {"v": 2}, {"w": np.ones(2)})
    config, arrays = read_archive(path)
    assert config == {"v": 2}
    np.testing.assert_array_equal(arrays["w"], np.ones(2))
    assert os.listdir(tmp_path) == ["m.keras"]


@pytest.mark.skipif(os.name != "posix", reason="permission bits are POSIX")
def test_permissions_follow_umask(tmp_path):
    umask = os.umask(0o022)
    try:
        write_archive(tmp_path / "m", {}, {})
    finally:
        os.umask(umask)
    assert os.stat(tmp_path / "m").st_mode & 0o777 == 0o644


def test_truncated_file_at_every_length_is_rejected(tmp_path):
    good = tmp_path / "good.h5"
    write_archive(good, CONFIG, {"w": np.arange(12.0).reshape(3, 4)})
    data = good.read_bytes()
    bad = tmp_path / "bad.h5"
    for cut in range(1, len(data), 13):
        bad.write_bytes(data[:cut])
        with pytest.raises(ValueError, match=r"is not a dlcore model file or is corrupted: "):
            read_archive(bad)


def test_damaged_array_data_is_rejected(tmp_path):
    path = tmp_path / "m.h5"
    values = np.full(64, 1.25)
    write_archive(path, {}, {"w": values})
    data = bytearray(path.read_bytes())
    at = data.find(values.tobytes())
    data[at + 100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"is corrupted: the array 'w' cannot be read: .*CRC"):
        read_archive(path)


def test_empty_and_random_files_are_rejected(tmp_path):
    path = tmp_path / "m.h5"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"is not a dlcore model file or is corrupted: .*empty"):
        read_archive(path)
    path.write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(ValueError, match=r"or is corrupted: it is not a zip archive"):
        read_archive(path)


def test_hdf5_file_is_recognised(tmp_path):
    path = tmp_path / "keras_model.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(2000))
    with pytest.raises(ValueError, match=r"looks like a Keras HDF5 file.*re-save the model with"):
        read_archive(path)


def test_zip_without_marker_is_rejected(tmp_path):
    path = tmp_path / "m.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("hello.txt", "hi")
    with pytest.raises(ValueError, match=r"not a dlcore model file: .*without the dlcore format"):
        read_archive(path)
    path.write_bytes(_npz_bytes({"w": np.ones(2)}))
    with pytest.raises(ValueError, match=r"is not a dlcore model file: "):
        read_archive(path)


def test_keras_v3_file_is_recognised(tmp_path):
    path = tmp_path / "m.keras"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("metadata.json", "{}")
        zf.writestr("config.json", "{}")
        zf.writestr("model.weights.h5", b"\x89HDF")
    with pytest.raises(ValueError, match=r"looks like a Keras 3 .keras file"):
        read_archive(path)


def test_future_version_asks_to_upgrade(tmp_path):
    path = tmp_path / "m.h5"
    path.write_bytes(_npz_bytes(_header(version=2)))
    with pytest.raises(
        ValueError,
        match=r"was written by a newer dlcore \(format 2\); this version reads format 1; "
        r"upgrade dlcore",
    ):
        read_archive(path)


def test_bad_header_is_rejected(tmp_path):
    path = tmp_path / "m.h5"
    header = _header()
    header["__dlcore_config__"] = np.frombuffer(b"[1, 2]", dtype=np.uint8)
    path.write_bytes(_npz_bytes(header))
    with pytest.raises(ValueError, match=r"or is corrupted: the config is a JSON list"):
        read_archive(path)
    header["__dlcore_config__"] = np.frombuffer(b"{oops", dtype=np.uint8)
    path.write_bytes(_npz_bytes(header))
    with pytest.raises(ValueError, match=r"or is corrupted: the config is not valid JSON"):
        read_archive(path)
    del header["__dlcore_format_version__"]
    path.write_bytes(_npz_bytes(header))
    with pytest.raises(ValueError, match=r"format version or the config is missing"):
        read_archive(path)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.h5"
    with pytest.raises(FileNotFoundError, match=r"no model file at .*nope\.h5"):
        read_archive(path)


class _RunsCodeWhenUnpickled:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


@pytest.mark.parametrize("with_header", [True, False])
def test_loading_never_unpickles(tmp_path, with_header):
    witness = tmp_path / "unpickled"
    evil = np.empty(1, dtype=object)
    evil[0] = _RunsCodeWhenUnpickled(str(witness))
    members = {**(_header() if with_header else {}), "evil": evil}
    path = tmp_path / "m.h5"
    path.write_bytes(_npz_bytes(members, allow_pickle=True))
    pattern = r"holds pickled Python objects" if with_header else r"is not a dlcore model file"
    with pytest.raises(ValueError, match=pattern):
        read_archive(path)
    assert not witness.exists()


def test_failed_write_keeps_existing_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "m.h5"
    write_archive(path, CONFIG, {"w": np.ones(3)})
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"array 'bad' has dtype object; .*numeric arrays only"):
        write_archive(path, {"new": True}, {"w": np.zeros(3), "bad": np.array([None, 1])})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.h5"]


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_crash_in_the_middle_of_writing_keeps_existing_file(tmp_path, monkeypatch, error):
    path = tmp_path / "m"
    write_archive(path, CONFIG, {"w": np.ones(3)})
    before = path.read_bytes()
    real_write_array = np.lib.format.write_array
    calls = []

    def failing_write_array(fp, array, *args, **kwargs):
        calls.append(1)
        if len(calls) == 5:  # after the header and one user array are in the temp file
            raise error
        real_write_array(fp, array, *args, **kwargs)

    monkeypatch.setattr(np.lib.format, "write_array", failing_write_array)
    with pytest.raises(type(error)):
        write_archive(path, {"new": True}, {"a": np.zeros(100), "b": np.zeros(100)})
    assert len(calls) == 5
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m"]


def test_missing_directory_is_reported_before_writing(tmp_path):
    target = tmp_path / "no_such_dir" / "m.h5"
    with pytest.raises(FileNotFoundError, match=r"the directory .*no_such_dir' does not exist"):
        write_archive(target, CONFIG, {})
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "config, arrays, pattern",
    [
        ({"x": object()}, {}, r"config is not JSON-serialisable"),
        ([1, 2], {}, r"expected config to be a dict, received list"),
        ({}, {"__dlcore_config__": np.ones(1)}, r"name '__dlcore_config__' is reserved"),
        ({}, {1: np.ones(1)}, r"non-empty strings, received 1"),
        ({}, {"s": np.array(["a"])}, r"array 's' has dtype <U1"),
        ({}, [np.ones(1)], r"expected arrays to be a dict"),
    ],
)
def test_write_rejects_bad_input(tmp_path, config, arrays, pattern):
    with pytest.raises(ValueError, match=pattern):
        write_archive(tmp_path / "m.h5", config, arrays)
    assert os.listdir(tmp_path) == []


def test_directory_paths_are_rejected(tmp_path):
    with pytest.raises(IsADirectoryError, match=r"it is a directory"):
        write_archive(tmp_path, {}, {})
    with pytest.raises(IsADirectoryError, match=r"it is a directory"):
        read_archive(tmp_path)


COMPANIONS = {
    "metadata.json": b'{"keras_version": "3.15.1"}',
    "config.json": b'{"class_name": "Sequential"}',
    "model.weights.h5": b"\x89HDF\r\n\x1a\n not read by dlcore",
}


def test_companion_members_are_stored_beside_and_never_read(tmp_path):
    path = tmp_path / "both.keras"
    write_archive(path, CONFIG, _arrays(), COMPANIONS)
    with zipfile.ZipFile(path) as zf:
        assert {n: zf.read(n) for n in COMPANIONS} == COMPANIONS
        assert all(zf.getinfo(n).compress_type == zipfile.ZIP_STORED for n in COMPANIONS)
    config, arrays = read_archive(path)
    assert config == CONFIG and set(arrays) == set(_arrays())


def test_an_unknown_companion_is_refused_before_writing(tmp_path):
    with pytest.raises(ValueError, match=r"companion members \['evil\.py'\] are not among"):
        write_archive(tmp_path / "m.keras", CONFIG, _arrays(), {"evil.py": b"print(1)"})
    assert not (tmp_path / "m.keras").exists()


def test_a_compressed_companion_is_refused(tmp_path):
    path = tmp_path / "both.keras"
    write_archive(path, CONFIG, _arrays(), COMPANIONS)
    with zipfile.ZipFile(path) as zf:
        members = {info: zf.read(info) for info in zf.infolist()}
    with zipfile.ZipFile(path, "w") as zf:
        for info, data in members.items():
            compression = zipfile.ZIP_DEFLATED if info.filename == "config.json" else None
            zf.writestr(info.filename, data, compress_type=compression or zipfile.ZIP_STORED)
    with pytest.raises(ModelFileError, match=r"the member 'config\.json' is compressed"):
        read_archive(path)
