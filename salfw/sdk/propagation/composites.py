"""Composites: which rule each layer with a rule gets, by name or by a per-layer mapping.

The layers with a rule are the Linear and Conv2d layers (functional ``F.linear``/``F.conv2d``
calls with a module's parameters too), the affine layers of BatchNorms that cannot be folded
(DenseNet's, ``kind == "affine"``) and an ``nn.MultiheadAttention``'s value and output
projections (``<path>.in_proj``, ``<path>.out_proj``, Linear). Every "Linear" row below applies
to the affine and attention layers too: ``epsilon-plus`` gives them the epsilon rule.
The built-in composites but ``deep-taylor`` are Zennit 0.5's (``zennit.composites``), with
the same definitions: their z⁺ rule is Zennit's ``ZPlus``, i.e. ``z-plus-bias``, with the
bias in the denominator. The "first layer" is the first layer in execution order
(``EpsilonGammaBox`` looks for the first Conv2d only, as Zennit does). ``deep-taylor`` is
Montavon et al.'s (2017) and uses the bias-free ``z-plus`` (Zennit's
``ZPlus(zero_params='bias')``), so it conserves relevance on biased networks too; an affine
BatchNorm (its units have one input each, whose sign is not bounded) gets Montavon et al.'s
rule for unbounded inputs, ``w-square``, which passes each unit's relevance to its input:

========================  ========================================================================
``epsilon-plus``          Conv2d: z-plus-bias; Linear: epsilon
``epsilon-plus-flat``     first Linear/Conv2d: flat; other Conv2d: z-plus-bias; Linear: epsilon
``epsilon-gamma-box``     first Conv2d: z-box; other Conv2d: gamma; Linear: epsilon
``epsilon-alpha2-beta1``  Conv2d: alpha-beta (α = 2, β = 1); Linear: epsilon
``deep-taylor``           first layer: z-box; affine BatchNorm: w-square; all others: z-plus
                          (Montavon et al. 2017)
========================  ========================================================================

A composite is a :class:`~salfw.core.contracts.Composite` subclass with a
kebab-case ``name``, a ``summary`` and ``rules(layers) -> {path: rule}``, taking
the network's :class:`~.engine.LayerInfo` list; a rule is a registered name, a
:class:`~.rules.Rule` subclass (configured with its ``from_settings``) or a
configured instance (see :data:`~.rules.RuleSpec`). Composites are registered
through the ``salfw_register_composites`` hook (the built-in ones by
``salfw.plugins.lrp``).

A per-layer mapping is a string ``"pattern=rule;pattern=rule"`` whose patterns
are layer paths with shell wildcards (``features.0=z-box;classifier.*=epsilon``);
the first matching pattern wins and overrides the composite.
"""

from __future__ import annotations

import fnmatch

from salfw.core.contracts import Composite
from salfw.core.errors import ParameterError
from salfw.core.registry import get_registry

from .engine import LayerInfo
from .rules import AlphaBeta, Rule, RuleSpec, Settings, make_rule


def _first(layers: list[LayerInfo], conv_only: bool = False) -> str | None:
    for layer in layers:
        if layer.is_conv or not conv_only:
            return layer.path
    return None


class EpsilonPlus(Composite):
    name = "epsilon-plus"
    summary = "Conv2d: z-plus-bias; Linear: epsilon (Zennit's EpsilonPlus; Kohlbrenner et al. 2020)"

    def rules(self, layers: list[LayerInfo]) -> dict[str, RuleSpec]:
        return {l.path: "z-plus-bias" if l.is_conv else "epsilon" for l in layers}


class EpsilonPlusFlat(Composite):
    name = "epsilon-plus-flat"
    summary = "first layer: flat; other Conv2d: z-plus-bias; Linear: epsilon (Zennit's EpsilonPlusFlat)"

    def rules(self, layers: list[LayerInfo]) -> dict[str, RuleSpec]:
        rules = EpsilonPlus().rules(layers)
        first = _first(layers)
        if first is not None:
            rules[first] = "flat"
        return rules


