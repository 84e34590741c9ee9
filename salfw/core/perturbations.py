"""Perturbation strategies: what "deleting" part of an input means.

Each fills the region where a keep-mask is 0, in the input's own domain
``input_range = (lo, hi)``:

=================  ==========================================================
``black``          ``lo``
``white``          ``hi``
``inverse``        ``lo + hi - x`` (the GeoSal thesis's best hiding for LIME on MNIST)
``blur``           a Gaussian blur of ``x`` (``sigma`` pixels; Fong & Vedaldi 2017 use 10 on 224 px)
``uniform-noise``  ``U(lo, hi)``, seeded (the Noise Covering thesis's replacement)
``gaussian-noise`` ``x + N(0, (sigma * (hi - lo))^2)``, clipped to the range
``mean``           each sample's per-channel mean
``constant``       ``value`` (clipped to the range)
=================  ==========================================================

For vectors with an ``input_range`` given per feature (a
:class:`~salfw.core.ranges.FeatureRange`), every fill uses each feature's own
ends: black is each feature's low, ``U(lo, hi)`` is drawn per feature, the
Gaussian noise scales with each feature's width. ``blur`` and ``mean`` average
over the features of a vector, which is meaningless when they have ranges of
their own (age and income), so they refuse such a range.

They are registered as plugins (this module is the ``perturbations`` entry
point), so a third party can add more.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from .contracts import Perturbation
from .errors import ParameterError
from .hookspecs import hookimpl
from .params import param
from .ranges import FeatureRange, range_ends


def _end(value, x: torch.Tensor) -> torch.Tensor:
    """A range end as a fill: a 0-d tensor for a number, (1, D) per feature."""
    return value if isinstance(value, torch.Tensor) else torch.full((), value, dtype=x.dtype, device=x.device)


def _across_features(name: str, input_range) -> None:
    if isinstance(input_range, FeatureRange):
        raise ParameterError(f"the '{name}' fill averages a vector over its features, which have ranges of "
                             f"their own here (input_range per feature); use black, white, inverse, constant, "
                             f"uniform-noise, gaussian-noise or a baseline (e.g. the training data's mean)")


class Black(Perturbation):
    name = "black"
    summary = "fill with the low end of the input range"

    def fill(self, x, input_range, generator):
        return _end(range_ends(input_range, x)[0], x)


class White(Perturbation):
    name = "white"
    summary = "fill with the high end of the input range"

    def fill(self, x, input_range, generator):
        return _end(range_ends(input_range, x)[1], x)


class Inverse(Perturbation):
    name = "inverse"
    summary = "fill with lo + hi - x, the inverted input (GeoSal thesis)"

    def fill(self, x, input_range, generator):
        lo, hi = range_ends(input_range, x)
        return lo + hi - x


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of an (N, C, H, W) batch, kernel radius ceil(3 sigma), reflect padding."""
    if sigma <= 0:
        return x
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    pad_h, pad_w = min(radius, x.shape[2] - 1), min(radius, x.shape[3] - 1)
    y = F.pad(x, (0, 0, pad_h, pad_h), mode="reflect") if pad_h else x
    kh = k[radius - pad_h: radius + pad_h + 1]
    y = F.conv2d(y, (kh / kh.sum()).view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    y = F.pad(y, (pad_w, pad_w, 0, 0), mode="reflect") if pad_w else y
    kw = k[radius - pad_w: radius + pad_w + 1]
    return F.conv2d(y, (kw / kw.sum()).view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)


class Blur(Perturbation):
    name = "blur"
    summary = "fill with a Gaussian blur of the input (Fong & Vedaldi 2017)"

    @dataclasses.dataclass(frozen=True)
    class Params:
        sigma: float = param(5.0, "blur standard deviation in pixels", low=0.0)

    def fill(self, x, input_range, generator):
        _across_features(self.name, input_range)
        if x.dim() != 4:
            return x.mean(dim=tuple(range(1, x.dim())), keepdim=True).expand_as(x)
        return gaussian_blur(x, self.params.sigma)


def _draw(shape, generator, dtype, device, normal: bool) -> torch.Tensor:
    out = (torch.randn if normal else torch.rand)(shape, generator=generator, dtype=dtype,
                                                   device=generator.device if generator is not None else device)
    return out.to(device)


class UniformNoise(Perturbation):
    name = "uniform-noise"
    summary = "fill with uniform noise over the input range (Noise Covering thesis)"
    random = True

    def fill(self, x, input_range, generator):
        lo, hi = range_ends(input_range, x)
        return lo + (hi - lo) * _draw((1, *x.shape[1:]), generator, x.dtype, x.device, normal=False)


class GaussianNoise(Perturbation):
    name = "gaussian-noise"
    summary = "fill with the input plus Gaussian noise, clipped to the range"
    random = True

    @dataclasses.dataclass(frozen=True)
    class Params:
        sigma: float = param(0.2, "noise standard deviation as a fraction of the input range", low=0.0)

    def fill(self, x, input_range, generator):
        lo, hi = range_ends(input_range, x)
        noise = _draw((1, *x.shape[1:]), generator, x.dtype, x.device, normal=True)
        return (x + self.params.sigma * (hi - lo) * noise).clamp(lo, hi)


class Mean(Perturbation):
    name = "mean"
    summary = "fill with each sample's per-channel mean"

    def fill(self, x, input_range, generator):
        _across_features(self.name, input_range)
        dims = tuple(range(2, x.dim())) if x.dim() > 2 else (1,)
        return x.mean(dim=dims, keepdim=True)


class Constant(Perturbation):
    name = "constant"
    summary = "fill with a constant value"

    @dataclasses.dataclass(frozen=True)
    class Params:
        value: float = param(0.0, "the fill value (clipped to the input range)")

    def fill(self, x, input_range, generator):
        lo, hi = range_ends(input_range, x)
        value = torch.full((), self.params.value, dtype=x.dtype, device=x.device)
        return torch.minimum(torch.maximum(value, _end(lo, x)), _end(hi, x))


BUILTIN = (Black, White, Inverse, Blur, UniformNoise, GaussianNoise, Mean, Constant)


@hookimpl
def salfw_register_perturbations(register):
    for cls in BUILTIN:
        register(cls)
