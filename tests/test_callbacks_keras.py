"""The Keras 3 callbacks ReduceLROnPlateau, LearningRateScheduler, CSVLogger, TensorBoard and
BackupAndRestore, and the progress bar's output when stdout is not a terminal.

Model-level behaviour does not depend on the engine, so these train on the numpy engine.
Keras's own numbers for the learning-rate callbacks: tests/test_keras_parity_callbacks.py.
"""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dlcore
from dlcore.callbacks import (
    BackupAndRestore,
    CallbackList,
    CSVLogger,
    LearningRateScheduler,
    ReduceLROnPlateau,
    TensorBoard,
    progress,
)
from dlcore.layers import Dense
from dlcore.models import Sequential
from dlcore.optimizers import SGD, Adam
from dlcore.saving import ModelFileError

HERE = Path(__file__).parent


@pytest.fixture(autouse=True)
def _numpy_float64():
    with dlcore.use_backend("numpy"):
        dlcore.set_floatx("float64")
        dlcore.set_random_seed(11)
        yield


def _data(n: int = 20):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(n, 4))
    return x, np.eye(3)[rng.integers(0, 3, n)]


def _model(optimizer=None, seed: int = 11) -> Sequential:
    dlcore.set_random_seed(seed)
    model = Sequential([Dense(5, activation="tanh"), Dense(3, activation="softmax")])
    model.build((None, 4))
    model.compile(
        optimizer=optimizer or SGD(learning_rate=0.1),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


class _Model:
    """A stand-in for a model: an optimizer whose learning rate callbacks change."""

    def __init__(self, learning_rate: float = 1.0) -> None:
        self.optimizer = SGD(learning_rate=learning_rate)
        self.stop_training = False
        self.history = None


def _drive(callback, values, *, key="val_loss", learning_rate=1.0):
    """Runs epochs whose monitored value is each of ``values``; returns the logs."""
    model = _Model(learning_rate)
    callbacks = CallbackList([callback], model=model, verbose=0, epochs=len(values))
    callbacks.on_train_begin()
    all_logs = []
    for epoch, value in enumerate(values):
        callbacks.on_epoch_begin(epoch)
        logs = {key: value}
        callbacks.on_epoch_end(epoch, logs)
        all_logs.append(logs)
    callbacks.on_train_end()
    return model, all_logs


# ------------------------------------------------------------------ ReduceLROnPlateau
def _plateau_reference(values, factor, patience, cooldown, min_lr, min_delta, lr):
    """Keras 3's rule written out: the learning rate each epoch trains with."""
    best, wait, cooling, rates = math.inf, 0, 0, []
    for value in values:
        rates.append(lr)
        if cooling > 0:
            cooling -= 1
            wait = 0
        if value < best - min_delta:
            best, wait = value, 0
        elif cooling == 0:
            wait += 1
            if wait >= patience and lr > np.float32(min_lr):
                lr = max(lr * factor, min_lr)
                cooling, wait = cooldown, 0
    return rates, lr


@pytest.mark.parametrize(
    ("patience", "cooldown", "min_lr"), [(0, 0, 0.0), (1, 0, 0.0), (2, 1, 0.05), (1, 2, 0.3)]
)
def test_reduce_lr_on_plateau_follows_the_keras_rule(patience, cooldown, min_lr):
    values = [1.0, 0.9, 0.95, 0.9, 0.89995, 0.91, 0.5, 0.6, 0.7, 0.8, 0.9, 0.4, 0.45, 0.5]
    callback = ReduceLROnPlateau(
        factor=0.5, patience=patience, cooldown=cooldown, min_lr=min_lr, min_delta=1e-4
    )
    model, logs = _drive(callback, values)
    rates, final = _plateau_reference(values, 0.5, patience, cooldown, min_lr, 1e-4, 1.0)
    assert [entry["learning_rate"] for entry in logs] == rates
    assert model.optimizer.learning_rate == final
    assert len(set(rates)) > 1  # the case does reduce


def test_reduce_lr_on_plateau_max_mode_and_verbose(capsys):
    callback = ReduceLROnPlateau(monitor="val_accuracy", factor=0.25, patience=1, verbose=1)
    model, logs = _drive(callback, [0.5, 0.6, 0.6, 0.7, 0.65], key="val_accuracy")
    assert [entry["learning_rate"] for entry in logs] == [1.0, 1.0, 1.0, 0.25, 0.25]
    assert model.optimizer.learning_rate == 0.0625
    out = capsys.readouterr().out
    assert out == (
        "\nEpoch 3: ReduceLROnPlateau reducing learning rate to 0.25.\n"
        "\nEpoch 5: ReduceLROnPlateau reducing learning rate to 0.0625.\n"
    )


def test_reduce_lr_on_plateau_warns_on_a_missing_monitor():
    with pytest.warns(UserWarning, match="'val_loss', which is not available; available"):
        model, logs = _drive(ReduceLROnPlateau(patience=0), [1.0], key="loss")
    assert logs[0]["learning_rate"] == 1.0


def test_reduce_lr_on_plateau_in_fit_logs_the_learning_rate():
    model = _model()
    x, y = _data()
    history = model.fit(
        x,
        y,
        epochs=6,
        batch_size=5,
        verbose=0,
        shuffle=False,
        validation_split=0.25,
        callbacks=[ReduceLROnPlateau(monitor="loss", mode="max", factor=0.5, patience=0)],
    )
    # mode="max" on a falling loss: every epoch but the first is a stall
    assert history.history["learning_rate"] == [0.1, 0.1, 0.05, 0.025, 0.0125, 0.00625]
    assert model.optimizer.learning_rate == 0.003125


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"factor": 1.0}, ValueError, "does not support a factor >= 1.0, received factor=1.0"),
        ({"factor": 0.0}, ValueError, r"factor to be in \(0, 1\)"),
        ({"factor": "0.5"}, TypeError, "factor to be a number"),
        ({"patience": -1}, ValueError, "patience to be an integer >= 0"),
        ({"cooldown": 1.5}, ValueError, "cooldown to be an integer >= 0"),
        ({"min_lr": -0.1}, ValueError, "min_lr >= 0"),
        ({"mode": "up"}, ValueError, "mode to be one of"),
        ({"monitor": "val_thing"}, ValueError, "cannot tell whether"),
        ({"monitor": 3}, TypeError, "monitor to be a log name"),
    ],
)
def test_reduce_lr_on_plateau_refuses_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        ReduceLROnPlateau(**kwargs)


