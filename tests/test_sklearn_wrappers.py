"""dlcore.wrappers: dlcore models as scikit-learn estimators, with Keras 3's signature.

Runs on the numpy engine only: the wrappers call ``fit`` and ``predict`` and never the
engine, which the conformance suite covers.
"""

from __future__ import annotations

import pathlib
import pickle
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn.base import clone  # noqa: E402
from sklearn.model_selection import (  # noqa: E402
    GridSearchCV,
    KFold,
    RandomizedSearchCV,
    StratifiedKFold,
    cross_val_score,
    learning_curve,
    validation_curve,
)
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import dlcore  # noqa: E402
from dlcore.layers import Dense, Input  # noqa: E402
from dlcore.models import Sequential  # noqa: E402
from dlcore.optimizers import SGD, Adam  # noqa: E402
from dlcore.wrappers import SKLearnClassifier, SKLearnRegressor, SKLearnTransformer  # noqa: E402

QUIET = {"epochs": 30, "batch_size": 16, "verbose": 0}


@pytest.fixture(autouse=True)
def numpy_engine():
    with dlcore.use_backend("numpy"):
        dlcore.set_random_seed(0)
        yield


def blobs(n: int = 60, features: int = 3, classes: int = 3, seed: int = 0):
    """Well separated Gaussian blobs and their labels 0..classes-1."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    centers = np.eye(classes, features) * 6
    return centers[labels] + rng.standard_normal((n, features)), labels


def build_classifier(X, y, units: int = 8, learning_rate: float = 0.05):
    """A softmax classifier sized from the data: ``y`` is one-hot ``(N, classes)``."""
    model = Sequential(
        [Input((X.shape[1],)), Dense(units, activation="tanh"), Dense(y.shape[1], "softmax")]
    )
    model.compile(optimizer=Adam(learning_rate), loss="categorical_crossentropy")
    return model


def build_regressor(X, y, units: int = 8):
    """A linear-output regressor with ``y.shape[1]`` outputs."""
    model = Sequential([Input((X.shape[1],)), Dense(units, "tanh"), Dense(y.shape[1])])
    model.compile(optimizer=Adam(0.05), loss="mse")
    return model


def classifier(**kwargs) -> SKLearnClassifier:
    kwargs.setdefault("fit_kwargs", dict(QUIET))
    return SKLearnClassifier(build_classifier, **kwargs)


# ------------------------------------------------------------------ classifier
@pytest.mark.parametrize(
    "names", [np.array(["cat", "dog", "emu"]), np.array([-3, 7, 10]), np.array([1.0, 2.0, 5.0])]
)
def test_classifier_returns_labels_of_the_kind_it_was_given(names):
    X, labels = blobs()
    y = names[labels]
    est = classifier().fit(X, y)
    np.testing.assert_array_equal(est.classes_, np.sort(names))
    predicted = est.predict(X)
    assert predicted.dtype == y.dtype and predicted.shape == y.shape
    proba = est.predict_proba(X)
    np.testing.assert_allclose(proba, est.model_.predict(X, verbose=0))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    # predict is the class of the largest probability, score the plain accuracy
    np.testing.assert_array_equal(predicted, est.classes_[np.argmax(proba, axis=1)])
    assert est.score(X, y) == pytest.approx(np.mean(predicted == y))
    assert est.score(X, y) > 0.9
    assert est.n_features_in_ == 3 and est.epoch_ == QUIET["epochs"]
    assert len(est.history_["loss"]) == QUIET["epochs"]


def test_classifier_takes_one_hot_rows_and_predicts_one_hot_rows():
    X, labels = blobs()
    y = np.eye(3, dtype=np.int32)[labels]
    est = classifier().fit(X, y)
    np.testing.assert_array_equal(est.classes_, [0, 1, 2])
    predicted = est.predict(X)
    assert predicted.shape == (60, 3) and predicted.dtype == np.int32
    np.testing.assert_array_equal(predicted.sum(axis=1), 1)
    assert est.score(X, y) > 0.9


def test_binary_labels_train_a_two_unit_softmax_on_one_hot_targets():
    seen = {}

    def build(X, y):
        seen["X"], seen["y"] = X, y
        return build_classifier(X, y)

    X, labels = blobs(classes=2)
    y = np.array([True, False])[labels]
    est = SKLearnClassifier(build, fit_kwargs=QUIET).fit(X, y)
    np.testing.assert_array_equal(seen["X"], X)
    # as Keras's wrapper: the callable sees the one-hot encoding, columns in classes_ order
    np.testing.assert_array_equal(seen["y"], np.eye(2)[y.astype(int)])
    assert est.predict(X).dtype == bool and est.score(X, y) > 0.9


def test_a_callable_without_X_and_y_gets_only_its_model_kwargs():
    calls = []

    def build(units):
        calls.append(units)
        return build_classifier(np.zeros((1, 3)), np.zeros((1, 3)), units=units)

    X, y = blobs()
    SKLearnClassifier(build, model_kwargs={"units": 5}, fit_kwargs={"epochs": 1, "verbose": 0}).fit(
        X, y
    )
    assert calls == [5]


def test_column_labels_warn_and_are_read_as_labels():
    from sklearn.exceptions import DataConversionWarning

    X, y = blobs()
    with pytest.warns(DataConversionWarning, match=r"A column-vector y was passed"):
        est = classifier(fit_kwargs={"epochs": 1, "verbose": 0}).fit(X, y[:, None])
    assert est.predict(X).shape == (60,)


# ------------------------------------------------------------------- regressor
def test_regressor_multi_output_and_r2_score():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((64, 3))
    y = np.stack([X[:, 0] - X[:, 1], 0.5 * X[:, 2]], axis=1)
    est = SKLearnRegressor(build_regressor, fit_kwargs={**QUIET, "epochs": 60}).fit(X, y)
    predicted = est.predict(X)
    assert predicted.shape == (64, 2)
    np.testing.assert_allclose(predicted, est.model_.predict(X, verbose=0))
    # R^2 per output, averaged with equal weights, in float64
    residual = ((y - predicted) ** 2).sum(axis=0)
    total = ((y - y.mean(axis=0)) ** 2).sum(axis=0)
    assert est.score(X, y) == pytest.approx(np.mean(1 - residual / total), rel=1e-6)
    assert est.score(X, y) > 0.8


def test_regressor_one_output_predicts_a_vector():
    seen = {}

    def build(X, y):
        seen["y"] = y
        return build_regressor(X, y)

    X = np.random.default_rng(2).standard_normal((20, 3))
    est = SKLearnRegressor(build, fit_kwargs={"epochs": 1, "verbose": 0}).fit(X, X[:, 0])
    assert seen["y"].shape == (20, 1)
    assert est.predict(X).shape == (20,)
    assert est.predict(X[:1]).shape == (1,)


def test_transformer_returns_the_model_outputs():
    X, labels = blobs()
    est = SKLearnTransformer(build_regressor, fit_kwargs={"epochs": 2, "verbose": 0})
    out = est.fit(X, X[:, :2]).transform(X)
    assert out.shape == (60, 2)
    np.testing.assert_allclose(out, est.model_.predict(X, verbose=0))


# -------------------------------------------------------------- model instance
def sgd_model(learning_rate: float) -> Sequential:
    model = Sequential([Input((3,)), Dense(4, "tanh"), Dense(3, "softmax")])
    model.compile(optimizer=SGD(learning_rate), loss="categorical_crossentropy")
    return model


def test_a_model_instance_is_copied_with_fresh_weights_per_fit():
    X, y = blobs()
    given = sgd_model(0.1)
    before = given.get_weights()
    est = SKLearnClassifier(given, fit_kwargs={"epochs": 2, "verbose": 0}).fit(X, y)
    assert est.model_ is not given
    for a, b in zip(before, given.get_weights()):
        np.testing.assert_array_equal(a, b)  # the given model is never trained
    # as keras.models.clone_model: the architecture and compile settings, new weights
    assert [w.shape for w in est.model_.get_weights()] == [w.shape for w in before]
    assert type(est.model_.optimizer) is SGD
    assert est.model_.loss.get_config() == given.loss.get_config()
    frozen = SKLearnClassifier(sgd_model(1e-30), fit_kwargs={"epochs": 1, "verbose": 0})
    first = frozen.fit(X, y).model_.get_weights()[0]
    assert not np.array_equal(first, frozen.model.get_weights()[0])
    assert not np.array_equal(first, frozen.fit(X, y).model_.get_weights()[0])


def test_warm_start_starts_from_the_given_weights_and_keeps_training():
    X, y = blobs()
    # a learning rate far below float32's resolution: the weights show where training started
    given = sgd_model(1e-30)
    est = SKLearnClassifier(given, warm_start=True, fit_kwargs={"epochs": 1, "verbose": 0})
    est.fit(X, y)
    for a, b in zip(given.get_weights(), est.model_.get_weights()):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-20)
    assert est.model_ is not given
    trained = est.model_
    est.model_.optimizer.learning_rate = 0.5
    est.fit(X, y)
    assert est.model_ is trained
    assert not np.array_equal(given.get_weights()[0], trained.get_weights()[0])
    with pytest.raises(ValueError, match=r"warm_start: y has classes .*\[7\]"):
        est.fit(X, np.where(y == 2, 7, y))


# ------------------------------------------------------------------ parameters
def test_routed_parameters_get_and_set():
    est = classifier(model_kwargs={"units": 4})
    params = est.get_params()
    assert params["model__units"] == 4 and params["fit__epochs"] == QUIET["epochs"]
    assert "model__units" not in est.get_params(deep=False)
    given = est.model_kwargs
    est.set_params(model__units=9, model__learning_rate=0.1, fit__batch_size=7, warm_start=True)
    assert est.model_kwargs == {"units": 9, "learning_rate": 0.1} and given == {"units": 4}
    assert est.fit_kwargs["batch_size"] == 7 and est.warm_start is True
    copy = clone(est)
    assert copy.get_params() == est.get_params() and copy.model_kwargs is not est.model_kwargs


@pytest.mark.parametrize(
    "params, message",
    [
        ({"units": 3}, r"Invalid parameter 'units' .*model__<name>"),
        ({"fit__epoch": 3}, r"fit_kwargs has 'epoch', which model.fit does not take; it takes"),
        ({"fit__x": 3}, r"cannot set 'x'.*estimator's fit"),
        ({"model__depth": 3}, r"'depth', which the model-building callable 'build_classifier'"),
        ({"model__X": 3}, r"cannot set 'X'"),
    ],
)
def test_bad_routed_parameters_are_refused(params, message):
    with pytest.raises(ValueError, match=message):
        classifier().set_params(**params)


def test_bad_models_and_targets_are_refused():
    X, y = blobs()
    with pytest.raises(ValueError, match=r"model is a Model instance; pass a function"):
        SKLearnClassifier(sgd_model(0.1)).set_params(model__units=3)
    with pytest.raises(ValueError, match=r"model is not compiled; call model.compile"):
        SKLearnClassifier(Sequential([Input((3,)), Dense(3, "softmax")])).fit(X, y)
    with pytest.raises(TypeError, match=r"returned dict"):
        SKLearnClassifier(lambda: {}).fit(X, y)
    with pytest.raises(TypeError, match=r"model must be a compiled dlcore Model or a callable"):
        SKLearnRegressor("mlp").fit(X, y)
    with pytest.raises(ValueError, match=r"fit_kwargs has 'epoch'"):
        classifier(fit_kwargs={"epoch": 2}).fit(X, y)
    with pytest.raises(ValueError, match=r"y is 'continuous'.*SKLearnRegressor"):
        classifier().fit(X, X[:, 0])
    with pytest.raises(ValueError, match=r"not one-hot \(multilabel targets\)"):
        classifier().fit(X, np.ones((60, 3)))
    with pytest.raises(ValueError, match=r"only one class is present.*single class 'a'"):
        classifier().fit(X, np.full(60, "a"))

    def wrong_width(X, y):
        return build_classifier(X, np.zeros((1, 2)))

    est = SKLearnClassifier(wrong_width, fit_kwargs={"epochs": 1, "verbose": 0})
    with pytest.raises(ValueError, match=r"expects y of shape \(samples, 2\)"):
        est.fit(X, y)


# ---------------------------------------------------------- scikit-learn tools
def test_pipeline_and_cross_validation():
    X, y = blobs()
    X = X * 50 + 100  # far from standard: the scaler matters
    pipe = make_pipeline(StandardScaler(), classifier())
    for cv in (KFold(3, shuffle=True, random_state=0), StratifiedKFold(3)):
        scores = cross_val_score(pipe, X, y, cv=cv)
        assert scores.shape == (3,) and scores.min() > 0.8
    r2 = cross_val_score(
        make_pipeline(StandardScaler(), SKLearnRegressor(build_regressor, fit_kwargs=QUIET)),
        X,
        X[:, 0] / 50,
        cv=KFold(3),
    )
    assert r2.shape == (3,) and np.all(np.isfinite(r2))


def test_grid_search_names_routed_parameters():
    X, y = blobs()
    search = GridSearchCV(
        classifier(),
        {"model__units": [2, 6], "fit__epochs": [1, 20]},
        cv=StratifiedKFold(2),
    )
    search.fit(X, y)
    assert len(search.cv_results_["params"]) == 4
    assert search.best_params_["fit__epochs"] == 20
    assert search.best_estimator_.model_kwargs["units"] == search.best_params_["model__units"]
    assert search.score(X, y) > 0.8


def test_randomized_search_in_two_processes():
    X, y = blobs()
    search = RandomizedSearchCV(
        classifier(),
        {"model__units": [3, 4, 5], "model__learning_rate": [0.05, 0.1]},
        n_iter=2,
        cv=2,
        n_jobs=2,
        random_state=0,
    )
    with warnings.catch_warnings():
        # loky warns when it picks its CPU count on a machine it cannot read it from
        warnings.simplefilter("ignore", UserWarning)
        search.fit(X, y)
    assert len(search.cv_results_["mean_test_score"]) == 2
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))
    assert search.best_estimator_.predict(X[:4]).shape == (4,)


def test_learning_and_validation_curves():
    X, y = blobs()
    sizes, train, test = learning_curve(classifier(), X, y, train_sizes=[0.5, 1.0], cv=2)
    np.testing.assert_array_equal(sizes, [15, 30])
    assert train.shape == test.shape == (2, 2)
    train, test = validation_curve(
        classifier(), X, y, param_name="fit__epochs", param_range=[1, 30], cv=2
    )
    assert train.shape == (2, 2) and test.mean(axis=1)[1] > 0.8


def test_clone_and_pickle():
    X, y = blobs()
    est = classifier(model_kwargs={"units": 5}).fit(X, y)
    copy = clone(est)
    assert not hasattr(copy, "model_") and copy.model_kwargs == {"units": 5}
    restored = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(restored.classes_, est.classes_)
    np.testing.assert_allclose(restored.predict_proba(X), est.predict_proba(X))
    given = SKLearnRegressor(sgd_model(0.1))
    cloned = clone(given)
    assert cloned.model is not given.model
    for a, b in zip(given.model.get_weights(), cloned.model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_readme_example_runs():
    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    code = next(block for block in blocks if "SKLearnClassifier" in block)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["scores"].shape == (3,) and namespace["scores"].mean() > 0.8


def test_importing_dlcore_does_not_import_sklearn_and_missing_sklearn_is_named():
    code = (
        "import sys; import dlcore; assert 'sklearn' not in sys.modules\n"
        "sys.modules['sklearn'] = None\n"
        "from dlcore.wrappers import SKLearnClassifier\n"
        "try:\n    SKLearnClassifier(None)\n"
        "except ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install dlcore[sklearn]" in out.stdout


# ----------------------------------------------- scikit-learn's estimator checks
def tiny_classifier(X, y):
    return build_classifier(X, y, units=6, learning_rate=0.1)


# Each of these fits twice and wants the same predictions: a dlcore model draws new
# initial weights and new batch orders at every fit (as Keras's wrappers, whose
# signature has no random_state), so two fits agree only when the user seeds them.
_TWO_FITS_AGREE = {
    "check_fit_idempotent": "two fits draw different initial weights and batch orders",
    "check_supervised_y_2d": "compares the predictions of two fits (y 1-D, then a column)",
}
EXPECTED_FAILURES = {
    "SKLearnClassifier": {
        **_TWO_FITS_AGREE,
        "check_classifier_data_not_an_array": "compares the predictions of two fits "
        "(arrays, then lists)",
    },
    "SKLearnRegressor": {
        **_TWO_FITS_AGREE,
        "check_regressor_data_not_an_array": "compares the predictions of two fits "
        "(arrays, then lists)",
        "check_regressors_int": "compares the predictions of two fits (int, then float y)",
    },
}


def expected_failures(estimator):
    return EXPECTED_FAILURES.get(type(estimator).__name__, {})


@parametrize_with_checks(
    [
        SKLearnClassifier(tiny_classifier, fit_kwargs={"epochs": 5, "verbose": 0}),
        SKLearnRegressor(build_regressor, fit_kwargs={"epochs": 5, "verbose": 0}),
    ],
    expected_failed_checks=expected_failures,
)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)