class EpsilonGammaBox(Composite):
    name = "epsilon-gamma-box"
    summary = "first Conv2d: z-box; other Conv2d: gamma; Linear: epsilon (Zennit's EpsilonGammaBox; " \
              "Montavon et al. 2019)"

    def rules(self, layers: list[LayerInfo]) -> dict[str, RuleSpec]:
        rules: dict[str, RuleSpec] = {l.path: "gamma" if l.is_conv else "epsilon" for l in layers}
        first = _first(layers, conv_only=True)
        if first is not None:
            rules[first] = "z-box"
        return rules


class AlphaTwoBetaOne(AlphaBeta):
    """The alpha-beta rule with α = 2 and β = 1 whatever the method's alpha and beta
    (the numbers are in the composite's name)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> AlphaTwoBetaOne:
        return cls(2.0, 1.0, settings.stabilizer)


class EpsilonAlpha2Beta1(Composite):
    name = "epsilon-alpha2-beta1"
    summary = "Conv2d: alpha-beta with α = 2, β = 1; Linear: epsilon (Zennit's EpsilonAlpha2Beta1)"

    def rules(self, layers: list[LayerInfo]) -> dict[str, RuleSpec]:
        return {l.path: AlphaTwoBetaOne if l.is_conv else "epsilon" for l in layers}


class DeepTaylorComposite(Composite):
    name = "deep-taylor"
    summary = "first layer: z-box; all others: z-plus, bias-free and conservative (Montavon et al. 2017)"

    def rules(self, layers: list[LayerInfo]) -> dict[str, RuleSpec]:
        rules: dict[str, RuleSpec] = {l.path: "w-square" if l.kind == "affine" else "z-plus" for l in layers}
        first = _first(layers)
        if first is not None:
            rules[first] = "z-box"
        return rules


#: The built-in composites, registered by ``salfw.plugins.lrp``.
BUILTIN_COMPOSITES: tuple[type[Composite], ...] = (EpsilonPlus, EpsilonPlusFlat, EpsilonGammaBox,
                                                   EpsilonAlpha2Beta1, DeepTaylorComposite)


def parse_mapping(text: str) -> list[tuple[str, str]]:
    """``"features.0=z-box;classifier.*=epsilon"`` -> [(pattern, rule name), ...]."""
    pairs = []
    for item in (s.strip() for s in text.split(";")):
        if not item:
            continue
        pattern, sep, rule = item.partition("=")
        if not sep or not pattern.strip() or not rule.strip():
            raise ParameterError(f"a rule mapping looks like 'layer.path=rule;other.*=rule', got item {item!r}")
        pairs.append((pattern.strip(), rule.strip()))
    return pairs


def resolve(layers: list[LayerInfo], composite: str, mapping: str | None, settings: Settings) -> dict[str, Rule]:
    """The rule instance of every Linear/Conv2d layer: the registered composite named ``composite``,
    overridden by the mapping. Unknown composite or rule names raise
    :class:`~salfw.core.errors.UnknownNameError` listing the registered ones."""
    chosen: dict[str, RuleSpec] = dict(get_registry().get("composite", composite)().rules(layers))
    pairs = parse_mapping(mapping) if mapping else []
    for pattern, _rule in pairs:
        if not any(fnmatch.fnmatchcase(l.path, pattern) for l in layers):
            raise ParameterError(f"rule mapping pattern '{pattern}' matches no Linear/Conv2d layer; layers: "
                                 f"{', '.join(l.path for l in layers)}")
    for layer in layers:
        for pattern, rule in pairs:
            if fnmatch.fnmatchcase(layer.path, pattern):
                chosen[layer.path] = rule
                break
    missing = [l.path for l in layers if l.path not in chosen]
    if missing:
        raise ParameterError(f"composite '{composite}' gives no rule for layer(s) {', '.join(missing)}")
    return {path: make_rule(rule, settings) for path, rule in chosen.items()}