# ------------------------------------------------------------------ LearningRateScheduler
def test_learning_rate_scheduler_trains_as_setting_the_rate_by_hand():
    x, y = _data()

    def schedule(epoch, lr):
        return lr if epoch < 1 else lr * 0.5

    scheduled = _model()
    history = scheduled.fit(
        x, y, epochs=4, batch_size=6, shuffle=False, verbose=0,
        callbacks=[LearningRateScheduler(schedule)],
    )  # fmt: skip
    assert history.history["learning_rate"] == [0.1, 0.05, 0.025, 0.0125]
    by_hand = _model()
    losses = []
    for rate in history.history["learning_rate"]:
        by_hand.optimizer.learning_rate = rate
        losses += by_hand.fit(x, y, epochs=1, batch_size=6, shuffle=False, verbose=0).history[
            "loss"
        ]
    assert history.history["loss"] == losses
    for mine, theirs in zip(scheduled.get_weights(), by_hand.get_weights()):
        np.testing.assert_array_equal(mine, theirs)


def test_learning_rate_scheduler_accepts_a_function_of_the_epoch(capsys):
    callback = LearningRateScheduler(lambda epoch: 0.5**epoch, verbose=1)
    model, logs = _drive(callback, [1.0, 1.0, 1.0])
    assert [entry["learning_rate"] for entry in logs] == [1.0, 0.5, 0.25]
    assert "\nEpoch 3: LearningRateScheduler setting learning rate to 0.25.\n" in (
        capsys.readouterr().out
    )


def test_learning_rate_scheduler_errors_inside_the_schedule_propagate():
    def schedule(epoch, lr):
        raise TypeError("a bug in the schedule")

    with pytest.raises(TypeError, match="a bug in the schedule"):
        _drive(LearningRateScheduler(schedule), [1.0])


@pytest.mark.parametrize(
    ("schedule", "error", "message"),
    [
        (0.1, TypeError, "schedule to be a function"),
        (lambda: 0.1, TypeError, r"accept \(epoch, lr\) or \(epoch\), received <lambda>\(\)"),
    ],
)
def test_learning_rate_scheduler_refuses_bad_schedules(schedule, error, message):
    with pytest.raises(error, match=message):
        LearningRateScheduler(schedule)


