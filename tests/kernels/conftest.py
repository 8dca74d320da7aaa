"""Kernel tests need Numba (the ``test`` extra installs it); without it they are skipped."""

import importlib.util

collect_ignore_glob = [] if importlib.util.find_spec("numba") else ["test_*.py"]
