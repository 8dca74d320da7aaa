"""Shared-memory tiled matrix product, with the dense layer's bias and activation fused in.

Each block computes one ``BM x BN`` tile of ``C = op(A) @ op(B)``. It walks K in
slabs ``BK`` wide: the threads copy an ``BM x BK`` slab of ``op(A)`` and a
``BK x BN`` slab of ``op(B)`` into shared memory, then each thread multiplies
them into its own ``TM x TN`` register tile of accumulators. While a slab is
being multiplied, the next one is already on its way from global memory into
registers.

A thread owns groups of ``V`` neighbouring rows and columns of the tile, ``V`` the
elements in 16 bytes (4 floats, 2 doubles) or the register tile's side if smaller:
thread ``(tx, ty)`` of the 128 x 128 tile owns rows ``4 ty .. 4 ty + 3`` and
``64 + 4 ty .. 64 + 4 ty + 3``, and the same columns with ``tx``. Per step of k it
reads its fragments of both slabs (``As[k, 4 ty : 4 ty + 4]``, ...) as whole
16-byte vectors: the shared arrays are declared 16-byte aligned and their rows
padded by ``V`` elements, so NVVM can prove the alignment and emits
``ld.shared.v4.f32`` (``ld.shared.v2.f64``). The main loop of the 128 x 128 tile
does 64 FMAs per 4 shared-memory loads (16:1; 8:1 on the 64 x 64 and 32 x 32 float32
tiles, 4:1 in float64), where the strided 4 x 4 ownership before it did 16 FMAs per
8 scalar loads (2:1). The vector loads are free of bank conflicts: a quarter-warp
reads at most 8 distinct 16-byte words, neighbouring ones, or one broadcast word.

A transposed operand is read where it lies; there is no transposed copy. The
copy into shared memory is coalesced in every mode: consecutive threads read
consecutive addresses of the operand as stored, and the copy transposes on its
way into shared memory where needed. ``As`` holds the A slab transposed
(``As[k, m]``) so that the inner product loop reads rows of both slabs. A
transposing copy (A as stored ``(M, K)``, B as stored ``(N, K)``) has a warp write
8 values of k for 4 values of m; with rows ``BM + V`` elements apart, 4 more than a
multiple of 32 banks for floats, those 32 words fall in 32 different banks (in
doubles, each half-warp's 16 words in 16 different bank pairs): no conflicts.

Edges are handled inside the kernel: out-of-range elements of a slab are zero
in shared memory and out-of-range outputs are not stored, so any M, N, K >= 1
works and the caller never pads; K = 0 writes zeros (plus the bias, activated).

The epilogue adds the bias and applies the activation before anything is
stored: ``Z = X @ W + b`` and ``Y = act(Z)`` are written in one pass, with no
intermediate array. Plain gemm and "linear" store straight from registers: each
store instruction of a warp then covers 16-byte-strided words, 4 instructions
completing every 32-byte sector, once per tile against ``K / BK`` slab steps, which
makes it negligible beside the main loop for any K worth a gemm. Any other
activation goes through a shared-memory staging tile, one group of ``V`` rows per
thread (64 rows of the 128 x 128 tile) at a time, so that the accumulators never
leave registers and the staging fits the 48 KB of static shared memory: threads
write it as 16-byte vectors (8 neighbouring vectors per quarter-warp, no conflicts)
and read it back a row of 32 neighbouring elements per warp, coalesced into Z and Y.

**Float16** is a storage format with float32 arithmetic (``common.compute_dtype``). A
float16 product loads its operands and bias as float16 and converts each element to
float32 as it arrives in registers, so the shared slabs, the accumulators, the staging
tile, the constants and the activation (``scalar_functions(float32)``) are all float32
and the main loop is the float32 one, with the same vector loads and FMAs per load. The
global loads are scalar 2-byte loads with the float32 layout, so a warp still reads
consecutive addresses (64 bytes where float32 reads 128). Only the stores round: ``Z``
and ``Y`` are each rounded to float16 once, ``Y`` from the float32 ``Z``, and results
beyond float16's range (+-65504) become +-inf. Split-K partials stay float32 and their
sum rounds. Float16 takes float32's tiles and plan (``TILES``, ``LARGE_TILE_DTYPES``);
its registers and shared memory are float32's, its flops per byte loaded twice theirs.

**Which tile, and split-K** (``plan_for``). The largest tile whose grid has at least
one block per SM (``sm_count()``: the device's ``MULTIPROCESSOR_COUNT``, cached per
device; 132, an H100 / H200 SXM, in the simulator) is taken: 128 x 128 (float32
and float16 only), 64 x 64, 32 x 32 (the only one for products with at most 32 rows or
columns). When none fills the SMs and K is at least ``2 * SPLIT_MIN_K``, K is split into
``gridDim.z`` ranges of a multiple of ``BK`` on the 64 x 64 tile (32 x 32 for thin
products), as many as bring the grid to one block per SM (at most ``MAX_SPLITS``):
each writes its partial product into a reused scratch buffer (``common.scratch``),
and a second, elementwise pass sums the partials in a fixed order (z = 0, 1, ...),
adds the bias and applies the activation. No atomics: a result is the same bit for
bit on every run. dW of 784 x 50 over a batch of 8192 runs as 13 blocks x 11 ranges
of 752; 33 x 65 over K = 4099 as 2 blocks x 31 ranges of 136. A shorter K takes the
tile with the most blocks, unsplit.

Per block tile, from ``ptxas -v`` (registers per thread over the four transpose
modes of gemm and its split-K partial product, and dense_forward over every
activation; static shared memory per block, without and with the activation's
staging tile; every variant has a 0-byte stack frame and 0 bytes of spills), the
arithmetic intensity, ``2 * BM * BN / ((BM + BN) * itemsize)`` flops per byte loaded
from global memory (``tile_costs``), and the main loop's FMAs per shared-memory load
instruction. An H100 SXM is compute-bound from about 20 (FP32, 67 TFLOP/s over
3.35 TB/s) and 10 (FP64, 34 TFLOP/s) flops per DRAM byte; blocks of one row of the
grid read the same rows of A, so much of each block's traffic is served by L2.

    dtype    BM x BN x BK   TM x TN  threads  regs sm_80  regs sm_90  smem B (act)    flops/B FMA:ld
    float32  128 x 128 x 8  8 x 8    256      118-139     111-143     8,448 (42,240)  32      16
    float32  64 x 64 x 8    4 x 4    256      56-79       56-71       4,352 (21,760)  16      8
    float32  32 x 32 x 8    4 x 4    64       72-106      62-87       2,304 (6,912)   8       8
    float16  128 x 128 x 8  8 x 8    256      118-140     111-145     8,448 (42,240)  64      16
    float16  64 x 64 x 8    4 x 4    256      56-79       56-72       4,352 (21,760)  32      8
    float16  32 x 32 x 8    4 x 4    64       77-106      62-92       2,304 (6,912)   16      8
    float64  64 x 64 x 8    4 x 4    256      94-126      78-126      8,448 (25,344)  8       4
    float64  32 x 32 x 8    4 x 4    64       108-136     98-136      4,352 (8,704)   4       4

The sum of split-K partials takes 32-46 registers and no shared memory.

Blocks per SM on an H100 (64K registers, allocated 8 per thread at a time; 228 KB
shared memory): the 128 x 128 tile 2 (16 warps; 1 for the NT and TT modes above 128
registers), the 64 x 64 float32 and float16 tile 3-4, float64 2-3; shared memory would
allow more in every variant.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
from numba import config as numba_config
from numba import cuda, types

from .activations import ELEMENTWISE, scalar_functions
from .common import (
    FLOAT_DTYPES,
    HALF_DTYPES,
    PtxVariant,
    array,
    compute_dtype,
    device_function,
    grid_for,
    launch,
    numba_type,
    scalar,
    scratch,
)


class Tile(NamedTuple):
    """One block's share of the product: a ``bm x bn`` tile of C over ``bk``-wide K-slabs."""

    bm: int  # rows of C per block
    bn: int  # columns of C per block
    bk: int  # width of the K-slab staged in shared memory per step
    tm: int  # rows of C per thread (a register tile of tm x tn accumulators)
    tn: int  # columns of C per thread


