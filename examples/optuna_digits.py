"""Tune a dlcore MLP on scikit-learn's digits with Optuna: width, depth, dropout and
learning rate, pruning unpromising trials with a MedianPruner.

    python examples/optuna_digits.py                 # 20 trials, up to 100 epochs each
    python examples/optuna_digits.py --trials 50 --backend numba

Each trial trains on the training rows with early stopping on the validation accuracy,
which :class:`~dlcore.integrations.optuna.PruningCallback` reports to Optuna after every
epoch. The best parameters are then trained again and scored on the test rows (the last
30% of the digits, where ``python -m dlcore demo`` reports its accuracy), next to the
demo's model trained the same way. Needs ``pip install 'dlcore[optuna,demo]'``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from digits_common import (
    DigitsSplits,
    baseline_accuracy,
    build_mlp,
    load_splits,
    score_on_test,
    train,
)

import dlcore
from dlcore.integrations.optuna import PruningCallback, import_optuna


def suggest(trial: Any) -> dict[str, Any]:
    """The search space: hidden width and depth, dropout rate, Adam's learning rate."""
    return {
        "width": trial.suggest_int("width", 16, 256, log=True),
        "depth": trial.suggest_int("depth", 1, 3),
        "dropout": trial.suggest_float("dropout", 0.0, 0.5),
        "learning_rate": trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True),
    }


def search(splits: DigitsSplits, trials: int, epochs: int, seed: int) -> Any:
    """Runs the study (maximizing the best validation accuracy of a trial) and returns it."""
    optuna = import_optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def objective(trial: Any) -> float:
        dlcore.set_random_seed(seed)
        model = build_mlp(**suggest(trial))
        return train(model, splits, epochs, [PruningCallback(trial, monitor="val_accuracy")])

    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        # prune from the 6th trial on, once a trial has run 10 epochs
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=10),
    )
    study.optimize(objective, n_trials=trials)
    return study


def main(argv: list[str] | None = None) -> None:
    """Parses the flags, searches, and prints the best parameters and the test accuracies."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20, help="Optuna trials (default 20)")
    parser.add_argument(
        "--epochs", type=int, default=100, help="most epochs per trial (default 100)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of weights and sampler")
    parser.add_argument("--backend", default="numpy", help="dlcore engine (default numpy)")
    args = parser.parse_args(argv)
    if args.trials < 1 or args.epochs < 1:
        parser.error(f"--trials and --epochs must be >= 1, received {args.trials}, {args.epochs}")

    optuna = import_optuna()
    splits = load_splits()
    with dlcore.use_backend(args.backend) as engine:
        started = time.perf_counter()
        study = search(splits, args.trials, args.epochs, args.seed)
        seconds = time.perf_counter() - started
        states = [trial.state for trial in study.trials]
        print(
            f"{len(states)} trials on {engine.name} in {seconds:.1f} s: "
            f"{states.count(optuna.trial.TrialState.COMPLETE)} complete, "
            f"{states.count(optuna.trial.TrialState.PRUNED)} pruned"
        )
        print(f"best parameters: {study.best_params}")
        print(f"best validation accuracy: {study.best_value:.4f}")
        dlcore.set_random_seed(args.seed)
        best = build_mlp(**study.best_params)
        train(best, splits, args.epochs)
        print(f"test accuracy of the best model: {score_on_test(best, splits):.4f}")
        baseline = baseline_accuracy(splits, args.epochs, args.seed)
        print(f"test accuracy of the demo's model, trained the same way: {baseline:.4f}")


if __name__ == "__main__":
    main()
