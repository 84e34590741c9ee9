"""Network-level understanding: the model toolkit's presets and plots, and the
helpers shared by the model explainers (activation maximisation, TCAV,
DeepRED, the surrogate tree).

:func:`make_explainer` (from ``salfw.core.api``, re-exported here) builds a
registered model explainer from keyword parameters, validated against its
``Params`` declaration, like ``make_method`` does for attribution methods.
"""

from salfw.core.api import make_explainer

__all__ = ["make_explainer"]
