"""The tiled gemm and dense-forward kernels against NumPy, in the CUDA simulator on a CPU.

Every launch path is forced and checked: the 128 x 128 float32 tile, the 64 x 64 tile,
the 32 x 32 tile, and K split over gridDim.z on the 64 x 64 and 32 x 32 tiles (with the
sum of the partials), in the four transpose modes, on shapes that cross the tile edges
(1, 3, 17, 33, 65, 129). A path is forced by the SM count the plan sees and, for
split-K, a short minimum K range, so that the shapes stay small: the simulator runs
every thread as an OS thread. Results are compared with a float64 NumPy product within
one ulp of ``|op(A)| @ |op(B)|`` per rounding on the way to each output (``fma_atol``).

Float16 operands are multiplied in float32 and the result rounded to float16 once: they
are checked against the float64 product of the float16 values within that float32
tolerance plus half a float16 ulp of the result (``_output_atol``), on every path
and mode; overflowing results must be infinite, and accumulation must be float32.
"""

from __future__ import annotations

import numpy as np
import pytest
from dlcore.backends import xp_activations
from dlcore.kernels import gemm
from half_rounding import half_atol
from numba import cuda

MODES = [(False, False), (False, True), (True, False), (True, True)]
MODE_IDS = ["NN", "NT", "TN", "TT"]
F16, F32, F64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)
H100_SMS = 132


def _output_atol(fma_atol, terms, expected, dtype, ulps: int) -> np.ndarray:
    """Elementwise tolerance of an output of ``dtype`` against its float64 reference.

    Float32 and float64: ``ulps`` roundings of the largest term (``fma_atol``). Float16 is
    computed in float32 and rounded once when stored: the float32 bound ``a`` of the same
    computation, plus the store's rounding, half a float16 ulp of the float32 value, which
    is within ``a`` of the reference ``r``: ``a + eps16 / 2 * (|r| + a)`` (``half_atol``,
    which adds half the subnormal spacing for results below float16's normal range). The
    first term is negligible unless ``r`` is small against the terms that cancelled into
    it; a float16 accumulation, which rounds at every step, is off by far more.
    """
    if dtype != F16:
        return fma_atol(terms, dtype=dtype, ulps=ulps)
    return half_atol(expected, float32_atol=fma_atol(terms, dtype=np.float32, ulps=ulps))


def _case_id(value) -> str | None:
    """Test ids that name dtypes (``float16``) and shapes (``65x33x17``)."""
    if isinstance(value, np.dtype):
        return value.name
    if isinstance(value, tuple):
        return "x".join(map(str, value))
    return None


def _operands(rng: np.random.Generator, M: int, N: int, K: int, trans_a: bool, trans_b: bool):
    """A and B as stored for the mode, in float64."""
    A = rng.standard_normal((K, M) if trans_a else (M, K))
    B = rng.standard_normal((N, K) if trans_b else (K, N))
    return A, B


def _force_path(monkeypatch, path: str, M: int, N: int, K: int, dtype) -> gemm.Plan:
    """Make ``plan_for`` choose ``path`` for this product (and check that it does).

    ``large``: one SM, so the 128 x 128 tile fills a wave. ``medium``: as many SMs as the
    64 x 64 tile has blocks. ``small``: too many SMs for any tile and a K too short to
    split. ``split``: too many SMs, and K ranges of 32 or more (at least 2 of them).
    """
    medium = gemm.TILES[np.dtype(dtype)]
    sms = {"large": 1, "medium": gemm._blocks(medium, M, N)}.get(path, 10**6)
    monkeypatch.setattr(gemm, "sm_count", lambda: sms)
    if path == "split":
        monkeypatch.setattr(gemm, "SPLIT_MIN_K", 32)
    plan = gemm.plan_for(M, N, K, dtype)
    expected = {"large": gemm.LARGE_TILE, "medium": medium, "small": gemm.SMALL_TILE}
    if path == "split":
        assert plan.splits > 1, plan
    else:
        assert (plan.tile, plan.splits) == (expected[path], 1), plan
    return plan


