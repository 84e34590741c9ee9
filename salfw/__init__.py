"""salfw: salient features of a neural network's input, many methods under one roof.

The public API (see DESIGN.md)::

    m = salfw.WhiteBox(module, input_range=(0.0, 1.0))
    e = salfw.explain("integrated-gradients", m, x, target=None, seed=0, steps=50)
    salfw.evaluate("deletion", m, x, e)
"""

from .core.api import evaluate, explain, load_model, methods, metrics, model_explainers, perturbations
from .core.errors import (InputError, ModelError, ModelRequirementError, ParameterError, PluginError,
                          SalfwError, TargetError, UnknownNameError)
from .core.explanation import Explanation
from .core.hookspecs import hookimpl
from .core.models import BlackBox, WhiteBox

__version__ = "0.1.0"

__all__ = [
    "BlackBox", "Explanation", "InputError", "ModelError", "ModelRequirementError", "ParameterError",
    "PluginError", "SalfwError", "TargetError", "UnknownNameError", "WhiteBox", "evaluate", "explain",
    "hookimpl", "load_model", "methods", "metrics", "model_explainers", "perturbations",
]
