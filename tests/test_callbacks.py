"""Callbacks and the progress display, driven by a fake model through fit's callback protocol.

The expected stop epochs, saved files and printed lines are worked out by hand
from Keras 3's rules (see each test); the lead's integration tests run them with
the real model.
"""

from __future__ import annotations

import ast
import math
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pytest

import dlcore
import dlcore.callbacks
from dlcore.callbacks import (
    Callback,
    CallbackList,
    EarlyStopping,
    History,
    LambdaCallback,
    ModelCheckpoint,
    ProgbarLogger,
    TerminateOnNaN,
    format_value,
    monitor,
    progress,
)


class FakeModel:
    """What callbacks need from a model: weights, stop_training and the two savers."""

    def __init__(self) -> None:
        self.stop_training = False
        self.history = None
        self.mark(-1)

    def mark(self, epoch: int) -> None:
        """Sets every weight to ``epoch``, so restored weights tell which epoch they came from."""
        self.weights = [np.full((2, 3), float(epoch)), np.full(3, float(epoch))]

    def get_weights(self) -> list[np.ndarray]:
        return [w.copy() for w in self.weights]

    def set_weights(self, weights: list[np.ndarray]) -> None:
        self.weights = [np.array(w) for w in weights]

    def epoch_marker(self) -> float:
        values = {float(v) for w in self.weights for v in w.ravel()}
        assert len(values) == 1
        return values.pop()

    def save(self, filepath: str) -> None:
        Path(filepath).write_text(f"model epoch={self.epoch_marker():g}")

    def save_weights(self, filepath: str) -> None:
        Path(filepath).write_text(f"weights epoch={self.epoch_marker():g}")


def fit(callbacks, epoch_logs, *, model=None, verbose=0, steps=3, batch_logs=None):
    """Runs the loop Sequential.fit runs; returns (history, model, epochs that ran)."""
    model = model if model is not None else FakeModel()
    callback_list = CallbackList(
        callbacks, model=model, verbose=verbose, epochs=len(epoch_logs), steps=steps
    )
    model.stop_training = False
    callback_list.on_train_begin()
    ran: list[int] = []
    logs: dict = {}
    for epoch, logs in enumerate(epoch_logs):
        callback_list.on_epoch_begin(epoch)
        for step in range(steps):
            callback_list.on_train_batch_begin(step)
            if callback_list.wants_batch_logs:
                batch = batch_logs(epoch, step) if batch_logs else {"loss": 1.0 / (step + 1)}
                callback_list.on_train_batch_end(step, batch)
            else:
                callback_list.on_train_batch_end(step, None)
        model.mark(epoch)
        callback_list.on_epoch_end(epoch, logs)
        ran.append(epoch)
        if model.stop_training:
            break
    callback_list.on_train_end(logs)
    return callback_list.history, model, ran


def val_losses(*values: float) -> list[dict]:
    return [{"loss": v + 0.5, "val_loss": v} for v in values]


# ----------------------------------------------------------------------------- EarlyStopping


def test_early_stopping_min_mode_counts_patience_from_the_best_epoch():
    # best at epoch 1 (0.8); epochs 2 and 3 do not improve -> wait reaches 2 at epoch 3
    stop = EarlyStopping(monitor="val_loss", patience=2)
    _, model, ran = fit([stop], val_losses(1.0, 0.8, 0.9, 0.85, 0.1, 0.05))
    assert ran == [0, 1, 2, 3]
    assert model.stop_training
    assert stop.stopped_epoch == 3
    assert stop.best == 0.8
    assert stop.best_epoch == 1


def test_early_stopping_patience_zero_stops_at_the_first_non_improvement():
    stop = EarlyStopping(patience=0)
    _, _, ran = fit([stop], val_losses(1.0, 0.9, 0.95, 0.5))
    assert ran == [0, 1, 2]


def test_early_stopping_max_mode_and_auto_for_accuracy():
    logs = [{"val_accuracy": a} for a in (0.5, 0.6, 0.6, 0.55, 0.7)]
    for mode in ("max", "auto"):
        # 0.6 at epoch 2 equals the best, which is not an improvement
        stop = EarlyStopping(monitor="val_accuracy", patience=2, mode=mode)
        _, _, ran = fit([stop], logs)
        assert ran == [0, 1, 2, 3], mode
        assert stop.best == 0.6 and stop.best_epoch == 1


def test_early_stopping_min_mode_on_an_accuracy_stops_when_it_rises():
    logs = [{"val_accuracy": a} for a in (0.5, 0.6, 0.7)]
    stop = EarlyStopping(monitor="val_accuracy", patience=0, mode="min")
    _, _, ran = fit([stop], logs)
    assert ran == [0, 1]


@pytest.mark.parametrize(
    "monitor", ["val_mse", "MSE", "val_mean_squared_error", "val_cosine_similarity"]
)
def test_early_stopping_auto_mode_minimizes_losses_used_as_metrics(monitor):
    # dlcore reports a loss used as a metric as the loss itself (cosine_similarity negated)
    stop = EarlyStopping(monitor=monitor, patience=0)
    _, _, ran = fit([stop], [{monitor: v} for v in (0.5, 0.4, 0.45, 0.3)])
    assert ran == [0, 1, 2]


def test_early_stopping_min_delta_requires_a_large_enough_change():
    logs = val_losses(1.0, 0.95, 0.92, 0.85)
    _, _, ran = fit([EarlyStopping(patience=1)], logs)
    assert ran == [0, 1, 2, 3]
    # 0.95 + 0.1 is not below 1.0, so epoch 1 does not count as an improvement
    stop = EarlyStopping(patience=1, min_delta=0.1)
    _, _, ran = fit([stop], logs)
    assert ran == [0, 1]
    assert stop.best == 1.0
    # min_delta's sign is ignored, as in Keras
    _, _, ran = fit([EarlyStopping(patience=1, min_delta=-0.1)], logs)
    assert ran == [0, 1]


