"""The :class:`BackupAndRestore` callback: resume a ``fit`` that was interrupted.

A backup is one file of dlcore's archive format (``dlcore.archive``, written atomically
through a temporary file and ``os.replace``) that holds everything the next epochs
depend on: the weights, the optimizer's state and learning rate, the index of the last
finished epoch and the state of the host random generator that ``fit`` draws its
shuffling from.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from dlcore import archive, config, saving
from dlcore.archive import MemberHeader, ModelFileError
from dlcore.callbacks.base import Callback, Logs

BACKUP_FORMAT = "dlcore.backup"
BACKUP_VERSION = 1
LATEST_NAME = "latest.dlcore"
PREVIOUS_NAME = "previous.dlcore"


def _json_state(value: Any) -> Any:
    """A random generator's state (nested dicts of ints, strings and arrays) as JSON."""
    if isinstance(value, Mapping):
        return {str(key): _json_state(item) for key, item in value.items()}
    if isinstance(value, np.ndarray):
        return {"__array__": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, np.integer):
        return int(value)
    return value


def _generator_state(value: Any) -> Any:
    """The inverse of ``_json_state``."""
    if isinstance(value, dict):
        if set(value) == {"__array__", "dtype"}:
            return np.asarray(value["__array__"], dtype=np.dtype(value["dtype"]))
        return {key: _generator_state(item) for key, item in value.items()}
    return value


