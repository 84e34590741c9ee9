"""DeepRED: rule extraction from a deep ReLU MLP, layer by layer (Zilke, Loza Mencia and Janssen, 2016).

Let ``h_0`` be the (flattened, pixel-space) input, ``h_1 .. h_m`` the outputs
of the hidden ReLU layers and ``y`` the network's decision (argmax of the
logits) on the training inputs. DeepRED

1. learns a decision tree from ``h_m`` to ``y``: each leaf is a rule
   "conjunction of thresholds on ``h_m`` => class";
2. for every threshold ``h_k[j] > t`` used by the current rules, learns a
   tree from ``h_{k-1}`` to that condition's truth value, giving the
   condition (and its negation) as a disjunction of conjunctions on
   ``h_{k-1}``;
3. substitutes each condition by its disjunction and multiplies out, dropping
   contradictory terms (an empty interval) and duplicates, and repeats from
   ``k = m`` down to ``k = 1``,

so that the final rules speak of input features only. Zilke et al. use C4.5
with pruning; here the trees are scikit-learn's CART
(``DecisionTreeClassifier``, Gini) with a small depth per layer
(``output_depth`` for the first, ``depth`` for the others) and
``min_samples_leaf`` (Zilke et al.'s minimum-examples pruning), which keeps
the merged rule set small. Each final rule remembers the leaf of the first tree it
came from; the rule set classifies an input by the class with the most
leaves one of whose rules match (ties to the lower class; counting leaves,
not rules, so that a leaf whose conditions multiplied out into many terms
does not outvote the others); an input no rule matches gets the network's
most frequent decision on the training inputs.
The *fidelity* is the fraction of held-out inputs on which the rules agree
with the network.

Only plain MLPs qualify: an ``nn.Sequential`` of ``Flatten``, ``Linear`` and
``ReLU`` layers with at least one ReLU.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import numpy as np
import torch
from torch import nn

from salfw.core.context import Context
from salfw.core.contracts import ModelExplainer
from salfw.core.errors import ModelRequirementError, ParameterError
from salfw.core.guard import calling_thread_only, preserved
from salfw.core.hookspecs import hookimpl
from salfw.core.models import Model, WhiteBox
from salfw.core.params import batch_size, param
from salfw.sdk.understanding.context import explainer_context
from salfw.sdk.understanding.data import train_heldout
from salfw.sdk.understanding.layers import require_white_box
from salfw.sdk.understanding.rules import Term, conditions, conjoin, dedupe, format_term, leaf_terms, matches

_ALLOWED = (nn.Flatten, nn.Linear, nn.ReLU)


def mlp_activations(model: WhiteBox, x: torch.Tensor, ctx: Context) -> tuple[list[np.ndarray], np.ndarray]:
    """``([h_0, h_1, .., h_m], decisions)``: the flattened input, each ReLU's output (float64 numpy) and
    the argmax of the logits, for the pixel-space batch ``x`` (in chunks of ``ctx``'s batch size)."""
    sequential = typing.cast(nn.Sequential, model.module)  # DeepRED.check_model: an nn.Sequential MLP
    relus = [m for m in sequential if isinstance(m, nn.ReLU)]
    layers: list[list[torch.Tensor]] = [[] for _ in relus]
    handles = [r.register_forward_hook(
        calling_thread_only(lambda _m, _i, o, k=k: layers[k].append(o.detach().flatten(1))))
               for k, r in enumerate(relus)]
    decisions = []
    try:
        with torch.no_grad():
            for chunk in ctx.batches(len(x), description="deepred activations"):
                decisions.append(model.forward(x[chunk]).argmax(1))
    finally:
        for h in handles:
            h.remove()
    hidden = [torch.cat(chunks).double().cpu().numpy() for chunks in layers]
    return [x.flatten(1).double().cpu().numpy(), *hidden], torch.cat(decisions).cpu().numpy()


def predict_rules(rules: list[tuple[Term, int, int]], x: np.ndarray, num_classes: int, default: int) -> np.ndarray:
    """Class per row of ``x`` from rules ``(term, class, leaf)``: each leaf of the output-layer tree
    whose rewritten terms match votes once for its class; the class with most votes wins (ties to the
    lower class), ``default`` where no rule matches."""
    leaves = {leaf: cls for _, cls, leaf in rules}
    fired = {leaf: np.zeros(len(x), dtype=bool) for leaf in leaves}
    for term, _, leaf in rules:
        fired[leaf] |= matches(term, x)
    votes = np.zeros((len(x), num_classes), dtype=np.int64)
    for leaf, cls in leaves.items():
        votes[:, cls] += fired[leaf]
    return np.where(votes.max(1) > 0, votes.argmax(1), default)


class DeepRED(ModelExplainer):
    """Layer-wise decision-tree rule extraction merged into one rule set (Zilke et al. 2016).

    ``data = {"inputs": training inputs, "heldout": held-out inputs,
    "labels": optional held-out labels}``. ``run`` returns ``rules`` (a list of
    (term, class, leaf): term maps input feature -> (low, high] interval, leaf
    numbers the output tree's leaf the rule comes from),
    ``rule_count``, ``text`` (the rules as readable lines), ``fidelity`` and
    ``train_fidelity`` (agreement with the network), ``accuracy`` (with labels)
    and ``default_class``.
    """

    name = "deepred"
    box = "white"
    summary = "DeepRED: layer-wise decision-tree rules merged into input-level rules, with fidelity (Zilke 2016)"

    @dataclasses.dataclass(frozen=True)
    class Params:
        output_depth: int = param(3, "depth of the tree from the last hidden layer to the decision", low=1)
        depth: int = param(2, "depth of the trees describing each condition on the previous layer", low=1)
        min_samples_leaf: int = param(5, "fewest training inputs per tree leaf (pruning)", low=1)
        max_rules: int = param(20000, "stop with an error when the merged rule set grows beyond this", low=1)
        batch_size: int = batch_size(512, "inputs per forward pass while reading the activations")

    def check_model(self, model: WhiteBox) -> None:
        module = model.module
        if not isinstance(module, nn.Sequential):
            raise ModelRequirementError(f"deepred needs an nn.Sequential MLP of Flatten/Linear/ReLU layers, "
                                        f"got {type(module).__name__}")
        for name, layer in module.named_children():
            if not isinstance(layer, _ALLOWED):
                raise ModelRequirementError(f"deepred needs an MLP of Flatten/Linear/ReLU layers; layer {name} "
                                            f"is a {type(layer).__name__}")
        if not any(isinstance(layer, nn.ReLU) for layer in module):
            raise ModelRequirementError("deepred needs at least one hidden ReLU layer; the network has none")

    def _tree(self, features: np.ndarray, labels: np.ndarray, depth: int, seed: int) -> Any:
        from sklearn.tree import DecisionTreeClassifier

        return DecisionTreeClassifier(max_depth=depth, min_samples_leaf=self.params.min_samples_leaf,
                                      random_state=seed).fit(features, labels)

    def _substitute(self, rules: list[tuple[Term, int, int]], below: np.ndarray, here: np.ndarray,
                    seed: int) -> list[tuple[Term, int, int]]:
        """Rewrite rules on layer ``here`` as rules on layer ``below`` (both (N, D) training activations)."""
        cache: dict[tuple[int, float], tuple[list[Term], list[Term]]] = {}

        def dnf(f: int, t: float, greater: bool) -> list[Term]:
            if (f, t) not in cache:
                truth = here[:, f] > t
                if truth.all() or not truth.any():  # constant on the training inputs
                    cache[(f, t)] = ([{}], []) if truth.all() else ([], [{}])
                else:
                    leaves = leaf_terms(self._tree(below, truth, self.params.depth, seed))
                    cache[(f, t)] = ([term for term, c in leaves if c], [term for term, c in leaves if not c])
            return cache[(f, t)][0 if greater else 1]

        out: list[tuple[Term, int, int]] = []
        for term, cls, leaf in rules:
            expanded: list[Term] = [{}]
            for f, t, greater in conditions(term):
                expanded = dedupe([c for a in expanded for b in dnf(f, t, greater)
                                   if (c := conjoin(a, b)) is not None])
                if len(out) + len(expanded) > self.params.max_rules:
                    raise ParameterError(f"deepred: the merged rule set exceeds max_rules={self.params.max_rules}; "
                                         f"lower output_depth/depth or raise min_samples_leaf or max_rules")
            out += [(e, cls, leaf) for e in expanded]
        return out

    def run(self, model: Model, data: Any = None, seed: int = 0) -> dict[str, Any]:
        white = require_white_box(model, "deepred")
        self.check_model(white)
        inputs, heldout, labels = train_heldout(data, "deepred", white)
        ctx = explainer_context(self, seed)
        with preserved(white.module):
            layers, decisions = mlp_activations(white, inputs, ctx)
            held_layers, held_decisions = mlp_activations(white, heldout, ctx)
            num_classes = int(white.forward(heldout[:1]).shape[1])
        rules = [(term, cls, leaf) for leaf, (term, cls) in
                 enumerate(leaf_terms(self._tree(layers[-1], decisions, self.params.output_depth, ctx.seed)))]
        for k in range(len(layers) - 1, 0, -1):
            rules = self._substitute(rules, layers[k - 1], layers[k], ctx.seed)
        default = int(np.bincount(decisions, minlength=num_classes).argmax())
        predicted = predict_rules(rules, held_layers[0], num_classes, default)
        result = {
            "rules": rules, "rule_count": len(rules),
            "text": [f"if {format_term(term)} then class {cls}  (leaf {leaf})" for term, cls, leaf in rules],
            "fidelity": float(np.mean(predicted == held_decisions)),
            "train_fidelity": float(np.mean(predict_rules(rules, layers[0], num_classes, default) == decisions)),
            "default_class": default, "predicted": predicted,
        }
        if labels is not None:
            result["accuracy"] = float(np.mean(predicted == labels.numpy()))
        return result


@hookimpl
def salfw_register_model_explainers(register):
    register(DeepRED)