def test_early_stopping_min_delta_in_max_mode():
    logs = [{"accuracy": a} for a in (0.50, 0.52, 0.58, 0.59)]
    stop = EarlyStopping(monitor="accuracy", patience=1, min_delta=0.05)
    _, _, ran = fit([stop], logs)
    # 0.52 - 0.05 is not above 0.50 -> wait 1 >= patience at epoch 1
    assert ran == [0, 1]


def test_early_stopping_baseline_never_beaten_stops_after_patience_epochs():
    # Keras: without beating the baseline the wait counter is never reset
    stop = EarlyStopping(patience=2, baseline=0.5)
    _, _, ran = fit([stop], val_losses(0.9, 0.95, 0.97, 0.98))
    assert ran == [0, 1]
    # the same values without a baseline run until the second non-improvement
    _, _, ran = fit([EarlyStopping(patience=2)], val_losses(0.9, 0.95, 0.97, 0.98))
    assert ran == [0, 1, 2]


def test_early_stopping_baseline_beaten_resets_the_wait():
    stop = EarlyStopping(patience=2, baseline=0.5)
    _, _, ran = fit([stop], val_losses(0.9, 0.4, 0.45, 0.46, 0.47))
    assert ran == [0, 1, 2, 3]
    assert stop.best == 0.4


def test_early_stopping_keeps_going_while_improving_above_the_baseline():
    # improvements that miss the baseline return before the patience check (Keras 3)
    stop = EarlyStopping(patience=1, baseline=0.1)
    _, model, ran = fit([stop], val_losses(0.9, 0.8, 0.7, 0.6))
    assert ran == [0, 1, 2, 3]
    assert not model.stop_training


def test_early_stopping_start_from_epoch_skips_warm_up():
    logs = val_losses(1.0, 2.0, 3.0, 4.0, 5.0)
    _, _, ran = fit([EarlyStopping(patience=0)], logs)
    assert ran == [0, 1]
    stop = EarlyStopping(patience=0, start_from_epoch=2)
    _, _, ran = fit([stop], logs)
    assert ran == [0, 1, 2, 3]
    assert stop.best == 3.0 and stop.best_epoch == 2


def test_early_stopping_restores_the_best_epochs_weights(capsys):
    stop = EarlyStopping(patience=2, restore_best_weights=True, verbose=1)
    _, model, ran = fit([stop], val_losses(1.0, 0.5, 0.7, 0.8, 0.1))
    assert ran == [0, 1, 2, 3]
    assert model.epoch_marker() == 1.0
    out = capsys.readouterr().out
    assert out == (
        "Epoch 4: early stopping\nRestoring model weights from the end of the best epoch: 2.\n"
    )


def test_early_stopping_restores_even_when_training_was_not_stopped():
    stop = EarlyStopping(patience=5, restore_best_weights=True)
    _, model, ran = fit([stop], val_losses(1.0, 0.5, 0.7))
    assert ran == [0, 1, 2]
    assert stop.stopped_epoch == 0
    assert model.epoch_marker() == 1.0


def test_early_stopping_without_restore_keeps_the_last_weights(capsys):
    stop = EarlyStopping(patience=2, verbose=1)
    _, model, _ = fit([stop], val_losses(1.0, 0.5, 0.7, 0.8))
    assert model.epoch_marker() == 3.0
    assert capsys.readouterr().out == "Epoch 4: early stopping\n"


def test_early_stopping_snapshot_is_independent_of_the_models_arrays():
    class ViewModel(FakeModel):
        """Returns its live arrays and trains in place, as a careless engine might."""

        def mark(self, epoch):
            if not hasattr(self, "weights"):
                return super().mark(epoch)
            for w in self.weights:
                w[...] = epoch

        def get_weights(self):
            return self.weights

    stop = EarlyStopping(patience=3, restore_best_weights=True)
    model = ViewModel()
    fit([stop], val_losses(1.0, 0.5, 0.7), model=model)
    assert model.epoch_marker() == 1.0


def test_early_stopping_restore_with_start_from_epoch_uses_the_first_watched_epoch():
    stop = EarlyStopping(patience=1, restore_best_weights=True, start_from_epoch=2)
    _, model, ran = fit([stop], val_losses(0.1, 0.2, 0.9, 0.95, 0.99))
    assert ran == [0, 1, 2, 3]
    assert model.epoch_marker() == 2.0


def test_early_stopping_can_be_reused_across_fits():
    stop = EarlyStopping(patience=1)
    fit([stop], val_losses(0.1, 0.2, 0.3))
    assert stop.stopped_epoch == 1
    # a fresh fit starts from no best value, so 0.5 is an improvement
    _, _, ran = fit([stop], val_losses(0.5, 0.4, 0.3))
    assert ran == [0, 1, 2]
    assert stop.stopped_epoch == 0 and stop.best == 0.3


def test_early_stopping_warns_when_the_monitored_key_is_missing():
    stop = EarlyStopping(monitor="val_loss", patience=0)
    logs = [{"loss": 1.0, "accuracy": 0.5}, {"loss": 2.0, "accuracy": 0.4}]
    with pytest.warns(UserWarning, match=r"'val_loss'.*not available.*loss, accuracy"):
        _, model, ran = fit([stop], logs)
    assert ran == [0, 1]
    assert not model.stop_training


