"""Occlusion (Zeiler & Fergus 2014, "Visualizing and understanding convolutional
networks"): slide a window over the input, "delete" what it covers with a
perturbation, and record how much the target's output drops:

    A(x)_i = mean over windows W containing i of [ f_c(x) - f_c(x with W perturbed) ]

as Captum's ``Occlusion`` computes it (each pixel's sum over the windows that
cover it divided by their count). The window
covers all channels. Windows start at 0 and step by ``stride``; as in Captum there are
``ceil((size - window) / stride) + 1`` positions per axis, the last one cut at the
border. A stride larger than the window would leave the pixels between windows with no
attribution (Captum divides by a zero count and returns NaN): that is refused with a
:class:`~salfw.core.errors.ParameterError` naming window and stride, so every pixel is
covered. ``f_c`` is the target's logit (the model's raw
score) by default, as in Captum; ``output="probabilities"`` uses the softmax
probability, as in the paper's figures. The default fill is ``black`` (the low end
of the input range; Captum's default baseline 0 is black for [0, 1] images; the
paper uses a grey square: ``perturbation={"name": "constant", "value": 0.5}``, on
the CLI ``--set perturbation=constant --set perturbation.value=0.5``).

Vectors: the window slides over the features (its last entry gives the width,
likewise for ``stride``). All window positions of a sample are stacked and
evaluated in chunks of ``batch_size``; a random fill is drawn from a fresh CPU
generator per sample (seeded with the seed), so a batch and its samples one by one
agree. Local explanation.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from salfw.core.api import make_perturbation
from salfw.core.context import Context
from salfw.core.contracts import Method
from salfw.core.errors import ParameterError
from salfw.core.hookspecs import hookimpl
from salfw.core.models import Model
from salfw.core.params import Component, batch_size, component, output, param
from salfw.sdk.hiding import target_values, window_masks


class Occlusion(Method):
    name = "occlusion"
    box = "black"
    kind = "additive"
    summary = "drop of the target score when a sliding window is occluded (Zeiler & Fergus 2014)"
    scope = "local"
    random = False
    test_params = {"window": (3, 3), "stride": (2, 2)}

    @dataclasses.dataclass(frozen=True)
    class Params:
        window: tuple[int, ...] = param((4, 4), "window (height, width) for images, one int for a square; "
                                        "vectors use the last entry as the feature window", low=1)
        stride: tuple[int, ...] = param((2, 2), "step between windows (rows, cols); vectors use the last entry",
                                        low=1)
        perturbation: Component = component("black", "perturbation", "how the window is deleted: a registered "
                                            "perturbation (black = Captum's baseline 0 on [0, 1] images)")
        output: str = output("logits", "explain the logits (Captum) or the softmax probabilities")
        batch_size: int = batch_size(256, "perturbed inputs per forward pass")

    def attribute(self, model: Model, x: torch.Tensor, targets: torch.Tensor, ctx: Context
                  ) -> torch.Tensor | tuple[torch.Tensor, dict[str, Any]]:
        p = self.params
        perturbation = make_perturbation(p.perturbation)
        masks = window_masks(tuple(x.shape[1:]), p.window, p.stride, x.device, x.dtype)
        coverage = masks.sum(0)
        uncovered = int((coverage == 0).sum())
        if uncovered:
            raise ParameterError(f"occlusion's stride {p.stride} is larger than its window {p.window}: "
                                 f"{uncovered} of the {coverage.numel()} input positions would lie between "
                                 f"windows, with no attribution; use a stride no larger than the window")
        out = torch.zeros_like(x)
        for n in range(x.shape[0]):  # each sample: all its windows are batched
            generator = ctx.fresh_generator()  # the same fills alone or in a batch
            target = targets[n:n + 1]
            base = target_values(model, x[n:n + 1], target, p.output, p.batch_size)[0, 0]
            total = torch.zeros_like(x[0])
            for rows in ctx.batches(masks.shape[0], unit="window"):
                keep = 1 - masks[rows]
                perturbed = perturbation.apply(x[n:n + 1].expand(keep.shape[0], *x.shape[1:]), keep,
                                               model.input_range, generator)
                drop = base - target_values(model, perturbed, target, p.output, p.batch_size)[:, 0]
                total += (drop.to(x.dtype).view(-1, *[1] * (x.dim() - 1)) * masks[rows]).sum(0)
            out[n] = total / coverage
        return out


@hookimpl
def salfw_register_methods(register: Any) -> None:
    register(Occlusion)
