"""The network as a graph of steps: captured once per model with ``torch.fx``, each node classified.

:func:`capture` traces a module into an ``fx`` graph (an ``nn.Sequential`` of layers is read as
a chain directly) so that functional calls (``F.relu``, ``torch.cat``, ``x * gate``,
``torch.flatten``, ``+``) and a module called several times are separate nodes, each with
its own rule: rules never key on module objects. Every node becomes a :class:`Step` of one
:data:`KINDS` kind; nodes that do not depend on the network input (shapes, asserts, a class
token expanded to the batch, a positional embedding) are constants (kind ``"constant"``):
they are computed in the forward pass and take no relevance, as a bias. A node that depends
on the input and has no rule is refused with a
:class:`~salfw.core.errors.ModelRequirementError` naming it.

``torch.nn`` modules are leaves of the trace (``fx``'s default), so an
``nn.MultiheadAttention`` is one node, whose fast C++ path ``fx`` could not see into anyway:
the engine re-implements its forward exactly (:mod:`.attention`). Custom modules are traced
through, so a package's own ``Identity`` class (``forward`` returns its input) vanishes.

The module is traced in eval mode, as every method runs it (``fx`` bakes ``self.training``
branches into the graph), under :func:`salfw.core.guard.preserved`, which restores the
training flags afterwards. The capture is cached per module object in a
:class:`weakref.WeakKeyDictionary` (the entry goes with the module), under a lock (one
instance explains in several threads at once), and invalidated by a signature of the module
tree: every submodule's path, identity and class, any ``forward`` patched on an instance, and
its plain public attributes (booleans, numbers, strings, None: the flags a ``forward`` may
branch on, such as ``use_res_connect``). The cache holds module *paths*, never module
objects, so it keeps nothing alive; parameters are read afresh at every explanation
(BatchNorm is folded per explanation, :mod:`.engine`). Nothing is cached on a method instance.
"""

from __future__ import annotations

import operator
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from salfw.core.errors import ModelRequirementError
from salfw.core.guard import preserved

#: Step kinds: what the forward pass computes and how relevance passes back (see :mod:`.engine`).
KINDS = ("input", "constant", "layer", "folded", "affine", "activation", "pass", "reshape", "copy", "select",
         "sum", "product", "divide", "pool", "maxpool", "layernorm", "softmax", "attention", "output")

RULE_LAYERS = (nn.Linear, nn.Conv2d)
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
#: Piecewise-linear rectifiers: relevance passes where the unit is on a linear piece through
#: the origin and is absorbed where it is saturated at a non-zero constant.
PIECEWISE_LINEAR = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardtanh)
#: Smooth (or gating) activations: the identity rule (AttnLRP; Zennit's ``Pass``).
SMOOTH = (nn.SiLU, nn.GELU, nn.Sigmoid, nn.Hardsigmoid, nn.Hardswish)
ACTIVATIONS = PIECEWISE_LINEAR + SMOOTH
PASS_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity)
COPY_MODULES = (nn.Flatten, nn.Unflatten, nn.ZeroPad1d, nn.ZeroPad2d)
POOLS = (nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)
MAXPOOLS = (nn.MaxPool2d,)
#: Every ``torch.nn`` module class the engine has a rule for.
SUPPORTED_LAYERS: tuple[type[nn.Module], ...] = (RULE_LAYERS + BATCHNORMS + ACTIVATIONS + PASS_MODULES + COPY_MODULES
                                                 + POOLS + MAXPOOLS + (nn.LayerNorm, nn.Softmax,
                                                                       nn.MultiheadAttention))

_BASE_FORWARDS = {cls.forward for cls in SUPPORTED_LAYERS}


def is_layer(m: nn.Module) -> bool:
    """Whether the engine reads ``m`` as one step: a supported ``torch.nn`` layer whose ``forward``
    is its class's own. A subclass with its own ``forward`` (EfficientNet-Lite's statically padded
    ``Conv2d``: pad, then ``F.conv2d``) is traced through like any custom module."""
    return isinstance(m, SUPPORTED_LAYERS) and type(m).forward in _BASE_FORWARDS


_MODULE_KINDS: tuple[tuple[tuple[type[nn.Module], ...], str], ...] = (
    (RULE_LAYERS, "layer"), (BATCHNORMS, "affine"), (ACTIVATIONS, "activation"), (PASS_MODULES, "pass"),
    (COPY_MODULES, "copy"), (POOLS, "pool"), (MAXPOOLS, "maxpool"), ((nn.LayerNorm,), "layernorm"),
    ((nn.Softmax,), "softmax"), ((nn.MultiheadAttention,), "attention"))


