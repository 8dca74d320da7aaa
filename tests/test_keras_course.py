"""The Keras course's code runs on dlcore with only its imports changed."""

from __future__ import annotations

import numpy as np
import pytest

from dlcore.callbacks import EarlyStopping
from dlcore.layers import Dense
from dlcore.models import Sequential, load_model
from dlcore.optimizers import SGD
from dlcore.utils import to_categorical


@pytest.fixture
def titanic_like():
    """Survival from 10 numeric predictors, shaped like the course's Titanic frame."""
    rng = np.random.default_rng(0)
    predictors = rng.standard_normal((300, 10))
    survived = predictors[:, 0] + 0.5 * predictors[:, 3] + 0.3 * rng.standard_normal(300) > 0
    return predictors, survived.astype(int)


def test_course_classification_workflow(engine, titanic_like, tmp_path, capsys):
    predictors, survived = titanic_like
    n_cols = predictors.shape[1]
    target = to_categorical(survived)

    def get_new_model(input_shape=(n_cols,)):
        model = Sequential()
        model.add(Dense(100, activation="relu", input_shape=input_shape))
        model.add(Dense(100, activation="relu"))
        model.add(Dense(2, activation="softmax"))
        return model

    model = get_new_model()
    model.compile(optimizer="sgd", loss="categorical_crossentropy", metrics=["accuracy"])
    model.fit(predictors, target)

    for lr in [0.000001, 0.01, 1]:
        model = get_new_model()
        my_optimizer = SGD(lr=lr)
        model.compile(optimizer=my_optimizer, loss="categorical_crossentropy")
        model.fit(predictors, target)

    model = get_new_model()
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    hist = model.fit(predictors, target, validation_split=0.3)
    assert set(hist.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}

    early_stopping_monitor = EarlyStopping(patience=2)
    model_training = model.fit(
        predictors,
        target,
        epochs=30,
        validation_split=0.3,
        callbacks=[early_stopping_monitor],
        verbose=False,
    )
    assert 1 <= len(model_training.history["val_loss"]) <= 30
    assert model_training.history["val_accuracy"][-1] > 0.8

    path = tmp_path / "model_file.h5"
    model.save(str(path))
    my_model = load_model(str(path))
    predictions = my_model.predict(predictors)
    probability_true = predictions[:, 1]
    assert probability_true.shape == (300,)
    np.testing.assert_array_equal(predictions, model.predict(predictors))
    my_model.summary()
    out = capsys.readouterr().out
    assert "10/10" in out and "loss:" in out and "Total params" in out
    loss, accuracy = my_model.evaluate(predictors, target, verbose=0)
    assert accuracy > 0.8


def test_course_regression_workflow(engine):
    rng = np.random.default_rng(1)
    predictors = rng.standard_normal((200, 4))
    target = predictors @ np.array([1.0, -2.0, 0.5, 3.0]) + 0.1 * rng.standard_normal(200)
    n_cols = predictors.shape[1]
    model = Sequential()
    model.add(Dense(50, activation="relu", input_shape=(n_cols,)))
    model.add(Dense(32, activation="relu"))
    model.add(Dense(1))
    model.compile(optimizer="adam", loss="mean_squared_error")
    history = model.fit(predictors, target, epochs=40, verbose=0)
    assert history.history["loss"][-1] < 0.2 * history.history["loss"][0]
    assert model.predict(predictors).shape == (200, 1)
    assert isinstance(model.evaluate(predictors, target, verbose=0), float)


def test_keras2_spellings(engine):
    predictors = np.random.default_rng(2).standard_normal((40, 3))
    target = to_categorical(np.arange(40) % 2)
    model = Sequential([Dense(4, activation="relu", input_dim=3), Dense(2, activation="softmax")])
    model.compile(optimizer=SGD(lr=0.1), loss="categorical_crossentropy", metrics=["acc"])
    history = model.fit(predictors, target, nb_epoch=3, verbose=0)
    assert set(history.history) == {"loss", "acc"} and len(history.history["loss"]) == 3
    for old_name in ["logcosh", "kullback_leibler_divergence", "cosine_proximity"]:
        model.compile(optimizer="adam", loss=old_name)
        model.fit(predictors, target, epochs=1, verbose=0)
