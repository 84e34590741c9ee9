"""salfw: salient features of a neural network's input, many methods under one roof.

The public API (see docs/architecture.md)::

    m = salfw.WhiteBox(module, input_range=(0.0, 1.0))
    e = salfw.explain("integrated-gradients", m, x, target=None, seed=0, steps=50)
    salfw.evaluate("deletion", m, x, e)
    salfw.plot(e)                       # a matplotlib Figure (a notebook shows ``e`` itself too)

    @salfw.register                     # use a method by name without packaging it
    class MyMethod(salfw.core.contracts.Method): ...

Importing salfw changes nothing global: no plugin is loaded before the first
lookup, matplotlib is imported only to draw, and no random state is seeded.
"""

from .core.api import (
    composites,
    datasets,
    evaluate,
    explain,
    load_dataset,
    load_model,
    make_method,
    methods,
    metrics,
    model_explainers,
    perturbations,
    register,
    reload_plugins,
    rules,
    unregister,
)
from .core.context import Context
from .core.errors import (
    AssumptionWarning,
    DegenerateWarning,
    InputError,
    ModelError,
    ModelRequirementError,
    ParameterError,
    PluginError,
    SalfwError,
    SalfwWarning,
    TargetError,
    UnknownNameError,
)
from .core.explanation import Explanation
from .core.hookspecs import hookimpl
from .core.models import BlackBox, WhiteBox
from .core.render import draw_grid, plot

__version__ = "0.1.0"

__all__ = [
    "AssumptionWarning", "DegenerateWarning", "SalfwWarning",
    "BlackBox", "Context", "Explanation", "InputError", "ModelError", "ModelRequirementError", "ParameterError",
    "PluginError", "SalfwError", "TargetError", "UnknownNameError", "WhiteBox", "datasets", "draw_grid", "evaluate",
    "explain", "hookimpl", "load_dataset", "load_model", "make_method", "methods", "metrics", "model_explainers",
    "perturbations", "plot", "register", "reload_plugins", "rules", "composites", "unregister",
]
