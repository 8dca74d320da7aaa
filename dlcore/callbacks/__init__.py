"""Keras-style callbacks: hooks into ``fit``, and the built-in ones users ask for.

``Sequential.fit`` drives every callback through a :class:`CallbackList`, which
always holds a :class:`History` and, for ``verbose`` 1 or 2, a
:class:`ProgbarLogger`. Epoch logs are plain dicts of Python floats such as
``{"loss": 0.31, "accuracy": 0.9, "val_loss": 0.35, ...}``.

One module per callback; ``base`` holds :class:`Callback` and imports none of
the others, and ``callback_list`` imports the callbacks it adds.
"""

from dlcore.callbacks.backup_and_restore import BackupAndRestore
from dlcore.callbacks.base import HOOK_NAMES, Callback, Logs
from dlcore.callbacks.callback_list import CallbackList
from dlcore.callbacks.csv_logger import CSVLogger
from dlcore.callbacks.early_stopping import EarlyStopping
from dlcore.callbacks.history import History
from dlcore.callbacks.lambda_callback import LambdaCallback
from dlcore.callbacks.learning_rate_scheduler import LearningRateScheduler
from dlcore.callbacks.model_checkpoint import ModelCheckpoint
from dlcore.callbacks.monitor import MODES
from dlcore.callbacks.progress import BAR_WIDTH, ProgbarLogger, format_value
from dlcore.callbacks.reduce_lr_on_plateau import ReduceLROnPlateau
from dlcore.callbacks.tensorboard import TensorBoard
from dlcore.callbacks.terminate_on_nan import TerminateOnNaN

__all__ = [
    "BAR_WIDTH",
    "HOOK_NAMES",
    "MODES",
    "BackupAndRestore",
    "CSVLogger",
    "Callback",
    "CallbackList",
    "EarlyStopping",
    "History",
    "LambdaCallback",
    "LearningRateScheduler",
    "Logs",
    "ModelCheckpoint",
    "ProgbarLogger",
    "ReduceLROnPlateau",
    "TensorBoard",
    "TerminateOnNaN",
    "format_value",
]
