"""The propagation engine: run a network's captured graph (:mod:`.graph`) and pass relevance
from the explained output back to the input, node by node.

The user's module is never copied nor changed. BatchNorm directly after a Linear/Conv2d layer
(used once) is folded into it as new (weight, bias) tensors, exactly; a BatchNorm anywhere else
(DenseNet's, before its convolutions, after a concatenation) is an affine layer ``w ⊙ x + b``
per channel with a rule of its own (the composite's rule for non-convolutional layers:
``epsilon`` in ``epsilon-plus``). Activations run out of place. The forward pass records every
node's value; the backward pass visits the nodes in reverse, each with its rule:

* **Linear, Conv2d, affine BatchNorm**: the rule the composite chose for its path
  (:mod:`.rules`); ``nn.MultiheadAttention``'s value and output projections too (:mod:`.attention`).
* **ReLU, LeakyReLU**: relevance passes unchanged (Zennit's ``Pass``). **ReLU6, Hardtanh**:
  piecewise linear, handled exactly: relevance passes where the unit is on a linear piece
  through the origin (``f(x) = x`` or ``f(x) = 0``, as for ReLU) and is absorbed where the unit
  is saturated at a non-zero constant (ReLU6 at 6), which is a constant of the network there,
  like a bias.
* **SiLU, GELU, Sigmoid, Hardsigmoid, Hardswish**: the identity rule, relevance passes
  unchanged (Achtibat et al. 2024, "AttnLRP", Eq. 9; Zennit's ``Pass``).
* **Dropout, Identity, eval-mode stochastic depth, contiguous/clone**: identity.
* **view/reshape/flatten, permute/transpose, getitem (a token), cat/stack, expand, chunk,
  padding**: every output element copies one input element (or is a padded zero), so
  relevance moves with the copy (the operation's gradient): a concatenation splits it by
  slices, a padding drops the border's share, an expanded tensor sums its copies'.
* **Additions, subtractions, average pooling, means and sums**: the z-rule
  ``R_a = a · R / stab(a + b)`` (Zennit's ``Norm`` for ``AvgPool`` and ``Sum``), conservative
  up to the stabiliser; a constant term (a positional embedding) absorbs its share.
* **Products** ``a * b``, ``a @ b``: with one factor constant, the z-rule through the linear
  map. With both depending on the input, a *gate* (a factor computed by a sigmoid,
  hardsigmoid or softmax, directly or through reshaping, or one broadcast over the other: the
  squeeze-and-excitation ``x * gate``) is treated as a constant and all relevance flows through
  the value path (CP-LRP, Ali et al. 2022; AttnLRP, Achtibat et al. 2024), by the z-rule;
  otherwise AttnLRP's uniform rule gives each factor half of the z-rule's relevance (Eq. 7).
  Division by a constant is a product.
* **MaxPool2d**: the gradient, winner-take-all.
* **LayerNorm**: AttnLRP's rule (Sec. 3.3.3): the identity rule on the normalisation
  (the standard deviation treated as a constant, as in CP-LRP), the z-rule through the mean
  subtraction and the elementwise affine map, whose bias absorbs its share:
  ``R_x = x ⊙ (g − mean(g))`` with ``g = w ⊙ R_y / (σ · stab(y))``.
* **Softmax** reached by relevance (not as a gate): AttnLRP's rule (Prop. 3.1),
  ``R_x = x ⊙ (R_y − s ⊙ Σ R_y)`` with ``s`` the softmax output.
* **nn.MultiheadAttention**: CP-LRP inside the attention (:mod:`.attention`).

The network input is ``preprocessing(x)``; its relevance passes to the pixels unchanged since
the preprocessing is elementwise. :func:`propagate_batches` runs the propagation over a batch
in the method's chunks and counts the passes. DeepLIFT runs the same graph forward with its
own :class:`Operators` (difference quotients instead of derivatives) and differentiates it.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from salfw.core.context import Context, count
from salfw.core.errors import ModelRequirementError
from salfw.core.models import Model, WhiteBox

from . import attention
from .graph import SUPPORTED_LAYERS, Step, activation_function, capture, root
from .rules import Layer, Rule, stabilize

#: ``start(targets)`` returns the map from the logits (N, K) to the relevance at the output.
Start = Callable[[torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]

_OUT_OF_PLACE = {operator.iadd: operator.add, operator.isub: operator.sub, operator.imul: operator.mul,
                 operator.itruediv: operator.truediv}
_SUBTRACTIONS = (operator.sub, operator.isub, torch.sub, "sub")
_GATES = (torch.sigmoid, F.sigmoid, F.hardsigmoid, "sigmoid")
_THROUGH = ("pass", "reshape", "copy", "select")


@dataclass(frozen=True)
class MaxPool:
    """The arguments of a 2-d max pooling."""

    kernel_size: Any
    stride: Any
    padding: Any
    dilation: Any
    ceil_mode: bool

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)


class Operators:
    """How the forward pass computes the nonlinear steps, each called with a ``key`` naming the
    step (its node, or ``(node, part)`` inside an attention): ``activation(f, x, key)`` an
    elementwise activation ``f``, ``maxpool(x, pool, key)``, ``product(op, a, b, key)`` a product
    (``mul``/``matmul``) of two tensors that both depend on the input, ``joint(f, x, key)`` a
    nonlinearity coupling the elements of ``x`` (softmax, LayerNorm). This base class
    (:data:`PLAIN`) computes them as they are; DeepLIFT overrides them with autograd functions
    whose derivatives are its multipliers."""

    def activation(self, f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, key: Any) -> torch.Tensor:
        return f(x)

    def maxpool(self, x: torch.Tensor, pool: MaxPool, key: Any) -> torch.Tensor:
        return pool(x)

    def product(self, op: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], a: torch.Tensor, b: torch.Tensor,
                key: Any) -> torch.Tensor:
        return op(a, b)

    def joint(self, f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, key: Any) -> torch.Tensor:
        return f(x)


PLAIN = Operators()


@dataclass
class LayerInfo:
    """A layer with a rule (Linear, Conv2d, an affine BatchNorm, an attention's projections), in
    execution order: its path, the module it belongs to, its index and its ``kind`` (``"linear"``,
    ``"conv"`` or ``"affine"``, :class:`~.rules.Layer`)."""

    path: str
    module: nn.Module
    index: int
    kind: str = "linear"

    @property
    def is_conv(self) -> bool:
        return self.kind == "conv"


def _fold_batchnorm(layer: Layer, bn: nn.Module) -> Layer:
    """The preceding Linear/Conv with an eval-mode BatchNorm folded in: new tensors, the module untouched."""
    scale, shift = _batchnorm_affine(bn)
    with torch.no_grad():
        shape = (-1,) + (1,) * (layer.weight.dim() - 1)
        bias = layer.bias if layer.bias is not None else torch.zeros_like(scale)
        return Layer(layer.module, layer.weight * scale.view(shape), bias * scale + shift, layer.kind,
                     getattr(layer, "conv", None))


def _batchnorm_affine(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``(w, b)`` with ``bn(x) = w ⊙ x + b`` per channel in eval mode."""
    assert isinstance(bn, nn.BatchNorm1d | nn.BatchNorm2d)
    mean, var = bn.running_mean, bn.running_var
    assert mean is not None and var is not None  # checked when the graph was captured
    with torch.no_grad():
        std = torch.sqrt(var + bn.eps)
        scale = bn.weight / std if bn.affine else 1 / std
        return scale, (bn.bias if bn.affine else 0) - mean * scale


def _leading(node: fx.Node) -> fx.Node:
    """A node's first argument, a node."""
    source = node.args[0]
    assert isinstance(source, fx.Node), node
    return source


class Network:
    """The captured graph of a white box's module (BatchNorm folded into new parameter tensors
    unless ``fold=False``), ready for relevance propagation; the module itself is only read.
    ``method`` is the explaining method's name, for error messages. Building it checks the model:
    a layer or operation without a rule raises :class:`~salfw.core.errors.ModelRequirementError`."""

    def __init__(self, model: Model, method: str, fold: bool = True):
        if not isinstance(model, WhiteBox):
            raise ModelRequirementError(f"'{method}' walks the layers of a salfw.WhiteBox (a torch.nn.Module); "
                                        f"got a {type(model).__name__}")
        self.model = model
        self.method = method
        self.fold = fold
        try:
            captured = capture(model.module)
        except ModelRequirementError as exc:
            raise ModelRequirementError(f"'{method}': {exc}; gradient methods such as 'integrated-gradients' "
                                        f"apply to any differentiable network") from None
        self.module = root(model.module) if captured.wrapped else model.module
        self.graph = captured.graph
        self.steps = captured.steps
        self.nodes = [s.node for s in self.steps]
        self.modules = dict(self.module.named_modules())
        self.dependent = {s.node for s in self.steps if s.kind != "constant"}
        self._step_of = {s.node: s for s in self.steps}
        #: path -> the layer as rules see it (folded parameters where BatchNorm follows)
        self.rule_layers: dict[str, Layer] = {}
        self._functions: dict[fx.Node, Any] = {}
        self._gates: dict[fx.Node, int | None] = {}
        order: list[str] = []
        #: steps other than rule layers where relevance can be absorbed: key -> (step, type, rule)
        self._absorbers: dict[str, tuple[Step, str, str]] = {}
        #: the keys of the diagnostics (rule layers and absorbing steps), in execution order
        self._diagnostics: list[str] = []
        for step in self.steps:
            self._prepare(step, order)
            self._absorber(step)
        self.layers = [LayerInfo(path, self.rule_layers[path].module, i, self.rule_layers[path].kind)
                       for i, path in enumerate(order)]

    # -- preparation ---------------------------------------------------------------
    def _prepare(self, step: Step, order: list[str]) -> None:
        node, path = step.node, step.path
        m = self.modules[path] if path is not None else None
        if step.kind == "layer":  # a module called twice is one layer with one rule
            assert path is not None and m is not None
            self.rule_layers[path] = Layer(m) if node.op == "call_module" else self._functional_layer(node, m)
            order += [] if path in order else [path]
        elif step.kind == "folded" and self.fold:
            assert path is not None and m is not None and step.fold is not None
            conv = self._step_of[step.fold].path
            assert conv is not None
            self.rule_layers[conv] = _fold_batchnorm(self.rule_layers[conv], m)
        elif step.kind == "affine" or step.kind == "folded":
            assert path is not None and m is not None
            self.rule_layers[path] = Layer(m, *_batchnorm_affine(m), kind="affine")
            order += [] if path in order else [path]
        elif step.kind == "attention":
            assert path is not None and isinstance(m, nn.MultiheadAttention)
            attention.check(m, path, node.args, dict(node.kwargs))
            self.rule_layers[f"{path}.in_proj"] = attention.value_layer(m)
            self.rule_layers[f"{path}.out_proj"] = Layer(m.out_proj)
            order += [] if path in order else [f"{path}.in_proj", f"{path}.out_proj"]
        elif step.kind == "activation" and m is not None:
            self._functions[node] = activation_function(m)
        elif step.kind == "maxpool" and m is not None:
            assert isinstance(m, nn.MaxPool2d)
            if m.return_indices:
                raise ModelRequirementError(f"'{self.method}' needs MaxPool2d '{path}' without return_indices")
            self._functions[node] = MaxPool(m.kernel_size, m.stride or m.kernel_size, m.padding, m.dilation,
                                            m.ceil_mode)
        elif step.kind == "product":
            self._gates[node] = self._gate(node)
        elif step.kind == "divide":
            if len(node.args) != 2 or node.kwargs or isinstance(node.args[1], fx.Node) and \
                    node.args[1] in self.dependent:
                raise ModelRequirementError(
                    f"'{self.method}' divides by constants only; the {self._describe(node)} divides by a value "
                    f"that depends on the input")
        elif step.kind == "sum" and (len(node.args) != 2 or node.kwargs):
            raise ModelRequirementError(f"'{self.method}' supports plain additions a + b only "
                                        f"({self._describe(node)} has extra arguments)")

    def _absorber(self, step: Step) -> None:
        """Note a step where relevance can be absorbed outside the rule layers: an addition of a
        constant term (a positional embedding), a concatenation with a constant (a class token) or a
        padding, LayerNorm (its bias), a rectifier saturating at a non-zero constant (ReLU6), softmax
        (AttnLRP's rule)."""
        node = step.node
        constant = any(not (isinstance(a, fx.Node) and a in self.dependent)
                       for a in node.args if isinstance(a, fx.Node | int | float))
        padding = node.target is F.pad or isinstance(self.modules.get(str(step.path)), nn.ZeroPad1d | nn.ZeroPad2d)
        absorbs = {
            "sum": ("constant term", "z-rule") if constant else None,
            "copy": ("padding", "copy") if padding else ("constant part", "copy")
            if any(n not in self.dependent for n in node.all_input_nodes) else None,
            "layernorm": ("LayerNorm", "attnlrp-layernorm"),
            "softmax": ("Softmax", "attnlrp-softmax"),
            "activation": ("saturation", "linear-piece") if step.family in ("relu6", "saturating") else None,
        }.get(step.kind)
        if absorbs is not None:
            key = step.path or str(node.name)
            kind = type(self.modules[step.path]).__name__ if step.path is not None else absorbs[0]
            self._absorbers[key] = (step, kind, absorbs[1])
            self._diagnostics += [] if key in self._diagnostics else [key]  # a module called twice: one entry
        elif step.kind in ("layer", "affine") or step.kind == "folded" and not self.fold:
            self._diagnostics += [] if step.path in self._diagnostics else [str(step.path)]
        elif step.kind == "attention" and f"{step.path}.in_proj" not in self._diagnostics:
            self._diagnostics += [f"{step.path}.in_proj", f"{step.path}.out_proj"]

    def _functional_layer(self, node: fx.Node, owner: nn.Module) -> Layer:
        """``F.linear(x, w, b)`` or ``F.conv2d(x, w, b, stride, padding, dilation, groups)`` with a
        module's parameters (checked when the graph was captured) as a layer."""
        conv = node.target is not F.linear
        names = ("input", "weight", "bias") + (("stride", "padding", "dilation", "groups") if conv else ())
        given: dict[str, Any] = dict(zip(names, node.args, strict=False), **node.kwargs)
        weight, bias = (self._evaluate(a, (), {}) if isinstance(a, fx.Node) else a
                        for a in (given["weight"], given.get("bias")))
        settings: tuple[Any, Any, Any, int] = (given.get("stride", 1), given.get("padding", 0),
                                               given.get("dilation", 1), given.get("groups", 1))
        if any(isinstance(a, fx.Node) for a in settings):
            raise ModelRequirementError(f"'{self.method}' needs the {self._describe(node)}'s stride, padding, "
                                        f"dilation and groups as constants")
        return Layer(owner, weight, bias, kind="conv" if conv else "linear", conv=settings if conv else None)

    def _describe(self, node: fx.Node) -> str:
        target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", node.target)
        return f"'{node.target}'" if node.op == "call_module" else f"operation '{target}' (node '{node.name}')"

    def _is_gate(self, node: Any) -> bool:
        """Whether ``node`` is computed by a gating function (sigmoid, hardsigmoid, softmax), directly
        or through reshaping."""
        while isinstance(node, fx.Node) and node in self._step_of:
            step = self._step_of[node]
            if step.kind == "softmax":
                return True
            if step.kind == "activation":
                m = self.modules.get(step.path) if step.path is not None else None
                return isinstance(m, nn.Sigmoid | nn.Hardsigmoid) or node.target in _GATES
            if step.kind not in _THROUGH or len(node.all_input_nodes) != 1:
                return False
            node = node.all_input_nodes[0]
        return False

    def _gate(self, node: fx.Node) -> int | None:
        """For a product of two input-dependent factors, the index of the one that is a gate by
        construction (None: decided by broadcasting in the backward pass)."""
        if len(node.args) != 2 or node.kwargs:
            raise ModelRequirementError(f"'{self.method}' supports plain products a * b and a @ b only "
                                        f"({self._describe(node)} has extra arguments)")
        gates = [self._is_gate(a) for a in node.args]
        return gates.index(True) if gates.count(True) == 1 else None

    def relu_network_violation(self, nonnegative_inputs: bool = False) -> str | None:
        """Where the network breaks the assumptions of the methods derived for ReLU networks (deep
        Taylor decomposition, excitation backprop), as "layer 'p' is SiLU, not a rectifier"; None
        where it does not. Those methods assume rectified (ReLU or ReLU6) activations: a
        non-rectifying activation (SiLU, GELU, sigmoid gates, LeakyReLU, Hardtanh), LayerNorm,
        softmax, attention or a product of two input-dependent values breaks them. With
        ``nonnegative_inputs`` every Linear/Conv2d layer above the network input must also read a
        value a rectifier bounds below (not so after MobileNetV2's linear bottlenecks)."""
        nonnegative: set[fx.Node] = set()
        for step in self.steps:
            node = step.node
            if step.path is not None:
                name, what = f"layer '{step.path}'", type(self.modules[step.path]).__name__
            else:
                target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
                name, what = f"node '{node.name}'", f"the function '{target}'"
            inputs = [n for n in node.all_input_nodes if n in self.dependent]
            if step.kind == "activation" and step.family not in ("relu", "relu6"):
                return f"{name} is {what}, not a rectifier"
            if step.kind in ("layernorm", "softmax", "attention"):
                return f"{name} is {what}"
            if step.kind == "product" and len(inputs) == 2:
                return f"{name} multiplies two values that depend on the input (a gate)"
            if nonnegative_inputs and step.kind == "layer" and not all(n in nonnegative for n in inputs):
                source = next(n for n in inputs if n not in nonnegative)
                read = f"layer '{source.target}' ({type(self.modules[str(source.target)]).__name__})" \
                    if source.op == "call_module" else f"node '{source.name}'"
                return f"{name} reads the output of {read}, which no rectifier bounds below (it can be negative)"
            if step.kind == "input" or step.kind == "activation" or \
                    step.kind in ("pass", "reshape", "copy", "select", "maxpool", "pool", "sum", "folded") and \
                    inputs and all(n in nonnegative for n in inputs):
                nonnegative.add(node)
        return None

    # -- forward -------------------------------------------------------------------
    def _evaluate(self, node: fx.Node, args: Any, kwargs: Any) -> Any:
        """A node computed as the module computes it (out of place)."""
        if node.op == "get_attr":
            obj: Any = self.module
            for part in str(node.target).split("."):
                obj = getattr(obj, part)
            return obj
        if node.op == "call_module":
            return self.modules[str(node.target)](*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], str(node.target))(*args[1:], **kwargs)
        target: Any = node.target
        return _OUT_OF_PLACE.get(target, target)(*args, **kwargs)

    def forward(self, y: torch.Tensor, ops: Operators = PLAIN) -> tuple[dict[Any, Any], torch.Tensor]:
        """Run the network on the network input ``y``; return every node's value and the logits.

        Linear/Conv2d layers run functionally with their (folded) parameters, activations out of
        place; ``ops`` computes the nonlinear steps (:class:`Operators`)."""
        env: dict[Any, Any] = {}
        out = None
        for step in self.steps:
            node, kind = step.node, step.kind
            args: Any
            kwargs: Any
            if len(node.args) == 1 and isinstance(node.args[0], fx.Node) and not node.kwargs:
                args, kwargs = (env[node.args[0]],), {}  # a layer call x -> f(x): no tree walk
            else:
                args = fx.node.map_arg(node.args, env.__getitem__)
                kwargs = fx.node.map_arg(node.kwargs, env.__getitem__)
            if kind == "input":
                env[node] = y
            elif kind == "layer" or kind == "affine" or kind == "folded" and not self.fold:
                layer = self.rule_layers[str(step.path)]
                env[node] = layer.forward(args[0], layer.weight, layer.bias)
            elif kind == "folded":
                assert step.fold is not None
                env[node] = env[step.fold]
            elif kind == "activation":
                f = self._functions.get(node)
                if f is None:
                    target: Any = torch.relu if node.target == "relu" else torch.sigmoid \
                        if node.target == "sigmoid" else node.target
                    extra = {k: v for k, v in kwargs.items() if k != "inplace"}
                    f = partial(target, *args[1:], **extra) if len(args) > 1 or extra else target
                env[node] = ops.activation(f, args[0], node)
            elif kind == "pass":
                env[node] = args[0]
            elif kind == "maxpool":
                pool = self._functions.get(node) or self._maxpool_arguments(node, args, kwargs)
                env[node] = ops.maxpool(args[0], pool, node)
            elif kind == "product":
                a, b = args
                both = all(isinstance(t, fx.Node) and t in self.dependent for t in node.args)
                op = _product_function(node)
                env[node] = ops.product(op, a, b, node) if both else op(a, b)
            elif kind == "layernorm" or kind == "softmax":
                env[node] = ops.joint(self._joint_function(node, args, kwargs), args[0], node)
            elif kind == "attention":
                m = self.modules[str(node.target)]
                assert isinstance(m, nn.MultiheadAttention)
                named = dict(zip(("query", "key", "value"), node.args, strict=False), **node.kwargs)
                dependent = tuple(named[k] in self.dependent for k in ("query", "key", "value"))
                env[node], env[(node, "parts")] = attention.forward(m, args, kwargs, ops, node, dependent)
            elif kind == "output":
                out = args[0]
            else:  # constants, sums, copies, reshapes, pooling, divisions by constants
                env[node] = self._evaluate(node, args, kwargs)
        if not isinstance(out, torch.Tensor) or out.dim() not in (1, 2):
            raise ModelRequirementError(f"'{self.method}' needs a module returning logits (N, K)")
        return env, out

    def _maxpool_arguments(self, node: fx.Node, args: Any, kwargs: Any) -> MaxPool:
        names = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
        given = dict(zip(names, args, strict=False), **kwargs)
        if given.get("return_indices"):
            raise ModelRequirementError(f"'{self.method}' needs max pooling without return_indices "
                                        f"({self._describe(node)})")
        return MaxPool(given["kernel_size"], given.get("stride") or given["kernel_size"], given.get("padding", 0),
                       given.get("dilation", 1), bool(given.get("ceil_mode", False)))

    def _joint_function(self, node: fx.Node, args: Any, kwargs: Any) -> partial[torch.Tensor]:
        """``f`` with ``f(x)`` the node's softmax or layer norm of its first argument ``x``."""
        if node.op == "call_module":
            m = self.modules[str(node.target)]
            if isinstance(m, nn.LayerNorm):
                return partial(F.layer_norm, normalized_shape=m.normalized_shape, weight=m.weight, bias=m.bias,
                               eps=m.eps)
            assert isinstance(m, nn.Softmax) and m.dim is not None, "nn.Softmax needs its dim"
            return partial(torch.softmax, dim=m.dim)
        rest = {k: v for k, v in kwargs.items() if k not in ("input", "_stacklevel")}
        if node.target in (F.layer_norm,):
            return partial(F.layer_norm, *args[1:], **rest)
        names = ("dim",) if node.op == "call_method" else ("dim", "_stacklevel", "dtype")
        given = dict(zip(names, args[1:], strict=False), **rest)
        return partial(torch.softmax, dim=given["dim"])

    # -- backward ------------------------------------------------------------------
    def propagate(self, y: torch.Tensor, start: Callable[[torch.Tensor], torch.Tensor],
                  rules: Mapping[str, Rule], stabilizer: float = 1e-6
                  ) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, Any]]]:
        """Relevance at the network input ``y``.

        ``start(logits)`` gives the relevance of the output (e.g. one-hot × logit);
        ``rules`` maps each rule layer's path to its rule. Returns the input relevance, the
        logits and per-layer diagnostics: for each rule layer (in execution order) its path,
        rule, and per-sample relevance sums at its output and input (their difference is what
        the layer's bias absorbed).
        """
        with torch.no_grad():
            env, logits = self.forward(y)
            output_node = _leading(self.nodes[-1])
            relevance: dict[fx.Node, Any] = {output_node: start(logits.reshape(logits.shape[0], -1))
                                             .reshape(logits.shape)}
            layers: dict[str, dict[str, Any]] = {}
            result = torch.zeros_like(y)
            for step in reversed(self.steps):
                r = relevance.pop(step.node, None)
                if r is None:
                    continue
                if step.kind == "input":
                    result = r
                    continue
                passed = [(src, r_in) for src, r_in in self._backward(step, env, r, rules, stabilizer, layers)
                          if src in self.dependent]  # a constant absorbs its share, as a bias
                key = step.path or str(step.node.name)
                if key in self._absorbers and not isinstance(r, dict):
                    _step, kind, rule = self._absorbers[key]
                    n = y.shape[0]
                    entry = layers.setdefault(key, {"layer": key, "type": kind, "rule": rule, "relevance_out": 0,
                                                    "relevance_in": 0})
                    out = _per_sample(r, n)
                    kept = [_per_sample(r_in, n) for _src, r_in in passed if not isinstance(r_in, dict)]
                    entry["relevance_out"] = entry["relevance_out"] + out
                    entry["relevance_in"] = entry["relevance_in"] + sum(kept, torch.zeros_like(out))
                for src, r_in in passed:
                    if isinstance(r_in, dict):  # parts of a tuple-valued node
                        held = relevance.setdefault(src, {})
                        for i, part in r_in.items():
                            held[i] = held[i] + part if i in held else part
                    else:
                        relevance[src] = relevance[src] + r_in if src in relevance else r_in
        none = torch.zeros(y.shape[0], dtype=y.dtype, device=y.device)
        diagnostics = [layers.get(key) or (
            {"layer": key, "type": self._absorbers[key][1], "rule": self._absorbers[key][2]} if key in self._absorbers
            else {"layer": key, "type": self._type(key), "rule": rules[key].name})
            | ({} if key in layers else {"relevance_out": none, "relevance_in": none}) for key in self._diagnostics]
        return result, logits, diagnostics

    def _type(self, path: str) -> str:
        """How diagnostics name a rule layer's type."""
        layer = self.rule_layers[path]
        return type(layer.module).__name__ if layer.kind == "affine" else "Conv2d" if layer.kind == "conv" \
            else "Linear"

    def _record(self, layers: dict[str, dict[str, Any]], path: str, rule: Rule, r: torch.Tensor,
                r_in: torch.Tensor) -> None:
        entry = layers.setdefault(path, {"layer": path, "type": self._type(path), "rule": rule.name,
                                         "relevance_out": 0, "relevance_in": 0})
        entry["relevance_out"] = entry["relevance_out"] + r.flatten(1).sum(1)
        entry["relevance_in"] = entry["relevance_in"] + r_in.flatten(1).sum(1)

    def _backward(self, step: Step, env: dict[Any, Any], r: Any, rules: Mapping[str, Rule],
                  stabilizer: float, layers: dict[str, dict[str, Any]]) -> list[tuple[fx.Node, Any]]:
        """(input node, relevance) pairs for one node."""
        node, kind = step.node, step.kind
        if kind in ("output", "pass", "folded"):
            return [(_leading(node), r)]
        if kind == "layer" or kind == "affine":
            path = str(step.path)
            source = _leading(node)
            rule = rules[path]
            r_in = rule(self.rule_layers[path], env[source], env[node], r)
            self._record(layers, path, rule, r, r_in)
            return [(source, r_in)]
        if kind == "activation":
            source = _leading(node)
            if step.family in ("relu6", "saturating"):  # saturated units are constants: they absorb it
                x, out = env[source], env[node]
                return [(source, r * ((out == x) | (out == 0)).to(r))]
            return [(source, r)]
        if kind == "reshape":
            source = _leading(node)
            return [(source, r.reshape(env[source].shape))]
        if kind == "select":
            return [(_leading(node), {node.args[1]: r})]
        if kind == "copy":
            return self._vjp(node, env, r)
        if kind == "maxpool":
            return self._vjp(node, env, r, self._functions.get(node))
        if kind in ("sum", "pool"):
            share = r / stabilize(env[node], stabilizer)
            if kind == "pool":
                return [(src, env[src] * g) for src, g in self._vjp(node, env, share)]
            sign = -1 if node.target in _SUBTRACTIONS else 1
            return [(a, (env[a] * share * (sign if i == 1 else 1)).sum_to_size(env[a].shape))
                    for i, a in enumerate(node.args) if isinstance(a, fx.Node) and a in self.dependent]
        if kind in ("product", "divide"):
            return self._product(step, env, r, stabilizer)
        if kind == "layernorm":
            return [(_leading(node), self._layernorm(node, env, r, stabilizer))]
        if kind == "softmax":
            source = _leading(node)
            s = env[node]
            dim = self._joint_function(node, fx.node.map_arg(node.args, env.__getitem__),
                                       fx.node.map_arg(node.kwargs, env.__getitem__)).keywords["dim"]
            return [(source, env[source] * (r - s * r.sum(dim, keepdim=True)))]
        if kind == "attention":
            return self._attention(step, env, r, rules, stabilizer, layers)
        raise ModelRequirementError(f"'{self.method}' cannot pass relevance through the {self._describe(node)}")

    def _vjp(self, node: fx.Node, env: dict[Any, Any], grad: Any, pool: MaxPool | None = None
             ) -> list[tuple[fx.Node, torch.Tensor]]:
        """The gradient of the node's (plain) operation at its recorded inputs, with output
        gradient ``grad`` (a dict {index: tensor} for a tuple-valued node), for each input that
        depends on the network input."""
        inputs = [n for n in node.all_input_nodes if n in self.dependent]
        with torch.enable_grad():
            leaves = {n: env[n].detach().requires_grad_(True) for n in inputs}
            args: Any = fx.node.map_arg(node.args, lambda n: leaves.get(n, env[n]))
            kwargs: Any = fx.node.map_arg(node.kwargs, lambda n: leaves.get(n, env[n]))
            out = pool(args[0]) if pool is not None else self._evaluate(node, args, kwargs)
            if isinstance(grad, dict):
                pairs = [(out[i], g) for i, g in grad.items()]
                outs, grads = [o for o, _ in pairs], [g for _, g in pairs]
            else:
                outs, grads = [out], [grad]
            found = torch.autograd.grad(outs, [leaves[n] for n in inputs], grads, allow_unused=True)
        return [(n, g) for n, g in zip(inputs, found, strict=True) if g is not None]

    def _product(self, step: Step, env: dict[Any, Any], r: torch.Tensor, stabilizer: float
                 ) -> list[tuple[fx.Node, torch.Tensor]]:
        """z-rule through a product: with a constant factor all relevance goes to the other; of two
        input-dependent factors the gate is a constant, or each gets half (AttnLRP's uniform rule)."""
        node = step.node
        share = r / stabilize(env[node], stabilizer)
        factors = [i for i, a in enumerate(node.args) if isinstance(a, fx.Node) and a in self.dependent]
        gate = self._gates.get(node)
        if len(factors) == 2 and gate is None:
            sizes = [env[a].numel() for a in node.args if isinstance(a, fx.Node)]
            if sizes[0] != sizes[1] and max(sizes) == env[node].numel():  # one is broadcast over the other
                gate = sizes.index(min(sizes))
        if len(factors) == 2 and gate is not None:
            factors = [1 - gate]
        weight = 0.5 if len(factors) == 2 else 1.0
        op = _product_function(node)
        pairs = []
        with torch.enable_grad():
            for i in factors:
                a = node.args[i]
                assert isinstance(a, fx.Node)
                leaf = env[a].detach().requires_grad_(True)
                operands = [leaf if j == i else env[b] if isinstance(b, fx.Node) else b
                            for j, b in enumerate(node.args)]
                (g,) = torch.autograd.grad(op(*operands), leaf, share)
                pairs.append((a, weight * env[a] * g))
        return pairs

    def _layernorm(self, node: fx.Node, env: dict[Any, Any], r: torch.Tensor, stabilizer: float) -> torch.Tensor:
        """AttnLRP's LayerNorm rule: identity on the division by σ, z-rule on the rest."""
        f = self._joint_function(node, fx.node.map_arg(node.args, env.__getitem__),
                                 fx.node.map_arg(node.kwargs, env.__getitem__))
        x, y = env[_leading(node)], env[node]
        shape, weight, eps = f.keywords["normalized_shape"], f.keywords.get("weight"), f.keywords.get("eps", 1e-5)
        dims = tuple(range(-len(tuple(shape) if not isinstance(shape, int) else (shape,)), 0))
        sigma = torch.sqrt(x.var(dims, unbiased=False, keepdim=True) + eps)
        g = r / (stabilize(y, stabilizer) * sigma)
        if weight is not None:
            g = g * weight
        return x * (g - g.mean(dims, keepdim=True))

    def _attention(self, step: Step, env: dict[Any, Any], r: Any, rules: Mapping[str, Rule], stabilizer: float,
                   layers: dict[str, dict[str, Any]]) -> list[tuple[fx.Node, torch.Tensor]]:
        node = step.node
        path = str(node.target)
        m = self.modules[path]
        assert isinstance(m, nn.MultiheadAttention)
        r_out = r.get(0) if isinstance(r, dict) else r  # relevance reaching the weights (index 1) stops there
        if r_out is None:
            return []
        paths = (f"{path}.in_proj", f"{path}.out_proj")
        chosen = (rules[paths[0]], rules[paths[1]])

        def record(i: int, r_o: torch.Tensor, r_i: torch.Tensor) -> None:
            self._record(layers, paths[i], chosen[i], r_o, r_i)

        r_in = attention.relevance(m, env[(node, "parts")], (self.rule_layers[paths[0]], self.rule_layers[paths[1]]),
                                   chosen, r_out, stabilizer, record)
        value = dict(zip(("query", "key", "value"), node.args, strict=False), **node.kwargs)["value"]
        assert isinstance(value, fx.Node)
        return [(value, r_in)]


def _per_sample(t: torch.Tensor, n: int) -> torch.Tensor:
    """Per-sample sums of a relevance tensor along dimension 0 (the batch, for batch-first layouts):
    NaN where dimension 0 is not the batch of ``n`` samples."""
    if t.dim() == 0 or t.shape[0] != n:
        return torch.full((n,), float("nan"), dtype=t.dtype, device=t.device)
    return t.flatten(1).sum(1)


def _product_function(node: fx.Node) -> Callable[[Any, Any], torch.Tensor]:
    """The out-of-place operation of a product or division node."""
    target: Any = node.target
    methods: dict[str, Any] = {"mul": torch.mul, "matmul": torch.matmul, "bmm": torch.bmm, "div": torch.div}
    op: Callable[[Any, Any], torch.Tensor] = methods[target] if node.op == "call_method" else \
        _OUT_OF_PLACE.get(target, target)
    return op


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


__all__ = ["PLAIN", "SUPPORTED_LAYERS", "LayerInfo", "MaxPool", "Network", "Operators", "Start", "layer_sums",
           "one_hot_start", "propagate_batches", "unit_start"]
