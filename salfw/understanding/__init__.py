"""Network-level understanding: the model toolkit's presets and plots, and the
helpers shared by the model explainers (activation maximisation, TCAV,
DeepRED, the surrogate tree).

:func:`make_explainer` builds a registered model explainer from keyword
parameters, validated against its ``Params`` declaration, like
``salfw.core.api.make_method`` does for attribution methods.
"""

from __future__ import annotations

from typing import Any

from salfw.core.contracts import ModelExplainer
from salfw.core.params import parse_params
from salfw.core.registry import get_registry


def make_explainer(name: str, **params: Any) -> ModelExplainer:
    """The registered model explainer ``name`` with ``params`` (unknown or invalid ones raise ParameterError)."""
    cls = get_registry().get("model-explainer", name)
    return cls(parse_params(cls.Params, params, owner=f"model explainer '{name}'"))


__all__ = ["make_explainer"]
