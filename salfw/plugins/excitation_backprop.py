"""Excitation backprop and its contrastive variant (Zhang, Bargal, Lin, Brandt, Shen & Sclaroff
2018, "Top-down neural attention by excitation backprop", IJCV).

A winner-take-all process run top-down: starting from probability 1 at the
target unit, each Linear/Conv2d layer passes the *marginal winning probability*

    p_j = x_j Σ_i w⁺_ji p_i / Σ_k w⁺_ki x_k

to its inputs (only excitatory, positive weights; biases are ignored), ReLU
and Dropout pass it unchanged, MaxPool2d to the winner, average pooling and
additions in proportion to their inputs. With non-negative inputs the map is
a probability distribution over the input (it sums to 1). The map is returned
at the network input (the paper also reads it at an inner layer; salfw does not).

The contrastive variant (c-MWP) subtracts the map of the dual "non-target" unit,
the output unit whose weights are the negated target weights: ``p(target) −
p(dual)``, which removes what the target shares with every other class. It
sums to about 0; its positive part is the paper's contrastive map.
Denominators get a 1e-6 stabiliser (Zennit's convention). Local explanation.
"""

from __future__ import annotations

import dataclasses

import torch

from salfw.core.context import count
from salfw.core.contracts import Method
from salfw.core.hookspecs import hookimpl
from salfw.core.params import param
from salfw.sdk.propagation.engine import network_for
from salfw.sdk.propagation.rules import Excitation


def _unit_start(targets):
    def start(logits):
        return torch.zeros_like(logits).scatter_(1, targets.view(-1, 1).to(logits.device), 1.0)
    return start


class ExcitationBackprop(Method):
    name = "excitation-backprop"
    box = "white"
    kind = "additive"
    summary = "excitation backprop: marginal winning probabilities (Zhang et al. 2018)"
    scope = "local"
    requires = ("Linear/Conv2d/ReLU/pooling/BatchNorm layers and additions",)
    contrastive = False

    @dataclasses.dataclass(frozen=True)
    class Params:
        stabilizer: float = param(1e-6, "added to denominators (with their sign) for safe division", low=0.0)
        batch_size: int = param(64, "samples per propagation", low=1)

    def check_model(self, model):
        super().check_model(model)
        network_for(self, model, keep=True)

    def _map(self, model, net, x, targets, rules):
        out = []
        p = self.params
        for i in range(0, x.shape[0], p.batch_size):
            chunk = x[i:i + p.batch_size]
            relevance, _logits, _layers = net.propagate(model.preprocessing(chunk),
                                                        _unit_start(targets[i:i + p.batch_size]), rules, p.stabilizer)
            count(forward=chunk.shape[0], backward=chunk.shape[0])
            out.append(relevance.reshape(chunk.shape))
        return torch.cat(out)

    def attribute(self, model, x, targets, ctx):
        seed = ctx.seed
        net = network_for(self, model)
        rules = {layer.path: Excitation(self.params.stabilizer) for layer in net.layers}
        target_map = self._map(model, net, x, targets, rules)
        if not self.contrastive or not net.layers:
            return target_map
        dual = dict(rules)
        dual[net.layers[-1].path] = Excitation(self.params.stabilizer, negate=True)
        dual_map = self._map(model, net, x, targets, dual)
        return target_map - dual_map, {"target_map": target_map, "dual_map": dual_map}


class ContrastiveExcitationBackprop(ExcitationBackprop):
    name = "contrastive-excitation-backprop"
    kind = "comparative"
    summary = "contrastive excitation backprop: target minus dual-unit winning probabilities (Zhang et al. 2018)"
    contrastive = True


@hookimpl
def salfw_register_methods(register):
    register(ExcitationBackprop)
    register(ContrastiveExcitationBackprop)
