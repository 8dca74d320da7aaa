"""The engine interface: the neural-network operations every engine implements.

An engine computes *operations* ("dense forward with relu", "one Adam step over
this buffer"), not general array math, so each engine is free to fuse them in
whatever way is fastest on its hardware. The models and layers in ``dlcore``
only ever call the methods declared here.

Conventions used in every docstring below:

* ``N`` is the number of samples in a batch, ``I`` the number of input
  features of a layer, ``O`` its number of output units, ``P`` the number of
  scalars in a flat parameter buffer.
* "float" means the model's floating dtype, ``"float32"`` or ``"float64"``;
  every float argument of one call has the same dtype and the result has it too.
* Integer class labels are 1-D arrays of shape ``(N,)`` and dtype int64.
* ``Array`` is the engine's own array type (``numpy.ndarray``,
  ``cupy.ndarray``, ``array_api_strict.Array``, a Numba device array).
* Engine methods trust their inputs: the user-facing code checks shapes,
  dtypes and values before calling them.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Protocol

import numpy as np

Array = Any


#: the dtypes ``from_external`` takes without a copy
EXTERNAL_DTYPES = ("float16", "float32", "float64", "int64")


def dtype_name(dtype: Any) -> str:
    """The canonical name (``"float16"``, ``"bfloat16"``, ``"float32"``, ``"float64"``,
    ``"int64"``, ``"bool"``) of any engine's dtype."""
    text = str(dtype)
    for name in ("bfloat16", "float16", "float32", "float64", "int64", "bool"):
        if text.endswith(name):
            return name
    raise TypeError(f"unsupported dtype {dtype!r}")


class Workspace:
    """Engine arrays that a layer or a model reuses from one training step to the next.

    An engine method given a workspace takes its outputs and temporaries from it by
    name instead of allocating them, so repeating a call with the same shapes
    allocates nothing. Each distinct ``(name, shape, dtype)`` is allocated once: a
    fit whose last batch is smaller holds two sets. What a method returns from a
    workspace is overwritten by the next call that uses the same workspace, so a
    caller keeps one workspace per place in the computation (one per layer).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._arrays: dict[tuple[str, tuple[int, ...], str], Array] = {}
        #: what an engine derives from the workspace's arrays and reuses (argument tuples)
        self.memo: dict[Any, Any] = {}
        # the same arrays under the keys callers use (dtype objects or names), so that a
        # repeated request costs one dictionary lookup
        self._by_request: dict[tuple[str, tuple[int, ...], Any], Array] = {}

    def array(self, name: str, shape: tuple[int, ...], dtype: Any) -> Array:
        """The engine array ``name`` of ``shape`` and ``dtype`` (an engine dtype or its
        name; ``"bool"`` is allowed here), allocated on first request."""
        request = (name, shape, dtype)
        found = self._by_request.get(request)
        if found is None:
            key = (name, tuple(int(n) for n in shape), dtype_name(dtype))
            found = self._arrays.get(key)
            if found is None:
                found = self._arrays[key] = self.engine.zeros(key[1], dtype=key[2])
            self._by_request[request] = found
        return found

    @property
    def nbytes(self) -> int:
        """Bytes held by the workspace's arrays."""
        return sum(
            int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            for _, shape, dtype in self._arrays
        )

    def clear(self) -> None:
        """Drop every array (they are allocated again on the next request)."""
        self._arrays.clear()
        self._by_request.clear()
        self.memo.clear()


class StepCaptureError(RuntimeError):
    """A training step could not be captured as a graph (``Engine.capture_step``); the
    message says why. Nothing of the step has run: the caller runs it plainly."""


class CapturedStep(Protocol):
    """A training step captured by ``Engine.capture_step``."""

    def __call__(self) -> list[Any]:
        """Run the step once more; its results (0-d arrays), new at each call."""

    def release(self) -> None:
        """Wait for the replays queued and release the graph and the memory it held."""


