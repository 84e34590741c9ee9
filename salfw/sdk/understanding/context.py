"""The context of one model explainer's ``run(model, data, seed)``."""

from __future__ import annotations

import sys

from salfw.core.context import Context
from salfw.core.contracts import ModelExplainer


def explainer_context(explainer: ModelExplainer, seed: int) -> Context:
    """A :class:`~salfw.core.context.Context` for one ``run``: ``seed`` and its CPU generator,
    batches of the explainer's ``batch_size`` (when it declares one) and a progress bar on stderr
    when stderr is a terminal (as :func:`salfw.explain` does by default)."""
    return Context(seed, batch_size=getattr(explainer.params, "batch_size", None), progress=sys.stderr.isatty(),
                   description=explainer.name)
