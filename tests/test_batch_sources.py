"""Data in batches: generators, iterators and ``dlcore.utils.Sequence`` in ``fit``,
``evaluate`` and ``predict``; ``steps_per_epoch``, ``validation_steps``,
``validation_freq``, ``validation_batch_size``; memory that does not grow with the data."""

from __future__ import annotations

import threading
import tracemalloc

import numpy as np
import pytest

import dlcore
from dlcore.layers import Dense, Input
from dlcore.models import Sequential
from dlcore.utils import PyDataset, Sequence

SAMPLES, FEATURES, CLASSES, BATCH = 40, 3, 4, 8


def _data(seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(SAMPLES, FEATURES)), np.eye(CLASSES)[rng.integers(0, CLASSES, SAMPLES)]


def _model(seed: int = 1, metrics=("accuracy",)) -> Sequential:
    dlcore.set_random_seed(seed)
    model = Sequential(
        [Input((FEATURES,)), Dense(5, activation="relu"), Dense(CLASSES, activation="softmax")]
    )
    model.compile("adam", "categorical_crossentropy", metrics=list(metrics))
    return model


def _batches(x, y, w=None):
    for start in range(0, len(x), BATCH):
        rows = slice(start, start + BATCH)
        yield (x[rows], y[rows]) if w is None else (x[rows], y[rows], w[rows])


def _forever(x, y):
    while True:
        yield from _batches(x, y)


