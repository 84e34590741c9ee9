"""The propagation engine: walk any ``nn.Module`` made of supported layers and pass
relevance from the explained output back to the input, layer by layer.

The user's module is never copied nor changed: an ``nn.Sequential`` of supported
layers is read as a chain directly, any other module is traced with ``torch.fx``
into a graph of layer calls and tensor operations, so models that are not
``nn.Sequential`` -- a ResNet basic block computing ``x + f(x)`` -- are walked too.
BatchNorm is folded into the Linear/Conv layer it follows as new (weight, bias)
tensors that the engine's functional forward uses; ReLU modules run out of place.
The graph and the folded parameters are rebuilt for every explanation, so a
module changed between two explanations is always read afresh. The forward pass
records every node's value; the backward pass visits nodes in reverse and applies:

* Linear / Conv2d: the rule chosen for the layer's path (:mod:`.rules`);
* ReLU, Dropout, Identity: relevance passes unchanged (Zennit's ``Pass``);
* Flatten, ``view``/``reshape``/``flatten``: relevance is reshaped;
* MaxPool2d: the gradient, i.e. winner-take-all;
* AvgPool2d, AdaptiveAvgPool2d and additions ``a + b``: the z-rule
  ``R_a = a · R / stab(a + b)`` (Zennit's ``Norm`` for ``AvgPool`` and ``Sum``),
  conservative up to the stabiliser; a constant added absorbs its share.

The network input is ``preprocessing(x)``; its relevance passes to the pixels
unchanged since the preprocessing is elementwise. Anything else raises
:class:`~salfw.core.errors.ModelRequirementError` naming the layer's path and type.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

from salfw.core.errors import ModelRequirementError
from salfw.core.models import WhiteBox

from .rules import Layer, Rule, stabilize

RULE_LAYERS = (nn.Linear, nn.Conv2d)
PASS_LAYERS = (nn.ReLU, nn.Dropout, nn.Identity)
NORM_LAYERS = (nn.AvgPool2d, nn.AdaptiveAvgPool2d)
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
SUPPORTED_LAYERS = RULE_LAYERS + PASS_LAYERS + NORM_LAYERS + BATCHNORMS + (nn.Flatten, nn.MaxPool2d)

ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)
PASS_FUNCTIONS = (F.relu, torch.relu)
RESHAPE_FUNCTIONS = (torch.flatten,)
NONTENSOR_FUNCTIONS = (getattr, operator.getitem)
ADD_METHODS = ("add",)
PASS_METHODS = ("relu", "contiguous")
RESHAPE_METHODS = ("view", "reshape", "flatten")
NONTENSOR_METHODS = ("size", "dim")


@dataclass
class LayerInfo:
    """A Linear/Conv2d layer of the traced network, in execution order."""

    path: str
    module: nn.Module
    index: int

    @property
    def is_conv(self) -> bool:
        return isinstance(self.module, nn.Conv2d)


def _describe(node: fx.Node) -> str:
    if node.op == "call_module":
        return f"'{node.target}'"
    target = getattr(node.target, "__name__", str(node.target))
    return f"operation '{target}' (node '{node.name}')"


def _fold_batchnorm(layer: Layer, bn: nn.Module) -> Layer:
    """The preceding Linear/Conv with an eval-mode BatchNorm folded in: new tensors, the module untouched."""
    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1 / torch.sqrt(bn.running_var + bn.eps)
        shift = (bn.bias if bn.affine else 0) - bn.running_mean * scale
        shape = (-1,) + (1,) * (layer.weight.dim() - 1)
        bias = layer.bias if layer.bias is not None else torch.zeros_like(scale)
        return Layer(layer.module, layer.weight * scale.view(shape), bias * scale + shift)


def _sequential_graph(module: nn.Module) -> fx.Graph | None:
    """The graph fx would trace for an ``nn.Sequential`` (nested ones included) of supported
    layers -- a chain of layer calls named by their paths -- built directly; None for other modules."""
    if type(module) is not nn.Sequential:
        return None
    paths = {m: name for name, m in module.named_modules()}  # fx names a shared module by its first path
    chain = []

    def walk(seq: nn.Sequential) -> bool:
        for child in seq._modules.values():  # what Sequential.forward calls, in order
            if type(child) is nn.Sequential:
                if not walk(child):
                    return False
            elif isinstance(child, SUPPORTED_LAYERS):
                chain.append(paths[child])
            else:
                return False
        return True

    if not walk(module):
        return None
    graph = fx.Graph()
    node = graph.placeholder("input")
    for path in chain:
        node = graph.call_module(path, (node,))
    graph.output(node)
    return graph


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, SUPPORTED_LAYERS) or super().is_leaf_module(m, qualname)


class Network:
    """The graph of a white box's module (BatchNorm folded into new parameter tensors unless
    ``fold=False``), ready for relevance propagation; the module itself is only read."""

    def __init__(self, model: WhiteBox, method: str, fold: bool = True):
        self.model = model
        self.method = method
        self.fold = fold
        module = model.module
        if isinstance(module, SUPPORTED_LAYERS):  # a bare layer: trace it as layer '0' of a container
            module = nn.Sequential(module)
        graph = _sequential_graph(module)
        if graph is None:
            try:
                graph = _Tracer(autowrap_modules=(), autowrap_functions=()).trace(module)
            except Exception as exc:  # fx cannot trace data-dependent control flow
                raise ModelRequirementError(
                    f"'{method}' walks the network's layers with torch.fx, which could not trace "
                    f"{type(model.module).__name__}: {type(exc).__name__}: {exc}") from exc
        self.module = module
        self.graph = graph
        self.modules = dict(module.named_modules())
        #: path -> the Linear/Conv2d layer as rules see it (folded parameters where BatchNorm follows)
        self.rule_layers = {path: Layer(m) for path, m in self.modules.items() if isinstance(m, RULE_LAYERS)}
        if fold:
            self._fold(graph)
        self.nodes = list(graph.nodes)
        self._check()
        self.layers = [LayerInfo(n.target, self.modules[n.target], i) for i, n in
                       enumerate(n for n in self.nodes if n.op == "call_module"
                                 and isinstance(self.modules[n.target], RULE_LAYERS))]

    # -- preparation ---------------------------------------------------------------
    def _fold(self, graph: fx.Graph) -> None:
        calls: dict[str, int] = {}
        for node in graph.nodes:
            if node.op == "call_module":
                calls[node.target] = calls.get(node.target, 0) + 1
        for node in list(graph.nodes):
            if node.op != "call_module" or not isinstance(self.modules[node.target], BATCHNORMS):
                continue
            prev = node.args[0]
            ok = (isinstance(prev, fx.Node) and prev.op == "call_module"
                  and isinstance(self.modules[prev.target], RULE_LAYERS)
                  and len(prev.users) == 1 and calls[prev.target] == 1)
            if not ok:
                raise ModelRequirementError(
                    f"'{self.method}' folds BatchNorm into the Linear/Conv2d layer it follows; "
                    f"'{node.target}' ({type(self.modules[node.target]).__name__}) does not directly follow "
                    f"one (used once)")
            self.rule_layers[prev.target] = _fold_batchnorm(self.rule_layers[prev.target], self.modules[node.target])
            node.replace_all_uses_with(prev)
            graph.erase_node(node)

    def _check(self) -> None:
        placeholders = [n for n in self.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise ModelRequirementError(f"'{self.method}' needs a module whose forward takes one input tensor; "
                                        f"{type(self.model.module).__name__}.forward takes {len(placeholders)}")
        for node in self.nodes:
            if node.op == "call_module":
                m = self.modules[node.target]
                if not isinstance(m, SUPPORTED_LAYERS) or (isinstance(m, nn.Conv2d) and m.padding_mode != "zeros"):
                    raise ModelRequirementError(
                        f"'{self.method}' does not support layer '{node.target}' of type {type(m).__name__}; "
                        f"supported: {', '.join(t.__name__ for t in SUPPORTED_LAYERS)} and additions")
            elif node.op == "call_function":
                if node.target not in ADD_FUNCTIONS + PASS_FUNCTIONS + RESHAPE_FUNCTIONS + NONTENSOR_FUNCTIONS:
                    raise ModelRequirementError(
                        f"'{self.method}' does not support the {_describe(node)} in "
                        f"{type(self.model.module).__name__}.forward; supported: additions, relu, flatten")
            elif node.op == "call_method":
                if node.target not in ADD_METHODS + PASS_METHODS + RESHAPE_METHODS + NONTENSOR_METHODS:
                    raise ModelRequirementError(
                        f"'{self.method}' does not support the tensor method '{node.target}' (node '{node.name}') "
                        f"in {type(self.model.module).__name__}.forward")

    # -- forward -------------------------------------------------------------------
    def forward(self, y: torch.Tensor, relu: Callable | None = None, maxpool: Callable | None = None
                ) -> tuple[dict, torch.Tensor]:
        """Run the network on the network input ``y``; return every node's value and the logits.

        Linear/Conv2d layers run functionally with their (folded) parameters, ReLU modules out of
        place; ``relu(x)`` and ``maxpool(x, module)`` replace the ReLU and MaxPool2d modules."""
        relu = relu or torch.relu
        env: dict[fx.Node, object] = {}
        out = None
        for node in self.nodes:
            if len(node.args) == 1 and isinstance(node.args[0], fx.Node) and not node.kwargs:
                args, kwargs = (env[node.args[0]],), {}  # a layer call x -> f(x): no tree walk
            else:
                args = fx.node.map_arg(node.args, lambda n: env[n])
                kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n])
            if node.op == "placeholder":
                env[node] = y
            elif node.op == "get_attr":
                obj = self.module
                for part in node.target.split("."):
                    obj = getattr(obj, part)
                env[node] = obj
            elif node.op == "call_module":
                m = self.modules[node.target]
                if isinstance(m, RULE_LAYERS):
                    layer = self.rule_layers[node.target]
                    env[node] = layer.forward(args[0], layer.weight, layer.bias)
                elif isinstance(m, nn.ReLU):
                    env[node] = relu(args[0])
                elif isinstance(m, (nn.Dropout, nn.Identity)):  # eval-mode dropout is the identity
                    env[node] = args[0]
                elif maxpool is not None and isinstance(m, nn.MaxPool2d):
                    env[node] = maxpool(args[0], m)
                else:
                    env[node] = m(*args, **kwargs)
            elif node.op == "call_function":
                env[node] = node.target(*args, **kwargs)
            elif node.op == "call_method":
                env[node] = getattr(args[0], node.target)(*args[1:], **kwargs)
            elif node.op == "output":
                out = args[0]
        if not isinstance(out, torch.Tensor) or out.dim() not in (1, 2):
            raise ModelRequirementError(f"'{self.method}' needs a module returning logits (N, K)")
        return env, out

    # -- backward ------------------------------------------------------------------
    def propagate(self, y: torch.Tensor, start: Callable[[torch.Tensor], torch.Tensor],
                  rules: dict[str, Rule], stabilizer: float = 1e-6
                  ) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
        """Relevance at the network input ``y``.

        ``start(logits)`` gives the relevance of the output (e.g. one-hot × logit);
        ``rules`` maps each Linear/Conv2d path to its rule. Returns the input
        relevance, the logits and per-layer diagnostics: for each rule layer (in
        execution order) its path, rule, and per-sample relevance sums at its
        output and input (their difference is what the layer's bias absorbed).
        """
        with torch.no_grad():
            env, logits = self.forward(y)
            output_node = next(n for n in self.nodes if n.op == "output").args[0]
            relevance: dict[fx.Node, torch.Tensor] = {output_node: start(logits.reshape(logits.shape[0], -1))
                                                      .reshape(logits.shape)}
            layers = []
            result = torch.zeros_like(y)
            for node in reversed(self.nodes):
                r = relevance.pop(node, None)
                if r is None:
                    continue
                if node.op == "placeholder":
                    result = r
                    continue
                for src, r_in in self._backward(node, env, r, rules, stabilizer, layers):
                    relevance[src] = relevance[src] + r_in if src in relevance else r_in
        layers.reverse()
        return result, logits, layers

    def _backward(self, node, env, r, rules, stabilizer, layers):
        """(input node, relevance) pairs for one node."""
        tensors = [a for a in node.args if isinstance(a, fx.Node) and isinstance(env[a], torch.Tensor)]
        if node.op == "call_module":
            m = self.modules[node.target]
            x = env[node.args[0]]
            if isinstance(m, RULE_LAYERS):
                rule = rules[node.target]
                r_in = rule(self.rule_layers[node.target], x, env[node], r)
                layers.append({"layer": node.target, "type": type(m).__name__, "rule": rule.name,
                               "relevance_out": r.flatten(1).sum(1), "relevance_in": r_in.flatten(1).sum(1)})
            elif isinstance(m, PASS_LAYERS):
                r_in = r
            elif isinstance(m, nn.Flatten):
                r_in = r.reshape(x.shape)
            elif isinstance(m, nn.MaxPool2d):
                with torch.enable_grad():
                    xg = x.detach().requires_grad_(True)
                    (r_in,) = torch.autograd.grad(m(xg), xg, r)
            else:  # average pooling: z-rule
                with torch.enable_grad():
                    xg = x.detach().requires_grad_(True)
                    (g,) = torch.autograd.grad(m(xg), xg, r / stabilize(env[node], stabilizer))
                r_in = x * g
            return [(node.args[0], r_in)]
        if node.op == "call_function" and node.target in ADD_FUNCTIONS or \
                node.op == "call_method" and node.target in ADD_METHODS:
            if "alpha" in node.kwargs or len(node.args) > 2:
                raise ModelRequirementError(f"'{self.method}' supports plain additions a + b only "
                                            f"({_describe(node)} has extra arguments)")
            share = r / stabilize(env[node], stabilizer)
            return [(a, (env[a] * share).sum_to_size(env[a].shape)) for a in tensors]
        if node.target in PASS_FUNCTIONS or node.target in PASS_METHODS:
            return [(tensors[0], r)]
        if node.target in RESHAPE_FUNCTIONS or node.target in RESHAPE_METHODS:
            return [(tensors[0], r.reshape(env[tensors[0]].shape))]
        raise ModelRequirementError(f"'{self.method}' cannot pass relevance through the {_describe(node)}")


def network_for(method, model: WhiteBox, keep: bool = False, fold: bool = True) -> Network:
    """The graph of ``model`` for one explanation: ``check_model`` builds it afresh with
    ``keep=True`` and the ``attribute`` call that follows takes it over (so a model changed
    between two explanations is always read afresh, even when an explanation stopped between
    the two calls). ``fold=False`` keeps BatchNorm layers as they are."""
    cached = method.__dict__.pop("_network", None)
    if keep:
        net = Network(model, method.name, fold)
        method._network = (model.module, net)
        return net
    if cached is not None and cached[0] is model.module and cached[1].fold == fold:
        return cached[1]
    return Network(model, method.name, fold)


def one_hot_start(targets: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Start relevance: the target logit at the target position, zero elsewhere."""
    def start(logits):
        mask = torch.zeros_like(logits).scatter_(1, targets.view(-1, 1).to(logits.device), 1.0)
        return logits * mask
    return start


def layer_sums(layers: list[dict]) -> list[dict]:
    """Diagnostics as plain lists: per layer, the relevance sums and what the bias absorbed."""
    return [{"layer": d["layer"], "type": d["type"], "rule": d["rule"],
             "relevance_out": d["relevance_out"].tolist(), "relevance_in": d["relevance_in"].tolist(),
             "absorbed": (d["relevance_out"] - d["relevance_in"]).tolist()} for d in layers]