def test_early_stopping_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"mode to be one of 'auto', 'min', 'max'.*'minimum'"):
        EarlyStopping(mode="minimum")
    with pytest.raises(ValueError, match=r"patience to be an integer >= 0.*patience=-1"):
        EarlyStopping(patience=-1)
    with pytest.raises(ValueError, match=r"start_from_epoch.*-2"):
        EarlyStopping(start_from_epoch=-2)
    with pytest.raises(TypeError, match=r"min_delta to be a number"):
        EarlyStopping(min_delta="0.1")
    with pytest.raises(ValueError, match=r"monitor='val_f2'.*mode='max'.*mode='min'"):
        EarlyStopping(monitor="val_f2")
    EarlyStopping(monitor="val_f2", mode="max")  # explicit mode needs no inference


# ----------------------------------------------------------------------------- ModelCheckpoint


def test_model_checkpoint_saves_every_epoch_with_formatted_names(tmp_path):
    template = str(tmp_path / "ckpt-{epoch:02d}-{val_loss:.2f}.keras")
    fit([ModelCheckpoint(template)], val_losses(0.5, 0.4, 0.45))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["ckpt-01-0.50.keras", "ckpt-02-0.40.keras", "ckpt-03-0.45.keras"]
    assert (tmp_path / "ckpt-02-0.40.keras").read_text() == "model epoch=1"


def test_model_checkpoint_save_best_only_saves_on_improvement(tmp_path):
    template = str(tmp_path / "ckpt-{epoch:02d}.keras")
    fit([ModelCheckpoint(template, save_best_only=True)], val_losses(0.5, 0.4, 0.45, 0.3))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ckpt-01.keras",
        "ckpt-02.keras",
        "ckpt-04.keras",
    ]


def test_model_checkpoint_fixed_path_holds_the_best_weights(tmp_path):
    path = tmp_path / "best.weights"
    ckpt = ModelCheckpoint(path, save_best_only=True, save_weights_only=True)
    fit([ckpt], val_losses(0.5, 0.4, 0.45, 0.6))
    assert path.read_text() == "weights epoch=1"
    assert ckpt.best == 0.4


def test_model_checkpoint_max_mode(tmp_path):
    logs = [{"val_accuracy": a} for a in (0.7, 0.9, 0.8)]
    for mode in ("max", "auto"):
        path = tmp_path / f"{mode}.keras"
        fit([ModelCheckpoint(path, monitor="val_accuracy", mode=mode, save_best_only=True)], logs)
        assert path.read_text() == "model epoch=1", mode


def test_model_checkpoint_initial_value_threshold(tmp_path):
    template = str(tmp_path / "e{epoch}.keras")
    ckpt = ModelCheckpoint(template, save_best_only=True, initial_value_threshold=0.45)
    fit([ckpt], val_losses(0.5, 0.4, 0.42))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e2.keras"]


def test_model_checkpoint_creates_directories_and_reports(tmp_path, capsys):
    path = tmp_path / "a" / "b" / "m.keras"
    fit([ModelCheckpoint(path, save_best_only=True, verbose=1)], val_losses(0.5, 0.6))
    assert path.read_text() == "model epoch=0"
    assert capsys.readouterr().out == (
        f"\nEpoch 1: val_loss improved from inf to 0.50000, saving model to {path}\n"
        "\nEpoch 2: val_loss did not improve from 0.50000\n"
    )


def test_model_checkpoint_missing_monitor_warns_and_saves(tmp_path):
    path = tmp_path / "m.keras"
    with pytest.warns(UserWarning, match=r"only with 'val_loss'.*available: loss"):
        fit([ModelCheckpoint(path, save_best_only=True)], [{"loss": 0.3}])
    assert path.exists()


def test_model_checkpoint_missing_format_key(tmp_path):
    ckpt = ModelCheckpoint(str(tmp_path / "{epoch}-{val_acc:.2f}.keras"))
    with pytest.raises(KeyError, match=r"no key 'val_acc'; available keys: epoch, loss, val_loss"):
        fit([ckpt], val_losses(0.5))


def test_model_checkpoint_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match=r"only save_freq='epoch'.*save_freq=100"):
        ModelCheckpoint(tmp_path / "m.keras", save_freq=100)
    with pytest.raises(ValueError, match=r"mode to be one of 'auto', 'min', 'max'"):
        ModelCheckpoint(tmp_path / "m.keras", mode="best")
    with pytest.raises(ValueError, match=r"not a valid format string"):
        ModelCheckpoint(str(tmp_path / "m-{epoch.keras"))
    with pytest.raises(ValueError, match=r"positional field \{\}"):
        ModelCheckpoint(str(tmp_path / "m-{}.keras"))
    with pytest.raises(TypeError, match=r"filepath to be a str or os.PathLike, received int"):
        ModelCheckpoint(3)
    with pytest.raises(ValueError, match=r"monitor='val_f2'.*mode='max'"):
        ModelCheckpoint(tmp_path / "m.keras", monitor="val_f2", save_best_only=True)
    ModelCheckpoint(tmp_path / "m.keras", monitor="val_f2")  # no comparison, no direction needed
    with pytest.raises(ValueError, match=r"is an existing directory"):
        fit([ModelCheckpoint(tmp_path)], val_losses(0.5))


# ----------------------------------------------------------------------------- TerminateOnNaN


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_terminate_on_nan_stops_at_the_bad_batch(bad, capsys):
    seen: list[tuple[int, int]] = []

    def batch_logs(epoch, step):
        seen.append((epoch, step))
        return {"loss": bad if (epoch, step) == (1, 1) else 0.5}

    _, model, ran = fit([TerminateOnNaN()], val_losses(1, 1, 1), batch_logs=batch_logs)
    assert model.stop_training
    assert ran == [0, 1]  # this loop only checks stop_training at epoch ends
    assert capsys.readouterr().out == "Batch 1: Invalid loss, terminating training\n"


