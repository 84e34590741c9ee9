"""Backpropagation building blocks for gradient-family methods.

* :func:`target_gradient`: ``∂ y_target / ∂ x`` per sample in one pass (Simonyan
  et al. 2014); the family's one backward helper (gradient, input × gradient,
  integrated and expected gradients, guided backprop and deconvnet). Like every
  toolkit helper it handles the batch it is given; methods chunk with
  :meth:`salfw.core.context.Context.batches`.
* Rectifier overrides: :func:`guided_relus` (Springenberg et al. 2015, guided
  backpropagation) and :func:`deconvnet_relus` (Zeiler & Fergus 2014), context
  managers that change the backward pass of every rectifier the network calls
  while active: ``nn.ReLU``/``nn.ReLU6``/``nn.LeakyReLU`` modules and the
  functional calls (``F.relu``, ``torch.relu``, ``x.relu_()``, ``F.relu6``,
  ``F.hardtanh(x, 0, M)``, ``F.leaky_relu``) alike, each call separately (a
  module called twice is changed at both calls). :data:`RECTIFIER_RULES`
  names them. They act through a :class:`torch.overrides.TorchFunctionMode`,
  which PyTorch keeps per thread: only the forward passes of the calling
  thread are changed, and another thread explaining with the same model at the
  same time sees the plain rectifiers (as :func:`~salfw.core.guard.calling_thread_only`
  gives module hooks).
* Layer capture lives in :mod:`salfw.sdk.layers`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from salfw.core.errors import ModelRequirementError
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


@dataclass(frozen=True)
class Rectifier:
    """One rectifier call: ``high`` the clamp of ReLU6-like rectifiers (``F.hardtanh(x, 0, high)``),
    ``slope`` a leaky ReLU's negative slope (0 for ReLU)."""

    high: float | None = None
    slope: float = 0.0


def _setting(args: tuple, kwargs: dict, position: int, name: str, default: float) -> float:
    """A rectifier call's setting, given by position (after the input) or by keyword."""
    return float(args[position] if len(args) > position else kwargs.get(name, default))


def _relu(args: tuple, kwargs: dict) -> Rectifier | None:
    return Rectifier()


def _relu6(args: tuple, kwargs: dict) -> Rectifier | None:
    return Rectifier(high=6.0)


def _hardtanh(args: tuple, kwargs: dict) -> Rectifier | None:
    low, high = _setting(args, kwargs, 1, "min_val", -1.0), _setting(args, kwargs, 2, "max_val", 1.0)
    return Rectifier(high=high) if low == 0 and high > 0 else None  # only a clamped ReLU rectifies


def _leaky(args: tuple, kwargs: dict) -> Rectifier | None:
    slope = _setting(args, kwargs, 1, "negative_slope", 0.01)
    return Rectifier(slope=slope) if 0 <= slope < 1 else None


#: Every function that computes a rectifier, with how to read its settings (None: not a rectifier).
_RECTIFIERS: dict[Callable, Callable[[tuple, dict], Rectifier | None]] = {
    F.relu: _relu, torch.relu: _relu, torch.relu_: _relu, torch.Tensor.relu: _relu, torch.Tensor.relu_: _relu,
    F.relu6: _relu6, torch._C._nn.relu6: _relu6, torch._C._nn.relu6_: _relu6,
    F.hardtanh: _hardtanh, torch._C._nn.hardtanh: _hardtanh, torch._C._nn.hardtanh_: _hardtanh,
    F.leaky_relu: _leaky, torch._C._nn.leaky_relu: _leaky, torch._C._nn.leaky_relu_: _leaky,
}

#: Activation modules that are not rectifiers (smooth, gating or learnt ones): named when a network without
#: rectifiers is refused.
OTHER_ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.SiLU, nn.GELU, nn.Sigmoid, nn.Tanh, nn.ELU, nn.SELU, nn.CELU, nn.Hardswish, nn.Hardsigmoid, nn.Mish,
    nn.Softplus, nn.PReLU, nn.RReLU, nn.LogSigmoid, nn.Softsign, nn.Tanhshrink)


class Switch:
    """Turns the modified rule on and off between backward passes over one forward graph.

    ``rectifiers`` counts the rectifier calls changed so far (zero after a forward pass: the
    network has none)."""

    on = True
    rectifiers = 0