def activation_function(m: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``f`` with ``f(x) = m(x)`` for an activation module, computed out of place (an
    ``inplace=True`` ReLU must not overwrite the value the relevance pass reads)."""
    if isinstance(m, nn.ReLU6):  # before Hardtanh, its base class
        return F.relu6
    if isinstance(m, nn.Hardtanh):
        return partial(F.hardtanh, min_val=m.min_val, max_val=m.max_val)
    if isinstance(m, nn.LeakyReLU):
        return partial(F.leaky_relu, negative_slope=m.negative_slope)
    if isinstance(m, nn.GELU):
        return partial(F.gelu, approximate=m.approximate)
    for types, f in ((nn.ReLU, torch.relu), (nn.SiLU, F.silu), (nn.Sigmoid, torch.sigmoid),
                     (nn.Hardsigmoid, F.hardsigmoid)):
        if isinstance(m, types):
            return f
    return F.hardswish


def _activation_family(target: Any) -> str:
    """``relu``, ``relu6`` (a rectifier saturating at 6), ``saturating`` (Hardtanh), ``leaky`` or
    ``smooth``, for an activation module or function."""
    if isinstance(target, nn.ReLU6) or target is F.relu6:
        return "relu6"
    if isinstance(target, nn.Hardtanh) or target is F.hardtanh:
        return "saturating"
    if isinstance(target, nn.LeakyReLU) or target is F.leaky_relu:
        return "leaky"
    if isinstance(target, nn.ReLU) or target in (F.relu, torch.relu, "relu"):
        return "relu"
    return "smooth"


_FUNCTION_KINDS: dict[Any, str] = {}
for _kind, _targets in {
    "layer": (F.linear, F.conv2d, torch.conv2d),
    "sum": (operator.add, operator.iadd, torch.add, operator.sub, operator.isub, torch.sub),
    "product": (operator.mul, operator.imul, torch.mul, operator.matmul, torch.matmul, torch.bmm),
    "divide": (operator.truediv, operator.itruediv, torch.div),
    "activation": (F.relu, torch.relu, F.relu6, F.leaky_relu, F.hardtanh, F.silu, F.gelu, torch.sigmoid,
                   F.sigmoid, F.hardsigmoid, F.hardswish),
    "pass": (F.dropout, F.dropout1d, F.dropout2d, torch.clone),
    "reshape": (torch.flatten, torch.reshape),
    "copy": (torch.cat, torch.concat, torch.stack, torch.permute, torch.transpose, torch.squeeze, torch.unsqueeze,
             torch.narrow, torch.select, F.pad, operator.getitem, torch.chunk, torch.split, torch.unbind),
    "pool": (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.avg_pool1d, F.avg_pool2d, torch.mean, torch.sum),
    "maxpool": (F.max_pool2d, torch.max_pool2d),
    "softmax": (F.softmax, torch.softmax),
    "layernorm": (F.layer_norm,),
}.items():
    for _target in _targets:
        _FUNCTION_KINDS[_target] = _kind

_METHOD_KINDS = {
    "add": "sum", "sub": "sum", "mul": "product", "matmul": "product", "bmm": "product", "div": "divide",
    "relu": "activation", "sigmoid": "activation", "contiguous": "pass", "clone": "pass",
    "view": "reshape", "reshape": "reshape", "flatten": "reshape", "view_as": "reshape", "reshape_as": "reshape",
    "permute": "copy", "transpose": "copy", "t": "copy", "squeeze": "copy", "unsqueeze": "copy",
    "expand": "copy", "expand_as": "copy", "repeat": "copy", "narrow": "copy", "select": "copy",
    "chunk": "copy", "split": "copy", "unbind": "copy",
    "mean": "pool", "sum": "pool", "softmax": "softmax",
}
#: Calls that read a tensor's metadata, not its values: their results are constants.
_META_METHODS = ("size", "dim", "numel", "type", "get_device")
_META_ATTRIBUTES = ("shape", "dtype", "device", "ndim", "is_cuda")
#: Calls whose result is a tuple of tensors (picked apart by ``getitem``).
_TUPLE_TARGETS = (torch.chunk, torch.split, torch.unbind, "chunk", "split", "unbind")


@dataclass(eq=False)
class Step:
    """One node of the captured graph: its ``kind`` (:data:`KINDS`) and, for a module call, the
    module's ``path``; ``tuple_output`` for a node whose value is a tuple of tensors; ``fold``
    names the Linear/Conv2d node a BatchNorm folds into; ``family`` is an activation's
    (:func:`_activation_family`)."""

    node: fx.Node
    kind: str
    path: str | None = None
    tuple_output: bool = False
    fold: fx.Node | None = None
    family: str | None = None

    def __post_init__(self) -> None:
        assert self.kind in KINDS, self.kind


@dataclass(eq=False)
class Captured:
    """A captured network: the graph, one :class:`Step` per node (in execution order) and
    whether the graph was traced through a one-layer container (a bare layer given as the model)."""

    graph: fx.Graph
    steps: list[Step]
    wrapped: bool


def _describe(node: fx.Node) -> str:
    if node.op == "call_module":
        return f"'{node.target}'"
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    return f"operation '{target}' (node '{node.name}')"


def _is_stochastic_depth(target: Any) -> bool:
    """torchvision's ``stochastic_depth`` function (salfw never imports torchvision)."""
    return getattr(target, "__name__", "") == "stochastic_depth" and \
        str(getattr(target, "__module__", "")).startswith("torchvision.")


def _sequential_graph(module: nn.Module) -> fx.Graph | None:
    """The graph fx would trace for an ``nn.Sequential`` (nested ones included) of one-input
    supported layers -- a chain of layer calls named by their paths -- built directly; None otherwise."""
    if type(module) is not nn.Sequential:
        return None
    paths = {m: name for name, m in module.named_modules()}  # fx names a shared module by its first path
    chain = []

    def walk(seq: nn.Module) -> bool:
        for child in seq._modules.values():  # what Sequential.forward calls, in order
            if child is None:
                return False
            if type(child) is nn.Sequential:
                if not walk(child):
                    return False
            elif is_layer(child) and not isinstance(child, nn.MultiheadAttention):
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
        return is_layer(m) or not isinstance(m, SUPPORTED_LAYERS) and super().is_leaf_module(m, qualname)


def _trace(module: nn.Module, label: str) -> fx.Graph:
    graph = _sequential_graph(module)
    if graph is not None:
        return graph
    try:
        # no autowrapping: torch annotates autowrap_modules as a 1-tuple, but an empty one is valid
        return _Tracer(autowrap_modules=(), autowrap_functions=()).trace(module)  # type: ignore[arg-type]
    except Exception as exc:  # fx cannot trace data-dependent control flow
        raise ModelRequirementError(
            f"the relevance engine reads the network as a graph with torch.fx, which could not trace "
            f"{label}: {type(exc).__name__}: {exc}") from exc


def _classify(graph: fx.Graph, modules: dict[str, nn.Module], label: str) -> list[Step]:
    """One step per node; raises for a node that depends on the input and has no rule."""
    nodes = list(graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise ModelRequirementError(f"the relevance engine needs a module whose forward takes one input tensor; "
                                    f"{label}.forward takes {len(placeholders)}")
    calls: dict[str, int] = {}  # how often each module (or functional layer's parameters) is called
    for node in nodes:
        path = _layer_path(node)
        if path is not None:
            calls[path] = calls.get(path, 0) + 1
    dependent: set[fx.Node] = set()
    steps: dict[fx.Node, Step] = {}
    for node in nodes:
        depends = any(a in dependent for a in node.all_input_nodes)
        if node.op == "placeholder":
            step = Step(node, "input")
        elif node.op == "output":
            step = Step(node, "output")
        elif node.op == "get_attr" or not depends:
            step = Step(node, "constant")
        elif node.op == "call_module":
            step = _module_step(node, modules, calls, steps)
        elif node.op == "call_function" and node.target is getattr:
            if node.args[1] not in _META_ATTRIBUTES:
                raise ModelRequirementError(f"the relevance engine does not support reading attribute "
                                            f"'{node.args[1]}' of a tensor (node '{node.name}') in {label}.forward")
            step = Step(node, "constant")
        elif node.op == "call_method" and node.target in _META_METHODS:
            step = Step(node, "constant")
        else:
            step = _function_step(node, steps, dependent, label)
        if depends and step.kind != "constant" or node.op == "placeholder":
            dependent.add(node)
        steps[node] = step
    return [steps[n] for n in nodes]


def _layer_path(node: fx.Node) -> str | None:
    """The module path of a module call, or of the module owning a functional Linear/conv's weight."""
    if node.op == "call_module":
        return str(node.target)
    weight = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
    if node.op == "call_function" and _FUNCTION_KINDS.get(node.target) == "layer" and \
            isinstance(weight, fx.Node) and weight.op == "get_attr":
        return str(weight.target).rpartition(".")[0]
    return None


def _module_step(node: fx.Node, modules: dict[str, nn.Module], calls: dict[str, int],
                 steps: dict[fx.Node, Step]) -> Step:
    path = str(node.target)
    m = modules[path]
    kind = next((k for types, k in _MODULE_KINDS if isinstance(m, types)), None)
    if kind is None or isinstance(m, nn.Conv2d) and m.padding_mode != "zeros":
        raise ModelRequirementError(
            f"the relevance engine has no rule for layer '{path}' of type {type(m).__name__}"
            + (f" with padding_mode='{m.padding_mode}'" if isinstance(m, nn.Conv2d) else "")
            + f"; supported: {', '.join(sorted({t.__name__ for t in SUPPORTED_LAYERS}))}, additions, "
              f"concatenation, gating products and reshaping")
    step = Step(node, kind, path, tuple_output=kind == "attention")
    if kind == "activation":
        step.family = _activation_family(m)
    elif kind == "affine":
        if m.running_mean is None or m.running_var is None:
            raise ModelRequirementError(f"the relevance engine uses BatchNorm's running statistics; '{path}' has "
                                        f"track_running_stats=False and normalises with batch statistics")
        prev = node.args[0]
        if isinstance(prev, fx.Node) and prev in steps and steps[prev].kind == "layer" and len(prev.users) == 1 \
                and calls[str(steps[prev].path)] == 1:
            step.kind, step.fold = "folded", prev
    elif kind == "copy" and isinstance(m, nn.ZeroPad2d | nn.ZeroPad1d) and m.value != 0:
        raise ModelRequirementError(f"layer '{path}' pads with {m.value}, not zeros")
    return step


def _function_step(node: fx.Node, steps: dict[fx.Node, Step], dependent: set[fx.Node], label: str) -> Step:
    target = node.target
    kind = _METHOD_KINDS.get(str(target)) if node.op == "call_method" else _FUNCTION_KINDS.get(target)
    if kind is None and node.op == "call_function" and _is_stochastic_depth(target):
        args = dict(zip(("input", "p", "mode", "training"), node.args, strict=False), **node.kwargs)
        if args.get("training", True) and args.get("p", 1.0) != 0:
            raise ModelRequirementError(f"the {_describe(node)} drops samples at random in training mode; "
                                        f"put the model in eval mode")
        kind = "pass"  # stochastic depth in eval mode is the identity
    if kind == "copy" and target is operator.getitem:
        source = node.args[0]
        if isinstance(source, fx.Node) and steps[source].tuple_output:
            kind = "select"
    if kind is None:
        raise ModelRequirementError(
            f"the relevance engine has no rule for the {_describe(node)} in {label}.forward; supported: "
            f"additions, products, concatenation, reshaping, pooling, rectifiers and smooth activations, "
            f"LayerNorm, softmax and attention")
    if kind == "layer":  # F.linear / F.conv2d: a layer if its parameters are the module's own
        path = _layer_path(node)
        params = [a for a in list(node.args[1:3]) + [node.kwargs.get("weight"), node.kwargs.get("bias")]
                  if isinstance(a, fx.Node)]
        if path is None or any(p in dependent or p.op != "get_attr" for p in params):
            raise ModelRequirementError(f"the relevance engine reads the {_describe(node)} in {label}.forward as a "
                                        f"layer only with a module's parameters as its weight and bias")
        return Step(node, kind, path)
    return Step(node, kind, tuple_output=target in _TUPLE_TARGETS,
                family=_activation_family(target) if kind == "activation" else None)


_PLAIN = (bool, int, float, str, type(None))


def _signature(module: nn.Module) -> tuple[Any, ...]:
    """What the capture depends on: each submodule's path, identity and class, its instance-level
    ``forward`` (a patched forward changes what fx traces) and its plain public attributes but
    ``training`` (the trace is always in eval mode)."""
    return tuple((name, id(m), type(m), id(m.__dict__.get("forward")),
                  tuple((k, v) for k, v in m.__dict__.items() if type(v) in _PLAIN and k[0] != "_"
                        and k != "training"))
                 for name, m in module.named_modules())


_CACHE: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[Any, ...], Captured]] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def root(module: nn.Module) -> nn.Module:
    """The module the graph's paths are relative to: the module itself, or a one-layer container
    around a bare supported layer (whose path is then ``'0'``)."""
    return nn.Sequential(module) if is_layer(module) else module


def capture(module: nn.Module) -> Captured:
    """The captured graph of ``module`` (traced at the first call and whenever the module tree
    changed since, else taken from the cache). Raises
    :class:`~salfw.core.errors.ModelRequirementError` for a network the engine cannot read."""
    signature = _signature(module)
    with _LOCK:
        hit = _CACHE.get(module)
        if hit is not None and hit[0] == signature:
            return hit[1]
        top = root(module)
        label = type(module).__name__
        with preserved(module):  # eval mode while tracing, the flags restored after
            graph = _trace(top, label)
            captured = Captured(graph, _classify(graph, dict(top.named_modules()), label), top is not module)
        _CACHE[module] = (signature, captured)
        return captured
