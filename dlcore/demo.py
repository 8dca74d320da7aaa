"""The course model on handwritten digits: ``python -m dlcore demo``.

Trains Dense(50, relu) - Dense(50, relu) - Dense(10, softmax) with Adam and
categorical cross-entropy on scikit-learn's bundled 8x8 digits, holding out the
last 30% of the samples for validation with early stopping; then saves the
model, loads it back and checks that the reloaded model predicts the same.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from typing import cast

import numpy as np

import dlcore
from dlcore.callbacks import EarlyStopping
from dlcore.layers import Dense
from dlcore.models import Sequential, load_model
from dlcore.utils import to_categorical


@dataclass(frozen=True)
class DemoResult:
    """What the demo measured."""

    engine: str
    epochs: int
    val_accuracy: float
    seconds: float
    reload_max_difference: float
    saved_to: str


def load_digits_data() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: float32 pixels scaled to [0, 1] ``(1797, 64)`` and
    one-hot float32 labels ``(1797, 10)``."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError(
            "the demo uses scikit-learn's bundled digits data: pip install 'dlcore[demo]'"
        ) from None
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    return x, to_categorical(digits.target, 10)


def build_model() -> Sequential:
    """The course's model: two hidden ReLU layers of 50 units and a softmax output."""
    model = Sequential(
        [
            Dense(50, activation="relu", input_shape=(64,)),
            Dense(50, activation="relu"),
            Dense(10, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    return model


def run(
    backend: str = "numpy",
    *,
    epochs: int = 200,
    seed: int = 0,
    verbose: int = 1,
    save_path: str | None = None,
    plot_path: str | None = None,
) -> DemoResult:
    """Train, evaluate, save, reload and compare; prints progress unless ``verbose=0``.

    Args:
        backend: the engine to train on.
        epochs: upper bound on epochs; early stopping usually ends sooner.
        seed: seed of weights and shuffling.
        verbose: 0 silent, 1 progress bar, 2 one line per epoch.
        save_path: where to save the model; a temporary file when ``None``.
        plot_path: where to save the learning curves (loss and accuracy, training and
            validation) as a PNG; needs matplotlib (``pip install 'dlcore[plot]'``).
    """
    if plot_path is not None:
        from dlcore import plot

        plot.require_matplotlib()  # fail now, not after training
    say = print if verbose else (lambda *args, **kwargs: None)
    x, y = load_digits_data()
    dlcore.set_random_seed(seed)
    with dlcore.use_backend(backend) as engine:
        say(f"engine: {engine.name} on {engine.device}")
        model = build_model()
        model.summary(print_fn=say)
        stopper = EarlyStopping(monitor="val_accuracy", patience=10, restore_best_weights=True)
        started = time.perf_counter()
        history = model.fit(
            x, y, epochs=epochs, validation_split=0.3, callbacks=[stopper], verbose=verbose
        )
        seconds = time.perf_counter() - started
        if plot_path is not None:
            history.plot(path=plot_path)
            say(f"learning curves written to {plot_path}")
        split_at = int(len(x) * 0.7)
        # the model has one metric, so evaluate returns [loss, accuracy]
        _, val_accuracy = cast("list[float]", model.evaluate(x[split_at:], y[split_at:], verbose=0))
        say(
            f"validation accuracy on the last 30% of the digits: {val_accuracy:.4f} "
            f"after {len(history.epoch)} epochs in {seconds:.1f} s"
        )
        with tempfile.TemporaryDirectory() as scratch:
            path = save_path or os.path.join(scratch, "digits_model.h5")
            model.save(path)
            reloaded = load_model(path)
            difference = float(np.max(np.abs(reloaded.predict(x) - model.predict(x))))
        say(
            f"saved to {save_path or 'a temporary file'}, reloaded: largest prediction "
            f"difference {difference:.1e}"
        )
    return DemoResult(
        engine=engine.name,
        epochs=len(history.epoch),
        val_accuracy=float(val_accuracy),
        seconds=seconds,
        reload_max_difference=difference,
        saved_to=save_path or "",
    )