def test_terminate_on_nan_ignores_finite_losses_and_can_raise():
    _, model, ran = fit([TerminateOnNaN()], val_losses(1, 1))
    assert ran == [0, 1] and not model.stop_training
    with pytest.raises(RuntimeError, match=r"NaN or Inf loss encountered at batch 0"):
        fit(
            [TerminateOnNaN(raise_error=True)],
            val_losses(1),
            batch_logs=lambda epoch, step: {"loss": -math.inf},
        )


# ----------------------------------------------------------------------------- diverged models
# A model whose training diverged (NaN or infinite weights, or a NaN loss) is never saved,
# recorded as the best or restored, whatever is monitored.


class DivergingModel(FakeModel):
    """A FakeModel whose weights are ``bad`` (NaN or infinity) at the epochs in ``bad_epochs``."""

    def __init__(self, bad_epochs: set[int], bad: float = math.nan) -> None:
        self.bad_epochs, self.bad = bad_epochs, bad
        super().__init__()

    def mark(self, epoch: int) -> None:
        super().mark(epoch)
        if epoch in self.bad_epochs:
            self.weights[1][1] = self.bad


def _scores(*values: float, loss: float = 1.0) -> list[dict]:
    """Epoch logs whose val_loss falls and val_accuracy rises by ``values``."""
    return [{"loss": loss, "val_loss": 1.0 - v, "val_accuracy": v} for v in values]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("monitor", ["val_loss", "val_accuracy"])
@pytest.mark.parametrize("save_best_only", [False, True])
@pytest.mark.parametrize("save_weights_only", [False, True])
def test_model_checkpoint_never_writes_non_finite_weights(
    tmp_path, bad, monitor, save_best_only, save_weights_only
):
    path = tmp_path / "ckpt.keras"
    kept: list[bytes] = []
    checkpoint = ModelCheckpoint(
        path, monitor=monitor, save_best_only=save_best_only, save_weights_only=save_weights_only
    )
    keep = LambdaCallback(
        on_epoch_begin=lambda epoch, logs: epoch and kept.append(path.read_bytes())
    )
    model = DivergingModel({1}, bad)
    pattern = re.escape(
        f"ModelCheckpoint did not save epoch 2 to {str(path)!r}: the model's weights hold NaN "
        "or infinite values (training diverged), so the file there is left as it was. Lower "
        "the learning rate; TerminateOnNaN() stops training at the first NaN batch"
    )
    # epoch 2 improves on epoch 1 in both monitors, but its weights are not finite
    with pytest.warns(UserWarning, match=pattern):
        fit([checkpoint, keep], _scores(0.10, 0.13), model=model)
    assert len(kept) == 1 and path.read_bytes() == kept[0]
    assert path.read_text().endswith("epoch=0")
    if save_best_only:
        assert checkpoint.best == pytest.approx(0.10 if monitor == "val_accuracy" else 0.90)


def test_model_checkpoint_after_a_refused_epoch_saves_the_next_finite_one(tmp_path):
    template = str(tmp_path / "ckpt-{epoch}.keras")
    checkpoint = ModelCheckpoint(template, monitor="val_accuracy", save_best_only=True)
    with pytest.warns(UserWarning, match=r"did not save epoch 2 to .*ckpt-2\.keras.*no file was"):
        fit([checkpoint], _scores(0.10, 0.13, 0.12), model=DivergingModel({1}))
    # epoch 3 (0.12) beats the last saved best (0.10), not the refused 0.13
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-1.keras", "ckpt-3.keras"]
    assert checkpoint.best == 0.12


def test_model_checkpoint_best_is_never_an_epoch_whose_loss_is_nan(tmp_path):
    # a loss-scaling optimizer skips the step: the weights stay finite, the loss is not
    path = tmp_path / "best.keras"
    checkpoint = ModelCheckpoint(path, monitor="val_accuracy", save_best_only=True)
    logs = _scores(0.10, 0.13)
    logs[1]["loss"] = math.nan
    with pytest.warns(UserWarning, match=r"did not save epoch 2 to .*: its loss is nan"):
        fit([checkpoint], logs)
    assert path.read_text() == "model epoch=0" and checkpoint.best == 0.10


def test_model_checkpoint_every_epoch_saves_finite_weights_despite_a_nan_loss(tmp_path):
    path = tmp_path / "last.keras"
    logs = _scores(0.10, 0.13)
    logs[1]["loss"] = math.nan
    fit([ModelCheckpoint(path)], logs)
    assert path.read_text() == "model epoch=1"


@pytest.mark.parametrize("value", [math.nan, -math.inf])
def test_model_checkpoint_a_non_finite_monitored_value_is_no_improvement(tmp_path, value, capsys):
    path = tmp_path / "best.keras"
    checkpoint = ModelCheckpoint(path, save_best_only=True, verbose=1)
    fit([checkpoint], [{"val_loss": value}])
    assert not path.exists() and checkpoint.best == math.inf
    assert "val_loss did not improve from inf" in capsys.readouterr().out
    fit([checkpoint], [{"val_loss": 0.5}, {"val_loss": value}])
    assert path.read_text() == "model epoch=0" and checkpoint.best == 0.5


def test_early_stopping_never_restores_non_finite_weights():
    stop = EarlyStopping(monitor="val_accuracy", patience=2, restore_best_weights=True)
    logs = _scores(0.10, 0.13, 0.09)
    logs[1]["loss"] = math.nan
    _, model, ran = fit([stop], logs, model=DivergingModel({1}))
    assert ran == [0, 1, 2]
    assert stop.best == 0.10 and stop.best_epoch == 0
    assert model.epoch_marker() == 0.0


def test_early_stopping_checks_the_weights_it_would_restore():
    # no loss in the logs to tell: the snapshot itself is refused
    stop = EarlyStopping(monitor="val_accuracy", patience=5, restore_best_weights=True)
    logs = [{"val_accuracy": v} for v in (0.10, 0.13, 0.12)]
    _, model, _ = fit([stop], logs, model=DivergingModel({1}, math.inf))
    assert stop.best == 0.12 and stop.best_epoch == 2
    assert model.epoch_marker() == 2.0


