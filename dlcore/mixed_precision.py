"""Mixed precision with Keras 3's API: dtype policies and dynamic loss scaling.

A policy names the dtype a layer computes in and the dtype its weights are kept
in. ``"mixed_float16"`` and ``"mixed_bfloat16"`` compute in half precision and
keep float32 weights; ``"float32"``, ``"float64"`` (and ``"float16"``,
``"bfloat16"``) use one dtype for both.

>>> import dlcore
>>> dlcore.mixed_precision.set_global_policy("mixed_float16")
>>> dlcore.layers.Dense(10).dtype_policy
<DTypePolicy "mixed_float16">
>>> dlcore.layers.Dense(10, dtype="float32").compute_dtype
'float32'
>>> dlcore.mixed_precision.set_global_policy("float32")

How a model runs a policy:

- Weights live in the model's flat buffer in its float dtype (``dlcore.floatx()``,
  float32 by default): these are the master weights the optimizer updates and
  ``get_weights`` returns. A layer that computes in another dtype reads a copy of
  its weights cast to that dtype, refreshed before every forward pass, and its
  weight gradients are cast back into the master gradient buffer.
- Each layer casts its floating inputs to its compute dtype, so a float32 layer
  after float16 layers (Keras's advice for the output layer) computes in float32.
- Losses and metrics are computed in the model's float dtype, as Keras computes
  them in ``floatx``; ``predict`` returns the output layers' compute dtype.
- Under ``"mixed_float16"`` ``compile`` wraps the optimizer in a
  ``LossScaleOptimizer`` (Keras's ``auto_scale_loss=True``).
- An engine without kernels for a compute dtype runs those layers in the model's
  float dtype and warns once. The cupy engine computes float16 with cuBLAS
  (tensor cores), the numba engine with kernels that store float16 and compute
  in float32; neither has bfloat16, which runs in float32, and the numpy engine
  computes float16 in float32.
- The numpy engine runs the matrix products of bfloat16 layers of a float32 model
  in bfloat16 where the CPU has bfloat16 instructions (AVX-512 BF16 or AMX) and
  oneDNN is installed (``pip install dlcore[cpu]``): a Dense layer's products take
  their operands rounded to bfloat16 and accumulate in float32
  (``Layer.product_dtype``); its activations, gradients and outputs stay float32,
  where Keras keeps them in bfloat16, so its results lie closer to float32's.
  Without those it warns once, saying which is missing, and computes in float32.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from dlcore import config
from dlcore.optimizers.loss_scale import LossScaleOptimizer

# policy name -> (compute dtype, variable dtype); the plain float names use one dtype
_MIXED = {"mixed_float16": ("float16", "float32"), "mixed_bfloat16": ("bfloat16", "float32")}
_FLOATS = ("float16", "bfloat16", "float32", "float64")
POLICY_NAMES = (*_MIXED, *_FLOATS)


class DTypePolicy:
    """A layer's compute dtype and variable dtype, by name.

    Args:
        name: ``"mixed_float16"``, ``"mixed_bfloat16"``, ``"float16"``,
            ``"bfloat16"``, ``"float32"`` or ``"float64"``; ``None`` for the
            global policy's name.

    Raises:
        TypeError: ``name`` is not a string.
        ValueError: an unknown name (the message lists the valid ones).
    """

    def __init__(self, name: str | None = None) -> None:
        if name is None:
            name = global_policy().name
        if not isinstance(name, str):
            raise TypeError(
                f"DTypePolicy expected a policy name such as 'mixed_float16', "
                f"received {name!r} of type {type(name).__name__}"
            )
        if name in _MIXED:
            compute, variable = _MIXED[name]
        elif name in _FLOATS:
            compute = variable = name
        else:
            raise ValueError(
                f"unknown dtype policy {name!r}; valid policies: {', '.join(POLICY_NAMES)}"
            )
        self._name = name
        self._compute_dtype = compute
        self._variable_dtype = variable

    @property
    def name(self) -> str:
        return self._name

    @property
    def compute_dtype(self) -> str:
        """The dtype of the layer's inputs, outputs and arithmetic."""
        return self._compute_dtype

    @property
    def variable_dtype(self) -> str:
        """The dtype the layer's weights are kept in (float32 for the mixed policies)."""
        return self._variable_dtype

    def get_config(self) -> dict[str, Any]:
        return {"name": self._name}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> DTypePolicy:
        return cls(**config)

    def __repr__(self) -> str:
        return f'<DTypePolicy "{self._name}">'

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DTypePolicy) and other.name == self._name

    def __hash__(self) -> int:
        return hash(self._name)


