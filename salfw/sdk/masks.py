"""Shared helpers of the optimisation-based mask methods (meaningful perturbation,
extremal perturbation, Noise Mask, real-time saliency): mask parametrisations
(a low-resolution grid upsampled bilinearly, :func:`low_res_shape` and
:func:`upsample`; the smooth masks of Fong, Patrick & Vedaldi 2019,
:class:`SmoothMask`), perturbation by a blur or fade pyramid
(:func:`perturbation_pyramid`, :func:`apply_pyramid`), the penalties (total
variation, L1), Gaussian blur and random jitter (:func:`random_shift`, :func:`jitter`).

All helpers work on batches (N, 1, h, w) and return one value per sample, so
that a batch is optimised as one tensor with one optimiser while each sample's
loss (and therefore its gradient) depends only on that sample.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from salfw.core.context import warn_degenerate
from salfw.core.perturbations import gaussian_blur

__all__ = ["total_variation", "l1", "upsample", "gaussian_blur", "random_shift", "jitter", "scaled", "low_res_shape",
           "SmoothMask", "smooth_kernel", "perturbation_pyramid", "apply_pyramid", "warn_if_unmoved"]

#: A mask whose every value ends within this of where it started "did not move" (:func:`warn_if_unmoved`).
UNMOVED = 1e-2

#: Temperature T of the smooth maximum (TorchRay's ``MaskGenerator``).
COLDNESS = 20.0


def total_variation(m: torch.Tensor, beta: float = 2.0) -> torch.Tensor:
    """Per-sample total variation ``Σ_u |m(u+e_y) − m(u)|^β + |m(u+e_x) − m(u)|^β`` (N,).

    This is the anisotropic form used by Fong & Vedaldi 2017 (eq. 4, β = 3 there)
    and, with β = 2, by Dabkowski & Gal 2017.
    """
    dy = (m[..., 1:, :] - m[..., :-1, :]).abs().pow(beta)
    dx = (m[..., :, 1:] - m[..., :, :-1]).abs().pow(beta)
    return dy.flatten(1).sum(1) + dx.flatten(1).sum(1)


def l1(m: torch.Tensor) -> torch.Tensor:
    """Per-sample ``Σ_u |m(u)|`` (N,)."""
    return m.abs().flatten(1).sum(1)


def upsample(m: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of low-resolution masks (N, 1, h, w) to ``size`` (corners not aligned)."""
    return F.interpolate(m, size=size, mode="bilinear", align_corners=False)


def scaled(value: float, size: int, reference: int = 224) -> float:
    """A length given in pixels for a ``reference``-pixel input, scaled to an input of ``size`` pixels."""
    return value * size / reference


def low_res_shape(shape: tuple[int, int], factor: int) -> tuple[int, int]:
    """The low-resolution mask shape for an input of spatial ``shape`` and upsampling ``factor``
    (``ceil(H / factor)``: 28×28 for 224×224 with factor 8, 4×4 for MNIST's 28×28)."""
    return max(1, math.ceil(shape[0] / factor)), max(1, math.ceil(shape[1] / factor))


def random_shift(max_shift: int, generator: torch.Generator) -> tuple[int, int]:
    """One random jitter ``τ = (dy, dx)`` in ``[-max_shift, max_shift]²`` from ``generator``, or
    ``(0, 0)`` without a draw when ``max_shift`` is 0. Drawn once per step and shared by all samples
    (Fong & Vedaldi's random jitter), so a batch is treated like its samples one by one."""
    if max_shift <= 0:
        return 0, 0
    dy, dx = torch.randint(-max_shift, max_shift + 1, (2,), generator=generator).tolist()
    return dy, dx


def jitter(x: torch.Tensor, shift: tuple[int, int]) -> torch.Tensor:
    """``x(· − τ)``: images (…, H, W) shifted by ``τ = shift = (dy, dx)`` pixels, circularly.

    Fong & Vedaldi 2017 jitter the image under a fixed mask, ``Φ(x(· − τ); m)``: shift the
    image and its fill with this, not the perturbed composite (which would move the mask too).
    """
    if shift == (0, 0):
        return x
    return torch.roll(x, shifts=shift, dims=(-2, -1))


def smooth_kernel(z: torch.Tensor) -> torch.Tensor:
    """TorchRay's truncated Gaussian ``exp(−2 max(z − ½, 0)²)`` of a normalised distance ``z``."""
    return torch.exp(-2 * (z - 0.5).clamp(min=0) ** 2)


