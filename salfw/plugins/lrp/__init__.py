"""Relevance propagation: the ``lrp`` and ``deep-taylor`` methods, and the built-in rules and
composites of :mod:`salfw.sdk.propagation`, registered through the same hooks a third-party
plugin implements (``salfw_register_rules``, ``salfw_register_composites``).
"""

from collections.abc import Callable

from salfw.core.hookspecs import hookimpl
from salfw.sdk.propagation import BUILTIN_COMPOSITES, BUILTIN_RULES

from .methods import LRP, DeepTaylor

__all__ = ["LRP", "DeepTaylor"]


@hookimpl
def salfw_register_methods(register: Callable[[type], type]) -> None:
    register(LRP)
    register(DeepTaylor)


@hookimpl
def salfw_register_rules(register: Callable[[type], type]) -> None:
    for rule in BUILTIN_RULES:
        register(rule)


@hookimpl
def salfw_register_composites(register: Callable[[type], type]) -> None:
    for composite in BUILTIN_COMPOSITES:
        register(composite)
