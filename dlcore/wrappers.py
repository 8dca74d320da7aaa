"""scikit-learn estimators around dlcore models, with Keras 3's signature.

``SKLearnClassifier``, ``SKLearnRegressor`` and ``SKLearnTransformer`` take
``model`` (a compiled dlcore model, or a callable that builds one), ``warm_start``,
``model_kwargs`` (passed to the callable) and ``fit_kwargs`` (passed to
``model.fit``), as ``keras.wrappers`` does. The entries of the two dicts are also
parameters of their own, named the way scikeras routes them: ``model__units`` and
``fit__epochs`` can be given to ``set_params``, ``GridSearchCV`` and
``validation_curve`` directly.

Importing this module needs scikit-learn (``pip install dlcore[sklearn]``); importing
``dlcore`` does not import it.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from dlcore import config, models, saving
from dlcore.training import Trainer

try:
    from sklearn.base import (
        BaseEstimator,
        ClassifierMixin,
        RegressorMixin,
        TransformerMixin,
    )
    from sklearn.exceptions import DataConversionWarning
    from sklearn.utils.multiclass import type_of_target
    from sklearn.utils.validation import check_is_fitted, validate_data
except ImportError:  # the classes below refuse to be made without it
    _SKLEARN_MISSING = True

    class BaseEstimator:  # type: ignore[no-redef]
        pass

    class ClassifierMixin:  # type: ignore[no-redef]
        pass

    class RegressorMixin:  # type: ignore[no-redef]
        pass

    class TransformerMixin:  # type: ignore[no-redef]
        pass

else:
    _SKLEARN_MISSING = False

__all__ = ["SKLearnClassifier", "SKLearnRegressor", "SKLearnTransformer"]

#: the routed prefixes: ``model__units`` goes to ``model_kwargs``, ``fit__epochs`` to
#: ``fit_kwargs``
_ROUTES = {"model": "model_kwargs", "fit": "fit_kwargs"}
#: what ``fit`` itself passes to ``model.fit`` and to the model-building callable
_FIT_RESERVED = ("x", "y")
_BUILD_RESERVED = ("X", "y")


def _fit_options() -> list[str]:
    """The keyword arguments ``Model.fit`` accepts besides the data."""
    names = inspect.signature(Trainer.fit).parameters
    return [
        name
        for name, parameter in names.items()
        if name not in ("self", *_FIT_RESERVED)
        and parameter.kind is parameter.POSITIONAL_OR_KEYWORD
    ]


def _accepted_keywords(builder: Callable[..., Any]) -> tuple[set[str], bool]:
    """The keyword names ``builder`` takes, and whether it also takes ``**kwargs``."""
    try:
        parameters = inspect.signature(builder).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: take its word
        return set(), True
    names = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return names, any(p.kind is p.VAR_KEYWORD for p in parameters)


def _fresh_copy(model: models.Model) -> models.Model:
    """The same architecture, trainable flags and compile settings as ``model``, with
    weights drawn anew from the initializers (as ``keras.models.clone_model``) and a new
    optimizer state."""
    description, _ = saving.model_state(model)
    architecture = {"class_name": model._class_key(), "config": description["model"]}
    previous = config.floatx()
    if model.built:
        config.set_floatx(description["dtype"])
    try:
        copy = models.model_from_config(architecture)
        if model.built:
            copy.build()
    finally:
        config.set_floatx(previous)
    if model.built:
        copy._claim_layers()
        for layer, flag in zip(copy._param_layers, description["trainable"]):
            layer.trainable = bool(flag)
    compiled = dict(description["compile"], optimizer_built=False)
    saving._restore_compile(copy, compiled, {})
    return copy


class _SKLBase(BaseEstimator):
    """What the three estimators share: parameters, model building, fit and predict."""

    def __init__(
        self,
        model: Any,
        warm_start: bool = False,
        model_kwargs: Mapping[str, Any] | None = None,
        fit_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        """
        Args:
            model: a compiled ``dlcore.Model`` (each ``fit`` trains a copy with fresh
                weights, unless ``warm_start``), or a callable returning one. The
                callable receives ``model_kwargs``, and the training data as ``X=``
                (``(N, features)``) and ``y=`` (the encoded targets: one-hot
                ``(N, classes)`` for a classifier, ``(N, outputs)`` for a regressor)
                when its signature names them or takes ``**kwargs``.
            warm_start: when true, a second ``fit`` keeps training the fitted model,
                and the first starts from a given model's current weights.
            model_kwargs: keyword arguments of the callable ``model``.
            fit_kwargs: keyword arguments of ``model.fit`` (``epochs``,
                ``batch_size``, ``verbose``...); those given to ``fit`` itself win.
        """
        if _SKLEARN_MISSING:
            raise ImportError(
                f"{type(self).__name__} needs scikit-learn; install it with "
                "`pip install dlcore[sklearn]`"
            )
        # scikit-learn's convention: store the arguments as given, check them in fit
        self.model = model
        self.warm_start = warm_start
        self.model_kwargs = model_kwargs
        self.fit_kwargs = fit_kwargs

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.non_deterministic = True
        return tags

    # ------------------------------------------------------------- parameters
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's arguments; with ``deep``, also each entry of
        ``model_kwargs`` as ``model__<name>`` and of ``fit_kwargs`` as ``fit__<name>``."""
        params = super().get_params(deep=False)
        if deep:
            for prefix, attribute in _ROUTES.items():
                for name, value in (getattr(self, attribute, None) or {}).items():
                    params[f"{prefix}__{name}"] = value
        return params

    def set_params(self, **params: Any) -> _SKLBase:
        """Set constructor arguments, and routed entries: ``model__units=64`` sets
        ``model_kwargs["units"]``, ``fit__epochs=20`` sets ``fit_kwargs["epochs"]``
        (new dicts: the ones given are not changed). Returns ``self``."""
        own = super().get_params(deep=False)
        routed: dict[str, dict[str, Any]] = {prefix: {} for prefix in _ROUTES}
        for key, value in params.items():
            prefix, _, name = key.partition("__")
            if name and prefix in _ROUTES:
                routed[prefix][name] = value
            elif key in own:
                setattr(self, key, value)
            else:
                raise ValueError(
                    f"Invalid parameter {key!r} for estimator {type(self).__name__}; valid "
                    f"parameters are {sorted(own)} and routed ones: model__<name> (an "
                    "argument of the model-building callable) or fit__<name> (of model.fit)"
                )
        for prefix, entries in routed.items():
            if entries:
                self._check_routed(prefix, entries)
                attribute = _ROUTES[prefix]
                setattr(self, attribute, {**(getattr(self, attribute) or {}), **entries})
        return self

    def _check_routed(self, prefix: str, entries: Mapping[str, Any]) -> None:
        """Refuse ``model_kwargs`` / ``fit_kwargs`` names that the callable or
        ``Model.fit`` would not take, naming the parameter and the fix."""
        attribute = _ROUTES[prefix]
        if not isinstance(entries, Mapping):
            raise TypeError(
                f"{attribute} must be a dict or None; received {type(entries).__name__}"
            )
        if prefix == "fit":
            options = _fit_options()
            for name in entries:
                if name in _FIT_RESERVED:
                    raise ValueError(
                        f"{attribute} cannot set {name!r}: the estimator passes the data "
                        "to model.fit itself; give it to the estimator's fit"
                    )
                if name not in options:
                    raise ValueError(
                        f"{attribute} has {name!r}, which model.fit does not take; "
                        f"it takes {', '.join(options)}"
                    )
            return
        if not entries:
            return
        if isinstance(self.model, models.Model):
            raise ValueError(
                f"{attribute} ({', '.join(entries)}) go to a callable model, but model is "
                "a Model instance; pass a function that builds and compiles the model"
            )
        accepted, any_keyword = _accepted_keywords(self.model)
        for name in entries:
            if name in _BUILD_RESERVED:
                raise ValueError(
                    f"{attribute} cannot set {name!r}: the estimator passes the training "
                    "data to the model-building callable itself"
                )
            if not any_keyword and name not in accepted:
                raise ValueError(
                    f"{attribute} has {name!r}, which the model-building callable "
                    f"{getattr(self.model, '__name__', self.model)!r} does not take; it "
                    f"takes {', '.join(sorted(accepted)) or 'no keyword arguments'}"
                )

    # ----------------------------------------------------------------- model
    def _build_model(self, X: np.ndarray, y: np.ndarray) -> models.Model:
        """A compiled model to train: the fitted one (warm start), a copy of the given
        one, or the callable's."""
        if self.warm_start and hasattr(self, "model_"):
            return self.model_
        if isinstance(self.model, models.Model):
            self._check_compiled(self.model, "model")
            if self.warm_start:
                return saving.restore_model(*saving.model_state(self.model))
            return _fresh_copy(self.model)
        if not callable(self.model):
            raise TypeError(
                "model must be a compiled dlcore Model or a callable that returns one; "
                f"received {type(self.model).__name__}"
            )
        kwargs = dict(self.model_kwargs or {})
        self._check_routed("model", kwargs)
        accepted, any_keyword = _accepted_keywords(self.model)
        if any_keyword or "X" in accepted:
            kwargs["X"] = X
        if any_keyword or "y" in accepted:
            kwargs["y"] = y
        model = self.model(**kwargs)
        if not isinstance(model, models.Model):
            raise TypeError(
                "the model-building callable must return a compiled dlcore Model; it "
                f"returned {type(model).__name__}"
            )
        self._check_compiled(model, "the model-building callable's model")
        return model

    @staticmethod
    def _check_compiled(model: models.Model, what: str) -> None:
        if not model.compiled:
            raise ValueError(
                f"{what} is not compiled; call model.compile(optimizer=..., loss=...) "
                "before giving it to the estimator"
            )

    # ------------------------------------------------------------- fit/predict
    def fit(self, X: Any, y: Any, **kwargs: Any) -> _SKLBase:
        """Train on ``X`` ``(N, features)`` and ``y`` (``(N,)`` or ``(N, outputs)``).

        ``kwargs`` go to ``model.fit`` over ``fit_kwargs``. Returns ``self``, with
        ``model_`` (the trained model) and ``history_`` (its ``History.history``:
        one value per epoch for the loss and each metric).
        """
        X, y = validate_data(self, X, y, **self._data_options())
        fit_kwargs = {**(self.fit_kwargs or {}), **kwargs}
        self._check_routed("fit", fit_kwargs)
        target = self._encode_target(y, reset=not (self.warm_start and hasattr(self, "model_")))
        model = self._build_model(X, target)
        self.history_ = dict(model.fit(X, target, **fit_kwargs).history)
        self.model_ = model
        return self

    def _data_options(self) -> dict[str, Any]:
        """``validate_data``'s options for ``fit``'s ``X`` and ``y``."""
        return {"dtype": [np.float64, np.float32], "multi_output": True, "y_numeric": True}

    def _raw_predict(self, X: Any) -> np.ndarray:
        """The model's outputs ``(N, units)`` for ``X``, checked like the training data."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return np.asarray(self.model_.predict(X, verbose=0))

    @property
    def epoch_(self) -> int:
        """The number of epochs the last ``fit`` ran (0 before any)."""
        history = getattr(self, "history_", None) or {}
        return len(next(iter(history.values()), []))

    def _encode_target(self, y: np.ndarray, reset: bool) -> np.ndarray:
        """Regression targets as ``(N, outputs)``; ``reset`` records their shape."""
        if reset:
            self._target_ndim = y.ndim
            self.n_outputs_ = 1 if y.ndim == 1 else y.shape[1]
        elif (1 if y.ndim == 1 else y.shape[1]) != self.n_outputs_:
            raise ValueError(
                f"warm_start: y has {1 if y.ndim == 1 else y.shape[1]} outputs, the fitted "
                f"model {self.n_outputs_}; fit with warm_start=False to start over"
            )
        return y.reshape(-1, 1) if y.ndim == 1 else y

    def _decode_target(self, outputs: np.ndarray) -> np.ndarray:
        """Outputs ``(N, outputs)`` in the shape of the training targets."""
        if self._target_ndim == 1 and outputs.ndim == 2 and outputs.shape[1] == 1:
            return outputs[:, 0]
        return outputs


class SKLearnRegressor(RegressorMixin, _SKLBase):
    """A scikit-learn regressor that trains a dlcore model (Keras 3's
    ``keras.wrappers.SKLearnRegressor``).

    ``y`` is ``(N,)`` or ``(N, outputs)`` (multi-output); the model sees it as
    ``(N, outputs)`` and should have that many linear outputs. ``predict`` returns
    ``(N,)`` or ``(N, outputs)`` like the training targets; ``score`` is R^2.
    """

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.regressor_tags.poor_score = True
        return tags

    def predict(self, X: Any) -> np.ndarray:
        """Predictions ``(N,)`` or ``(N, outputs)`` for ``X`` ``(N, features)``, float64
        as scikit-learn's regressors return them."""
        return self._decode_target(self._raw_predict(X).astype(np.float64))


