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

How: guided backprop puts a tensor hook ``g -> relu(g)`` on each ReLU's
output and lets the ReLU's own backward apply ``[x > 0]``; deconvnet replaces
each ReLU's output by a function whose backward is ``relu(g)`` alone (see
:func:`guided_relus`, :func:`deconvnet_relus`). Both work with
``ReLU(inplace=True)`` and with a ReLU module called several times. Hooks are
removed in a ``finally`` block even when the pass raises.
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


class _DeconvReLU(torch.autograd.Function):
    """relu forward; backward ``relu(g)`` (Zeiler & Fergus 2014)."""

    @staticmethod
    def forward(ctx, x):
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        return grad.clamp(min=0)


def relu_modules(model: WhiteBox) -> list[nn.Module]:
    """The ``nn.ReLU`` modules of the user's network, or a ModelRequirementError naming it."""
    relus = [m for m in model.module.modules() if isinstance(m, nn.ReLU)]
    if not relus:
        raise ModelRequirementError(
            f"{model_label(model)} has no nn.ReLU module; guided backprop and deconvnet override the "
            f"backward of nn.ReLU modules (a ReLU called as F.relu/torch.relu in forward() cannot be hooked: "
            f"define it as an nn.ReLU module)")
    return relus


class Switch:
    """Turns the guided rule on and off between backward passes over one forward graph."""

    on = True


@contextlib.contextmanager
def guided_relus(model: WhiteBox):
    """While active, every ``nn.ReLU`` of ``model`` backpropagates ``relu(g) * [x > 0]`` (guided backprop).

    A forward hook puts a tensor hook ``g -> relu(g)`` on each ReLU output; the
    ReLU's own backward then applies the forward mask ``[x > 0]``. The rule
    applies while the yielded :class:`Switch` is on (Guided Grad-CAM turns it
    off for its Grad-CAM backward over the same forward pass).
    """
    switch = Switch()

    def rectify(grad):
        return grad.clamp(min=0) if switch.on else None

    def hook(module, args, output):
        if output.requires_grad:
            output.register_hook(rectify)

    handles = []
    try:
        for relu in relu_modules(model):
            handles.append(relu.register_forward_hook(hook))
        yield switch
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def deconvnet_relus(model: WhiteBox):
    """While active, every ``nn.ReLU`` of ``model`` backpropagates ``relu(g)`` (deconvnet).

    A forward pre-hook keeps the ReLU's input ``x`` (passing a clone on to an
    in-place ReLU, which would overwrite it), and a forward hook replaces the
    module's output by ``_DeconvReLU.apply(x)``, so the ReLU's own backward
    (and its forward mask) is bypassed.
    """
    inputs: dict[nn.Module, torch.Tensor] = {}

    def pre_hook(module, args):
        inputs[module] = args[0]
        return (args[0].clone(),) + tuple(args[1:]) if module.inplace else None

    def hook(module, args, output):
        return _DeconvReLU.apply(inputs.pop(module))

    handles = []
    try:
        for relu in relu_modules(model):
            handles.append(relu.register_forward_pre_hook(pre_hook))
            handles.append(relu.register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


RULES = {"guided": guided_relus, "deconvnet": deconvnet_relus}


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
        with RULES[self.rule](model):
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
