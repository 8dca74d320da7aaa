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


# ---------------------------------------------------------------------- fused narrow MLPs
# The numba engine's fused step (kernels/fused_mlp.py) for stacks whose hidden widths and
# class count are at most FUSED_MAX_WIDTH: forward and backward kernels of one block per
# FUSED_TILE_ROWS batch rows. A block runs on one SM, so a kernel of a few blocks gets
# that share of the GPU's arithmetic (H100_SMS SMs), however few its flops.
FUSED_MAX_WIDTH = 128
FUSED_TILE_ROWS = 32
FUSED_MAX_PARTIALS = 128
H100_SMS = 132


@dataclass(frozen=True)
class BlockLimitedCost(KernelCost):
    """A kernel of ``blocks`` blocks: its arithmetic runs on at most ``blocks`` SMs."""

    blocks: int = H100_SMS

    def _arithmetic(self, dtype: str) -> float:
        share = min(self.blocks, H100_SMS) / H100_SMS
        return self.flops / (PEAK_FLOPS[dtype] * share)

    def seconds(self, dtype: str) -> float:
        """The slower of moving the bytes and doing the flops on the blocks' SMs."""
        return max(self.bytes / HBM_BYTES_PER_S, self._arithmetic(dtype))

    def bound(self, dtype: str) -> str:
        """``"memory"`` or ``"compute"``: which of the two sets ``seconds``."""
        return "memory" if self.bytes / HBM_BYTES_PER_S >= self._arithmetic(dtype) else "compute"


def _blocks(n: int) -> str:
    return f"{n} block" if n == 1 else f"{n} blocks"


def fused_fits(widths: tuple[int, ...]) -> bool:
    """Whether the fused kernels take a stack of these widths (``(inputs, hidden..., classes)``)."""
    return all(1 <= width <= FUSED_MAX_WIDTH for width in widths[1:])


def fused_training_step(
    widths: tuple[int, ...], batch: int, dtype: str = "float32"
) -> list[KernelCost]:
    """The kernels of one ``fit`` step of ``training_step``'s model with the fused kernels.

    Args:
        widths: ``(inputs, hidden..., classes)``, hidden widths and classes at most
            ``FUSED_MAX_WIDTH``.
        batch: samples per step ``N``.
        dtype: ``"float32"`` or ``"float64"``.

    Returns:
        One cost per launch, in launch order: the batch gathers, the fused forward
        (products, softmax, per-sample loss, ``dP``), the loss mean, the accuracy
        count, the fused backward (per-block partial gradients), their fixed-order sum
        (only with more than one block) and Adam.

    Raises:
        ValueError: a hidden width or the class count is above ``FUSED_MAX_WIDTH``.
    """
    if not fused_fits(widths):
        raise ValueError(f"widths {widths} exceed the fused kernels' {FUSED_MAX_WIDTH}")
    s = 4 if dtype == "float32" else 8
    N, inputs, classes = batch, widths[0], widths[-1]
    layers = list(zip(widths[:-1], widths[1:]))
    hidden = sum(widths[1:-1])
    weights = sum(I * O for I, O in layers)
    parameters = weights + sum(widths[1:])
    tiles = -(-N // FUSED_TILE_ROWS)
    partials = min(tiles, FUSED_MAX_PARTIALS)
    below_first = sum(I * O for I, O in layers[1:])  # products that also give dX
    forward_bytes = N * inputs + parameters + N * classes + N * hidden + 2 * N * classes
    costs: list[KernelCost] = [
        KernelCost("take_rows (x)", 0, 2 * N * inputs * s + N * 8),
        KernelCost("take_rows (y)", 0, 2 * N * classes * s + N * 8),
        BlockLimitedCost(
            f"fused forward ({_blocks(tiles)})",
            2 * N * weights + N * hidden + 8 * N * classes,
            forward_bytes * s + N * 8,
            blocks=tiles,
        ),
        KernelCost("loss mean (reductions.mean_all)", N, N * 8),
        KernelCost("count_correct", 2 * N * classes, 2 * N * classes * s),
        BlockLimitedCost(
            f"fused backward ({_blocks(partials)})",
            2 * N * (weights + below_first) + N * (sum(widths[1:]) + 2 * hidden),
            (N * inputs + N * hidden + N * classes + below_first + partials * parameters) * s,
            blocks=partials,
        ),
    ]
    if partials > 1:
        costs.append(
            KernelCost(
                f"sum of {partials} partials",
                partials * parameters,
                (partials + 1) * parameters * s,
            )
        )
    costs.append(KernelCost("adam_update", 12 * parameters, 7 * parameters * s))
    return costs


def step_summary(costs: list[KernelCost], batch: int, dtype: str) -> tuple[float, float, float]:
    """``(GPU seconds at the bounds, launch seconds, samples/s at best)`` of one step."""
    gpu = sum(cost.seconds(dtype) for cost in costs)
    launches = len(costs) * LAUNCH_SECONDS
    return gpu, launches, batch / max(gpu, launches)


def fused_markdown(dtype: str = "float32", cases: tuple[str, ...] = ("tiny", "small")) -> str:
    """Per case, the fused step's kernels and the step next to the per-layer one's."""
    lines = []
    for case in cases:
        widths, batch = CASES[case]
        title = f"**{case}** ({'-'.join(map(str, widths))}, batch {batch}, {dtype})"
        per_layer = training_step(widths, batch, dtype)
        gpu, launches, rate = step_summary(per_layer, batch, dtype)
        moved = sum(cost.bytes for cost in per_layer) / 1e6
        row = f"| per-layer kernels | {len(per_layer)} | {moved:.3f} | {gpu * 1e6:.1f} | "
        row += f"{launches * 1e6:.0f} | {rate:,.0f} |"
        if not fused_fits(widths):
            lines += [
                title,
                "",
                f"Outside the fused kernels' envelope (a width above {FUSED_MAX_WIDTH}): "
                f"the engine runs the per-layer kernels, {len(per_layer)} launches, "
                f"{moved:.3f} MB, {gpu * 1e6:.1f} us at the bounds, at most {rate:,.0f} "
                "samples/s.",
                "",
            ]
            continue
        fused = fused_training_step(widths, batch, dtype)
        lines += [
            title,
            "",
            "| kernel | MB moved | MFLOP | bound | time (us) |",
            "|---|---:|---:|---|---:|",
        ]
        for cost in fused:
            lines.append(
                f"| {cost.kernel} | {cost.bytes / 1e6:.3f} | {cost.flops / 1e6:.2f} | "
                f"{cost.bound(dtype)} | {cost.seconds(dtype) * 1e6:.2f} |"
            )
        f_gpu, f_launches, f_rate = step_summary(fused, batch, dtype)
        f_moved = sum(cost.bytes for cost in fused) / 1e6
        lines += [
            "",
            "| step | launches | MB moved | GPU us at the bounds | launch us | samples/s at best |",
            "|---|---:|---:|---:|---:|---:|",
            row,
            f"| fused kernels | {len(fused)} | {f_moved:.3f} | {f_gpu * 1e6:.1f} | "
            f"{f_launches * 1e6:.0f} | {f_rate:,.0f} |",
            "",
        ]
    return "\n".join(lines)
