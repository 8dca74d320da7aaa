"""Loss functions, by Keras 3 and Keras 2 names or as objects.

A loss object records the canonical name the engines compute and, for the
cross-entropies, ``from_logits``. Calling one computes the loss on the host.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dlcore import backends
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

_CROSSENTROPIES = (
    "categorical_crossentropy",
    "sparse_categorical_crossentropy",
    "binary_crossentropy",
)


class Loss:
    """A loss the engines know by ``name``.

    Args:
        name: a canonical name from ``NAMES`` or an alias.
        from_logits: only for the cross-entropies: ``y_pred`` holds logits
            rather than probabilities.
    """

    def __init__(self, name: str, *, from_logits: bool = False) -> None:
        self.name = canonical_name(name)
        if from_logits and self.name not in _CROSSENTROPIES:
            raise ValueError(
                f"from_logits applies only to {', '.join(_CROSSENTROPIES)}, "
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
            true = np.asarray(y_true).reshape(-1).astype(np.int64)
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


def canonical_name(name: str) -> str:
    """The engines' name for a loss name or alias; ValueError listing valid names."""
    if not isinstance(name, str):
        raise TypeError(f"loss must be a name or a Loss object, received {name!r}")
    key = name.lower()
    key = ALIASES.get(key, key)
    if key not in NAMES:
        valid = ", ".join(sorted(set(NAMES) | set(ALIASES)))
        raise ValueError(f"unknown loss {name!r}; available: {valid}")
    return key


def get(identifier: Any) -> Loss:
    """A ``Loss`` from a name, an alias, a ``Loss`` object or a ``get_config`` dict."""
    if isinstance(identifier, Loss):
        return identifier
    if isinstance(identifier, dict):
        return Loss(identifier["name"], from_logits=identifier.get("from_logits", False))
    if identifier is None:
        raise ValueError(
            "compile() needs a loss, e.g. loss='categorical_crossentropy'; received None"
        )
    if callable(identifier) and not isinstance(identifier, str):
        raise TypeError(
            "custom loss functions are not supported: the engines compute losses by name; "
            f"use one of {', '.join(NAMES)} (received {identifier!r})"
        )
    return Loss(identifier)