class _ModifiedRectifier(torch.autograd.Function):
    """The user's rectifier call in the forward pass; the guided or deconvnet rule in the backward.

    With ``g`` the gradient at the output and ``f'`` the rectifier's own derivative (1 where it
    passes its input, 0 where it clips, the slope where a leaky ReLU scales), the backward is

    * guided (Springenberg et al. 2015): ``relu(g) · f'(x)``: the gradient masked by both the
      backward and the forward sign;
    * deconvnet (Zeiler & Fergus 2014): the rectifier applied to ``g`` in place of ``f'(x)``,
      ``relu(g)`` (``leaky_relu(g)`` for a leaky ReLU): the forward pass is ignored, the
      ReLU6 clip at 6 included;
    * the ordinary ``g · f'(x)`` while the switch is off (Guided Grad-CAM's Grad-CAM pass).

    ``f'`` is read from the output (``y > 0`` exactly where ``x > 0``, ``0 < y < high`` where
    ``0 < x < high``), so in-place calls (``ReLU(inplace=True)``, ``x.relu_()``) stay in place.
    """

    @staticmethod
    def forward(ctx, x, call, args, kwargs, spec, rule, switch):
        out = call(*args, **kwargs)
        if out is x:  # an in-place call (``inplace=True``, ``relu_``), however it was asked for
            ctx.mark_dirty(x)
        ctx.save_for_backward(out)
        ctx.spec, ctx.rule, ctx.switch = spec, rule, switch
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        spec, rule = ctx.spec, ctx.rule if ctx.switch.on else "plain"
        if rule == "deconvnet":
            return (torch.ops.aten.leaky_relu(grad, spec.slope) if spec.slope else grad.clamp(min=0),
                    None, None, None, None, None, None)
        g = grad.clamp(min=0) if rule == "guided" else grad
        # the rectifier's own backward kernel, reading f' from the output (as PyTorch's ReLU backward does)
        if spec.high is not None:
            g = torch.ops.aten.hardtanh_backward(g, out, 0.0, spec.high)
        elif spec.slope:
            g = torch.ops.aten.leaky_relu_backward(g, out, spec.slope, True)
        else:
            g = torch.ops.aten.threshold_backward(g, out, 0)
        return g, None, None, None, None, None, None


class _RectifierMode(TorchFunctionMode):
    """Replaces every rectifier call of the active thread by :class:`_ModifiedRectifier`."""

    def __init__(self, rule: str, switch: Switch):
        super().__init__()
        self.rule, self.switch = rule, switch

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        read = _RECTIFIERS.get(func)
        if read is None or not args or not isinstance(args[0], torch.Tensor):
            return func(*args, **kwargs)
        spec = read(args, kwargs)
        if spec is None:
            return func(*args, **kwargs)
        self.switch.rectifiers += 1
        if not (torch.is_grad_enabled() and args[0].requires_grad):
            return func(*args, **kwargs)
        return _ModifiedRectifier.apply(args[0], func, args, kwargs, spec, self.rule, self.switch)


def no_rectifier_error(model: WhiteBox) -> ModelRequirementError:
    """The refusal of guided backprop, deconvnet and Guided Grad-CAM on a network without rectifiers."""
    smooth = next(((name, type(m).__name__) for name, m in model.module.named_modules()
                   if isinstance(m, OTHER_ACTIVATIONS)), None)
    found = f"its first activation, layer {smooth[0]!r} ({smooth[1]}), is not one" if smooth else \
        "none was called in its forward pass" + (" (TorchScript hides its operations)"
                                                 if isinstance(model.module, torch.jit.ScriptModule) else "")
    return ModelRequirementError(
        f"{model_label(model)} has no rectifier (ReLU, ReLU6, LeakyReLU) to modify: {found}; guided "
        f"backprop and deconvnet change the backward pass of rectifiers, as their papers assume ReLU "
        f"networks (Springenberg et al. 2015, Zeiler & Fergus 2014). Use 'gradient' or "
        f"'integrated-gradients', which apply to any differentiable network, or 'grad-cam'")


@contextlib.contextmanager
def _rectifier_rule(model: WhiteBox, rule: str) -> Iterator[Switch]:
    switch = Switch()
    with _RectifierMode(rule, switch):
        yield switch
    if switch.rectifiers == 0:
        raise no_rectifier_error(model)


def guided_relus(model: WhiteBox) -> contextlib.AbstractContextManager[Switch]:
    """While active, every rectifier call of the calling thread backpropagates ``relu(g) · f'(x)``
    (guided backprop; ``[x > 0]`` for a ReLU).

    The rule applies while the yielded :class:`Switch` is on (Guided Grad-CAM turns it
    off for its Grad-CAM backward over the same forward pass). On leaving, a block whose
    forward passes called no rectifier raises :func:`no_rectifier_error`.
    """
    return _rectifier_rule(model, "guided")


def deconvnet_relus(model: WhiteBox) -> contextlib.AbstractContextManager[Switch]:
    """While active, every rectifier call of the calling thread backpropagates ``relu(g)``
    (deconvnet; ``leaky_relu(g)`` for a leaky ReLU), whatever its input was. Raises as
    :func:`guided_relus` on a network without rectifiers."""
    return _rectifier_rule(model, "deconvnet")


RECTIFIER_RULES: dict[str, Callable[[WhiteBox], contextlib.AbstractContextManager[Any]]] = {
    "guided": guided_relus, "deconvnet": deconvnet_relus}