Policy = DTypePolicy  # the Keras 2 name


def get(identifier: Any) -> DTypePolicy:
    """A policy from a policy, a name, a Keras config dict or ``None`` (the global policy).

    Keras 3 writes a layer's policy in its config as
    ``{"module": "keras", "class_name": "DTypePolicy", "config": {"name": ...}}``;
    that form is read too.
    """
    if identifier is None:
        return global_policy()
    if isinstance(identifier, DTypePolicy):
        return identifier
    if isinstance(identifier, str):
        return DTypePolicy(identifier)
    if isinstance(identifier, Mapping):
        inner = identifier.get("config", identifier)
        if isinstance(inner, Mapping) and isinstance(inner.get("name"), str):
            return DTypePolicy(inner["name"])
    if isinstance(identifier, (np.dtype, type)):  # np.float32, np.dtype("float64")
        try:
            return DTypePolicy(np.dtype(identifier).name)
        except TypeError:
            pass
    raise TypeError(
        "a dtype policy must be a name such as 'mixed_float16', a DTypePolicy or its "
        f"config dict; received {identifier!r}"
    )


def set_global_policy(policy: Any) -> None:
    """Make ``policy`` (a name or a ``DTypePolicy``) the policy of layers created from now on."""
    if not isinstance(policy, (str, DTypePolicy)):
        raise ValueError(
            "set_global_policy expected a policy name such as 'mixed_float16' or a "
            f"DTypePolicy, received {policy!r}"
        )
    config.set_dtype_policy_name(get(policy).name)


def global_policy() -> DTypePolicy:
    """The global policy: the one last set, else ``dlcore.floatx()``'s."""
    return DTypePolicy(config.dtype_policy_name())


# Keras 3's names for the same two functions.
set_dtype_policy = set_global_policy
dtype_policy = global_policy

_warned: set[tuple[str, str]] = set()


def dtypes_on(engine: Any, policy: DTypePolicy, variable_dtype: str) -> tuple[str, str | None]:
    """How a layer of ``policy`` computes on ``engine``: ``(run_dtype, product_dtype)``.

    ``run_dtype`` is the policy's compute dtype where the engine has kernels for it,
    else ``variable_dtype`` (the model's float dtype). ``product_dtype`` is the policy's
    compute dtype where the engine has no kernels for it but rounds a float32 layer's
    matrix product operands to it (``Engine.products_in``), else ``None``. Anything else
    warns once per engine and dtype, with the engine's reason.
    """
    wanted = policy.compute_dtype
    if engine.supports_dtype(wanted):
        return wanted, None
    accepted, why = engine.products_in(wanted)
    if accepted and variable_dtype == "float32":
        return variable_dtype, wanted
    key = (engine.name, wanted)
    if key not in _warned:
        _warned.add(key)
        if wanted == "float16":
            others = "cupy and numba"
        elif wanted == "bfloat16":
            others = "numpy, in its matrix products, on CPUs with AVX-512 BF16 or AMX"
        else:
            others = "none yet"
        reason = f" ({wanted} is not accelerated here: {why})" if why and not accepted else ""
        warnings.warn(
            f"the {engine.name} engine has no {wanted} kernels{reason}: layers with "
            f"dtype policy {policy.name!r} compute in {variable_dtype} on it (the results "
            f"are {variable_dtype}'s); engines that compute {wanted}: {others}",
            RuntimeWarning,
            stacklevel=3,
        )
    return variable_dtype, None


__all__ = [
    "POLICY_NAMES",
    "DTypePolicy",
    "LossScaleOptimizer",
    "Policy",
    "dtype_policy",
    "get",
    "global_policy",
    "set_dtype_policy",
    "set_global_policy",
]