def _assert_within(actual: np.ndarray, expected: np.ndarray, atol: np.ndarray) -> None:
    """Every element within its own absolute tolerance; the worst ones named if not."""
    error = np.abs(actual.astype(np.float64) - expected)
    atol = np.broadcast_to(atol, error.shape)
    bad = ~(error <= atol)  # NaN (an element never written) is bad too
    assert not bad.any(), (
        f"{bad.sum()} of {bad.size} elements off, e.g. at {np.argwhere(bad)[:3].tolist()}: "
        f"{actual[bad][:3]} vs {expected[bad][:3]} (tolerance {atol[bad][:3]})"
    )


def _run_gemm(A: np.ndarray, B: np.ndarray, M: int, N: int, dtype, trans_a: bool, trans_b: bool):
    C = cuda.to_device(np.full((M, N), np.nan, dtype))  # every element must be overwritten
    gemm.gemm(
        cuda.to_device(A.astype(dtype)),
        cuda.to_device(B.astype(dtype)),
        C,
        trans_a=trans_a,
        trans_b=trans_b,
    )
    return C.copy_to_host()


def _check_gemm(rng, fma_atol, M, N, K, dtype, trans_a, trans_b, plan):
    """Run gemm and compare with the float64 product of the operands rounded to ``dtype``."""
    A, B = _operands(rng, M, N, K, trans_a, trans_b)
    A, B = A.astype(dtype).astype(np.float64), B.astype(dtype).astype(np.float64)
    opA, opB = (A.T if trans_a else A), (B.T if trans_b else B)
    C = _run_gemm(A, B, M, N, dtype, trans_a, trans_b)
    assert C.dtype == dtype
    # K roundings of the running sums, and one per partial added when K is split.
    expected = opA @ opB
    atol = _output_atol(fma_atol, np.abs(opA) @ np.abs(opB), expected, dtype, K + plan.splits)
    _assert_within(C, expected, atol)
    return C


PATH_SHAPES = {
    "large": [(129, 65, 17), (33, 129, 3)],
    "medium": [(65, 129, 17), (129, 33, 1)],
    "small": [(3, 17, 33), (65, 33, 65)],
    "split": [(65, 33, 129), (17, 3, 65)],  # the 64 x 64 tile, then the 32 x 32 one
}
PATH_CASES = [
    pytest.param(dtype, path, shape, id=f"{dtype.name}-{path}-{'x'.join(map(str, shape))}")
    for dtype in (F32, F64, F16)
    for path, shapes in PATH_SHAPES.items()
    if not (path == "large" and dtype == F64)
    for shape in shapes
]


@pytest.mark.parametrize(("trans_a", "trans_b"), MODES, ids=MODE_IDS)
@pytest.mark.parametrize(("dtype", "path", "shape"), PATH_CASES)
def test_every_tile_and_split_matches_a_float64_reference(
    rng, fma_atol, monkeypatch, dtype, path, shape, trans_a, trans_b
):
    M, N, K = shape
    plan = _force_path(monkeypatch, path, M, N, K, dtype)
    _check_gemm(rng, fma_atol, M, N, K, dtype, trans_a, trans_b, plan)


@pytest.mark.parametrize(("trans_a", "trans_b"), MODES, ids=MODE_IDS)
@pytest.mark.parametrize(("M", "N", "K"), [(1, 1, 1), (3, 17, 1), (65, 33, 17)])
@pytest.mark.parametrize("dtype", [F32, F64, F16], ids=_case_id)
def test_gemm_on_the_default_plan_matches_numpy(rng, fma_atol, M, N, K, dtype, trans_a, trans_b):
    plan = gemm.plan_for(M, N, K, dtype)
    _check_gemm(rng, fma_atol, M, N, K, dtype, trans_a, trans_b, plan)


@pytest.mark.parametrize("dtype", [F32, F16], ids=_case_id)
@pytest.mark.parametrize("path", ["large", "medium", "small"])
def test_a_product_over_k_0_writes_zeros(monkeypatch, path, dtype):
    M, N = 65, 129
    _force_path(monkeypatch, path, M, N, 0, dtype)
    A, B = np.zeros((M, 0), dtype), np.zeros((0, N), dtype)
    np.testing.assert_array_equal(_run_gemm(A, B, M, N, dtype, False, False), np.zeros((M, N)))