# 128 x 128 outputs per block, 8 x 8 per thread: 256 threads (8 warps). Per step of k
# a thread reads 2 + 2 four-float vectors from shared memory for 64 FMAs. Float32 and
# float16 (whose slabs and accumulators are float32) only: in float64 the 64 accumulators
# alone would take 128 registers.
LARGE_TILE = Tile(128, 128, 8, 8, 8)
LARGE_TILE_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))

TILES = {
    # 64 x 64 outputs per block, 4 x 4 per thread: 256 threads, one four-element vector
    # of each slab per step of k for 16 FMAs. For products too small to give the
    # large tile a wave of blocks, and (split over K) for those too small for this one.
    np.dtype(np.float32): Tile(64, 64, 8, 4, 4),
    # The same in doubles: two-element (16-byte) vectors, 2 + 2 loads for 16 FMAs.
    np.dtype(np.float64): Tile(64, 64, 8, 4, 4),
    # Float16 multiplies float32 slabs: the float32 tile.
    np.dtype(np.float16): Tile(64, 64, 8, 4, 4),
}

# Thin products (a batch of 32 through a layer, an output layer of 10 units) would
# leave most of a 64 x 64 tile's threads without an output: at most 32 rows or
# columns get 32 x 32 tiles of 64 threads (4 x 4 outputs each), which also spreads
# such a product over 4 times as many blocks.
SMALL_TILE = Tile(32, 32, 8, 4, 4)
SMALL_EXTENT = 32

