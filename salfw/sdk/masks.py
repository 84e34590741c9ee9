"""Shared helpers of the optimisation-based mask methods (meaningful perturbation,
extremal perturbation, Noise Mask, real-time saliency): total variation, L1,
upsampling of low-resolution masks, Gaussian blur and random jitter.

All helpers work on batches (N, 1, h, w) and return one value per sample, so
that a batch is optimised as one tensor with one optimiser while each sample's
loss (and therefore its gradient) depends only on that sample.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from salfw.core.perturbations import gaussian_blur

__all__ = ["total_variation", "l1", "upsample", "gaussian_blur", "jitter", "scaled", "low_res_shape"]


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


def jitter(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift the whole batch by one random (dy, dx) in ``[-max_shift, max_shift]²`` (circularly).

    The shift is drawn once per call and shared by all samples (Fong & Vedaldi's
    random jitter), so a batch is treated like its samples one by one.
    """
    if max_shift <= 0:
        return x
    dy, dx = torch.randint(-max_shift, max_shift + 1, (2,), generator=generator).tolist()
    return torch.roll(x, shifts=(dy, dx), dims=(-2, -1))
