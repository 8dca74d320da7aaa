"""Shared-memory tiled matrix product, with the dense layer's bias and activation fused in.

Each block computes one ``BM x BN`` tile of ``C = op(A) @ op(B)``. It walks K in
slabs ``BK`` wide: the threads copy an ``BM x BK`` slab of ``op(A)`` and a
``BK x BN`` slab of ``op(B)`` into shared memory, then each thread multiplies
them into its own ``TM x TN`` register tile of accumulators. While a slab is
being multiplied, the next one is already on its way from global memory into
registers. Thread ``(tx, ty)`` owns rows ``ty + i * BM/TM`` and columns
``tx + j * BN/TN`` of the tile: strided rather than contiguous, so that for every
``(i, j)`` neighbouring threads read neighbouring shared-memory words (no bank
conflicts) and write neighbouring addresses of ``C`` (coalesced stores).

A transposed operand is read where it lies; there is no transposed copy. The
copy into shared memory is coalesced in every mode: consecutive threads read
consecutive addresses of the operand as stored, and the copy transposes on its
way into shared memory where needed. ``As`` holds the A slab transposed
(``As[k, m]``) so that the inner product loop reads rows of both slabs. The
shared arrays have one column of padding: the transposing copies then spread a
warp's writes over all banks instead of hitting one bank 16 times.

Edges are handled inside the kernel: out-of-range elements of a slab are zero
in shared memory and out-of-range outputs are not stored, so any M, N, K >= 1
works and the caller never pads.

The epilogue adds the bias and applies the activation before anything is
stored: ``Z = X @ W + b`` and ``Y = act(Z)`` are written in one pass, with no
intermediate array. Plain gemm and "linear" store straight from registers; any
other activation goes through a shared-memory copy of the block's tile first
(see ``_tile_product``), so that the accumulators never leave registers.

Per block tile, from ``ptxas -v`` (registers per thread for the four transpose
modes of gemm / dense_forward over every activation; static shared memory per
block; every variant has a 0-byte stack frame and 0 bytes of spills), and the
arithmetic intensity: a K-slab loads ``(BM + BN) * BK`` elements from global
memory for ``2 * BM * BN * BK`` flops, ``2 * BM * BN / ((BM + BN) * itemsize)``
flops per byte (``tile_costs``). An H100 SXM is compute-bound from about 20
(FP32, 67 TFLOP/s over 3.35 TB/s) and 10 (FP64, 34 TFLOP/s) flops per DRAM byte;
blocks of one row of the grid read the same rows of A, so much of each block's
traffic is served by L2.

    dtype    BM x BN x BK  TM x TN  threads  regs sm_80    regs sm_90    smem B (act)     flops/B
    float32  64 x 64 x 16  4 x 4    256      77-95/80-90   64-78/64-66   8,320 (28,800)   16
    float64  64 x 64 x 8   4 x 4    256      92-94/94-98   70-82/78-96   8,320 (41,088)   8

Products with at most 32 rows or columns use ``SMALL_TILE`` (32 x 32 x 8, 64
threads of 4 x 4 outputs), which wastes fewer threads on them.

Blocks per SM on an H100 (64K registers, allocated 8 per thread at a time; 228
KB shared memory): float32 3-4 (768-1024 threads), float64 2-3; shared memory
would allow 5 or more in every variant.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
from numba import cuda

from .activations import ELEMENTWISE, scalar_functions
from .common import FLOAT_DTYPES, PtxVariant, array, device_function, numba_type, scalar


class Tile(NamedTuple):
    """One block's share of the product: a ``bm x bn`` tile of C over ``bk``-wide K-slabs."""

    bm: int  # rows of C per block
    bn: int  # columns of C per block
    bk: int  # width of the K-slab staged in shared memory per step
    tm: int  # rows of C per thread (a register tile of tm x tn accumulators)
    tn: int  # columns of C per thread


TILES = {
    # 64 x 64 outputs per block, 4 x 4 per thread: 256 threads (8 warps). Per step
    # of k a thread reads 4 + 4 operands from shared memory for 16 FMAs; the 16
    # accumulators, 8 operands, 8 prefetched slab elements and the addresses take
    # 64-95 registers (of 255), 3-4 blocks per SM. Shared memory, 2 * 16 * 65 * 4 B
    # = 8.3 KB per block (28.8 KB with the activation's staging tile), does not
    # limit occupancy. 64 x 64 rather than 128 x 128 keeps the small products of
    # dense layers (batch 128 x 256 units: 8 blocks) spread over more of the 132
    # SMs. BK = 16: 4 + 4 global loads per thread and 256 FMAs between barriers.
    np.dtype(np.float32): Tile(64, 64, 16, 4, 4),
    # The same block and register tile in doubles (2 registers each): 70-98
    # registers, 2-3 blocks per SM. BK = 8 keeps the slabs at 8.3 KB, and their
    # sum with the 32 KB staging tile of the activation epilogue (41 KB) under the
    # 48 KB of static shared memory a block may have; BK = 16 would exceed it.
    np.dtype(np.float64): Tile(64, 64, 8, 4, 4),
}

