"""The names of activations and losses are listed once, in ``backends/names.py``: every
table of functions keyed by them has exactly one entry per name.

The kernels' tables are checked in ``tests/kernels`` (they need Numba).
"""

from __future__ import annotations

import inspect

from dlcore.backends import cpu_jit, names, xp_activations, xp_losses
from dlcore.backends.base import Engine

from dlcore import activations, losses


def test_array_api_activation_tables_cover_every_activation():
    assert set(xp_activations._FORWARD) == set(names.ACTIVATIONS)
    assert set(xp_activations._BACKWARD) == set(names.ACTIVATIONS)


def test_array_api_loss_tables_cover_every_loss():
    assert set(xp_losses._VALUES) == set(names.LOSSES)
    assert set(xp_losses._GRADIENTS) == set(names.LOSSES)
    assert set(xp_losses._LOGIT_VALUES) == set(names.CROSSENTROPIES)
    assert set(xp_losses._LOGIT_GRADIENTS) == set(names.CROSSENTROPIES)


def test_every_loss_has_its_class_and_aliases_name_real_ones():
    classes = [
        cls
        for _, cls in inspect.getmembers(losses, inspect.isclass)
        if issubclass(cls, losses.Loss) and cls is not losses.Loss
    ]
    assert sorted(cls().name for cls in classes) == sorted(names.LOSSES)
    assert set(losses.ALIASES.values()) <= set(names.LOSSES)
    assert set(activations.ALIASES.values()) <= set(names.ACTIVATIONS)


def test_compiled_stack_loops_are_the_stack_activations():
    assert set(cpu_jit.ACTIVATION_CODES) == set(Engine.STACK_ACTIVATIONS)
    assert set(Engine.STACK_ACTIVATIONS) <= set(names.ACTIVATIONS)
