"""DeepLIFT with the rescale rule (Shrikumar, Greenside & Kundaje 2017, "Learning important
features through propagating activation differences").

Each input's contribution is ``(x − x̄) · m`` where the multiplier ``m`` is a gradient in
which every nonlinearity's local derivative is replaced by a difference quotient against the
reference pass, so that at every node the contributions of its inputs sum to the difference of
its output (summation-to-delta), and the input contributions sum to ``f(x) − f(x̄)``:

* **elementwise nonlinearities** (ReLU, ReLU6, LeakyReLU, Hardtanh, SiLU, GELU, Sigmoid,
  Hardsigmoid, Hardswish): the rescale rule ``m = (y − ȳ) / (x − x̄)``, falling back to the
  gradient where ``|x − x̄| < 1e-10`` (Captum's threshold). The paper states it for any
  nonlinearity of one input; for a monotone one (all of these but SiLU, GELU and Hardswish
  below their minima) the multiplier is non-negative.
* **MaxPool2d**: as Captum's ``DeepLift``: the output difference is split between the input's
  and the reference's winners and divided by the input difference.
* **products of two input-dependent values** (a squeeze-and-excitation gate ``x * gate``, the
  attention's ``q kᵀ`` and ``A v``): the paper's rule for multiplicative interactions (Sec. 3.5
  of the arXiv version), ``Δ(ab) = ((b + b̄)/2) Δa + ((a + ā)/2) Δb``, exact for any bilinear map.
  (LRP's treatment of a gate as a constant would break summation-to-delta.)
* **softmax and LayerNorm**, nonlinearities coupling several inputs, where the rescale rule of
  one input does not apply: the Jacobian ``J`` at the midpoint ``(x + x̄)/2``, rescaled per
  output so that the contributions sum to its difference: ``m = Jᵀ (g ⊙ Δy ⊘ J Δx)`` (for one
  input this is the rescale rule; ``J Δx`` below 1e-10 falls back to ``Jᵀ g``).
* **linear steps** (Linear, Conv2d, pooling averages, BatchNorm in eval mode, additions,
  concatenation, reshaping, products with a constant): their gradient.

The reference is run first through the network's captured graph
(:class:`salfw.sdk.propagation.Network`, BatchNorm kept as it is) and every nonlinear step
records its reference values; the input is then run with the substituted steps
(:class:`salfw.sdk.propagation.Operators`) and differentiated once. Because the reference
values are matched to the step, not to a half of a doubled batch, the batch may sit in any
dimension (a transformer's tokens first). The user's module is neither copied nor changed.
Where Captum's hooks lose summation-to-delta (a ReLU module feeding a MaxPool2d directly, a
module called twice as ResNet's ``relu``), salfw keeps it.

The reference (baseline) is resolved by :func:`salfw.sdk.reference.reference`, as for
integrated gradients: a perturbation name (``black`` -- the default, the paper's all-zero
reference for [0, 1] images -- ``white``, ``mean``, ``blur``, ``uniform-noise``, ...) filling the
whole input (random fills drawn from the call's CPU generator), a number, or a tensor shaped
like one sample or like the batch. Local explanation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from salfw.core.context import Context, count
from salfw.core.contracts import Method
from salfw.core.hookspecs import hookimpl
from salfw.core.models import Model
from salfw.core.params import baseline, batch_size
from salfw.sdk.propagation import MaxPool, Network, Operators
from salfw.sdk.reference import reference

EPS = 1e-10  # Captum's threshold for |x − x̄| below which the gradient is used

Function = Callable[[torch.Tensor], torch.Tensor]


def _local_gradient(f: Function, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``grad ⊙ f'(x)`` for an elementwise ``f``."""
    if f is torch.relu:
        return grad * (x > 0).to(grad)
    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(f(leaf), leaf, grad)
    return g


class _Elementwise(torch.autograd.Function):
    """``f(x)`` forward, keeping ``x``, ``x_ref``, ``f(x)`` and ``f(x_ref)`` for a DeepLIFT backward rule."""

    @staticmethod
    def forward(ctx, f, x, x_ref, y_ref):
        y = f(x)
        ctx.f = f
        ctx.save_for_backward(x, x_ref, y, y_ref)
        return y


class _Rescale(_Elementwise):
    @staticmethod
    def backward(ctx, grad):
        x, x_ref, y, y_ref = ctx.saved_tensors
        dx = x - x_ref
        small = dx.abs() < EPS
        rescaled = grad * (y - y_ref) / torch.where(small, 1.0, dx)
        if bool(small.any()):
            rescaled = torch.where(small, _local_gradient(ctx.f, x, grad), rescaled)
        return None, rescaled, None, None


def _unpool(values: torch.Tensor, x: torch.Tensor, p: MaxPool, indices: torch.Tensor) -> torch.Tensor:
    """``values`` put back at the winners ``indices`` of pooling ``x``, summed where windows overlap."""
    pair = torch.nn.modules.utils._pair
    return torch.ops.aten.max_pool2d_with_indices_backward(values, x, pair(p.kernel_size), pair(p.stride),
                                                           pair(p.padding), pair(p.dilation), p.ceil_mode, indices)


class _RescaleMaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, x_ref, pool):
        y, indices = F.max_pool2d(x, pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode,
                                  return_indices=True)
        ctx.pool = pool
        ctx.save_for_backward(x, x_ref, y, indices)
        return y

    @staticmethod
    def backward(ctx, grad):
        x, x_ref, y, indices = ctx.saved_tensors
        p = ctx.pool
        plain = _unpool(grad, x, p, indices)  # the ordinary max-pool gradient
        y_ref, ref_indices = F.max_pool2d(x_ref, p.kernel_size, p.stride, p.padding, p.dilation, p.ceil_mode,
                                          return_indices=True)
        top = torch.max(y, y_ref)
        ours = _unpool(grad * (top - y_ref), x, p, indices)  # overlapping windows add up at a shared winner
        theirs = _unpool(grad * (y - top), x_ref, p, ref_indices)
        dx = x - x_ref
        small = dx.abs() < EPS
        return torch.where(small, plain, (ours + theirs) / torch.where(small, 1.0, dx)), None, None


