"""The random attribution map: i.i.d. uniform scores in [0, 1), seeded.

Evaluation papers (Samek et al. 2016's random-order flipping, Adebayo et al.
2018's sanity checks) compare every method against a random map; a method
that does not beat it on a metric explains nothing that metric can see. It is
also the smallest complete salfw plugin, a template for your own.
"""

import dataclasses

import torch

import salfw
from salfw.core.context import Context
from salfw.core.contracts import Method
from salfw.core.models import Model
from salfw.core.params import param


class RandomMap(Method):
    name = "random-map"
    box = "black"           # needs nothing of the model: runs on any BlackBox or WhiteBox
    kind = "additive"
    summary = "i.i.d. uniform random attributions, the baseline every method should beat"
    random = True

    @dataclasses.dataclass(frozen=True)
    class Params:
        per_channel: bool = param(False, "one value per channel instead of one per pixel")

    def attribute(self, model: Model, x: torch.Tensor, targets: torch.Tensor, ctx: Context) -> torch.Tensor:
        shape = x.shape[1:] if (self.params.per_channel or x.dim() == 2) else (1, *x.shape[2:])
        # drawn once per sample shape, so a batch equals its samples one by one
        noise = torch.rand(shape, generator=ctx.generator, dtype=x.dtype).to(x.device)
        return noise.expand(x.shape[0], *shape).clone()


@salfw.hookimpl
def salfw_register_methods(register):
    register(RandomMap)
