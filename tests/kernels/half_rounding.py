"""The tolerance of a float16 kernel against a float64 reference (``half_atol``).

A float16 kernel loads float16, computes in float32 and rounds to float16 when it stores.
Its reference is float64 NumPy computed from the same float16 inputs (converted exactly),
so what separates the two is the float32 arithmetic and the final rounding.
"""

from __future__ import annotations

import numpy as np

EPS16 = float(np.finfo(np.float16).eps)

# Below float16's smallest normal (6.1e-5) values are spaced by its smallest subnormal,
# 2**-24: rounding there is off by up to half of that, whatever the value's size.
SUBNORMAL_HALF_SPACING = float(np.finfo(np.float16).smallest_subnormal) / 2


def half_atol(*stored, float32_atol=0.0) -> np.ndarray:
    """Elementwise absolute tolerance of a float16 kernel's output: one float16 rounding
    of a float32 result per store.

    Rounding a float32 result ``r`` to float16 moves it by at most half a float16 ulp,
    ``eps16 / 2 * |r|`` (``SUBNORMAL_HALF_SPACING`` where ``r`` is subnormal). ``r`` is
    itself within ``float32_atol`` of the exact value (the float32 tolerance of the same
    kernel: ``fma_atol(...)`` of the terms, or the test's float32 tolerance), so the
    output is within ``eps16 / 2 * (|exact| + float32_atol) + float32_atol`` of it.

    Args:
        stored: per rounding on the way to the output, the float64 reference of the value
            whose rounding error reaches the output unchanged: the output itself for one
            kernel. A fold of ``n`` inputs (merges) rounds ``n - 1`` times: pass each
            partial sum of a sum (its error is added on), the output ``n - 1`` times for a
            product (each error is relative, ``eps16 / 2`` of the final product); ``1 +
            eps16`` covers the products of two rounding errors.
        float32_atol: the float32 arithmetic's tolerance, broadcast to the output.

    Returns:
        The absolute tolerance, broadcast over the shapes of ``stored``.
    """
    float32_atol = np.asarray(float32_atol, dtype=np.float64)
    total = np.zeros(())
    for value in stored:
        magnitude = np.abs(np.asarray(value, dtype=np.float64)) + float32_atol
        total = total + EPS16 / 2 * magnitude + SUBNORMAL_HALF_SPACING
    return (1 + EPS16) * total + float32_atol
