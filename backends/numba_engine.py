"""The Numba engine: every operation is a hand-written CUDA kernel from ``dlcore.kernels``.

Arrays are Numba device arrays and stay on the GPU for the whole of ``fit``:
the training set is copied once when it fits in free device memory (else its
batches are copied as they are needed), and per batch only scalars come back.
Scalar results (losses, penalties, accuracy counts) are written into slots of
a device buffer, so reading all of an epoch's scalars is one transfer.

A training step allocates no device memory after the first batches: operations
given a ``Workspace`` take their outputs and temporaries from it, the kernels'
scratch is reused (``kernels.common.scratch``), and the results of operations
that take no workspace (activation and dropout layers, loss gradients) come from
memory the engine recycles once the array returned is no longer referenced
(``_recycled``). Every ``cuda.device_array`` freed would be released by a
``cuMemFree`` every few frees, which synchronizes the device.

Everything runs on one non-default CUDA stream, ``engine.stream`` (the kernels'
``kernels.common.stream()``): every kernel, and every host transfer the engine makes
(``asarray``, batches copied from host memory, ``to_numpy``, ``scalars_to_numpy``),
which waits for the stream before it returns data. Being one ordered queue is what
lets the scratch buffers and recycled memory be reused without synchronizing. CuPy
code can share it: ``engine.use_stream(cupy_stream)`` makes the kernels launch on a
CuPy stream, and ``cupy.cuda.ExternalStream(int(engine.stream))`` gives CuPy the
engine's.

Without a GPU the engine runs in Numba's CUDA simulator when
``NUMBA_ENABLE_CUDASIM=1`` is set before Numba is imported: slowly, one
operating-system thread per CUDA thread, which is how the kernels are tested
on machines without a GPU.
"""

from __future__ import annotations

import importlib.util
import os
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from . import custom
from .base import Array, CapturedStep, Engine, Workspace

_INSTALL = 'install it with: pip install "dlcore[numba]"'
_SIMULATOR_HINT = (
    "to run the numba kernels without a GPU, in Numba's CUDA simulator (slow, for "
    "testing), set NUMBA_ENABLE_CUDASIM=1 in the environment before starting Python"
)

#: the dtypes whose device arrays the kernels read as they are (``from_external``)
_EXTERNAL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.int64))
# Scalars (losses, counts) are written into slots of one float64 device buffer;
# 65536 slots (512 KiB) hold a long epoch's worth before a new buffer is started.
SCALAR_SLOTS = 65536

# The training set is copied to the device whole when it takes at most this
# fraction of the free device memory; the rest is left for weights and workspaces.
DEVICE_DATA_FRACTION = 0.5

# Arrays smaller than this always go to the device without asking the driver.
SMALL_ARRAY_BYTES = 1 << 20


def _simulated() -> bool:
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


class DeviceScalar:
    """A 0-d engine array: one float64 slot of a device scalar buffer.

    ``dtype`` is the dtype the value is reported in by ``to_numpy``.
    """

    __slots__ = ("buffer", "slot", "dtype")
    shape: tuple[int, ...] = ()
    ndim = 0

    def __init__(self, buffer: Any, slot: int, dtype: np.dtype) -> None:
        self.buffer = buffer
        self.slot = slot
        self.dtype = dtype

    def __repr__(self) -> str:
        return f"DeviceScalar(slot={self.slot}, dtype={self.dtype})"


class HostRows:
    """A data set left in host memory because it does not fit on the device.

    ``slice_rows`` and ``take_rows`` copy the requested batch to the device.
    """

    def __init__(self, host: np.ndarray) -> None:
        self.host = host
        self.shape = host.shape
        self.dtype = host.dtype
        self.ndim = host.ndim


