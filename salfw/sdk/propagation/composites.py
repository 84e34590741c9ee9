"""Composites: which rule each Linear/Conv2d layer gets, by name or by a per-layer mapping.

The built-in composites are Zennit 0.5's (``zennit.composites``), with the same
definitions; the "first layer" is the first Linear/Conv2d in execution order
(``EpsilonGammaBox`` looks for the first Conv2d only, as Zennit does):

========================  ========================================================================
``epsilon-plus``          Conv2d: z-plus; Linear: epsilon
``epsilon-plus-flat``     first Linear/Conv2d: flat; other Conv2d: z-plus; Linear: epsilon
``epsilon-gamma-box``     first Conv2d: z-box; other Conv2d: gamma; Linear: epsilon
``epsilon-alpha2-beta1``  Conv2d: alpha-beta (α = 2, β = 1); Linear: epsilon
``deep-taylor``           first Linear/Conv2d: z-box; all others: z-plus (Montavon et al. 2017)
========================  ========================================================================

A composite is a function ``composite(layers) -> {path: rule}`` taking the
network's :class:`~.engine.LayerInfo` list, a rule being a registered name, a
:class:`~.rules.Rule` instance or a factory ``factory(settings) -> Rule``. :func:`register_composite` adds one.

A per-layer mapping is a string ``"pattern=rule;pattern=rule"`` whose patterns
are layer paths with shell wildcards (``features.0=z-box;classifier.*=epsilon``);
the first matching pattern wins and overrides the composite.
"""

from __future__ import annotations

import fnmatch
from typing import Callable

from salfw.core.errors import ParameterError, UnknownNameError

from .engine import LayerInfo
from .rules import AlphaBeta, Rule, Settings, make_rule


def _first(layers: list[LayerInfo], conv_only: bool = False) -> str | None:
    for layer in layers:
        if layer.is_conv or not conv_only:
            return layer.path
    return None


def epsilon_plus(layers):
    return {l.path: "z-plus" if l.is_conv else "epsilon" for l in layers}


def epsilon_plus_flat(layers):
    rules = epsilon_plus(layers)
    first = _first(layers)
    if first is not None:
        rules[first] = "flat"
    return rules


def epsilon_gamma_box(layers):
    rules = {l.path: "gamma" if l.is_conv else "epsilon" for l in layers}
    first = _first(layers, conv_only=True)
    if first is not None:
        rules[first] = "z-box"
    return rules


def epsilon_alpha2_beta1(layers):
    fixed = lambda s: AlphaBeta(2.0, 1.0, s.stabilizer)  # α, β fixed by the composite's name
    return {l.path: fixed if l.is_conv else "epsilon" for l in layers}


def deep_taylor(layers):
    rules = {l.path: "z-plus" for l in layers}
    first = _first(layers)
    if first is not None:
        rules[first] = "z-box"
    return rules


#: composite name -> function(layers) -> {path: rule name, Rule or factory}
COMPOSITES: dict[str, Callable[[list[LayerInfo]], dict]] = {
    "epsilon-plus": epsilon_plus,
    "epsilon-plus-flat": epsilon_plus_flat,
    "epsilon-gamma-box": epsilon_gamma_box,
    "epsilon-alpha2-beta1": epsilon_alpha2_beta1,
    "deep-taylor": deep_taylor,
}


def register_composite(name: str, composite: Callable[[list[LayerInfo]], dict]) -> None:
    """Add a composite under ``name``; a name already taken is an error."""
    if name in COMPOSITES:
        raise ParameterError(f"an LRP composite named '{name}' is already registered")
    COMPOSITES[name] = composite


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
    """The rule instance of every Linear/Conv2d layer: the composite, overridden by the mapping."""
    if composite not in COMPOSITES:
        raise UnknownNameError(f"unknown LRP composite '{composite}'; registered: {', '.join(sorted(COMPOSITES))}")
    chosen = dict(COMPOSITES[composite](layers))
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
    return {path: rule(settings) if callable(rule) and not isinstance(rule, Rule) else make_rule(rule, settings)
            for path, rule in chosen.items()}
