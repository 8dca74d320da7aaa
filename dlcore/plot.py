"""Pictures of training: learning curves of one run or of several (cross-validation).

matplotlib is optional (``pip install 'dlcore[plot]'``) and imported only when a
figure is drawn; figures are made without pyplot and saved through the Agg canvas, so
no display is needed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# inches per panel, and the resolution: a saved picture is at least 960 pixels wide
_PANEL_INCHES = (4.0, 3.2)
_DPI = 120


def require_matplotlib() -> Any:
    """matplotlib's ``Figure`` class, or an ImportError naming the extra.

    Figures are made without pyplot: no display, no global figure list, and ``savefig``
    draws on the Agg canvas.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install 'dlcore[plot]'") from None
    return Figure


def _logs_of(run: Any, index: int) -> dict[str, list[float]]:
    """The per-epoch values of a ``History`` or of a dict ``{name: [value per epoch]}``."""
    logs = getattr(run, "history", run)
    if not isinstance(logs, Mapping) or not logs:
        raise ValueError(
            f"run {index} must be a History returned by fit or a dict of per-epoch values "
            f"{{'loss': [...], ...}}; received {type(run).__name__}"
            + (" with no epochs" if isinstance(logs, Mapping) else "")
        )
    return {str(key): [float(v) for v in values] for key, values in logs.items()}


def _metric_names(logs: Sequence[Mapping[str, Any]], metrics: Sequence[str] | None) -> list[str]:
    """The panels: ``metrics`` as asked, else ``loss`` then each metric, without ``val_``."""
    present = [key for key in logs[0] if not key.startswith("val_")]
    if metrics is None:
        names = sorted(present, key=lambda key: (key != "loss", present.index(key)))
        return [key for key in names if key not in ("learning_rate", "lr")]
    if isinstance(metrics, str):
        metrics = [metrics]
    unknown = [m for m in metrics if m not in present]
    if unknown or not metrics:
        raise ValueError(
            f"metrics must name logged values {present}; received metrics={list(metrics)!r}"
        )
    return list(metrics)


def _figure(figure_class: Any, count: int) -> tuple[Any, list[Any]]:
    """A figure of ``count`` panels, three to a row, at least 8 inches (960 px) wide."""
    columns = min(count, 3)
    rows = -(-count // columns)
    width = max(_PANEL_INCHES[0] * columns, 8.0)
    figure = figure_class(figsize=(width, _PANEL_INCHES[1] * rows), dpi=_DPI)
    axes = [figure.add_subplot(rows, columns, i + 1) for i in range(count)]
    return figure, axes


def _finish(figure: Any, axes: list[Any], path: str | os.PathLike | None) -> Any:
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    figure.tight_layout()
    if path is not None:
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise ValueError(
                f"cannot save the figure to {path}: the folder {folder} does not exist"
            )
        figure.savefig(path, dpi=_DPI)
    return figure


def history_figure(
    history: Any, metrics: Sequence[str] | None = None, path: str | os.PathLike | None = None
) -> Any:
    """One run's learning curves: one panel per metric (``loss`` first), the training
    curve and, when logged, the validation curve (``val_<metric>``) over the epochs.

    Args:
        history: a ``History`` returned by ``fit``, or a dict ``{name: [value per epoch]}``.
        metrics: the names to draw (default: ``loss`` and every metric logged).
        path: where to save the figure as a PNG (at least 800 pixels wide).

    Returns:
        The matplotlib ``Figure``.
    """
    figure_class = require_matplotlib()
    logs = _logs_of(history, 0)
    names = _metric_names([logs], metrics)
    epochs = [int(e) + 1 for e in getattr(history, "epoch", [])] or None
    figure, axes = _figure(figure_class, len(names))
    for ax, name in zip(axes, names):
        for key, label in ((name, "train"), (f"val_{name}", "validation")):
            if key in logs:
                values = logs[key]
                x = epochs if epochs and len(epochs) == len(values) else range(1, len(values) + 1)
                ax.plot(list(x), values, marker="o" if len(values) < 30 else None, label=label)
        ax.set_title(name)
        ax.set_ylabel(name)
    return _finish(figure, axes, path)


def learning_curves(
    histories_or_results: Sequence[Any],
    metrics: Sequence[str] | None = None,
    path: str | os.PathLike | None = None,
) -> Any:
    """Learning curves of several runs (the folds of a cross-validation): per metric, the
    mean over the runs at each epoch with a band of +-1 standard deviation, for the
    training and, when logged, the validation values.

    Runs that stopped early (``EarlyStopping``) count at the epochs they reached: the
    mean and band at an epoch are over the runs that trained that long.

    Args:
        histories_or_results: ``History`` objects returned by ``fit``, or dicts
            ``{name: [value per epoch]}`` (``History.history``), one per run.
        metrics: the names to draw (default: ``loss`` and every metric logged).
        path: where to save the figure as a PNG (at least 800 pixels wide).

    Returns:
        The matplotlib ``Figure``, one panel per metric.
    """
    if isinstance(histories_or_results, (Mapping, str)) or not isinstance(
        histories_or_results, Sequence
    ):
        raise ValueError(
            "learning_curves takes a list of runs (History objects or dicts of per-epoch "
            f"values); received {type(histories_or_results).__name__}. For one run use "
            "History.plot()"
        )
    if not histories_or_results:
        raise ValueError("learning_curves needs at least one run; received an empty list")
    runs = [_logs_of(run, i) for i, run in enumerate(histories_or_results)]
    names = _metric_names(runs, metrics)
    for i, logs in enumerate(runs[1:], start=1):
        missing = [name for name in names if name not in logs]
        if missing:
            raise ValueError(f"run {i} did not log {missing}, which run 0 logged")
    figure_class = require_matplotlib()
    figure, axes = _figure(figure_class, len(names))
    for ax, name in zip(axes, names):
        for key, label in ((name, "train"), (f"val_{name}", "validation")):
            curves = [logs[key] for logs in runs if key in logs]
            if not curves:
                continue
            mean, std = _mean_std(curves)
            epochs = np.arange(1, len(mean) + 1)
            (line,) = ax.plot(epochs, mean, label=f"{label} (mean of {len(curves)})")
            ax.fill_between(
                epochs,
                mean - std,
                mean + std,
                color=line.get_color(),
                alpha=0.2,
                label=f"{label} \u00b11 std",
            )
        ax.set_title(name)
        ax.set_ylabel(name)
    return _finish(figure, axes, path)


def _mean_std(curves: list[list[float]]) -> tuple[np.ndarray, np.ndarray]:
    """Per epoch, the mean and the (population) standard deviation over the curves that
    reach it; ``(epochs,)`` float64 each."""
    longest = max(len(c) for c in curves)
    table = np.full((len(curves), longest), np.nan)
    for i, curve in enumerate(curves):
        table[i, : len(curve)] = curve
    return np.nanmean(table, axis=0), np.nanstd(table, axis=0)