@pytest.mark.parametrize(
    ("trans_a", "trans_b", "dtype"),
    [(True, False, F32), (False, True, F32), (False, False, F16)],
    ids=["TN", "NT", "NN-float16"],
)
def test_split_k_results_are_bit_identical_run_to_run(rng, monkeypatch, trans_a, trans_b, dtype):
    M, N, K = 17, 65, 129  # thin: the 32 x 32 tile, 3 blocks x 4 K ranges
    plan = _force_path(monkeypatch, "split", M, N, K, dtype)
    assert plan.splits >= 3
    A, B = _operands(rng, M, N, K, trans_a, trans_b)
    first = _run_gemm(A, B, M, N, dtype, trans_a, trans_b)
    second = _run_gemm(A, B, M, N, dtype, trans_a, trans_b)
    np.testing.assert_array_equal(first, second)


def test_plan_takes_the_largest_tile_with_a_wave_of_blocks():
    large, medium = gemm.LARGE_TILE, gemm.TILES[F32]
    assert gemm.plan_for(4096, 4096, 4096, F32, H100_SMS) == (large, 1, 4096)
    assert gemm.plan_for(1024, 4096, 4096, F32, H100_SMS).tile == large  # 256 blocks
    assert gemm.plan_for(784, 1024, 512, F32, H100_SMS).tile == medium  # 208 of 64 x 64
    assert gemm.plan_for(4096, 4096, 4096, F64, H100_SMS).tile == gemm.TILES[F64]
    assert gemm.tile_for(17, 65, F32) == gemm.SMALL_TILE  # thin
    assert gemm.tile_for(65, 65, F32, K=100, sms=H100_SMS) == gemm.SMALL_TILE  # K too short


@pytest.mark.parametrize(
    ("M", "N", "K", "tile"),
    [(784, 50, 8192, "medium"), (33, 65, 4099, "medium"), (10, 4096, 4099, "small")],
)
def test_plan_splits_long_k_of_products_with_few_blocks(M, N, K, tile):
    plan = gemm.plan_for(M, N, K, F32, H100_SMS)
    assert plan.tile == (gemm.TILES[F32] if tile == "medium" else gemm.SMALL_TILE)
    blocks = gemm._blocks(plan.tile, M, N)
    assert blocks < H100_SMS and plan.splits > 1
    assert blocks * (plan.splits - 1) < H100_SMS  # no more splits than fill the SMs
    assert plan.chunk % plan.tile.bk == 0 and plan.chunk >= gemm.SPLIT_MIN_K
    assert (plan.splits - 1) * plan.chunk < K <= plan.splits * plan.chunk  # none empty


def test_float16_is_planned_as_float32(rng):
    # Its slabs and accumulators are float32: the same tiles, registers and shared memory.
    for M, N, K in [(4096, 4096, 4096), (784, 1024, 512), (784, 50, 8192), (17, 65, 3)]:
        for sms in (1, H100_SMS, 10**6):
            assert gemm.plan_for(M, N, K, F16, sms) == gemm.plan_for(M, N, K, F32, sms)


def test_float16_tile_costs_are_float32_shared_memory_over_half_the_bytes():
    for tile in (gemm.LARGE_TILE, gemm.TILES[F16], gemm.SMALL_TILE):
        half, single = gemm.tile_costs(F16, tile), gemm.tile_costs(F32, tile)
        assert half["shared_bytes_activation"] == single["shared_bytes_activation"]
        assert half["flops_per_byte"] == 2 * single["flops_per_byte"]
    assert gemm.tile_costs(F16) == gemm.tile_costs(F16, gemm.LARGE_TILE)


def test_plans_never_have_an_empty_grid_or_k_range(rng):
    for M, N, K in rng.integers(1, 5000, size=(300, 3)):
        for dtype in (F32, F64, F16):
            plan = gemm.plan_for(int(M), int(N), int(K), dtype, H100_SMS)
            grid, block = gemm._launch_shape(plan, int(M), int(N))
            assert min(grid) >= 1 and min(block) >= 1
            assert (plan.splits - 1) * plan.chunk < K <= plan.splits * plan.chunk


def test_the_simulator_plans_for_an_h100():
    assert gemm.sm_count() == H100_SMS


