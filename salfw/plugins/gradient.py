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

:func:`target_gradient` is the helper the whole family (SmoothGrad, integrated
and expected gradients) runs its batched backward passes through.
"""

from __future__ import annotations

import dataclasses

import torch

from salfw.core.contracts import Method
from salfw.core.hookspecs import hookimpl
from salfw.core.params import param
from salfw.sdk.backprop import target_gradient


class Gradient(Method):
    name = "gradient"
    box = "white"
    kind = "additive"
    summary = "gradient of the target logit w.r.t. the input (Simonyan et al. 2014)"
    scope = "local"

    @dataclasses.dataclass(frozen=True)
    class Params:
        absolute: bool = param(False, "return |gradient| as in the paper's saliency maps")
        batch_size: int = param(128, "samples per forward/backward pass", low=1)

    def attribute(self, model, x, targets, ctx):
        seed = ctx.seed
        grad = target_gradient(model, x, targets, self.params.batch_size)
        return grad.abs() if self.params.absolute else grad


class InputXGradient(Method):
    name = "input-x-gradient"
    box = "white"
    kind = "additive"
    summary = "input times the gradient of the target logit (Shrikumar et al. 2016)"
    scope = "local"

    @dataclasses.dataclass(frozen=True)
    class Params:
        batch_size: int = param(128, "samples per forward/backward pass", low=1)

    def attribute(self, model, x, targets, ctx):
        seed = ctx.seed
        return x * target_gradient(model, x, targets, self.params.batch_size)


@hookimpl
def salfw_register_methods(register):
    register(Gradient)
    register(InputXGradient)
