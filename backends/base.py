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
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

Array = Any


def dtype_name(dtype: Any) -> str:
    """The canonical name (``"float32"``, ``"float64"``, ``"int64"``, ``"bool"``) of any
    engine's dtype."""
    text = str(dtype)
    for name in ("float32", "float64", "int64", "bool"):
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

    # ------------------------------------------------------------------ memory
    @property
    @abc.abstractmethod
    def device(self) -> str:
        """A human-readable name of the device the arrays live on."""

    @abc.abstractmethod
    def supports_dtype(self, dtype: str) -> bool:
        """Whether ``dtype`` (``"float32"`` or ``"float64"``) can be computed in."""

    @abc.abstractmethod
    def asarray(self, data: np.ndarray, *, dtype: str) -> Array:
        """A host NumPy array of any shape on the engine, converted to ``dtype``.

        ``dtype`` is ``"float32"``, ``"float64"`` or ``"int64"``. Host engines may
        return an array sharing memory with ``data``; callers never write to it.
        """

    @abc.abstractmethod
    def to_numpy(self, A: Array) -> np.ndarray:
        """Copy an engine array of any shape back to a host NumPy array (same dtype)."""

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
    def scalars_to_numpy(self, values: Sequence[Array]) -> np.ndarray:
        """Copy many 0-d engine arrays to the host in one transfer; float64 ``(len(values),)``."""

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
    ) -> tuple[Array, Array]:
        """Fused dense layer: ``Z = X @ W + b`` and ``Y = activation(Z)``.

        Args:
            X: float ``(N, I)``.
            W: float ``(I, O)``.
            b: float ``(O,)``, or ``None`` for a layer without bias.
            activation: a name from ``dlcore.activations.NAMES``.

            workspace: where to take ``Z`` and ``Y`` from instead of allocating them.

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
        dW: Array,
        db: Array | None,
        need_dX: bool = True,
        workspace: Workspace | None = None,
    ) -> Array | None:
        """Fused backward pass of ``dense_forward``.

        Computes ``dZ = activation'(Z) * dY`` (softmax: its Jacobian product),
        writes ``dW = X.T @ dZ`` into ``dW`` and ``db = sum(dZ, axis=0)`` into ``db``
        (overwriting both), and returns ``dX = dZ @ W.T``.

        Args:
            dY: float ``(N, O)``, gradient of the loss with respect to ``Y``.
            X, W, Z, Y: as given to and returned by ``dense_forward``.
            dW: float ``(I, O)``, written in place.
            db: float ``(O,)`` written in place, or ``None`` without bias.
            need_dX: ``False`` for the first layer, whose ``dX`` nobody uses.
            workspace: where to take ``dZ`` and ``dX`` from instead of allocating them;
                with a workspace the engine may also overwrite ``dY``.

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

        Returns:
            ``(loss, P)``: the batch-mean loss as a 0-d float array and the softmax
            probabilities ``(N, C)`` (an array of the last layer's workspace).
        """
        names = [*activations, "softmax"]
        inputs, cache = X, []
        for W, b, name, workspace in zip(weights, biases, names, workspaces):
            Z, Y = self.dense_forward(inputs, W, b, name, workspace=workspace)
            cache.append((inputs, Z, Y))
            inputs = Y
        loss = self.loss(
            "categorical_crossentropy" if Y_true.ndim == 2 else "sparse_categorical_crossentropy",
            inputs,
            Y_true,
            workspace=workspaces[-1],
        )
        gradient = self.backprop_softmax_crossentropy(inputs, Y_true, workspace=workspaces[-1])
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
            )
        return loss, inputs

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
    def backprop_prelu(self, dY: Array, X: Array, alpha: Array, *, dalpha: Array) -> Array:
        """Backward of ``prelu``: writes ``dalpha`` ``(O,)`` in place, returns ``dX`` ``(N, O)``."""

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
            name: a canonical name from ``dlcore.losses.NAMES``.
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
    # Each update runs in place over flat float buffers of shape (P,), the
    # parameters, their gradients and the optimizer's state slots. Step-dependent
    # scalars (bias corrections) arrive as Python floats computed on the host.

    @abc.abstractmethod
    def sgd_update(
        self,
        params: Array,
        grads: Array,
        velocity: Array | None,
        *,
        learning_rate: float,
        momentum: float,
        nesterov: bool,
    ) -> None:
        """SGD: ``v = momentum * v - lr * g``; ``w += v``.

        Nesterov: ``w += momentum * v - lr * g`` with the updated ``v``.

        ``velocity`` is ``None`` when ``momentum == 0``: then ``w -= lr * g``.
        """

    @abc.abstractmethod
    def adam_update(
        self,
        params: Array,
        grads: Array,
        m: Array,
        v: Array,
        v_max: Array | None,
        *,
        learning_rate: float,
        beta_1: float,
        beta_2: float,
        epsilon: float,
        step: int,
    ) -> None:
        """Adam (AMSGrad when ``v_max`` is given), ``step`` counting from 1.

        ``m += (g - m) * (1 - beta_1)``; ``v += (g**2 - v) * (1 - beta_2)``;
        AMSGrad: ``v_max = max(v_max, v)`` is used in place of ``v``;
        ``w -= lr * sqrt(1 - beta_2**step) / (1 - beta_1**step) * m / (sqrt(v) + epsilon)``.
        """

    @abc.abstractmethod
    def rmsprop_update(
        self,
        params: Array,
        grads: Array,
        velocity: Array,
        average_grad: Array | None,
        momentum_buffer: Array | None,
        *,
        learning_rate: float,
        rho: float,
        momentum: float,
        epsilon: float,
    ) -> None:
        """RMSprop, centered when ``average_grad`` is given, with momentum when
        ``momentum_buffer`` is given.

        ``velocity = rho * velocity + (1 - rho) * g**2``; centered:
        ``average_grad = rho * average_grad + (1 - rho) * g`` and
        ``denominator = velocity - average_grad**2 + epsilon``, else
        ``velocity + epsilon``; ``increment = lr * g / sqrt(denominator)``;
        with momentum ``buffer = momentum * buffer + increment; w -= buffer``,
        else ``w -= increment``.
        """

    @abc.abstractmethod
    def adagrad_update(
        self,
        params: Array,
        grads: Array,
        accumulator: Array,
        *,
        learning_rate: float,
        epsilon: float,
    ) -> None:
        """Adagrad: ``acc += g**2``; ``w -= lr * g / sqrt(acc + epsilon)``."""

    @abc.abstractmethod
    def adamax_update(
        self,
        params: Array,
        grads: Array,
        m: Array,
        u: Array,
        *,
        learning_rate: float,
        beta_1: float,
        beta_2: float,
        epsilon: float,
        step: int,
    ) -> None:
        """Adamax: ``m += (g - m) * (1 - beta_1)``; ``u = max(beta_2 * u, |g|)``;
        ``w -= lr / (1 - beta_1**step) * m / (u + epsilon)``."""

    @abc.abstractmethod
    def nadam_update(
        self,
        params: Array,
        grads: Array,
        m: Array,
        v: Array,
        *,
        learning_rate: float,
        beta_1: float,
        beta_2: float,
        epsilon: float,
        step: int,
        mu_t: float,
        mu_next: float,
        mu_product: float,
        mu_product_next: float,
    ) -> None:
        """Nadam with Keras's momentum schedule (``mu_*`` computed by the optimizer).

        ``m += (g - m) * (1 - beta_1)``; ``v += (g**2 - v) * (1 - beta_2)``;
        ``m_hat = mu_next * m / (1 - mu_product_next) + (1 - mu_t) * g / (1 - mu_product)``,
        where ``mu_product`` is the product of the momenta up to and including this step;
        ``v_hat = v / (1 - beta_2**step)``; ``w -= lr * m_hat / (sqrt(v_hat) + epsilon)``.
        """

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
