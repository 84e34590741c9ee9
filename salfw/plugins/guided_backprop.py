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

import dataclasses

import torch

from salfw.core.context import Context
from salfw.core.contracts import Method
from salfw.core.hookspecs import hookimpl
from salfw.core.models import Model, WhiteBox
from salfw.core.params import batch_size
from salfw.sdk.backprop import RECTIFIER_RULES, relu_modules, target_gradient


class _ModifiedReluMethod(Method):
    box = "white"
    kind = "additive"
    scope = "local"
    requires = ("relu",)
    rule: str

    @dataclasses.dataclass(frozen=True)
    class Params:
        batch_size: int = batch_size(128, "samples per forward/backward pass")

    def check_model(self, model: Model) -> None:
        super().check_model(model)
        assert isinstance(model, WhiteBox)  # the white-box check above refused any other model
        relu_modules(model)

    def attribute(self, model: Model, x: torch.Tensor, targets: torch.Tensor, ctx: Context) -> torch.Tensor:
        assert isinstance(model, WhiteBox)  # check_model refused any other model
        with RECTIFIER_RULES[self.rule](model):
            return torch.cat([target_gradient(model, x[sl], targets[sl])
                              for sl in ctx.batches(x.shape[0], self.params.batch_size)])


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
