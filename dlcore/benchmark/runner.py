"""Measure training throughput: every case on every engine and peer, side by side.

The protocol, for each case: the data and the initial weights are made
once; every trainer (a dlcore engine through the public ``model.fit``, or a peer
framework from ``peers.py``) starts from those weights and trains one warm-up epoch;
then in each of ``repeats`` rounds every trainer trains one timed epoch in turn
(the order rotates from round to round) and the matrix product of every engine is
timed on a 2048³ float32 product. A trainer's speed is its fastest timed epoch, and
the peak FLOP/s of the GEMM bound is the highest of the rounds' peaks: on a shared
machine other work only ever adds time, so the fastest run is the closest to what
the code itself costs (the reasoning of Python's ``timeit``; ``make bench-compare``
compares minima too). The median epoch is reported beside it.

An epoch is ``model.fit(x, y, batch_size, epochs=1, verbose=0, shuffle=True)`` over
``steps`` batches of float32 data, softmax + categorical cross-entropy, Adam with its
default learning rate: shuffling, batching and the transfer of the data included.

With ``precisions`` naming a mixed policy (``mixed_float16``, ``mixed_bfloat16``) every
case is trained once more at that precision (``measure_mixed_case``): dlcore under the
global dtype policy with ``matmul_precision("high")``, the peers with their own reduced
precision (``peers.py``). Those numbers form a table of their own, without targets and
without GEMM peaks (``MixedMeasurement``).

torch and jax are imported only when peers are asked for.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

import dlcore
from dlcore import backends, config, mixed_precision
from dlcore.backends.base import Engine
from dlcore.benchmark import cases as cases_module
from dlcore.benchmark.cases import FLOAT32, PEER_TARGETS, PRECISIONS, Case
from dlcore.layers import Dense
from dlcore.models import Sequential
from dlcore.optimizers import Adam, LossScaleOptimizer

# A 2048³ product is 17 GFLOP: long enough that launch overhead hardly counts on a GPU,
# short enough (a fraction of a second on two CPU cores) to repeat every round.
GEMM_SIZE = 2048
GEMM_WARMUP = 2
GEMM_REPEATS = 5  # the best of this many timed samples
GEMM_SAMPLE_SECONDS = 0.01  # a sample shorter than this repeats the product to reach it

DEFAULT_REPEATS = 5
# Before each timed epoch: long enough for the thread pools of the trainer that ran before
# (OpenBLAS, OpenMP, XLA's) to stop spinning on the cores and go to sleep.
SETTLE_SECONDS = 0.5
PROTOCOL_STEPS = 100  # the targets hold for epochs of at least this many batches
SMOKE_FACTOR = 16  # smoke runs divide widths, batch sizes and the GEMM size by this
SMOKE_STEPS = 3

# Engines timed when none are named: array_api_strict exists to test the generic engine
# on a simulated device, and its timings would say nothing about dlcore's speed.
NOT_TIMED_BY_DEFAULT = ("array_api_strict",)

# The plot's sweep: batch sizes on the small case's widths, widths at batch 128.
SWEEP_BATCH_SIZES = (32, 64, 128, 256, 512, 1024)
SWEEP_BATCH_WIDTHS = (784, 256, 256, 10)
SWEEP_WIDTHS = (64, 128, 256, 512, 1024, 2048)
SWEEP_WIDTH_BATCH = 128
SWEEP_STEPS = 20  # per point: a warm-up and two timed epochs of this many batches

# dlcore's float32 matrix products: float32 arithmetic in the float32 table, TF32 where the
# engine can (cupy) in the mixed runs
FLOAT32_MATMUL_PRECISION = "highest"
MIXED_MATMUL_PRECISION = "high"

MET = "met"
NOT_MET = "NOT met"
NOT_MEASURED = "not measured"

Say = Callable[[str], None]


def _say_to_stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Trainer(Protocol):
    """What the runner times: ``peers.PeerTrainer`` and ``DlcoreTrainer`` alike."""

    name: str

    def epoch(self) -> float: ...

    def get_weights(self) -> list[np.ndarray]: ...


# ---------------------------------------------------------------------- what to run
def select_precisions(names: Sequence[str] | None = None) -> list[str]:
    """The precisions to train at, in the given order without repeats (default: float32).

    Raises:
        ValueError: an unknown name; the message lists the valid ones.
    """
    unknown = [name for name in names or () if name not in PRECISIONS]
    if unknown:
        raise ValueError(f"unknown precision {unknown[0]!r}; available: {', '.join(PRECISIONS)}")
    return list(dict.fromkeys(names or (FLOAT32,)))


def refusal(engine_name: str) -> str | None:
    """Why engine ``engine_name`` cannot be timed here, or ``None`` when it can.

    Raises:
        ValueError: unknown engine name (the message lists the registered ones).
    """
    cls = backends.engine_class(engine_name)
    ok, detail = cls.availability()
    if ok and cls.simulated():
        return (
            f"the {engine_name} engine runs in a simulator here ({detail}), whose times mean "
            "nothing; time it on the device it simulates"
        )
    return None if ok else detail


def select_engines(names: Sequence[str] | None = None) -> tuple[list[str], dict[str, str]]:
    """The engines to time and, for each one left out, why.

    Args:
        names: engine names; ``None`` for every registered engine that runs here except
            those in ``NOT_TIMED_BY_DEFAULT``.

    Returns:
        ``(engines to time, {engine: why it is not timed})``.

    Raises:
        ValueError: an unknown name, before anything is measured; the message lists
            the registered engines.
    """
    chosen = list(names) if names else list(backends.engine_names())
    for name in chosen:
        backends.engine_class(name)  # unknown names raise here, listing the valid ones
    timed, skipped = [], {}
    for name in dict.fromkeys(chosen):
        if names is None and name in NOT_TIMED_BY_DEFAULT:
            continue
        why = refusal(name)
        if why is None:
            timed.append(name)
        else:
            skipped[name] = why
    return timed, skipped


def select_cases(names: Sequence[str] | None = None) -> list[Case]:
    """The benchmark cases called ``names`` (every case when ``None``), in the given order.

    Raises:
        ValueError: an unknown name; the message lists the valid ones.
    """
    table = cases_module.CASES
    unknown = [name for name in names or () if name not in table]
    if unknown:
        raise ValueError(f"unknown case {unknown[0]!r}; available: {', '.join(table)}")
    return [table[name] for name in dict.fromkeys(names or table)]


# ---------------------------------------------------------------------- dlcore trainer
def build_model(case: Case) -> Sequential:
    """The case's model, built on the current engine in the current floatx and global dtype
    policy: ``Dense`` layers of ``case.widths[1:]`` units, ReLU on the hidden ones, softmax
    on the last. Under a mixed policy the last layer computes in float32, as Keras advises
    for the output softmax."""
    units = case.widths[1:]
    policy = mixed_precision.global_policy()
    mixed = policy.compute_dtype != policy.variable_dtype
    layers = []
    for index, width in enumerate(units):
        last = index == len(units) - 1
        options: dict[str, Any] = {"activation": "softmax" if last else "relu"}
        if index == 0:
            options["input_shape"] = (case.widths[0],)
        if last and mixed:
            options["dtype"] = "float32"
        layers.append(Dense(width, **options))
    model = Sequential(layers)
    model.build()
    return model


@contextlib.contextmanager
def precision_scope(precision: str) -> Iterator[None]:
    """Inside: dlcore's global dtype policy is ``precision`` and float32 matrix products run
    at ``FLOAT32_MATMUL_PRECISION`` (float32) or, for a mixed policy, at
    ``MIXED_MATMUL_PRECISION``; on leaving, both are as they were."""
    saved_policy = config.dtype_policy_name()
    followed_floatx = saved_policy == config.floatx()
    saved_matmul = config.matmul_precision()
    mixed_precision.set_global_policy(precision)
    mixed = precision != FLOAT32
    config.set_matmul_precision(MIXED_MATMUL_PRECISION if mixed else FLOAT32_MATMUL_PRECISION)
    try:
        yield
    finally:
        config.set_dtype_policy_name(None if followed_floatx else saved_policy)
        config.set_matmul_precision(saved_matmul)


@dataclass(frozen=True)
class Arithmetic:
    """What a trainer computed in: what the mixed table shows per runner.

    Attributes:
        summary: one line, e.g. ``"float16, float32 output; loss scaling"``.
        layer_dtypes: the dtype each Dense layer ran in (``Layer.run_dtype``), for a
            dlcore engine; ``None`` for a peer.
        fallback: why the engine computed in float32 rather than the policy's dtype, or
            ``None`` when it computed what was asked.
    """

    summary: str
    layer_dtypes: tuple[str, ...] | None = None
    fallback: str | None = None


def model_arithmetic(model: Sequential, precision: str) -> Arithmetic:
    """What ``model`` computed in, read from its layers' ``run_dtype`` (and
    ``product_dtype``, where an engine runs only the matrix products in the policy's
    dtype) once it has run on its engine, for a model built under the dtype policy
    ``precision``."""
    dtypes = tuple(layer.run_dtype for layer in model.layers)
    wanted = mixed_precision.DTypePolicy(precision).compute_dtype
    products = tuple(layer.product_dtype for layer in model.layers)
    labels = [
        f"{product} products" if product else dtype for product, dtype in zip(products, dtypes)
    ]
    hidden, output = labels[:-1], labels[-1]
    engine = model.engine.name if model.engine is not None else "its"
    computed = "/".join(dict.fromkeys(hidden)) or output
    fallback = None
    if any((product or dtype) != wanted for product, dtype in zip(products[:-1], dtypes[:-1])):
        fallback = f"the {engine} engine has no {wanted} kernels: its layers ran in {computed}"
        computed += f" (no {wanted} kernels)"
    summary = computed if set(hidden) == {output} else f"{computed}, {output} output"
    if any(products):
        summary += " (float32 arrays)"
    if isinstance(model.optimizer, LossScaleOptimizer):
        summary += "; loss scaling"
    return Arithmetic(summary, dtypes, fallback)


def initial_weights(case: Case, seed: int = 0) -> list[np.ndarray]:
    """The weights every trainer of ``case`` starts from: a float32 model built on the
    numpy engine after ``dlcore.set_random_seed(seed)``, in Keras order (per layer a
    kernel ``(in, out)`` then a bias ``(out,)``)."""
    saved = dlcore.floatx()
    dlcore.set_floatx("float32")
    try:
        with dlcore.use_backend("numpy"), precision_scope(FLOAT32):
            dlcore.set_random_seed(seed)
            return build_model(case).get_weights()
    finally:
        dlcore.set_floatx(saved)


class DlcoreTrainer:
    """A float32 model of ``case`` on one engine, compiled with ``Adam()`` and categorical
    cross-entropy (no metrics), starting from ``weights``; ``epoch()`` is one ``model.fit``
    epoch over ``x`` ``(n, widths[0])`` and one-hot ``y`` ``(n, widths[-1])``.

    With a mixed ``precision`` the model is built, compiled and trained inside
    ``precision_scope(precision)``: float32 weights, layers computing in the policy's
    dtype (the output layer in float32), Adam wrapped in a ``LossScaleOptimizer`` under
    ``mixed_float16`` (``compile`` does it).
    """

    def __init__(
        self,
        engine_name: str,
        case: Case,
        x: np.ndarray,
        y: np.ndarray,
        weights: Sequence[np.ndarray],
        precision: str = FLOAT32,
    ) -> None:
        saved = dlcore.floatx()
        dlcore.set_floatx("float32")
        try:
            with dlcore.use_backend(engine_name) as engine, precision_scope(precision):
                self.model = build_model(case)
                self.model.set_weights(weights)
                self.model.compile(optimizer=Adam(), loss="categorical_crossentropy")
        finally:
            dlcore.set_floatx(saved)
        self.name = engine_name
        self.engine: Engine = engine
        self.precision = precision
        self.x, self.y, self.batch_size = x, y, case.batch_size

    def epoch(self) -> float:
        """Train one epoch; returns its mean loss once the engine has finished."""
        with precision_scope(self.precision):
            history = self.model.fit(
                self.x, self.y, batch_size=self.batch_size, epochs=1, verbose=0, shuffle=True
            )
            self.engine.synchronize()
        return float(history.history["loss"][-1])

    def arithmetic(self) -> Arithmetic:
        """What the model computed in (``model_arithmetic``); call it after an epoch."""
        return model_arithmetic(self.model, self.precision)

    def get_weights(self) -> list[np.ndarray]:
        """Host copies of the current weights in Keras order."""
        return self.model.get_weights()


# ---------------------------------------------------------------------- peaks
def _best_seconds(product: Callable[[], Any], synchronize: Callable[[], Any]) -> float:
    """Seconds per call of ``product``: the best of ``GEMM_REPEATS`` samples after
    ``GEMM_WARMUP`` calls; a sample repeats the call until it lasts about
    ``GEMM_SAMPLE_SECONDS``, so that a fast GPU is not timed on launch overhead."""
    started = time.perf_counter()
    for _ in range(GEMM_WARMUP):
        product()
    synchronize()
    one = (time.perf_counter() - started) / GEMM_WARMUP
    calls = max(1, min(50, int(GEMM_SAMPLE_SECONDS / max(one, 1e-9))))
    best = float("inf")
    for _ in range(GEMM_REPEATS):
        started = time.perf_counter()
        for _ in range(calls):
            product()
        synchronize()
        best = min(best, (time.perf_counter() - started) / calls)
    return best


def _gemm_operands(size: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return (
        rng.standard_normal((size, size), dtype=np.float32),
        rng.standard_normal((size, size), dtype=np.float32),
    )


def gemm_peak_flops(engine: Engine, size: int | None = None) -> float:
    """FLOP/s of ``engine.gemm`` on a ``size``³ float32 product (default ``GEMM_SIZE``):
    ``2 size³`` over the best time, with ``engine.synchronize()`` around the timing."""
    n = GEMM_SIZE if size is None else size
    A_host, B_host = _gemm_operands(n)
    A = engine.asarray(A_host, dtype="float32")
    B = engine.asarray(B_host, dtype="float32")
    engine.synchronize()
    return 2.0 * n**3 / _best_seconds(lambda: engine.gemm(A, B), engine.synchronize)


def peer_peak_flops(peer: str, size: int | None = None) -> float | None:
    """FLOP/s of the peer's own float32 matrix product on a ``size``³ product, on the
    device the peer trains on (jax, jax-floor: JAX's default device; torch: CUDA when
    available), or ``None`` for a peer this function does not know."""
    n = GEMM_SIZE if size is None else size
    A_host, B_host = _gemm_operands(n)
    framework = importlib.import_module("dlcore.benchmark.peers").PEER_FRAMEWORKS.get(peer)
    if framework == "jax":
        import jax
        import jax.numpy as jnp

        A, B = jax.device_put(A_host), jax.device_put(B_host)
        matmul = jax.jit(jnp.matmul)
        last: list[Any] = [A]

        def jax_product() -> None:
            last[0] = matmul(A, B)

        return 2.0 * n**3 / _best_seconds(jax_product, lambda: last[0].block_until_ready())
    if framework == "torch":
        import torch

        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        A, B = torch.from_numpy(A_host).to(device), torch.from_numpy(B_host).to(device)
        synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        return 2.0 * n**3 / _best_seconds(lambda: torch.mm(A, B), synchronize)
    return None


# ---------------------------------------------------------------------- results
@dataclass(frozen=True)
class Measurement:
    """One case trained by one runner (a dlcore engine or a peer).

    Attributes:
        case: the case's name.
        runner: the engine's or the peer's name.
        kind: ``"engine"`` or ``"peer"``.
        widths, batch_size, steps: what was trained: ``steps`` batches per epoch.
        epoch_seconds: every timed epoch, in round order.
        peak_flops: FLOP/s of the matrix product the GEMM bound uses (the median over
            the rounds): the engine's own ``gemm``; for a peer, the numpy engine's.
        peak_source: the engine whose ``gemm`` gave ``peak_flops``.
        bound_step_seconds: the GEMM bound of one step,
            ``6 × batch_size × weights / peak_flops``.
        own_peak_flops: a peer's own matrix product's FLOP/s (median), when measured.
        warmup_loss: the warm-up epoch's mean loss (the same start and data for every
            runner, so these should be close).
        loss: the last timed epoch's mean loss.
    """

    case: str
    runner: str
    kind: str
    widths: tuple[int, ...]
    batch_size: int
    steps: int
    epoch_seconds: tuple[float, ...]
    peak_flops: float
    peak_source: str
    bound_step_seconds: float
    own_peak_flops: float | None = None
    warmup_loss: float = float("nan")
    loss: float = float("nan")

    @property
    def samples(self) -> int:
        """Samples per epoch."""
        return self.steps * self.batch_size

    @property
    def median_seconds(self) -> float:
        """Median epoch time."""
        return statistics.median(self.epoch_seconds)

    @property
    def min_seconds(self) -> float:
        """Fastest epoch time."""
        return min(self.epoch_seconds)

    @property
    def samples_per_second(self) -> float:
        """Throughput of the fastest epoch."""
        return self.samples / self.min_seconds

    @property
    def ms_per_step(self) -> float:
        """Milliseconds per training step of the fastest epoch."""
        return self.min_seconds / self.steps * 1e3

    @property
    def median_ms_per_step(self) -> float:
        """Milliseconds per training step of the median epoch."""
        return self.median_seconds / self.steps * 1e3

    @property
    def bound_fraction(self) -> float:
        """The GEMM bound of a step over the fastest measured step (1.0: at the bound)."""
        return self.bound_step_seconds / (self.min_seconds / self.steps)

    def to_dict(self) -> dict[str, Any]:
        """Every field and every derived number, for JSON."""
        data = asdict(self)
        for name in (
            "samples",
            "median_seconds",
            "min_seconds",
            "samples_per_second",
            "ms_per_step",
            "median_ms_per_step",
            "bound_fraction",
        ):
            data[name] = getattr(self, name)
        return data


def measurement(
    case: Case,
    runner: str,
    kind: str,
    steps: int,
    epoch_seconds: Sequence[float],
    peak_flops: float,
    peak_source: str,
    **extra: Any,
) -> Measurement:
    """A ``Measurement`` of ``case`` whose GEMM bound is computed from ``peak_flops``."""
    return Measurement(
        case=case.name,
        runner=runner,
        kind=kind,
        widths=tuple(case.widths),
        batch_size=case.batch_size,
        steps=steps,
        epoch_seconds=tuple(epoch_seconds),
        peak_flops=peak_flops,
        peak_source=peak_source,
        bound_step_seconds=case.gemm_bound_seconds(peak_flops),
        **extra,
    )


@dataclass(frozen=True)
class TargetCheck:
    """One target of one case for one dlcore engine.

    Attributes:
        case: the case's name.
        engine: the dlcore engine measured.
        target: ``"peer"`` (samples/s as a multiple of a peer's) or ``"bound"``
            (fraction of the GEMM bound).
        peer: the peer compared with, for a peer target.
        threshold: the least value that meets the target.
        value: the measured ratio or fraction (``None`` when there is nothing to compute).
        status: ``MET``, ``NOT_MET`` or ``NOT_MEASURED``.
        note: why it was not measured, else the numbers behind ``value``.
    """

    case: str
    engine: str
    target: str
    peer: str | None
    threshold: float
    value: float | None
    status: str
    note: str


def evaluate_targets(
    case: Case,
    measurements: Sequence[Measurement],
    *,
    peers_missing: Mapping[str, str] | None = None,
    unjudged: str | None = None,
) -> list[TargetCheck]:
    """The targets of ``case`` for every dlcore engine measured on it.

    A peer target compares the engine's samples/s with each peer that ``PEER_TARGETS``
    lists for the case: ratio ≥ the ratio listed for that peer. A bound target needs a
    fraction of the GEMM bound ≥ ``case.min_bound_fraction``.

    Args:
        case: the case (its thresholds).
        measurements: what was measured on the case (engines and peers).
        peers_missing: ``{peer: why it was not measured}``; a peer neither measured
            nor listed here was not asked for.
        unjudged: when set, the run does not follow the targets' protocol (a smoke run,
            fewer than ``PROTOCOL_STEPS`` steps) and every check is ``NOT_MEASURED`` with
            this reason, its value still computed.

    Returns:
        One check per engine and target; ``NOT_MEASURED`` where the peer was not measured.
    """
    missing = dict(peers_missing or {})
    mine = [m for m in measurements if m.case == case.name]
    peers = {m.runner: m for m in mine if m.kind == "peer"}
    checks = []

    def check(
        engine: str,
        target: str,
        peer: str | None,
        threshold: float,
        value: float | None,
        note: str,
    ) -> None:
        if value is None:
            status = NOT_MEASURED
        elif unjudged is not None:
            status, note = NOT_MEASURED, f"{unjudged}; {note}"
        else:
            status = MET if value >= threshold else NOT_MET
        checks.append(TargetCheck(case.name, engine, target, peer, threshold, value, status, note))

    for engine in (m for m in mine if m.kind == "engine"):
        for peer, min_ratio in PEER_TARGETS.get(case.name, {}).items():
            if peer in peers:
                theirs = peers[peer].samples_per_second
                ratio = engine.samples_per_second / theirs
                note = (
                    f"{engine.runner} {engine.samples_per_second:,.0f} vs {peer} "
                    f"{theirs:,.0f} samples/s"
                )
                check(engine.runner, "peer", peer, min_ratio, ratio, note)
            else:
                why = missing.get(peer, f"{peer} was not run (add --peers)")
                check(engine.runner, "peer", peer, min_ratio, None, why)
        if case.min_bound_fraction is not None:
            note = (
                f"bound {engine.bound_step_seconds * 1e3:.3f} ms vs {engine.ms_per_step:.3f} "
                f"ms per step at {engine.peak_flops / 1e9:,.1f} GFLOP/s"
            )
            check(
                engine.runner, "bound", None, case.min_bound_fraction, engine.bound_fraction, note
            )
    return checks


@dataclass(frozen=True)
class SweepPoint:
    """Throughput of one engine at one point of the plot's sweep.

    Attributes:
        axis: ``"batch_size"`` or ``"width"``: what the sweep varies.
        value: the batch size or the hidden width at this point.
        runner: the engine.
        widths, batch_size, steps: what was trained.
        samples_per_second: of the faster of the timed epochs.
    """

    axis: str
    value: int
    runner: str
    widths: tuple[int, ...]
    batch_size: int
    steps: int
    samples_per_second: float


@dataclass(frozen=True)
class MixedMeasurement:
    """One case trained by one runner at a mixed precision: a table of its own, no targets.

    Attributes:
        precision: the dlcore dtype policy asked for (``"mixed_float16"``, ...); the peers
            ran their own reduced precision for it (``peers.py``).
        arithmetic: what the runner actually computed in.
        measurement: the times and losses; no GEMM peak (NaN), so no bound.
    """

    precision: str
    arithmetic: Arithmetic
    measurement: Measurement

    def to_dict(self) -> dict[str, Any]:
        """The measurement's fields, then ``precision``, ``computes`` (the arithmetic's
        summary), ``layer_dtypes`` and ``fallback``, for JSON."""
        return {
            **self.measurement.to_dict(),
            "precision": self.precision,
            "computes": self.arithmetic.summary,
            "layer_dtypes": self.arithmetic.layer_dtypes,
            "fallback": self.arithmetic.fallback,
        }


@dataclass
class BenchmarkRun:
    """Everything one run measured.

    Attributes:
        settings: how it was run (engines, cases, peers, repeats, steps, smoke, seed,
            GEMM size, dtype; ``mixed`` with the mixed precisions when any was asked for).
        machine: ``machine_info()``.
        engines: ``{engine timed: its device}``.
        skipped: ``{engine or peer: why it was not measured}``.
        measurements: one per case and runner, in float32.
        peaks: ``{case: {engine or "<peer> (own matmul)": [FLOP/s per round]}}``.
        checks: every target of every case measured in float32.
        sweep: the plot's sweep, when asked for.
        mixed: one per mixed precision, case and runner.
    """

    settings: dict[str, Any]
    machine: dict[str, Any]
    engines: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    measurements: list[Measurement] = field(default_factory=list)
    peaks: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    checks: list[TargetCheck] = field(default_factory=list)
    sweep: list[SweepPoint] = field(default_factory=list)
    mixed: list[MixedMeasurement] = field(default_factory=list)

    @property
    def all_met(self) -> bool:
        """Whether no measured target was missed (unmeasured ones do not count)."""
        return not any(check.status == NOT_MET for check in self.checks)


# ---------------------------------------------------------------------- machine
def machine_info(peer_versions: Mapping[str, str | None] | None = None) -> dict[str, Any]:
    """The machine class (CPU and loaded BLAS libraries, ``machine.describe()``), platform,
    CPU count, Python, numpy and its BLAS, dlcore, and the peers' versions."""
    blas: dict[str, Any] | None = None
    try:
        config = np.show_config(mode="dicts")
        found = config["Build Dependencies"]["blas"]
        blas = {"name": found.get("name"), "version": found.get("version")}
    except Exception:  # show_config's layout is numpy's own; the report goes on without it
        blas = None
    if blas is not None:
        blas["kernels"] = _blas_kernels()
        # a machine may pin OpenBLAS's kernels (e.g. to Haswell's AVX2 on an AVX-512 CPU)
        blas["environment"] = {
            key: os.environ[key]
            for key in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
            if key in os.environ
        }
    from dlcore.backends import cpu_jit
    from dlcore.benchmark import machine

    return {
        # the machine class (machine.describe): "cpu" (model, vendor, GEMM flags, cores,
        # label) and "blas_libraries" (each loaded BLAS, its kernels and threads)
        **machine.describe(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": blas,
        "dlcore": dlcore.__version__,
        # whether the numpy engine runs its Numba-compiled training step and optimizers
        "numpy_engine_jit": {
            "optimizers": cpu_jit.available(),
            "dense_stack": cpu_jit.stack_available(),
        },
        "peers": dict(peer_versions) if peer_versions is not None else None,
    }


def _blas_kernels() -> str | None:
    """The kernel family NumPy's OpenBLAS runs (``Haswell``, ``SkylakeX``, ...), read with
    threadpoolctl when it is installed (it comes with scikit-learn), else ``None``."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    for library in threadpool_info():
        if library.get("internal_api") == "openblas" and "numpy" in library.get("filepath", ""):
            return library.get("architecture")
    return None


# ---------------------------------------------------------------------- measuring
def _rotated(items: Sequence[Any], by: int) -> list[Any]:
    if not items:
        return []
    by %= len(items)
    return list(items[by:]) + list(items[:by])


def measure_case(
    case: Case,
    engines: Sequence[str],
    peers: Sequence[str] = (),
    *,
    steps: int,
    repeats: int,
    seed: int = 0,
    gemm_size: int | None = None,
    isolated: bool = False,
    say: Say = _say_to_stderr,
) -> tuple[list[Measurement], dict[str, list[float]], dict[str, str]]:
    """Train ``case`` on every engine and peer, interleaved, per the module's protocol.

    Args:
        case: the case to train.
        engines: dlcore engines that can run here.
        peers: installed peers (names from ``peers.PEERS``).
        steps: batches per epoch.
        repeats: timed rounds.
        seed: seeds the data, the initial weights and the shuffling.
        gemm_size: the peak's product size (default ``GEMM_SIZE``).
        isolated: run every trainer, and its matrix product's peak, in a process of its
            own (``workers.ProcessTrainer``); else all in this process.
        say: where progress lines go.

    Returns:
        ``(measurements, {engine or "<peer> (own matmul)": peak FLOP/s per round},
        {peer: why it could not be measured})``.
    """
    trainers, failed = _build_trainers(case, engines, peers, steps, seed, isolated, FLOAT32, say)
    try:
        return _measure_trainers(
            case, engines, peers, trainers, failed, steps, repeats, seed, gemm_size, say
        )
    finally:
        _close(trainers)


def measure_mixed_case(
    case: Case,
    engines: Sequence[str],
    peers: Sequence[str] = (),
    *,
    precision: str,
    steps: int,
    repeats: int,
    seed: int = 0,
    isolated: bool = False,
    say: Say = _say_to_stderr,
) -> tuple[list[MixedMeasurement], dict[str, str]]:
    """Train ``case`` at the mixed ``precision`` on every engine and peer, interleaved, as
    ``measure_case`` does but without the GEMM peaks, and read what each one computed in.

    Returns:
        ``(measurements, {peer: why it could not be measured})``.
    """

    def tagged(text: str) -> None:
        say(f"[{precision}] {text}")

    trainers, failed = _build_trainers(
        case, engines, peers, steps, seed, isolated, precision, tagged
    )
    try:
        found, _, failed = _measure_trainers(
            case,
            engines,
            peers,
            trainers,
            failed,
            steps,
            repeats,
            seed,
            None,
            tagged,
            with_peaks=False,
        )
        computed = {trainer.name: trainer_arithmetic(trainer) for _, trainer in trainers}
    finally:
        _close(trainers)
    return [MixedMeasurement(precision, computed[m.runner], m) for m in found], failed


def trainer_arithmetic(trainer: Trainer) -> Arithmetic:
    """What ``trainer`` computed in: its own ``arithmetic()`` (an ``Arithmetic``, or a line
    of text for a peer), or ``"not reported"`` for a trainer without one."""
    report = getattr(trainer, "arithmetic", None)
    found = report() if report is not None else "not reported"
    return found if isinstance(found, Arithmetic) else Arithmetic(str(found))


def _build_trainers(
    case: Case,
    engines: Sequence[str],
    peers: Sequence[str],
    steps: int,
    seed: int,
    isolated: bool,
    precision: str,
    say: Say,
) -> tuple[list[tuple[str, Trainer]], dict[str, str]]:
    """``([(kind, trainer)], {peer: why it could not be built})`` for ``measure_case``: every
    engine and peer from the case's data and initial weights, at ``precision``."""
    trainers: list[tuple[str, Trainer]] = []
    failed: dict[str, str] = {}
    if isolated:
        from dlcore.benchmark.workers import ProcessTrainer

        for name in engines:
            worker = ProcessTrainer("engine", name, case, steps, seed, precision=precision)
            trainers.append(("engine", worker))
        for peer in peers:
            try:
                worker = ProcessTrainer("peer", peer, case, steps, seed, precision=precision)
            except RuntimeError as error:  # one broken peer must not lose the others' numbers
                failed[peer] = f"{peer} could not train {case.name}: {error}"
                say(f"  {failed[peer]}")
            else:
                trainers.append(("peer", worker))
        return trainers, failed
    x, y = case.data(steps, seed)
    weights = initial_weights(case, seed)
    for name in engines:
        trainers.append(("engine", DlcoreTrainer(name, case, x, y, weights, precision)))
    if peers:
        peers_module = importlib.import_module("dlcore.benchmark.peers")
        for peer in peers:
            try:
                trainer = peers_module.make_trainer(
                    peer, case, x, y, weights, seed, precision=precision
                )
            except Exception as error:  # one broken peer must not lose the others' numbers
                failed[peer] = f"{peer} could not train {case.name}: {error}"
                say(f"  {failed[peer]}")
            else:
                trainers.append(("peer", trainer))
    return trainers, failed


def _close(trainers: Sequence[tuple[str, Trainer]]) -> None:
    """Stop the trainers that run in processes of their own."""
    for _, trainer in trainers:
        close = getattr(trainer, "close", None)
        if close is not None:
            close()


def _measure_trainers(
    case: Case,
    engines: Sequence[str],
    peers: Sequence[str],
    trainers: list[tuple[str, Trainer]],
    failed: dict[str, str],
    steps: int,
    repeats: int,
    seed: int,
    gemm_size: int | None,
    say: Say,
    *,
    with_peaks: bool = True,
) -> tuple[list[Measurement], dict[str, list[float]], dict[str, str]]:
    """The warm-up, the timed rounds and (``with_peaks``) the peaks of ``measure_case``;
    without peaks every measurement's peak is NaN, and so is its bound."""
    # the bound of every peer is taken at the numpy engine's peak
    peak_engines = list(dict.fromkeys([*engines, *(["numpy"] if peers else [])]))
    if not with_peaks:
        peak_engines = []

    dlcore.set_random_seed(seed)
    say(f"{case.name}: warm-up epoch on {', '.join(t.name for _, t in trainers)}")
    warmup_loss = {}
    for kind, trainer in list(trainers):
        try:
            warmup_loss[trainer.name] = trainer.epoch()
        except Exception as error:
            if kind == "engine":
                raise
            failed[trainer.name] = f"{trainer.name} could not train {case.name}: {error}"
            say(f"  {failed[trainer.name]}")
            trainers.remove((kind, trainer))
            close = getattr(trainer, "close", None)
            if close is not None:
                close()
    peer_names = [trainer.name for kind, trainer in trainers if kind == "peer"]
    seconds: dict[str, list[float]] = {trainer.name: [] for _, trainer in trainers}
    losses: dict[str, float] = {}
    peaks: dict[str, list[float]] = {name: [] for name in peak_engines}
    if with_peaks:
        peaks.update({f"{peer} (own matmul)": [] for peer in peer_names})
    for round_index in range(repeats):
        say(f"{case.name}: round {round_index + 1} of {repeats}")
        for _, trainer in _rotated(trainers, round_index):
            time.sleep(SETTLE_SECONDS)
            started = time.perf_counter()
            losses[trainer.name] = trainer.epoch()
            elapsed = time.perf_counter() - started
            # a trainer in its own process times the epoch there, without the messaging
            seconds[trainer.name].append(getattr(trainer, "last_seconds", elapsed))
        by_name = {trainer.name: trainer for _, trainer in trainers}
        for name in peak_engines:
            time.sleep(SETTLE_SECONDS)
            worker: Any = by_name.get(name)
            if hasattr(worker, "peak_flops"):
                peaks[name].append(worker.peak_flops(gemm_size or GEMM_SIZE))
            else:
                peaks[name].append(gemm_peak_flops(backends.get(name), gemm_size))
        for peer in peer_names if with_peaks else ():
            time.sleep(SETTLE_SECONDS)
            worker = by_name[peer]
            if hasattr(worker, "peak_flops"):
                own = worker.peak_flops(gemm_size or GEMM_SIZE)
            else:
                own = peer_peak_flops(peer, gemm_size)
            if own is not None:
                peaks[f"{peer} (own matmul)"].append(own)
    peaks = {name: samples for name, samples in peaks.items() if samples}

    results = []
    for kind, trainer in trainers:
        source = trainer.name if kind == "engine" else "numpy"
        if not with_peaks:
            source = "none"
        own_peaks = peaks.get(f"{trainer.name} (own matmul)")
        results.append(
            measurement(
                case,
                trainer.name,
                kind,
                steps,
                seconds[trainer.name],
                max(peaks[source]) if with_peaks else math.nan,
                source,
                own_peak_flops=max(own_peaks) if own_peaks else None,
                warmup_loss=warmup_loss[trainer.name],
                loss=losses.get(trainer.name, float("nan")),
            )
        )
    return results, peaks, failed


def installed_peers() -> tuple[list[str], dict[str, str], dict[str, str | None]]:
    """``(peers that import, {peer: why not}, {peer: version or None})``; imports them."""
    peers_module = importlib.import_module("dlcore.benchmark.peers")
    versions = peers_module.peer_versions()
    hint = getattr(peers_module, "INSTALL_HINT", 'pip install "dlcore[peers]"')
    ready = [peer for peer in peers_module.PEERS if versions.get(peer)]
    missing = {
        peer: f"{peer} is not installed ({hint})"
        for peer in peers_module.PEERS
        if not versions.get(peer)
    }
    return ready, missing, versions


def run(
    engines: Sequence[str] | None = None,
    cases: Sequence[str] | None = None,
    *,
    peers: bool = False,
    repeats: int = DEFAULT_REPEATS,
    steps: int | None = None,
    smoke: bool = False,
    seed: int = 0,
    sweep: bool = False,
    isolated: bool | None = None,
    precisions: Sequence[str] | None = None,
    say: Say = _say_to_stderr,
) -> BenchmarkRun:
    """Measure ``cases`` on ``engines`` (and the installed peers) and check the targets.

    Args:
        engines: engine names (default: every one that runs here, see ``select_engines``).
        cases: case names (default: every case in ``cases.CASES``).
        peers: also train every case on the installed peers (PyTorch, JAX).
        repeats: timed rounds per case (at least 1).
        steps: batches per epoch (default ``PROTOCOL_STEPS``, or ``SMOKE_STEPS`` with
            ``smoke``); targets are judged only on runs of at least ``PROTOCOL_STEPS``.
        smoke: divide widths, batch sizes and the GEMM size by ``SMOKE_FACTOR``: a check
            that everything runs, in about a second; its targets are not judged.
        seed: seeds the data, the initial weights and the shuffling.
        sweep: also measure the plot's sweep (``sweep_throughput``).
        isolated: run every trainer in a process of its own (``workers``); by default
            yes, except for ``smoke`` runs, which only check that everything runs.
        precisions: what to train at, from ``cases.PRECISIONS`` (default: float32 only).
            float32 gives the measurements, peaks and targets; each mixed precision
            trains every case once more into ``BenchmarkRun.mixed``, without peaks or
            targets (``measure_mixed_case``).
        say: where progress lines go (default: standard error).

    Raises:
        ValueError: unknown engine, case or precision names, ``repeats``/``steps`` below
            1 or a negative seed, before anything is measured.
        RuntimeError: none of the named engines can be timed here (the message says why).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, received {repeats}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, received {seed}")
    steps = (SMOKE_STEPS if smoke else PROTOCOL_STEPS) if steps is None else steps
    if steps < 1:
        raise ValueError(f"steps must be at least 1, received {steps}")
    selected = select_cases(cases)
    chosen = select_precisions(precisions)
    timed, skipped = select_engines(engines)
    if not timed:
        reasons = "; ".join(f"{name}: {why}" for name, why in skipped.items())
        raise RuntimeError(f"none of the engines can be timed here ({reasons})")
    gemm_size = max(2, GEMM_SIZE // SMOKE_FACTOR) if smoke else GEMM_SIZE
    if isolated is None:
        isolated = not smoke
    ready: list[str] = []
    missing: dict[str, str] = {}
    versions: dict[str, str | None] | None = None
    if peers:
        ready, missing, versions = installed_peers()
        skipped.update(missing)
    unjudged = None
    if smoke:
        unjudged = f"smoke run (sizes divided by {SMOKE_FACTOR})"
    elif steps < PROTOCOL_STEPS:
        unjudged = f"--steps {steps} < {PROTOCOL_STEPS}"

    settings: dict[str, Any] = {
        "engines": timed,
        "cases": [case.name for case in selected],
        "peers": ready,
        "repeats": repeats,
        "steps": steps,
        "smoke": smoke,
        "seed": seed,
        "gemm_size": gemm_size,
        "dtype": FLOAT32 if FLOAT32 in chosen else None,
        "isolated": isolated,
    }
    mixed = [precision for precision in chosen if precision != FLOAT32]
    if mixed:
        settings["mixed"] = {"precisions": mixed, "matmul_precision": MIXED_MATMUL_PRECISION}
    result = BenchmarkRun(
        settings=settings,
        machine=machine_info(versions),
        engines={name: backends.get(name).device for name in timed},
        skipped=skipped,
    )
    for case in selected:
        scaled = case.scaled(SMOKE_FACTOR) if smoke else case
        if FLOAT32 in chosen:
            found, peaks, failed = measure_case(
                scaled,
                timed,
                ready,
                steps=steps,
                repeats=repeats,
                seed=seed,
                gemm_size=gemm_size,
                isolated=isolated,
                say=say,
            )
            result.measurements.extend(found)
            result.peaks[case.name] = peaks
            result.skipped.update(failed)
            result.checks.extend(
                evaluate_targets(
                    scaled, found, peers_missing={**missing, **failed}, unjudged=unjudged
                )
            )
        for precision in mixed:
            found_mixed, failed = measure_mixed_case(
                scaled,
                timed,
                ready,
                precision=precision,
                steps=steps,
                repeats=repeats,
                seed=seed,
                isolated=isolated,
                say=say,
            )
            result.mixed.extend(found_mixed)
            result.skipped.update({f"{peer} ({precision})": why for peer, why in failed.items()})
    if sweep:
        result.sweep = sweep_throughput(timed, smoke=smoke, seed=seed, say=say)
    return result


def sweep_points(smoke: bool = False) -> list[tuple[str, int, Case]]:
    """``(axis, value, case)`` of every point of the plot's sweep, scaled for ``smoke``."""
    points = [
        ("batch_size", batch, Case(f"b{batch}", SWEEP_BATCH_WIDTHS, batch))
        for batch in SWEEP_BATCH_SIZES
    ] + [
        ("width", width, Case(f"w{width}", (784, width, width, 10), SWEEP_WIDTH_BATCH))
        for width in SWEEP_WIDTHS
    ]
    if not smoke:
        return points
    scaled_points = []
    for axis, _, case in points:
        small = case.scaled(SMOKE_FACTOR)
        value = small.batch_size if axis == "batch_size" else small.widths[1]
        scaled_points.append((axis, value, small))
    return scaled_points


def sweep_throughput(
    engines: Sequence[str], *, smoke: bool = False, seed: int = 0, say: Say = _say_to_stderr
) -> list[SweepPoint]:
    """Samples/s of every engine at every point of ``sweep_points``: per point, every
    engine trains a warm-up epoch and two timed epochs of ``SWEEP_STEPS`` batches
    (``SMOKE_STEPS`` with ``smoke``), interleaved; the faster epoch counts."""
    steps = SMOKE_STEPS if smoke else SWEEP_STEPS
    found = []
    for axis, value, case in sweep_points(smoke):
        say(f"sweep: {axis} {value}")
        x, y = case.data(steps, seed)
        weights = initial_weights(case, seed)
        trainers = [DlcoreTrainer(name, case, x, y, weights) for name in engines]
        for trainer in trainers:
            trainer.epoch()
        best = {trainer.name: float("inf") for trainer in trainers}
        for round_index in range(2):
            for trainer in _rotated(trainers, round_index):
                started = time.perf_counter()
                trainer.epoch()
                best[trainer.name] = min(best[trainer.name], time.perf_counter() - started)
        for name, seconds in best.items():
            samples = steps * case.batch_size
            found.append(
                SweepPoint(
                    axis,
                    value,
                    name,
                    tuple(case.widths),
                    case.batch_size,
                    steps,
                    samples / seconds,
                )
            )
    return found