class BackupAndRestore(Callback):
    """Backs up the training state every epoch and resumes from it after an interruption.

    At the end of every epoch (or every ``save_freq`` batches) the callback writes
    ``<backup_dir>/latest.dlcore``: the weights, the optimizer's state and learning
    rate, the epoch and the state of dlcore's host random generator
    (``dlcore.config.rng()``). The file is written to a temporary name and renamed,
    so a crash while saving leaves the previous backup intact. When ``fit`` starts
    and a backup exists, everything is restored and training resumes at the epoch
    after the backed-up one: rerun the same script (same model, compile settings,
    data, seed and ``fit`` arguments) and the resumed run shuffles its batches as the
    uninterrupted one would have, so its final weights are the same. (Dropout masks
    come from the engine's own generator, which is not backed up: a model with
    dropout resumes with other masks.)

    A backup that cannot be read, that is not a dlcore backup, or that was written by
    a model with other weight shapes, dtype or optimizer raises ``ModelFileError``
    (a ``ValueError``) naming the file, and nothing is restored.

    Args:
        backup_dir: Directory of the backup files (made if missing). Do not share it
            with another run or another callback.
        save_freq: ``"epoch"``, or a positive number of batches between backups.
            A run interrupted after a batch-level backup redoes the epoch it was in
            from its start (with the weights of that backup), as in Keras.
        double_checkpoint: Also keep the backup before the latest as
            ``previous.dlcore``, used when the latest cannot be read.
        delete_checkpoint: Delete the backup files (and ``backup_dir`` if it is then
            empty) when ``fit`` ends normally.

    Example:

    >>> backup = BackupAndRestore(backup_dir="/tmp/run1-backup")
    >>> model.fit(x, y, epochs=100, callbacks=[backup])  # rerun after a crash: it resumes
    """

    chief_only = True

    def __init__(
        self,
        backup_dir: str | os.PathLike[str],
        save_freq: str | int = "epoch",
        double_checkpoint: bool = False,
        delete_checkpoint: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(backup_dir, (str, os.PathLike)) or not os.fspath(backup_dir):
            raise ValueError(
                "BackupAndRestore expected backup_dir to be the path of a directory, "
                f"received backup_dir={backup_dir!r}"
            )
        if save_freq != "epoch" and (
            isinstance(save_freq, bool)
            or not isinstance(save_freq, (int, np.integer))
            or save_freq < 1
        ):
            raise ValueError(
                "BackupAndRestore expected save_freq to be 'epoch' or a positive number of "
                f"batches, received save_freq={save_freq!r}"
            )
        self.backup_dir = os.fspath(backup_dir)
        self.save_freq = save_freq if save_freq == "epoch" else int(save_freq)
        self.double_checkpoint = bool(double_checkpoint)
        self.delete_checkpoint = bool(delete_checkpoint)
        self._latest = os.path.join(self.backup_dir, LATEST_NAME)
        self._previous = os.path.join(self.backup_dir, PREVIOUS_NAME)
        self._batches_since_save = 0
        self._epoch_begin_rng: Any = None
        self._epoch = 0
        if self.save_freq != "epoch":
            self.on_train_batch_end = self._count_batch  # type: ignore[method-assign]

    # ------------------------------------------------------------------ hooks
    def on_train_begin(self, logs: Logs | None = None) -> None:
        """Restores the backup, if there is one, and tells ``fit`` where to resume."""
        self._batches_since_save = 0
        for path in (self._latest, self._previous):
            if not os.path.exists(path):
                continue
            try:
                self._restore(path)
                return
            except ModelFileError as error:
                if (
                    path == self._latest
                    and self.double_checkpoint
                    and os.path.exists(self._previous)
                ):
                    warnings.warn(
                        f"BackupAndRestore: {error}; resuming from the previous backup "
                        f"{self._previous} instead",
                        stacklevel=2,
                    )
                    continue
                raise ModelFileError(
                    path,
                    f"BackupAndRestore cannot resume from {path}: {error}. Delete the directory "
                    f"{self.backup_dir!r} to train from the start, or pass another backup_dir",
                ) from None

    def on_epoch_begin(self, epoch: int, logs: Logs | None = None) -> None:
        """Remembers the generator's state, from which a batch-level backup redoes the epoch."""
        self._epoch = epoch
        if self.save_freq != "epoch":
            self._epoch_begin_rng = _json_state(config.rng().bit_generator.state)

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        """Backs up the state after epoch ``epoch``."""
        if self.save_freq == "epoch":
            self._save(epoch, _json_state(config.rng().bit_generator.state))

    def _count_batch(self, batch: int, logs: Logs | None = None) -> None:
        self._batches_since_save += 1
        if self._batches_since_save >= int(self.save_freq):
            self._batches_since_save = 0
            # Resuming redoes this epoch from its start: the last finished one is epoch - 1.
            self._save(self._epoch - 1, self._epoch_begin_rng)

    def on_train_end(self, logs: Logs | None = None) -> None:
        """Deletes the backup after a finished ``fit`` when ``delete_checkpoint``."""
        if not self.delete_checkpoint:
            return
        for path in (self._latest, self._previous):
            if os.path.exists(path):
                os.remove(path)
        try:
            os.rmdir(self.backup_dir)
        except OSError:
            pass  # missing, or holding other files: left alone

    # ------------------------------------------------------------------ files
    def _save(self, epoch: int, rng_state: Any) -> None:
        """Writes the backup of the state after ``epoch`` (-1: none finished yet)."""
        model = self.model
        os.makedirs(self.backup_dir, exist_ok=True)
        if self.double_checkpoint and os.path.exists(self._latest):
            staging = self._previous + ".tmp"
            shutil.copyfile(self._latest, staging)
            os.replace(staging, self._previous)
        _, arrays = saving.model_state(model)
        description = {
            "format": BACKUP_FORMAT,
            "version": BACKUP_VERSION,
            "epoch": int(epoch),
            "dtype": model.dtype,
            "shapes": [list(w.shape) for w in model.weights],
            "optimizer": type(model.optimizer).__name__,
            "learning_rate": _fixed_learning_rate(model.optimizer),
            "rng": rng_state,
        }
        archive.write_archive(self._latest, description, dict(arrays))

    def _restore(self, path: str) -> None:
        """Reads the backup at ``path``, checks it against the model, then restores it."""
        model = self.model
        optimizer = model.optimizer
        shapes = [list(w.shape) for w in model.weights]

        def select(description: dict[str, Any], headers: Mapping[str, MemberHeader]) -> list[str]:
            if description.get("format") != BACKUP_FORMAT:
                raise ModelFileError(
                    path,
                    f"it is not a BackupAndRestore backup (format {description.get('format')!r})",
                )
            if description.get("version") != BACKUP_VERSION:
                raise ModelFileError(path, f"it has backup version {description.get('version')!r}")
            found = {
                "weight shapes": description.get("shapes"),
                "dtype": description.get("dtype"),
                "optimizer": description.get("optimizer"),
            }
            own = {
                "weight shapes": shapes,
                "dtype": model.dtype,
                "optimizer": type(optimizer).__name__,
            }
            for what, value in found.items():
                if value != own[what]:
                    raise ModelFileError(
                        path,
                        f"it was written by another model: its {what} {value!r} differ from "
                        f"this model's {own[what]!r}",
                    )
            epoch, rng = description.get("epoch"), description.get("rng")
            if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < -1:
                raise ModelFileError(path, f"its epoch is {epoch!r}, not an epoch index")
            if (
                not isinstance(rng, dict)
                or rng.get("bit_generator") != type(config.rng().bit_generator).__name__
            ):
                raise ModelFileError(
                    path, "its random generator state is missing or of another kind"
                )
            if "params" not in headers:
                raise ModelFileError(path, "it holds no weights")
            return list(headers)

        description, arrays = archive.read_archive(path, select)
        try:
            params = arrays.pop("params")
            if params.dtype != np.dtype(model.dtype) or params.size != sum(
                int(np.prod(s)) for s in shapes
            ):
                raise ValueError(f"its weights are {params.dtype} {params.shape}")
            state = {
                key.split("/", 1)[1]: value
                for key, value in arrays.items()
                if key.startswith("optimizer/")
            }
            rng_state = _generator_state(description["rng"])
            generator = config.rng().bit_generator
            type(generator)().state = rng_state  # checked on a spare generator first
            # set_state checks everything before it changes anything
            optimizer.set_state(model._built_engine(), state, model.dtype)
            generator.state = rng_state
        except (ValueError, TypeError, KeyError) as error:
            raise ModelFileError(path, f"it is a damaged backup: {error}") from None
        model._set_flat(params)
        learning_rate = description.get("learning_rate")
        if learning_rate is not None and _fixed_learning_rate(optimizer) is not None:
            optimizer.learning_rate = float(learning_rate)
        model._initial_epoch = description["epoch"] + 1


def _fixed_learning_rate(optimizer: Any) -> float | None:
    """The optimizer's learning rate when it is a number it was given (or a callback
    set), ``None`` when it follows a schedule, which restores itself from the step count."""
    value = optimizer.get_config().get("learning_rate")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(optimizer.learning_rate)
    return None
