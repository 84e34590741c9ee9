"""Backpropagation building blocks for gradient-family methods.

* :func:`target_gradient`: ``∂ y_target / ∂ x`` per sample in one pass (Simonyan
  et al. 2014); the family's one backward helper (gradient, input × gradient,
  integrated and expected gradients, guided backprop and deconvnet). Like every
  toolkit helper it handles the batch it is given; methods chunk with
  :meth:`salfw.core.context.Context.batches`.
* Rectifier overrides: :func:`guided_relus` (Springenberg et al. 2015, guided
  backpropagation: ReLU backward ``relu(g) * [x > 0]``) and
  :func:`deconvnet_relus` (Zeiler & Fergus 2014: ReLU backward ``relu(g)``),
  context managers that change every ``nn.ReLU`` of a :class:`WhiteBox` while
  active and restore it on exit. :data:`RECTIFIER_RULES` names them. The
  change applies to the forward passes of the calling thread only
  (:func:`~salfw.core.guard.calling_thread_only`): another thread explaining
  with the same model at the same time sees the plain ReLU.
* Layer capture lives in :mod:`salfw.sdk.layers`.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from salfw.core.errors import ModelRequirementError
from salfw.core.guard import calling_thread_only
from salfw.core.models import WhiteBox
from salfw.sdk.layers import model_label


def target_gradient(model: WhiteBox, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``∂ y_target / ∂ x`` for each sample of ``x``, in one forward and one backward pass: the
    selected logits' sum over the batch is differentiated once (samples are independent).

    Batching is the caller's: ``torch.cat([target_gradient(model, x[sl], targets[sl]) for sl in
    ctx.batches(len(x), batch_size)])``."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        out = model.forward(x)
        selected = out.gather(1, targets[:, None].to(out.device)).sum()
        (grad,) = torch.autograd.grad(selected, x)
    return grad


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
    relus: list[nn.Module] = [m for m in model.module.modules() if isinstance(m, nn.ReLU)]
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
            handles.append(relu.register_forward_hook(calling_thread_only(hook)))
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
            handles.append(relu.register_forward_pre_hook(calling_thread_only(pre_hook)))
            handles.append(relu.register_forward_hook(calling_thread_only(hook)))
        yield
    finally:
        for handle in handles:
            handle.remove()


RECTIFIER_RULES = {"guided": guided_relus, "deconvnet": deconvnet_relus}


