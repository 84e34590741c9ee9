"""Image measures of a heatmap itself (the Noise Covering thesis, Tables 1 and 2).

* ``png-size`` -- bytes of the map saved as an 8-bit greyscale PNG (PIL, ``compress_level=9``,
  ``optimize=False``, fixed so sizes compare across runs). The map is scaled to [0, 255] by
  ``normalise`` ("abs-max" default: ``|h| / max|h|``; "min-max"; "none" for maps already in
  [0, 1], clipped to it). A compact, low-noise map compresses well (the thesis reads smaller as
  less noisy); since an empty map is smallest of all, the metric states no direction.
* ``ssim`` -- the structural similarity (Wang, Bovik, Sheikh & Simoncelli 2004) between the map
  scaled to [0, 1] (``normalise``, as for ``png-size``) and the greyscale input scaled to [0, 1]
  by its ``input_range``: Gaussian window sigma 1.5 truncated at 3.5 sigma (11 x 11), K1 = 0.01,
  K2 = 0.03, population covariances, data range 1, averaged over the positions where the window
  fits -- exactly ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1)``, computed for the whole batch with two
  convolutions. A map that follows the object (the digit) scores high.
"""

from __future__ import annotations

import dataclasses
import io
from typing import Any

import torch
import torch.nn.functional as F

from salfw.core.context import Context
from salfw.core.contracts import Metric
from salfw.core.models import Model
from salfw.core.params import normalise

from .common import heatmap, normalise_map, require_images


def png_sizes(maps01: torch.Tensor) -> torch.Tensor:
    """Bytes of each (H, W) map in [0, 1] as an 8-bit greyscale PNG (compress_level 9, no optimize).

    The encoder runs once per map (PNG has no batched encoder); everything else is batched.
    """
    from PIL import Image

    pixels = (maps01.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    sizes = []
    for image in pixels:
        buffer = io.BytesIO()
        Image.fromarray(image, mode="L").save(buffer, format="PNG", compress_level=9, optimize=False)
        sizes.append(buffer.tell())
    return torch.tensor(sizes, dtype=torch.float64)


def ssim(a: torch.Tensor, b: torch.Tensor, sigma: float = 1.5, truncate: float = 3.5,
         k1: float = 0.01, k2: float = 0.03, data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM of each pair of (H, W) images in the batches ``a`` and ``b`` (N, H, W).

    Matches scikit-image's Gaussian-weighted SSIM: its filter is cut at ``truncate`` sigma and
    its result is averaged after cropping (win - 1) / 2 pixels per side, so only windows that
    lie inside the image count -- a valid convolution gives the same numbers without padding.
    """
    radius = int(truncate * sigma + 0.5)
    win = 2 * radius + 1
    if a.shape[-1] < win or a.shape[-2] < win:
        raise ValueError(f"SSIM needs images of at least {win} x {win} pixels, got {tuple(a.shape[-2:])}")
    a = a.double()[:, None]
    b = b.double()[:, None]
    t = torch.arange(-radius, radius + 1, dtype=torch.float64, device=a.device)
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    g = g / g.sum()

    def blur(z: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(z, g.view(1, 1, -1, 1)), g.view(1, 1, 1, -1))

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.mean(dim=(1, 2, 3))


def greyscale(x: torch.Tensor, input_range: tuple[float, float]) -> torch.Tensor:
    """(N, H, W) in [0, 1]: the channel mean of the input scaled by its range."""
    lo, hi = input_range
    return ((x - lo) / (hi - lo)).mean(dim=1)


class PNGSize(Metric):
    name = "png-size"
    summary = "bytes of the 8-bit greyscale heatmap as PNG (Noise Covering thesis, Table 1); smaller = simpler"
    higher_is_better = None

    @dataclasses.dataclass(frozen=True)
    class Params:
        normalise: str = normalise("abs-max", "scaling of the map to [0, 255]")

    def score(self, model: Model, x: torch.Tensor, attributions: torch.Tensor, targets: torch.Tensor,
              ctx: Context, **context: Any) -> torch.Tensor:
        require_images(self.name, x)
        maps = normalise_map(heatmap(attributions), self.params.normalise)
        return png_sizes(maps).to(device=x.device, dtype=x.dtype)


class SSIM(Metric):
    name = "ssim"
    summary = "SSIM between the heatmap and the greyscale input (Wang et al. 2004; Noise Covering thesis, Table 2)"
    higher_is_better = True

    @dataclasses.dataclass(frozen=True)
    class Params:
        normalise: str = normalise("abs-max", "scaling of the map to [0, 1]")

    def score(self, model: Model, x: torch.Tensor, attributions: torch.Tensor, targets: torch.Tensor,
              ctx: Context, **context: Any) -> torch.Tensor:
        require_images(self.name, x)
        maps = normalise_map(heatmap(attributions), self.params.normalise)
        return ssim(maps, greyscale(x, model.input_range)).to(x.dtype)


IMAGE = (PNGSize, SSIM)