class NumbaEngine(Engine):
    """Runs every operation as a Numba CUDA kernel on the current CUDA device."""

    name = "numba"
    runs_custom_functions = False

    def __init__(self) -> None:
        from dlcore.kernels import (
            activations,
            common,
            dense_backward,
            dropout,
            gemm,
            losses,
            memory,
            merges,
            metrics,
            normalization,
            optimizers,
            prelu,
            reductions,
            softmax,
        )
        from numba import cuda

        self._cuda = cuda
        self._array_types: tuple[type, ...] | None = None
        self._random_rows: tuple[int, int | None] = (0, None)
        self._whole_batch_buffers: dict[tuple[tuple[int, ...], str], tuple[Array, ...]] = {}
        self._k_common = common
        self._k_activations = activations
        self._k_dense_backward = dense_backward
        self._k_dropout = dropout
        self._k_gemm = gemm
        self._k_losses = losses
        self._k_memory = memory
        self._k_merges = merges
        self._k_metrics = metrics
        self._k_normalization = normalization
        self._k_optimizers = optimizers
        self._k_prelu = prelu
        self._k_reductions = reductions
        self._k_softmax = softmax
        self._scalar_buffer = cuda.device_array(SCALAR_SLOTS, dtype=np.float64)
        self._next_slot = 0
        # device arrays whose last user is gone, by (shape, dtype), for _recycled
        self._free: dict[tuple[tuple[int, ...], str], list[Any]] = {}
        self._seed: int | None = None
        self._generator: Any = None
        self._device = _device_name(cuda)
        # None: arrays larger than DEVICE_DATA_FRACTION of the free device memory stay
        # on the host; a number of bytes sets that limit instead.
        self.device_data_limit: int | None = None
        # the CaptureLog of the step being captured as a graph (numba_graphs.py), else None
        self._step_capture: Any = None

    # ------------------------------------------------------------------ availability
    @classmethod
    def availability(cls) -> tuple[bool, str]:
        if importlib.util.find_spec("numba") is None:
            return False, f"Numba is not installed; {_INSTALL}"
        try:
            from numba import cuda
        except Exception as error:  # a broken CUDA toolkit must not break the registry
            return False, f"numba.cuda cannot be imported ({error}); {_INSTALL}"
        if _simulated():
            return True, "CUDA simulator on the CPU (NUMBA_ENABLE_CUDASIM=1)"
        try:
            present = cuda.is_available()
        except Exception:
            present = False
        if not present:
            return False, f"no CUDA GPU or driver was found; {_SIMULATOR_HINT}"
        return True, _device_name(cuda)

    @classmethod
    def simulated(cls) -> bool:
        return _simulated()

    # ------------------------------------------------------------------ memory
    @property
    def device(self) -> str:
        return self._device

    def supports_dtype(self, dtype: str) -> bool:
        # float16: a mixed-precision layer's operations, loaded as float16 and computed in
        # float32 by the kernels; losses, metrics and optimizers run in the model's dtype
        return dtype in ("float16", "float32", "float64")

    @property
    def stream(self) -> Any:
        """The ``numba.cuda`` stream every kernel and transfer of the engine is queued on."""
        return self._k_common.stream()

    def use_stream(self, stream: Any) -> None:
        """Queue the engine's work on ``stream`` from now on, after the work already queued.

        ``stream`` is a ``numba.cuda`` stream or another library's stream with a ``ptr``
        (a ``cupy.cuda.Stream``, which the caller keeps alive), wrapped by
        ``numba.cuda.external_stream``.
        """
        if hasattr(stream, "ptr") and not hasattr(stream, "handle"):
            stream = self._cuda.external_stream(stream.ptr)
        self._k_common.use_stream(stream)

    def asarray(self, data: np.ndarray, *, dtype: str) -> Array:
        host = np.ascontiguousarray(data, dtype=dtype)
        if not self._fits_on_device(host.nbytes):
            return HostRows(host)
        return self._cuda.to_device(host, stream=self.stream)

    def from_external(self, data: Any) -> Array | None:
        A: Any
        if isinstance(data, self._device_array_types()):
            A = data  # one of the engine's own arrays
        else:
            as_cuda_array = getattr(self._cuda, "as_cuda_array", None)  # the simulator lacks it
            if as_cuda_array is None or not hasattr(data, "__cuda_array_interface__"):
                return None
            try:
                # a view of the producer's memory; synchronises with the stream it names
                A = as_cuda_array(data)
            except (TypeError, ValueError, NotImplementedError):
                return None
        if A.dtype not in _EXTERNAL_DTYPES or not A.is_c_contiguous():
            return None
        return A

    def _device_array_types(self) -> tuple[type, ...]:
        """The classes of this engine's device arrays (the simulator has its own)."""
        if self._array_types is None:
            self._array_types = (type(self._cuda.device_array(1, dtype=np.float32)),)
        return self._array_types

    def count_outside(self, A: Array, low: float, high: float, *, whole: bool = False) -> int:
        if A.dtype.kind == "i":
            mapping = "outside"
        else:
            largest = float(np.finfo(A.dtype).max)  # so that infinities count as outside
            low, high = max(low, -largest), min(high, largest)
            mapping = "outside_whole" if whole else "outside"
        scalar, out = self._new_scalar(np.float64)
        self._k_reductions.map_sum(mapping, A, A, out, c1=low, c2=high)
        return int(self.scalars_to_numpy([scalar])[0])

    def to_numpy(self, A: Array) -> np.ndarray:
        if isinstance(A, HostRows):
            return A.host.copy()
        stream = self.stream
        if isinstance(A, DeviceScalar):
            value = A.buffer[A.slot : A.slot + 1].copy_to_host(stream=stream)
            stream.synchronize()
            return np.asarray(value[0], dtype=A.dtype)
        host = A.copy_to_host(stream=stream)
        stream.synchronize()
        return host

    def zeros(self, shape: tuple[int, ...], *, dtype: str) -> Array:
        A = self._empty(shape, dtype)
        self._k_memory.fill(A, 0.0)
        return A

    def synchronize(self) -> None:
        self.stream.synchronize()

    def split_views(self, flat: Array, shapes: Sequence[tuple[int, ...]]) -> list[Array]:
        views = []
        start = 0
        for shape in shapes:
            size = int(np.prod(shape, dtype=np.int64))
            views.append(flat[start : start + size].reshape(tuple(shape)))
            start += size
        return views

    def assign(self, dst: Array, src: Array) -> None:
        self._k_memory.copy(src, dst)

    def cast(self, A: Array, dtype: str, *, out: Array | None = None) -> Array:
        if out is None:
            out = self._recycled(A.shape, dtype)
        self._k_memory.copy(A, out)  # the copy kernel converts as it stores
        return out

    def slice_rows(self, A: Array, start: int, stop: int) -> Array:
        if isinstance(A, HostRows):
            return self._cuda.to_device(A.host[start:stop], stream=self.stream)
        return A[start:stop]

    def take_rows(self, A: Array, indices: Array, *, out: Array | None = None) -> Array:
        if isinstance(A, HostRows):
            rows = A.host[self._host_indices(indices)]
            if out is None:
                return self._cuda.to_device(rows, stream=self.stream)
            out.copy_to_device(rows, stream=self.stream)
            return out
        if out is None:
            out = self._empty((indices.shape[0], *A.shape[1:]), A.dtype)
        self._k_memory.take_rows(A, indices, out)
        return out

    def seed(self, seed: int) -> None:
        # The generator's states are created at the first dropout, not for every fit.
        self._seed = seed
        self._generator = None

    def set_random_rows(self, offset: int, total: int | None) -> None:
        self._random_rows = (int(offset), None if total is None else int(total))

    def _whole_batch(self, X: Array) -> tuple[Array, Array, Array, slice] | None:
        """When ``set_random_rows`` gave a batch larger than ``X``: zeros of the whole
        batch's shape to draw with, two arrays of that shape for what a kernel writes, and
        ``X``'s rows of them; else ``None``. The arrays are kept per shape, so that the
        steps after the first allocate nothing."""
        offset, total = self._random_rows
        if total is None or X.ndim == 0:
            return None
        shape = (total, *X.shape[1:])
        key = (shape, X.dtype.name)
        buffers = self._whole_batch_buffers.get(key)
        if buffers is None:
            buffers = self._whole_batch_buffers[key] = (
                self.zeros(shape, dtype=X.dtype.name),
                self._empty(shape, X.dtype),
                self._empty(shape, X.dtype),
            )
        return (*buffers, slice(offset, offset + X.shape[0]))

    def _own_rows(self, A: Array, rows: slice, like: Array) -> Array:
        """``A[rows]`` copied into an array of its own (``A`` is reused by the next draw)."""
        out = self._recycled(like.shape, like.dtype)
        self.assign(out, A[rows])
        return out

    def scalars_to_numpy(self, values: Sequence[Array]) -> np.ndarray:
        result = np.empty(len(values))
        by_buffer: dict[int, list[int]] = {}
        for i, value in enumerate(values):
            by_buffer.setdefault(id(value.buffer), []).append(i)
        stream = self.stream
        copies = []
        for positions in by_buffer.values():
            buffer = values[positions[0]].buffer
            slots = [values[i].slot for i in positions]
            low = min(slots)
            copies.append(
                (positions, slots, low, buffer[low : max(slots) + 1].copy_to_host(stream=stream))
            )
        stream.synchronize()
        for positions, slots, low, host in copies:
            result[positions] = host[np.asarray(slots) - low]
        return result

    # ------------------------------------------------------------------ dense layers
    def gemm(self, A: Array, B: Array, *, trans_a: bool = False, trans_b: bool = False) -> Array:
        M = A.shape[1] if trans_a else A.shape[0]
        N = B.shape[0] if trans_b else B.shape[1]
        C = self._recycled((M, N), A.dtype)
        self._k_gemm.gemm(A, B, C, trans_a=trans_a, trans_b=trans_b)
        return C

    def dense_forward(
        self,
        X: Array,
        W: Array,
        b: Array | None,
        activation: str,
        *,
        workspace: Workspace | None = None,
        product_dtype: str | None = None,
    ) -> tuple[Array, Array]:
        self.refuse_product_dtype(product_dtype)
        custom.refuse(self.name, custom.ACTIVATIONS, activation)
        shape = (X.shape[0], W.shape[1])
        Z = self._output(workspace, "Z", shape, X.dtype)
        if activation == "linear":
            self._k_gemm.dense_forward(X, W, b, "linear", Z, Z)
            return Z, Z
        Y = self._output(workspace, "Y", shape, X.dtype)
        if activation == "softmax":
            self._k_gemm.dense_forward(X, W, b, "linear", Z, Z)
            self._k_softmax.softmax(Z, Y)
        else:
            self._k_gemm.dense_forward(X, W, b, activation, Z, Y)
        return Z, Y

    def dense_backward(
        self,
        dY: Array,
        X: Array,
        W: Array,
        Z: Array,
        Y: Array,
        activation: str,
        *,
        dW: Array | None,
        db: Array | None,
        need_dX: bool = True,
        workspace: Workspace | None = None,
        product_dtype: str | None = None,
    ) -> Array | None:
        self.refuse_product_dtype(product_dtype)
        if dW is None and not need_dX:
            return None
        if activation == "linear":
            dZ = dY
            if db is not None:
                self._k_dense_backward.column_sums(dY, db)
        else:
            custom.refuse(self.name, custom.ACTIVATIONS, activation)
            dZ = self._output(workspace, "dZ", dY.shape, dY.dtype)
            if activation == "softmax":
                self._k_dense_backward.softmax_gradient_and_bias(dY, Y, dZ, db)
            else:
                self._k_dense_backward.activation_gradient_and_bias(activation, dY, Z, dZ, db)
        if dW is not None:
            self._k_gemm.gemm(X, dZ, dW, trans_a=True)
        if not need_dX:
            return None
        dX = self._output(workspace, "dX", X.shape, X.dtype)
        self._k_gemm.gemm(dZ, W, dX, trans_b=True)
        return dX

    def dense_stack_step(
        self,
        X: Array,
        Y_true: Array,
        weights: Sequence[Array],
        biases: Sequence[Array],
        weight_grads: Sequence[Array],
        bias_grads: Sequence[Array],
        activations: Sequence[str],
        *,
        workspaces: Sequence[Workspace],
        product_dtypes: Sequence[str | None] | None = None,
    ) -> tuple[Array, Array]:
        for product_dtype in product_dtypes or ():
            self.refuse_product_dtype(product_dtype)
        # Stacks of widths up to 128: two or three kernels (backends/numba_fused.py).
        from . import numba_fused

        arguments = (X, Y_true, weights, biases, weight_grads, bias_grads, activations)
        step = numba_fused.prepare(*arguments, workspaces)
        if step is None:
            return super().dense_stack_step(*arguments, workspaces=workspaces)
        loss, out = self._new_scalar(X.dtype)
        return loss, numba_fused.run(step, X, Y_true, out)

    # ------------------------------------------------------------------ activations
    def activation(self, name: str, Z: Array) -> Array:
        if name == "linear":
            return Z
        custom.refuse(self.name, custom.ACTIVATIONS, name)
        Y = self._recycled(Z.shape, Z.dtype)
        if name == "softmax":
            self._k_softmax.softmax(Z, Y)
        else:
            self._k_activations.forward(name, Z, Y)
        return Y

    def backprop_activation(self, name: str, dY: Array, Z: Array, Y: Array) -> Array:
        if name == "linear":
            return dY
        custom.refuse(self.name, custom.ACTIVATIONS, name)
        dZ = self._recycled(dY.shape, dY.dtype)
        if name == "softmax":
            self._k_softmax.softmax_backward(dY, Y, dZ)
        else:
            self._k_activations.backward(name, dY, Z, dZ)
        return dZ

    def prelu(self, X: Array, alpha: Array) -> Array:
        Y = self._recycled(X.shape, X.dtype)
        self._k_prelu.prelu_forward(X, alpha, Y)
        return Y

    def backprop_prelu(self, dY: Array, X: Array, alpha: Array, *, dalpha: Array | None) -> Array:
        dX = self._recycled(X.shape, X.dtype)
        self._k_prelu.prelu_backward(dY, X, alpha, dX, dalpha)
        return dX

    # ------------------------------------------------------------------ normalization
    # Outputs are named "norm_*" in a workspace, apart from the layers' other arrays.
    def batch_moments(self, X: Array, *, workspace: Workspace | None = None) -> tuple[Array, Array]:
        F = X.shape[1]
        mean = self._output(workspace, "norm_mean", (F,), X.dtype)
        variance = self._output(workspace, "norm_variance", (F,), X.dtype)
        self._k_normalization.batch_moments(X, mean, variance)
        return mean, variance

    def batch_normalize(
        self,
        X: Array,
        mean: Array,
        variance: Array,
        gamma: Array | None,
        beta: Array | None,
        *,
        epsilon: float,
        workspace: Workspace | None = None,
    ) -> tuple[Array, Array]:
        Y = self._output(workspace, "norm_Y", X.shape, X.dtype)
        Xhat = self._output(workspace, "norm_Xhat", X.shape, X.dtype)
        self._k_normalization.batch_normalize(X, mean, variance, gamma, beta, epsilon, Y, Xhat)
        return Y, Xhat

    def backprop_batch_normalize(
        self,
        dY: Array,
        Xhat: Array,
        variance: Array,
        gamma: Array | None,
        *,
        epsilon: float,
        batch_statistics: bool,
        dgamma: Array | None,
        dbeta: Array | None,
        need_dX: bool = True,
        workspace: Workspace | None = None,
    ) -> Array | None:
        F = dY.shape[1]
        if (dgamma is None) != (dbeta is None):  # the kernel writes both or neither
            if dgamma is None:
                dgamma = self._output(workspace, "norm_dgamma", (F,), dY.dtype)
            if dbeta is None:
                dbeta = self._output(workspace, "norm_dbeta", (F,), dY.dtype)
        dX = self._output(workspace, "norm_dX", dY.shape, dY.dtype) if need_dX else None
        self._k_normalization.batch_normalize_backward(
            dY, Xhat, variance, gamma, epsilon, batch_statistics, dgamma, dbeta, dX
        )
        return dX

    def update_moving_average(self, moving: Array, value: Array, momentum: float) -> None:
        self._k_normalization.moving_average(moving, value, momentum)

    def layer_normalize(
        self,
        X: Array,
        gamma: Array | None,
        beta: Array | None,
        *,
        epsilon: float,
        workspace: Workspace | None = None,
    ) -> tuple[Array, Array, Array]:
        Y = self._output(workspace, "norm_Y", X.shape, X.dtype)
        Xhat = self._output(workspace, "norm_Xhat", X.shape, X.dtype)
        inv_std = self._output(workspace, "norm_inv_std", (X.shape[0],), X.dtype)
        self._k_normalization.layer_normalize(X, gamma, beta, epsilon, Y, Xhat, inv_std)
        return Y, Xhat, inv_std

    def backprop_layer_normalize(
        self,
        dY: Array,
        Xhat: Array,
        inv_std: Array,
        gamma: Array | None,
        *,
        dgamma: Array | None,
        dbeta: Array | None,
        need_dX: bool = True,
        workspace: Workspace | None = None,
    ) -> Array | None:
        F = dY.shape[1]
        if dgamma is not None or dbeta is not None:
            if dgamma is None:
                dgamma = self._output(workspace, "norm_dgamma", (F,), dY.dtype)
            if dbeta is None:
                dbeta = self._output(workspace, "norm_dbeta", (F,), dY.dtype)
            self._k_normalization.column_moment_sums(dY, Xhat, dgamma, dbeta)
        if not need_dX:
            return None
        dX = self._output(workspace, "norm_dX", dY.shape, dY.dtype)
        self._k_normalization.layer_normalize_backward(dY, Xhat, inv_std, gamma, dX)
        return dX

    def standardize(
        self,
        X: Array,
        mean: Array | None,
        variance: Array,
        *,
        invert: bool,
        workspace: Workspace | None = None,
    ) -> Array:
        Y = self._output(workspace, "norm_standardized", X.shape, X.dtype)
        self._k_normalization.standardize(X, mean, variance, invert, Y)
        return Y

    # ------------------------------------------------------------------ merges
    # Outputs are named "merge_*" in a workspace, apart from the layers' other arrays.
    def merge(
        self, op: str, inputs: Sequence[Array], *, workspace: Workspace | None = None
    ) -> Array:
        N, width = inputs[0].shape
        if op == "concatenate":
            width = sum(X.shape[1] for X in inputs)
        Y = self._output(workspace, "merge_Y", (N, width), inputs[0].dtype)
        self._k_merges.merge(op, inputs, Y)
        return Y

    def backprop_merge(
        self,
        op: str,
        dY: Array,
        inputs: Sequence[Array],
        Y: Array,
        *,
        workspace: Workspace | None = None,
    ) -> list[Array]:
        grads = [
            self._output(workspace, f"merge_d{i}", X.shape, X.dtype) for i, X in enumerate(inputs)
        ]
        self._k_merges.merge_backward(op, dY, inputs, Y, grads)
        return grads

    def accumulate(self, dst: Array, src: Array) -> None:
        self._k_merges.accumulate(dst, src)

    def scale(self, A: Array, factor: float, *, workspace: Workspace | None = None) -> Array:
        out = self._output(workspace, "scaled", A.shape, A.dtype)
        self._k_merges.scale(A, factor, out)
        return out

    # ------------------------------------------------------------------ losses
    def loss(
        self,
        name: str,
        Y_pred: Array,
        Y_true: Array,
        *,
        from_logits: bool = False,
        workspace: Workspace | None = None,
    ) -> Array:
        custom.refuse(self.name, custom.PER_SAMPLE, name)
        scalar, out = self._new_scalar(Y_pred.dtype)
        per_sample = None
        if workspace is not None:
            per_sample = workspace.array("loss_per_sample", (Y_pred.shape[0],), "float64")
        self._k_losses.loss(
            name, Y_pred, Y_true, out, from_logits=from_logits, per_sample=per_sample
        )
        return scalar

    def per_sample_loss(
        self,
        name: str,
        Y_pred: Array,
        Y_true: Array,
        *,
        from_logits: bool = False,
        workspace: Workspace | None = None,
    ) -> Array:
        custom.refuse(self.name, custom.PER_SAMPLE, name)
        shape = (Y_pred.shape[0],)
        values = self._output(workspace, "loss_per_sample_values", shape, "float64")
        self._k_losses.per_sample_values(name, Y_pred, Y_true, values, from_logits=from_logits)
        return values

    def weighted_sum(
        self, values: Array, weights: Array | None = None, *, scale: float = 1.0
    ) -> Array:
        scalar, out = self._new_scalar(values.dtype)
        if weights is None:
            self._k_reductions.map_sum("sum", values, values, out, scale=scale)
        else:
            self._k_reductions.map_sum("product", values, weights, out, scale=scale)
        return scalar

    def scale_rows(self, A: Array, w: Array, *, workspace: Workspace | None = None) -> Array:
        out = self._output(workspace, "rows_scaled", A.shape, A.dtype)
        self._k_merges.scale_rows(A, w, out)
        return out

    def backprop_loss(
        self, name: str, Y_pred: Array, Y_true: Array, *, from_logits: bool = False
    ) -> Array:
        custom.refuse(self.name, custom.PER_SAMPLE, name)
        dP = self._recycled(Y_pred.shape, Y_pred.dtype)
        self._k_losses.loss_gradient(name, Y_pred, Y_true, dP, from_logits=from_logits)
        return dP

    def backprop_softmax_crossentropy(
        self, P: Array, Y_true: Array, *, workspace: Workspace | None = None
    ) -> Array:
        dZ = self._output(workspace, "dP", P.shape, P.dtype)
        self._k_softmax.softmax_crossentropy_gradient(P, Y_true, dZ)
        return dZ

    def softmax_crossentropy_batch(
        self,
        P: Array,
        Y_true: Array,
        *,
        with_count: bool = False,
        workspace: Workspace | None = None,
    ) -> tuple[Array, Array | None, Array]:
        # The scalars take their slots in the order of the default's three operations.
        loss, loss_out = self._new_scalar(P.dtype)
        correct, count_out = self._new_scalar(P.dtype) if with_count else (None, None)
        dZ = self._output(workspace, "dP", P.shape, P.dtype)
        per_sample = hits = None
        if workspace is not None:
            rows = (P.shape[0],)
            per_sample = workspace.array("loss_per_sample", rows, "float64")
            hits = workspace.array("row_hits", rows, "float64") if with_count else None
        self._k_losses.softmax_crossentropy_batch(
            P, Y_true, dZ, loss_out, count_out, per_sample=per_sample, hits=hits
        )
        return loss, correct, dZ

    def backprop_sigmoid_crossentropy(self, P: Array, Y_true: Array) -> Array:
        dZ = self._recycled(P.shape, P.dtype)
        self._k_softmax.sigmoid_crossentropy_gradient(P, Y_true, dZ)
        return dZ

    # ------------------------------------------------------------------ regularization
    def penalty(self, W: Array, *, l1: float, l2: float) -> Array:
        scalar, out = self._new_scalar(W.dtype)
        self._k_reductions.penalty(W, out, l1=l1, l2=l2)
        return scalar

    def backprop_penalty(self, W: Array, dW: Array, *, l1: float, l2: float) -> None:
        self._k_reductions.backprop_penalty(W, dW, l1=l1, l2=l2)

    # ------------------------------------------------------------------ optimizers
    def optimizer_step(
        self,
        rule: str,
        params: Array,
        grads: Array,
        slots: Sequence[Array | None],
        hyperparameters: Mapping[str, float],
    ) -> None:
        self._k_optimizers.LAUNCHERS[rule](params, grads, slots, hyperparameters)

    def gradient_norm_scale(
        self,
        grads: Array,
        segments: Sequence[tuple[int, int]],
        clipnorm: float,
        out: Array,
        *,
        each: bool = False,
    ) -> None:
        self._k_optimizers.gradient_norm_scale(grads, segments, clipnorm, out, each=each)

    def clip_and_decay(
        self,
        params: Array,
        grads: Array,
        out: Array | None,
        *,
        scale: Array | None = None,
        clipvalue: float | None = None,
        decay: float = 0.0,
    ) -> None:
        self._k_optimizers.clip_and_decay(
            params, grads, out, scale=scale, clipvalue=clipvalue, decay=decay
        )

    def moving_average(self, average: Array, values: Array, momentum: float) -> None:
        self._k_optimizers.moving_average(average, values, momentum)

    # ------------------------------------------------------------------ dropout, metrics
    def dropout(self, X: Array, *, rate: float) -> tuple[Array, Array]:
        if self._generator is None:
            seed = self._seed
            if seed is None:  # no seed given: as unpredictable as NumPy's default generator
                seed = int(np.random.default_rng().integers(2**63 - 1))
            self._generator = self._k_dropout.DropoutGenerator(seed % 2**63)
        whole = self._whole_batch(X)
        if whole is not None:  # this process's rows of the whole batch's mask
            zeros, drawn, mask_all, rows = whole
            self._k_dropout.dropout(self._generator, zeros, drawn, mask_all, rate=rate)
            mask = self._own_rows(mask_all, rows, X)
            return self.backprop_dropout(X, mask), mask
        Y = self._recycled(X.shape, X.dtype)
        mask = self._recycled(X.shape, X.dtype)
        self._k_dropout.dropout(self._generator, X, Y, mask, rate=rate)
        return Y, mask

    def backprop_dropout(self, dY: Array, mask: Array) -> Array:
        dX = self._recycled(dY.shape, dY.dtype)
        self._k_dropout.backprop_dropout(dY, mask, dX)
        return dX

    # ------------------------------------------------------------------ parameterised
    # activations and noise (kernels/param_activations.py, kernels/noise.py)
    def _random_states(self) -> Any:
        """The device generators dropout draws from, created at the first draw."""
        if self._generator is None:
            seed = self._seed
            if seed is None:  # no seed given: as unpredictable as NumPy's default generator
                seed = int(np.random.default_rng().integers(2**63 - 1))
            self._generator = self._k_dropout.DropoutGenerator(seed % 2**63)
        return self._generator

    def relu_family(
        self, Z: Array, *, negative_slope: float, max_value: float | None, threshold: float
    ) -> Array:
        from dlcore.kernels import param_activations

        Y = self._recycled(Z.shape, Z.dtype)
        param_activations.relu_family(
            Z, Y, negative_slope=negative_slope, max_value=max_value, threshold=threshold
        )
        return Y

    def backprop_relu_family(
        self,
        dY: Array,
        Z: Array,
        *,
        negative_slope: float,
        max_value: float | None,
        threshold: float,
    ) -> Array:
        from dlcore.kernels import param_activations

        dZ = self._recycled(dY.shape, dY.dtype)
        param_activations.backprop_relu_family(
            dY, Z, dZ, negative_slope=negative_slope, max_value=max_value, threshold=threshold
        )
        return dZ

    def elu(self, Z: Array, *, alpha: float) -> Array:
        from dlcore.kernels import param_activations

        Y = self._recycled(Z.shape, Z.dtype)
        param_activations.elu(Z, Y, alpha=alpha)
        return Y

    def backprop_elu(self, dY: Array, Z: Array, *, alpha: float) -> Array:
        from dlcore.kernels import param_activations

        dZ = self._recycled(dY.shape, dY.dtype)
        param_activations.backprop_elu(dY, Z, dZ, alpha=alpha)
        return dZ

    def gaussian_noise(self, X: Array, *, stddev: float) -> Array:
        from dlcore.kernels import noise

        whole = self._whole_batch(X)
        if whole is not None:  # this process's rows of the whole batch's noise
            zeros, drawn, _, rows = whole
            noise.gaussian(
                self._random_states(), zeros, drawn, drawn, stddev=stddev, mode=noise.ADDITIVE
            )
            return self.merge("add", [X, drawn[rows]])
        Y = self._recycled(X.shape, X.dtype)
        noise.gaussian(self._random_states(), X, Y, Y, stddev=stddev, mode=noise.ADDITIVE)
        return Y

    def gaussian_dropout(self, X: Array, *, rate: float) -> tuple[Array, Array]:
        from dlcore.kernels import noise

        stddev = float(np.sqrt(rate / (1.0 - rate)))
        whole = self._whole_batch(X)
        if whole is not None:  # this process's rows of the whole batch's mask
            zeros, drawn, mask_all, rows = whole
            noise.gaussian(
                self._random_states(),
                zeros,
                drawn,
                mask_all,
                stddev=stddev,
                mode=noise.MULTIPLICATIVE,
            )
            mask = self._own_rows(mask_all, rows, X)
            return self.backprop_dropout(X, mask), mask
        Y = self._recycled(X.shape, X.dtype)
        mask = self._recycled(X.shape, X.dtype)
        noise.gaussian(self._random_states(), X, Y, mask, stddev=stddev, mode=noise.MULTIPLICATIVE)
        return Y, mask

    def alpha_dropout(
        self, X: Array, *, rate: float, noise_shape: tuple[int, int]
    ) -> tuple[Array, Array]:
        from dlcore.kernels import noise

        from .xp_activations import alpha_dropout_constants

        Y = self._recycled(X.shape, X.dtype)
        mask = self._recycled(X.shape, X.dtype)
        noise.alpha_dropout(
            self._random_states(),
            X,
            Y,
            mask,
            rate=rate,
            noise_shape=noise_shape,
            constants=alpha_dropout_constants(rate),
        )
        return Y, mask

    def count_correct(
        self,
        kind: str,
        Y_pred: Array,
        Y_true: Array,
        *,
        workspace: Workspace | None = None,
    ) -> Array:
        scalar, out = self._new_scalar(Y_pred.dtype)
        hits = None
        if workspace is not None and kind != "binary":
            hits = workspace.array("row_hits", (Y_pred.shape[0],), "float64")
        self._k_reductions.count_correct(kind, Y_pred, Y_true, out, hits=hits)
        return scalar

    def accuracy_values(
        self,
        kind: str,
        Y_pred: Array,
        Y_true: Array,
        *,
        k: int = 1,
        threshold: float = 0.5,
        workspace: Workspace | None = None,
    ) -> Array:
        values = self._output(workspace, "accuracy_values", (Y_pred.shape[0],), "float64")
        self._k_metrics.accuracy_values(kind, Y_pred, Y_true, values, k=k, threshold=threshold)
        return values

    def confusion_counts(
        self,
        Y_pred: Array,
        Y_true: Array,
        thresholds: Array,
        *,
        sample_weight: Array | None = None,
        per_label: bool = False,
        class_id: int | None = None,
        top_k: int | None = None,
        row_max: bool = False,
        workspace: Workspace | None = None,
    ) -> Array:
        labels = Y_pred.shape[1] if per_label and class_id is None else 1
        out = self._recycled((4, thresholds.shape[0], labels), np.float64)
        self._k_metrics.confusion_counts(
            Y_pred,
            Y_true,
            thresholds,
            thresholds if sample_weight is None else sample_weight,
            out,
            weighted=sample_weight is not None,
            per_label=per_label,
            class_id=class_id,
            top_k=top_k,
            row_max=row_max,
        )
        return out

    # ------------------------------------------------------------------ graphs
    def capture_step(self, run: Callable[[], Sequence[Array]]) -> CapturedStep | None:
        # The stream capture and what a replay keeps: backends/numba_graphs.py.
        from . import numba_graphs

        return numba_graphs.capture(self, run)

    # ------------------------------------------------------------------ helpers
    def _output(
        self, workspace: Workspace | None, name: str, shape: tuple[int, ...], dtype: Any
    ) -> Array:
        if workspace is None:
            return self._recycled(shape, dtype)
        return workspace.array(name, shape, dtype)

    def _empty(self, shape: tuple[int, ...], dtype: Any) -> Array:
        if self._step_capture is not None:
            self._step_capture.allocation(shape, dtype)
        return self._cuda.device_array(tuple(int(n) for n in shape), dtype=np.dtype(dtype))

    def _recycled(self, shape: tuple[int, ...], dtype: Any) -> Array:
        """A new array of ``shape`` and ``dtype`` that no one else holds, in device memory
        that an earlier result of that shape and dtype held until its last reference went.

        Returned as a view of the memory: when the view is collected, the memory goes back
        on the free list (never to the driver), and the next request reuses it. Kernels
        still queued on it are ordered before any later launch, all being on the engine's
        one stream (``use_stream`` synchronizes the old one before switching). Only
        results used as they are returned come from here: a view taken of one (a slice, a
        reshape) does not keep its memory from being reused.
        """
        key = (tuple(int(n) for n in shape), np.dtype(dtype).str)
        if not key[0]:
            return self._empty(key[0], dtype)
        free = self._free.setdefault(key, [])
        memory = free.pop() if free else self._empty(key[0], dtype)
        result = memory[:]
        weakref.finalize(result, free.append, memory).atexit = False
        if self._step_capture is not None:
            self._step_capture.recycled_view(result)
        return result

    def _new_scalar(self, dtype: Any) -> tuple[DeviceScalar, Array]:
        """A fresh scalar slot, and the float64 ``(1,)`` device view a kernel writes it through."""
        if self._next_slot >= len(self._scalar_buffer):
            # Scalars still unread keep the old buffer alive; nothing is overwritten.
            self._scalar_buffer = self._cuda.device_array(SCALAR_SLOTS, dtype=np.float64)
            self._next_slot = 0
        slot = self._next_slot
        self._next_slot += 1
        buffer = self._scalar_buffer
        return DeviceScalar(buffer, slot, np.dtype(dtype)), buffer[slot : slot + 1]

    def _fits_on_device(self, nbytes: int) -> bool:
        if self.device_data_limit is not None:
            return nbytes <= self.device_data_limit
        if nbytes < SMALL_ARRAY_BYTES:
            return True
        if _simulated():  # the simulator's device memory is the host's
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        else:
            free, _total = self._cuda.current_context().get_memory_info()
        return nbytes <= DEVICE_DATA_FRACTION * free

    def _host_indices(self, indices: Array) -> np.ndarray:
        return indices.host if isinstance(indices, HostRows) else self.to_numpy(indices)


def _device_name(cuda: Any) -> str:
    """A description of the current CUDA device, or of the simulator."""
    if _simulated():
        return "CUDA simulator on the CPU (NUMBA_ENABLE_CUDASIM=1)"
    device = cuda.get_current_device()
    name = device.name.decode() if isinstance(device.name, bytes) else str(device.name)
    major, minor = device.compute_capability
    return f"{name} (compute capability {major}.{minor})"