def _run_dense(rng, dtype, shape, activation, *, bias: bool, y_is_z: bool):
    """Z, Y from the kernel and from NumPy (float64) for X (N, I) @ W (I, O) + b, and the
    magnitude ``|X| @ |W| + |b|`` of the terms entering each element."""
    N, O, I = shape
    X = rng.standard_normal((N, I)).astype(dtype)
    W = (rng.standard_normal((I, O)) / np.sqrt(I)).astype(dtype)
    b = rng.standard_normal(O).astype(dtype) if bias else None
    Z = cuda.to_device(np.full((N, O), np.nan, dtype))
    Y = Z if y_is_z else cuda.to_device(np.full((N, O), np.nan, dtype))
    gemm.dense_forward(
        cuda.to_device(X),
        cuda.to_device(W),
        None if b is None else cuda.to_device(b),
        activation,
        Z,
        Y,
    )
    Z_expected = X.astype(np.float64) @ W.astype(np.float64)
    terms = np.abs(X.astype(np.float64)) @ np.abs(W.astype(np.float64))
    if b is not None:
        Z_expected = Z_expected + b.astype(np.float64)
        terms = terms + np.abs(b.astype(np.float64))
    Y_expected = xp_activations.forward(np, activation, Z_expected)
    return Z.copy_to_host(), Y.copy_to_host(), Z_expected, Y_expected, terms


def _check_dense(Z, Y, Z_expected, Y_expected, terms, fma_atol, dtype, K, plan):
    """Z within ``K + splits + 1`` roundings of the terms entering it; Y, computed from the
    unrounded Z (float32 for float16 outputs), within twice that plus its own few ulps."""
    compute = np.float32 if dtype == F16 else dtype
    z_atol = fma_atol(terms, dtype=compute, ulps=K + plan.splits + 1)
    # The activations used here have slopes below 1.2, and round a few ulps of their own.
    y_atol = 2 * z_atol + fma_atol(Y_expected, 1.0, dtype=compute)
    if dtype == F16:
        z_atol = half_atol(Z_expected, float32_atol=z_atol)
        y_atol = half_atol(Y_expected, float32_atol=y_atol)
    _assert_within(Z, Z_expected, z_atol)
    _assert_within(Y, Y_expected, y_atol)


@pytest.mark.parametrize(
    ("dtype", "path", "shape", "activation"),
    [
        (F32, "large", (129, 65, 17), "gelu"),  # both row groups of the staged epilogue
        (F32, "large", (65, 129, 9), "tanh"),
        (F32, "medium", (65, 129, 17), "relu"),
        (F32, "split", (65, 33, 129), "sigmoid"),
        (F32, "split", (17, 3, 65), "elu"),
        (F64, "medium", (65, 33, 17), "relu"),
        (F64, "small", (3, 17, 1), "sigmoid"),
        (F64, "split", (65, 33, 65), "tanh"),
        (F16, "large", (129, 65, 17), "gelu"),
        (F16, "medium", (65, 129, 17), "swish"),
        (F16, "small", (3, 17, 33), "tanh"),
        (F16, "split", (65, 33, 129), "sigmoid"),
        (F16, "split", (17, 3, 65), "elu"),
    ],
    ids=_case_id,
)
def test_dense_forward_with_bias_and_activation(
    rng, fma_atol, monkeypatch, dtype, path, shape, activation
):
    plan = _force_path(monkeypatch, path, shape[0], shape[1], shape[2], dtype)
    found = _run_dense(rng, dtype, shape, activation, bias=True, y_is_z=False)
    _check_dense(*found, fma_atol, dtype, shape[2], plan)


@pytest.mark.parametrize("dtype", [F32, F16], ids=_case_id)
@pytest.mark.parametrize("path", ["large", "split"])
def test_dense_forward_linear_without_bias_writes_z_once(rng, fma_atol, monkeypatch, path, dtype):
    shape = (65, 33, 129)
    plan = _force_path(monkeypatch, path, *shape, dtype)
    Z, Y, Z_expected, _, terms = _run_dense(rng, dtype, shape, "linear", bias=False, y_is_z=True)
    atol = _output_atol(fma_atol, terms, Z_expected, dtype, shape[2] + plan.splits + 1)
    _assert_within(Z, Z_expected, atol)


