"""Where the map points, and what it cost.

* ``pointing-game`` -- Zhang, Lin, Brandt, Shen & Sclaroff 2016 ("Top-down neural attention by
  excitation backprop"): a hit (1) when the maximum of the channel-summed map lies inside the
  object's mask grown by ``tolerance`` pixels (a disk), a miss (0) otherwise. The paper's 15
  pixels at 224 px are scaled to the image: ``round(15 * max(H, W) / 224)`` by default (2 px on
  MNIST). The mask is passed per input, ``mask=`` (N, H, W) or (N, 1, H, W), non-zero inside.
  When several pixels share the maximum the first in raster order counts. Higher is better.
* ``runtime`` -- seconds per explained sample, from the explanation's ``meta`` (the time
  ``salfw.explain`` measured around the method); extras give the forward and backward passes
  per sample. Lower is better.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F

from salfw.core.context import Context
from salfw.core.contracts import Metric
from salfw.core.errors import InputError
from salfw.core.models import Model
from salfw.core.params import tolerance

from .common import heatmap, require_explanation, require_images


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Grow a boolean (N, H, W) mask by a disk of ``radius`` pixels."""
    if radius <= 0:
        return mask
    t = torch.arange(-radius, radius + 1, device=mask.device)
    disk = ((t[:, None] ** 2 + t[None, :] ** 2) <= radius ** 2).to(torch.float32)
    grown = F.conv2d(mask[:, None].to(torch.float32), disk[None, None], padding=radius)
    return grown[:, 0] > 0


class PointingGame(Metric):
    name = "pointing-game"
    summary = "1 if the map's maximum lies in the object mask (with a tolerance), else 0 (Zhang et al. 2016)"
    higher_is_better = True
    needs = ("mask",)

    @dataclasses.dataclass(frozen=True)
    class Params:
        tolerance: int | None = tolerance(None, "pixels the mask is grown by; None: 15 px at 224 px, scaled")

    def score(self, model: Model, x: torch.Tensor, attributions: torch.Tensor, targets: torch.Tensor,
              ctx: Context, **context: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        require_images(self.name, x)
        mask = context.get("mask")
        if mask is None:
            raise InputError("metric 'pointing-game' needs a ground-truth mask per input: pass mask= "
                             "(N, H, W) or (N, 1, H, W), non-zero inside the object")
        mask = torch.as_tensor(mask, device=x.device)
        if mask.dim() == 4 and mask.shape[1] == 1:
            mask = mask[:, 0]
        if tuple(mask.shape) != (x.shape[0], *x.shape[2:]):
            raise InputError(f"pointing-game mask must have shape {(x.shape[0], *x.shape[2:])} "
                             f"(or with a channel of 1), got {tuple(mask.shape)}")
        h, w = x.shape[2:]
        radius = self.params.tolerance
        if radius is None:
            radius = round(15 * max(h, w) / 224)
        hm = heatmap(attributions).flatten(1)
        peak = hm.argmax(dim=1)
        grown = dilate(mask != 0, radius).flatten(1)
        hits = grown.gather(1, peak[:, None])[:, 0]
        return hits.to(x.dtype), {"peak": torch.stack([peak // w, peak % w], dim=1), "tolerance": radius}


class Runtime(Metric):
    name = "runtime"
    summary = "seconds per explained sample, with forward/backward passes per sample (from the explanation)"
    higher_is_better = False

    def score(self, model: Model, x: torch.Tensor, attributions: torch.Tensor, targets: torch.Tensor,
              ctx: Context, **context: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        meta = require_explanation(self.name, context).meta
        n = x.shape[0]
        ones = torch.ones(n, dtype=x.dtype, device=x.device)
        return ones * (meta["seconds"] / n), {
            "forward_passes": ones * (meta.get("forward_passes", 0) / n),
            "backward_passes": ones * (meta.get("backward_passes", 0) / n)}


LOCALISATION = (PointingGame, Runtime)
