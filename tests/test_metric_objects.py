"""Metric objects (AUC, Precision, Recall, F1Score, top-k, mean metrics) and
weighted_metrics: values against float64 NumPy formulas of Keras 3's definitions,
accumulated over several batches on every engine, names, saving, and bad arguments."""

from __future__ import annotations

import numpy as np
import pytest

from dlcore import metric_objects, metrics
from dlcore.layers import Dense
from dlcore.models import Sequential, load_model

EPS = 1e-7


def _confusion(P, Y, thresholds, w=None):
    """float64 (4, T): tp, fp, tn, fn of all elements together."""
    w = np.ones(len(P)) if w is None else w
    W = np.broadcast_to(w[:, None], P.shape)
    pos = P[None] > np.asarray(thresholds)[:, None, None]
    lab = (Y != 0)[None]
    return np.stack(
        [
            (W * (a & b)).sum(axis=(1, 2))
            for a, b in ((pos, lab), (pos, ~lab), (~pos, ~lab), (~pos, lab))
        ]
    )


def _auc_roc(P, Y, n, w=None):
    thr = [-EPS] + [(i + 1) / (n - 1) for i in range(n - 2)] + [1 + EPS]
    tp, fp, tn, fn = _confusion(P, Y, thr, w)
    rec = np.divide(tp, tp + fn, out=np.zeros_like(tp), where=(tp + fn) != 0)
    fpr = np.divide(fp, fp + tn, out=np.zeros_like(fp), where=(fp + tn) != 0)
    return float(np.sum((fpr[:-1] - fpr[1:]) * (rec[:-1] + rec[1:]) / 2))


def _f1(P, Y, average, w=None):
    w = np.ones(len(P)) if w is None else w
    pred = ((P >= P.max(axis=1, keepdims=True)) & (np.abs(P) > 1e-9)).astype(float)
    axis = None if average == "micro" else 0
    tp = (w[:, None] * pred * Y).sum(axis=axis)
    fp = (w[:, None] * pred * (1 - Y)).sum(axis=axis)
    fn = (w[:, None] * (1 - pred) * Y).sum(axis=axis)
    p, r = tp / (tp + fp + EPS), tp / (tp + fn + EPS)
    f = 2 * p * r / (p + r + EPS)
    if average == "weighted":
        s = (w[:, None] * Y).sum(axis=0)
        return float(np.sum(f * s / (s.sum() + EPS)))
    return f if average is None else float(np.mean(f))


def _data(n=11, c=3, seed=0):
    rng = np.random.default_rng(seed)
    P = rng.random((n, c))
    P /= P.sum(axis=1, keepdims=True)
    Y = np.eye(c)[rng.integers(0, c, n)]
    return P, Y, rng.random(n)


def _run(engine, metric, P, Y, w=None, batches=(4, 4, 3), weighted=False, sparse=False):
    """The epoch value of one resolved metric over the batches, through EpochTotals."""
    from dlcore import losses

    loss = losses.Loss("sparse_categorical_crossentropy" if sparse else "categorical_crossentropy")
    (resolved,) = metrics.resolve([metric], loss, P.shape[1], weighted=weighted)
    totals = metrics.EpochTotals(engine, [[resolved]], [P.shape[1]])
    start = 0
    for size in batches:
        rows = slice(start, start + size)
        Yb = Y[rows]
        yt = engine.asarray(Yb, dtype="int64") if sparse else engine.asarray(Yb, dtype="float64")
        wb = None if w is None else engine.asarray(w[rows], dtype="float64")
        Pb = engine.asarray(P[rows], dtype="float64")
        value = resolved.batch_value(engine, Pb, yt, sample_weight=wb)
        totals.add(size, [engine.loss("mean_squared_error", Pb, Pb)], [value])
        start += size
    return totals.logs()[resolved.key]


@pytest.mark.parametrize("weighted", [False, True])
def test_auc_roc_and_pr_match_keras_formula(engine, weighted):
    P, Y, w = _data()
    w = w if weighted else None
    got = _run(engine, metrics.AUC(num_thresholds=9), P, Y, w, weighted=weighted)
    assert got == pytest.approx(_auc_roc(P, Y, 9, w), abs=1e-12)
    pr = _run(engine, metrics.AUC(num_thresholds=9, curve="PR"), P, Y, w, weighted=weighted)
    assert 0.0 < pr <= 1.0