class _Product(torch.autograd.Function):
    @staticmethod
    def forward(ctx, op, a, b, a_ref, b_ref):
        ctx.op = op
        ctx.save_for_backward(a, b, a_ref, b_ref)
        return op(a, b)

    @staticmethod
    def backward(ctx, grad):
        a, b, a_ref, b_ref = ctx.saved_tensors
        op = ctx.op
        with torch.enable_grad():
            leaf_a, leaf_b = a.detach().requires_grad_(True), b.detach().requires_grad_(True)
            (ga,) = torch.autograd.grad(op(leaf_a, (b + b_ref) / 2), leaf_a, grad)
            (gb,) = torch.autograd.grad(op((a + a_ref) / 2, leaf_b), leaf_b, grad)
        return None, ga, gb, None, None


class _Joint(_Elementwise):
    @staticmethod
    def backward(ctx, grad):
        x, x_ref, y, y_ref = ctx.saved_tensors
        mid = (x + x_ref) / 2
        with torch.enable_grad():
            _out, u = torch.func.jvp(ctx.f, (mid,), (x - x_ref,))
            small = u.abs() < EPS
            scaled = grad * torch.where(small, 1.0, (y - y_ref) / torch.where(small, 1.0, u))
            leaf = mid.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(ctx.f(leaf), leaf, scaled)
        return None, g, None, None


class _Recorder(Operators):
    """The reference pass: computes every step as it is and keeps its inputs and outputs by key."""

    def __init__(self) -> None:
        self.seen: dict[Any, tuple[torch.Tensor, ...]] = {}

    def activation(self, f: Function, x: torch.Tensor, key: Any) -> torch.Tensor:
        y = f(x)
        self.seen[key] = (x, y)
        return y

    def maxpool(self, x: torch.Tensor, pool: MaxPool, key: Any) -> torch.Tensor:
        self.seen[key] = (x,)
        return pool(x)

    def product(self, op: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], a: torch.Tensor, b: torch.Tensor,
                key: Any) -> torch.Tensor:
        self.seen[key] = (a, b)
        return op(a, b)

    def joint(self, f: Function, x: torch.Tensor, key: Any) -> torch.Tensor:
        y = f(x)
        self.seen[key] = (x, y)
        return y


class _DeepLiftOperators(Operators):
    """The input pass: each step's derivative replaced by its DeepLIFT multiplier against the
    reference values the :class:`_Recorder` kept."""

    def __init__(self, seen: dict[Any, tuple[torch.Tensor, ...]]) -> None:
        self.seen = seen

    def activation(self, f: Function, x: torch.Tensor, key: Any) -> torch.Tensor:
        return _Rescale.apply(f, x, *self.seen[key])

    def maxpool(self, x: torch.Tensor, pool: MaxPool, key: Any) -> torch.Tensor:
        return _RescaleMaxPool.apply(x, self.seen[key][0], pool)

    def product(self, op: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], a: torch.Tensor, b: torch.Tensor,
                key: Any) -> torch.Tensor:
        return _Product.apply(op, a, b, *self.seen[key])

    def joint(self, f: Function, x: torch.Tensor, key: Any) -> torch.Tensor:
        return _Joint.apply(f, x, *self.seen[key])


class DeepLift(Method):
    name = "deeplift"
    box = "white"
    kind = "additive"
    summary = "DeepLIFT rescale rule: contributions of x - baseline (Shrikumar et al. 2017)"
    scope = "local"
    requires = ("a network the relevance engine reads (layers, activations, pooling, BatchNorm, additions, "
                "concatenation, products, LayerNorm, attention)",)

    @dataclasses.dataclass(frozen=True)
    class Params:
        baseline: object = baseline("black", "reference input: a perturbation name (black, white, mean, blur, "
                                             "uniform-noise, ...), a number or a tensor")
        batch_size: int = batch_size(64, "samples per forward/backward pass")

    def check_model(self, model: Model) -> None:
        super().check_model(model)
        Network(model, self.name, fold=False)  # refuses a layer or operation without a rule, names it

    def attribute(self, model: Model, x: torch.Tensor, targets: torch.Tensor, ctx: Context
                  ) -> tuple[torch.Tensor, dict[str, Any]]:
        baseline = reference(self.params.baseline, x, model.input_range, ctx.generator).expand_as(x)
        net = Network(model, self.name, fold=False)
        out = []
        for sl in ctx.batches(x.shape[0], self.params.batch_size):
            xs, bs, ts = x[sl], baseline[sl], targets[sl]
            recorder = _Recorder()
            with torch.no_grad():
                net.forward(net.model.preprocessing(bs), recorder)
            with torch.enable_grad():
                leaf = xs.detach().requires_grad_(True)
                _env, logits = net.forward(net.model.preprocessing(leaf), _DeepLiftOperators(recorder.seen))
                selected = logits.reshape(xs.shape[0], -1).gather(1, ts.view(-1, 1)).sum()
                (grad,) = torch.autograd.grad(selected, leaf)
            count(forward=2 * xs.shape[0], backward=xs.shape[0])  # the engine runs the network, not model.forward
            out.append((xs - bs) * grad)
        return torch.cat(out), {"baseline": baseline}


@hookimpl
def salfw_register_methods(register):
    register(DeepLift)
