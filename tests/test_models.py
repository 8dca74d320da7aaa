"""Sequential end to end: training agrees across engines and with finite differences,
Keras behaviour users can see, weights and engines."""

from __future__ import annotations

import numpy as np
import pytest

import dlcore
from dlcore.callbacks import Callback
from dlcore.layers import Activation, Dense, Dropout, Input, PReLU
from dlcore.models import Sequential
from dlcore.optimizers import SGD, Adam
from dlcore.regularizers import l1_l2, l2
from dlcore.utils import to_categorical


def blobs(n: int = 96, features: int = 6, classes: int = 3, seed: int = 0):
    """A small, learnable classification problem: Gaussian blobs."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    centers = rng.standard_normal((classes, features)) * 2
    x = centers[labels] + rng.standard_normal((n, features))
    return x, labels


def small_model(seed: int = 3, dtype: str = "float32") -> Sequential:
    dlcore.set_floatx(dtype)
    dlcore.set_random_seed(seed)
    model = Sequential(
        [
            Dense(8, activation="tanh", input_shape=(6,), kernel_regularizer=l2(1e-3)),
            Dense(8, activation="relu"),
            Dense(3, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=Adam(learning_rate=0.01), loss="categorical_crossentropy", metrics=["accuracy"]
    )
    return model


def history_on(engine_name: str, dtype: str) -> dict[str, list[float]]:
    x, labels = blobs()
    with dlcore.use_backend(engine_name):
        model = small_model(dtype=dtype)
        history = model.fit(
            x, to_categorical(labels, 3), batch_size=16, epochs=4, validation_split=0.25, verbose=0
        )
    return history.history


@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-10), ("float32", 1e-4)])
def test_fit_gives_the_same_history_on_every_engine(engine_name, dtype, rtol):
    reference = history_on("numpy", dtype)
    got = history_on(engine_name, dtype)
    assert set(got) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    for key in reference:
        np.testing.assert_allclose(got[key], reference[key], rtol=rtol, err_msg=key)
    assert reference["loss"][-1] < reference["loss"][0]


def flat_gradient_by_sgd_step(model: Sequential, x, y) -> np.ndarray:
    """The gradient the model computes, read off one SGD step with learning rate 1."""
    before = np.concatenate([w.ravel() for w in model.get_weights()])
    model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    after = np.concatenate([w.ravel() for w in model.get_weights()])
    return before - after


@pytest.mark.parametrize(
    "loss,last_activation,targets",
    [
        ("categorical_crossentropy", "softmax", "onehot"),
        ("sparse_categorical_crossentropy", "softmax", "labels"),
        ("binary_crossentropy", "sigmoid", "binary"),
        ("mean_squared_error", "linear", "onehot"),
        ("categorical_hinge", "softsign", "onehot"),
    ],
)
def test_whole_model_gradient_matches_finite_differences(
    engine, simulated, loss, last_activation, targets
):
    dlcore.set_floatx("float64")
    dlcore.set_random_seed(11)
    x, labels = blobs(n=7, features=4)
    y = {"onehot": np.eye(3)[labels], "labels": labels, "binary": np.eye(3)[labels]}[targets]

    def build() -> Sequential:
        dlcore.set_random_seed(11)
        model = Sequential(
            [
                Input(shape=(4,)),
                Dense(
                    5,
                    activation="elu",
                    kernel_regularizer=l1_l2(l1=1e-3, l2=1e-2),
                    bias_regularizer=l2(1e-2),
                ),
                PReLU(alpha_initializer="random_uniform"),
                Dropout(0.0),
                Dense(4, activation="swish"),
                Dense(3),
                Activation(last_activation),
            ]
        )
        model.compile(optimizer=SGD(learning_rate=1.0), loss=loss)
        return model

    model = build()
    weights = model.get_weights()
    gradient = flat_gradient_by_sgd_step(model, x, y)
    if simulated:  # every coordinate against numpy's; a few numerically, below
        with dlcore.use_backend("numpy"):
            expected = flat_gradient_by_sgd_step(build(), x, y)
        np.testing.assert_allclose(gradient, expected, rtol=1e-10, atol=1e-15)

    def total_loss(flat: np.ndarray) -> float:
        shapes = [w.shape for w in weights]
        parts = np.split(flat, np.cumsum([int(np.prod(s)) for s in shapes])[:-1])
        model.set_weights([p.reshape(s) for p, s in zip(parts, shapes)])
        return model.evaluate(x, y, batch_size=len(x), verbose=0)

    flat = np.concatenate([w.ravel() for w in weights])
    coordinates = np.arange(flat.size)
    if simulated:  # one coordinate of every weight array: its middle element
        sizes = [w.size for w in weights]
        coordinates = np.cumsum([0, *sizes[:-1]]) + np.asarray(sizes) // 2
    numeric = np.zeros(coordinates.size)
    for k, i in enumerate(coordinates):
        up, down = flat.copy(), flat.copy()
        up[i] += 1e-6
        down[i] -= 1e-6
        numeric[k] = (total_loss(up) - total_loss(down)) / 2e-6
    np.testing.assert_allclose(gradient[coordinates], numeric, atol=2e-7, rtol=1e-5)


def test_fused_softmax_crossentropy_equals_logits_path(engine):
    x, labels = blobs(n=40)
    y = to_categorical(labels, 3)
    results = []
    for last, loss in [("softmax", "categorical_crossentropy"), ("linear", None)]:
        dlcore.set_floatx("float64")
        dlcore.set_random_seed(5)
        model = Sequential(
            [Dense(4, activation="relu", input_shape=(6,)), Dense(3, activation=last)]
        )
        loss_object = loss or dlcore.losses.CategoricalCrossentropy(from_logits=True)
        model.compile(optimizer="sgd", loss=loss_object)
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
        results.append(model.get_weights())
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_validation_split_takes_the_last_samples_before_shuffling(engine):
    x, labels = blobs(n=50)
    y = to_categorical(labels, 3)
    split = (
        small_model(dtype="float64").fit(x, y, epochs=2, validation_split=0.2, verbose=0).history
    )
    explicit = (
        small_model(dtype="float64")
        .fit(x[:40], y[:40], epochs=2, validation_data=(x[40:], y[40:]), verbose=0)
        .history
    )
    for key in split:
        np.testing.assert_allclose(split[key], explicit[key], rtol=1e-12, err_msg=key)


class BatchSizes(Callback):
    def __init__(self):
        super().__init__()
        self.steps = []

    def on_train_batch_end(self, batch, logs=None):
        self.steps.append(batch)


def test_last_partial_batch_is_used(engine):
    x, labels = blobs(n=10)
    recorder = BatchSizes()
    small_model().fit(
        x, to_categorical(labels, 3), batch_size=4, epochs=1, verbose=0, callbacks=[recorder]
    )
    assert recorder.steps == [0, 1, 2]


def test_get_and_set_weights_keras_order_and_shapes(engine):
    model = small_model()
    shapes = [w.shape for w in model.get_weights()]
    assert shapes == [(6, 8), (8,), (8, 8), (8,), (8, 3), (3,)]
    new = [np.full(s, i, dtype=np.float32) for i, s in enumerate(shapes)]
    model.set_weights(new)
    for got, want in zip(model.get_weights(), new):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match=r"weights\[1\] must have shape \(8,\), received \(9,\)"):
        model.set_weights([new[0], np.zeros(9)] + new[2:])
    with pytest.raises(ValueError, match="expected a list of 6 arrays"):
        model.set_weights(new[:2])
    for got, want in zip(model.get_weights(), new):  # nothing written by the failed calls
        np.testing.assert_array_equal(got, want)


def test_model_to_moves_weights_and_optimizer_state(engine_name):
    x, labels = blobs()
    y = to_categorical(labels, 3)
    reference = small_model(dtype="float64")
    reference.fit(x, y, epochs=2, shuffle=False, verbose=0)
    moved = small_model(dtype="float64")
    moved.fit(x, y, epochs=1, shuffle=False, verbose=0)
    moved.to(engine_name)
    assert moved.engine.name == engine_name
    moved.fit(x, y, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(reference.get_weights(), moved.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-10)


def test_same_seed_same_initial_weights_on_every_engine(engine_name):
    with dlcore.use_backend(engine_name):
        a = small_model(seed=42).get_weights()
    b = small_model(seed=42).get_weights()
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)


def test_float64_is_selectable_and_float32_is_the_default(engine):
    assert dlcore.floatx() == "float32"
    assert small_model(dtype="float32").predict(np.zeros((2, 6))).dtype == np.float32
    assert small_model(dtype="float64").predict(np.zeros((2, 6))).dtype == np.float64
    with pytest.raises(ValueError, match="floatx must be one of float32, float64"):
        dlcore.set_floatx("float16")


def test_summary_lists_layers_shapes_and_counts(engine, capsys):
    small_model().summary()
    out = capsys.readouterr().out
    assert "dense" in out and "(Dense)" in out and "(None, 8)" in out and "(None, 3)" in out
    assert "Total params: 155" in out  # 6*8+8 + 8*8+8 + 8*3+3
    assert small_model().count_params() == 155


def test_model_builds_from_the_data_without_input_shape(engine):
    x, labels = blobs(n=20)
    model = Sequential([Dense(4, activation="relu"), Dense(3, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x, labels, epochs=1, verbose=0)
    assert set(history.history) == {"loss", "accuracy"}
    assert model.predict(x).shape == (20, 3)


def test_evaluate_returns_loss_or_list_and_predict_returns_numpy(engine):
    x, labels = blobs(n=30)
    y = to_categorical(labels, 3)
    model = small_model(dtype="float64")
    result = model.evaluate(x, y, verbose=0)
    assert isinstance(result, list) and len(result) == 2
    probabilities = model.predict(x)
    assert isinstance(probabilities, np.ndarray)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-12)
    accuracy = np.mean(probabilities.argmax(1) == labels)
    assert result[1] == pytest.approx(accuracy)
    cross_entropy = -np.mean(np.log(np.clip(probabilities[np.arange(30), labels], 1e-7, 1)))
    penalty = 1e-3 * np.sum(model.get_weights()[0] ** 2)
    assert result[0] == pytest.approx(cross_entropy + penalty, rel=1e-10)
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    assert isinstance(model.evaluate(x, y, verbose=0), float)


def test_training_learns_a_separable_problem(engine):
    x, labels = blobs(n=200, seed=1)
    model = small_model()
    history = model.fit(x, to_categorical(labels, 3), epochs=30, batch_size=16, verbose=0)
    assert history.history["accuracy"][-1] > 0.9


class CountingReads:
    """Wraps an engine's scalars_to_numpy to count the device-to-host reads of fit."""

    def __init__(self, engine, monkeypatch):
        self.calls = 0
        original = engine.scalars_to_numpy

        def counted(values):
            self.calls += 1
            return original(values)

        monkeypatch.setattr(engine, "scalars_to_numpy", counted)


