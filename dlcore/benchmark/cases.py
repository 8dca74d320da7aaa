"""The benchmark cases: model widths, batch size and the target each must reach; the
precisions they train at.

Every case trains a stack of ReLU ``Dense`` layers with a softmax output on
float32 data with categorical cross-entropy and Adam, as ``model.fit`` does
(shuffling and batching included), over ``steps`` batches per epoch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Case:
    """One benchmark case.

    Attributes:
        name: short name used on the command line (``tiny``, ``small``, ...).
        widths: layer widths from the input features to the classes,
            e.g. ``(784, 50, 50, 10)``.
        batch_size: samples per training step.
        min_bound_fraction: the least fraction of the GEMM bound to reach, or ``None``.
    """

    name: str
    widths: tuple[int, ...]
    batch_size: int
    min_bound_fraction: float | None = None

    @property
    def weights(self) -> int:
        """Number of trainable scalars: every kernel and bias."""
        return sum(i * o + o for i, o in zip(self.widths[:-1], self.widths[1:]))

    @property
    def flops_per_sample(self) -> int:
        """Multiply-adds of forward and backward counted as 2 FLOPs each: ``6 × weights``."""
        return 6 * self.weights

    def gemm_bound_seconds(self, peak_flops: float) -> float:
        """Seconds per step if every FLOP of the step ran at the matrix product's ``peak_flops``."""
        return self.batch_size * self.flops_per_sample / peak_flops

    def scaled(self, factor: int) -> Case:
        """The same case with widths (except input and classes) and batch divided by ``factor``;
        used by the smoke runs in CI."""
        hidden = tuple(max(2, w // factor) for w in self.widths[1:-1])
        return Case(
            self.name,
            (max(2, self.widths[0] // factor), *hidden, self.widths[-1]),
            max(2, self.batch_size // factor),
            self.min_bound_fraction,
        )

    def data(self, steps: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Random float32 features ``(steps × batch, widths[0])`` and one-hot float32
        targets ``(steps × batch, widths[-1])``."""
        rng = np.random.default_rng(seed)
        samples = steps * self.batch_size
        x = rng.standard_normal((samples, self.widths[0]), dtype=np.float32)
        labels = rng.integers(0, self.widths[-1], samples)
        y = np.zeros((samples, self.widths[-1]), dtype=np.float32)
        y[np.arange(samples), labels] = 1.0
        return x, y


CASES: dict[str, Case] = {
    case.name: case
    for case in (
        Case("tiny", (784, 50, 50, 10), 32),
        Case("small", (784, 256, 256, 10), 128),
        Case("medium", (784, 1024, 1024, 10), 512, min_bound_fraction=0.9),
        Case("large", (1024, 4096, 4096, 10), 1024, min_bound_fraction=0.9),
    )
}

# The peer targets: per case, per peer (a name in ``peers.PEERS``), the least dlcore's
# samples/s may be as a multiple of that peer's. Tiny and small compare with the jitted
# JAX step and with JAX's floor (the same step on batches sliced beforehand, never
# shuffled: what JAX's step costs with nothing around it); medium and large with JAX and
# torch.compile. A case not listed has no peer target.
PEER_TARGETS: dict[str, dict[str, float]] = {
    "tiny": {"jax": 2.0, "jax-floor": 1.3},
    "small": {"jax": 1.3, "jax-floor": 1.3},
    "medium": {"jax": 1.0, "torch": 1.0},
    "large": {"jax": 1.0, "torch": 1.0},
}

# What ``python -m dlcore bench --precision`` trains at: float32 (the table with the
# targets) or one of dlcore's mixed dtype policies (a table of its own, no targets).
FLOAT32 = "float32"
MIXED_PRECISIONS = ("mixed_float16", "mixed_bfloat16")
PRECISIONS = (FLOAT32, *MIXED_PRECISIONS)