def test_early_stopping_a_nan_monitored_value_is_never_the_best():
    stop = EarlyStopping(patience=1)
    _, _, ran = fit([stop], [{"val_loss": v} for v in (math.nan, 0.5, 0.4, math.nan, 0.3)])
    assert ran == [0, 1, 2, 3]  # the NaN epoch is one without improvement
    assert stop.best == 0.4 and stop.best_epoch == 2 and stop.stopped_epoch == 3


def test_is_better_refuses_non_finite_values():
    assert not monitor.is_better(math.nan, None, "min", 0.0)
    assert not monitor.is_better(-math.inf, 1.0, "min", 0.0)
    assert not monitor.is_better(math.inf, 1.0, "max", 0.0)
    assert monitor.is_better(0.5, None, "max", 0.0)


def test_terminate_on_nan_with_a_val_accuracy_checkpoint_keeps_the_last_finite_model(tmp_path):
    """The issue's scenario on a real model: TerminateOnNaN and
    ModelCheckpoint(monitor="val_accuracy", save_best_only=True), with NaN outputs that still
    score a better accuracy than the last finite epoch. As in Keras 3, TerminateOnNaN stops
    after the first NaN batch and the epoch still ends; no callback keeps its weights."""
    from dlcore.layers import Dense
    from dlcore.models import Sequential, load_model
    from dlcore.optimizers import SGD

    rng = np.random.default_rng(0)
    x = np.abs(rng.standard_normal((32, 4))) + 1.0
    y = np.arange(32) % 2  # classes 0 and 1, while the model starts out predicting class 2
    path = tmp_path / "best.keras"
    with dlcore.use_backend("numpy"):
        model = Sequential([Dense(3, activation="softmax", input_shape=(4,))])
        model.compile(
            optimizer=SGD(learning_rate=1e-4),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        model.set_weights([np.zeros((4, 3)), np.array([0.0, 0.0, 10.0])])
        saved: list[bytes] = []
        batches: list[tuple[int, int]] = []
        epoch_now = [0]

        def diverge(epoch, logs):  # finite but huge weights: x @ W overflows, the loss is NaN
            epoch_now[0] = epoch
            if epoch == 1:
                saved.append(path.read_bytes())
                model.set_weights([np.full((4, 3), 3e38), np.zeros(3)])

        callbacks = [
            TerminateOnNaN(),
            ModelCheckpoint(path, monitor="val_accuracy", save_best_only=True),
            EarlyStopping(monitor="val_accuracy", patience=5, restore_best_weights=True),
            LambdaCallback(
                on_epoch_begin=diverge,
                on_train_batch_end=lambda batch, logs: batches.append((epoch_now[0], batch)),
            ),
        ]
        best_weights = None
        with pytest.warns(UserWarning, match=r"did not save epoch 2 to .*best\.keras.*loss is nan"):
            history = model.fit(
                x,
                y,
                epochs=4,
                batch_size=8,
                shuffle=False,
                validation_data=(x, y),
                verbose=0,
                callbacks=callbacks,
            ).history
            best_weights = load_model(path).get_weights()
    # the NaN epoch scores better than the finite one: without the checks it would be "best"
    assert history["val_accuracy"][1] > history["val_accuracy"][0]
    assert math.isnan(history["loss"][1]) and len(history["loss"]) == 2
    assert batches == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0)]  # stopped after the NaN batch
    assert path.read_bytes() == saved[0]
    assert all(np.isfinite(w).all() for w in best_weights)
    for restored, kept in zip(model.get_weights(), best_weights, strict=True):
        np.testing.assert_array_equal(restored, kept)


# ----------------------------------------------------------------------------- LambdaCallback


def test_lambda_callback_hooks_get_keras_arguments():
    calls: list[tuple] = []
    cb = LambdaCallback(
        on_train_begin=lambda logs: calls.append(("train_begin", dict(logs))),
        on_epoch_begin=lambda epoch, logs: calls.append(("epoch_begin", epoch)),
        on_train_batch_begin=lambda batch, logs: calls.append(("batch_begin", batch)),
        on_train_batch_end=lambda batch, logs: calls.append(("batch_end", batch, logs["loss"])),
        on_epoch_end=lambda epoch, logs: calls.append(("epoch_end", epoch, logs["val_loss"])),
        on_train_end=lambda logs: calls.append(("train_end", logs["val_loss"])),
    )
    fit([cb], val_losses(0.5, 0.25), steps=2, batch_logs=lambda e, s: {"loss": 10 * e + s})
    assert calls == [
        ("train_begin", {}),
        ("epoch_begin", 0),
        ("batch_begin", 0),
        ("batch_end", 0, 0),
        ("batch_begin", 1),
        ("batch_end", 1, 1),
        ("epoch_end", 0, 0.5),
        ("epoch_begin", 1),
        ("batch_begin", 0),
        ("batch_end", 0, 10),
        ("batch_begin", 1),
        ("batch_end", 1, 11),
        ("epoch_end", 1, 0.25),
        ("train_end", 0.25),
    ]


def test_lambda_callback_keras2_batch_aliases_and_other_hooks():
    calls: list[tuple] = []
    cb = LambdaCallback(
        on_batch_begin=lambda batch, logs: calls.append(("begin", batch)),
        on_batch_end=lambda batch, logs: calls.append(("end", batch, logs["loss"])),
        on_test_end=lambda logs: calls.append(("test_end", logs)),
    )
    fit([cb], val_losses(0.5), steps=2, batch_logs=lambda e, s: {"loss": s + 0.5})
    assert calls == [("begin", 0), ("end", 0, 0.5), ("begin", 1), ("end", 1, 1.5)]
    cb.on_test_end({"loss": 1.0})
    assert calls[-1] == ("test_end", {"loss": 1.0})