@pytest.mark.parametrize("verbose", [0, 2])
def test_fit_reads_scalars_once_per_epoch_when_nothing_needs_batch_logs(
    engine, monkeypatch, verbose, capsys
):
    x, labels = blobs(n=64)
    model = small_model()
    reads = CountingReads(engine, monkeypatch)
    model.fit(
        x, to_categorical(labels, 3), batch_size=8, epochs=3, verbose=verbose, validation_split=0.25
    )
    assert reads.calls == 3 * 2  # per epoch: the training totals, then the validation totals


def test_batch_callbacks_get_running_averages_read_on_demand(engine, monkeypatch):
    x, labels = blobs(n=40)
    y = to_categorical(labels, 3)
    seen = []

    class Recorder(Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(dict(logs))

    model = small_model(dtype="float64")
    history = model.fit(
        x, y, batch_size=10, epochs=1, verbose=0, shuffle=False, callbacks=[Recorder()]
    )
    assert len(seen) == 4
    assert seen[-1]["loss"] == pytest.approx(history.history["loss"][0], rel=1e-12)
    assert seen[-1]["accuracy"] == pytest.approx(history.history["accuracy"][0], rel=1e-12)


def test_layer_get_and_set_weights_and_model_shapes(engine):
    model = small_model()
    assert model.input_shape == (None, 6) and model.output_shape == (None, 3)
    first = model.layers[0]
    kernel, bias = first.get_weights()
    assert kernel.shape == (6, 8) and bias.shape == (8,)
    first.set_weights([np.ones((6, 8)), np.zeros(8)])
    np.testing.assert_array_equal(model.get_weights()[0], np.ones((6, 8), dtype=np.float32))
    with pytest.raises(ValueError, match=r"set_weights: weights\[0\] must have shape \(6, 8\)"):
        first.set_weights([np.ones((8, 6)), np.zeros(8)])
    np.testing.assert_array_equal(first.get_weights()[0], np.ones((6, 8)))


def test_readme_example_runs(engine, tmp_path, monkeypatch):
    """The usage example in README.md runs as written, on the digits data."""
    import pathlib
    import re
    import zipfile

    from sklearn.datasets import load_digits

    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    digits = load_digits()
    monkeypatch.chdir(tmp_path)
    namespace = {"x": digits.data / 16.0, "labels": digits.target}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["probabilities"].shape == (1797, 10)
    saved = tmp_path / "digits.keras"
    assert {"config.json", "__dlcore_format__.npy"} <= set(zipfile.ZipFile(saved).namelist())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fit_evaluate_predict_leave_the_users_arrays_untouched(engine, dtype):
    x, labels = blobs(n=48)
    x = x.astype(dtype)
    y = to_categorical(labels, 3).astype(dtype)
    x_copy, y_copy = x.copy(), y.copy()
    model = small_model(dtype=dtype)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, validation_data=(x, y))
    model.evaluate(x, y, verbose=0)
    model.predict(x)
    weights = model.get_weights()
    weights_copy = [w.copy() for w in weights]
    model.set_weights(weights)
    model.fit(x, y, epochs=1, verbose=0)
    np.testing.assert_array_equal(x, x_copy)
    np.testing.assert_array_equal(y, y_copy)
    for w, w0 in zip(weights, weights_copy):
        np.testing.assert_array_equal(w, w0)


