"""What keeps one failing process from leaving the others waiting forever.

``install_abort_on_exception`` turns an uncaught exception on any process into the end
of the whole run; ``check_same`` makes every process refuse, with the same message, a
setting in which the processes differ (before they would deadlock or silently train
different models).
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from .communicator import Communicator

_Hook = Any  # the type of sys.excepthook


class _AbortHook:
    """A ``sys.excepthook`` that prints the traceback marked with the rank, then ends
    every process of ``comm``."""

    def __init__(self, comm: Communicator, previous: _Hook) -> None:
        self.comm = comm
        self.previous = previous

    def __call__(
        self,
        kind: type[BaseException],
        value: BaseException,
        tb: TracebackType | None,
    ) -> None:
        prefix = f"[rank {self.comm.rank}] "
        lines = "".join(traceback.format_exception(kind, value, tb)).splitlines()
        sys.stderr.write("".join(prefix + line + "\n" for line in lines))
        sys.stderr.flush()
        sys.stdout.flush()
        if self.comm.size > 1:
            self.comm.abort(1)


def install_abort_on_exception(comm: Communicator) -> None:
    """Make an uncaught exception on this process print its traceback once, each line
    prefixed ``[rank r]``, and then end every process of ``comm`` (``comm.abort(1)``),
    so that none waits forever in a collective this one will never join.

    Installing again replaces the communicator; the hook found first is kept so that
    ``uninstall_abort_on_exception`` restores it. In a world of one process the hook
    only prints (the process ends with code 1 anyway).
    """
    if not isinstance(comm, Communicator):
        raise TypeError(
            "install_abort_on_exception takes a dlcore.distribute Communicator; got "
            f"{type(comm).__name__}"
        )
    current = sys.excepthook
    if isinstance(current, _AbortHook):
        current.comm = comm
        return
    sys.excepthook = _AbortHook(comm, current)


def uninstall_abort_on_exception() -> None:
    """Restore the ``sys.excepthook`` that ``install_abort_on_exception`` replaced."""
    current = sys.excepthook
    if isinstance(current, _AbortHook):
        sys.excepthook = current.previous


def _describe(value: Mapping[str, Any], key: str) -> str:
    return f"{key} {value[key]}" if key in value else f"no {key}"


def check_same(
    comm: Communicator,
    what: str,
    value: Mapping[str, Any],
    *,
    must: str = "build the same model and pass data of the same shape",
) -> None:
    """Check that every process has the same ``value``, a small dict of strings, ints
    or tuples describing its setting (``{"input shape": "(None, 4)"}``).

    ``what`` names the check in the message (the caller, ``"fit()"``); ``must``
    completes its last sentence, "every process must ...". Collective: every process
    calls it.

    Raises:
        ValueError: on every process, with the same message, when a process's ``value``
            differs from rank 0's; it names the first such rank and each differing key
            with both values, e.g. "fit(): rank 2 has input shape (None, 5), rank 0 has
            (None, 4): every process must build the same model and pass data of the
            same shape".
        TypeError: ``value`` is not a dict.
    """
    if not isinstance(value, Mapping):
        raise TypeError(
            f"check_same takes a dict of the settings to compare; got {type(value).__name__}"
        )
    values = comm.gather_objects(dict(value))
    reference = values[0]
    for rank, other in enumerate(values[1:], start=1):
        if other == reference:
            continue
        keys = [k for k in reference if other.get(k, _MISSING) != reference[k]]
        keys += [k for k in other if k not in reference]
        parts = []
        for key in keys:
            ours = _describe(other, key)
            theirs = str(reference[key]) if key in reference else f"no {key}"
            parts.append(f"rank {rank} has {ours}, rank 0 has {theirs}")
        raise ValueError(f"{what}: " + "; ".join(parts) + f": every process must {must}")


_MISSING = object()
