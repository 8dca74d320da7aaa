"""Tune a dlcore MLP on scikit-learn's digits with scikit-learn's GridSearchCV, through
:class:`dlcore.wrappers.SKLearnClassifier`: every combination of a small grid of width,
depth, dropout and learning rate.

    python examples/grid_search_digits.py             # 16 combinations, 60 epochs each
    python examples/grid_search_digits.py --epochs 100 --backend numba

Each combination trains on the training rows for a fixed number of epochs and is scored
on the validation rows (one ``PredefinedSplit`` fold: the same rows the Optuna example
compares its trials on); the best one is then trained again on training and validation
rows together (GridSearchCV's ``refit``) and scored on the test rows (the last 30% of
the digits, where ``python -m dlcore demo`` reports its accuracy), next to the demo's
model trained the same way. Needs ``pip install 'dlcore[demo]'`` (scikit-learn).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from digits_common import build_mlp, load_splits
from sklearn.model_selection import GridSearchCV, PredefinedSplit

import dlcore
from dlcore.demo import build_model as build_demo_model
from dlcore.wrappers import SKLearnClassifier

# 2 x 2 x 2 x 2 = 16 combinations; GridSearchCV routes model__<name> to build_mlp
GRID = {
    "model__width": [64, 128],
    "model__depth": [1, 2],
    "model__dropout": [0.0, 0.2],
    "model__learning_rate": [1e-3, 3e-3],
}


def main(argv: list[str] | None = None) -> None:
    """Parses the flags, searches the grid, and prints the best parameters and the test
    accuracies."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--epochs", type=int, default=60, help="epochs per combination (default 60)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of weights and shuffling")
    parser.add_argument("--backend", default="numpy", help="dlcore engine (default numpy)")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be >= 1, received {args.epochs}")

    splits = load_splits()
    x = np.concatenate([splits.x_train, splits.x_val])
    labels = np.argmax(np.concatenate([splits.y_train, splits.y_val]), axis=1)
    # -1: always trained on; 0: the one validation fold
    fold = np.r_[np.full(len(splits.x_train), -1), np.zeros(len(splits.x_val), dtype=int)]
    classifier = SKLearnClassifier(
        model=build_mlp,
        model_kwargs={"width": 64, "depth": 1, "dropout": 0.0, "learning_rate": 1e-3},
        fit_kwargs={"epochs": args.epochs, "verbose": 0},
    )
    search = GridSearchCV(classifier, GRID, cv=PredefinedSplit(fold), scoring="accuracy")
    with dlcore.use_backend(args.backend) as engine:
        dlcore.set_random_seed(args.seed)
        started = time.perf_counter()
        search.fit(x, labels)
        seconds = time.perf_counter() - started
        combinations = len(search.cv_results_["params"])
        print(f"{combinations} combinations on {engine.name} in {seconds:.1f} s")
        best = {name.removeprefix("model__"): value for name, value in search.best_params_.items()}
        print(f"best parameters: {best}")
        print(f"best validation accuracy: {search.best_score_:.4f}")
        test_labels = np.argmax(splits.y_test, axis=1)
        print(f"test accuracy of the best model: {search.score(splits.x_test, test_labels):.4f}")
        # the demo's model, trained and scored exactly as the best combination
        dlcore.set_random_seed(args.seed)
        demo = SKLearnClassifier(build_demo_model, fit_kwargs=classifier.fit_kwargs)
        baseline = demo.fit(x, labels).score(splits.x_test, test_labels)
        print(f"test accuracy of the demo's model, trained the same way: {baseline:.4f}")


if __name__ == "__main__":
    main()
