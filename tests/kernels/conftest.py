"""Kernel tests need Numba (the ``test`` extra installs it); without it they are skipped.

The ``fma_atol`` fixture gives the tolerance of a float32 kernel against a float64
reference (``fused_rounding_atol``).
"""

import importlib.util

import numpy as np
import pytest

collect_ignore_glob = [] if importlib.util.find_spec("numba") else ["test_*.py"]

# Roundings a kernel may make on the way to one output, each at most one ulp of the
# largest term that enters it.
ULPS = 4


def fused_rounding_atol(*terms, dtype=np.float32, ulps: int = ULPS) -> np.ndarray:
    """Elementwise absolute tolerance of a kernel's output against a float64 reference:
    ``ulps`` ulps of ``dtype`` (``ulps * eps``, float32 unless said) of the largest
    ``|term|`` that enters each output element.

    On a GPU, a multiply followed by an add is fused into one ``fma.rn.f32`` (written so in
    the PTX, or fused by ptxas), which rounds once where NumPy and the simulator round
    twice. Where terms cancel near zero, the two roundings differ by an ulp of the terms,
    not of the result, so a relative tolerance, or a float32 NumPy emulation compared
    with ``atol=0``, fails on hardware. Each rounding of a fused or unfused evaluation is
    at most one ulp of the largest term it combines, so comparing with this ``atol``
    (``rtol=0``) stays strict and holds for both (float64 kernels fuse too: pass their
    dtype). ``terms`` are arrays (or scalars) that broadcast to the output's shape: the
    magnitudes of what the output is computed from.
    """
    largest = np.zeros(())
    for term in terms:
        largest = np.maximum(largest, np.abs(np.asarray(term, dtype=np.float64)))
    return ulps * float(np.finfo(dtype).eps) * largest


@pytest.fixture
def fma_atol():
    """``fused_rounding_atol``: the float32 tolerance that holds for fused multiply-adds."""
    return fused_rounding_atol
