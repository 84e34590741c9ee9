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

Window and stride scale with the input unless given: the window is a seventh of
each side (4 px on a 28 px digit, 32 px on a 224 px photo) and the stride half the
window, so an image costs 13 x 13 = 169 forward passes at any resolution (a fixed
4 px window with stride 2 costs 12,321 at 224 px). Zeiler & Fergus slide a grey
square over 224 px ImageNet images; Captum's ImageNet tutorial uses a 15 px window
with stride 8 (``window=15, stride=8``, 729 passes). The window and stride used are
in ``meta``.

Vectors: the window slides over the features (its last entry gives the width,
likewise for ``stride``; by default a seventh of the features, at least 1). Each
sample's window masks are built and evaluated ``batch_size`` at a time (by default as
many as fit in ``memory_gib`` GiB on a white box, :func:`salfw.sdk.memory.forward_chunk`;
256 on a black box), never all at
once, so memory stays bounded at any resolution; a random fill is drawn from a fresh
CPU generator per sample (seeded with the seed), so a batch and its samples one by one
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
from salfw.sdk.hiding import Windows, scaled_window, target_values
from salfw.sdk.memory import forward_chunk

#: Perturbed inputs per forward pass on a black box, whose memory cannot be measured.
BLACK_BOX_BATCH = 256

#: The default window's side as a fraction of the input's: 4 px on a 28 px digit (where 4 px with
#: stride 2 was the default before it scaled), 32 px on a 224 px photo. With the default stride of
#: half a window that is 13 x 13 = 169 forward passes per input at any resolution.
WINDOW_FRACTION = 1 / 7


class Occlusion(Method):
    name = "occlusion"
    box = "black"
    kind = "additive"
    summary = "drop of the target score when a sliding window is occluded (Zeiler & Fergus 2014)"
    scope = "local"
    per_feature_ranges = True  # windows are filled by a perturbation, per feature
    random = False
    test_params = {"window": (3, 3), "stride": (2, 2)}

    @dataclasses.dataclass(frozen=True)
    class Params:
        window: tuple[int, ...] | None = param(None, "window (height, width) for images, one int for a square; "
                                               "vectors use the last entry as the feature window; None = a "
                                               "seventh of each side (4 px at 28 px, 32 px at 224 px)", low=1)
        stride: tuple[int, ...] | None = param(None, "step between windows (rows, cols); vectors use the last "
                                               "entry; None = half the window (13 x 13 positions)", low=1)
        perturbation: Component = component("black", "perturbation", "how the window is deleted: a registered "
                                            "perturbation (black = Captum's baseline 0 on [0, 1] images)")
        output: str = output("logits", "explain the logits (Captum) or the softmax probabilities")
        batch_size: int | None = batch_size(None, "perturbed inputs per forward pass; None: as many as memory_gib "
                                                  "allows on a white box (256 on a black box)")
        memory_gib: float = param(1.0, "GiB one forward pass may keep, which sets batch_size when it is None",
                                  low=0.0)

    def attribute(self, model: Model, x: torch.Tensor, targets: torch.Tensor, ctx: Context
                  ) -> torch.Tensor | tuple[torch.Tensor, dict[str, Any]]:
        p = self.params
        perturbation = make_perturbation(p.perturbation)
        size = ctx.batch_size = p.batch_size or forward_chunk(model, x, p.memory_gib, BLACK_BOX_BATCH)
        window, stride = self.geometry(tuple(x.shape[1:]))
        windows = Windows(tuple(x.shape[1:]), window, stride, x.device, x.dtype, what="occlusion window")
        coverage = windows.coverage()
        uncovered = int((coverage == 0).sum())
        if uncovered:
            raise ParameterError(f"occlusion's stride {stride} is larger than its window {window}: "
                                 f"{uncovered} of the {coverage.numel()} input positions would lie between "
                                 f"windows, with no attribution; use a stride no larger than the window")
        out = torch.zeros_like(x)
        for n in range(x.shape[0]):  # each sample: its windows are built and evaluated a batch at a time
            generator = ctx.fresh_generator()  # the same fills alone or in a batch
            target = targets[n:n + 1]
            base = target_values(model, x[n:n + 1], target, p.output, size)[0, 0]
            total = torch.zeros_like(x[0])
            for rows in ctx.batches(len(windows), unit="window"):
                masks = windows.masks(rows)
                perturbed = perturbation.apply(x[n:n + 1].expand(masks.shape[0], *x.shape[1:]), 1 - masks,
                                               model.input_range, generator)
                drop = base - target_values(model, perturbed, target, p.output, size)[:, 0]
                total += (drop.to(x.dtype).view(-1, *[1] * (x.dim() - 1)) * masks).sum(0)
            out[n] = total / coverage
        return out, {"window": list(window), "stride": list(stride), "windows": len(windows)}

    def geometry(self, shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The window and stride for one input's ``shape``: the given ones, or a seventh of each side
        and half of that (:data:`WINDOW_FRACTION`)."""
        window = self.params.window or scaled_window(shape, WINDOW_FRACTION)
        stride = self.params.stride or tuple(max(1, k // 2) for k in window)
        return window, stride


@hookimpl
def salfw_register_methods(register: Any) -> None:
    register(Occlusion)