class Batches(Sequence):
    def __init__(self, x, y, w=None):
        super().__init__()
        self.x, self.y, self.w = x, y, w
        self.epochs_ended = 0

    def __len__(self):
        return -(-len(self.x) // BATCH)

    def __getitem__(self, index):
        rows = slice(index * BATCH, (index + 1) * BATCH)
        if self.w is None:
            return self.x[rows], self.y[rows]
        return self.x[rows], self.y[rows], self.w[rows]

    def on_epoch_end(self):
        self.epochs_ended += 1


def _assert_same_history(a, b):
    assert set(a.history) == set(b.history)
    for key in a.history:
        np.testing.assert_allclose(a.history[key], b.history[key], rtol=1e-6, err_msg=key)


@pytest.mark.parametrize("kind", ["generator", "sequence"])
def test_batch_sources_train_as_the_same_arrays_do(engine, kind):
    x, y = _data()
    w = np.random.default_rng(2).uniform(0.5, 2.0, SAMPLES)
    reference = _model()
    expected = reference.fit(
        x, y, sample_weight=w, batch_size=BATCH, epochs=3, shuffle=False, verbose=0
    )
    model = _model()
    if kind == "generator":
        source = (b for _ in range(3) for b in _batches(x, y, w))
        history = model.fit(source, steps_per_epoch=SAMPLES // BATCH, epochs=3, verbose=0)
    else:
        history = model.fit(Batches(x, y, w), epochs=3, shuffle=False, verbose=0)
    _assert_same_history(history, expected)
    for a, b in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_sequence_epochs_end_and_shuffle_visits_every_batch():
    x, y = _data(seed=3)
    seen: list[int] = []

    class Recording(Batches):
        def __getitem__(self, index):
            seen.append(index)
            return super().__getitem__(index)

    data = Recording(x, y)
    _model().fit(data, epochs=2, shuffle=True, verbose=0)
    assert data.epochs_ended == 2
    # peek reads batch 0 once to build and check the model; then each epoch reads all 5
    epochs = [seen[1:6], seen[6:11]]
    assert all(sorted(e) == list(range(5)) for e in epochs)
    assert PyDataset is Sequence


def test_evaluate_and_predict_take_batch_sources():
    x, y = _data(seed=4)
    model = _model()
    model.fit(x, y, epochs=1, verbose=0)
    np.testing.assert_allclose(
        model.evaluate(Batches(x, y), verbose=0), model.evaluate(x, y, verbose=0), rtol=1e-6
    )
    np.testing.assert_allclose(
        model.evaluate(_forever(x, y), steps=SAMPLES // BATCH, verbose=0),
        model.evaluate(x, y, verbose=0),
        rtol=1e-6,
    )
    np.testing.assert_allclose(model.predict(Batches(x, y)), model.predict(x), rtol=1e-6)
    only_x = (x[i : i + BATCH] for i in range(0, SAMPLES, BATCH))
    np.testing.assert_allclose(model.predict(only_x), model.predict(x), rtol=1e-6)


def test_validation_sources_steps_freq_and_batch_size():
    x, y = _data(seed=5)
    x_val, y_val = _data(seed=6)
    model = _model()
    history = model.fit(
        _forever(x, y),
        steps_per_epoch=5,
        epochs=4,
        verbose=0,
        validation_data=_forever(x_val, y_val),
        validation_steps=2,
        validation_freq=2,
    )
    assert len(history.history["loss"]) == 4 and len(history.history["val_loss"]) == 2
    # validation_steps over arrays: the first steps * validation_batch_size samples
    model = _model()
    history = model.fit(
        x,
        y,
        epochs=1,
        batch_size=BATCH,
        verbose=0,
        validation_data=(x_val, y_val),
        validation_steps=2,
        validation_batch_size=4,
        validation_freq=[1],
    )
    np.testing.assert_allclose(
        history.history["val_loss"][0],
        model.evaluate(x_val[:8], y_val[:8], verbose=0)[0],
        rtol=1e-6,
    )


def test_steps_per_epoch_over_arrays_takes_the_first_batches():
    x, y = _data(seed=7)
    model = _model()
    history = model.fit(
        x, y, batch_size=BATCH, steps_per_epoch=2, epochs=1, shuffle=False, verbose=0
    )
    reference = _model()
    expected = reference.fit(x[:16], y[:16], batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    np.testing.assert_allclose(history.history["loss"], expected.history["loss"], rtol=1e-6)


def test_a_generator_that_runs_out_stops_training_with_a_warning():
    x, y = _data(seed=8)
    with pytest.warns(UserWarning, match="ran out of batches at epoch 2 of 3"):
        history = _model().fit(_batches(x, y), epochs=3, verbose=0)
    assert len(history.history["loss"]) == 1


def test_the_users_generator_runs_one_batch_ahead_on_another_thread():
    x, y = _data(seed=9)
    threads = set()

    def recording():
        for batch in _batches(x, y):
            threads.add(threading.current_thread().name)
            yield batch

    _model().fit(recording(), epochs=1, verbose=0)
    assert "dlcore-batches" in threads


# ---------------------------------------------------------------------- refused
def test_a_batch_of_the_wrong_shape_midway_is_named():
    x, y = _data(seed=10)

    def shapes_change():
        yield x[:8], y[:8]
        yield x[:8], y[:8]
        yield x[:8, :2], y[:8]

    model = _model()
    with pytest.raises(ValueError, match=r"batch 2 of x: .*3 features.*\(8, 2\)"):
        model.fit(shapes_change(), epochs=1, verbose=0)


def test_bad_batch_structures_and_arguments_are_refused():
    x, y = _data(seed=11)
    model = _model()
    with pytest.raises(ValueError, match=r"batch 0 of x: expected a tuple \(x, y\)"):
        model.fit(iter([x[:8]]), epochs=1, verbose=0)
    with pytest.raises(ValueError, match="y must be None"):
        model.fit(_batches(x, y), y, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="validation_split cannot split"):
        model.fit(_batches(x, y), validation_split=0.2, verbose=0)
    with pytest.raises(ValueError, match="Sequence of 5 batches, but 6 steps"):
        model.fit(Batches(x, y), steps_per_epoch=6, verbose=0)
    with pytest.raises(ValueError, match="yields no batch"):
        model.fit(iter([]), verbose=0)
    with pytest.raises(ValueError, match="validation_freq expected a positive integer"):
        model.fit(x, y, validation_data=(x, y), validation_freq=0, verbose=0)
    with pytest.raises(ValueError, match="steps_per_epoch=9 asks for more batches"):
        model.fit(x, y, batch_size=BATCH, steps_per_epoch=9, verbose=0)
    with pytest.raises(ValueError, match="batch 1 of x: .*non-negative"):
        model.fit(
            iter([(x[:8], y[:8], np.ones(8)), (x[:8], y[:8], -np.ones(8))]), epochs=1, verbose=0
        )

    def failing():
        yield x[:8], y[:8]
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        model.fit(failing(), epochs=1, verbose=0)


# ---------------------------------------------------------------------- memory
def _peak_bytes_of_generator_fit(batches: int) -> int:
    model = _model(metrics=())
    rng = np.random.default_rng(12)

    def fresh():
        for _ in range(batches):
            yield rng.normal(size=(256, FEATURES)), np.eye(CLASSES)[rng.integers(0, CLASSES, 256)]

    model.fit(fresh(), epochs=1, verbose=0)  # compiles and warms the caches
    tracemalloc.start()
    try:
        model.fit(fresh(), epochs=1, verbose=0)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_of_a_generator_fit_does_not_grow_with_the_data():
    """Ten times the batches (each 256 x (3 + 4) float64, 14 KB) cost almost no more
    memory: only the batches in flight are held, never the data set (400 batches are
    5.7 MB). What grows is the epoch's per-batch loss scalars, read once at its end: a
    few hundred bytes a batch."""
    small, large = _peak_bytes_of_generator_fit(40), _peak_bytes_of_generator_fit(400)
    batch_bytes = 256 * (FEATURES + CLASSES) * 8
    assert (large - small) / 360 < batch_bytes / 20, (small, large)
    assert large < 400 * batch_bytes / 10


def test_steps_over_arrays_in_evaluate_and_predict_take_the_first_batches():
    x, y = _data(seed=13)
    model = _model()
    np.testing.assert_allclose(
        model.evaluate(x, y, batch_size=BATCH, steps=2, verbose=0),
        model.evaluate(x[:16], y[:16], verbose=0),
        rtol=1e-6,
    )
    np.testing.assert_allclose(model.predict(x, batch_size=BATCH, steps=3), model.predict(x[:24]))


def test_a_generator_fit_ends_with_the_moving_averages_as_an_array_fit_does():
    from dlcore import optimizers

    x, y = _data(seed=14)
    weights = []
    for data in ("arrays", "generator"):
        model = _model()
        model.compile(optimizers.Adam(use_ema=True, ema_momentum=0.5), "categorical_crossentropy")
        if data == "arrays":
            model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
        else:
            model.fit(_forever(x, y), steps_per_epoch=SAMPLES // BATCH, epochs=2, verbose=0)
        weights.append(model.get_weights())
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, rtol=1e-6)