@pytest.mark.parametrize("result", [1, "0.1", None])
def test_learning_rate_scheduler_refuses_a_result_that_is_not_a_float(result):
    with pytest.raises(ValueError, match="should be a float, received"):
        _drive(LearningRateScheduler(lambda epoch, lr: result), [1.0])


def test_learning_rate_scheduler_refuses_a_negative_rate():
    with pytest.raises(ValueError, match="learning_rate"):
        _drive(LearningRateScheduler(lambda epoch, lr: -0.1), [1.0])


# ------------------------------------------------------------------ CSVLogger
def _read_csv(path: Path, separator: str = ",") -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f, delimiter=separator))


def test_csv_logger_writes_one_row_per_epoch(tmp_path):
    path = tmp_path / "log.csv"
    x, y = _data()
    history = _model().fit(
        x, y, epochs=3, batch_size=5, verbose=0, validation_split=0.25,
        callbacks=[CSVLogger(path, separator=";")],
    )  # fmt: skip
    rows = _read_csv(path, ";")
    keys = sorted(history.history)
    assert rows[0] == ["epoch", *keys]
    assert keys == ["accuracy", "loss", "val_accuracy", "val_loss"]
    assert len(rows) == 4
    for epoch, row in enumerate(rows[1:]):
        assert row[0] == str(epoch)
        assert [float(cell) for cell in row[1:]] == [history.history[k][epoch] for k in keys]


def test_csv_logger_appends_without_a_second_header(tmp_path):
    path = tmp_path / "log.csv"
    x, y = _data()
    model = _model()
    model.fit(x, y, epochs=2, verbose=0, callbacks=[CSVLogger(path)])
    history = model.fit(
        x, y, epochs=4, initial_epoch=2, verbose=0, callbacks=[CSVLogger(path, append=True)]
    )
    rows = _read_csv(path)
    # no val_ logs: Keras adds a val_ column per key, holding NA
    assert rows[0] == ["epoch", "accuracy", "loss", "val_accuracy", "val_loss"]
    assert [row[0] for row in rows[1:]] == ["0", "1", "2", "3"]
    assert [row[3:] for row in rows[1:]] == [["NA", "NA"]] * 4
    assert float(rows[4][2]) == history.history["loss"][1]


def test_csv_logger_append_checks_the_columns(tmp_path):
    path = tmp_path / "log.csv"
    path.write_bytes(b"epoch,loss,mae\r\n0,1.5,2.0\r\n")
    x, y = _data()
    with pytest.raises(ValueError, match=r"its columns are \['epoch', 'loss', 'mae'\] but this"):
        _model().fit(x, y, epochs=1, verbose=0, callbacks=[CSVLogger(path, append=True)])
    assert path.read_bytes() == b"epoch,loss,mae\r\n0,1.5,2.0\r\n"


def test_csv_logger_append_to_a_missing_or_cut_file(tmp_path):
    path = tmp_path / "log.csv"
    x, y = _data()
    model = _model()
    model.fit(x, y, epochs=1, verbose=0, callbacks=[CSVLogger(path, append=True)])
    with open(path, "a") as f:
        f.write("1,0.5")  # a row cut short by a crash
    model.fit(x, y, epochs=2, initial_epoch=1, verbose=0, callbacks=[CSVLogger(path, append=True)])
    rows = _read_csv(path)
    assert rows[0][0] == "epoch" and len(rows) == 4
    assert rows[2] == ["1", "0.5"] and rows[3][0] == "1" and len(rows[3]) == 5


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"filename": 3}, TypeError, "filename to be a str or os.PathLike"),
        ({"filename": "x.csv", "separator": ", "}, ValueError, "separator to be a single"),
        ({"filename": "x.csv", "append": "yes"}, TypeError, "append to be True or False"),
    ],
)
def test_csv_logger_refuses_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        CSVLogger(**kwargs)


# ------------------------------------------------------------------ TensorBoard
def _events(directory: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(directory), size_guidance={"scalars": 0, "histograms": 0})
    accumulator.Reload()
    return accumulator


