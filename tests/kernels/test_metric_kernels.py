"""Metric kernels against the NumPy reference ``backends/xp_metrics.py``.

``confusion_counts`` on 1 row of 1 column, 3 rows of 17 columns and 33 rows of 5
(more elements than a 128-thread block walks in one stride), weighted and not, with
``per_label``, ``class_id``, ``top_k`` (with tied scores) and ``row_max``; the counts
are sums of weights in float64, compared exactly up to summation order.
``accuracy_values`` for every kind in float32 and float64, with ties and NaN.
"""

from __future__ import annotations

import numpy as np
import pytest
from dlcore.backends import xp_metrics
from dlcore.kernels import metrics
from numba import cuda

SHAPES = [(1, 1), (3, 17), (33, 5)]
OPTIONS = [
    {},
    {"per_label": True},
    {"class_id": 0},
    {"top_k": 2},
    {"row_max": True},
]


def _inputs(shape, seed=0):
    rng = np.random.default_rng(seed)
    P = np.round(rng.random(shape), 1)  # rounded: ties and values on the thresholds
    Y = (rng.random(shape) > 0.5).astype(np.float64)
    return P, Y, rng.random(shape[0])


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o) or "plain")
@pytest.mark.parametrize("weighted", [False, True])
def test_confusion_counts_match_the_reference(shape, options, weighted):
    P, Y, w = _inputs(shape)
    thresholds = np.array([0.0]) if options.get("row_max") else np.array([-1e-7, 0.3, 0.5, 1.0])
    want = xp_metrics.confusion_counts(
        np, P, Y, thresholds, sample_weight=w if weighted else None, **options
    )
    labels = shape[1] if options.get("per_label") else 1
    out = cuda.device_array((4, len(thresholds), labels), dtype=np.float64)
    d_thr = cuda.to_device(thresholds)
    metrics.confusion_counts(
        cuda.to_device(P),
        cuda.to_device(Y),
        d_thr,
        cuda.to_device(w) if weighted else d_thr,
        out,
        weighted=weighted,
        **options,
    )
    np.testing.assert_allclose(out.copy_to_host(), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", metrics.ACCURACY_KINDS)
def test_accuracy_values_match_the_reference(kind, dtype):
    rng = np.random.default_rng(1)
    P = np.round(rng.random((33, 5)), 1).astype(dtype)
    P[3, 2] = np.nan
    labels = rng.integers(0, 5, 33)
    Y = labels if kind.startswith("sparse") else np.eye(5, dtype=dtype)[labels]
    if kind == "binary":
        Y = (rng.random((33, 5)) > 0.5).astype(dtype)
    want = xp_metrics.accuracy_values(np, kind, P, Y, k=2, threshold=0.4)
    out = cuda.device_array(33, dtype=np.float64)
    metrics.accuracy_values(kind, cuda.to_device(P), cuda.to_device(Y), out, k=2, threshold=0.4)
    np.testing.assert_allclose(out.copy_to_host(), want, atol=1e-12)


def test_unknown_accuracy_kind_is_refused():
    out = cuda.device_array(1, dtype=np.float64)
    P = cuda.to_device(np.zeros((1, 2)))
    with pytest.raises(KeyError, match="unknown accuracy kind 'top'"):
        metrics.accuracy_values("top", P, P, out)
