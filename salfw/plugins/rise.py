"""RISE (Petsiuk, Das & Saenko 2018, "RISE: Randomized input sampling for
explanation of black-box models"): the saliency of a pixel is the expected
target probability over random masks that keep it,

    S_c(x) = 1 / (N p) * sum_i f_c(x . M_i) M_i,

with N masks M_i made as in the paper: a binary s x s grid with each cell kept
with probability p, upsampled bilinearly to ((s + 1) * ceil(H / s)) pixels per
side and cropped at a random shift in [0, ceil(H / s)) per axis, so the masks
are smooth with cells that do not align with the image. ``x . M_i`` is the
paper's multiplication by the mask (``perturbation="black"`` on a [0, 1] input);
any registered perturbation can replace the masked-out part instead:
``M x + (1 - M) fill`` (its settings nested: ``perturbation.sigma=2``).

Defaults: the paper uses N = 4000, s = 7, p = 0.5 for ImageNet (224 px cells of
32 px); for MNIST-sized inputs s = 7 gives cells of 4 px, and 4000 masks is
well under a second on CPU for the built-in CNN, so the paper's values are kept
(``samples`` is N). ``f_c`` is the softmax probability (the paper);
``output="logits"`` uses the logits. Masks are drawn once for the whole batch from
the context's CPU generator (the same masks on every device), generated in chunks
of ``batch_size`` (bounded memory; by default as many as fit in ``memory_gib`` GiB on
a white box, :func:`salfw.sdk.memory.forward_chunk`, 500 on a black box), and each chunk is evaluated on each sample in
one batched forward pass; random fills come from a fresh generator per sample, so
a batch and its samples one by one agree. Images only. Local explanation.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F

from salfw.core.api import make_perturbation
from salfw.core.context import Context
from salfw.core.contracts import Method
from salfw.core.errors import ParameterError
from salfw.core.hookspecs import hookimpl
from salfw.core.models import Model
from salfw.core.params import Component, batch_size, component, output, param, samples
from salfw.sdk.hiding import target_values
from salfw.sdk.memory import forward_chunk

#: Masks per chunk and forward pass on a black box, whose memory cannot be measured.
BLACK_BOX_BATCH = 500


def rise_masks(count: int, size: tuple[int, int], grid: int, keep: float, generator: torch.Generator,
               dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``count`` RISE masks (count, 1, H, W) on ``device``: random s x s binary grids, bilinear
    upsampling to (s + 1) cells, random shift crop (Petsiuk et al. 2018, Sec. 3.2). The draws
    come from the CPU ``generator``, so every device gets the same masks."""
    h, w = size
    cell_h, cell_w = math.ceil(h / grid), math.ceil(w / grid)
    cells = (torch.rand(count, 1, grid, grid, generator=generator) < keep).to(dtype)
    up = F.interpolate(cells.to(device), size=((grid + 1) * cell_h, (grid + 1) * cell_w), mode="bilinear",
                       align_corners=False)
    dy = torch.randint(0, cell_h, (count,), generator=generator).to(device)
    dx = torch.randint(0, cell_w, (count,), generator=generator).to(device)
    rows = (dy[:, None] + torch.arange(h, device=device)[None])  # (count, H)
    cols = (dx[:, None] + torch.arange(w, device=device)[None])  # (count, W)
    idx = torch.arange(count, device=device)[:, None, None]
    return up[:, 0][idx, rows[:, :, None], cols[:, None, :]][:, None]


class Rise(Method):
    name = "rise"
    box = "black"
    kind = "additive"
    summary = "probability-weighted average of random smooth masks (Petsiuk et al. 2018)"
    scope = "local"
    random = True
    input_kinds = ("image",)
    test_params = {"samples": 64, "grid": 3}

    @dataclasses.dataclass(frozen=True)
    class Params:
        samples: int = samples(4000, "number of random masks N (paper: 4000)")
        grid: int = param(7, "grid size s of the low-resolution masks (paper: 7)", low=1)
        keep_probability: float = param(0.5, "probability p that a grid cell is kept (paper: 0.5)",
                                        low=0.0, high=1.0)
        perturbation: Component = component("black", "perturbation", "what replaces the masked-out part "
                                            "(black = the paper's x . M)")
        output: str = output("probabilities", "weight masks by probabilities (paper) or logits")
        batch_size: int | None = batch_size(None, "masks per generated chunk and per forward pass; None: as many "
                                                  "as memory_gib allows on a white box (500 on a black box)")
        memory_gib: float = param(1.0, "GiB one forward pass may keep, which sets batch_size when it is None",
                                  low=0.0)

    def attribute(self, model: Model, x: torch.Tensor, targets: torch.Tensor, ctx: Context
                  ) -> torch.Tensor | tuple[torch.Tensor, dict[str, Any]]:
        p = self.params
        if p.keep_probability <= 0:
            raise ParameterError("rise needs keep_probability > 0 (the saliency divides by N p)")
        perturbation = make_perturbation(p.perturbation)
        size = ctx.batch_size = p.batch_size or forward_chunk(model, x, p.memory_gib, BLACK_BOX_BATCH)
        n, c, h, w = x.shape
        # one fill stream per sample, so that a batch and its samples one by one get the same fills
        fill_generators = [ctx.fresh_generator() for _ in range(n)]
        saliency = torch.zeros(n, h * w, dtype=torch.float64, device=x.device)
        for chunk in ctx.batches(p.samples, unit="mask"):
            count = chunk.stop - chunk.start
            masks = rise_masks(count, (h, w), p.grid, p.keep_probability, ctx.generator, x.dtype, x.device)
            flat = masks.view(count, h * w).double()
            for k in range(n):  # each sample: one batched pass over the chunk's masks
                inputs = perturbation.apply(x[k:k + 1].expand(count, c, h, w), masks, model.input_range,
                                            fill_generators[k])
                values = target_values(model, inputs, targets[k:k + 1], p.output, size)[:, 0]
                saliency[k] += values.double() @ flat
        return (saliency / (p.samples * p.keep_probability)).to(x.dtype).view(n, 1, h, w)


@hookimpl
def salfw_register_methods(register: Any) -> None:
    register(Rise)
