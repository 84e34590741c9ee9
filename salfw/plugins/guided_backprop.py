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

Every rectifier the forward pass calls is changed, each call on its own:
``nn.ReLU`` modules (also one module called several times, and
``ReLU(inplace=True)``) and functional calls inside ``forward`` (``F.relu``,
``torch.relu``, ``x.relu_()``) alike. Beyond the papers' ReLU, the same rules
are applied to the other rectifiers, with ``f'`` the rectifier's own
derivative: guided backprop passes ``relu(g) · f'(x)``, deconvnet applies the
rectifier to ``g``:

* ReLU6 (``nn.ReLU6``, ``F.relu6``, ``F.hardtanh(x, 0, M)``; MobileNet):
  guided ``relu(g) · [0 < x < 6]``; deconvnet ``relu(g)`` (the forward clip at
  6 is part of the forward pass, which a deconvnet ignores);
* LeakyReLU with slope ``a`` in [0, 1): guided ``relu(g) · (1 if x > 0 else a)``;
  deconvnet ``leaky_relu(g, a)``.

Captum's ``GuidedBackprop``/``Deconvolution`` and Zennit's rules hook
``nn.ReLU`` modules only, so on a network of ``nn.ReLU`` modules (resnet18,
vgg11_bn) the results agree with Captum's; functional ReLUs (DenseNet's last
one) and ReLU6 are changed here and not there. Other activations (SiLU, GELU,
sigmoid, PReLU, ``torch.clamp``) keep their ordinary gradient. A network whose
forward pass calls no rectifier at all (EfficientNet's SiLU, a vision
transformer's GELU) is refused with a :class:`ModelRequirementError` naming
its first activation layer: both papers assume rectifiers, and ``gradient``
or ``integrated-gradients`` apply instead.

How: while the method runs, a :class:`torch.overrides.TorchFunctionMode` of
the calling thread replaces each rectifier call by an autograd function that
computes the same forward and the modified backward (see
:func:`~salfw.sdk.backprop.guided_relus`, :func:`~salfw.sdk.backprop.deconvnet_relus`);
no hook is put on the model, and the mode is left in a ``finally`` block even
when the pass raises.
"""

from __future__ import annotations

import dataclasses

import torch

from salfw.core.context import Context
from salfw.core.contracts import Method
from salfw.core.hookspecs import hookimpl
from salfw.core.models import Model, WhiteBox
from salfw.core.params import batch_size
from salfw.sdk.backprop import RECTIFIER_RULES, target_gradient


class _ModifiedReluMethod(Method):
    box = "white"
    kind = "additive"
    scope = "local"
    requires = ("rectifiers (ReLU, ReLU6 or LeakyReLU; modules or functional)",)
    rule: str

    @dataclasses.dataclass(frozen=True)
    class Params:
        batch_size: int = batch_size(128, "samples per forward/backward pass")

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
