"""Guided backpropagation and deconvnet: gradients with a modified ReLU backward.

Both backpropagate the target logit ``y_c`` (before softmax) to the input
like the plain gradient, except through every ReLU, whose backward rule is
replaced (``g`` is the gradient arriving at the ReLU's output, ``x`` its input):

* ``deconvnet`` (Zeiler & Fergus 2014, "Visualizing and understanding
  convolutional networks"): ``relu(g)``; the forward sign of ``x`` is ignored,
  as a deconvnet's "unpooling + rectification" reconstruction does.
* ``guided-backprop`` (Springenberg, Dosovitskiy, Brox & Riedmiller 2015,
  "Striving for simplicity: the all convolutional net"): ``relu(g) * [x > 0]``,
  the gradient masked by both the forward and the backward sign.

These are exactly Captum's ``Deconvolution`` and ``GuidedBackprop`` (which
return ``relu(grad_output)`` and ``relu(grad_input)`` from ReLU backward
hooks), so the two agree; max-pooling switches come from the ordinary max-pool
gradient in both. Local explanations.

Only ``nn.ReLU`` *modules* can be found: a ReLU written as ``F.relu`` or
``torch.relu`` inside ``forward`` is invisible to module hooks and keeps its
ordinary gradient (Captum has the same limitation). A network with no
``nn.ReLU`` module at all is refused with a :class:`ModelRequirementError`.

How: a forward pre-hook on each ReLU keeps its input ``x`` (passing a clone on,
so that ``ReLU(inplace=True)`` cannot overwrite it), and a forward hook
replaces the module's output by ``_ModifiedReLU.apply(x)``, whose forward is
``relu(x)`` and whose backward is the rule above. Hooks are removed in a
``finally`` block even when the pass raises.
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch
from torch import nn

from salfw.core.contracts import Method
from salfw.core.errors import ModelRequirementError
from salfw.core.hookspecs import hookimpl
from salfw.core.models import WhiteBox
from salfw.core.params import param
from salfw.plugins._layers import model_label
from salfw.plugins.gradient import target_gradient


class _GuidedReLU(torch.autograd.Function):
    """relu forward; backward ``relu(g) * [x > 0]`` (Springenberg et al. 2015)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x > 0)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        (positive,) = ctx.saved_tensors
        return (grad * positive).clamp(min=0)


class _DeconvReLU(torch.autograd.Function):
    """relu forward; backward ``relu(g)`` (Zeiler & Fergus 2014)."""

    @staticmethod
    def forward(ctx, x):
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        return grad.clamp(min=0)


RULES = {"guided": _GuidedReLU, "deconvnet": _DeconvReLU}


def relu_modules(model: WhiteBox) -> list[nn.Module]:
    """The ``nn.ReLU`` modules of the user's network, or a ModelRequirementError naming it."""
    relus = [m for m in model.module.modules() if isinstance(m, nn.ReLU)]
    if not relus:
        raise ModelRequirementError(
            f"{model_label(model)} has no nn.ReLU module; guided backprop and deconvnet override the "
            f"backward of nn.ReLU modules (a ReLU called as F.relu/torch.relu in forward() cannot be hooked: "
            f"define it as an nn.ReLU module)")
    return relus


@contextlib.contextmanager
def modified_relus(model: WhiteBox, rule: str):
    """While active, every ``nn.ReLU`` of ``model`` backpropagates with ``rule`` ("guided" or "deconvnet")."""
    function = RULES[rule]
    inputs: dict[nn.Module, torch.Tensor] = {}

    def pre_hook(module, args):
        inputs[module] = args[0]
        return (args[0].clone(),) + tuple(args[1:]) if module.inplace else None

    def hook(module, args, output):
        return function.apply(inputs.pop(module))

    handles = []
    try:
        for relu in relu_modules(model):
            handles.append(relu.register_forward_pre_hook(pre_hook))
            handles.append(relu.register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


class _ModifiedReluMethod(Method):
    box = "white"
    kind = "additive"
    scope = "local"
    requires = ("relu",)
    rule: str

    @dataclasses.dataclass(frozen=True)
    class Params:
        batch_size: int = param(128, "samples per forward/backward pass", low=1)

    def check_model(self, model):
        super().check_model(model)
        relu_modules(model)

    def attribute(self, model, x, targets, seed):
        with modified_relus(model, self.rule):
            return target_gradient(model, x, targets, self.params.batch_size)


class GuidedBackprop(_ModifiedReluMethod):
    name = "guided-backprop"
    summary = "gradient with ReLU backward relu(g)*[x>0] (Springenberg et al. 2015, guided backpropagation)"
    rule = "guided"


class Deconvnet(_ModifiedReluMethod):
    name = "deconvnet"
    summary = "gradient with ReLU backward relu(g), the deconvnet reconstruction (Zeiler & Fergus 2014)"
    rule = "deconvnet"


@hookimpl
def salfw_register_methods(register):
    register(GuidedBackprop)
    register(Deconvnet)