# gridDim.y may not exceed 65535; taller products loop over row tiles.
MAX_ROW_BLOCKS = 65535

# The simulator has no SMs to count: it plans for an H100 / H200 SXM (132 SMs).
SIMULATED_SMS = 132

# Split-K: each of the (at most MAX_SPLITS) K ranges is at least SPLIT_MIN_K long, so
# a split block does 16 slabs or more; shorter products are not split.
SPLIT_MIN_K = 128
MAX_SPLITS = 64


class Plan(NamedTuple):
    """How a product is launched: its tile, and K split over ``splits`` blocks along z."""

    tile: Tile
    splits: int  # gridDim.z: K ranges whose partial products are summed afterwards; 1: none
    chunk: int  # length of each K range, a multiple of tile.bk (K itself when splits == 1)


_sm_counts: dict[int, int] = {}


def sm_count() -> int:
    """Streaming multiprocessors of the current device (cached per device);
    ``SIMULATED_SMS`` in the CUDA simulator."""
    if numba_config.ENABLE_CUDASIM:
        return SIMULATED_SMS
    device = cuda.get_current_device()
    key = getattr(device, "id", 0)
    if key not in _sm_counts:
        _sm_counts[key] = int(device.MULTIPROCESSOR_COUNT)
    return _sm_counts[key]


def _candidate_tiles(M: int, N: int, dtype: Any) -> tuple[Tile, ...]:
    """The tiles an ``(M, N)`` product may use, largest first."""
    if min(M, N) <= SMALL_EXTENT:
        return (SMALL_TILE,)
    dtype = np.dtype(dtype)
    large = (LARGE_TILE,) if dtype in LARGE_TILE_DTYPES else ()
    return (*large, TILES[dtype], SMALL_TILE)