def test_lambda_callback_rejects_bad_arguments():
    with pytest.raises(TypeError, match=r"unexpected arguments \['on_epoch_ends'\]"):
        LambdaCallback(on_epoch_ends=print)
    with pytest.raises(TypeError, match=r"on_epoch_end to be callable, received int"):
        LambdaCallback(on_epoch_end=3)
    with pytest.raises(ValueError, match=r"both on_train_batch_end and on_batch_end"):
        LambdaCallback(on_train_batch_end=print, on_batch_end=print)


# ----------------------------------------------------------------------------- CallbackList


def test_history_records_every_epoch():
    logs = [
        {"loss": 0.9, "accuracy": 0.5, "val_loss": 1.0, "val_accuracy": 0.4},
        {"loss": 0.7, "accuracy": 0.6, "val_loss": 0.8, "val_accuracy": 0.55},
    ]
    history, model, _ = fit([], logs, steps=5)
    assert isinstance(history, History)
    assert model.history is history
    assert history.model is model
    assert history.epoch == [0, 1]
    assert history.history == {
        "loss": [0.9, 0.7],
        "accuracy": [0.5, 0.6],
        "val_loss": [1.0, 0.8],
        "val_accuracy": [0.4, 0.55],
    }
    assert history.params == {"verbose": 0, "epochs": 2, "steps": 5}


def test_history_stops_with_early_stopping():
    history, _, _ = fit([EarlyStopping(patience=0)], val_losses(0.5, 0.6, 0.4))
    assert history.history["val_loss"] == [0.5, 0.6]
    assert history.epoch == [0, 1]


def test_callback_list_order_and_params():
    class Recorder(Callback):
        pass

    mine = Recorder()
    model = FakeModel()
    cl = CallbackList([mine], model=model, verbose=2, epochs=4, steps=7)
    # Keras 3's order: the user's callbacks, then the History, then the progress bar
    assert [type(cb) for cb in cl.callbacks] == [Recorder, History, ProgbarLogger]
    assert all(cb.model is model for cb in cl.callbacks)
    assert mine.params == {"verbose": 2, "epochs": 4, "steps": 7}
    assert [type(cb) for cb in CallbackList([mine], verbose=0).callbacks] == [Recorder, History]
    # a History or ProgbarLogger the user passes is used where it is, instead of a new one
    own_history, own_bar = History(), ProgbarLogger()
    cl = CallbackList([own_bar, own_history], verbose=1)
    assert cl.callbacks == [own_bar, own_history]
    cl = CallbackList([own_history, mine], verbose=1)
    assert [type(cb) for cb in cl.callbacks] == [History, Recorder, ProgbarLogger]
    assert cl.history is own_history
    assert CallbackList(None, verbose="auto").params["verbose"] == 1


class BatchEndOverride(Callback):
    def on_batch_end(self, batch, logs=None):
        pass


class TrainBatchEndOverride(Callback):
    def on_train_batch_end(self, batch, logs=None):
        pass


class EpochOnly(Callback):
    def on_epoch_end(self, epoch, logs=None):
        pass


@pytest.mark.parametrize(
    ("callbacks", "verbose", "wanted"),
    [
        ([], 0, False),
        ([], 2, False),
        ([], 1, True),  # the live bar shows running logs
        ([EpochOnly()], 0, False),
        ([EarlyStopping()], 2, False),
        ([BatchEndOverride()], 0, True),
        ([TrainBatchEndOverride()], 0, True),
        ([TerminateOnNaN()], 0, True),
        ([LambdaCallback(on_epoch_end=print)], 0, False),
        ([LambdaCallback(on_batch_end=print)], 0, True),
        ([LambdaCallback(on_train_batch_end=print)], 0, True),
        ([LambdaCallback(on_train_batch_begin=print)], 0, False),
    ],
)
def test_wants_batch_logs(callbacks, verbose, wanted):
    assert CallbackList(callbacks, verbose=verbose, epochs=1, steps=1).wants_batch_logs is wanted


def test_callback_list_skips_batch_hooks_nobody_overrides():
    calls = []

    class Counting(Callback):
        def on_batch_begin(self, batch, logs=None):
            calls.append(batch)

    cl = CallbackList([EpochOnly(), Counting()], verbose=0)
    assert [type(cb) for cb in cl._batch_begin_targets] == [Counting]
    assert cl._batch_end_targets == []
    cl.on_train_batch_begin(4)
    assert calls == [4]


def test_callback_base_routes_train_batch_hooks_to_keras2_names():
    calls = []

    class Old(Callback):
        def on_batch_begin(self, batch, logs=None):
            calls.append(("begin", batch, logs))

        def on_batch_end(self, batch, logs=None):
            calls.append(("end", batch, logs))

    cb = Old()
    cb.on_train_batch_begin(3, {"a": 1})
    cb.on_train_batch_end(3, {"loss": 2.0})
    assert calls == [("begin", 3, {"a": 1}), ("end", 3, {"loss": 2.0})]


def test_callback_list_rejects_bad_callbacks():
    with pytest.raises(TypeError, match=r"received a single EarlyStopping; wrap it in a list"):
        CallbackList(EarlyStopping())
    with pytest.raises(TypeError, match=r"callbacks\[1\] is the class EarlyStopping.*create one"):
        CallbackList([History(), EarlyStopping])
    with pytest.raises(TypeError, match=r"callbacks\[0\] expected a Callback instance, received"):
        CallbackList(["early_stopping"])
    with pytest.raises(TypeError, match=r"expected a list of Callback instances, received dict"):
        CallbackList({"a": History()})
    with pytest.raises(ValueError, match=r"verbose must be 0, 1, 2 or 'auto', received verbose=3"):
        CallbackList([], verbose=3)


