"""The H100 bounds in kernels/README.md: the cost model counts what a step must move and compute."""

from __future__ import annotations

import pytest
from dlcore.kernels import roofline


def test_a_step_does_six_flops_per_weight_per_sample_in_its_matrix_products():
    widths, batch = (784, 50, 50, 10), 32
    costs = roofline.training_step(widths, batch)
    weights = sum(i * o for i, o in zip(widths[:-1], widths[1:]))
    gemm_flops = sum(c.flops for c in costs if c.kernel.startswith(("gemm", "dense_forward")))
    # forward, dW, dX: 2 flops per multiply-add each, less the first layer's unused dX
    assert gemm_flops == 6 * batch * weights - 2 * batch * 784 * 50


def test_adam_moves_seven_buffers_of_every_parameter():
    costs = roofline.training_step((4, 3, 2), batch=5, dtype="float64")
    adam = next(c for c in costs if c.kernel == "adam_update")
    parameters = 4 * 3 + 3 + 3 * 2 + 2
    assert adam.bytes == 7 * parameters * 8  # read w, g, m, v; write w, m, v


def test_the_bound_is_the_slower_of_memory_and_arithmetic():
    cost = roofline.KernelCost("k", flops=roofline.PEAK_FLOPS["float32"], bytes=1.0)
    assert cost.seconds("float32") == pytest.approx(1.0)
    assert cost.bound("float32") == "compute"
    memory = roofline.KernelCost("k", flops=0.0, bytes=roofline.HBM_BYTES_PER_S * 2)
    assert memory.seconds("float64") == pytest.approx(2.0) and memory.bound("float64") == "memory"


def test_the_markdown_table_lists_every_case():
    table = roofline.markdown()
    for case in roofline.CASES:
        assert f"**{case}**" in table
    assert table.count("| adam_update |") == len(roofline.CASES)