class HookRecorder(Callback):
    """Records every hook call with its batch index and the logs it was given."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __getattribute__(self, name):
        attribute = super().__getattribute__(name)
        if name.startswith("on_") and callable(attribute):

            def record(*args, **kwargs):
                if name in ("on_batch_begin", "on_batch_end"):  # Keras aliases of train hooks
                    return attribute(*args, **kwargs)
                self.calls.append((name, args[:1] if args and isinstance(args[0], int) else ()))
                logs = kwargs.get("logs", args[-1] if args else None)
                if name.endswith("_end") and logs is not None:
                    self.calls[-1] += (dict(logs),)
                return attribute(*args, **kwargs)

            return record
        return attribute


def test_fit_evaluate_predict_drive_the_keras_hooks_in_order(engine):
    x, labels = blobs(n=20)
    y = to_categorical(labels, 3)
    model = small_model(dtype="float64")
    recorder = HookRecorder()
    history = model.fit(
        x,
        y,
        batch_size=8,
        epochs=1,
        verbose=0,
        validation_data=(x[:10], y[:10]),
        callbacks=[recorder],
    )
    names = [call[0] for call in recorder.calls]
    train = ["on_train_batch_begin", "on_train_batch_end"] * 3
    test = ["on_test_batch_begin", "on_test_batch_end"] * 2
    assert names == [
        "on_train_begin",
        "on_epoch_begin",
        *train,
        "on_test_begin",
        *test,
        "on_test_end",
        "on_epoch_end",
        "on_train_end",
    ]
    test_end_logs = recorder.calls[names.index("on_test_end")][-1]
    assert test_end_logs["loss"] == pytest.approx(history.history["val_loss"][0], rel=1e-12)

    recorder.calls.clear()
    result = model.evaluate(x, y, batch_size=8, verbose=0, callbacks=[recorder])
    names = [call[0] for call in recorder.calls]
    assert names == [
        "on_test_begin",
        *(["on_test_batch_begin", "on_test_batch_end"] * 3),
        "on_test_end",
    ]
    assert recorder.calls[-1][-1]["loss"] == pytest.approx(result[0], rel=1e-12)
    assert model.history is history  # evaluate leaves the training history alone

    recorder.calls.clear()
    predictions = model.predict(x, batch_size=8, callbacks=[recorder])
    names = [call[0] for call in recorder.calls]
    assert names == [
        "on_predict_begin",
        *(["on_predict_batch_begin", "on_predict_batch_end"] * 3),
        "on_predict_end",
    ]
    outputs = [call[-1]["outputs"] for call in recorder.calls if call[0] == "on_predict_batch_end"]
    np.testing.assert_array_equal(np.concatenate(outputs), predictions)
