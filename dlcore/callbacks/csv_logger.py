"""The :class:`CSVLogger` callback: one CSV row of logs per epoch."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from typing import IO, Any

import numpy as np

from dlcore.callbacks.base import Callback, Logs


def _cell(value: Any) -> Any:
    """A log value as Keras writes it: strings and numbers as they are, a 1-D iterable
    as ``"[a, b, ...]"``."""
    if isinstance(value, str):
        return value
    if isinstance(value, Iterable) and not (isinstance(value, np.ndarray) and value.ndim == 0):
        return f'"[{", ".join(map(str, value))}]"'
    return value


class CSVLogger(Callback):
    """Writes every epoch's logs to a CSV file, one row per epoch.

    The columns are ``epoch`` (0-based) then the log keys in sorted order, taken from
    the first epoch; as in Keras 3, when that epoch has no ``val_`` keys, a ``val_``
    column per key is added too and holds ``NA``, as does any key an epoch lacks.
    The file is flushed after every row and closed when training ends.

    Args:
        filename: Path of the CSV file, e.g. ``"run/log.csv"``; its directory must exist.
        separator: The one-character string between fields.
        append: ``True`` appends to an existing file (to continue a training run):
            no second header is written when the file already starts with one, and
            its columns must be those of this run (else ValueError, before anything is
            written). ``False`` overwrites the file.

    Example:

    >>> model.fit(x, y, epochs=10, callbacks=[CSVLogger("training.csv")])
    """

    chief_only = True

    def __init__(
        self, filename: str | os.PathLike[str], separator: str = ",", append: bool = False
    ) -> None:
        super().__init__()
        if not isinstance(filename, (str, os.PathLike)):
            raise TypeError(
                f"CSVLogger expected filename to be a str or os.PathLike, received "
                f"{type(filename).__name__}"
            )
        if not isinstance(separator, str) or len(separator) != 1:
            raise ValueError(
                f"CSVLogger expected separator to be a single character such as ',' or "
                f"'\\t', received separator={separator!r}"
            )
        if not isinstance(append, bool):
            raise TypeError(f"CSVLogger expected append to be True or False, received {append!r}")
        self.filename = os.fspath(filename)
        self.sep = separator
        self.append = append
        self.keys: list[str] | None = None
        self.csv_file: IO[str] | None = None
        self._writer: Any = None
        self._existing_header: list[str] | None = None

    def _dialect(self) -> type[csv.Dialect]:
        class Dialect(csv.excel):
            delimiter = self.sep

        return Dialect

    def on_train_begin(self, logs: Logs | None = None) -> None:
        """Opens the file: for writing, or for appending after reading its header."""
        self._close()
        self._existing_header = None
        needs_newline = False
        if self.append and os.path.isfile(self.filename):
            with open(self.filename, newline="") as existing:
                first = existing.readline()
                if first.strip():
                    self._existing_header = next(csv.reader([first], dialect=self._dialect()))
                existing.seek(0, os.SEEK_END)
                if existing.tell() > 0:
                    existing.seek(existing.tell() - 1)
                    needs_newline = existing.read(1) not in ("\n", "\r")
        self.csv_file = open(self.filename, "a" if self.append else "w", newline="")
        if needs_newline:  # a row cut short by a crash: start the next one on its own line
            self.csv_file.write("\r\n")
        self._writer = None
        self.keys = None

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        """Writes the epoch's row (and the header before the first one)."""
        logs = logs or {}
        if self.csv_file is None:
            self.on_train_begin()
        csv_file = self.csv_file
        assert csv_file is not None
        if self.keys is None:
            keys = sorted(logs)
            if keys and not any(key.startswith("val_") for key in keys):
                keys += [f"val_{key}" for key in keys]
            self.keys = keys
        if self._writer is None:
            fieldnames = ["epoch", *self.keys]
            header = self._existing_header
            if header is not None and header != fieldnames:
                self._close()
                raise ValueError(
                    f"CSVLogger cannot append to {self.filename!r}: its columns are {header} "
                    f"but this run logs {fieldnames}; pass a new filename, or append=False to "
                    "overwrite it"
                )
            self._writer = csv.DictWriter(csv_file, fieldnames=fieldnames, dialect=self._dialect())
            if header is None:
                self._writer.writeheader()
        row: dict[str, Any] = {"epoch": epoch}
        row.update((key, _cell(logs.get(key, "NA"))) for key in self.keys)
        self._writer.writerow(row)
        csv_file.flush()

    def on_train_end(self, logs: Logs | None = None) -> None:
        """Closes the file."""
        self._close()

    def _close(self) -> None:
        if self.csv_file is not None and not self.csv_file.closed:
            self.csv_file.close()
        self.csv_file = None
        self._writer = None