@pytest.mark.parametrize(("dtype", "path"), [(F64, "medium"), (F32, "large")])
def test_dense_forward_loops_over_row_tiles_when_the_grid_is_capped(
    rng, fma_atol, monkeypatch, dtype, path
):
    # One block row covers all the row tiles, as a grid of more than 65535 block rows
    # would; the staged epilogue's shared tile is reused across them.
    shape = (65, 33, 9) if path == "medium" else (257, 33, 9)
    plan = _force_path(monkeypatch, path, *shape, dtype)
    monkeypatch.setattr(gemm, "MAX_ROW_BLOCKS", 1)
    found = _run_dense(rng, dtype, shape, "tanh", bias=True, y_is_z=False)
    _check_dense(*found, fma_atol, dtype, shape[2], plan)


def test_dense_forward_over_k_0_is_the_activated_bias_in_float16(rng, monkeypatch):
    N, O = 65, 33
    _force_path(monkeypatch, "medium", N, O, 0, F16)
    b = rng.standard_normal(O).astype(F16)
    Z, Y = (cuda.to_device(np.full((N, O), np.nan, F16)) for _ in range(2))
    X, W = cuda.to_device(np.zeros((N, 0), F16)), cuda.to_device(np.zeros((0, O), F16))
    gemm.dense_forward(X, W, cuda.to_device(b), "tanh", Z, Y)
    np.testing.assert_array_equal(Z.copy_to_host(), np.broadcast_to(b, (N, O)))
    expected = np.broadcast_to(np.tanh(b.astype(np.float64)), (N, O))
    _assert_within(Y.copy_to_host(), expected, half_atol(expected, float32_atol=1e-6))


def test_float16_operands_are_accumulated_in_float32():
    # 2048 + 1 rounds back to 2048 in float16 (ulp 2 there): a float16 accumulator would
    # return 2048, float32 accumulation the exact 2064 (a float16).
    A = np.array([[2048.0] + [1.0] * 16], F16)
    C = _run_gemm(A, np.ones((17, 1), F16), 1, 1, F16, False, False)
    np.testing.assert_array_equal(C, [[2064.0]])


# Float16's largest finite value is 65504; larger results round to inf. Each row: a
# product beyond it, a sum of two beyond it that cancels to 0 (only float32 arithmetic
# gets there: float16 products would be inf - inf = NaN), one in range, one beyond -65504.
OVERFLOW_A = [[256.0, 256.0], [-256.0, 256.0], [100.0, 100.0], [-256.0, -256.0]]
OVERFLOW_C = [np.inf, 0.0, 51200.0, -np.inf]


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # simulator
@pytest.mark.parametrize("path", ["small", "split"])
def test_float16_results_beyond_65504_are_infinite(monkeypatch, path):
    M, N, K = 4, 3, 64  # K of 64 lets the split path make two ranges of 32
    _force_path(monkeypatch, path, M, N, K, F16)
    A = np.zeros((M, K), F16)
    A[:, :2] = OVERFLOW_A
    C = _run_gemm(A, np.full((K, N), 256.0, F16), M, N, F16, False, False)
    np.testing.assert_array_equal(C, np.repeat(np.array(OVERFLOW_C)[:, None], N, axis=1))


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # simulator
@pytest.mark.parametrize("path", ["small", "split"])
def test_float16_dense_forward_overflow_is_infinite_in_z_and_y(monkeypatch, path):
    N, O, I = 4, 3, 64
    _force_path(monkeypatch, path, N, O, I, F16)
    X = np.zeros((N, I), F16)
    X[:, :2] = OVERFLOW_A
    b = np.array([0.0, 20000.0, 0.0], F16)  # pushes 51200 beyond 65504 in column 1
    Z, Y = (cuda.to_device(np.full((N, O), np.nan, F16)) for _ in range(2))
    W = np.full((I, O), 256.0, F16)
    gemm.dense_forward(cuda.to_device(X), cuda.to_device(W), cuda.to_device(b), "relu", Z, Y)
    # Every value here is exact in float32, so rounding the float64 sum is the reference.
    expected = (np.array(OVERFLOW_C)[:, None] + b.astype(np.float64)).astype(F16)
    assert expected[2, 1] == np.inf
    np.testing.assert_array_equal(Z.copy_to_host(), expected)
    np.testing.assert_array_equal(Y.copy_to_host(), np.maximum(expected, 0))