def test_progbar_logger_is_exported_from_callbacks_too():
    assert ProgbarLogger is progress.ProgbarLogger


# ----------------------------------------------------------------------------- progress display


class FakeClock:
    """Stands in for the display's perf_counter; the test loop moves it."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(progress, "perf_counter", fake)
    return fake


def ticking(clock: FakeClock, first: float, then: float) -> LambdaCallback:
    """Makes each training batch take ``first`` seconds for batch 0 and ``then`` afterwards."""

    def advance(batch, logs):
        clock.now += first if batch == 0 else then

    return LambdaCallback(on_train_batch_begin=advance)


EPOCH_LOGS = [
    {"loss": 0.5, "accuracy": 0.0009, "val_loss": 1234.56789, "val_accuracy": 0.0},
    {"loss": 0.123456, "accuracy": 0.95, "val_loss": -0.25, "val_accuracy": 1.0},
]


def test_format_value_follows_keras():
    assert format_value(0.123456) == "0.1235"
    assert format_value(1234.56789) == "1234.5679"
    assert format_value(0.0009) == "9.0000e-04"
    assert format_value(0.001) == "1.0000e-03"
    assert format_value(-0.5) == "-0.5000"
    assert format_value(0.0) == "0.0000e+00"
    assert format_value(np.float32(0.25)) == "0.2500"
    assert format_value(math.nan) == "nan"
    assert format_value("n/a") == "n/a"


def test_verbose_2_prints_one_line_per_epoch(capsys, clock):
    fit([ticking(clock, 0.5, 0.003)], EPOCH_LOGS, verbose=2, steps=38)
    # epoch time 0.5 + 37 * 0.003 = 0.611 s -> "1s"; per step 0.611 / 38 = 16 ms
    assert capsys.readouterr().out == (
        "Epoch 1/2\n"
        "38/38 - 1s - 16ms/step - loss: 0.5000 - accuracy: 9.0000e-04"
        " - val_loss: 1234.5679 - val_accuracy: 0.0000e+00\n"
        "Epoch 2/2\n"
        "38/38 - 1s - 16ms/step - loss: 0.1235 - accuracy: 0.9500"
        " - val_loss: -0.2500 - val_accuracy: 1.0000\n"
    )


def test_verbose_2_single_epoch_has_no_epoch_line(capsys, clock):
    fit([ticking(clock, 2.0, 1.5)], EPOCH_LOGS[1:], verbose=2, steps=3)
    assert capsys.readouterr().out == (
        "3/3 - 5s - 2s/step - loss: 0.1235 - accuracy: 0.9500 - val_loss: -0.2500"
        " - val_accuracy: 1.0000\n"
    )


def test_verbose_1_draws_a_bar_and_ends_with_the_final_values(capsys, clock, monkeypatch):
    import tqdm.std

    from dlcore.callbacks import progress

    monkeypatch.setattr(progress, "_interactive", lambda: True)  # the live bar of a terminal

    monkeypatch.setattr(tqdm.std, "time", lambda: 0.0)  # tqdm's clock frozen: no redraw mid-epoch
    fit([ticking(clock, 0.5, 0.003)], EPOCH_LOGS, verbose=1, steps=38)
    out = capsys.readouterr().out
    epochs = out.split("Epoch ")[1:]
    assert len(epochs) == 2 and out.startswith("Epoch 1/2\n")
    for text, logs in zip(epochs, EPOCH_LOGS):
        head, _, drawn = text.partition("\n")
        final = drawn.rstrip(" \n").split("\r")[-1]
        # first step excluded from the step time, as in Keras: 0.111 s / 37 steps = 3 ms
        expected = f"38/38 [{'=' * 30}] - 1s 3ms/step - " + " - ".join(
            f"{k}: {format_value(v)}" for k, v in logs.items()
        )
        assert final == expected
        assert drawn.endswith("\n")
    assert epochs[0].startswith("1/2\n") and epochs[1].startswith("2/2\n")
    assert "\r 0/38 [" + "." * 30 + "]" in out  # the bar's first drawing


class CountingLogs(Mapping):
    """Batch logs that count reads, as a lazily synced engine mapping would."""

    def __init__(self) -> None:
        self.reads = 0

    def __getitem__(self, key: str) -> float:
        self.reads += 1
        return {"loss": 0.25, "accuracy": 0.75}[key]

    def __iter__(self) -> Iterator[str]:
        return iter(("loss", "accuracy"))

    def __len__(self) -> int:
        return 2


def test_verbose_1_reads_batch_logs_only_when_redrawing(capsys, clock, monkeypatch):
    import tqdm.std

    from dlcore.callbacks import progress

    monkeypatch.setattr(progress, "_interactive", lambda: True)  # the live bar of a terminal

    tqdm_now = [0.0]
    monkeypatch.setattr(tqdm.std, "time", lambda: tqdm_now[0])
    logs = CountingLogs()
    cl = CallbackList([], model=FakeModel(), verbose=1, epochs=1, steps=100)
    cl.on_train_begin()
    cl.on_epoch_begin(0)
    for step in range(50):
        cl.on_train_batch_end(step, logs)
    assert logs.reads == 0  # tqdm's clock has not moved past its 0.1 s minimum interval
    tqdm_now[0] = 0.2
    cl.on_train_batch_end(50, logs)
    assert logs.reads == 2
    for step in range(51, 100):
        cl.on_train_batch_end(step, logs)
    assert logs.reads == 2
    cl.on_epoch_end(0, {"loss": 0.5})
    cl.on_train_end({"loss": 0.5})
    out = capsys.readouterr().out
    drawn = f"\r 51/100 [{'=' * 14}>{'.' * 15}] - ETA: 0s - loss: 0.2500 - accuracy: 0.7500"
    assert drawn in out
    assert out.rstrip(" \n").split("\r")[-1].endswith("] - 0s 0s/step - loss: 0.5000")


def test_verbose_1_without_tqdm_prints_like_verbose_2(capsys, clock, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # makes `import tqdm` fail
    monkeypatch.setattr(progress, "_bar_class", None)
    monkeypatch.setattr(progress, "_tqdm_hint_shown", False)
    for _ in range(2):
        cl = CallbackList([], verbose=1, epochs=2, steps=4)
        assert not cl.wants_batch_logs
    fit([ticking(clock, 1.0, 1.0)], EPOCH_LOGS[:1] * 2, verbose=1, steps=4)
    out = capsys.readouterr().out
    line = "4/4 - 4s - 1s/step - loss: 0.5000 - accuracy: 9.0000e-04 - val_loss: 1234.5679"
    assert out == (
        "dlcore: pip install tqdm for a live progress bar; printing one line per epoch.\n"
        f"Epoch 1/2\n{line} - val_accuracy: 0.0000e+00\n"
        f"Epoch 2/2\n{line} - val_accuracy: 0.0000e+00\n"
    )


def test_progbar_lines_without_known_steps(capsys, clock):
    cl = CallbackList([], verbose=2, epochs=1, steps=None)
    cl.on_train_begin()
    cl.on_epoch_begin(0)
    clock.now += 3.0
    cl.on_epoch_end(0, {"loss": 0.5})
    assert capsys.readouterr().out == "3s - loss: 0.5000\n"


def test_bar_drawing():
    assert progress._bar(0, 38) == "." * 30
    assert progress._bar(19, 38) == "=" * 14 + ">" + "." * 15
    assert progress._bar(38, 38) == "=" * 30
    assert progress._count(7, 100) == "  7/100"
    assert progress._eta(5.7) == "5s"
    assert progress._eta(125) == "2:05"
    assert progress._eta(3725) == "1:02:05"
    assert progress._per_step(0.0) == "0s/step"
    assert progress._per_step(2.4) == "2s/step"
    assert progress._per_step(0.0031) == "3ms/step"
    assert progress._per_step(0.00025) == "250us/step"


def test_verbose_is_read_from_params():
    bar = ProgbarLogger()
    bar.set_params({"verbose": 2, "epochs": 3, "steps": 9})
    assert (bar.verbose, bar.epochs, bar.target) == (2, 3, 9)
    assert "on_train_batch_end" not in vars(bar)
    bar.set_params({"verbose": "auto", "epochs": 3, "steps": 9})
    assert bar.verbose == 1 and "on_train_batch_end" in vars(bar)
    bar.set_params({"verbose": 2, "epochs": 3, "steps": 9})
    assert "on_train_batch_end" not in vars(bar)


def test_verbose_1_with_unknown_steps_counts_the_batches(capsys, clock, monkeypatch):
    import tqdm.std

    monkeypatch.setattr(tqdm.std, "time", lambda: 0.0)
    cl = CallbackList([], verbose=1, epochs=1, steps=None)
    cl.on_train_begin()
    cl.on_epoch_begin(0)
    for step in range(5):
        clock.now += 0.002
        cl.on_train_batch_end(step, {"loss": 1.0})
    cl.on_epoch_end(0, {"loss": 0.5})
    final = capsys.readouterr().out.rstrip(" \n").split("\r")[-1]
    assert final == f"5/5 [{'=' * 30}] - 0s 2ms/step - loss: 0.5000"


# ----------------------------------------------------------------------------- package structure

PACKAGE_DIR = Path(dlcore.callbacks.__file__).parent
MODULES = sorted(path.stem for path in PACKAGE_DIR.glob("*.py"))


def _package_imports(path: Path) -> list[tuple[int, str, bool]]:
    """Each import of a dlcore module in ``path``: its line, the module, whether in a function."""
    found: list[tuple[int, str, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                found.extend((child.lineno, alias.name, inside) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                assert child.level == 0, f"{path.name}:{child.lineno}: use absolute imports"
                module = child.module or ""
                for alias in child.names:
                    # `from dlcore.callbacks import progress` imports the submodule
                    submodule = module == "dlcore.callbacks" and alias.name in MODULES
                    imported = f"{module}.{alias.name}" if submodule else module
                    found.append((child.lineno, imported, inside))
            visit(child, inside)

    visit(ast.parse(path.read_text(), filename=str(path)), False)
    return [(line, module, inside) for line, module, inside in found if module.startswith("dlcore")]


@pytest.mark.parametrize("module", MODULES)
def test_each_callbacks_module_imports_in_a_fresh_interpreter(module):
    name = "dlcore.callbacks" if module == "__init__" else f"dlcore.callbacks.{module}"
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", f"import {name}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_callbacks_modules_import_dlcore_only_at_module_level():
    inside = [
        f"{path.name}:{line} imports {module}"
        for path in sorted(PACKAGE_DIR.glob("*.py"))
        for line, module, in_function in _package_imports(path)
        if in_function
    ]
    assert inside == []


def test_callbacks_modules_import_no_circle():
    """The base imports no module of the package, and the package's imports form no cycle."""
    prefix = "dlcore.callbacks"
    graph = {
        path.stem: {
            "__init__" if module == prefix else module.removeprefix(prefix + ".")
            for _, module, _ in _package_imports(path)
            if module == prefix or module.startswith(prefix + ".")
        }
        for path in PACKAGE_DIR.glob("*.py")
    }
    assert graph["base"] == set()
    assert graph["progress"] == {"base"}
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import circle: {' -> '.join((*path, module))}"
        if module in done:
            return
        for imported in graph[module]:
            visit(imported, (*path, module))
        done.add(module)

    for module in graph:
        visit(module, ())