def _blocks(tile: Tile, M: int, N: int) -> int:
    return -(-M // tile.bm) * -(-N // tile.bn)


def plan_for(M: int, N: int, K: int, dtype: Any, sms: int | None = None) -> Plan:
    """The tile and K split for ``C (M, N) = op(A) (M, K) @ op(B) (K, N)`` in ``dtype``.

    The largest tile whose grid has a block for each of the ``sms`` SMs (default: the
    current device's, ``sm_count()``) wins. When none has, a K of at least
    ``2 * SPLIT_MIN_K`` is split over gridDim.z on the medium tile (``TILES``, or the
    small one for thin products), into as many ranges as bring the grid to ``sms``
    blocks; a shorter K takes the tile with the most blocks, unsplit.
    """
    sms = sms or sm_count()
    candidates = _candidate_tiles(M, N, dtype)
    for tile in candidates:
        if _blocks(tile, M, N) >= sms:
            return Plan(tile, 1, K)
    medium = TILES[np.dtype(dtype)]
    tile = medium if medium in candidates else SMALL_TILE
    splits = min(-(-sms // _blocks(tile, M, N)), K // SPLIT_MIN_K, MAX_SPLITS)
    if splits < 2:
        return Plan(candidates[-1], 1, K)
    chunk = -(-K // splits)
    chunk = -(-chunk // tile.bk) * tile.bk
    return Plan(tile, -(-K // chunk), chunk)


def tile_for(M: int, N: int, dtype: Any, K: int = 0, sms: int | None = None) -> Tile:
    """The block tile of ``plan_for(M, N, K, dtype, sms)`` (``K = 0``: never split)."""
    return plan_for(M, N, K, dtype, sms).tile


def _vector_width(tile: Tile, itemsize: int) -> int:
    """Elements per shared-memory vector load: 16 bytes, at most a register tile's side."""
    return min(tile.tm, tile.tn, 16 // itemsize)


def tile_costs(dtype: Any, tile: Tile | None = None) -> dict[str, float]:
    """Threads, shared memory per block and arithmetic intensity of a tile in ``dtype``.

    Args:
        dtype: float16, float32 or float64 (the operands' storage dtype).
        tile: default: the largest tile of ``dtype`` (``LARGE_TILE`` in float32 and float16).

    Returns:
        ``{"threads", "shared_bytes", "shared_bytes_activation", "flops_per_byte"}``:
        shared memory of the slabs alone and with the activation epilogue's staging
        tile, in the compute dtype (float32 for float16 operands); flops per byte of
        global memory loaded, ``2 * BM * BN * BK`` flops per ``(BM + BN) * BK`` elements
        of ``dtype`` per K-slab.
    """
    dtype = np.dtype(dtype)
    t = tile or (LARGE_TILE if dtype in LARGE_TILE_DTYPES else TILES[dtype])
    shared_itemsize = compute_dtype(dtype).itemsize
    vec = _vector_width(t, shared_itemsize)
    slabs = t.bk * (t.bm + t.bn + 2 * vec) * shared_itemsize
    staging = (t.bm // t.tm) * vec * (t.bn + vec) * shared_itemsize
    return {
        "threads": (t.bm // t.tm) * (t.bn // t.tn),
        "shared_bytes": slabs,
        "shared_bytes_activation": slabs + staging,
        "flops_per_byte": 2 * t.bm * t.bn / ((t.bm + t.bn) * dtype.itemsize),
    }


# Indices are cast to unsigned before indexing: Numba then skips its negative-index
# wraparound (a compare and a select per access); every index here is >= 0.
_u = np.uint64

# NVVM merges a thread's loads of neighbouring shared words into one vector load only
# where it can prove 16-byte alignment, which needs the shared arrays declared so (the
# index arithmetic supplies the rest). The simulator refuses an alignment argument.
_ALIGN_SHARED = not numba_config.ENABLE_CUDASIM
_SHARED_ALIGNMENT = 16


@functools.cache
def _tile_product(
    dtype: Any,
    tile: Tile,
    trans_a: bool,
    trans_b: bool,
    activation: str,
    has_bias: bool,
    write_z: bool,
    split: bool,
) -> Any:
    """Device function ``(A, B, b, Z, Y, chunk)``: this block's tiles of
    ``Y = act(op(A) @ op(B) + b)``.

    ``A``, ``B`` and ``b`` are of ``dtype``; everything in between (slabs, accumulators,
    the staging tile, the activation) is of ``compute_dtype(dtype)``, and a store to ``Z``
    or ``Y`` rounds to that array's dtype (float16 outputs, or float32 split-K partials of
    float16 operands). ``b`` is read only if ``has_bias``, ``Z`` written only if
    ``write_z``. With ``split`` the block sums over K range ``blockIdx.z`` only,
    ``[z * chunk, (z + 1) * chunk)``; otherwise over all of K (``chunk`` unused).
    """
    bm, bn, bk, tm, tn = tile
    compute = compute_dtype(dtype)
    vec = _vector_width(tile, compute.itemsize)
    tx_count, ty_count = bn // tn, bm // tm  # threads per block along columns / rows
    threads = tx_count * ty_count
    # A thread owns tm // vec groups of vec neighbouring rows, group_rows apart, and
    # likewise for columns (module docstring).
    group_rows, group_cols = ty_count * vec, tx_count * vec
    row_groups = tm // vec
    assert tm % vec == 0 and tn % vec == 0 and row_groups <= 2
    a_loads, b_loads = bm * bk // threads, bk * bn // threads  # slab elements per thread
    # A thread copies slab elements (k, m) = (a_k + p * a_k_step, a_m + p * a_m_step),
    # p < a_loads: consecutive threads take consecutive elements along the stored rows
    # (m when A is stored (K, M), else k); likewise (k, n) for B.
    a_k_step, a_m_step = (threads // bm, 0) if trans_a else (0, threads // bk)
    b_k_step, b_n_step = (0, threads // bk) if trans_b else (threads // bn, 0)
    assert threads % (bm if trans_a else bk) == 0 and threads % (bk if trans_b else bn) == 0
    # Rows padded by one vector: 16-byte aligned, and bank-conflict-free transposing
    # copies (module docstring).
    a_shape, b_shape = (bk, bm + vec), (bk, bn + vec)
    # An activation is applied from shared memory, not registers (module docstring):
    # one group of rows of the tile at a time, which keeps the 128 x 128 tile's staging
    # under the 48 KB of static shared memory.
    staged = activation != "linear"
    c_shape = (group_rows, bn + vec) if staged else (1, vec)
    c_loads, c_m_step = group_rows * bn // threads, threads // bn  # per thread and group
    element = numba_type(compute)
    zero = scalar(compute)(0.0)
    widen = scalar(compute)  # float16 loads to float32; a no-op in float32 and float64
    act = scalar_functions(compute)[activation]

    @device_function
    def fetch_a(A, regs, m, k, M, K):
        """This thread's elements of the A slab whose first is (m, k), zero outside A."""
        for p in range(a_loads):
            mq, kq = m + p * a_m_step, k + p * a_k_step
            v = zero
            if mq < M and kq < K:
                v = widen(A[_u(kq), _u(mq)] if trans_a else A[_u(mq), _u(kq)])
            regs[p] = v

    @device_function
    def fetch_b(B, regs, k, n, K, N):
        """This thread's elements of the B slab whose first is (k, n), zero outside B."""
        for p in range(b_loads):
            kq, nq = k + p * b_k_step, n + p * b_n_step
            v = zero
            if kq < K and nq < N:
                v = widen(B[_u(nq), _u(kq)] if trans_b else B[_u(kq), _u(nq)])
            regs[p] = v

    @device_function
    def stage_rows(acc, b_frag, Cs, group, row, col):
        """Accumulator rows of ``group`` (plus the bias) into the staging tile."""
        for i in range(vec):
            for j in range(tn):
                z = acc[group * vec + i, j]
                if has_bias:
                    z += b_frag[j]
                Cs[_u(row + i), _u(col + j // vec * group_cols + j % vec)] = z

    @device_function
    def store_rows(Cs, Z, Y, m0, n0, M, N, c_m, c_n):
        """The staging tile, tile rows ``m0 + r``, to Z and, activated, to Y: coalesced."""
        n = n0 + c_n
        for q in range(c_loads):
            r = c_m + q * c_m_step
            if m0 + r < M and n < N:
                z = Cs[_u(r), _u(c_n)]
                if write_z:
                    Z[_u(m0 + r), _u(n)] = z
                Y[_u(m0 + r), _u(n)] = act(z)[0]

    @device_function
    def tile_product(A, B, b, Z, Y, chunk):
        if _ALIGN_SHARED:
            As = cuda.shared.array(a_shape, element, _SHARED_ALIGNMENT)
            Bs = cuda.shared.array(b_shape, element, _SHARED_ALIGNMENT)
            Cs = cuda.shared.array(c_shape, element, _SHARED_ALIGNMENT)
        else:
            As = cuda.shared.array(a_shape, element)
            Bs = cuda.shared.array(b_shape, element)
            Cs = cuda.shared.array(c_shape, element)
        # Registers: every index into these is a constant once the loops are unrolled.
        acc = cuda.local.array((tm, tn), element)
        a_frag = cuda.local.array(tm, element)
        b_frag = cuda.local.array(tn, element)
        a_next = cuda.local.array(a_loads, element)
        b_next = cuda.local.array(b_loads, element)

        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        t = ty * tx_count + tx
        row, col = ty * vec, tx * vec  # this thread's first row and column of the tile
        a_k, a_m = (t // bm, t % bm) if trans_a else (t % bk, t // bk)
        b_k, b_n = (t % bk, t // bk) if trans_b else (t // bn, t % bn)
        c_m, c_n = t // bn, t % bn  # first element of the staging tile this thread stores
        M = A.shape[1] if trans_a else A.shape[0]
        K = A.shape[0] if trans_a else A.shape[1]
        N = B.shape[0] if trans_b else B.shape[1]
        n0 = cuda.blockIdx.x * bn
        k_begin = cuda.blockIdx.z * chunk if split else 0
        k_end = min(K, k_begin + chunk) if split else K

        for m0 in range(cuda.blockIdx.y * bm, M, cuda.gridDim.y * bm):
            for i in range(tm):
                for j in range(tn):
                    acc[i, j] = zero
            fetch_a(A, a_next, m0 + a_m, k_begin + a_k, M, k_end)
            fetch_b(B, b_next, k_begin + b_k, n0 + b_n, k_end, N)

            for k0 in range(k_begin, k_end, bk):
                for p in range(a_loads):
                    As[_u(a_k + p * a_k_step), _u(a_m + p * a_m_step)] = a_next[p]
                for p in range(b_loads):
                    Bs[_u(b_k + p * b_k_step), _u(b_n + p * b_n_step)] = b_next[p]
                cuda.syncthreads()

                # The next slab travels from global memory while this one is multiplied.
                if k0 + bk < k_end:
                    fetch_a(A, a_next, m0 + a_m, k0 + bk + a_k, M, k_end)
                    fetch_b(B, b_next, k0 + bk + b_k, n0 + b_n, k_end, N)

                # A while loop, not range(bk): Numba's range iterator hides the constant
                # trip count, and NVVM then recomputes the shared addresses every step.
                # The fragments are vec-element runs at 16-byte-aligned offsets: NVVM
                # loads each run with one vector load.
                k = 0
                while k < bk:
                    for i in range(tm):
                        a_frag[i] = As[_u(k), _u(row + i // vec * group_rows + i % vec)]
                    for j in range(tn):
                        b_frag[j] = Bs[_u(k), _u(col + j // vec * group_cols + j % vec)]
                    for i in range(tm):
                        for j in range(tn):
                            acc[i, j] += a_frag[i] * b_frag[j]
                    k += 1
                cuda.syncthreads()

            if has_bias:
                for j in range(tn):
                    n = n0 + col + j // vec * group_cols + j % vec
                    b_frag[j] = widen(b[_u(n)]) if n < N else zero
            if not staged:
                for i in range(tm):
                    m = m0 + row + i // vec * group_rows + i % vec
                    if m < M:
                        for j in range(tn):
                            n = n0 + col + j // vec * group_cols + j % vec
                            if n < N:
                                z = acc[i, j]
                                if has_bias:
                                    z += b_frag[j]
                                if write_z:
                                    Z[_u(m), _u(n)] = z
                                Y[_u(m), _u(n)] = z
            else:
                stage_rows(acc, b_frag, Cs, 0, row, col)
                cuda.syncthreads()
                store_rows(Cs, Z, Y, m0, n0, M, N, c_m, c_n)
                cuda.syncthreads()  # Cs is read before it is written again
                if row_groups > 1:
                    stage_rows(acc, b_frag, Cs, 1, row, col)
                    cuda.syncthreads()
                    store_rows(Cs, Z, Y, m0 + group_rows, n0, M, N, c_m, c_n)
                    cuda.syncthreads()

    return tile_product


@functools.cache
def _gemm_kernel(dtype: Any, tile: Tile, trans_a: bool, trans_b: bool) -> Any:
    tile_product = _tile_product(dtype, tile, trans_a, trans_b, "linear", False, False, False)

    @cuda.jit
    def gemm_kernel(A, B, C):
        """C = op(A) @ op(B), one BM x BN tile of C per block (per row-tile step of the grid)."""
        tile_product(A, B, C, C, C, 0)

    return gemm_kernel


@functools.cache
def _gemm_partials_kernel(dtype: Any, tile: Tile, trans_a: bool, trans_b: bool) -> Any:
    tile_product = _tile_product(dtype, tile, trans_a, trans_b, "linear", False, False, True)

    @cuda.jit
    def gemm_partials_kernel(A, B, P, chunk):
        """P[z] = op(A) @ op(B) over K range z = blockIdx.z, ``[z * chunk, (z + 1) * chunk)``."""
        Pz = P[cuda.blockIdx.z]
        tile_product(A, B, Pz, Pz, Pz, chunk)

    return gemm_partials_kernel


@functools.cache
def _dense_forward_kernel(dtype: Any, tile: Tile, activation: str, write_z: bool) -> Any:
    tile_product = _tile_product(dtype, tile, False, False, activation, True, write_z, False)

    @cuda.jit
    def dense_forward_kernel(X, W, b, Z, Y):
        """Z = X @ W + b and Y = act(Z), one BM x BN tile per block."""
        tile_product(X, W, b, Z, Y, 0)

    return dense_forward_kernel


@functools.cache
def _sum_partials_kernel(dtype: Any, activation: str, has_bias: bool, write_z: bool) -> Any:
    compute = compute_dtype(dtype)
    widen = scalar(compute)
    act = scalar_functions(compute)[activation]

    @cuda.jit
    def sum_partials_kernel(P, b, Z, Y):
        """Z = sum over z of P[z] (+ b), Y = act(Z): each element summed by one thread in
        the order z = 0, 1, ..., so the result is the same on every run. P is of the
        compute dtype, b, Z and Y of ``dtype`` (rounded once, at the store)."""
        splits, M, N = P.shape
        for e in range(cuda.grid(1), M * N, cuda.gridsize(1)):
            m, n = _u(e // N), _u(e % N)
            z = P[0, m, n]
            for s in range(1, splits):
                z += P[_u(s), m, n]
            if has_bias:
                z += widen(b[n])
            if write_z:
                Z[m, n] = z
            Y[m, n] = act(z)[0]

    return sum_partials_kernel


@functools.cache
def _zero_bias(dtype: Any, units: int) -> Any:
    """A device vector of zeros, the bias of a layer without one (read, never written).

    One kernel per activation serves layers with and without bias; reading ``units``
    zeros costs nothing next to the product.
    """
    return cuda.to_device(np.zeros(units, dtype=np.dtype(dtype)))


def _launch_shape(plan: Plan, M: int, N: int) -> tuple[tuple[int, int, int], tuple[int, int]]:
    """(grid, block): x over column tiles so that neighbouring blocks share rows of A, z
    over the K ranges of a split."""
    tile = plan.tile
    grid = (-(-N // tile.bn), min(MAX_ROW_BLOCKS, -(-M // tile.bm)), plan.splits)
    return grid, (tile.bn // tile.tn, tile.bm // tile.tm)


def _split_product(
    A: Any, B: Any, plan: Plan, shape: tuple[int, int], trans_a: bool, trans_b: bool
) -> Any:
    """Launch the partial products of a split plan; returns them, ``(splits, M, N)``.

    They live in the reused ``gemm_partials`` scratch buffer, in the compute dtype
    (float32 for float16 operands: only the final sum is rounded to float16).
    """
    M, N = shape
    partials = scratch("gemm_partials", plan.splits * M * N, compute_dtype(A.dtype))
    partials = partials.reshape(plan.splits, M, N)
    grid, block = _launch_shape(plan, M, N)
    kernel = _gemm_partials_kernel(A.dtype, plan.tile, trans_a, trans_b)
    launch(kernel, (grid, block), A, B, partials, plan.chunk)
    return partials


def _sum_partials(P: Any, b: Any, activation: str, has_bias: bool, Z: Any, Y: Any) -> None:
    """``Z = sum(P, 0) (+ b)``, ``Y = activation(Z)`` (``Z`` written only if it is not
    ``Y`` under ``"linear"``)."""
    write_z = activation != "linear" or Y is not Z
    blocks, threads = grid_for(Y.shape[0] * Y.shape[1])
    launch(
        _sum_partials_kernel(Y.dtype, activation, has_bias, write_z), (blocks, threads), P, b, Z, Y
    )


def gemm(A: Any, B: Any, C: Any, *, trans_a: bool = False, trans_b: bool = False) -> None:
    """Write ``C = op(A) @ op(B)``, where ``op`` transposes when asked, without a copy.

    Float16 operands are multiplied in float32 (float32 slabs and accumulators) and
    ``C`` is rounded to float16 once.

    Args:
        A: C-contiguous float16, float32 or float64 device array, ``(M, K)``, or
            ``(K, M)`` with ``trans_a``.
        B: device array of A's dtype, ``(K, N)``, or ``(N, K)`` with ``trans_b``.
        C: device array ``(M, N)`` of A's dtype, overwritten.
        trans_a: multiply by the transpose of ``A``.
        trans_b: multiply by the transpose of ``B``.
    """
    M, N = C.shape
    if M == 0 or N == 0:
        return
    trans_a, trans_b = bool(trans_a), bool(trans_b)
    K = A.shape[0] if trans_a else A.shape[1]
    plan = plan_for(M, N, K, C.dtype)
    if plan.splits > 1:
        partials = _split_product(A, B, plan, (M, N), trans_a, trans_b)
        _sum_partials(partials, _zero_bias(C.dtype, 1), "linear", False, C, C)
        return
    grid, block = _launch_shape(plan, M, N)
    launch(_gemm_kernel(C.dtype, plan.tile, trans_a, trans_b), (grid, block), A, B, C)


def dense_forward(X: Any, W: Any, b: Any, activation: str, Z: Any, Y: Any) -> None:
    """Write ``Z = X @ W + b`` and ``Y = activation(Z)`` in one kernel (two when K is split).

    Float16 arrays are a storage format: the product, bias and activation are computed
    in float32 and ``Z`` and ``Y`` are each rounded to float16 once, ``Y`` from the
    float32 ``Z``.

    Args:
        X: C-contiguous float16, float32 or float64 device array ``(N, I)``.
        W: device array ``(I, O)`` of X's dtype.
        b: device array ``(O,)`` of X's dtype, or ``None`` for no bias (a cached
            device vector of zeros is added then).
        activation: one of ``activations.ELEMENTWISE``.
        Z: device array ``(N, O)`` of X's dtype, the pre-activation.
        Y: device array ``(N, O)`` of X's dtype, the output; for ``"linear"`` it may
            be ``Z`` itself, which is then written once.
    """
    M, N = Y.shape
    if M == 0 or N == 0:
        return
    if b is None:
        b = _zero_bias(X.dtype, N)
    plan = plan_for(M, N, X.shape[1], X.dtype)
    if plan.splits > 1:
        partials = _split_product(X, W, plan, (M, N), False, False)
        _sum_partials(partials, b, activation, True, Z, Y)
        return
    write_z = activation != "linear" or Y is not Z
    grid, block = _launch_shape(plan, M, N)
    launch(
        _dense_forward_kernel(X.dtype, plan.tile, activation, write_z), (grid, block), X, W, b, Z, Y
    )


def _tile_variants(dtype: np.dtype) -> tuple[tuple[str, Tile], ...]:
    """Each tile ``dtype`` can launch, with its label prefix."""
    large = (("large,", LARGE_TILE),) if dtype in LARGE_TILE_DTYPES else ()
    return (*large, ("", TILES[dtype]), ("small,", SMALL_TILE))


def ptx_variants() -> Iterator[PtxVariant]:
    """Every tile of every dtype (float16 included): every transpose mode of gemm, and
    dense_forward for every activation (``linear`` as the engine launches it, writing ``Z``
    once); the split-K partial products on the tiles a split uses, and the sums of partials
    for gemm and for dense_forward's every activation. The partials are of the compute
    dtype (float32 for float16)."""
    for dtype in (*FLOAT_DTYPES, *HALF_DTYPES):
        matrix, vector = array(dtype, 2), array(dtype, 1)
        stack = array(compute_dtype(dtype), 3)
        short = dtype.name.replace("float", "f")
        modes = [(trans_a, trans_b) for trans_a in (False, True) for trans_b in (False, True)]
        for size, tile in _tile_variants(dtype):
            for trans_a, trans_b in modes:
                mode = ("T" if trans_a else "N") + ("T" if trans_b else "N")
                yield (
                    f"gemm[{size}{mode},{short}]",
                    _gemm_kernel(dtype, tile, trans_a, trans_b),
                    (matrix, matrix, matrix),
                )
                if tile is not LARGE_TILE:
                    yield (
                        f"gemm_partials[{size}{mode},{short}]",
                        _gemm_partials_kernel(dtype, tile, trans_a, trans_b),
                        (matrix, matrix, stack, types.int64),
                    )
            for name in ELEMENTWISE:
                yield (
                    f"dense_forward[{size}{name},{short}]",
                    _dense_forward_kernel(dtype, tile, name, name != "linear"),
                    (matrix, matrix, vector, matrix, matrix),
                )
        yield (
            f"sum_partials[gemm,{short}]",
            _sum_partials_kernel(dtype, "linear", False, False),
            (stack, vector, matrix, matrix),
        )
        for name in ELEMENTWISE:
            yield (
                f"sum_partials[{name},{short}]",
                _sum_partials_kernel(dtype, name, True, name != "linear"),
                (stack, vector, matrix, matrix),
            )
