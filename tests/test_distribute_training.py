"""Data-parallel training (dlcore.distribute) under ``mpiexec -n 2`` and ``-n 3``: the
same history and weights as one process, to 1e-10 in float64, with SGD and Adam,
dropout, validation, unequal shares and a last batch that leaves a process without
rows; buckets overlapped with the backward pass give bit-identical results to one sum
per step; evaluate and predict share and gather; rank 0 alone prints and writes; a
mismatched process is refused and a failing one ends the run.

The one-process reference runs here, in the test process; the data-parallel runs in
``tests/distribute_scripts/``.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import pytest
from mpi_run import SCRIPTS, run_mpi

import dlcore
from dlcore.distribute import DataParallel, SingleProcess, StepRows, shares
from dlcore.layers import Dense, Dropout, Input
from dlcore.models import Sequential

sys.path.insert(0, str(SCRIPTS))
import train_equal  # noqa: E402

CASES = [("adam", "dropout", "none"), ("sgd", "nodrop", "none"), ("adam", "dropout", "64")]


def _run(n, tmp_path, optimizer, dropout, bucket, *extra):
    out = tmp_path / f"{n}-{optimizer}-{dropout}-{bucket}.npz"
    result = run_mpi(n, "train_equal.py", str(out), optimizer, dropout, bucket, *extra, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    saved = np.load(out)
    weights = [saved[f"w{i}"] for i in range(len(saved.files) - 2)]
    return json.loads(str(saved["history"])), weights, json.loads(str(saved["sums"]))


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize(("optimizer", "dropout", "bucket"), CASES)
def test_data_parallel_fit_equals_one_process(n, optimizer, dropout, bucket, tmp_path):
    dlcore.set_backend("numpy")
    expected_history, expected_weights = train_equal.train(optimizer, dropout == "dropout")
    history, weights, sums = _run(n, tmp_path, optimizer, dropout, bucket)
    assert (
        history.keys()
        == expected_history.keys()
        == {
            "loss",
            "accuracy",
            "val_loss",
            "val_accuracy",
        }
    )
    for key, values in expected_history.items():
        np.testing.assert_allclose(history[key], values, rtol=0, atol=1e-10, err_msg=key)
    for got, want in zip(weights, expected_weights):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)
    assert all(s == sums[0] for s in sums)  # every process ends with the same weights


def test_buckets_overlapped_with_the_backward_pass_change_no_bit(tmp_path):
    _, one_sum, _ = _run(3, tmp_path, "adam", "dropout", "none")
    _, buckets, _ = _run(3, tmp_path, "adam", "dropout", "64")
    for a, b in zip(one_sum, buckets):
        np.testing.assert_array_equal(a, b)


def test_own_shards_train_one_model(tmp_path):
    history, weights, sums = _run(3, tmp_path, "adam", "dropout", "none", "shards")
    assert all(s == sums[0] for s in sums)
    assert len(history["loss"]) == 3 and np.all(np.isfinite(history["loss"]))


def test_evaluate_and_predict_share_the_samples_and_gather_in_order(tmp_path):
    result = run_mpi(3, "fit_features.py", "predict", str(tmp_path), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    for rank in range(3):
        saved = np.load(tmp_path / f"predict{rank}.npz")
        assert saved["together"].shape == (26, 2)
        np.testing.assert_allclose(saved["together"], saved["alone"], rtol=0, atol=1e-12)
        np.testing.assert_allclose(saved["evaluated"], saved["evaluated_alone"], atol=1e-12)


def test_only_rank_0_prints_and_writes_files(tmp_path):
    result = run_mpi(3, "fit_features.py", "files", str(tmp_path), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("Epoch 1/2") == 1 and result.stdout.count("Epoch 2/2") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.keras", "final.dlcore", "log.csv"]
    assert len((tmp_path / "log.csv").read_text().splitlines()) == 3  # header, 2 epochs
    assert all(f"rank {r} done" in result.stdout for r in range(3))


def test_a_process_with_another_model_is_refused_by_rank(tmp_path):
    result = run_mpi(3, "fit_features.py", "mismatch", str(tmp_path), timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "fit(): rank 1 has" in output and "rank 1 has parameters 51, rank 0 has 44" in output


def test_layer_names_may_differ_between_processes(tmp_path):
    result = run_mpi(3, "fit_features.py", "names", str(tmp_path), timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" trained ") == 3


def test_an_exception_on_one_process_ends_every_process(tmp_path):
    started = time.monotonic()
    result = run_mpi(3, "fit_features.py", "fail", str(tmp_path), timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert time.monotonic() - started < 20
    assert output.count("RuntimeError: rank 1 lost its data in epoch 2") == 1


# ---------------------------------------------------------------- in this process
def test_shares_split_contiguously_the_first_ranks_one_more():
    assert shares(10, 3) == [(0, 4), (4, 3), (7, 3)]
    assert shares(2, 3) == [(0, 1), (1, 1), (2, 0)]
    assert sum(count for _, count in shares(1001, 7)) == 1001


class _Rank(SingleProcess):
    def __init__(self, rank, size, sizes=None):
        self.rank, self.size, self._sizes = rank, size, sizes

    def gather_objects(self, value):
        return list(self._sizes)


def test_each_process_takes_its_rows_of_every_global_batch():
    steps = DataParallel(_Rank(2, 3), auto_shard_dataset=True).steps(23, 7)
    assert steps == [
        StepRows(5, 7, 5, 7),
        StepRows(12, 14, 5, 7),
        StepRows(19, 21, 5, 7),
        StepRows(23, 23, 2, 2),  # a last batch of 2: none for rank 2
    ]
    shards = DataParallel(_Rank(1, 3, sizes=[8, 8, 7]), auto_shard_dataset=False)
    # shares of 7 per step: 3, 2, 2; rank 0's shard of 8 runs out after 3 steps
    assert shards.steps(8, 7) == [
        StepRows(0, 2, 3, 7),
        StepRows(2, 4, 3, 7),
        StepRows(4, 6, 2, 6),
        StepRows(6, 8, 0, 3),
    ]


def test_init_refuses_a_bad_bucket_size():
    with pytest.raises(ValueError, match=r"bucket_bytes must be a positive int or None"):
        dlcore.distribute.init(SingleProcess(), bucket_bytes=0)
    assert dlcore.distribute.distribution() is None


@pytest.mark.parametrize("op", ["dropout", "gaussian_dropout", "gaussian_noise"])
def test_random_rows_are_those_of_the_whole_batch(engine, op):
    rng = np.random.default_rng(0)
    whole = rng.normal(size=(7, 5)).astype(np.float32)
    kwargs = {"stddev": 0.5} if op == "gaussian_noise" else {"rate": 0.4}

    def drawn(x, offset=0, total=None):
        engine.seed(11)
        engine.set_random_rows(offset, total)
        try:
            result = getattr(engine, op)(engine.asarray(x, dtype="float32"), **kwargs)
        finally:
            engine.set_random_rows(0, None)
        return [engine.to_numpy(a) for a in (result if isinstance(result, tuple) else [result])]

    expected = drawn(whole)
    for offset, stop in [(0, 3), (3, 5), (5, 7), (6, 7)]:
        got = drawn(whole[offset:stop], offset, 7)
        for part, full in zip(got, expected):
            np.testing.assert_allclose(part, full[offset:stop], rtol=1e-6, atol=1e-7)


def test_one_process_distribution_changes_nothing(engine):
    """The data-parallel code path (shares, weighted buckets, random rows, summed epoch
    totals, evaluation shares) on one process gives what plain fit gives, on every
    engine."""
    x, y = train_equal.data()

    def trained(parallel):
        dlcore.set_random_seed(0)
        model = Sequential([Input((5,)), Dense(6, "relu"), Dropout(0.3), Dense(3, "softmax")])
        model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
        if parallel:
            dlcore.distribute.init(SingleProcess(), bucket_bytes=64)
        try:
            history = model.fit(x[:16], y[:16], batch_size=8, validation_data=(x[16:], y[16:]))
        finally:
            dlcore.distribute.shutdown()
        return history.history, model.get_weights()

    history, weights = trained(False)
    again, weights_again = trained(True)
    for key in history:
        np.testing.assert_allclose(again[key], history[key], rtol=1e-6, err_msg=key)
    for a, b in zip(weights_again, weights):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_readme_example_runs_under_mpiexec(tmp_path):
    import pathlib
    import re

    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    section = readme[readme.index("### Data parallelism: many processes") :]
    code = re.search(r"```python\n(# train\.py\n.*?)```", section, re.S).group(1)
    script = tmp_path / "train.py"
    script.write_text(f"import os\nos.chdir({str(tmp_path)!r})\n" + code)
    result = run_mpi(2, script, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("Epoch 3/3") == 1
    assert (tmp_path / "model.keras").exists()
