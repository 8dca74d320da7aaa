"""What bounds each kernel of a training step on an H100: bytes moved, flops and time.

``python -m dlcore.kernels.roofline`` prints the table that ``kernels/README.md``
carries, for the benchmark cases of ``bench/``. A kernel's time bound is the larger
of its DRAM time (the bytes it must read and write once, at the HBM bandwidth)
and its arithmetic time (its flops at the FP32 or FP64 peak of the CUDA cores;
the kernels use fused multiply-adds, not tensor cores). Every launch also costs
the launch overhead, which dominates the small cases.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

# NVIDIA H100 SXM5 (80 GB) data sheet figures.
HBM_BYTES_PER_S = 3.35e12
PEAK_FLOPS = {"float32": 66.9e12, "float64": 33.5e12}  # CUDA cores, fused multiply-add
# A Numba launch from Python costs several microseconds of host time; the GPU's own
# launch latency is about 2-3 us. 5 us is what a step pays per kernel when the host,
# not the GPU, is the bottleneck.
LAUNCH_SECONDS = 5e-6

# The benchmark cases of bench/: layer widths and batch size.
CASES = {
    "tiny": ((784, 50, 50, 10), 32),
    "small": ((784, 256, 256, 10), 128),
    "medium": ((784, 1024, 1024, 10), 512),
    "large": ((1024, 4096, 4096, 10), 1024),
}


@dataclass(frozen=True)
class KernelCost:
    """One kernel launch of a training step."""

    kernel: str
    flops: float
    bytes: float

    def seconds(self, dtype: str) -> float:
        """The time bound: the slower of moving the bytes and doing the flops."""
        return max(self.bytes / HBM_BYTES_PER_S, self.flops / PEAK_FLOPS[dtype])

    def bound(self, dtype: str) -> str:
        """``"memory"`` or ``"compute"``: which of the two sets ``seconds``."""
        memory = self.bytes / HBM_BYTES_PER_S
        return "memory" if memory >= self.flops / PEAK_FLOPS[dtype] else "compute"


def training_step(widths: tuple[int, ...], batch: int, dtype: str = "float32") -> list[KernelCost]:
    """The kernels of one ``fit`` step of a relu MLP with a softmax output, categorical
    cross-entropy, accuracy and Adam, with shuffled batches.

    Args:
        widths: ``(inputs, hidden..., outputs)``.
        batch: samples per step ``N``.
        dtype: ``"float32"`` or ``"float64"``.

    Returns:
        One ``KernelCost`` per launch, in launch order.
    """
    s = 4 if dtype == "float32" else 8
    N, inputs, outputs = batch, widths[0], widths[-1]
    costs = [
        KernelCost("take_rows (x)", 0, 2 * N * inputs * s + N * 8),
        KernelCost("take_rows (y)", 0, 2 * N * outputs * s + N * 8),
    ]
    layers = list(zip(widths[:-1], widths[1:]))
    for i, (I, O) in enumerate(layers):
        last = i == len(layers) - 1
        written = 1 if last else 2  # the last layer writes Z only; softmax then writes Y
        costs.append(
            KernelCost(
                f"dense_forward {I}x{O}" + (" (linear)" if last else " (relu)"),
                2 * N * I * O,
                (N * I + I * O + O + written * N * O) * s,
            )
        )
    costs += [
        KernelCost("softmax", 5 * N * outputs, 2 * N * outputs * s),
        KernelCost("loss (categorical_crossentropy)", 6 * N * outputs, 2 * N * outputs * s),
        KernelCost("count_correct", 2 * N * outputs, 2 * N * outputs * s),
        KernelCost("softmax_crossentropy_gradient", 2 * N * outputs, 3 * N * outputs * s),
    ]
    for i, (I, O) in reversed(list(enumerate(layers))):
        last = i == len(layers) - 1
        if last:
            costs.append(KernelCost(f"column_sums {O}", N * O, (N * O + O) * s))
        else:
            costs.append(
                KernelCost(f"activation_gradient_and_bias {O}", 3 * N * O, (3 * N * O + O) * s)
            )
        costs.append(KernelCost(f"gemm dW {I}x{O}", 2 * N * I * O, (N * I + N * O + I * O) * s))
        if i > 0:
            costs.append(KernelCost(f"gemm dX {N}x{I}", 2 * N * I * O, (N * O + I * O + N * I) * s))
    parameters = sum(I * O + O for I, O in layers)
    costs.append(KernelCost("adam_update", 12 * parameters, 7 * parameters * s))
    return costs


def markdown(dtype: str = "float32") -> str:
    """The README table: per case, each kernel's bytes, flops, bound and time, and the total."""
    lines = []
    for case, (widths, batch) in CASES.items():
        costs = training_step(widths, batch, dtype)
        lines += [
            f"**{case}** ({'-'.join(map(str, widths))}, batch {batch}, {dtype})",
            "",
            "| kernel | MB moved | MFLOP | bound | time (us) |",
            "|---|---:|---:|---|---:|",
        ]
        for cost in costs:
            lines.append(
                f"| {cost.kernel} | {cost.bytes / 1e6:.3f} | {cost.flops / 1e6:.2f} | "
                f"{cost.bound(dtype)} | {cost.seconds(dtype) * 1e6:.2f} |"
            )
        gpu = sum(cost.seconds(dtype) for cost in costs)
        launches = len(costs) * LAUNCH_SECONDS
        lines += [
            "",
            f"Step: {gpu * 1e6:.1f} us of GPU time at the bounds, {len(costs)} launches "
            f"({launches * 1e6:.0f} us at {LAUNCH_SECONDS * 1e6:.0f} us each): at most "
            f"{batch / max(gpu, launches):,.0f} samples/s.",
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=sorted(PEAK_FLOPS), default="float32")
    print(markdown(parser.parse_args(argv).dtype))


if __name__ == "__main__":
    main()
