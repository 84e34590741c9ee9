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


@hookspec
def salfw_register_rules(register):
    """Call ``register(RuleClass)`` for each relevance-propagation rule (a
    :class:`salfw.sdk.propagation.Rule` subclass with a kebab-case ``name``)."""


@hookspec
def salfw_register_composites(register):
    """Call ``register(CompositeClass)`` for each composite (layer -> rule assignment)."""


@hookspec
def salfw_register_datasets(register):
    """Call ``register(DatasetClass)`` for each dataset scheme (``mnist:``, ``folder:``, ``npy:`` ...)."""


@hookspec
def salfw_register_commands(cli):
    """Add click commands to salfw's command line: ``cli.add_command(command)`` or the
    ``@cli.command()`` decorator, as on a ``click.Group``."""
