"""Relevance rules for Linear, Conv2d and affine (unfoldable BatchNorm) layers.

Every rule follows the "modified gradient" form Zennit uses (Anders et al.,
"Software for dataset-wide XAI", 2021): for a layer ``z = layer(x; w, b)`` the
rule forms one or more modified copies ``z_m = layer(f_m(x); g_m(w), g_m(b))``
and the input relevance is

    R_in = sum_m c_m * f_m(x) ⊙ ∂/∂x' [ z_m · (R_out / stab(d)) ]

with ``d`` the rule's denominator, i.e. for the plain z-rule
``R_j = Σ_k x_j w_jk R_k / z_k``. ``stab(d) = d + ε·sign(d)`` (sign(0) = +1),
Zennit's stabiliser. The rules and their defaults are Zennit 0.5's (``z-plus`` and
``w-square`` are its ``ZPlus`` and ``WSquare`` with ``zero_params='bias'``, as Montavon et al.
define them; ``z-plus-bias`` is its plain ``ZPlus``):

===============  ===========================================================================
``epsilon``      ``x w`` over ``z + ε sign z`` (Bach et al. 2015; ε = 1e-6)
``z-plus``       ``x⁺w⁺ + x⁻w⁻`` over their sum, no bias: conservative (Montavon et al. 2017)
``z-plus-bias``  ``x⁺w⁺ + b⁺ + x⁻w⁻`` over their sum: the bias absorbs ``b⁺/(…)`` (Zennit)
``alpha-beta``   ``α (x⁺w⁺ + x⁻w⁻)/(…) − β (x⁺w⁻ + x⁻w⁺)/(…)`` (Bach et al. 2015; α = 2, β = 1)
``gamma``        weights ``w + γ w⁺`` for positive outputs, ``w + γ w⁻`` for negative ones
                 (Montavon et al. 2019, generalised as in Zennit; γ = 0.25)
``z-box``        ``x w − l w⁺ − h w⁻`` with input bounds l ≤ x ≤ h; the bias terms cancel
                 (b − b⁺ − b⁻ = 0): conservative (Montavon et al. 2017)
``w-square``     ``w²`` with unit inputs, no bias (Montavon et al. 2017)
``flat``         unit weights and inputs, no bias (Lapuschkin et al. 2019)
``pass``         relevance passes unchanged (shapes must agree)
``excitation``   ``x w⁺`` over its sum, no bias: the marginal winning probability of
                 excitation backprop (Zhang et al. 2018)
===============  ===========================================================================

A rule is a :class:`Rule` subclass: a kebab-case ``name``, a ``summary``, a
classmethod ``from_settings(settings)`` that configures it from the method's
numbers (:class:`Settings`) and ``__call__(layer, x, z, relevance)`` returning
the relevance of the layer's input; ``layer`` is a :class:`Layer` (the module's
parameters and a functional forward). :func:`modified_gradients` does the work
of the formula above given the modified inputs, the modified parameters and the
map from the modified outputs to output gradients; the rule multiplies the
results by its modified inputs and adds them up. Rules are registered by name
through the ``salfw_register_rules`` hook (the built-in ones by ``salfw.plugins.lrp``)
and looked up with :func:`make_rule`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable
from functools import partial
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from salfw.core.contracts import PropagationRule
from salfw.core.errors import ParameterError, PluginError
from salfw.core.registry import get_registry

#: A weight and its bias (None for a layer without bias, or a term that leaves the bias out).
WeightBias = tuple[torch.Tensor, torch.Tensor | None]


def stabilize(d: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``d + ε·sign(d)`` with sign(0) = +1 (Zennit's ``stabilize``), so the division is safe."""
    return d + ((d == 0).to(d) + d.sign()) * epsilon


@dataclasses.dataclass(frozen=True)
class Settings:
    """The numbers rules take; defaults are Zennit 0.5's (``EpsilonPlus``, ``Gamma``, ``AlphaBeta``).
    ``low``/``high`` are the bounds of the network input (z-box), set by the method."""

    epsilon: float = 1e-6
    gamma: float = 0.25
    alpha: float = 2.0
    beta: float = 1.0
    stabilizer: float = 1e-6
    low: torch.Tensor | float = 0.0
    high: torch.Tensor | float = 1.0


