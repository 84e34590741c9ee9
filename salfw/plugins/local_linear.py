"""The local linear plane of a piecewise-linear network (the GeoSal thesis's ``find_plane``).

A network built only from ReLU (or leaky ReLU), max and average pooling, linear
and convolution layers, flattening, dropout and batch normalisation in eval mode,
and salfw's affine preprocessing is a continuous piecewise-linear function: the
input space is cut into convex *activation regions* (one per pattern of active
ReLUs and pooling winners) and inside the region of a point ``x`` the network is
exactly affine::

    y = x · W + B        (W: one row per output, shaped like the input; B: one bias per output)

``W`` is the Jacobian ``∂y/∂x`` (constant inside the region) and, because the
function is affine there, ``B = y(x) − W·x`` is exact, not a first-order
approximation. :func:`local_plane` computes both for a whole batch with one
forward pass and one backward pass that carries every requested output row as a
batch of vector-Jacobian products (autograd's ``is_grads_batched``; for one
output or a pair difference P − Q it is a plain backward pass). The same holds
between any two layers: ``between=(a, b)`` gives the affine map from layer
``a``'s output to layer ``b``'s.

As an explanation (``local-linear``) the target class's row of ``W`` is returned:
the weight-based saliency of Simonyan, Vedaldi & Zisserman (2014, "Deep inside
convolutional networks", section 3.1, which reads the class score as
``w·x + b`` around the image), here exact in the activation region rather than a
Taylor approximation; the region's bias ``B`` is in ``meta["bias"]``. Local
explanation (the region's plane is a model of the network around ``x`` only).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from salfw.core.context import Context
from salfw.core.contracts import Method
from salfw.core.hookspecs import hookimpl
from salfw.core.models import Model, WhiteBox
from salfw.core.params import batch_size
from salfw.sdk.geometry import check_piecewise_linear, local_plane


class LocalLinear(Method):
    name = "local-linear"
    box = "white"
    kind = "additive"
    summary = ("the target's row of the exact local plane y = x·W + B of a ReLU network "
               "(GeoSal thesis; weight saliency of Simonyan et al. 2014)")
    scope = "local"
    requires = ("piecewise linear (ReLU, pooling, linear, conv)",)

    @dataclasses.dataclass(frozen=True)
    class Params:
        batch_size: int = batch_size(256, "samples per forward/backward pass")

    def check_model(self, model: Model) -> None:
        super().check_model(model)
        assert isinstance(model, WhiteBox)  # refused above otherwise
        check_piecewise_linear(model.module, self.name, eval_mode=False)

    def attribute(self, model: Model, x: torch.Tensor, targets: torch.Tensor, ctx: Context
                  ) -> torch.Tensor | tuple[torch.Tensor, dict[str, Any]]:
        assert isinstance(model, WhiteBox)  # check_model refused any other model
        w, b = local_plane(model, x, outputs=targets, batch_size=self.params.batch_size)
        return w, {"bias": b}


@hookimpl
def salfw_register_methods(register: Any) -> None:
    register(LocalLinear)
