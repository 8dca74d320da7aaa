"""The :class:`TerminateOnNaN` callback: stop training when the loss stops being finite."""

from __future__ import annotations

import math
import sys

from dlcore.callbacks.base import Callback, Logs


class TerminateOnNaN(Callback):
    """Stops training as soon as the running loss of a batch is NaN or infinite.

    Training then ends after the current epoch (or at once where ``fit``
    checks ``model.stop_training`` after every batch).

    Args:
        raise_error: Raise ``RuntimeError`` instead of stopping gracefully;
            other callbacks' ``on_train_end`` is then not called.
    """

    def __init__(self, raise_error: bool = False) -> None:
        super().__init__()
        self.raise_error = raise_error

    def on_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        """Checks the batch's ``loss`` log."""
        loss = (logs or {}).get("loss")
        if loss is None or math.isfinite(float(loss)):
            return
        if self.raise_error:
            raise RuntimeError(f"NaN or Inf loss encountered at batch {batch}: loss={loss}")
        print(f"Batch {batch}: Invalid loss, terminating training", file=sys.stdout)
        self.model.stop_training = True
