"""dlcore.integrations.optuna.PruningCallback against a real Optuna study, the examples
of hyperparameter search (examples/) and the README's "Hyperparameter search" code."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import dlcore
from dlcore.integrations.optuna import PruningCallback
from dlcore.layers import Dense
from dlcore.models import Sequential

optuna = pytest.importorskip("optuna")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


class PruneFromStep(optuna.pruners.BasePruner):
    """Prunes every trial once it has reported step ``step`` (0-based epoch)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def prune(self, study, trial) -> bool:
        return trial.last_step is not None and trial.last_step >= self.step


def _study(pruner=None):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(
        storage=optuna.storages.InMemoryStorage(),
        sampler=optuna.samplers.RandomSampler(seed=0),
        pruner=pruner or optuna.pruners.NopPruner(),
    )


def _data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((12, 4)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 12)]
    return x, y


def _model() -> Sequential:
    dlcore.set_random_seed(0)
    model = Sequential([Dense(5, activation="relu", input_shape=(4,)), Dense(3, "softmax")])
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    return model


def test_reports_the_monitored_value_after_every_epoch(engine):
    x, y = _data()
    histories = []

    def objective(trial):
        model = _model()
        callback = PruningCallback(trial, monitor="val_loss")
        history = model.fit(
            x[:8],
            y[:8],
            validation_data=(x[8:], y[8:]),
            epochs=3,
            batch_size=4,
            callbacks=[callback],
            verbose=0,
        )
        histories.append(history.history)
        assert callback.pruned_epoch is None
        return history.history["val_loss"][-1]

    study = _study()
    study.optimize(objective, n_trials=1)
    (trial,) = study.trials
    assert trial.state == optuna.trial.TrialState.COMPLETE
    val_loss = histories[0]["val_loss"]
    assert len(val_loss) == 3
    assert trial.intermediate_values == {epoch: value for epoch, value in enumerate(val_loss)}


def test_a_pruned_trial_stops_fit_and_raises_trial_pruned():
    x, y = _data()
    study = _study(PruneFromStep(1))
    trial = study.ask()
    model = _model()
    callback = PruningCallback(trial, monitor="val_accuracy")
    with pytest.raises(optuna.TrialPruned, match="pruned at epoch 1"):
        model.fit(
            x, y, validation_split=0.25, epochs=10, batch_size=4, callbacks=[callback], verbose=0
        )
    assert callback.pruned_epoch == 1
    assert model.stop_training is True
    # epochs 0 and 1 ran, no more; as in Keras, History (the last callback) did not see
    # the pruned epoch
    reported = study.trials[0].intermediate_values
    assert model.history.history["val_accuracy"] == [reported[0]]
    assert set(reported) == {0, 1}


def test_study_optimize_records_the_pruned_trials():
    x, y = _data()

    def objective(trial):
        model = _model()
        history = model.fit(
            x,
            y,
            validation_split=0.25,
            epochs=5,
            batch_size=4,
            verbose=0,
            callbacks=[PruningCallback(trial)],
        )
        return history.history["val_loss"][-1]

    study = _study(PruneFromStep(2))
    study.optimize(objective, n_trials=2)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.PRUNED] * 2
    assert all(sorted(t.intermediate_values) == [0, 1, 2] for t in study.trials)


def test_interval_reports_every_nth_epoch():
    x, y = _data()
    study = _study()
    trial = study.ask()
    model = _model()
    history = model.fit(
        x,
        y,
        validation_split=0.25,
        epochs=5,
        batch_size=4,
        verbose=0,
        callbacks=[PruningCallback(trial, monitor="loss", interval=2)],
    )
    reported = study.trials[0].intermediate_values
    assert reported == {1: history.history["loss"][1], 3: history.history["loss"][3]}


def test_a_missing_monitor_warns_once_and_reports_nothing():
    x, y = _data()
    study = _study(PruneFromStep(0))  # would prune at once if anything were reported
    trial = study.ask()
    model = _model()
    callback = PruningCallback(trial, monitor="val_loss")
    with pytest.warns(UserWarning, match="'val_loss', which is not available") as caught:
        history = model.fit(x, y, epochs=3, batch_size=4, callbacks=[callback], verbose=0)
    assert len([w for w in caught if "PruningCallback" in str(w.message)]) == 1
    assert len(history.history["loss"]) == 3
    assert study.trials[0].intermediate_values == {}
    assert callback.pruned_epoch is None
    with pytest.warns(UserWarning, match="available metrics: loss, accuracy"):
        model.fit(x, y, epochs=1, batch_size=4, callbacks=[callback], verbose=0)  # a new fit


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"trial": None}, TypeError, r"trial .* received None, which has no report\(\)"),
        ({"trial": "trial"}, TypeError, "Pass the objective's trial argument"),
        ({"monitor": 3}, TypeError, "monitor to be a log name .* received monitor=3"),
        ({"monitor": ""}, TypeError, "received monitor=''"),
        ({"interval": 0}, ValueError, r"interval to be an integer >= 1 .*, received interval=0"),
        ({"interval": 1.5}, ValueError, "received interval=1.5"),
        ({"interval": True}, ValueError, "received interval=True"),
    ],
)
def test_bad_arguments_are_refused(kwargs, error, message):
    arguments = {"trial": _study().ask(), **kwargs}
    with pytest.raises(error, match=message):
        PruningCallback(**arguments)


def test_without_optuna_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # makes `import optuna` fail
    with pytest.raises(ImportError, match=re.escape("pip install 'dlcore[optuna]'")):
        PruningCallback(object())


def test_importing_dlcore_and_the_integration_does_not_import_optuna():
    code = (
        "import sys, dlcore, dlcore.integrations.optuna\n"
        "assert 'optuna' not in sys.modules, 'optuna was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def _run_example(name: str, *flags: str) -> str:
    env = {**os.environ, "DLCORE_BACKEND": "numpy"}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *flags],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_optuna_example_runs():
    out = _run_example("optuna_digits.py", "--trials", "2", "--epochs", "2")
    assert "2 trials on numpy" in out
    assert re.search(r"best parameters: \{'width': \d+, 'depth': \d", out)
    assert re.search(r"test accuracy of the best model: 0\.\d{4}", out)
    assert re.search(r"test accuracy of the demo's model, trained the same way: 0\.\d{4}", out)


def test_the_grid_search_example_runs():
    pytest.importorskip("dlcore.wrappers")  # SKLearnClassifier
    out = _run_example("grid_search_digits.py", "--epochs", "2")
    assert "16 combinations on numpy" in out
    assert re.search(r"best parameters: \{'depth': [12], 'dropout'", out)
    assert re.search(r"test accuracy of the best model: 0\.\d{4}", out)
    assert re.search(r"test accuracy of the demo's model, trained the same way: 0\.\d{4}", out)


def test_the_optuna_example_refuses_bad_flags():
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "optuna_digits.py"), "--trials", "0"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 2
    assert "--trials and --epochs must be >= 1, received 0" in done.stderr


def _readme_code(section: str) -> str:
    text = (ROOT / "README.md").read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, flags=re.S)[0]


def test_the_readme_example_runs():
    code = _readme_code("Hyperparameter search")
    namespace: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exec(compile(code, "README.md", "exec"), namespace)
    study = namespace["study"]
    assert len(study.trials) == 5
    assert 0.5 < study.best_value <= 1.0
