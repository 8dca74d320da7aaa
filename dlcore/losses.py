"""Loss functions, by Keras 3 and Keras 2 names, as objects, or written as Python functions.

A loss object records the canonical name the engines compute and, for the
cross-entropies, ``from_logits``. Calling one computes the loss on the host.
Custom losses are registered with ``register``, with their gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from dlcore import backends, custom, data_checks
from dlcore.backends import custom as engine_custom
from dlcore.backends import names

NAMES: tuple[str, ...] = names.LOSSES

ALIASES: dict[str, str] = {
    "mse": "mean_squared_error",
    "mae": "mean_absolute_error",
    "mape": "mean_absolute_percentage_error",
    "msle": "mean_squared_logarithmic_error",
    "logcosh": "log_cosh",
    "kld": "kl_divergence",
    "kullback_leibler_divergence": "kl_divergence",
    "cosine_proximity": "cosine_similarity",
}


class Loss:
    """A loss the engines know by ``name``.

    Args:
        name: a canonical name from ``NAMES``, an alias, or the name of a custom
            loss registered with ``register``.
        from_logits: only for the cross-entropies: ``y_pred`` holds logits
            rather than probabilities.
    """

    def __init__(self, name: str, *, from_logits: bool = False) -> None:
        self.name = canonical_name(name)
        if from_logits and self.name not in names.CROSSENTROPIES:
            raise ValueError(
                f"from_logits applies only to {', '.join(names.CROSSENTROPIES)}, "
                f"received it for {self.name!r}"
            )
        self.from_logits = bool(from_logits)

    def __call__(self, y_true: Any, y_pred: Any) -> float:
        """The mean loss over the batch, computed on the host in float64.

        Args:
            y_true: ``(N, O)`` targets, or ``(N,)`` int labels for the sparse loss.
            y_pred: ``(N, O)`` predictions.
        """
        engine = backends.get("numpy")
        pred = np.asarray(y_pred, dtype=np.float64)
        if pred.ndim == 1:
            pred = pred[:, None]
        true: np.ndarray
        if self.name == "sparse_categorical_crossentropy":
            labels = data_checks.as_numeric(y_true, "y_true").reshape(-1)
            true = data_checks.check_labels(
                labels,
                pred.shape[1],
                name="y_true",
                given=y_true,
                against=f"y_pred of {pred.shape[1]} classes",
            )
        else:
            true = np.asarray(y_true, dtype=np.float64).reshape(pred.shape)
        return float(engine.loss(self.name, pred, true, from_logits=self.from_logits))

    def get_config(self) -> dict[str, Any]:
        """JSON-serialisable description, read back by ``get``."""
        return {"name": self.name, "from_logits": self.from_logits}

    def __repr__(self) -> str:
        extra = ", from_logits=True" if self.from_logits else ""
        return f"Loss({self.name!r}{extra})"


def _loss_class(canonical: str) -> type[Loss]:
    class_name = "".join(part.capitalize() for part in canonical.split("_"))
    class_name = class_name.replace("Kl", "KL")

    def __init__(self: Loss, *, from_logits: bool = False) -> None:
        Loss.__init__(self, canonical, from_logits=from_logits)

    doc = f"The ``{canonical}`` loss (Keras semantics). See ``Loss``."
    return type(class_name, (Loss,), {"__init__": __init__, "__doc__": doc})


MeanSquaredError = _loss_class("mean_squared_error")
MeanAbsoluteError = _loss_class("mean_absolute_error")
MeanAbsolutePercentageError = _loss_class("mean_absolute_percentage_error")
MeanSquaredLogarithmicError = _loss_class("mean_squared_logarithmic_error")
SquaredHinge = _loss_class("squared_hinge")
Hinge = _loss_class("hinge")
CategoricalHinge = _loss_class("categorical_hinge")
LogCosh = _loss_class("log_cosh")
CategoricalCrossentropy = _loss_class("categorical_crossentropy")
SparseCategoricalCrossentropy = _loss_class("sparse_categorical_crossentropy")
BinaryCrossentropy = _loss_class("binary_crossentropy")
KLDivergence = _loss_class("kl_divergence")
Poisson = _loss_class("poisson")
CosineSimilarity = _loss_class("cosine_similarity")


def register(
    function: Callable[..., Any] | None = None,
    *,
    gradient: Callable[..., Any] | None = None,
    name: str | None = None,
) -> Callable[..., Any]:
    """Register a loss written as Python functions, under a name.

    dlcore has no automatic differentiation, so a loss comes with its gradient,
    written out. Both functions use the functions of the array API namespace
    ``xp`` they are given (NumPy, CuPy's, ``array_api_strict``), so the numpy,
    cupy and array_api_strict engines run them; the numba engine cannot call
    Python and refuses them. As for the built-in losses, the engines average the
    per-sample values over the batch, and divide the gradient by the batch size.
    A saved model refers to the loss by its name, and a registered loss also
    serves as a metric. Registering a name again replaces its functions.

    Args:
        function: ``function(y_true, y_pred, xp) -> values``, one value per sample:
            ``(N,)`` in the dtype of ``y_pred`` ``(N, C)``. Leave it out to use
            ``register`` as a decorator.
        gradient: ``gradient(y_true, y_pred, xp)``: the derivative of each sample's
            value with respect to its row of ``y_pred``, ``(N, C)`` in its dtype
            (without the ``1 / N`` of the batch mean).
        name: the name to register under; ``function.__name__`` by default.

    Returns:
        ``function`` itself, which ``compile(loss=function)`` then accepts, as it
        accepts the name; without ``function``, a decorator that registers the
        function it decorates and returns it.

    Raises:
        TypeError: ``function`` or ``gradient`` is not a function, or ``gradient``
            is missing.
        ValueError: the name is not a Python identifier, or is a built-in loss,
            alias or metric name.

    Example:
        >>> def squared_error_gradient(y_true, y_pred, xp):
        ...     return 2.0 * (y_pred - y_true)
        >>> @register(gradient=squared_error_gradient)
        ... def squared_error(y_true, y_pred, xp):
        ...     return xp.sum((y_pred - y_true) ** 2, axis=-1)
        >>> get(squared_error)
        Loss('squared_error')
    """
    if function is None:
        return lambda decorated: register(decorated, gradient=gradient, name=name)
    key = custom.checked_name("loss", function, name, reserved_names())
    checked = custom.checked_gradient("loss", key, gradient, "gradient(y_true, y_pred, xp)")
    engine_custom.PER_SAMPLE[key] = engine_custom.PerSample(key, function, checked, "loss")
    return function


def reserved_names() -> set[str]:
    """The names a custom loss or metric may not take: those of the built-in losses and
    metrics (losses and metrics share their names)."""
    return {*NAMES, *ALIASES, *names.ACCURACY_NAMES}


def canonical_name(name: str) -> str:
    """The engines' name for a loss name, an alias or a custom loss's name.

    Inside a ``custom.custom_object_scope``, its names resolve to its functions.

    Raises:
        ValueError: unknown name, listing the valid ones, or a custom metric, which
            has no gradient.
    """
    if not isinstance(name, str):
        raise TypeError(f"loss must be a name or a Loss object, received {name!r}")
    key = name.lower()
    key = ALIASES.get(key, key)
    if key in NAMES:
        return key
    function = custom.scoped(name)
    if isinstance(function, Loss):
        return function.name
    if function is not None:
        return _registered_name(function)
    entry = engine_custom.PER_SAMPLE.get(name)
    if entry is None:
        valid = ", ".join(sorted(set(NAMES) | set(ALIASES) | set(_custom_losses())))
        hint = custom.unknown_hint("loss", name, "dlcore.losses.register(fn, gradient=...)")
        raise ValueError(f"unknown loss {name!r}; available: {valid}{hint}")
    if entry.gradient is None:
        raise ValueError(_metric_is_no_loss(entry))
    return name


def get(identifier: Any) -> Loss:
    """A ``Loss`` from a name, an alias, a ``Loss`` object, a ``get_config`` dict or a
    function registered with ``register``."""
    if isinstance(identifier, Loss):
        return identifier
    if isinstance(identifier, dict):
        return Loss(identifier["name"], from_logits=identifier.get("from_logits", False))
    if identifier is None:
        raise ValueError(
            "compile() needs a loss, e.g. loss='categorical_crossentropy'; received None"
        )
    if callable(identifier) and not isinstance(identifier, str):
        return Loss(_registered_name(identifier))
    return Loss(identifier)


def _custom_losses() -> list[str]:
    return [name for name, entry in engine_custom.PER_SAMPLE.items() if entry.gradient]


def _metric_is_no_loss(entry: engine_custom.PerSample) -> str:
    return (
        f"{entry.name!r} is a custom metric, without a gradient, so it cannot be a loss; "
        f"register {engine_custom.describe(entry.function)} with "
        "dlcore.losses.register(fn, gradient=...) to train with it"
    )


def _registered_name(function: Callable[..., Any]) -> str:
    """The name ``function`` was last registered under as a loss."""
    for entry in reversed(engine_custom.PER_SAMPLE.values()):
        if entry.function is function:
            if entry.gradient is None:
                raise TypeError(_metric_is_no_loss(entry))
            return entry.name
    raise TypeError(
        f"the loss function {engine_custom.describe(function)} is not registered: dlcore "
        "has no automatic differentiation, so register it with its gradient first: "
        "dlcore.losses.register(fn, gradient=gradient(y_true, y_pred, xp)); "
        f"or use a built-in loss: {', '.join(NAMES)}"
    )
