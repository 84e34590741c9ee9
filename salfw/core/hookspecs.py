"""pluggy hook specifications. A plugin module implements any of these with
``@salfw.hookimpl`` and calls ``register`` once per class it provides."""

import pluggy

PROJECT = "salfw"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def salfw_register_methods(register):
    """Call ``register(MethodClass)`` for each attribution method."""


@hookspec
def salfw_register_metrics(register):
    """Call ``register(MetricClass)`` for each evaluation metric."""


@hookspec
def salfw_register_perturbations(register):
    """Call ``register(PerturbationClass)`` for each perturbation strategy."""


@hookspec
def salfw_register_model_loaders(register):
    """Call ``register(LoaderClass)`` for each model-spec scheme (``builtin:``, ``onnx:`` ...)."""


@hookspec
def salfw_register_model_explainers(register):
    """Call ``register(ModelExplainerClass)`` for each whole-network explainer."""