class SmoothMask:
    """The smooth-mask family of Fong, Patrick & Vedaldi 2019 (sec. 3.3): max-convolution of a
    coarse parameter grid, ``m(u) = smax_k g(u − u_k) m̄_k`` with the kernel :func:`smooth_kernel`
    of ``|z| / sigma`` and the smooth maximum ``smax(a) = Σ_k a_k softmax(T a)_k`` (T = ``coldness``;
    TorchRay's ``MaskGenerator`` with "softmax" pooling).

    Parameters ``m̄`` (N, 1, ceil(H/step), ceil(W/step)) sit on nodes at pixel
    centres ``step·j + (step − 1)/2``. Each output pixel pools, with the smooth
    maximum, the kernel-weighted values of the (2r+1)² nodes around its cell,
    r = 1 + ceil(σ/step). Nodes outside the grid count as 0.
    """

    def __init__(self, shape: tuple[int, int], step: int, sigma: float, device: torch.device | str,
                 dtype: torch.dtype, coldness: float = COLDNESS):
        self.shape, self.step, self.sigma, self.coldness = shape, step, sigma, coldness
        self.shape_in = (math.ceil(shape[0] / step), math.ceil(shape[1] / step))
        self.radius = 1 + math.ceil(sigma / step)
        width = 2 * self.radius + 1
        offsets = torch.arange(-self.radius, self.radius + 1, dtype=dtype, device=device)
        vy = torch.arange(shape[0], dtype=dtype, device=device)
        vx = torch.arange(shape[1], dtype=dtype, device=device)
        # node centres for every (offset, pixel) pair along each axis: (2r+1, H) and (2r+1, W)
        cy = step * (torch.div(vy, step, rounding_mode="floor")[None] + offsets[:, None]) + (step - 1) / 2
        cx = step * (torch.div(vx, step, rounding_mode="floor")[None] + offsets[:, None]) + (step - 1) / 2
        dy2 = (vy[None] - cy) ** 2
        dx2 = (vx[None] - cx) ** 2
        distance = torch.sqrt(dy2[:, None, :, None] + dx2[None, :, None, :])  # (2r+1, 2r+1, H, W)
        self.weight = smooth_kernel(distance / sigma).reshape(1, width * width, *shape)

    def parameters_like(self, n: int, value: float, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
        return torch.full((n, 1, *self.shape_in), value, dtype=dtype, device=device)

    def __call__(self, pmask: torch.Tensor) -> torch.Tensor:
        n = pmask.shape[0]
        width = 2 * self.radius + 1
        neighbours = F.unfold(pmask, width, padding=self.radius).reshape(n, width * width, *self.shape_in)
        neighbours = neighbours.repeat_interleave(self.step, dim=2).repeat_interleave(self.step, dim=3)
        weighted = self.weight * neighbours[:, :, :self.shape[0], :self.shape[1]]
        pooled = (weighted * torch.softmax(self.coldness * weighted, dim=1)).sum(dim=1, keepdim=True)
        return pooled.clamp(0, 1)


def perturbation_pyramid(x: torch.Tensor, levels: int, max_blur: float, kind: str = "blur") -> torch.Tensor:
    """(N, L, C, H, W), the last level being ``x`` (TorchRay's ``Perturbation``): for "blur", level l
    is blurred with σ = max_blur (1 − l/(L − 1)); for "fade" it is ``x · l/(L − 1)`` (fade to black, 0)."""
    fractions = [level / (levels - 1) for level in range(levels)]
    if kind == "fade":
        return torch.stack([x * f for f in fractions], dim=1)
    return torch.stack([gaussian_blur(x, max_blur * (1 - f)) for f in fractions], dim=1)


def apply_pyramid(pyramid: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Perturb with a mask in [0, 1] (K, 1, H, W) by linear interpolation across the K pyramids' levels
    (mask 1 keeps the input, the last level; mask 0 takes the first level)."""
    levels = pyramid.shape[1]
    position = mask * (levels - 1)                                   # (K, 1, H, W)
    index = torch.arange(levels, dtype=mask.dtype, device=mask.device).view(1, levels, 1, 1, 1)
    weight = (1 - (position[:, None] - index).abs()).clamp(min=0)   # (K, L, 1, H, W)
    return (weight * pyramid).sum(dim=1)


def warn_if_unmoved(method: str, start: torch.Tensor | float | None, final: torch.Tensor, fix: str) -> None:
    """A :class:`~salfw.core.errors.DegenerateWarning` naming the samples whose mask (N, ...) the
    optimisation left where it started (every value within :data:`UNMOVED` of ``start``), or, with
    ``start=None``, left uniform (within :data:`UNMOVED` of its own mean: penalties alone move a mask
    to a uniform value), and ``fix``, the setting that makes it move: such a mask is no explanation."""
    final = final.detach()
    if start is None:
        flat = final.flatten(1)
        moved = (flat - flat.mean(dim=1, keepdim=True)).abs().amax(dim=1)
    else:
        moved = (final - start).flatten(1).abs().amax(dim=1)
    still = (moved < UNMOVED).nonzero()[:, 0].tolist()
    if not still:
        return
    listed = ", ".join(map(str, still[:10])) + (", ..." if len(still) > 10 else "")
    how = "from where it started, so the map shows the initialisation" if start is not None else \
        "away from a uniform value, so it singles out no region"
    warn_degenerate(f"{method}: the optimisation did not move the mask of sample(s) {listed} ({len(still)} of "
                    f"{final.shape[0]}) {how}; {fix}", stacklevel=4)
