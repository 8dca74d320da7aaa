"""Learning-curve pictures: History.plot, dlcore.plot.learning_curves, demo --plot."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import dlcore
from dlcore import plot
from dlcore.callbacks import History
from dlcore.layers import Dense
from dlcore.models import Sequential

pytest.importorskip("matplotlib")
from matplotlib import image  # noqa: E402


def _history(loss, accuracy, val_loss=None, val_accuracy=None) -> History:
    history = History()
    history.on_train_begin()
    for epoch in range(len(loss)):
        logs = {"loss": loss[epoch], "accuracy": accuracy[epoch]}
        if val_loss is not None:
            logs.update(val_loss=val_loss[epoch], val_accuracy=val_accuracy[epoch])
        history.on_epoch_end(epoch, logs)
    return history


def _legend(ax) -> list[str]:
    return [text.get_text() for text in ax.get_legend().get_texts()]


def test_history_plot_has_one_labelled_panel_per_metric_with_both_curves(tmp_path):
    history = _history([1.0, 0.6, 0.4], [0.5, 0.7, 0.8], [1.1, 0.8, 0.7], [0.4, 0.6, 0.65])
    path = tmp_path / "curves.png"
    figure = history.plot(path=str(path))
    axes = figure.get_axes()
    assert [ax.get_title() for ax in axes] == ["loss", "accuracy"]
    assert [ax.get_xlabel() for ax in axes] == ["epoch", "epoch"]
    assert [ax.get_ylabel() for ax in axes] == ["loss", "accuracy"]
    assert all(_legend(ax) == ["train", "validation"] for ax in axes)
    train, validation = axes[0].get_lines()
    np.testing.assert_array_equal(train.get_xdata(), [1, 2, 3])
    np.testing.assert_array_equal(train.get_ydata(), [1.0, 0.6, 0.4])
    np.testing.assert_array_equal(validation.get_ydata(), [1.1, 0.8, 0.7])
    pixels = image.imread(str(path))
    assert pixels.shape[1] >= 800


def test_history_plot_of_a_fit_without_validation_and_chosen_metrics(tmp_path):
    dlcore.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(16, 3)).astype("float32")
    y = (x[:, :1] > 0).astype("float32")
    model = Sequential([Dense(4, activation="relu", input_shape=(3,)), Dense(1, "sigmoid")])
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    history = model.fit(x, y, epochs=3, verbose=0)
    figure = history.plot(metrics=["loss"])
    (ax,) = figure.get_axes()
    assert ax.get_title() == "loss" and _legend(ax) == ["train"]
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), history.history["loss"])


def test_learning_curves_draw_mean_and_one_std_band_per_epoch(tmp_path):
    runs = [
        _history([1.0, 0.5], [0.5, 0.7], [1.2, 0.9], [0.4, 0.6]),
        _history([0.8, 0.3], [0.6, 0.9], [1.0, 0.5], [0.5, 0.8]),
        _history([0.9, 0.4, 0.2], [0.5, 0.8, 0.9], [1.1, 0.7, 0.6], [0.45, 0.7, 0.75]),
    ]
    path = tmp_path / "cv.png"
    figure = plot.learning_curves(runs, path=str(path))
    loss_ax, accuracy_ax = figure.get_axes()
    assert loss_ax.get_title() == "loss" and accuracy_ax.get_ylabel() == "accuracy"
    assert loss_ax.get_xlabel() == "epoch"
    assert _legend(loss_ax) == [
        "train (mean of 3)",
        "train \u00b11 std",
        "validation (mean of 3)",
        "validation \u00b11 std",
    ]
    train = loss_ax.get_lines()[0]
    np.testing.assert_allclose(train.get_ydata(), [0.9, 0.4, 0.2])  # epoch 3: one run
    band = loss_ax.collections[0].get_paths()[0].vertices
    std1 = np.std([1.0, 0.8, 0.9])
    assert np.any(np.isclose(band[:, 1], 0.9 + std1))
    assert np.any(np.isclose(band[:, 1], 0.9 - std1))
    assert image.imread(str(path)).shape[1] >= 800
    # dicts (History.history) work too
    figure = plot.learning_curves([run.history for run in runs], metrics=["accuracy"])
    assert [ax.get_title() for ax in figure.get_axes()] == ["accuracy"]


def test_bad_arguments_are_refused_with_a_clear_message(tmp_path):
    history = _history([1.0], [0.5])
    with pytest.raises(ValueError, match=r"metrics must name logged values \['loss', 'accuracy'\]"):
        history.plot(metrics=["auc"])
    with pytest.raises(ValueError, match="the folder .* does not exist"):
        history.plot(path=str(tmp_path / "missing" / "curves.png"))
    with pytest.raises(ValueError, match="list of runs"):
        plot.learning_curves(history)
    with pytest.raises(ValueError, match="at least one run"):
        plot.learning_curves([])
    with pytest.raises(ValueError, match="run 1 must be a History"):
        plot.learning_curves([history, 3])
    with pytest.raises(ValueError, match=r"run 1 did not log \['accuracy'\]"):
        plot.learning_curves([history, {"loss": [1.0]}])


def test_missing_matplotlib_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"dlcore\[plot\]"):
        _history([1.0], [0.5]).plot()


def test_demo_plot_writes_the_learning_curves(tmp_path):
    path = tmp_path / "demo.png"
    done = subprocess.run(
        [sys.executable, "-m", "dlcore", "demo", "--verbose", "0", "--epochs", "3"]
        + ["--plot", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert image.imread(str(path)).shape[1] >= 800


def test_demo_plot_into_a_missing_folder_is_refused_before_training(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "dlcore", "demo", "--plot", str(tmp_path / "no" / "x.png")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "does not exist" in done.stderr


def test_readme_learning_curves_example(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    x, y = np.random.default_rng(0).random((16, 3)), np.eye(2)[np.arange(16) % 2]
    model = Sequential([Dense(8, activation="relu", input_shape=(3,)), Dense(2, "softmax")])
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    # the README's example, as written there
    history = model.fit(x, y, epochs=3, validation_split=0.25, verbose=0)
    figure = history.plot(path="curves.png")  # a matplotlib Figure, saved as a PNG
    histories = [model.fit(x, y, epochs=3, validation_split=0.25, verbose=0) for _ in range(3)]
    plot.learning_curves(histories, path="folds.png")
    assert [ax.get_title() for ax in figure.get_axes()] == ["loss"]
    assert (tmp_path / "curves.png").exists() and (tmp_path / "folds.png").exists()
