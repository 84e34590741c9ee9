"""Network-level understanding: the model toolkit's presets and plots, and the
helpers shared by the model explainers (activation maximisation, TCAV,
DeepRED, the surrogate tree).

:func:`make_explainer` (from ``salfw.core.api``, re-exported here) builds a
registered model explainer from keyword parameters, validated against its
``Params`` declaration, like ``make_method`` does for attribution methods;
:func:`~salfw.sdk.understanding.context.explainer_context` gives an explainer's
``run`` its :class:`~salfw.core.context.Context` (seeded CPU generator, batches,
progress).
"""

from salfw.core.api import make_explainer

__all__ = ["make_explainer"]
