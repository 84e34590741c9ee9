"""Relevance propagation for method authors: the engine, its rules and composites.

* :func:`capture` (:mod:`.graph`) reads a module as a graph of steps with
  ``torch.fx``, once per model (cached, invalidated when the module tree changes):
  functional calls and a module called twice are steps of their own.
* :class:`Network` (:mod:`.engine`) runs that graph (BatchNorm folded into new
  tensors, the module untouched) and passes relevance from the output to the
  input: the composite's rule at every Linear/Conv2d layer, an affine BatchNorm and
  an attention's projections, and a fixed rule, with its paper, at every other
  step (activations, additions, concatenation, gates, LayerNorm, softmax,
  attention); :func:`propagate_batches` runs it over a batch in the method's
  chunks. DeepLIFT runs the same graph with its own :class:`Operators`.
* :class:`Rule` (:mod:`.rules`): how relevance moves through a Linear/Conv2d
  layer. A rule has a kebab-case ``name``, a ``summary``, a classmethod
  ``from_settings(settings)`` reading the method's numbers (:class:`Settings`)
  and ``__call__(layer, x, z, relevance)``; :func:`modified_gradients` and
  :func:`stabilize` do the arithmetic of the modified-gradient form.
* :class:`Composite` (:mod:`.composites`): ``rules(layers)`` assigns a rule to
  every :class:`LayerInfo`; :func:`resolve` applies a registered composite and
  a per-layer mapping such as ``"features.0=z-box;classifier.*=epsilon"``.

Rules and composites are registered through pluggy, like methods: a plugin
implements ``salfw_register_rules(register)`` and
``salfw_register_composites(register)`` and calls ``register(Class)``; the
built-in ones are registered by ``salfw.plugins.lrp``. :func:`make_rule` and
:func:`resolve` look names up in the registry.
"""

from salfw.core.contracts import Composite

from .composites import (
    BUILTIN_COMPOSITES,
    AlphaTwoBetaOne,
    DeepTaylorComposite,
    EpsilonAlpha2Beta1,
    EpsilonGammaBox,
    EpsilonPlus,
    EpsilonPlusFlat,
    parse_mapping,
    resolve,
)
from .engine import (
    PLAIN,
    SUPPORTED_LAYERS,
    LayerInfo,
    MaxPool,
    Network,
    Operators,
    Start,
    layer_sums,
    one_hot_start,
    propagate_batches,
    unit_start,
)
from .graph import Captured, Step, capture
from .rules import (
    BUILTIN_RULES,
    AlphaBeta,
    Epsilon,
    Excitation,
    Flat,
    Gamma,
    Layer,
    Pass,
    Rule,
    RuleSpec,
    Settings,
    WeightBias,
    WSquare,
    ZBox,
    ZPlus,
    ZPlusBias,
    input_gradient,
    make_rule,
    modified_gradients,
    stabilize,
)

__all__ = [
    "BUILTIN_COMPOSITES", "BUILTIN_RULES", "PLAIN", "SUPPORTED_LAYERS", "AlphaBeta", "AlphaTwoBetaOne", "Captured",
    "Composite", "DeepTaylorComposite", "Epsilon", "EpsilonAlpha2Beta1", "EpsilonGammaBox", "EpsilonPlus",
    "EpsilonPlusFlat", "Excitation", "Flat", "Gamma", "Layer", "LayerInfo", "MaxPool", "Network", "Operators", "Pass",
    "Rule", "RuleSpec", "Settings", "Start", "Step", "WSquare", "WeightBias", "ZBox", "ZPlus", "ZPlusBias", "capture",
    "input_gradient", "layer_sums", "make_rule", "modified_gradients", "one_hot_start", "parse_mapping",
    "propagate_batches", "resolve", "stabilize", "unit_start",
]