class Layer:
    """A Linear, Conv2d or per-channel affine layer seen by a rule: its parameters (the module's, or
    given ones such as BatchNorm-folded tensors) and ``forward(x, weight, bias)``. ``kind`` is
    ``"linear"``, ``"conv"`` (from the module's type by default) or ``"affine"``: ``x ↦ w ⊙ x + b``
    with one weight per channel (dimension 1), a BatchNorm that cannot be folded into a layer
    before it. ``conv`` is a convolution's (stride, padding, dilation, groups), the module's by
    default (a functional ``F.conv2d`` call gives its own). The engine makes one per layer and
    explanation, so :meth:`modified` computes each modified parameter once per explanation."""

    def __init__(self, module: nn.Module, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                 kind: str | None = None, conv: tuple[Any, Any, Any, int] | None = None):
        self.module = module
        self.kind = kind or ("conv" if isinstance(module, nn.Conv2d) else "linear")
        self.weight: torch.Tensor = cast(torch.Tensor, module.weight) if weight is None else weight
        self.bias: torch.Tensor | None = cast("torch.Tensor | None", module.bias) if weight is None else bias
        self.forward: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor] = (
            _affine if self.kind == "affine" else F.linear)
        if self.kind == "conv":
            m = cast(nn.Conv2d, module)
            self.conv = conv or (m.stride, m.padding, m.dilation, m.groups)
            self.forward = partial(_convolution, arguments=self.conv)
        self._modified: dict[Hashable, WeightBias] = {}

    def modified(self, key: Hashable, make: Callable[[torch.Tensor], torch.Tensor]) -> WeightBias:
        """``(make(weight), make(bias))`` (bias None stays None), computed once and kept under ``key``."""
        if key not in self._modified:
            with torch.no_grad():
                self._modified[key] = (make(self.weight), None if self.bias is None else make(self.bias))
        return self._modified[key]

    def positive(self) -> WeightBias:
        """``(w⁺, b⁺)``"""
        return self.modified("positive", lambda t: t.clamp(min=0))

    def negative(self) -> WeightBias:
        """``(w⁻, b⁻)``"""
        return self.modified("negative", lambda t: t.clamp(max=0))