def test_auc_approaches_sklearn_with_many_thresholds(engine):
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    P, Y, _ = _data(n=8, c=2, seed=3)
    got = _run(engine, metrics.AUC(num_thresholds=2000), P, Y, batches=(5, 3))
    assert got == pytest.approx(sklearn_metrics.roc_auc_score(Y.ravel(), P.ravel()), abs=2e-3)


def test_auc_multi_label_is_the_mean_of_the_columns(engine):
    P, Y, _ = _data()
    got = _run(engine, metrics.AUC(num_thresholds=9, multi_label=True), P, Y)
    want = np.mean([_auc_roc(P[:, [j]], Y[:, [j]], 9) for j in range(3)])
    assert got == pytest.approx(want, abs=1e-12)


def test_precision_recall_thresholds_top_k_and_class_id(engine):
    P, Y, w = _data()
    tp, fp, _, fn = _confusion(P, Y, [0.3, 0.6], w)
    got = _run(engine, metrics.Precision(thresholds=[0.3, 0.6]), P, Y, w, weighted=True)
    np.testing.assert_allclose(got, tp / (tp + fp), atol=1e-12)
    got = _run(engine, metrics.Recall(thresholds=0.3), P, Y)
    tp, _, _, fn = _confusion(P, Y, [0.3])
    assert got == pytest.approx(float(tp[0] / (tp[0] + fn[0])), abs=1e-12)
    top = np.where(P >= P.max(axis=1, keepdims=True), P, -np.inf)  # top-1 of distinct scores
    tp, fp, _, _ = _confusion(top, Y, [-1e10])
    got = _run(engine, metrics.Precision(top_k=1), P, Y)
    assert got == pytest.approx(float(tp[0] / (tp[0] + fp[0])), abs=1e-12)
    tp, _, _, fn = _confusion(P[:, [1]], Y[:, [1]], [0.5])
    got = _run(engine, metrics.Recall(class_id=1), P, Y)
    assert got == pytest.approx(float(tp[0] / max(tp[0] + fn[0], 1)), abs=1e-12)


@pytest.mark.parametrize("average", [None, "micro", "macro", "weighted"])
def test_f1_score_averages(engine, average):
    P, Y, w = _data()
    got = _run(engine, metrics.F1Score(average=average), P, Y, w, weighted=True)
    np.testing.assert_allclose(got, _f1(P, Y, average, w), atol=1e-9)


def test_mean_metrics_weighted_and_over_the_epoch(engine):
    P, Y, w = _data()
    sq = ((P - Y) ** 2).mean(axis=1)
    got = _run(engine, metrics.RootMeanSquaredError(), P, Y)
    assert got == pytest.approx(np.sqrt(sq.mean()), abs=1e-12)
    # the root of the epoch mean, not the mean of the batches' roots
    batch_roots = np.mean([np.sqrt(sq[s].mean()) for s in (slice(0, 4), slice(4, 8), slice(8, 11))])
    assert abs(got - batch_roots) > 1e-6
    got = _run(engine, metrics.MeanAbsoluteError(), P, Y, w, weighted=True)
    assert got == pytest.approx(np.sum(w * np.abs(P - Y).mean(axis=1)) / w.sum(), abs=1e-12)
    # metrics= ignore the weights
    got = _run(engine, metrics.MeanSquaredError(), P, Y, w)
    assert got == pytest.approx(sq.mean(), abs=1e-12)


def test_top_k_and_weighted_accuracies(engine):
    P, Y, w = _data(n=11, c=4)
    labels = Y.argmax(axis=1)
    rank = (P > P[np.arange(11), labels][:, None]).sum(axis=1)
    got = _run(engine, metrics.TopKCategoricalAccuracy(k=2), P, Y)
    assert got == pytest.approx(np.mean(rank < 2), abs=1e-12)
    got = _run(
        engine, metrics.SparseTopKCategoricalAccuracy(k=3), P, labels, w, weighted=True, sparse=True
    )
    assert got == pytest.approx(np.sum(w * (rank < 3)) / w.sum(), abs=1e-12)
    hits = (P.argmax(axis=1) == labels).astype(float)
    assert _run(engine, "accuracy", P, Y, w, weighted=True) == pytest.approx(
        np.sum(w * hits) / w.sum(), abs=1e-12
    )
    assert _run(engine, "accuracy", P, Y, w) == pytest.approx(hits.mean(), abs=1e-12)
    assert _run(engine, "mse", P, Y, w, weighted=True) == pytest.approx(
        np.sum(w * ((P - Y) ** 2).mean(axis=1)) / w.sum(), abs=1e-12
    )
    got = _run(engine, metrics.BinaryAccuracy(threshold=0.3), P, Y)
    assert got == pytest.approx(np.mean((P > 0.3) == Y), abs=1e-12)


