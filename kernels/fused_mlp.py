"""A whole training step of a narrow MLP in two kernels (after NVIDIA's tiny-cuda-nn).

For a chain of biased dense layers whose hidden widths and class count are at
most ``MAX_WIDTH`` (128), with hidden activations linear, relu, tanh or sigmoid
and a softmax output trained with categorical cross-entropy (one-hot or int64
labels), in float32 or float64:

- ``forward``: one block per tile of ``TILE_ROWS`` (32) batch rows runs every
  layer's product, bias and activation with the tile's activations held in
  shared memory, then the row softmax, the per-sample cross-entropy (stored in
  float64, as ``losses.py`` does, for ``reductions.mean_all``) and the output
  gradient ``(P - Y) / N``. It stores only what the backward pass needs: each
  hidden layer's output ``Y_l`` (the activation derivative is recomputed from
  it: relu ``Y > 0``, tanh ``1 - Y**2``, sigmoid ``Y (1 - Y)``, which equal the
  derivatives of ``activations.py`` at ``Z``), ``P`` and ``dP``.
- ``backward``: one block per tile (a block strides over several tiles when
  there are more than ``MAX_PARTIALS``) back-propagates through every layer
  with the tile's deltas in shared memory and writes its weight- and
  bias-gradient partial sums; a third kernel adds the blocks' partials in block
  order into the gradients. No atomics: the sums repeat bit for bit. With a
  single block (``N <= 32``) the partials are the gradients and the third
  kernel is skipped.

Layout. A block is ``THREADS`` = 128 threads (4 warps): thread ``t`` has
``tx = t % 32`` along the columns and ``ty = t // 32`` along the rows, and owns
a register tile of ``TM x TN`` = 8 x 4 outputs, rows ``ty + 4 r`` and columns
``tx + 32 c``, which covers 32 rows by 128 columns: the widest layer. A warp
thus reads one shared-memory row element (a broadcast) and 32 consecutive
weights (one coalesced line) per step, and stores 32 consecutive columns.
The input ``X`` (any width) is streamed through the first ``SLAB`` (32) columns
of the activation tile, coalesced, a slab at a time; hidden layers read the
tile in place: their outputs stay in registers until every thread has read the
inputs, then overwrite them. Weights are read from global memory (L1/L2: a
128 x 128 float32 layer is 64 KB, read by every block).

Why 32 rows a tile: the activation tile is ``TILE_ROWS x (MAX_WIDTH + 1)``
elements (the pad makes the softmax's per-row accesses and the backward's
column walks free of bank conflicts), 16.5 KB in float32 and 33 KB in float64;
the backward pass adds a ``TILE_ROWS x (SLAB + 1)`` slab (4.2 / 8.4 KB), 41.5 KB
in float64, under the 48 KB of static shared memory a block may have. 64 rows
would not fit in float64, and 32 rows are exactly the tiny benchmark case's
batch (one block, no partials to reduce). A batch of ``N`` rows is spread over
``ceil(N / 32)`` blocks, so a batch of 1024 fills 32 SMs; wider batches fill
the GPU.

The backward pass of layer ``l`` on a tile: ``db_l += colsum(D)`` (thread
``t`` walks column ``t``), ``dW_l += A_{l-1}^T D`` over slabs of 32 input
columns staged in shared memory (each thread an 8 x 4 register tile of
``dW``), and for ``l > 0`` the next delta ``D (W_l)^T * act'(Y_{l-1})``,
computed into registers before it overwrites ``D``.

From ``ptx_report --module fused_mlp`` (Numba 0.68 / CUDA 12.9, 1 to 3 layers,
sm_80 / sm_90 registers per thread; static shared memory per block): no spill
and no stack frame in any variant.

    kernel    dtype    regs sm_80  regs sm_90  smem B
    forward   float32  161-174     127-176     17,024
    backward  float32  188-244     168-218     20,736
    forward   float64  198-221     168-230     34,048
    backward  float64  238-254     192-248     41,472
    reduce    both     30          31-36       0

At up to 255 registers a thread, 128-thread blocks run 2 to an SM (64K
registers): enough for these launch-bound steps, where a batch has few tiles.
The high counts come from the register tile, its 64-bit addresses and the
argument tuples' array descriptors; an activation or derivative over the
register tile, unrolled 32 times, spilled the accumulators, hence the flat
elementwise passes ``activate_tile`` and ``scale_delta``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
from dlcore.backends.names import EPSILON
from numba import cuda, types

from .activations import scalar_functions
from .common import (
    FLOAT_DTYPES,
    MAX_BLOCKS,
    WARP,
    PtxVariant,
    array,
    device_function,
    grid_for,
    launch,
    numba_type,
    scalar,
    scratch,
)
from .rows import group_reductions

TILE_ROWS = 32  # batch rows per block
TM, TN = 8, 4  # register tile of a thread: rows ty + 4 r, columns tx + 32 c
THREADS = 128  # 4 warps; THREADS = TILE_ROWS * MAX_WIDTH / (TM * TN)
ROW_THREADS = THREADS // WARP  # thread rows (ty) per block
MAX_WIDTH = WARP * TN  # widest hidden layer or class count: 128
SLAB = 32  # input columns staged at a time (forward: X; backward: a layer's input)
ROW_STRIDE = MAX_WIDTH + 1  # shared tile rows padded by one element against bank conflicts
SLAB_STRIDE = SLAB + 1
ROW_LANES = THREADS // TILE_ROWS  # threads per row in the softmax and the loss: 4
STAGE_LOADS = TILE_ROWS * SLAB // THREADS  # slab elements each thread copies: 8
# Backward blocks, and so partial sums of every parameter, at most: about one block
# per SM of an H100 (132); a larger batch has each block walk several tiles.
MAX_PARTIALS = 128

# The hidden activations the kernels know, by the code they are passed as.
ACTIVATION_CODES = {"linear": 0, "relu": 1, "tanh": 2, "sigmoid": 3}
_LINEAR, _RELU, _TANH, _SIGMOID = 0, 1, 2, 3

# Indices are cast to unsigned where they are known to be >= 0 (as in gemm.py):
# Numba then skips its negative-index wraparound.
_u = np.uint64


def supports(widths: Sequence[int], activations: Sequence[str], dtype: Any) -> bool:
    """Whether the fused kernels run this stack.

    Args:
        widths: ``(inputs, hidden..., classes)``, the layer widths.
        activations: the hidden layers' activations, ``len(widths) - 2`` names.
        dtype: the arrays' dtype.

    Returns:
        True for float32/float64 stacks of at least one layer whose hidden
        widths and class count are in ``[1, MAX_WIDTH]`` and whose hidden
        activations are in ``ACTIVATION_CODES``.
    """
    return (
        len(widths) >= 2
        and len(activations) == len(widths) - 2
        and np.dtype(dtype) in FLOAT_DTYPES
        and all(1 <= width <= MAX_WIDTH for width in widths[1:])
        and all(name in ACTIVATION_CODES for name in activations)
    )


@functools.cache
def _tile_functions(dtype: Any) -> dict[str, Any]:
    """The device functions both kernels are made of, in ``dtype``."""
    f = scalar(dtype)
    zero, one = f(0.0), f(1.0)
    forward = scalar_functions(dtype)
    relu, tanh, sigmoid = forward["relu"], forward["tanh"], forward["sigmoid"]

    @device_function
    def clear(acc):
        for r in range(TM):
            for c in range(TN):
                acc[r, c] = zero

    @device_function
    def stage(A, S, row0, k0, t):
        """S[m, kk] = A[row0 + m, k0 + kk] for a TILE_ROWS x SLAB slab, zero outside A."""
        N, K = A.shape
        for p in range(STAGE_LOADS):
            e = t + p * THREADS
            m, kk = e // SLAB, e % SLAB
            i, k = row0 + m, k0 + kk
            v = zero
            if i < N and k < K:
                v = A[_u(i), _u(k)]
            S[_u(m), _u(kk)] = v

    @device_function
    def multiply(S, W, acc, a, w, k0, width, tx, ty):
        """acc += S[rows, :width] @ W[k0 : k0 + width, columns] (columns past W's are 0)."""
        O = W.shape[1]
        kk = 0
        while kk < width:
            for r in range(TM):
                a[r] = S[_u(ty + r * ROW_THREADS), _u(kk)]
            for c in range(TN):
                j = tx + c * WARP
                w[c] = W[_u(k0 + kk), _u(j)] if j < O else zero
            for r in range(TM):
                for c in range(TN):
                    acc[r, c] += a[r] * w[c]
            kk += 1

    @device_function
    def activate(code, z):
        if code == _RELU:
            return relu(z)[0]
        if code == _TANH:
            return tanh(z)[0]
        if code == _SIGMOID:
            return sigmoid(z)[0]
        return z

    @device_function
    def derivative(code, y):
        """act'(z) from y = act(z): equal to the derivatives of activations.py at z."""
        if code == _RELU:
            return one if y > zero else zero
        if code == _TANH:
            return one - y * y
        if code == _SIGMOID:
            return y * (one - y)
        return one

    return {
        "clear": clear,
        "stage": stage,
        "multiply": multiply,
        "activate": activate,
        "derivative": derivative,
    }


@functools.cache
def _target(dtype: Any, sparse: bool) -> Any:
    """Device function ``(Y, i, j) -> y[i, j]``: one-hot rows, or the one-hot of int labels."""
    zero, one = scalar(dtype)(0.0), scalar(dtype)(1.0)
    if sparse:

        def label_target(Y, i, j):
            return one if Y[i] == j else zero

        return device_function(label_target)

    def onehot_target(Y, i, j):
        return Y[i, j]

    return device_function(onehot_target)


@functools.cache
def _forward_kernel(dtype: Any, sparse: bool) -> Any:
    f = scalar(dtype)
    zero, neg_inf = f(0.0), f(-np.inf)
    eps, high = f(EPSILON), f(1.0 - EPSILON)
    element = numba_type(dtype)
    tile = _tile_functions(dtype)
    clear, stage, multiply, activate = (
        tile["clear"],
        tile["stage"],
        tile["multiply"],
        tile["activate"],
    )
    group_sum, _, group_max, _ = group_reductions(dtype)
    target = _target(dtype, sparse)

    @device_function
    def add_bias(acc, b, H, row0, N, tx, ty):
        """H[tile] = acc + b in the batch's rows, zero past them."""
        O = b.shape[0]
        for r in range(TM):
            m = ty + r * ROW_THREADS
            for c in range(TN):
                j = tx + c * WARP
                if j < O:
                    H[_u(m), _u(j)] = acc[r, c] + b[j] if row0 + m < N else zero

    @device_function
    def activate_tile(H, Y, code, row0, t):
        """H[tile] = act(H[tile]), also stored to Y (N, O); one element a thread at a time.

        A flat loop rather than one over the register tile: unrolled 32 times around
        the three activations, the accumulators would fall back to local memory.
        """
        N, O = Y.shape
        for e in range(t, min(TILE_ROWS, N - row0) * O, THREADS):
            m, j = e // O, e % O
            y = activate(code, H[_u(m), _u(j)])
            H[_u(m), _u(j)] = y
            Y[_u(row0 + m), _u(j)] = y

    @device_function
    def softmax_loss(H, s, Y_true, per_sample, row0, N, C, t):
        """Softmax of the tile's logit rows into H, each row's cross-entropy to per_sample."""
        m, lane = t // ROW_LANES, t % ROW_LANES
        i = row0 + m
        valid = i < N
        top = neg_inf
        if valid:
            for j in range(lane, C, ROW_LANES):
                top = max(top, H[_u(m), _u(j)])
        top = group_max(s, t, lane, ROW_LANES, top)
        total = zero
        if valid:
            for j in range(lane, C, ROW_LANES):
                total += math.exp(H[_u(m), _u(j)] - top)
        total = group_sum(s, t, lane, ROW_LANES, total)
        mass = zero
        if valid:
            for j in range(lane, C, ROW_LANES):
                p = math.exp(H[_u(m), _u(j)] - top) / total
                H[_u(m), _u(j)] = p
                mass += p
        mass = group_sum(s, t, lane, ROW_LANES, mass)
        # Keras's categorical cross-entropy of probabilities: rows renormalised, clipped
        ce = zero
        if valid:
            for j in range(lane, C, ROW_LANES):
                q = min(max(H[_u(m), _u(j)] / mass, eps), high)
                ce += target(Y_true, i, j) * math.log(q)
        ce = group_sum(s, t, lane, ROW_LANES, ce)
        if valid and lane == 0:
            per_sample[i] = -ce

    @cuda.jit
    def fused_mlp_forward_kernel(X, weights, biases, codes, outputs, Y_true, scale, per_sample, dP):
        """Every layer, softmax, per-sample loss and dP = (P - Y) * scale, TILE_ROWS rows a block.

        X (N, K); weights[l] (I_l, O_l), biases[l] (O_l,); codes[l] the hidden
        activations (the last is ignored); outputs[l] (N, O_l) the hidden outputs
        and P last; per_sample float64 (N,); dP (N, C).
        """
        H = cuda.shared.array((TILE_ROWS, ROW_STRIDE), element)
        s = cuda.shared.array(THREADS, element)
        acc = cuda.local.array((TM, TN), element)
        a = cuda.local.array(TM, element)
        w = cuda.local.array(TN, element)
        t = cuda.threadIdx.x
        tx, ty = t % WARP, t // WARP
        N, K = X.shape
        L = len(weights)
        P = outputs[L - 1]
        C = P.shape[1]
        for row0 in range(cuda.blockIdx.x * TILE_ROWS, N, cuda.gridDim.x * TILE_ROWS):
            for layer in range(L):
                W = weights[layer]
                clear(acc)
                if layer == 0:
                    for k0 in range(0, K, SLAB):
                        stage(X, H, row0, k0, t)
                        cuda.syncthreads()
                        multiply(H, W, acc, a, w, k0, min(SLAB, K - k0), tx, ty)
                        cuda.syncthreads()
                else:
                    multiply(H, W, acc, a, w, 0, W.shape[0], tx, ty)
                    cuda.syncthreads()  # every thread has read H before it is overwritten
                add_bias(acc, biases[layer], H, row0, N, tx, ty)
                cuda.syncthreads()
                if layer < L - 1:
                    activate_tile(H, outputs[layer], codes[layer], row0, t)
                    cuda.syncthreads()
            softmax_loss(H, s, Y_true, per_sample, row0, N, C, t)
            cuda.syncthreads()
            for r in range(TM):
                m = ty + r * ROW_THREADS
                i = row0 + m
                if i < N:
                    for c in range(TN):
                        j = tx + c * WARP
                        if j < C:
                            p = H[_u(m), _u(j)]
                            P[_u(i), _u(j)] = p
                            dP[_u(i), _u(j)] = (p - target(Y_true, i, j)) * scale
            cuda.syncthreads()  # before the next tile overwrites H

    return fused_mlp_forward_kernel


@functools.cache
def _backward_kernel(dtype: Any) -> Any:
    zero = scalar(dtype)(0.0)
    element = numba_type(dtype)
    tile = _tile_functions(dtype)
    clear, stage, derivative = tile["clear"], tile["stage"], tile["derivative"]

    @device_function
    def load_delta(dP, D, row0, t):
        """D[m, j] = dP[row0 + m, j], zero in rows past N."""
        N, C = dP.shape
        for e in range(t, TILE_ROWS * C, THREADS):
            m, j = e // C, e % C
            i = row0 + m
            D[_u(m), _u(j)] = dP[_u(i), _u(j)] if i < N else zero

    @device_function
    def bias_partial(D, db, block, rows, fresh, t):
        """db[block, t] (+)= sum of D[:rows, t], thread t on column t."""
        if t < db.shape[1]:
            total = zero
            for m in range(rows):
                total += D[_u(m), _u(t)]
            if not fresh:
                total += db[block, t]
            db[block, t] = total

    @device_function
    def weight_partial(S, D, acc, a, d, rows, O, tx, ty):
        """acc[r, c] = sum over the tile's rows of S[m, ty + 4 r] * D[m, tx + 32 c]."""
        clear(acc)
        m = 0
        while m < rows:
            for r in range(TM):
                a[r] = S[_u(m), _u(ty + r * ROW_THREADS)]
            for c in range(TN):
                j = tx + c * WARP
                d[c] = D[_u(m), _u(j)] if j < O else zero  # D holds O columns
            for r in range(TM):
                for c in range(TN):
                    acc[r, c] += a[r] * d[c]
            m += 1

    @device_function
    def store_weight_partial(acc, dW, block, k0, fresh, tx, ty):
        """dW[block, k0 + ty + 4 r, tx + 32 c] (+)= acc[r, c] inside dW."""
        I, O = dW.shape[1], dW.shape[2]
        for r in range(TM):
            k = k0 + ty + r * ROW_THREADS
            if k < I:
                for c in range(TN):
                    j = tx + c * WARP
                    if j < O:
                        v = acc[r, c]
                        if not fresh:
                            v += dW[block, _u(k), _u(j)]
                        dW[block, _u(k), _u(j)] = v

    @device_function
    def previous_delta(D, W, acc, a, w, tx, ty):
        """acc[r, c] = sum_j D[ty + 4 r, j] * W[tx + 32 c, j] (rows past W's are 0)."""
        clear(acc)
        I, O = W.shape
        j = 0
        while j < O:
            for r in range(TM):
                a[r] = D[_u(ty + r * ROW_THREADS), _u(j)]
            for c in range(TN):
                k = tx + c * WARP
                w[c] = W[_u(k), _u(j)] if k < I else zero
            for r in range(TM):
                for c in range(TN):
                    acc[r, c] += a[r] * w[c]
            j += 1

    @device_function
    def store_delta(acc, D, I, tx, ty):
        """D[ty + 4 r, tx + 32 c] = acc[r, c] in D's first I columns."""
        for r in range(TM):
            for c in range(TN):
                k = tx + c * WARP
                if k < I:
                    D[_u(ty + r * ROW_THREADS), _u(k)] = acc[r, c]

    @device_function
    def scale_delta(D, Y, code, row0, t):
        """D[m, k] *= act'(Y[row0 + m, k]) in the batch's rows (a flat loop, as activate_tile)."""
        N, I = Y.shape
        for e in range(t, min(TILE_ROWS, N - row0) * I, THREADS):
            m, k = e // I, e % I
            D[_u(m), _u(k)] *= derivative(code, Y[_u(row0 + m), _u(k)])

    @cuda.jit
    def fused_mlp_backward_kernel(X, weights, outputs, codes, dP, dW_parts, db_parts):
        """dW_parts[l][b] and db_parts[l][b]: block b's sums over its tiles of layer l's gradients.

        X (N, K); weights[l] (I_l, O_l); outputs[l] (N, O_l) from the forward
        kernel; codes[l] the hidden activations; dP (N, C) the output gradient;
        dW_parts[l] (B, I_l, O_l), db_parts[l] (B, O_l) with B = gridDim.x.
        """
        D = cuda.shared.array((TILE_ROWS, ROW_STRIDE), element)
        S = cuda.shared.array((TILE_ROWS, SLAB_STRIDE), element)
        acc = cuda.local.array((TM, TN), element)
        a = cuda.local.array(TM, element)
        w = cuda.local.array(TN, element)
        t = cuda.threadIdx.x
        tx, ty = t % WARP, t // WARP
        block = cuda.blockIdx.x
        N = X.shape[0]
        L = len(weights)
        first_row = block * TILE_ROWS
        for row0 in range(first_row, N, cuda.gridDim.x * TILE_ROWS):
            fresh = row0 == first_row
            rows = min(TILE_ROWS, N - row0)
            load_delta(dP, D, row0, t)
            cuda.syncthreads()
            for step in range(L):
                layer = L - 1 - step
                W = weights[layer]
                A = X if layer == 0 else outputs[layer - 1]
                bias_partial(D, db_parts[layer], block, rows, fresh, t)
                dW = dW_parts[layer]
                for k0 in range(0, W.shape[0], SLAB):
                    stage(A, S, row0, k0, t)
                    cuda.syncthreads()
                    weight_partial(S, D, acc, a, w, rows, W.shape[1], tx, ty)
                    store_weight_partial(acc, dW, block, k0, fresh, tx, ty)
                    cuda.syncthreads()  # S is read before the next slab
                if layer > 0:
                    previous_delta(D, W, acc, a, w, tx, ty)
                    cuda.syncthreads()  # every thread has read D before it is overwritten
                    store_delta(acc, D, W.shape[0], tx, ty)
                    cuda.syncthreads()
                    scale_delta(D, A, codes[layer - 1], row0, t)
                    cuda.syncthreads()

    return fused_mlp_backward_kernel


@functools.cache
def _reduce_kernel(dtype: Any) -> Any:
    zero = scalar(dtype)(0.0)

    @cuda.jit
    def fused_mlp_reduce_kernel(partials, blocks, sums):
        """sums[p][e] = sum over b < blocks, in order, of block b's partial of element e.

        partials holds, one array after the other, each sums[p]'s (blocks, n_p)
        partial sums, flat.
        """
        start, stride = cuda.grid(1), cuda.gridsize(1)
        base = 0
        for p in range(len(sums)):
            out = sums[p]
            n = out.size
            for e in range(start, n, stride):
                total = zero
                for b in range(blocks):
                    total += partials[_u(base + b * n + e)]
                out[_u(e)] = total
            base += blocks * n

    return fused_mlp_reduce_kernel


class Plan(NamedTuple):
    """The arguments of one stack's kernels for one batch size, made once and reused."""

    rows: int  # N
    weights: tuple[Any, ...]
    biases: tuple[Any, ...]
    codes: tuple[int, ...]
    outputs: tuple[Any, ...]  # hidden outputs (N, O_l), then P (N, C)
    dW_parts: tuple[Any, ...]  # (B, I_l, O_l): the gradients themselves when B == 1
    db_parts: tuple[Any, ...]  # (B, O_l)
    partials: Any  # the flat scratch behind dW_parts and db_parts, None when B == 1
    reduce_sums: tuple[Any, ...]  # the gradients, flat
    forward_blocks: int
    backward_blocks: int
    reduce_grid: tuple[int, int]
    scale: Any  # 1 / N in the dtype


def plan(
    N: int,
    weights: Sequence[Any],
    biases: Sequence[Any],
    weight_grads: Sequence[Any],
    bias_grads: Sequence[Any],
    activations: Sequence[str],
    outputs: Sequence[Any],
) -> Plan:
    """The argument tuples of ``forward`` and ``backward`` for batches of ``N`` rows.

    Args:
        N: the batch size.
        weights, biases: each layer's ``(I_l, O_l)`` kernel and ``(O_l,)`` bias,
            C-contiguous float32 or float64 device arrays of one dtype.
        weight_grads, bias_grads: arrays of the same shapes for the gradients.
        activations: the ``L - 1`` hidden activations, names in ``ACTIVATION_CODES``.
        outputs: ``(N, O_l)`` device arrays for the hidden outputs, ``P`` last.

    The partial sums of more than one backward block are views of the reused
    scratch ``common.scratch("fused_mlp_partials")``.
    """
    dtype = weights[0].dtype
    tiles = -(-N // TILE_ROWS)
    B = max(1, min(tiles, MAX_PARTIALS))  # an empty batch launches nothing (forward, backward)
    if B == 1:
        dW_parts = tuple(g.reshape(1, *g.shape) for g in weight_grads)
        db_parts = tuple(g.reshape(1, g.shape[0]) for g in bias_grads)
        buffer = None
    else:
        sizes = [g.size for g in (*weight_grads, *bias_grads)]
        buffer = scratch("fused_mlp_partials", B * sum(sizes), dtype)
        flat, start = [], 0
        for size in sizes:
            flat.append(buffer[start : start + B * size].reshape(B, size))
            start += B * size
        L = len(weights)
        dW_parts = tuple(p.reshape(B, *g.shape) for p, g in zip(flat[:L], weight_grads))
        db_parts = tuple(flat[L:])
    reduce_sums = tuple(g.reshape(g.size) for g in (*weight_grads, *bias_grads))
    return Plan(
        rows=N,
        weights=tuple(weights),
        biases=tuple(biases),
        codes=(*(ACTIVATION_CODES[name] for name in activations), _LINEAR),
        outputs=tuple(outputs),
        dW_parts=dW_parts,
        db_parts=db_parts,
        partials=buffer,
        reduce_sums=reduce_sums,
        forward_blocks=min(tiles, MAX_BLOCKS),
        backward_blocks=B,
        reduce_grid=grid_for(max(g.size for g in reduce_sums)),
        scale=scalar(dtype)(1.0 / N if N else 0.0),
    )


def forward(plan: Plan, X: Any, Y_true: Any, per_sample: Any, dP: Any) -> None:
    """Forward pass, softmax, per-sample cross-entropy and output gradient of a stack.

    Args:
        plan: from ``plan`` for ``N = X.shape[0]``; ``plan.outputs`` receive the
            hidden outputs and ``P``.
        X: C-contiguous device array ``(N, K)`` of the weights' dtype.
        Y_true: one-hot targets ``(N, C)`` of that dtype, or int64 labels ``(N,)``.
        per_sample: float64 device array ``(N,)``: each row's cross-entropy.
        dP: device array ``(N, C)``: ``(P - Y) / N``.
    """
    if plan.rows == 0:  # no empty grid
        return
    kernel = _forward_kernel(X.dtype, Y_true.ndim == 1)
    launch(
        kernel,
        (plan.forward_blocks, THREADS),
        X,
        plan.weights,
        plan.biases,
        plan.codes,
        plan.outputs,
        Y_true,
        plan.scale,
        per_sample,
        dP,
    )


def backward(plan: Plan, X: Any, dP: Any) -> None:
    """Every layer's weight and bias gradient from the output gradient ``dP``.

    Args:
        plan: the ``plan`` whose ``forward`` ran last on ``X``; its gradient
            arrays receive the gradients of the batch-mean loss.
        X: C-contiguous device array ``(N, K)``, the batch.
        dP: device array ``(N, C)``, ``(P - Y) / N`` from ``forward``.
    """
    if plan.rows == 0:  # no empty grid
        return
    kernel = _backward_kernel(X.dtype)
    launch(
        kernel,
        (plan.backward_blocks, THREADS),
        X,
        plan.weights,
        plan.outputs,
        plan.codes,
        dP,
        plan.dW_parts,
        plan.db_parts,
    )
    if plan.partials is not None:
        reduce = _reduce_kernel(X.dtype)
        blocks, threads = plan.reduce_grid
        launch(reduce, (blocks, threads), plan.partials, plan.backward_blocks, plan.reduce_sums)


def ptx_variants() -> Iterator[PtxVariant]:
    """The three kernels for 1 to 3 layers, each dtype (and both label kinds for forward)."""
    for dtype in FLOAT_DTYPES:
        short = dtype.name.replace("float", "f")
        rows, flat, flat64 = array(dtype, 2), array(dtype, 1), array(np.float64, 1)
        for L in (1, 2, 3):
            matrices, vectors = types.UniTuple(rows, L), types.UniTuple(flat, L)
            codes = types.UniTuple(types.int64, L)
            for sparse, targets in ((False, rows), (True, array(np.int64, 1))):
                kind = "labels" if sparse else "onehot"
                yield (
                    f"forward[{L},{kind},{short}]",
                    _forward_kernel(dtype, sparse),
                    (
                        rows,
                        matrices,
                        vectors,
                        codes,
                        matrices,
                        targets,
                        numba_type(dtype),
                        flat64,
                        rows,
                    ),
                )
            parts = types.UniTuple(array(dtype, 3), L)
            yield (
                f"backward[{L},{short}]",
                _backward_kernel(dtype),
                (rows, matrices, matrices, codes, rows, parts, matrices),
            )
            yield (
                f"reduce[{L},{short}]",
                _reduce_kernel(dtype),
                (flat, types.int64, types.UniTuple(flat, 2 * L)),
            )
