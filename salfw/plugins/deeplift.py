"""DeepLIFT with the rescale rule (Shrikumar, Greenside & Kundaje 2017, "Learning important
features through propagating activation differences").

Each input's contribution is ``(x − x̄) · m`` where the multiplier ``m`` is a
gradient in which every nonlinearity's local derivative is replaced by its
difference quotient against the reference pass: for ReLU
``(y − ȳ) / (x − x̄)``, falling back to the gradient where ``|x − x̄| < 1e-10``;
linear layers (Linear, Conv2d, pooling averages, BatchNorm in eval mode,
additions) keep their gradient. So the contributions sum to
``f(x) − f(x̄)`` (summation-to-delta). MaxPool2d follows Captum's ``DeepLift``:
the output difference is split between the input's and the reference's winners
and divided by the input difference. As in Captum the input and the reference go
through the network as one batch ``[x; x̄]``: one forward pass saves the
activations of both halves and one backward pass applies the modified
derivatives, which replace the ReLU and MaxPool2d modules while the relevance
engine's graph of the module is run (:class:`salfw.sdk.propagation.engine.Network`,
BatchNorm kept as it is); the user's module is neither copied nor changed. A
functional ``F.relu`` is not a module to replace and is refused.

The reference (baseline) is resolved by :func:`salfw.sdk.reference.reference`, as
for integrated gradients: a perturbation name (``black`` -- the default, the
paper's all-zero reference for [0, 1] images -- ``white``, ``mean``, ``blur``,
``uniform-noise``, ...) filling the whole input (random fills drawn from the
call's CPU generator), a number, or a tensor shaped like one sample or like the
batch. Local explanation.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F

from salfw.core.context import Context, count
from salfw.core.contracts import Method
from salfw.core.errors import ModelRequirementError
from salfw.core.hookspecs import hookimpl
from salfw.core.models import Model
from salfw.core.params import baseline, batch_size
from salfw.sdk.propagation import Network
from salfw.sdk.reference import reference

EPS = 1e-10  # Captum's threshold for |x − x̄| below which the gradient is used


def _difference(t: torch.Tensor) -> torch.Tensor:
    """``[a; b] -> a − b``: the difference to the reference (one half's size, shared by both halves)."""
    a, b = t.chunk(2)
    return a - b


def _pairs(t: torch.Tensor) -> torch.Tensor:
    """``[a; b]`` viewed as (2, N, ...), so half-sized tensors broadcast over both halves."""
    return t.reshape(2, t.shape[0] // 2, *t.shape[1:])


class _RescaleReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        y = x.clamp(min=0)
        ctx.save_for_backward(x, y)
        return y

    @staticmethod
    def backward(ctx, grad):
        x, y = ctx.saved_tensors
        dx, dy = _difference(x), _difference(y)
        small = dx.abs() < EPS
        g = _pairs(grad)
        rescaled = g * dy / torch.where(small, 1.0, dx)
        return torch.where(small, g * (_pairs(x) > 0).to(grad), rescaled).reshape(grad.shape)


class _RescaleMaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, module):
        y, indices = F.max_pool2d(x, module.kernel_size, module.stride, module.padding, module.dilation,
                                  module.ceil_mode, return_indices=True)
        ctx.module = module
        ctx.save_for_backward(x, y, indices)
        return y

    @staticmethod
    def backward(ctx, grad):
        x, y, indices = ctx.saved_tensors
        m = ctx.module
        pair = torch.nn.modules.utils._pair
        plain = torch.ops.aten.max_pool2d_with_indices_backward(  # the ordinary max-pool gradient
            grad, x, pair(m.kernel_size), pair(m.stride if m.stride is not None else m.kernel_size),
            pair(m.padding), pair(m.dilation), m.ceil_mode, indices)
        out, ref = y.chunk(2)
        top = torch.max(out, ref)
        g, weighted = _pairs(grad), torch.empty_like(grad)  # grad × [top − ref; out − top]
        torch.mul(g[0], top - ref, out=_pairs(weighted)[0])
        torch.mul(g[1], out - top, out=_pairs(weighted)[1])
        a, b = F.max_unpool2d(weighted, indices, m.kernel_size, m.stride, m.padding,
                              output_size=x.shape[-2:]).chunk(2)
        dx = _difference(x)
        small = dx.abs() < EPS
        return torch.where(small, _pairs(plain), (a + b) / torch.where(small, 1.0, dx)).reshape(x.shape), None


def _rescale_maxpool(x, module):
    return _RescaleMaxPool.apply(x, module)


class DeepLift(Method):
    name = "deeplift"
    box = "white"
    kind = "additive"
    summary = "DeepLIFT rescale rule: contributions of x - baseline (Shrikumar et al. 2017)"
    scope = "local"
    requires = ("ReLU as nn.ReLU modules", "Linear/Conv2d/pooling/BatchNorm layers and additions")

    @dataclasses.dataclass(frozen=True)
    class Params:
        baseline: object = baseline("black", "reference input: a perturbation name (black, white, mean, blur, "
                                             "uniform-noise, ...), a number or a tensor")
        batch_size: int = batch_size(64, "samples per forward/backward pass")

    def check_model(self, model: Model) -> None:
        super().check_model(model)
        net = Network(model, self.name, fold=False)  # refuses unsupported layers, names them
        for node in net.nodes:
            if node.op in ("call_function", "call_method") and getattr(node.target, "__name__", node.target) == "relu":
                raise ModelRequirementError(
                    f"'deeplift' replaces the derivative of nn.ReLU modules; the functional relu in node "
                    f"'{node.name}' of {type(net.model.module).__name__}.forward cannot be replaced (use nn.ReLU)")

    def attribute(self, model: Model, x: torch.Tensor, targets: torch.Tensor, ctx: Context
                  ) -> tuple[torch.Tensor, dict[str, Any]]:
        baseline = reference(self.params.baseline, x, model.input_range, ctx.generator).expand_as(x)
        net = Network(model, self.name, fold=False)
        out = []
        for sl in ctx.batches(x.shape[0], self.params.batch_size):
            xs, bs, ts = x[sl], baseline[sl], targets[sl]
            n = xs.shape[0]
            with torch.enable_grad():
                both = torch.cat([xs, bs]).detach().requires_grad_(True)
                _env, logits = net.forward(net.model.preprocessing(both), relu=_RescaleReLU.apply,
                                           maxpool=_rescale_maxpool)
                logits = logits.reshape(2 * n, -1)
                selected = logits.gather(1, torch.cat([ts, ts]).view(-1, 1)).sum()
                (grad,) = torch.autograd.grad(selected, both)
            count(forward=2 * n, backward=2 * n)  # the engine runs the network, not model.forward
            out.append((xs - bs) * grad[:n])
        return torch.cat(out), {"baseline": baseline}


@hookimpl
def salfw_register_methods(register):
    register(DeepLift)
