"""Excitation backprop and its contrastive variant (Zhang, Bargal, Lin, Brandt, Shen & Sclaroff
2018, "Top-down neural attention by excitation backprop", IJCV).

A winner-take-all process run top-down: starting from probability 1 at the
target unit, each Linear/Conv2d layer passes the *marginal winning probability*

    p_j = x_j Σ_i w⁺_ji p_i / Σ_k w⁺_ki x_k

to its inputs (only excitatory, positive weights; biases are ignored), ReLU
and Dropout pass it unchanged, MaxPool2d to the winner, average pooling,
additions and concatenations in proportion to their inputs (the relevance
engine's graph, :mod:`salfw.sdk.propagation.engine`). A BatchNorm that cannot
be folded into the layer before it (DenseNet's) is a per-channel affine layer
with the same rule: each unit has one input, so it passes its probability
through where its scale is positive. With non-negative inputs the map is a
probability distribution over the input (it sums to 1). The map is returned
at the network input (the paper also reads it at an inner layer; salfw does not).

The winning probabilities assume non-negative activations (ReLU networks): a
network with another activation (SiLU, GELU, sigmoid gates), LayerNorm,
attention, gating products, or a Linear/Conv2d layer above the input that reads
a value no rectifier bounds below (MobileNetV2's linear bottlenecks) is
refused, naming the layer, with ``lrp`` as the method that applies. ReLU6 is a
rectifier: a unit saturated at 6 is a constant and passes nothing down.

The contrastive variant (c-MWP) subtracts the map of the dual "non-target" unit,
the output unit whose weights are the negated target weights: ``p(target) −
p(dual)``, which removes what the target shares with every other class. It
sums to about 0; its positive part is the paper's contrastive map.
Denominators get a 1e-6 stabiliser (Zennit's convention). Local explanation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from salfw.core.context import Context
from salfw.core.contracts import Method
from salfw.core.errors import ModelRequirementError
from salfw.core.hookspecs import hookimpl
from salfw.core.models import Model
from salfw.core.params import batch_size, param
from salfw.sdk.propagation import Excitation, Network, propagate_batches, unit_start


class ExcitationBackprop(Method):
    name = "excitation-backprop"
    box = "white"
    kind = "additive"
    summary = "excitation backprop: marginal winning probabilities (Zhang et al. 2018)"
    scope = "local"
    requires = ("a ReLU network: rectified, non-negative inputs to every Linear/Conv2d layer above the first",)
    contrastive = False

    @dataclasses.dataclass(frozen=True)
    class Params:
        stabilizer: float = param(1e-6, "added to denominators (with their sign) for safe division", low=0.0)
        batch_size: int = batch_size(64, "samples per propagation")

    def check_model(self, model: Model) -> None:
        super().check_model(model)
        self._network(model, fold=False)  # refuses before anything runs

    def _network(self, model: Model, fold: bool = True) -> Network:
        net = Network(model, self.name, fold=fold)
        violation = net.relu_network_violation(nonnegative_inputs=True)
        if violation is not None:
            raise ModelRequirementError(
                f"'{self.name}' assumes non-negative activations, as in a ReLU network (Zhang et al. 2018 define "
                f"winning probabilities over them): {violation}; use 'lrp', whose rules cover any activation, "
                f"or 'integrated-gradients'")
        return net

    def attribute(self, model: Model, x: torch.Tensor, targets: torch.Tensor, ctx: Context
                  ) -> torch.Tensor | tuple[torch.Tensor, dict[str, Any]]:
        stabilizer, size = self.params.stabilizer, self.params.batch_size
        net = self._network(model)
        rules = {layer.path: Excitation(stabilizer) for layer in net.layers}
        target_map, _ = propagate_batches(net, x, targets, rules, ctx, stabilizer, unit_start, size)
        if not self.contrastive or not net.layers:
            return target_map
        dual = dict(rules)
        dual[net.layers[-1].path] = Excitation(stabilizer, negate=True)
        dual_map, _ = propagate_batches(net, x, targets, dual, ctx, stabilizer, unit_start, size)
        return target_map - dual_map, {"target_map": target_map, "dual_map": dual_map}


class ContrastiveExcitationBackprop(ExcitationBackprop):
    name = "contrastive-excitation-backprop"
    kind = "comparative"
    summary = "contrastive excitation backprop: target minus dual-unit winning probabilities (Zhang et al. 2018)"
    contrastive = True


@hookimpl
def salfw_register_methods(register: Callable[[type], type]) -> None:
    register(ExcitationBackprop)
    register(ContrastiveExcitationBackprop)
