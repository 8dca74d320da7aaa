"""The :class:`LambdaCallback` callback: a callback made of plain functions, one per hook."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dlcore.callbacks.base import HOOK_NAMES, Callback


class LambdaCallback(Callback):
    """A callback built from plain functions, one per hook.

    Functions are called as Keras calls them: ``on_epoch_begin(epoch, logs)``,
    ``on_epoch_end(epoch, logs)``, ``on_train_begin(logs)``,
    ``on_train_end(logs)``, ``on_train_batch_begin(batch, logs=logs)`` and
    ``on_train_batch_end(batch, logs=logs)``.

    Args:
        on_epoch_begin, on_epoch_end, on_train_begin, on_train_end,
        on_train_batch_begin, on_train_batch_end: The functions (or ``None``).
        on_batch_begin, on_batch_end: Keras 2 spellings of the batch hooks.
        **kwargs: Any other hook of :class:`Callback` by name, e.g.
            ``on_test_end=fn``.

    Example:

    >>> log = LambdaCallback(on_epoch_end=lambda epoch, logs: print(epoch, logs["loss"]))
    """

    def __init__(
        self,
        on_epoch_begin: Callable[..., Any] | None = None,
        on_epoch_end: Callable[..., Any] | None = None,
        on_train_begin: Callable[..., Any] | None = None,
        on_train_end: Callable[..., Any] | None = None,
        on_train_batch_begin: Callable[..., Any] | None = None,
        on_train_batch_end: Callable[..., Any] | None = None,
        on_batch_begin: Callable[..., Any] | None = None,
        on_batch_end: Callable[..., Any] | None = None,
        **kwargs: Callable[..., Any] | None,
    ) -> None:
        super().__init__()
        unknown = sorted(set(kwargs) - set(HOOK_NAMES))
        if unknown:
            raise TypeError(
                f"LambdaCallback got unexpected arguments {unknown}; the hooks are: "
                f"{', '.join(HOOK_NAMES)}"
            )
        hooks = {
            "on_epoch_begin": on_epoch_begin,
            "on_epoch_end": on_epoch_end,
            "on_train_begin": on_train_begin,
            "on_train_end": on_train_end,
            "on_train_batch_begin": on_train_batch_begin,
            "on_train_batch_end": on_train_batch_end,
            "on_batch_begin": on_batch_begin,
            "on_batch_end": on_batch_end,
            **kwargs,
        }
        for when in ("begin", "end"):
            both = hooks[f"on_train_batch_{when}"], hooks[f"on_batch_{when}"]
            if None not in both:
                raise ValueError(
                    f"LambdaCallback received both on_train_batch_{when} and on_batch_{when}, "
                    "which name the same hook; pass only one of them"
                )
        for name, function in hooks.items():
            if function is None:
                continue
            if not callable(function):
                raise TypeError(
                    f"LambdaCallback expected {name} to be callable, "
                    f"received {type(function).__name__}"
                )
            setattr(self, name, function)