def test_names_dedup_and_weighted_prefix(engine):
    model = Sequential([Dense(3, activation="softmax")])
    model.build((None, 4))
    first, second = metrics.AUC(), metrics.AUC()
    assert second.name.startswith("auc_")
    model.compile(
        "sgd",
        "categorical_crossentropy",
        metrics=["accuracy", "auc", metrics.AUC(name="auc")],
        weighted_metrics=["accuracy", "mse", "auc"],
    )
    assert model.metrics_names == [
        "loss",
        "accuracy",
        "auc",
        "auc_1",
        "weighted_accuracy",
        "mse",
        "weighted_auc",
    ]
    assert metrics.F1Score().name == "f1_score"
    assert metrics.TopKCategoricalAccuracy().name == "top_k_categorical_accuracy"
    assert first.name != second.name


def test_weighted_metrics_without_weights_equal_the_metrics(engine, tmp_path):
    P, Y, w = _data(n=9, c=3)
    X = np.random.default_rng(5).normal(size=(9, 4))
    model = Sequential([Dense(3, activation="softmax")])
    model.build((None, 4))
    model.compile(
        "sgd",
        "categorical_crossentropy",
        metrics=["accuracy", metrics.AUC(5, name="auc"), metrics.F1Score("macro")],
        weighted_metrics=["accuracy", metrics.AUC(num_thresholds=5, name="wauc")],
    )
    logs = model.evaluate(X, Y, batch_size=4, verbose=0, return_dict=True)
    assert logs["weighted_accuracy"] == pytest.approx(logs["accuracy"])
    assert logs["wauc"] == pytest.approx(logs["auc"])
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = load_model(path)
    assert loaded.metrics_names == model.metrics_names
    again = loaded.evaluate(X, Y, batch_size=4, verbose=0, return_dict=True)
    assert again == pytest.approx(logs)
    auc = loaded._metric_names[0][1]
    assert isinstance(auc, metrics.AUC) and auc.num_thresholds == 5


def test_config_round_trip():
    for metric in (
        metrics.AUC(num_thresholds=7, curve="PR", multi_label=True, name="a"),
        metrics.Precision(thresholds=[0.2, 0.4], class_id=1),
        metrics.F1Score(average="weighted", threshold=0.4),
        metrics.SparseTopKCategoricalAccuracy(k=2),
    ):
        again = metric_objects.deserialize(metric_objects.serialize(metric))
        assert type(again) is type(metric) and again.get_config() == metric.get_config()


@pytest.mark.parametrize(
    "make, error, match",
    [
        (
            lambda: metrics.AUC(num_thresholds=1),
            ValueError,
            "num_thresholds must be an integer > 1",
        ),
        (lambda: metrics.AUC(curve="XY"), ValueError, "curve must be 'ROC' or 'PR'"),
        (lambda: metrics.AUC(summation_method="sum"), ValueError, "summation_method"),
        (lambda: metrics.TopKCategoricalAccuracy(k=0), ValueError, "k must be an integer >= 1"),
        (lambda: metrics.SparseTopKCategoricalAccuracy(k=1.5), TypeError, "k must be an integer"),
        (lambda: metrics.Precision(thresholds=[0.2, 1.5]), ValueError, r"in \[0, 1\]"),
        (lambda: metrics.Recall(top_k=0), ValueError, "k must be an integer >= 1"),
        (lambda: metrics.F1Score(average="mean"), ValueError, "average must be one of"),
        (lambda: metrics.F1Score(threshold=0.0), ValueError, "0 < threshold <= 1"),
        (lambda: metrics.F1Score(threshold=1), TypeError, "Python float"),
        (lambda: metrics.BinaryAccuracy(threshold=2.0), ValueError, r"in \[0, 1\]"),
    ],
)
def test_bad_arguments_are_refused(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_metric_needing_other_targets_is_refused():
    model = Sequential([Dense(3, activation="softmax")])
    model.build((None, 4))
    with pytest.raises(ValueError, match="needs integer labels"):
        model.compile(
            "sgd", "categorical_crossentropy", metrics=[metrics.SparseTopKCategoricalAccuracy()]
        )
    with pytest.raises(ValueError, match="unknown metric 'aucc'"):
        model.compile("sgd", "categorical_crossentropy", weighted_metrics=["aucc"])
