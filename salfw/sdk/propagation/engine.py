"""The propagation engine: walk any ``nn.Module`` made of supported layers and pass
relevance from the explained output back to the input, layer by layer.

The user's module is never copied nor changed: an ``nn.Sequential`` of supported
layers is read as a chain directly, any other module is traced with ``torch.fx``
into a graph of layer calls and tensor operations, so models that are not
``nn.Sequential`` -- a ResNet basic block computing ``x + f(x)`` -- are walked too.
BatchNorm is folded into the Linear/Conv layer it follows as new (weight, bias)
tensors that the engine's functional forward uses; ReLU modules run out of place.
A method builds a :class:`Network` for every explanation (``check_model`` may build
one to refuse an unsupported model early and let it go), so a module changed
between two explanations is always read afresh and nothing is kept between calls.
The forward pass records every node's value; the backward pass visits nodes in
reverse and applies:

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
:func:`propagate_batches` runs the propagation over a batch in the method's
chunks and counts the passes.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from salfw.core.context import Context, count
from salfw.core.errors import ModelRequirementError
from salfw.core.models import Model, WhiteBox

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

#: ``start(targets)`` returns the map from the logits (N, K) to the relevance at the output.
Start = Callable[[torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]


@dataclass
class LayerInfo:
    """A Linear/Conv2d layer of the traced network, in execution order."""

    path: str
    module: nn.Module
    index: int

    @property
    def is_conv(self) -> bool:
        return isinstance(self.module, nn.Conv2d)


def _path(node: fx.Node) -> str:
    """The module path (``call_module``) or attribute path (``get_attr``) a node refers to."""
    assert isinstance(node.target, str), node
    return node.target


def _describe(node: fx.Node) -> str:
    if node.op == "call_module":
        return f"'{node.target}'"
    target = getattr(node.target, "__name__", str(node.target))
    return f"operation '{target}' (node '{node.name}')"


def _fold_batchnorm(layer: Layer, bn: nn.BatchNorm1d | nn.BatchNorm2d, path: str, method: str) -> Layer:
    """The preceding Linear/Conv with an eval-mode BatchNorm folded in: new tensors, the module untouched."""
    mean, var = bn.running_mean, bn.running_var
    if mean is None or var is None:
        raise ModelRequirementError(f"'{method}' folds BatchNorm layers with running statistics; '{path}' "
                                    f"has track_running_stats=False and normalises with batch statistics")
    with torch.no_grad():
        std = torch.sqrt(var + bn.eps)
        scale = bn.weight / std if bn.affine else 1 / std
        shift = (bn.bias if bn.affine else 0) - mean * scale
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

    def walk(seq: nn.Module) -> bool:
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
    ``fold=False``), ready for relevance propagation; the module itself is only read. ``method``
    is the explaining method's name, for error messages. Building it checks the model: an
    unsupported layer or operation raises :class:`~salfw.core.errors.ModelRequirementError`."""

    def __init__(self, model: Model, method: str, fold: bool = True):
        if not isinstance(model, WhiteBox):
            raise ModelRequirementError(f"'{method}' walks the layers of a salfw.WhiteBox (a torch.nn.Module); "
                                        f"got a {type(model).__name__}")
        self.model = model
        self.method = method
        self.fold = fold
        module = model.module
        if isinstance(module, SUPPORTED_LAYERS):  # a bare layer: trace it as layer '0' of a container
            module = nn.Sequential(module)
        graph = _sequential_graph(module)
        if graph is None:
            try:
                # no autowrapping: torch annotates autowrap_modules as a 1-tuple, but an empty one is valid
                graph = _Tracer(autowrap_modules=(), autowrap_functions=()).trace(  # type: ignore[arg-type]
                    module)
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
        self.layers = [LayerInfo(_path(n), self.modules[_path(n)], i) for i, n in
                       enumerate(n for n in self.nodes if n.op == "call_module"
                                 and isinstance(self.modules[_path(n)], RULE_LAYERS))]

    # -- preparation ---------------------------------------------------------------
    def _fold(self, graph: fx.Graph) -> None:
        calls: dict[str, int] = {}
        for node in graph.nodes:
            if node.op == "call_module":
                calls[_path(node)] = calls.get(_path(node), 0) + 1
        for node in list(graph.nodes):
            if node.op != "call_module":
                continue
            bn = self.modules[_path(node)]
            if not isinstance(bn, BATCHNORMS):
                continue
            prev = node.args[0]
            ok = (isinstance(prev, fx.Node) and prev.op == "call_module"
                  and isinstance(self.modules[_path(prev)], RULE_LAYERS)
                  and len(prev.users) == 1 and calls[_path(prev)] == 1)
            if not ok:
                raise ModelRequirementError(
                    f"'{self.method}' folds BatchNorm into the Linear/Conv2d layer it follows; "
                    f"'{node.target}' ({type(bn).__name__}) does not directly follow one (used once)")
            assert isinstance(prev, fx.Node)
            self.rule_layers[_path(prev)] = _fold_batchnorm(self.rule_layers[_path(prev)], bn, _path(node),
                                                            self.method)
            node.replace_all_uses_with(prev)
            graph.erase_node(node)

    def _check(self) -> None:
        placeholders = [n for n in self.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise ModelRequirementError(f"'{self.method}' needs a module whose forward takes one input tensor; "
                                        f"{type(self.model.module).__name__}.forward takes {len(placeholders)}")
        for node in self.nodes:
            if node.op == "call_module":
                m = self.modules[_path(node)]
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
    def forward(self, y: torch.Tensor, relu: Callable[[torch.Tensor], torch.Tensor] | None = None,
                maxpool: Callable[[torch.Tensor, nn.MaxPool2d], torch.Tensor] | None = None
                ) -> tuple[dict[fx.Node, Any], torch.Tensor]:
        """Run the network on the network input ``y``; return every node's value and the logits.

        Linear/Conv2d layers run functionally with their (folded) parameters, ReLU modules out of
        place; ``relu(x)`` and ``maxpool(x, module)`` replace the ReLU and MaxPool2d modules."""
        relu = relu or torch.relu
        env: dict[fx.Node, Any] = {}
        out = None
        for node in self.nodes:
            args: Any
            kwargs: Any
            if len(node.args) == 1 and isinstance(node.args[0], fx.Node) and not node.kwargs:
                args, kwargs = (env[node.args[0]],), {}  # a layer call x -> f(x): no tree walk
            else:
                args = fx.node.map_arg(node.args, env.__getitem__)
                kwargs = fx.node.map_arg(node.kwargs, env.__getitem__)
            if node.op == "placeholder":
                env[node] = y
            elif node.op == "get_attr":
                obj: Any = self.module
                for part in _path(node).split("."):
                    obj = getattr(obj, part)
                env[node] = obj
            elif node.op == "call_module":
                m = self.modules[_path(node)]
                if isinstance(m, RULE_LAYERS):
                    layer = self.rule_layers[_path(node)]
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
                assert callable(node.target)
                env[node] = node.target(*args, **kwargs)
            elif node.op == "call_method":
                env[node] = getattr(args[0], _path(node))(*args[1:], **kwargs)
            elif node.op == "output":
                out = args[0]
        if not isinstance(out, torch.Tensor) or out.dim() not in (1, 2):
            raise ModelRequirementError(f"'{self.method}' needs a module returning logits (N, K)")
        return env, out

    # -- backward ------------------------------------------------------------------
    def propagate(self, y: torch.Tensor, start: Callable[[torch.Tensor], torch.Tensor],
                  rules: Mapping[str, Rule], stabilizer: float = 1e-6
                  ) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, Any]]]:
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
            assert isinstance(output_node, fx.Node)
            relevance: dict[fx.Node, torch.Tensor] = {output_node: start(logits.reshape(logits.shape[0], -1))
                                                      .reshape(logits.shape)}
            layers: list[dict[str, Any]] = []
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

    def _backward(self, node: fx.Node, env: dict[fx.Node, Any], r: torch.Tensor, rules: Mapping[str, Rule],
                  stabilizer: float, layers: list[dict[str, Any]]) -> list[tuple[fx.Node, torch.Tensor]]:
        """(input node, relevance) pairs for one node."""
        tensors = [a for a in node.args if isinstance(a, fx.Node) and isinstance(env[a], torch.Tensor)]
        if node.op == "call_module":
            path = _path(node)
            m = self.modules[path]
            source = node.args[0]
            assert isinstance(source, fx.Node)
            x = env[source]
            if isinstance(m, RULE_LAYERS):
                rule = rules[path]
                r_in = rule(self.rule_layers[path], x, env[node], r)
                layers.append({"layer": path, "type": type(m).__name__, "rule": rule.name,
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
            return [(source, r_in)]
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


def one_hot_start(targets: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Start relevance: the target logit at the target position, zero elsewhere."""
    def start(logits: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros_like(logits).scatter_(1, targets.view(-1, 1).to(logits.device), 1.0)
        return logits * mask
    return start


def unit_start(targets: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Start relevance: 1 at the target position, zero elsewhere (a probability, excitation backprop)."""
    def start(logits: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(logits).scatter_(1, targets.view(-1, 1).to(logits.device), 1.0)
    return start


def propagate_batches(net: Network, x: torch.Tensor, targets: torch.Tensor, rules: Mapping[str, Rule],
                      ctx: Context, stabilizer: float = 1e-6, start: Start = one_hot_start,
                      size: int | None = None) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Input relevance for the pixel-space batch ``x`` (through the model's preprocessing), in
    chunks of ``size`` (default: the method's ``batch_size``) from ``ctx.batches``, with the
    per-layer diagnostics of :meth:`Network.propagate` concatenated over the chunks. Counts one
    forward and one backward pass per sample into the active context (the engine runs the
    network itself, not through ``model.forward``)."""
    outs, diags = [], []
    for sl in ctx.batches(x.shape[0], size):
        chunk = x[sl]
        relevance, _logits, layers = net.propagate(net.model.preprocessing(chunk), start(targets[sl]), rules,
                                                   stabilizer)
        count(forward=chunk.shape[0], backward=chunk.shape[0])
        outs.append(relevance.reshape(chunk.shape))
        diags.append(layers)
    merged = [dict(d, relevance_out=torch.cat([c[j]["relevance_out"] for c in diags]),
                   relevance_in=torch.cat([c[j]["relevance_in"] for c in diags]))
              for j, d in enumerate(diags[0])]
    return torch.cat(outs), merged


def layer_sums(layers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Diagnostics as plain lists: per layer, the relevance sums and what the bias absorbed."""
    return [{"layer": d["layer"], "type": d["type"], "rule": d["rule"],
             "relevance_out": d["relevance_out"].tolist(), "relevance_in": d["relevance_in"].tolist(),
             "absorbed": (d["relevance_out"] - d["relevance_in"]).tolist()} for d in layers]