# Thin products (a batch of 32 through a layer, an output layer of 10 units) would
# leave most of a 64 x 64 tile's threads without an output: at most 32 rows or
# columns get 32 x 32 tiles of 64 threads (4 x 4 outputs each), which also spreads
# such a product over 4 times as many blocks. 4 + 4 slab loads per thread, 2.3 KB
# of slabs (4.4/8.5 KB with the activation's staging tile).
SMALL_TILE = Tile(32, 32, 8, 4, 4)
SMALL_EXTENT = 32


def tile_for(M: int, N: int, dtype: Any) -> Tile:
    """The block tile for an ``(M, N)`` product: ``SMALL_TILE`` for thin ones, else ``TILES``."""
    return SMALL_TILE if min(M, N) <= SMALL_EXTENT else TILES[np.dtype(dtype)]


# gridDim.y may not exceed 65535; taller products loop over row tiles.
MAX_ROW_BLOCKS = 65535


def tile_costs(dtype: Any) -> dict[str, float]:
    """Threads, shared memory per block and arithmetic intensity of ``dtype``'s tile.

    Returns:
        ``{"threads", "shared_bytes", "shared_bytes_activation", "flops_per_byte"}``:
        shared memory of the slabs alone and with the activation epilogue's staging
        tile; flops per byte of global memory loaded, ``2 * BM * BN * BK`` flops per
        ``(BM + BN) * BK`` elements per K-slab.
    """
    t = TILES[np.dtype(dtype)]
    itemsize = np.dtype(dtype).itemsize
    slabs = t.bk * (t.bm + 1 + t.bn + 1) * itemsize
    return {
        "threads": (t.bm // t.tm) * (t.bn // t.tn),
        "shared_bytes": slabs,
        "shared_bytes_activation": slabs + t.bm * _staging_stride(t, itemsize) * itemsize,
        "flops_per_byte": 2 * t.bm * t.bn / ((t.bm + t.bn) * itemsize),
    }


def _staging_stride(t: Tile, itemsize: int) -> int:
    """Row stride of the activation epilogue's staging tile (see ``_tile_product``)."""
    return t.bn + 16 if itemsize == 4 else t.bn


# Indices are cast to unsigned before indexing: Numba then skips its negative-index
# wraparound (a compare and a select per access); every index here is >= 0.
_u = np.uint64


@functools.cache
def _tile_product(
    dtype: Any,
    tile: Tile,
    trans_a: bool,
    trans_b: bool,
    activation: str,
    has_bias: bool,
    write_z: bool,
) -> Any:
    """Device function ``(A, B, b, Z, Y)``: this block's tiles of ``Y = act(op(A) @ op(B) + b)``.

    ``b`` is read only if ``has_bias``, ``Z`` written only if ``write_z``.
    """
    bm, bn, bk, tm, tn = tile
    tx_count, ty_count = bn // tn, bm // tm  # threads per block along columns / rows
    threads = tx_count * ty_count
    a_loads, b_loads = bm * bk // threads, bk * bn // threads  # slab elements per thread
    # A thread copies slab elements (k, m) = (a_k + p * a_k_step, a_m + p * a_m_step),
    # p < a_loads: consecutive threads take consecutive elements along the stored rows
    # (m when A is stored (K, M), else k); likewise (k, n) for B.
    a_k_step, a_m_step = (threads // bm, 0) if trans_a else (0, threads // bk)
    b_k_step, b_n_step = (0, threads // bk) if trans_b else (threads // bn, 0)
    assert threads % (bm if trans_a else bk) == 0 and threads % (bk if trans_b else bn) == 0
    a_shape, b_shape = (bk, bm + 1), (bk, bn + 1)  # one column of padding (module docstring)
    # An activation is applied from shared memory, not registers: unrolled 16 times
    # around a long function (softplus in float64) the store loop stops being unrolled
    # and the accumulators fall back to local memory. Staging the tile also makes every
    # warp store 32 neighbouring elements of Z and Y. Rows of Cs are 16 words apart
    # (mod 32) for 4-byte elements, so a warp's two thread rows write different banks;
    # 8-byte accesses are served a half-warp (one thread row) at a time, with no pad.
    staged = activation != "linear"
    c_stride = _staging_stride(tile, np.dtype(dtype).itemsize)
    c_shape = (bm, c_stride) if staged else (1, 1)
    c_loads, c_m_step = bm * bn // threads, threads // bn  # tile elements per thread
    element = numba_type(dtype)
    zero = scalar(dtype)(0.0)
    act = scalar_functions(dtype)[activation]

    @device_function
    def fetch_a(A, regs, m, k, M, K):
        """This thread's elements of the A slab whose first is (m, k), zero outside A."""
        for p in range(a_loads):
            mq, kq = m + p * a_m_step, k + p * a_k_step
            v = zero
            if mq < M and kq < K:
                v = A[_u(kq), _u(mq)] if trans_a else A[_u(mq), _u(kq)]
            regs[p] = v

    @device_function
    def fetch_b(B, regs, k, n, K, N):
        """This thread's elements of the B slab whose first is (k, n), zero outside B."""
        for p in range(b_loads):
            kq, nq = k + p * b_k_step, n + p * b_n_step
            v = zero
            if kq < K and nq < N:
                v = B[_u(nq), _u(kq)] if trans_b else B[_u(kq), _u(nq)]
            regs[p] = v

    @device_function
    def tile_product(A, B, b, Z, Y):
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
        a_k, a_m = (t // bm, t % bm) if trans_a else (t % bk, t // bk)
        b_k, b_n = (t % bk, t // bk) if trans_b else (t // bn, t % bn)
        c_m, c_n = t // bn, t % bn  # first element of the tile this thread activates
        M = A.shape[1] if trans_a else A.shape[0]
        K = A.shape[0] if trans_a else A.shape[1]
        N = B.shape[0] if trans_b else B.shape[1]
        n0 = cuda.blockIdx.x * bn

        for m0 in range(cuda.blockIdx.y * bm, M, cuda.gridDim.y * bm):
            for i in range(tm):
                for j in range(tn):
                    acc[i, j] = zero
            fetch_a(A, a_next, m0 + a_m, a_k, M, K)
            fetch_b(B, b_next, b_k, n0 + b_n, K, N)

            for k0 in range(0, K, bk):
                for p in range(a_loads):
                    As[_u(a_k + p * a_k_step), _u(a_m + p * a_m_step)] = a_next[p]
                for p in range(b_loads):
                    Bs[_u(b_k + p * b_k_step), _u(b_n + p * b_n_step)] = b_next[p]
                cuda.syncthreads()

                # The next slab travels from global memory while this one is multiplied.
                if k0 + bk < K:
                    fetch_a(A, a_next, m0 + a_m, k0 + bk + a_k, M, K)
                    fetch_b(B, b_next, k0 + bk + b_k, n0 + b_n, K, N)

                # A while loop, not range(bk): Numba's range iterator hides the constant
                # trip count, and NVVM then recomputes the shared addresses every step.
                k = 0
                while k < bk:
                    for i in range(tm):
                        a_frag[i] = As[_u(k), _u(ty + i * ty_count)]
                    for j in range(tn):
                        b_frag[j] = Bs[_u(k), _u(tx + j * tx_count)]
                    for i in range(tm):
                        for j in range(tn):
                            acc[i, j] += a_frag[i] * b_frag[j]
                    k += 1
                cuda.syncthreads()

            if has_bias:
                for j in range(tn):
                    n = n0 + tx + j * tx_count
                    b_frag[j] = b[_u(n)] if n < N else zero
            if not staged:
                for i in range(tm):
                    m = m0 + ty + i * ty_count
                    if m < M:
                        for j in range(tn):
                            n = n0 + tx + j * tx_count
                            if n < N:
                                z = acc[i, j]
                                if has_bias:
                                    z += b_frag[j]
                                if write_z:
                                    Z[_u(m), _u(n)] = z
                                Y[_u(m), _u(n)] = z
            else:
                for i in range(tm):
                    for j in range(tn):
                        z = acc[i, j]
                        if has_bias:
                            z += b_frag[j]
                        Cs[_u(ty + i * ty_count), _u(tx + j * tx_count)] = z
                cuda.syncthreads()
                n = n0 + c_n
                for q in range(c_loads):
                    r = c_m + q * c_m_step
                    if m0 + r < M and n < N:
                        z = Cs[_u(r), _u(c_n)]
                        if write_z:
                            Z[_u(m0 + r), _u(n)] = z
                        Y[_u(m0 + r), _u(n)] = act(z)[0]
                cuda.syncthreads()  # Cs is read before the next row tile writes it

    return tile_product


@functools.cache
def _gemm_kernel(dtype: Any, tile: Tile, trans_a: bool, trans_b: bool) -> Any:
    tile_product = _tile_product(dtype, tile, trans_a, trans_b, "linear", False, False)

    @cuda.jit
    def gemm_kernel(A, B, C):
        """C = op(A) @ op(B), one BM x BN tile of C per block (per row-tile step of the grid)."""
        tile_product(A, B, C, C, C)

    return gemm_kernel


@functools.cache
def _dense_forward_kernel(dtype: Any, tile: Tile, activation: str, write_z: bool) -> Any:
    tile_product = _tile_product(dtype, tile, False, False, activation, True, write_z)

    @cuda.jit
    def dense_forward_kernel(X, W, b, Z, Y):
        """Z = X @ W + b and Y = act(Z), one BM x BN tile per block."""
        tile_product(X, W, b, Z, Y)

    return dense_forward_kernel


@functools.cache
def _zero_bias(dtype: Any, units: int) -> Any:
    """A device vector of zeros, the bias of a layer without one (read, never written).

    One kernel per activation serves layers with and without bias; reading ``units``
    zeros costs nothing next to the product.
    """
    return cuda.to_device(np.zeros(units, dtype=np.dtype(dtype)))


def _launch_shape(tile: Tile, M: int, N: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(grid, block): x over column tiles so that neighbouring blocks share rows of A."""
    grid = (-(-N // tile.bn), min(MAX_ROW_BLOCKS, -(-M // tile.bm)))
    return grid, (tile.bn // tile.tn, tile.bm // tile.tm)


def gemm(A: Any, B: Any, C: Any, *, trans_a: bool = False, trans_b: bool = False) -> None:
    """Write ``C = op(A) @ op(B)``, where ``op`` transposes when asked, without a copy.

    Args:
        A: C-contiguous float32 or float64 device array, ``(M, K)``, or ``(K, M)``
            with ``trans_a``.
        B: device array of A's dtype, ``(K, N)``, or ``(N, K)`` with ``trans_b``.
        C: device array ``(M, N)`` of A's dtype, overwritten.
        trans_a: multiply by the transpose of ``A``.
        trans_b: multiply by the transpose of ``B``.
    """
    M, N = C.shape
    if M == 0 or N == 0:
        return
    tile = tile_for(M, N, C.dtype)
    grid, block = _launch_shape(tile, M, N)
    _gemm_kernel(C.dtype, tile, bool(trans_a), bool(trans_b))[grid, block](A, B, C)


def dense_forward(X: Any, W: Any, b: Any, activation: str, Z: Any, Y: Any) -> None:
    """Write ``Z = X @ W + b`` and ``Y = activation(Z)`` in one kernel.

    Args:
        X: C-contiguous float32 or float64 device array ``(N, I)``.
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
    tile = tile_for(M, N, X.dtype)
    write_z = activation != "linear" or Y is not Z
    grid, block = _launch_shape(tile, M, N)
    _dense_forward_kernel(X.dtype, tile, activation, write_z)[grid, block](X, W, b, Z, Y)


def ptx_variants() -> Iterator[PtxVariant]:
    """Both tiles of every dtype: every transpose mode of gemm, and dense_forward for
    every activation (``linear`` as the engine launches it, writing ``Z`` once)."""
    for dtype in FLOAT_DTYPES:
        matrix, vector = array(dtype, 2), array(dtype, 1)
        short = dtype.name.replace("float", "f")
        for size, tile in (("", TILES[dtype]), ("small,", SMALL_TILE)):
            for trans_a in (False, True):
                for trans_b in (False, True):
                    mode = ("T" if trans_a else "N") + ("T" if trans_b else "N")
                    yield (
                        f"gemm[{size}{mode},{short}]",
                        _gemm_kernel(dtype, tile, trans_a, trans_b),
                        (matrix, matrix, matrix),
                    )
            for name in ELEMENTWISE:
                yield (
                    f"dense_forward[{size}{name},{short}]",
                    _dense_forward_kernel(dtype, tile, name, name != "linear"),
                    (matrix, matrix, vector, matrix, matrix),
                )
