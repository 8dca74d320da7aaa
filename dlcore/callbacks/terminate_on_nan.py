"""The :class:`TerminateOnNaN` callback: stop training when the loss stops being finite."""

from __future__ import annotations

import math
import sys

from dlcore.callbacks.base import Callback, Logs


class TerminateOnNaN(Callback):
    """Stops training as soon as the running loss of a batch is NaN or infinite.

    As in Keras 3, the check runs after every training batch and ``fit`` stops
    after that batch; the epoch then ends as usual (its logs, with the NaN loss,
    reach ``on_epoch_end`` and the History), but no built-in callback takes it as
    an improvement: :class:`~dlcore.callbacks.ModelCheckpoint` writes no NaN
    weights and :class:`~dlcore.callbacks.EarlyStopping` neither records nor
    restores them, so the weights restored or saved are the last finite ones.

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