class Engine(abc.ABC):
    """Abstract engine. Subclasses set ``name`` and implement every method."""

    name: ClassVar[str]

    # ------------------------------------------------------------------ availability
    @classmethod
    @abc.abstractmethod
    def availability(cls) -> tuple[bool, str]:
        """Whether this engine can run on this machine.

        Returns:
            ``(True, description of the device)`` or ``(False, why not and what
            to install)``. Never raises, never allocates device memory.
        """

    @classmethod
    def simulated(cls) -> bool:
        """Whether the engine runs on a simulation of its device on the CPU, whose times
        say nothing about the device (the numba engine in Numba's CUDA simulator)."""
        return False

    #: Whether the engine runs the activations, losses and metrics that users write as
    #: Python functions (``custom.py``). Engines whose operations are compiled device
    #: kernels cannot call Python, and refuse their names with ``custom.refuse``.
    runs_custom_functions: ClassVar[bool] = True

    # ------------------------------------------------------------------ memory
    @property
    @abc.abstractmethod
    def device(self) -> str:
        """A human-readable name of the device the arrays live on."""

    @abc.abstractmethod
    def supports_dtype(self, dtype: str) -> bool:
        """Whether the engine computes in ``dtype`` (a name: ``"float32"``, ``"float64"``,
        ``"float16"``, ``"bfloat16"``)."""

    def products_in(self, dtype: str) -> tuple[bool, str]:
        """For a ``dtype`` the engine has no kernels for (``supports_dtype`` False):
        whether its matrix products can still take their operands rounded to ``dtype``,
        accumulating in float32, for float32 layers (``dense_forward``'s
        ``product_dtype``); and what runs them, or why they cannot and the fix. This
        default: never, with nothing to say."""
        return False, ""

    def refuse_product_dtype(self, product_dtype: str | None) -> None:
        """Raise ``ValueError`` for a ``product_dtype`` other than ``None``, in the dense
        operations of an engine whose ``products_in`` accepts none."""
        if product_dtype is not None:
            raise ValueError(
                f"the {self.name} engine has no {product_dtype} matrix products "
                f"(products_in({product_dtype!r}) is False); pass product_dtype=None"
            )

    @abc.abstractmethod
    def asarray(self, data: np.ndarray, *, dtype: str) -> Array:
        """A host NumPy array of any shape on the engine, converted to ``dtype``.

        ``dtype`` is ``"float32"``, ``"float64"`` or ``"int64"``. Host engines may
        return an array sharing memory with ``data``; callers never write to it.
        """

    @abc.abstractmethod
    def to_numpy(self, A: Array) -> np.ndarray:
        """Copy an engine array of any shape back to a host NumPy array (same dtype)."""

    def from_external(self, data: Any) -> Array | None:
        """Another library's array, or one of the engine's own, as an engine array
        sharing its memory; ``None`` when the engine cannot take it without a copy.

        ``data`` is any object speaking DLPack (``__dlpack__``) or
        ``__cuda_array_interface__`` (a PyTorch, JAX or CuPy tensor), or an array of the
        engine's own kind. The result is a view of the same memory, of the same shape and
        dtype, when ``data`` is on the engine's device, C-contiguous and of a dtype in
        ``EXTERNAL_DTYPES``; the caller converts the dtype on the engine if it must.
        Callers never write to the result. The default takes nothing.
        """
        return None

    def reshape(self, A: Array, shape: tuple[int, ...]) -> Array:
        """A view of the C-contiguous array ``A`` with ``shape`` (of the same size)."""
        return A.reshape(shape)

    @abc.abstractmethod
    def count_outside(self, A: Array, low: float, high: float, *, whole: bool = False) -> int:
        """How many elements of ``A`` are NaN, below ``low`` or above ``high`` (or, with
        ``whole``, not whole numbers): the data checks of arrays already on the engine.

        ``A`` is a C-contiguous float or int64 array of any shape. Reads one number back.
        """

    @abc.abstractmethod
    def zeros(self, shape: tuple[int, ...], *, dtype: str) -> Array:
        """A new zero-filled engine array of ``shape`` and ``dtype``."""

    @abc.abstractmethod
    def synchronize(self) -> None:
        """Block until every operation queued on the engine has finished."""

    @abc.abstractmethod
    def split_views(self, flat: Array, shapes: Sequence[tuple[int, ...]]) -> list[Array]:
        """Views into consecutive pieces of a flat buffer, reshaped to ``shapes``.

        Args:
            flat: shape ``(P,)`` with ``P >= sum of the sizes of shapes``.
            shapes: the shape of each view, in buffer order.

        Returns:
            One array per shape that shares memory with ``flat``: writing to
            ``flat`` changes the views and the other way round.
        """

    @abc.abstractmethod
    def assign(self, dst: Array, src: Array) -> None:
        """Copy ``src`` into ``dst`` in place; both have the same shape and dtype."""

    @abc.abstractmethod
    def cast(self, A: Array, dtype: str, *, out: Array | None = None) -> Array:
        """``A`` (float, any shape) converted to the float ``dtype``, rounded to nearest.

        Written into ``out`` (``A``'s shape, ``dtype``) when given, which is returned;
        otherwise a new array. Values beyond the range of ``dtype`` become infinite.
        """

    def all_finite(self, A: Array) -> bool:
        """Whether every element of the float array ``A`` (any shape) is finite.

        Reads one value back from the engine. This default sums ``|A|`` with
        ``penalty`` (accumulated in float64 by the GPU engines, so the sum of finite
        float32 values cannot overflow) and checks that the sum is finite.
        """
        total = self.scalars_to_numpy([self.penalty(A, l1=1.0, l2=0.0)])  # as float64
        return bool(np.isfinite(total[0]))

    def set_matmul_precision(self, precision: str) -> None:
        """Apply ``dlcore.config.set_matmul_precision`` (``"highest"`` or ``"high"``).

        Engines whose float32 matrix products are always float32 arithmetic (this
        default) ignore it.
        """
        return None

    @abc.abstractmethod
    def slice_rows(self, A: Array, start: int, stop: int) -> Array:
        """Rows ``start:stop`` of an ``(N, ...)`` array, as a view where the engine can."""

    @abc.abstractmethod
    def take_rows(self, A: Array, indices: Array, *, out: Array | None = None) -> Array:
        """Rows ``A[indices]`` of an ``(N, ...)`` array; ``indices`` is int64 ``(M,)``.

        ``out``, of shape ``(M, ...)`` and ``A``'s dtype, receives the rows when given.
        """

    @abc.abstractmethod
    def seed(self, seed: int) -> None:
        """Seed the engine's random generator (used by ``dropout``)."""

    @abc.abstractmethod
    def set_random_rows(self, offset: int, total: int | None) -> None:
        """Draw random numbers (dropout masks, noise) as for a batch of ``total`` rows of
        which the arrays given hold rows ``offset:offset + N``: data parallelism's
        processes then draw, together, what one process draws for the whole batch, and
        consume the generator alike. ``total=None`` (the default): the arrays are the
        whole batch."""

    @abc.abstractmethod
    def scalars_to_numpy(self, values: Sequence[Array]) -> np.ndarray:
        """Copy many 0-d engine arrays to the host in one transfer; float64 ``(len(values),)``."""

    def capture_step(self, run: Callable[[], Sequence[Array]]) -> CapturedStep | None:
        """Capture the operations of ``run()`` as one replayable graph (CUDA graphs).

        ``run`` queues a training step's operations and returns its 0-d results (losses,
        metric values). An engine that can capture calls it once with its launches
        recorded instead of run, and returns a callable that runs the whole captured
        step (the first call included: capturing runs nothing) and returns the step's
        results as new 0-d arrays each time, so that every replay's values can be read
        later. The graph reads and writes the arrays ``run`` used, at their addresses:
        the caller gives it the same input arrays, refilled, before every call, and keeps
        every number ``run`` read on the host unchanged (they are frozen into the graph).

        This default captures nothing: ``None``, and ``run`` is not called.

        Raises:
            StepCaptureError: the capture failed (``run`` allocated memory, read a value
                back, raised); nothing of the step has run.
        """
        return None

    # ------------------------------------------------------------------ dense layers
    @abc.abstractmethod
    def gemm(self, A: Array, B: Array, *, trans_a: bool = False, trans_b: bool = False) -> Array:
        """Matrix product ``op(A) @ op(B)`` where ``op`` transposes when asked.

        Args:
            A: float ``(M, K)``, or ``(K, M)`` with ``trans_a``.
            B: float ``(K, N)``, or ``(N, K)`` with ``trans_b``.

        Returns:
            float ``(M, N)``.
        """

    @abc.abstractmethod
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
        """Fused dense layer: ``Z = X @ W + b`` and ``Y = activation(Z)``.

        Args:
            X: float ``(N, I)``.
            W: float ``(I, O)``.
            b: float ``(O,)``, or ``None`` for a layer without bias.
            activation: a name from ``names.ACTIVATIONS`` or a custom activation's
                (``custom.py``; an engine that cannot run those raises ``RuntimeError``).

            workspace: where to take ``Z`` and ``Y`` from instead of allocating them.
            product_dtype: ``None``, or a dtype ``products_in`` accepted (the arrays
                then float32): the product's operands are rounded to it.

        Returns:
            ``(Z, Y)``, both float ``(N, O)``. ``Z`` is what ``dense_backward``
            needs to differentiate the activation; engines may return ``Y`` itself
            as ``Z`` for ``"linear"``, and for activations whose derivative they
            compute from ``Y`` alone (relu, whose ``Z > 0`` is ``Y > 0``; tanh; softmax).
        """

    @abc.abstractmethod
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
        """Fused backward pass of ``dense_forward``.

        Computes ``dZ = activation'(Z) * dY`` (softmax: its Jacobian product),
        writes ``dW = X.T @ dZ`` into ``dW`` and ``db = sum(dZ, axis=0)`` into ``db``
        (overwriting both), and returns ``dX = dZ @ W.T``. A frozen layer passes
        ``dW=None`` (and ``db=None``): no weight or bias gradient is computed at all.

        Args:
            dY: float ``(N, O)``, gradient of the loss with respect to ``Y``.
            X, W, Z, Y: as given to and returned by ``dense_forward``.
            dW: float ``(I, O)``, written in place, or ``None`` for a frozen layer.
            db: float ``(O,)`` written in place, or ``None`` without bias (always
                ``None`` when ``dW`` is).
            need_dX: ``False`` for the first layer, whose ``dX`` nobody uses.
            workspace: where to take ``dZ`` and ``dX`` from instead of allocating them;
                with a workspace the engine may also overwrite ``dY``.
            product_dtype: as ``dense_forward`` takes it, for both products.

        Returns:
            ``dX``, float ``(N, I)``, or ``None`` when ``need_dX`` is false.
        """

    # Hidden-layer activations that dense_stack_step accepts.
    STACK_ACTIVATIONS: ClassVar[tuple[str, ...]] = ("linear", "relu", "tanh", "sigmoid")

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
        """Forward pass, loss and backward pass of a stack of ``L`` dense layers whose last
        activation is softmax, trained with categorical cross-entropy on probabilities.

        This default runs the stack's operations one by one; an engine overrides it
        where one call for the whole step pays (per-call overhead on small models).

        Args:
            X: float ``(N, I)``, the batch.
            Y_true: float one-hot ``(N, C)``, or int64 labels ``(N,)``.
            weights, biases: each layer's kernel ``(I_l, O_l)`` and bias ``(O_l,)``.
            weight_grads, bias_grads: arrays of the same shapes, overwritten with the
                gradients of the batch-mean loss.
            activations: the ``L - 1`` hidden layers' activations, from
                ``STACK_ACTIVATIONS``.
            workspaces: ``L + 1`` workspaces, one per layer and one for the loss.
            product_dtypes: ``None``, or per layer ``dense_forward``'s ``product_dtype``.

        Returns:
            ``(loss, P)``: the batch-mean loss as a 0-d float array and the softmax
            probabilities ``(N, C)`` (an array of the last layer's workspace).
        """
        names = [*activations, "softmax"]
        precisions = list(product_dtypes or [None] * len(weights))
        inputs, cache = X, []
        for W, b, name, workspace, precision in zip(weights, biases, names, workspaces, precisions):
            Z, Y = self.dense_forward(
                inputs, W, b, name, workspace=workspace, product_dtype=precision
            )
            cache.append((inputs, Z, Y))
            inputs = Y
        loss, _, gradient = self.softmax_crossentropy_batch(
            inputs, Y_true, workspace=workspaces[-1]
        )
        for layer in range(len(weights) - 1, -1, -1):
            layer_inputs, Z, Y = cache[layer]
            gradient = self.dense_backward(
                gradient,
                layer_inputs,
                weights[layer],
                Z,
                Y,
                "linear" if layer == len(weights) - 1 else names[layer],
                dW=weight_grads[layer],
                db=bias_grads[layer],
                need_dX=layer > 0,
                workspace=workspaces[layer],
                product_dtype=precisions[layer],
            )
        return loss, inputs

    def dense_stack_epoch(
        self,
        X: Array,
        Y_true: Array,
        order: Array | None,
        batch_size: int,
        weights: Sequence[Array],
        biases: Sequence[Array],
        weight_grads: Sequence[Array],
        bias_grads: Sequence[Array],
        activations: Sequence[str],
        rule: str,
        params: Array,
        grads: Array,
        slots: Sequence[Array | None],
        hyperparameters: Sequence[Mapping[str, float]],
        *,
        count: bool,
        workspaces: Sequence[Workspace],
        product_dtypes: Sequence[str | None] | None = None,
    ) -> tuple[Array, Array | None] | None:
        """Train a dense stack for ``S = len(hyperparameters)`` steps in one call, where an
        engine can do it without returning to Python between steps; ``None`` otherwise
        (this default: the caller then runs the steps one by one).

        Step ``s`` gathers the rows ``order[s * batch_size:]`` (up to ``batch_size`` of
        them) of ``X`` and ``Y_true``, runs ``dense_stack_step`` on them and then
        ``optimizer_step(rule, params, grads, slots, hyperparameters[s])``; the results
        are those of these calls, to the bit.

        Args:
            X, Y_true: the whole data, ``(n, I)`` floats and one-hot ``(n, C)`` floats or
                int64 labels ``(n,)``.
            order: int64 ``(n,)``, the rows in batch order; ``None`` for ``0 .. n - 1``.
            batch_size: rows per step (the last step may take fewer).
            weights, biases, weight_grads, bias_grads, activations, workspaces,
                product_dtypes: as ``dense_stack_step`` takes them, the arrays views of
                ``params`` and ``grads``.
            rule, params, grads, slots: as ``optimizer_step`` takes them.
            hyperparameters: each step's hyperparameters.
            count: whether to count each batch's correct predictions (argmax of the
                probabilities equal to the target's class, as ``count_correct``).

        Returns:
            ``(losses, correct)``: each step's batch-mean loss and, with ``count``, its
            count of correct predictions, ``(S,)`` arrays of the weights' dtype
            (``correct`` ``None`` without ``count``); or ``None`` when not supported.
        """
        return None

    # ------------------------------------------------------------------ activations
    @abc.abstractmethod
    def activation(self, name: str, Z: Array) -> Array:
        """``Y = name(Z)`` for float ``Z`` of shape ``(N, O)``; softmax is row-wise."""

    @abc.abstractmethod
    def backprop_activation(self, name: str, dY: Array, Z: Array, Y: Array) -> Array:
        """``dZ`` from ``dY``, the input ``Z`` and the output ``Y``; all float ``(N, O)``."""

    @abc.abstractmethod
    def prelu(self, X: Array, alpha: Array) -> Array:
        """Parametric ReLU ``where(X > 0, X, alpha * X)``; X ``(N, O)``, alpha ``(O,)``."""

    @abc.abstractmethod
    def backprop_prelu(self, dY: Array, X: Array, alpha: Array, *, dalpha: Array | None) -> Array:
        """Backward of ``prelu``: writes ``dalpha`` ``(O,)`` in place, returns ``dX`` ``(N, O)``.

        A frozen layer passes ``dalpha=None``: then only ``dX`` is computed.
        """

    # ------------------------------------------------------------------ normalization
    # BatchNormalization, LayerNormalization and Normalization: X is float (N, F), the
    # per-feature vectors are (F,) of its dtype. Outputs are new arrays, or the
    # workspace's when one is given.

    @abc.abstractmethod
    def batch_moments(self, X: Array, *, workspace: Workspace | None = None) -> tuple[Array, Array]:
        """Column means and biased variances ``mean((X - mean)**2)`` of ``X`` ``(N, F)``,
        ``N >= 1``: two float ``(F,)`` arrays."""

    @abc.abstractmethod
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
        """``Y = gamma * Xhat + beta`` with ``Xhat = (X - mean) / sqrt(variance + epsilon)``.

        ``mean``, ``variance``, ``gamma`` and ``beta`` are float ``(F,)``; ``gamma=None``
        means 1 and ``beta=None`` means 0. Returns ``(Y, Xhat)``, both float ``(N, F)``.
        """

    @abc.abstractmethod
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
        """Backward of ``batch_normalize``: writes ``dgamma = sum(dY * Xhat, axis=0)`` and
        ``dbeta = sum(dY, axis=0)`` (float ``(F,)``) unless ``None``, returns ``dX`` ``(N, F)``
        (``None`` without ``need_dX``).

        With ``batch_statistics`` the mean and variance were ``X``'s own (training), and
        ``dX = gamma / (N * sqrt(variance + epsilon)) * (N * dY - sum(dY) - Xhat *
        sum(dY * Xhat))``; otherwise they were constants (the moving statistics) and
        ``dX = gamma * dY / sqrt(variance + epsilon)``.
        """

    @abc.abstractmethod
    def update_moving_average(self, moving: Array, value: Array, momentum: float) -> None:
        """``moving = moving * momentum + value * (1 - momentum)`` in place; float ``(F,)``."""

    @abc.abstractmethod
    def layer_normalize(
        self,
        X: Array,
        gamma: Array | None,
        beta: Array | None,
        *,
        epsilon: float,
        workspace: Workspace | None = None,
    ) -> tuple[Array, Array, Array]:
        """Each row normalized over its ``F`` features: ``Xhat = (X - mean_row) /
        sqrt(var_row + epsilon)`` (biased variance), ``Y = gamma * Xhat + beta``.

        ``gamma`` and ``beta`` are float ``(F,)`` or ``None`` (1 and 0). Returns ``(Y,
        Xhat, inv_std)``: float ``(N, F)``, ``(N, F)`` and ``(N,)`` with ``inv_std =
        1 / sqrt(var_row + epsilon)``.
        """

    @abc.abstractmethod
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
        """Backward of ``layer_normalize``: writes ``dgamma = sum(dY * Xhat, axis=0)`` and
        ``dbeta = sum(dY, axis=0)`` unless ``None``; returns ``dX = inv_std / F * (F * G -
        rowsum(G) - Xhat * rowsum(G * Xhat))`` with ``G = gamma * dY`` (``None`` without
        ``need_dX``)."""

    @abc.abstractmethod
    def standardize(
        self,
        X: Array,
        mean: Array | None,
        variance: Array,
        *,
        invert: bool,
        workspace: Workspace | None = None,
    ) -> Array:
        """``(X - mean) / d``, or ``mean + X * d`` with ``invert``, where ``d =
        maximum(sqrt(variance), 1e-7)`` (Keras's ``Normalization``); ``mean=None`` means 0,
        which gives the layer's input gradient from its output gradient. ``mean`` and
        ``variance`` are float ``(F,)``; returns float ``(N, F)``."""

    # ------------------------------------------------------------------ merges
    # A layer graph joins branches with these: float (N, F_i) inputs, one op from
    # names.MERGES. The returned arrays are new, or the workspace's when one is given.

    @abc.abstractmethod
    def merge(
        self, op: str, inputs: Sequence[Array], *, workspace: Workspace | None = None
    ) -> Array:
        """Combine one or more arrays into one.

        Args:
            op: a name from ``names.MERGES``. ``"add"``, ``"multiply"``,
                ``"maximum"``, ``"minimum"``: elementwise over all inputs;
                ``"average"``: their mean; ``"subtract"``: ``inputs[0] - inputs[1]``
                (exactly two inputs); ``"concatenate"``: joined along the last axis.
            inputs: float ``(N, F)`` arrays of one dtype, at least one (two for
                ``"subtract"``); for ``"concatenate"`` ``(N, F_i)`` with any ``F_i``.
            workspace: where to take the output from instead of allocating it.

        Returns:
            float ``(N, F)``, or ``(N, sum of F_i)`` for ``"concatenate"``; never one
            of the inputs.
        """

    @abc.abstractmethod
    def backprop_merge(
        self,
        op: str,
        dY: Array,
        inputs: Sequence[Array],
        Y: Array,
        *,
        workspace: Workspace | None = None,
    ) -> list[Array]:
        """Gradient of the loss with respect to each input of ``merge``.

        ``"multiply"`` gives each input ``dY`` times the product of the other inputs
        (no division, so zeros are fine); ``"average"`` gives ``dY / n``;
        ``"concatenate"`` each input its columns of ``dY``. ``"maximum"`` and
        ``"minimum"`` give, element by element, all of ``dY`` to the first input
        whose value equals ``Y`` and zero to the others (ties go to the earliest).

        Args:
            op: the name given to ``merge``.
            dY: float, the shape of ``Y``: the gradient with respect to ``Y``.
            inputs: the arrays given to ``merge``.
            Y: what ``merge`` returned for them.
            workspace: where to take the results from instead of allocating them.

        Returns:
            One float array per input, in order, of its shape: distinct arrays that
            share memory with neither ``dY``, nor the inputs, nor each other, so the
            caller may write into them.
        """

    @abc.abstractmethod
    def accumulate(self, dst: Array, src: Array) -> None:
        """``dst += src`` in place; float arrays of one shape (any) and dtype."""

    @abc.abstractmethod
    def scale(self, A: Array, factor: float, *, workspace: Workspace | None = None) -> Array:
        """``factor * A`` as a new array (or the workspace's), ``A`` unchanged.

        ``A`` is float of any shape; the result has its shape and dtype and
        ``factor`` is rounded to that dtype.
        """

    # ------------------------------------------------------------------ losses
    @abc.abstractmethod
    def loss(
        self,
        name: str,
        Y_pred: Array,
        Y_true: Array,
        *,
        from_logits: bool = False,
        workspace: Workspace | None = None,
    ) -> Array:
        """Mean over the batch of the per-sample loss ``name``, as a 0-d float array.

        Args:
            name: a canonical name from ``names.LOSSES``, or a custom loss's or
                metric's (``custom.py``), whose per-sample values are averaged alike.
            Y_pred: float ``(N, O)``, the model's output.
            Y_true: float ``(N, O)``; for ``sparse_categorical_crossentropy``
                int64 labels ``(N,)``.
            from_logits: for the cross-entropies, ``Y_pred`` holds logits.
            workspace: where to take temporaries from instead of allocating them.
        """

    @abc.abstractmethod
    def backprop_loss(
        self, name: str, Y_pred: Array, Y_true: Array, *, from_logits: bool = False
    ) -> Array:
        """Gradient of ``loss(name, Y_pred, Y_true)`` with respect to ``Y_pred``: float ``(N, O)``.

        Includes the ``1 / N`` of the batch mean and the effect of any clipping.
        """

    @abc.abstractmethod
    def per_sample_loss(
        self,
        name: str,
        Y_pred: Array,
        Y_true: Array,
        *,
        from_logits: bool = False,
        workspace: Workspace | None = None,
    ) -> Array:
        """The per-sample values of the loss ``name`` whose batch mean ``loss`` returns.

        Args: as ``loss``.

        Returns:
            float ``(N,)``: ``Y_pred``'s dtype on the generic engine, float64 where an
            engine accumulates in float64 (numba); ``weighted_sum`` takes either.
        """

    @abc.abstractmethod
    def weighted_sum(
        self, values: Array, weights: Array | None = None, *, scale: float = 1.0
    ) -> Array:
        """``scale * sum(values * weights)`` as a 0-d float array (``sum(values)`` without
        ``weights``): a weighted loss (``scale = 1 / N``) or a metric's numerator.

        Args:
            values: float ``(N,)``.
            weights: float ``(N,)`` or ``None``.
            scale: a host number, applied once after the sum.

        Returns:
            0-d float array, of the dtype of ``values`` (float64 accumulation on numba).
        """

    @abc.abstractmethod
    def scale_rows(self, A: Array, w: Array, *, workspace: Workspace | None = None) -> Array:
        """``A * w[:, None]`` as a new array (or the workspace's): each row of ``A`` times its
        sample weight. ``A`` is float ``(N, O)``, ``w`` float ``(N,)`` of ``A``'s dtype."""

    @abc.abstractmethod
    def backprop_softmax_crossentropy(
        self, P: Array, Y_true: Array, *, workspace: Workspace | None = None
    ) -> Array:
        """Fused gradient ``(P - Y) / N`` of softmax followed by categorical cross-entropy.

        Args:
            P: float ``(N, O)``, softmax probabilities.
            Y_true: float one-hot ``(N, O)``, or int64 labels ``(N,)``.
            workspace: where to take the result from instead of allocating it.

        Returns:
            float ``(N, O)``: the gradient with respect to the softmax's input.
        """

    def softmax_crossentropy_batch(
        self,
        P: Array,
        Y_true: Array,
        *,
        with_count: bool = False,
        workspace: Workspace | None = None,
    ) -> tuple[Array, Array | None, Array]:
        """Loss, accuracy count and gradient of a softmax output trained with categorical
        cross-entropy on probabilities: what a training step needs of such an output.

        This default calls ``loss``, ``count_correct`` and ``backprop_softmax_crossentropy``;
        an engine overrides it where one pass over the rows pays (per-launch cost on a GPU).

        Args:
            P: float ``(N, O)``, softmax probabilities.
            Y_true: float one-hot ``(N, O)`` (categorical cross-entropy, ``"categorical"``
                accuracy), or int64 labels ``(N,)`` (the sparse forms).
            with_count: also count the rows whose argmax is the label's.
            workspace: where to take the gradient and temporaries from.

        Returns:
            ``(loss, correct, dZ)``: the batch-mean loss and the count as 0-d float arrays
            (``correct`` is ``None`` without ``with_count``), and the gradient with
            respect to the softmax's input, float ``(N, O)``.
        """
        sparse = Y_true.ndim == 1
        name = "sparse_categorical_crossentropy" if sparse else "categorical_crossentropy"
        loss = self.loss(name, P, Y_true, workspace=workspace)
        correct = None
        if with_count:
            kind = "sparse" if sparse else "categorical"
            correct = self.count_correct(kind, P, Y_true, workspace=workspace)
        gradient = self.backprop_softmax_crossentropy(P, Y_true, workspace=workspace)
        return loss, correct, gradient

    @abc.abstractmethod
    def backprop_sigmoid_crossentropy(self, P: Array, Y_true: Array) -> Array:
        """Fused gradient ``(P - Y) / (N * O)`` of sigmoid followed by binary cross-entropy.

        ``P`` and ``Y_true`` are float ``(N, O)``; returns float ``(N, O)``, the
        gradient with respect to the sigmoid's input.
        """

    # ------------------------------------------------------------------ regularization
    @abc.abstractmethod
    def penalty(self, W: Array, *, l1: float, l2: float) -> Array:
        """``l1 * sum(|W|) + l2 * sum(W**2)`` as a 0-d float array; W of any shape."""

    @abc.abstractmethod
    def backprop_penalty(self, W: Array, dW: Array, *, l1: float, l2: float) -> None:
        """Add the penalty's gradient ``l1 * sign(W) + 2 * l2 * W`` to ``dW`` in place."""

    # ------------------------------------------------------------------ optimizers
    @abc.abstractmethod
    def optimizer_step(
        self,
        rule: str,
        params: Array,
        grads: Array,
        slots: Sequence[Array | None],
        hyperparameters: Mapping[str, float],
    ) -> None:
        """One step of the update ``rule``, in place over flat float buffers.

        The rules, their slots and their hyperparameters are those of the reference
        functions in ``backends/xp_optimizers.py`` (``xp_optimizers.STEPS[rule]``); an
        engine's own version computes the same in the same order of operations.

        Args:
            rule: a name from ``names.OPTIMIZER_RULES``.
            params: float ``(P,)``, updated in place; may be a view of a larger
                buffer (the range of some layers).
            grads: float ``(P,)`` of ``params``'s dtype, left unchanged.
            slots: the rule's state slots in its order, each float ``(P,)`` updated in
                place, or ``None`` for an optional slot not in use.
            hyperparameters: the step's numbers as Python floats, computed on the host
                (bias corrections and schedules included), by name; the engine rounds
                them to the buffers' dtype.
        """

    @abc.abstractmethod
    def gradient_norm_scale(
        self,
        grads: Array,
        segments: Sequence[tuple[int, int]],
        clipnorm: float,
        out: Array,
        *,
        each: bool = False,
    ) -> None:
        """The factors that clip gradients to the norm ``clipnorm``, written on the engine.

        With ``each``, ``out[k] = clipnorm / max(norm_k, clipnorm)`` for the Euclidean
        norm ``norm_k`` of ``grads[start_k:stop_k]`` (Keras's ``clipnorm``, per weight).
        Otherwise ``out[0] = clipnorm / max(norm, clipnorm)`` for the norm of all the
        segments together (``global_clipnorm``), NaN when that norm is not finite.
        The sums of squares are accumulated in at least the buffer's precision; nothing
        is read back to the host.

        Args:
            grads: float ``(P,)``.
            segments: ``(start, stop)`` ranges of ``grads``, not overlapping.
            clipnorm: the positive bound, a host number.
            out: float ``(S,)`` with ``each`` (``S = len(segments)``), else ``(1,)``, of
                ``grads``'s dtype; written.
            each: one factor per segment rather than one for all.
        """

    @abc.abstractmethod
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
        """What an optimizer does before its rule, in one pass over flat buffers.

        ``params -= params * decay`` (decoupled weight decay, when ``decay`` is not 0);
        ``out = clip(grads * scale[0], -clipvalue, clipvalue)``, leaving out the factor
        when ``scale`` is ``None`` and the clip when ``clipvalue`` is ``None``.

        Args:
            params: float ``(P,)``, updated in place.
            grads: float ``(P,)`` of ``params``'s dtype, left unchanged.
            out: float ``(P,)``, written; ``None`` to decay ``params`` only.
            scale: float ``(1,)`` on the engine (a ``gradient_norm_scale`` factor), or
                ``None``.
            clipvalue: the positive bound of each gradient, or ``None``.
            decay: the host number ``weight_decay * learning_rate``.
        """

    @abc.abstractmethod
    def moving_average(self, average: Array, values: Array, momentum: float) -> None:
        """``average = momentum * average + (1 - momentum) * values`` in place over flat
        float buffers of one shape and dtype (the optimizers' ``use_ema``)."""

    # ------------------------------------------------------------------ dropout, metrics
    @abc.abstractmethod
    def dropout(self, X: Array, *, rate: float) -> tuple[Array, Array]:
        """Inverted dropout from the engine's generator.

        Returns ``(Y, mask)``, both float like ``X`` (any shape), where ``mask``
        holds ``0`` for a dropped unit and ``1 / (1 - rate)`` for a kept one and
        ``Y = X * mask``.
        """

    @abc.abstractmethod
    def backprop_dropout(self, dY: Array, mask: Array) -> Array:
        """``dX = dY * mask``, with the mask returned by ``dropout``."""

    # ------------------------------------------------------------------ parameterised
    # activations and noise (the layers ReLU, LeakyReLU, ELU, GaussianNoise,
    # GaussianDropout, AlphaDropout). Inputs are float of any shape; outputs are new.

    @abc.abstractmethod
    def relu_family(
        self, Z: Array, *, negative_slope: float, max_value: float | None, threshold: float
    ) -> Array:
        """Keras's parameterised ReLU, elementwise: ``min(z, max_value)`` where
        ``z > threshold``, else ``negative_slope * (z - threshold)`` (``max_value=None``:
        no upper bound)."""

    @abc.abstractmethod
    def backprop_relu_family(
        self,
        dY: Array,
        Z: Array,
        *,
        negative_slope: float,
        max_value: float | None,
        threshold: float,
    ) -> Array:
        """``dZ = dY * d relu_family / dz``: ``1`` where ``threshold < z < max_value``,
        ``negative_slope`` where ``z < threshold``, else ``0``."""

    @abc.abstractmethod
    def elu(self, Z: Array, *, alpha: float) -> Array:
        """``z`` where ``z > 0``, else ``alpha * (exp(z) - 1)``, elementwise."""

    @abc.abstractmethod
    def backprop_elu(self, dY: Array, Z: Array, *, alpha: float) -> Array:
        """``dZ = dY * (1 if z > 0 else alpha * exp(z))``."""

    @abc.abstractmethod
    def gaussian_noise(self, X: Array, *, stddev: float) -> Array:
        """``X + stddev * n`` with ``n`` standard normal draws from the engine's generator,
        one per element (its gradient is ``dY`` itself)."""

    @abc.abstractmethod
    def gaussian_dropout(self, X: Array, *, rate: float) -> tuple[Array, Array]:
        """Multiplicative noise: ``mask = 1 + sqrt(rate / (1 - rate)) * n`` (``n`` standard
        normal, one per element), ``Y = X * mask``; returns ``(Y, mask)``, whose gradient
        ``backprop_dropout(dY, mask)`` gives; ``0 <= rate < 1``."""

    @abc.abstractmethod
    def alpha_dropout(
        self, X: Array, *, rate: float, noise_shape: tuple[int, int]
    ) -> tuple[Array, Array]:
        """Alpha dropout of ``X`` ``(N, F)``: ``kept = u >= rate`` (``u`` uniform in
        ``[0, 1)``) drawn at ``noise_shape``, ``(N or 1, F or 1)``, and broadcast to ``X``;
        ``Y = a * (kept * X + (1 - kept) * alpha_p) + b`` with ``alpha_p = -SELU_SCALE *
        SELU_ALPHA``, ``a = ((1 - rate) * (1 + rate * alpha_p**2)) ** -0.5`` and ``b = -a *
        alpha_p * rate``. Returns ``(Y, mask)`` with ``mask = a * kept`` of ``X``'s shape,
        whose gradient ``backprop_dropout(dY, mask)`` gives; ``0 < rate < 1``."""

    @abc.abstractmethod
    def count_correct(
        self,
        kind: str,
        Y_pred: Array,
        Y_true: Array,
        *,
        workspace: Workspace | None = None,
    ) -> Array:
        """Number of correct predictions in a batch, as a 0-d float array.

        Args:
            kind: ``"binary"`` (each output thresholded at 0.5, counted per
                element), ``"categorical"`` (argmax of both rows agree) or
                ``"sparse"`` (argmax of ``Y_pred`` equals the int64 label).
            Y_pred: float ``(N, O)``.
            Y_true: float ``(N, O)``, or int64 ``(N,)`` for ``"sparse"``.
            workspace: where to take temporaries from instead of allocating them.
        """

    @abc.abstractmethod
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
        """One accuracy per sample: what Keras's accuracy metrics average over samples.

        Args:
            kind: ``"binary"`` (the fraction of the row's elements where
                ``Y_pred > threshold`` equals ``Y_true``), ``"categorical"`` (1 where the
                argmaxes of both rows agree, the first index on ties), ``"sparse"`` (1
                where the argmax is the int64 label), ``"top_k"`` / ``"sparse_top_k"``
                (1 where fewer than ``k`` scores of the row exceed the score of the
                target class: the argmax of ``Y_true`` / the label).
            Y_pred: float ``(N, O)``.
            Y_true: float ``(N, O)``, or int64 ``(N,)`` for the sparse kinds.
            k: for the top-k kinds, at least 1.
            threshold: for ``"binary"``.
            workspace: where to take the result from instead of allocating it.

        Returns:
            float ``(N,)``: ``Y_pred``'s dtype on the generic engine, float64 on numba;
            ``weighted_sum`` takes either.
        """

    @abc.abstractmethod
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
        """Weighted confusion counts of a batch at each threshold, as float64.

        An element is a positive label where ``Y_true != 0`` and a positive prediction
        where ``Y_pred > thresholds[t]``; each counts with its row's sample weight (1
        without ``sample_weight``).

        Args:
            Y_pred: float ``(N, O)``.
            Y_true: float ``(N, O)``.
            thresholds: float ``(T,)`` of ``Y_pred``'s dtype.
            sample_weight: float ``(N,)`` or ``None``.
            per_label: count each column on its own (``L = O``) instead of all the
                elements together (``L = 1``).
            class_id: count only this column (``L = 1``).
            top_k: first set every element outside its row's ``top_k`` largest to
                ``-inf`` (ties: the earlier column ranks higher).
            row_max: predict positive where the element is its row's maximum and
                ``|Y_pred| > 1e-9`` instead of comparing with the thresholds (``T`` is 1).
            workspace: where to take temporaries from (the result is always new or
                recycled, so that several metrics' counts of one batch coexist).

        Returns:
            float64 ``(4, T, L)``: true positives, false positives, true negatives,
            false negatives.
        """
