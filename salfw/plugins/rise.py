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
``M x + (1 - M) fill``.

Defaults: the paper uses N = 4000, s = 7, p = 0.5 for ImageNet (224 px cells of
32 px); for MNIST-sized inputs s = 7 gives cells of 4 px, and 4000 masks is
well under a second on CPU for the built-in CNN, so the paper's values are kept.
``f_c`` is the softmax probability (the paper); ``output="scores"`` uses logits.
Masks are drawn from ``seed`` once for the whole batch, generated in chunks of
``batch_size`` (bounded memory), and each chunk is evaluated on each sample in
one batched forward pass. Images only. Local explanation.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from salfw.core.contracts import Method
from salfw.core.hookspecs import hookimpl
from salfw.core.params import param
from salfw.core.errors import ParameterError
from salfw.sdk.hiding import resolve_perturbation, target_values


def rise_masks(count: int, size: tuple[int, int], grid: int, keep: float, generator: torch.Generator,
               dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``count`` RISE masks (count, 1, H, W): random s x s binary grids, bilinear
    upsampling to (s + 1) cells, random shift crop (Petsiuk et al. 2018, Sec. 3.2)."""
    h, w = size
    cell_h, cell_w = math.ceil(h / grid), math.ceil(w / grid)
    gen_device = generator.device
    cells = (torch.rand(count, 1, grid, grid, generator=generator, device=gen_device) < keep).to(dtype)
    up = F.interpolate(cells.to(device), size=((grid + 1) * cell_h, (grid + 1) * cell_w), mode="bilinear",
                       align_corners=False)
    dy = torch.randint(0, cell_h, (count,), generator=generator, device=gen_device).to(device)
    dx = torch.randint(0, cell_w, (count,), generator=generator, device=gen_device).to(device)
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
    test_params = {"num_masks": 64, "grid": 3}

    @dataclasses.dataclass(frozen=True)
    class Params:
        num_masks: int = param(4000, "number of random masks N (paper: 4000)", low=1)
        grid: int = param(7, "grid size s of the low-resolution masks (paper: 7)", low=1)
        keep_probability: float = param(0.5, "probability p that a grid cell is kept (paper: 0.5)",
                                        low=0.0, high=1.0)
        perturbation: str = param("black", "what replaces the masked-out part (black = the paper's x . M)")
        perturbation_params: object = param(None, "dict of the perturbation's parameters, e.g. {'sigma': 2}")
        output: str = param("probabilities", "weight masks by probabilities (paper) or raw scores",
                            choices=("probabilities", "scores"))
        batch_size: int = param(500, "masks per generated chunk and per forward pass", low=1)

    def attribute(self, model, x, targets, ctx):
        seed = ctx.seed
        p = self.params
        if p.keep_probability <= 0:
            raise ParameterError("rise needs keep_probability > 0 (the saliency divides by N p)")
        perturbation = resolve_perturbation(p.perturbation, p.perturbation_params)
        n, c, h, w = x.shape
        mask_generator = torch.Generator().manual_seed(seed)  # masks: CPU stream, same on every device
        # one fill stream per sample, so that a batch and its samples one by one get the same fills
        fill_generators = [torch.Generator(device=x.device).manual_seed(seed) for _ in range(n)]
        saliency = torch.zeros(n, h * w, dtype=torch.float64, device=x.device)
        for start in range(0, p.num_masks, p.batch_size):
            count = min(p.batch_size, p.num_masks - start)
            masks = rise_masks(count, (h, w), p.grid, p.keep_probability, mask_generator, x.dtype, x.device)
            flat = masks.view(count, h * w).double()
            for k in range(n):  # each sample: one batched pass over the chunk's masks
                inputs = perturbation.apply(x[k:k + 1].expand(count, c, h, w), masks, model.input_range,
                                            fill_generators[k])
                values = target_values(model, inputs, targets[k:k + 1], p.output, p.batch_size)[:, 0]
                saliency[k] += values.double() @ flat
        return (saliency / (p.num_masks * p.keep_probability)).to(x.dtype).view(n, 1, h, w)


@hookimpl
def salfw_register_methods(register):
    register(Rise)
