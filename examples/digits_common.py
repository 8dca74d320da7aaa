"""What the hyperparameter-search examples share: scikit-learn's digits split the way
``python -m dlcore demo`` splits them, the searched MLP, its training and its scores.

The demo holds out the last 30% of the digits and reports its accuracy there; the
examples keep those rows as the *test* set, never seen while searching, and split the
first 70% into training rows (the first 80% of them) and validation rows (the rest),
on which trials are compared and early stopping watches. The demo's own model trained
the same way (:func:`baseline_accuracy`) is what a search has to beat.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import numpy as np

import dlcore
from dlcore.callbacks import Callback, EarlyStopping
from dlcore.demo import build_model as build_demo_model
from dlcore.demo import load_digits_data
from dlcore.layers import Dense, Dropout
from dlcore.models import Sequential
from dlcore.optimizers import Adam

TEST_FRACTION = 0.3  # the demo's hold-out: the last 30% of the samples
VALIDATION_FRACTION = 0.2  # of the remaining 70%
PATIENCE = 10  # the demo's early stopping


@dataclass(frozen=True)
class DigitsSplits:
    """Float32 pixels in [0, 1] ``(n, 64)`` and one-hot float32 labels ``(n, 10)`` of the
    three splits, in the data's order (no shuffling, as the demo)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_splits() -> DigitsSplits:
    """The digits split into training (56%), validation (14%) and test (the last 30%) rows."""
    x, y = load_digits_data()
    test_at = int(len(x) * (1 - TEST_FRACTION))
    val_at = int(test_at * (1 - VALIDATION_FRACTION))
    return DigitsSplits(
        x[:val_at], y[:val_at], x[val_at:test_at], y[val_at:test_at], x[test_at:], y[test_at:]
    )


def build_mlp(width: int, depth: int, dropout: float, learning_rate: float) -> Sequential:
    """``depth`` blocks of Dense(width, relu) followed by Dropout(dropout) when it is not 0,
    then Dense(10, softmax); compiled with Adam(learning_rate) and categorical
    cross-entropy, reporting accuracy."""
    layers: list[Any] = []
    for block in range(depth):
        extra = {"input_shape": (64,)} if block == 0 else {}
        layers.append(Dense(width, activation="relu", **extra))
        if dropout > 0:
            layers.append(Dropout(dropout))
    layers.append(Dense(10, activation="softmax"))
    model = Sequential(layers)
    model.compile(
        optimizer=Adam(learning_rate=learning_rate),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def train(
    model: Sequential,
    splits: DigitsSplits,
    epochs: int,
    callbacks: list[Callback] | None = None,
) -> float:
    """Fits ``model`` on the training rows for at most ``epochs`` epochs with the demo's
    early stopping on the validation accuracy (best weights restored), plus ``callbacks``;
    returns the best validation accuracy."""
    stopper = EarlyStopping(monitor="val_accuracy", patience=PATIENCE, restore_best_weights=True)
    history = model.fit(
        splits.x_train,
        splits.y_train,
        epochs=epochs,
        validation_data=(splits.x_val, splits.y_val),
        callbacks=[stopper, *(callbacks or [])],
        verbose=0,
    )
    return float(max(history.history["val_accuracy"]))


def score_on_test(model: Sequential, splits: DigitsSplits) -> float:
    """Accuracy of ``model`` on the test rows (the demo's last 30%)."""
    _, accuracy = cast("list[float]", model.evaluate(splits.x_test, splits.y_test, verbose=0))
    return float(accuracy)


def baseline_accuracy(splits: DigitsSplits, epochs: int, seed: int) -> float:
    """Test accuracy of the demo's model (Dense(50, relu) x 2, Adam at its default rate)
    trained the same way as the searched models."""
    dlcore.set_random_seed(seed)
    model = build_demo_model()
    train(model, splits, epochs)
    return score_on_test(model, splits)