def test_tensorboard_writes_the_history_and_histograms(tmp_path):
    pytest.importorskip("tensorboard")
    x, y = _data()
    model = _model()
    history = model.fit(
        x, y, epochs=3, batch_size=5, verbose=0, validation_split=0.25,
        callbacks=[TensorBoard(tmp_path, histogram_freq=2, update_freq=2)],
    )  # fmt: skip
    assert sorted(os.listdir(tmp_path)) == ["train", "validation"]
    train, validation = _events(tmp_path / "train"), _events(tmp_path / "validation")
    for board, prefix in ((train, ""), (validation, "val_")):
        for name in ("loss", "accuracy"):
            events = board.Scalars(f"epoch_{name}")
            assert [e.step for e in events] == [0, 1, 2]
            expected = np.float32(history.history[prefix + name])
            np.testing.assert_array_equal(np.float32([e.value for e in events]), expected)
    assert [e.value for e in train.Scalars("epoch_learning_rate")] == [np.float32(0.1)] * 3
    # 3 batches per epoch (15 training samples, batches of 5): every 2nd of 9 batches
    assert [e.step for e in train.Scalars("batch_loss")] == [2, 4, 6, 8]
    evaluation = validation.Scalars("evaluation_loss_vs_iterations")
    assert [e.step for e in evaluation] == [3, 6, 9]
    np.testing.assert_array_equal(
        [e.value for e in evaluation], np.float32(history.history["val_loss"])
    )
    tags = [f"{model.name}/{w.path}/histogram" for w in model.weights]
    assert sorted(train.Tags()["histograms"]) == sorted(tags)
    kernel = model.weights[2].numpy()  # the last layer's kernel, written at epochs 0 and 2
    written = train.Histograms(tags[2])
    assert [h.step for h in written] == [0, 2]
    last = written[-1].histogram_value
    assert last.num == kernel.size and last.max == kernel.max() and last.min == kernel.min()
    assert last.sum == pytest.approx(kernel.sum(), rel=1e-12)
    assert sum(last.bucket) == kernel.size


def test_tensorboard_epoch_update_freq_writes_no_batch_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    x, y = _data()
    board = TensorBoard(tmp_path)
    assert not CallbackList([board], verbose=0).wants_batch_logs
    _model().fit(x, y, epochs=2, verbose=0, callbacks=[board])
    assert os.listdir(tmp_path) == ["train"]
    tags = _events(tmp_path / "train").Tags()
    assert sorted(tags["scalars"]) == ["epoch_accuracy", "epoch_learning_rate", "epoch_loss"]
    assert tags["histograms"] == []


def test_tensorboard_without_the_package_says_how_to_install_it(monkeypatch):
    for name in list(sys.modules):
        if name == "tensorboard" or name.startswith("tensorboard."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(ImportError, match=r"pip install dlcore\[tensorboard\]"):
        TensorBoard("logs")


def test_importing_dlcore_does_not_import_tensorboard():
    code = "import sys, dlcore, dlcore.callbacks; print('tensorboard' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"histogram_freq": -1}, ValueError, "histogram_freq >= 0"),
        ({"histogram_freq": 1.5}, TypeError, "histogram_freq to be an integer"),
        ({"update_freq": 0}, ValueError, "update_freq to be 'epoch', 'batch' or a positive"),
        ({"update_freq": "step"}, ValueError, "received update_freq='step'"),
        ({"profile_batch": 3}, ValueError, "profiling is not supported"),
        ({"embeddings_freq": 1}, ValueError, "no embedding layers"),
        ({"log_dir": 3}, TypeError, "log_dir to be a str"),
    ],
)
def test_tensorboard_refuses_bad_arguments(kwargs, error, message):
    pytest.importorskip("tensorboard")
    with pytest.raises(error, match=message):
        TensorBoard(**kwargs)


# ------------------------------------------------------------------ BackupAndRestore
def _worker(backup_dir: Path, out: Path, mode: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(HERE / "backup_restore_worker.py"), str(backup_dir), str(out), mode],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def test_backup_and_restore_resumes_a_killed_fit_exactly(tmp_path):
    backup = tmp_path / "backup"
    crashed = _worker(backup, tmp_path / "crashed.npz", "crash")
    assert crashed.returncode == 17, crashed.stderr
    assert os.listdir(backup) == ["latest.dlcore"]
    resumed = _worker(backup, tmp_path / "resumed.npz", "resume")
    assert resumed.returncode == 0, resumed.stderr
    plain = _worker(backup, tmp_path / "plain.npz", "plain")
    assert plain.returncode == 0, plain.stderr
    mine, reference = np.load(tmp_path / "resumed.npz"), np.load(tmp_path / "plain.npz")
    assert list(mine["epochs"]) == [3, 4] and list(reference["epochs"]) == [0, 1, 2, 3, 4]
    assert int(mine["iterations"]) == int(reference["iterations"])  # the optimizer's state
    weights = [key for key in reference.files if key.startswith("arr_")]
    assert len(weights) == 4
    for key in weights:
        np.testing.assert_array_equal(mine[key], reference[key])
    assert not backup.exists()  # deleted after the finished fit