def _channels(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-channel vector shaped to broadcast over ``x`` (N, C, ...)."""
    return t.view((1, -1) + (1,) * (x.dim() - 2))


def _convolution(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 arguments: tuple[Any, Any, Any, int]) -> torch.Tensor:
    return F.conv2d(x, weight, bias, *arguments)


def _affine(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    out = x * _channels(weight, x)
    return out if bias is None else out + _channels(bias, x)


def input_gradient(layer: Layer, x: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``∂(layer(x; weight, ·) · grad)/∂x``: ``grad @ weight`` for Linear, ``grad ⊙ weight`` per channel
    for an affine layer, the transposed convolution (the kernel autograd runs for ``conv2d``) for
    Conv2d, without building an autograd graph."""
    if layer.kind == "linear":
        return grad @ weight
    if layer.kind == "affine":
        return grad * _channels(weight, x)
    stride, padding, dilation, groups = layer.conv
    if isinstance(padding, str):  # 'same'/'valid': let autograd resolve the padding
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(layer.forward(xg, weight, None), xg, grad)
        return g
    return torch.ops.aten.convolution_backward(grad, x, weight, None, _pair(stride), _pair(padding), _pair(dilation),
                                               False, [0, 0], groups, (True, False, False))[0]


def modified_gradients(layer: Layer, inputs: list[torch.Tensor], params: list[WeightBias],
                       mapper: Callable[[list[torch.Tensor]], list[torch.Tensor]],
                       outputs: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """Forward each modified input through the layer with its modified (weight, bias) (or take the
    given ``outputs``), map the outputs to output gradients with ``mapper`` and return
    ``∂(Σ_m z_m · g_m)/∂ input_m``."""
    with torch.no_grad():
        outs = outputs if outputs is not None else [
            layer.forward(i, w, b) for i, (w, b) in zip(inputs, params, strict=True)]
        return [input_gradient(layer, i, w, g) for i, (w, _b), g in zip(inputs, params, mapper(outs), strict=True)]


def _has_negatives(x: torch.Tensor) -> bool:
    """Whether any input is negative. Inputs after a ReLU are not: then the x⁻ terms of the sign-split
    rules are exactly zero (their outputs ``layer(x⁻; w, no bias)`` too) and are skipped."""
    return bool((x < 0).any())


class Rule(PropagationRule):
    """Base class of relevance rules: a kebab-case ``name`` (registry key and the ``rule`` of
    ``meta["layers"]``), a one-line ``summary`` with the paper, :meth:`from_settings` and
    ``__call__``."""

    @classmethod
    def from_settings(cls, settings: Settings) -> Rule:
        """The rule configured by the method's numbers; this default is for rules that take none."""
        return cls()

    def __call__(self, layer: Layer, x: torch.Tensor, z: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
        """The relevance of the layer's input ``x``, given its output ``z = layer(x)`` and the
        output's ``relevance`` (shaped like ``z``)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.name


class Epsilon(Rule):
    """LRP-ε: ``R_j = Σ_k x_j w_jk R_k / stab(z_k)`` with ``stab`` adding ``ε`` (``settings.epsilon``,
    Zennit's 1e-6) with the sign of ``z_k``."""

    name = "epsilon"
    summary = "x w over z + ε sign z (Bach et al. 2015)"

    def __init__(self, epsilon: float = 1e-6):
        self.epsilon = epsilon

    @classmethod
    def from_settings(cls, settings: Settings) -> Epsilon:
        return cls(settings.epsilon)

    def __call__(self, layer: Layer, x: torch.Tensor, z: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
        (g,) = modified_gradients(layer, [x], [(layer.weight, layer.bias)],
                                  lambda o: [relevance / stabilize(o[0], self.epsilon)], outputs=[z])
        return x * g


class ZPlus(Rule):
    """z⁺ (Montavon, Lapuschkin, Binder, Samek & Müller 2017, "Explaining nonlinear classification
    decisions with deep Taylor decomposition"):
    ``R_j = Σ_k z⁺_jk R_k / Σ_j' z⁺_j'k`` with ``z⁺_jk = x⁺_j w⁺_jk + x⁻_j w⁻_jk`` (the paper's
    ``x_j w⁺_jk`` for the non-negative inputs of a ReLU network; the ``x⁻w⁻`` term, Zennit's
    extension, keeps the numerator non-negative for negative inputs). The bias is left out of the
    denominator, so every unit's relevance passes whole to its inputs: relevance is conserved at
    every layer, biased or not, except at a unit none of whose inputs contributes positively
    (``Σ_j' z⁺_j'k = 0``; in a ReLU network only a unit switched on by a positive bias alone, or an
    output with no positive input), whose relevance has nowhere to go. Reads ``settings.stabilizer``.
    :class:`ZPlusBias` (``z-plus-bias``) is Zennit's variant with ``b⁺`` in the denominator."""

    name = "z-plus"
    summary = "x⁺w⁺ + x⁻w⁻ over their sum, no bias: conservative (Montavon et al. 2017)"
    #: whether the positive part of the bias joins the denominator (Zennit's ``ZPlus``)
    bias = False

    def __init__(self, stabilizer: float = 1e-6):
        self.stabilizer = stabilizer

    @classmethod
    def from_settings(cls, settings: Settings) -> ZPlus:
        return cls(settings.stabilizer)

    def __call__(self, layer: Layer, x: torch.Tensor, z: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
        wp, bp = layer.positive()
        positive = (wp, bp if self.bias else None)
        xp = x.clamp(min=0)
        if not _has_negatives(x):
            (gp,) = modified_gradients(layer, [xp], [positive],
                                       lambda o: [relevance / stabilize(o[0], self.stabilizer)])
            return xp * gp
        xn = x.clamp(max=0)
        gp, gn = modified_gradients(layer, [xp, xn], [positive, (layer.negative()[0], None)],
                                    lambda o: [relevance / stabilize(o[0] + o[1], self.stabilizer)] * 2)
        return xp * gp + xn * gn


class ZPlusBias(ZPlus):
    """z⁺ with the bias's positive part in the denominator, Zennit 0.5's ``ZPlus`` (and the rule of
    its ``EpsilonPlus`` composites): ``R_j = Σ_k (x⁺_j w⁺_jk + x⁻_j w⁻_jk) R_k / (Σ_j' (…) + b⁺_k)``,
    so the bias absorbs the share ``b⁺_k / (Σ_j' (…) + b⁺_k)`` of each unit's relevance: not
    conservative on a network with positive biases. Reads ``settings.stabilizer``."""

    name = "z-plus-bias"
    summary = "x⁺w⁺ + b⁺ + x⁻w⁻ over their sum: the bias absorbs its share (Zennit's ZPlus)"
    bias = True


class AlphaBeta(Rule):
    """LRP-αβ: ``α`` times the positive contributions over their sum minus ``β`` times the negative
    ones over theirs, ``α − β = 1``; reads ``settings.alpha``, ``beta`` (Zennit's 2 and 1) and ``stabilizer``."""

    name = "alpha-beta"
    summary = "α times the positive minus β times the negative contributions (Bach et al. 2015)"

    def __init__(self, alpha: float = 2.0, beta: float = 1.0, stabilizer: float = 1e-6):
        if alpha < 0 or beta < 0 or abs(alpha - beta - 1) > 1e-12:
            raise ParameterError(f"alpha-beta rule needs alpha, beta >= 0 and alpha - beta = 1 (conservation); "
                                 f"got alpha={alpha}, beta={beta}")
        self.alpha, self.beta, self.stabilizer = alpha, beta, stabilizer

    @classmethod
    def from_settings(cls, settings: Settings) -> AlphaBeta:
        return cls(settings.alpha, settings.beta, settings.stabilizer)

    def __call__(self, layer: Layer, x: torch.Tensor, z: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
        (wp, bp), (wn, bn) = layer.positive(), layer.negative()
        xp = x.clamp(min=0)
        if not _has_negatives(x):
            g = modified_gradients(layer, [xp, xp], [(wp, bp), (wn, bn)],
                                   lambda o: [relevance / stabilize(o[0], self.stabilizer),
                                              relevance / stabilize(o[1], self.stabilizer)])
            return self.alpha * (xp * g[0]) - self.beta * (xp * g[1])
        xn = x.clamp(max=0)

        def mapper(o: list[torch.Tensor]) -> list[torch.Tensor]:
            dp = stabilize(o[0] + o[1], self.stabilizer)
            dn = stabilize(o[2] + o[3], self.stabilizer)
            return [relevance / dp] * 2 + [relevance / dn] * 2

        g = modified_gradients(layer, [xp, xn, xp, xn], [(wp, bp), (wn, None), (wn, bn), (wp, None)], mapper)
        return self.alpha * (xp * g[0] + xn * g[1]) - self.beta * (xp * g[2] + xn * g[3])


class Gamma(Rule):
    """LRP-γ: the z-rule with weights ``w + γ w⁺`` where the output is positive and ``w + γ w⁻`` where it
    is negative (Zennit's generalisation); reads ``settings.gamma`` (Zennit's 0.25) and ``stabilizer``."""

    name = "gamma"
    summary = "weights w + γw⁺ for positive outputs, w + γw⁻ for negative ones (Montavon et al. 2019)"

    def __init__(self, gamma: float = 0.25, stabilizer: float = 1e-6):
        self.gamma, self.stabilizer = gamma, stabilizer

    @classmethod
    def from_settings(cls, settings: Settings) -> Gamma:
        return cls(settings.gamma, settings.stabilizer)

    def __call__(self, layer: Layer, x: torch.Tensor, z: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
        gm = self.gamma
        wp, bp = layer.modified(("gamma+", gm), lambda t: t + gm * t.clamp(min=0))
        wn, bn = layer.modified(("gamma-", gm), lambda t: t + gm * t.clamp(max=0))
        up_mask, down_mask = (z > 0).to(z), (z < 0).to(z)
        xp = x.clamp(min=0)
        if not _has_negatives(x):
            g = modified_gradients(layer, [xp, xp], [(wp, bp), (wn, bn)],
                                   lambda o: [up_mask * relevance / stabilize(o[0], self.stabilizer),
                                              down_mask * relevance / stabilize(o[1], self.stabilizer)])
            return xp * g[0] + xp * g[1]
        xn = x.clamp(max=0)

        def mapper(o: list[torch.Tensor]) -> list[torch.Tensor]:
            up = up_mask * relevance / stabilize(o[0] + o[1], self.stabilizer)
            down = down_mask * relevance / stabilize(o[2] + o[3], self.stabilizer)
            return [up, up, down, down]

        g = modified_gradients(layer, [xp, xn, xp, xn], [(wp, bp), (wn, None), (wn, bn), (wp, None)], mapper)
        return xp * g[0] + xn * g[1] + xp * g[2] + xn * g[3]


class ZBox(Rule):
    """z^B: ``R_j = Σ_k (x_j w_jk − l_j w⁺_jk − h_j w⁻_jk) R_k / Σ_j' (…)`` for inputs in ``[l, h]``
    (``settings.low``, ``settings.high``: the network input's bounds); reads ``stabilizer``. The three
    terms carry the biases ``b``, ``b⁺`` and ``b⁻``, which cancel (``b − b⁺ − b⁻ = 0``, as in Zennit's
    ``ZBox`` with or without ``zero_params='bias'``), so the rule conserves relevance, biased or not,
    except at a unit whose denominator is zero (``x_j = l_j`` wherever ``w_jk > 0`` and ``x_j = h_j``
    wherever ``w_jk < 0``: e.g. a filter with no negative weight over black pixels, switched on by
    its bias), whose relevance has nowhere to go."""

    name = "z-box"
    summary = "x w − l w⁺ − h w⁻ for inputs bounded by l ≤ x ≤ h (Montavon et al. 2017)"

    def __init__(self, low: torch.Tensor | float, high: torch.Tensor | float, stabilizer: float = 1e-6):
        self.low, self.high, self.stabilizer = low, high, stabilizer

    @classmethod
    def from_settings(cls, settings: Settings) -> ZBox:
        return cls(settings.low, settings.high, settings.stabilizer)

    def __call__(self, layer: Layer, x: torch.Tensor, z: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
        (wp, bp), (wn, bn) = layer.positive(), layer.negative()
        low = torch.as_tensor(self.low, dtype=x.dtype, device=x.device).expand_as(x)
        high = torch.as_tensor(self.high, dtype=x.dtype, device=x.device).expand_as(x)
        with torch.no_grad():
            outputs = [z, layer.forward(low, wp, bp), layer.forward(high, wn, bn)]
        g = modified_gradients(layer, [x, low, high], [(layer.weight, layer.bias), (wp, bp), (wn, bn)],
                               lambda o: [relevance / stabilize(o[0] - o[1] - o[2], self.stabilizer)] * 3,
                               outputs=outputs)
        return x * g[0] - low * g[1] - high * g[2]


class WSquare(Rule):
    """w²: ``R_j = Σ_k w²_jk R_k / Σ_j' w²_j'k``, independent of the input, no bias (Montavon et al.
    2017; Zennit's ``WSquare(zero_params='bias')``, whose default adds ``b²`` to the denominator), so
    it conserves relevance, biased or not; reads ``settings.stabilizer``."""

    name = "w-square"
    summary = "squared weights with unit inputs, no bias (Montavon et al. 2017)"

    def __init__(self, stabilizer: float = 1e-6):
        self.stabilizer = stabilizer

    @classmethod
    def from_settings(cls, settings: Settings) -> WSquare:
        return cls(settings.stabilizer)

    def __call__(self, layer: Layer, x: torch.Tensor, z: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
        (g,) = modified_gradients(layer, [torch.ones_like(x)], [(layer.modified("square", lambda t: t ** 2)[0], None)],
                                  lambda o: [relevance / stabilize(o[0], self.stabilizer)])
        return g


class Flat(Rule):
    """flat: ``R_j = Σ_k R_k / Σ_j' 1``, relevance spread evenly over each output's receptive field;
    reads ``settings.stabilizer``."""

    name = "flat"
    summary = "unit weights and inputs, no bias: relevance spread evenly (Lapuschkin et al. 2019)"

    def __init__(self, stabilizer: float = 1e-6):
        self.stabilizer = stabilizer

    @classmethod
    def from_settings(cls, settings: Settings) -> Flat:
        return cls(settings.stabilizer)

    def __call__(self, layer: Layer, x: torch.Tensor, z: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
        (g,) = modified_gradients(layer, [torch.ones_like(x)], [(layer.modified("ones", torch.ones_like)[0], None)],
                                  lambda o: [relevance / stabilize(o[0], self.stabilizer)])
        return g


class Pass(Rule):
    """Relevance passes unchanged; takes no settings."""

    name = "pass"
    summary = "relevance passes unchanged (layers whose input and output have the same shape)"

    def __call__(self, layer: Layer, x: torch.Tensor, z: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
        if relevance.shape != x.shape:
            raise ParameterError(f"the pass rule needs a layer whose input and output have the same shape; "
                                 f"got {tuple(x.shape)} -> {tuple(relevance.shape)}")
        return relevance


class Excitation(Rule):
    """Marginal winning probability ``p_j = x_j Σ_i w⁺_ji p_i / Σ_k w⁺_ki x_k`` (Zhang et al. 2018);
    reads ``settings.stabilizer``. ``negate=True`` uses ``(−w)⁺``: the dual "non-target" units of
    contrastive excitation backprop."""

    name = "excitation"
    summary = "x w⁺ over its sum, no bias: marginal winning probabilities (Zhang et al. 2018)"

    def __init__(self, stabilizer: float = 1e-6, negate: bool = False):
        self.stabilizer, self.negate = stabilizer, negate

    @classmethod
    def from_settings(cls, settings: Settings) -> Excitation:
        return cls(settings.stabilizer)

    def __call__(self, layer: Layer, x: torch.Tensor, z: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
        w = layer.modified("negated-positive", lambda t: (-t).clamp(min=0))[0] if self.negate else layer.positive()[0]
        (g,) = modified_gradients(layer, [x], [(w, None)],
                                  lambda o: [relevance / stabilize(o[0], self.stabilizer)])
        return x * g


#: The built-in rules, registered by ``salfw.plugins.lrp``.
BUILTIN_RULES: tuple[type[Rule], ...] = (Epsilon, ZPlus, ZPlusBias, AlphaBeta, Gamma, ZBox, WSquare, Flat, Pass,
                                         Excitation)

#: What a composite or a method may give for a layer: a registered rule's name, a :class:`Rule`
#: subclass (configured with its ``from_settings``) or a configured instance.
RuleSpec = str | Rule | type[Rule]


def make_rule(spec: RuleSpec, settings: Settings) -> Rule:
    """The rule instance ``spec`` names, configured by ``settings`` (instances pass through);
    an unknown name raises :class:`~salfw.core.errors.UnknownNameError` listing the registered rules."""
    if isinstance(spec, Rule):
        return spec
    cls = get_registry().get("rule", spec) if isinstance(spec, str) else spec
    rule = cls.from_settings(settings)
    if not isinstance(rule, Rule):
        raise PluginError(f"rule '{cls.name}' must subclass salfw.sdk.propagation.Rule to be propagated, "
                          f"got {type(rule).__name__}")
    return rule
