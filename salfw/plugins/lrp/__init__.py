"""Relevance propagation: ``lrp`` and ``deep-taylor``.

The engine (:mod:`.engine`) walks any module made of Linear, Conv2d, ReLU,
pooling, Flatten, Dropout, BatchNorm (folded into new weight tensors; the
user's module is never changed) and additions; the rules
(:mod:`.rules`) and composites (:mod:`.composites`) live in plain registries a
plugin extends with :func:`register_rule` and :func:`register_composite`.
"""

from salfw.core.hookspecs import hookimpl

from salfw.sdk.propagation.composites import COMPOSITES, register_composite
from .methods import LRP, DeepTaylor
from salfw.sdk.propagation.rules import RULES, Rule, Settings, register_rule

__all__ = ["COMPOSITES", "RULES", "LRP", "DeepTaylor", "Rule", "Settings", "register_composite", "register_rule"]


@hookimpl
def salfw_register_methods(register):
    register(LRP)
    register(DeepTaylor)