def _backup_fit(backup_dir, model=None, epochs=2, **kwargs):
    x, y = _data()
    model = model or _model(Adam(learning_rate=0.01))
    return model, model.fit(
        x, y, epochs=epochs, verbose=0, callbacks=[BackupAndRestore(backup_dir, **kwargs)]
    )


def test_backup_and_restore_keeps_the_backup_when_asked(tmp_path):
    model, history = _backup_fit(tmp_path, delete_checkpoint=False, double_checkpoint=True)
    assert sorted(os.listdir(tmp_path)) == ["latest.dlcore", "previous.dlcore"]
    again = _model(Adam(learning_rate=0.01), seed=3)
    _, resumed = _backup_fit(tmp_path, model=again, epochs=3)
    assert resumed.epoch == [2]
    assert again.optimizer.iterations == 3  # one batch per epoch, restored after 2
    assert not tmp_path.exists()  # the files deleted, then the directory left empty


def test_backup_and_restore_falls_back_to_the_previous_backup(tmp_path):
    _backup_fit(tmp_path, delete_checkpoint=False, double_checkpoint=True)
    (tmp_path / "latest.dlcore").write_bytes(b"PK\x03\x04 broken")
    with pytest.warns(UserWarning, match="resuming from the previous backup"):
        _, history = _backup_fit(tmp_path, epochs=3, double_checkpoint=True)
    assert history.epoch == [1, 2]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("truncate", "is not a dlcore model file or is corrupted"),
        ("foreign", "is not a BackupAndRestore backup"),
        ("other_model", "written by another model: its weight shapes"),
        (
            "other_optimizer",
            "written by another model: its optimizer 'SGD' differ from this model's 'Adam'",
        ),
    ],
)
def test_backup_and_restore_refuses_a_bad_backup(tmp_path, damage, message):
    latest = tmp_path / "latest.dlcore"
    if damage == "truncate":
        _backup_fit(tmp_path, delete_checkpoint=False)
        latest.write_bytes(latest.read_bytes()[:300])
    elif damage == "foreign":
        _model().save(latest)
    elif damage == "other_model":
        other = Sequential([Dense(2, activation="tanh"), Dense(3, activation="softmax")])
        other.build((None, 4))
        other.compile(optimizer=Adam(), loss="categorical_crossentropy")
        _backup_fit(tmp_path, model=other, delete_checkpoint=False)
    else:
        _backup_fit(tmp_path, model=_model(SGD()), delete_checkpoint=False)
    model = _model(Adam(learning_rate=0.01))
    before = model.get_weights()
    with pytest.raises(ModelFileError, match=message) as caught:
        _backup_fit(tmp_path, model=model)
    assert "BackupAndRestore cannot resume from" in str(caught.value)
    assert "Delete the directory" in str(caught.value)
    for mine, theirs in zip(model.get_weights(), before):
        np.testing.assert_array_equal(mine, theirs)  # nothing restored, nothing trained


def test_backup_and_restore_batch_frequency_redoes_the_epoch(tmp_path):
    x, y = _data()
    model = _model(Adam(learning_rate=0.01))
    backup = BackupAndRestore(tmp_path, save_freq=3, delete_checkpoint=False)
    assert CallbackList([backup], verbose=0).wants_batch_logs
    model.fit(x, y, epochs=1, batch_size=5, verbose=0, callbacks=[backup])
    _, history = _backup_fit(tmp_path, epochs=2)
    assert history.epoch == [0, 1]  # the backup came mid-epoch 0: epoch 0 is redone


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backup_dir": ""}, "backup_dir to be the path of a directory"),
        ({"backup_dir": None}, "backup_dir to be the path of a directory"),
        ({"backup_dir": "b", "save_freq": 0}, "save_freq to be 'epoch' or a positive"),
        ({"backup_dir": "b", "save_freq": "batch"}, "received save_freq='batch'"),
    ],
)
def test_backup_and_restore_refuses_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BackupAndRestore(**kwargs)


