"""A dense stack's training step written out in float64 NumPy: the reference the NumPy
engine's compiled step is checked against, whatever library computes its products."""

from __future__ import annotations

import numpy as np


def bfloat16(x):
    """float64 values of float32 ``x`` rounded to 8 significant bits, ties to even: the
    formula, independent of the bit operations the engine rounds with (normal numbers)."""
    mantissa, exponent = np.frexp(np.asarray(x, dtype=np.float32).astype(np.float64))
    return np.ldexp(np.rint(mantissa * 256) / 256, exponent)


def reference_stack_step(X, Y, weights, biases, activations):
    """Float64 forward, Keras cross-entropy and backward of a dense stack, written out."""
    functions = {
        "linear": (lambda z: z, lambda y: np.ones_like(y)),
        "relu": (lambda z: np.maximum(z, 0), lambda y: (y > 0).astype(float)),
        "tanh": (np.tanh, lambda y: 1 - y**2),
        "sigmoid": (lambda z: 1 / (1 + np.exp(-z)), lambda y: y * (1 - y)),
    }
    outputs = [X]
    for W, b, name in zip(weights[:-1], biases[:-1], activations):
        outputs.append(functions[name][0](outputs[-1] @ W + b))
    logits = outputs[-1] @ weights[-1] + biases[-1]
    P = np.exp(logits - logits.max(axis=1, keepdims=True))
    P /= P.sum(axis=1, keepdims=True)
    targets = np.eye(P.shape[1])[Y] if Y.ndim == 1 else Y
    loss = -np.mean(np.sum(targets * np.log(np.clip(P, 1e-7, 1 - 1e-7)), axis=1))
    delta = (P - targets) / len(X)
    weight_grads, bias_grads = [None] * len(weights), [None] * len(weights)
    for layer in range(len(weights) - 1, -1, -1):
        if layer < len(weights) - 1:
            delta = delta * functions[activations[layer]][1](outputs[layer + 1])
        weight_grads[layer] = outputs[layer].T @ delta
        bias_grads[layer] = delta.sum(axis=0)
        delta = delta @ weights[layer].T
    return loss, P, weight_grads, bias_grads
