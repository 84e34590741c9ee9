"""Gradient saliency and input × gradient.

* ``gradient`` (Simonyan, Vedaldi & Zisserman 2014, "Deep inside convolutional
  networks"): the derivative of the target's score (the logit, before softmax, as
  in the paper) with respect to the input, ``∂y_c/∂x``. The paper shows the
  absolute value (``absolute=True``, max over channels there; here the channel
  sum of |grad| is left to ``heatmap()``); the signed gradient is Captum's
  ``Saliency`` with ``abs=False``. Local explanation.
* ``input-x-gradient`` (Shrikumar et al. 2016, "Not just a black box"; also the
  ε-LRP of a ReLU network without biases, Ancona et al. 2018): ``x ⊙ ∂y_c/∂x``
  in the pixel space the user sees (``input_range``), as Captum's
  ``InputXGradient``. Local explanation; for a linear model ``y = w·x + b`` it is
  ``w ⊙ x``, each feature's share of ``y − b``.

:func:`~salfw.sdk.backprop.target_gradient` is the toolkit's one backward pass,
run on chunks of ``batch_size`` samples (``ctx.batches``).
"""

from __future__ import annotations

import dataclasses

import torch

from salfw.core.context import Context
from salfw.core.contracts import Method
from salfw.core.hookspecs import hookimpl
from salfw.core.models import Model, WhiteBox
from salfw.core.params import batch_size, param
from salfw.sdk.backprop import target_gradient


def batched_gradient(model: WhiteBox, x: torch.Tensor, targets: torch.Tensor, ctx: Context,
                     size: int) -> torch.Tensor:
    """``∂y_c/∂x`` of the batch, in chunks of ``size`` samples."""
    return torch.cat([target_gradient(model, x[sl], targets[sl]) for sl in ctx.batches(x.shape[0], size)])


class Gradient(Method):
    name = "gradient"
    box = "white"
    kind = "additive"
    summary = "gradient of the target logit w.r.t. the input (Simonyan et al. 2014)"
    scope = "local"
    per_feature_ranges = True  # the range is never read

    @dataclasses.dataclass(frozen=True)
    class Params:
        absolute: bool = param(False, "return |gradient| as in the paper's saliency maps")
        batch_size: int = batch_size(128, "samples per forward/backward pass")

    def attribute(self, model: Model, x: torch.Tensor, targets: torch.Tensor, ctx: Context) -> torch.Tensor:
        assert isinstance(model, WhiteBox)  # check_model refused any other model
        grad = batched_gradient(model, x, targets, ctx, self.params.batch_size)
        return grad.abs() if self.params.absolute else grad


class InputXGradient(Method):
    name = "input-x-gradient"
    box = "white"
    kind = "additive"
    summary = "input times the gradient of the target logit (Shrikumar et al. 2016)"
    scope = "local"
    per_feature_ranges = True  # the range is never read

    @dataclasses.dataclass(frozen=True)
    class Params:
        batch_size: int = batch_size(128, "samples per forward/backward pass")

    def attribute(self, model: Model, x: torch.Tensor, targets: torch.Tensor, ctx: Context) -> torch.Tensor:
        assert isinstance(model, WhiteBox)  # check_model refused any other model
        return x * batched_gradient(model, x, targets, ctx, self.params.batch_size)


@hookimpl
def salfw_register_methods(register):
    register(Gradient)
    register(InputXGradient)