# ---------------------------------------------------------- ProgbarLogger without a terminal
class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_bar_prints_one_clean_line_per_epoch_without_a_terminal(capsys, monkeypatch):
    pytest.importorskip("tqdm")
    clock = _Clock()
    monkeypatch.setattr(progress, "perf_counter", clock)
    callbacks = CallbackList([], model=_Model(), verbose=1, epochs=2, steps=40)
    assert not sys.stdout.isatty()
    callbacks.on_train_begin()
    for epoch in range(2):
        callbacks.on_epoch_begin(epoch)
        for step in range(40):
            clock.now += 0.5 if step == 0 else 0.002
            callbacks.on_train_batch_begin(step)
            callbacks.on_train_batch_end(step, {"loss": 9.0})
        callbacks.on_epoch_end(epoch, {"loss": 0.25 / (epoch + 1), "accuracy": 0.5})
    callbacks.on_train_end()
    assert capsys.readouterr().out == (
        "Epoch 1/2\n"
        f"40/40 [{'=' * 30}] - 1s 2ms/step - loss: 0.2500 - accuracy: 0.5000\n"
        "Epoch 2/2\n"
        f"40/40 [{'=' * 30}] - 1s 2ms/step - loss: 0.1250 - accuracy: 0.5000\n"
    )


def test_progress_bar_in_a_file_from_a_real_fit(tmp_path):
    pytest.importorskip("tqdm")
    code = (
        "import numpy as np, dlcore\n"
        "from dlcore.layers import Dense\n"
        "from dlcore.models import Sequential\n"
        "dlcore.set_backend('numpy')\n"
        "m = Sequential([Dense(3, activation='softmax')]); m.build((None, 4))\n"
        "m.compile(optimizer='sgd', loss='categorical_crossentropy', metrics=['accuracy'])\n"
        "x = np.random.default_rng(0).normal(size=(40, 4)); y = np.eye(3)[np.arange(40) % 3]\n"
        "m.fit(x, y, batch_size=4, epochs=3, verbose=1)\n"
    )
    out_path = tmp_path / "out.txt"
    with open(out_path, "w") as out:
        subprocess.run([sys.executable, "-c", code], stdout=out, check=True, timeout=300)
    text = out_path.read_text()
    assert "\r" not in text
    lines = text.splitlines()
    assert lines[0::2] == ["Epoch 1/3", "Epoch 2/3", "Epoch 3/3"]
    pattern = r"10/10 \[={30}\] - \d+s \d+[mu]?s/step - loss: \d\.\d{4} - accuracy: \d\.\d{4}"
    assert len(lines) == 6
    for line in lines[1::2]:
        assert __import__("re").fullmatch(pattern, line), line


# ---------------------------------------------------------- optimizers made with a schedule
def _scheduled_model():
    schedules = pytest.importorskip("dlcore.optimizers.schedules")
    decay = schedules.ExponentialDecay(0.1, decay_steps=2, decay_rate=0.5)
    return _model(SGD(learning_rate=decay))


@pytest.mark.parametrize(
    "callback",
    [
        lambda: ReduceLROnPlateau(monitor="loss", mode="max", patience=0),
        lambda: LearningRateScheduler(lambda epoch, lr: lr * 0.5),
    ],
    ids=["ReduceLROnPlateau", "LearningRateScheduler"],
)
def test_learning_rate_callbacks_refuse_an_optimizer_made_with_a_schedule(callback):
    x, y = _data()
    with pytest.raises(TypeError, match="was made with a LearningRateSchedule"):
        _scheduled_model().fit(x, y, epochs=3, verbose=0, callbacks=[callback()])


def test_backup_and_restore_with_a_scheduled_optimizer(tmp_path):
    x, y = _data()
    model = _scheduled_model()
    model.fit(
        x, y, epochs=2, verbose=0, callbacks=[BackupAndRestore(tmp_path, delete_checkpoint=False)]
    )
    again = _scheduled_model()
    history = again.fit(x, y, epochs=3, verbose=0, callbacks=[BackupAndRestore(tmp_path)])
    assert history.epoch == [2]
    assert again.optimizer.iterations == 3
    assert again.optimizer.learning_rate == model.optimizer.schedule(3)