class SKLearnTransformer(TransformerMixin, _SKLBase):
    """A scikit-learn transformer whose ``transform`` is a trained dlcore model's output
    (Keras 3's ``keras.wrappers.SKLearnTransformer``): ``fit`` trains it on ``X`` and
    ``y`` as ``SKLearnRegressor`` does; ``transform(X)`` returns ``(N, units)``."""

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        tags.transformer_tags.preserves_dtype = []
        return tags

    def transform(self, X: Any) -> np.ndarray:
        """The model's outputs ``(N, units)`` (the model's float dtype) for ``X``."""
        return self._raw_predict(X)


class SKLearnClassifier(ClassifierMixin, _SKLBase):
    """A scikit-learn classifier that trains a dlcore model (Keras 3's
    ``keras.wrappers.SKLearnClassifier``).

    Labels may be of any kind (ints, strings, bools: ``(N,)``) or one-hot ``(N,
    classes)``. The model is trained on one-hot targets ``(N, classes)`` (``classes_``
    in sorted order), so it should end in a softmax over ``len(classes_)`` units and
    use categorical cross-entropy. ``predict`` returns labels as given (one-hot rows
    for one-hot targets), ``predict_proba`` the model's outputs, ``score`` accuracy.
    """

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.classifier_tags.poor_score = True
        return tags

    def _data_options(self) -> dict[str, Any]:
        return {"dtype": [np.float64, np.float32], "multi_output": True, "y_numeric": False}

    def _encode_target(self, y: np.ndarray, reset: bool) -> np.ndarray:
        """One-hot targets ``(N, classes)`` in the float dtype of the model's data;
        ``reset`` learns ``classes_`` (else the labels must be among them)."""
        kind = type_of_target(y, input_name="y")
        one_hot = kind == "multilabel-indicator"
        if one_hot and not np.all(np.asarray(y).sum(axis=1) == 1):
            raise ValueError(
                "y is 2-D with rows that are not one-hot (multilabel targets); "
                "SKLearnClassifier takes labels (N,) or one-hot rows (N, classes)"
            )
        if y.ndim == 2 and y.shape[1] == 1:
            warnings.warn(
                "A column-vector y was passed when a 1d array was expected; it is read as "
                "labels (N,): pass y.ravel()",
                DataConversionWarning,
                stacklevel=3,
            )
            y = y[:, 0]
            kind = type_of_target(y, input_name="y")
        if not one_hot and kind not in ("binary", "multiclass"):
            # scikit-learn's convention: "Unknown label type" names data that are not labels
            prefix = "Unknown label type: " if kind == "unknown" else ""
            raise ValueError(
                f"{prefix}SKLearnClassifier needs class labels (N,) or one-hot rows "
                f"(N, classes); y is {kind!r} (use SKLearnRegressor for continuous targets)"
            )
        if one_hot:
            classes = np.arange(y.shape[1])
            indices = np.argmax(y, axis=1)
        else:
            classes, indices = np.unique(y, return_inverse=True)
        if reset:
            if len(classes) < 2:
                raise ValueError(
                    "Classifier can't train when only one class is present: y has the "
                    f"single class {classes.tolist()[0]!r}; give it samples of at least two classes"
                )
            self.classes_ = classes
            self._one_hot = one_hot
            self._label_dtype = y.dtype
        else:
            known = set(self.classes_.tolist())
            unseen = [c for c in classes.tolist() if c not in known]
            if one_hot != self._one_hot or unseen or len(classes) > len(self.classes_):
                raise ValueError(
                    f"warm_start: y has classes the fitted model does not know ({unseen}); "
                    "fit with warm_start=False to start over"
                )
            indices = np.searchsorted(self.classes_, classes)[indices]
        target = np.zeros((len(y), len(self.classes_)))
        target[np.arange(len(y)), indices] = 1.0
        return target

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities ``(N, classes)`` for ``X``: the model's outputs, columns
        in the order of ``classes_``."""
        outputs = self._raw_predict(X)
        if outputs.ndim != 2 or outputs.shape[1] != len(self.classes_):
            raise ValueError(
                f"the model outputs shape {outputs.shape}, but there are "
                f"{len(self.classes_)} classes; end the model with "
                f"Dense({len(self.classes_)}, activation='softmax')"
            )
        return outputs

    def predict(self, X: Any) -> np.ndarray:
        """Labels for ``X``: ``(N,)`` of the training labels' type, or one-hot rows
        ``(N, classes)`` when the model was trained on one-hot rows."""
        indices = np.argmax(self.predict_proba(X), axis=1)
        if self._one_hot:
            rows = np.zeros((len(indices), len(self.classes_)), dtype=self._label_dtype)
            rows[np.arange(len(indices)), indices] = 1
            return rows
        return self.classes_[indices]
