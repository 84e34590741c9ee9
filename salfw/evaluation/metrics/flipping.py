"""Flipping curves: remove (or insert) input features in the order an explanation ranks them
and follow the target's output.

* ``morf`` / ``lerf`` -- Samek, Binder, Montavon, Lapuschkin & Müller 2016, "Evaluating the
  visualization of what a deep neural network has learned": features are replaced most
  relevant first (MoRF) or least relevant first (LeRF) in ``steps`` equal steps, and

      AOPC = 1/(L+1) * sum_{k=0..L} ( f(x^(0)) - f(x^(k)) ),   L = steps,

  where ``f`` is the target's probability (``output``) and ``x^(k)`` the input after step
  ``k``. A good map makes the MoRF curve fall fast (high AOPC, higher is better) and the LeRF
  curve stay up (low AOPC, lower is better). The replacement comes from the perturbation
  registry; the default ``uniform-noise`` (one noise image per seed, U(lo, hi)) follows the
  Noise Covering thesis, Samek et al. drew uniform noise too. Features are single pixels
  (``patch`` 1, the usual MNIST choice) or ``patch`` x ``patch`` regions ranked by their mean
  relevance (Samek et al. use 9 x 9 regions on 224-pixel images). The steps remove features up to
  ``max_fraction`` of them (1: all; the Noise Covering thesis stops at 0.9): step ``k`` has
  removed ``round(k M / L)`` features, ``M = round(max_fraction F)`` of the ``F``. ``extras`` hold
  the curve, and (``random_order``) the curve and AOPC of a random removal order -- a map no
  better than chance scores the same as it.
* ``abpc`` -- the area between the LeRF and MoRF curves, ``1/(L+1) sum_k (f_LeRF(k) - f_MoRF(k))
  = AOPC_MoRF - AOPC_LeRF`` (Schulz et al. 2020 name it ABPC); higher is better. With
  ``unnormalised`` the sum ``sum_k (f_LeRF(k) - f_MoRF(k))`` without the ``1/(L+1)``, as the
  Noise Covering thesis reports it (with one pixel per step, ``max_fraction`` 0.9, uniform
  noise and the logits; its values reach thousands).
* ``deletion`` / ``insertion`` -- Petsiuk, Das & Saenko 2018 (RISE): the area under the
  probability curve (trapezoid rule over the removed fraction 0..1) when features are deleted
  most relevant first starting from the input (lower is better; the paper deletes to black,
  the default here), or inserted most relevant first into a blurred copy of the input (higher is
  better; the paper's canvas is a blur, the default here is the registry's ``blur`` with its
  sigma of 5 pixels; pass ``perturbation="black"`` for a black canvas, its settings as
  ``perturbation.sigma=2``).

Ties in the ranking are broken by one seeded random permutation of the features (shared by all
samples), so a flat map behaves like a random order rather than a raster scan. Every curve of a
call replays the same CPU random stream (``ctx.fresh_generator()``): the same fill and the same
tie-breaking permutation, so MoRF, LeRF and the random order differ only in their ranking. Every
step of every sample is built on the fly in chunks of ``batch_size`` forward passes
(``ctx.batches``); no Python loop over samples or steps.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from salfw.core.api import make_perturbation
from salfw.core.context import Context
from salfw.core.contracts import Metric
from salfw.core.models import Model
from salfw.core.params import Component, batch_size, component, output, param, steps

from .common import heatmap, target_output


def feature_scores(attributions: torch.Tensor, patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature relevance (N, F) and the feature index of every input position.

    For images the features are ``patch`` x ``patch`` regions (the last row/column of regions
    may be smaller) scored by the mean of the channel-summed map; ``pixel_feature`` has
    length H * W. For vectors each dimension is a feature.
    """
    hm = heatmap(attributions)
    if hm.dim() == 2:
        return hm, torch.arange(hm.shape[1], device=hm.device)
    n, h, w = hm.shape
    rows, cols = math.ceil(h / patch), math.ceil(w / patch)
    ry = torch.arange(h, device=hm.device) // patch
    rx = torch.arange(w, device=hm.device) // patch
    pixel_feature = (ry[:, None] * cols + rx[None, :]).flatten()
    counts = torch.bincount(pixel_feature, minlength=rows * cols).to(hm.dtype)
    sums = torch.zeros(n, rows * cols, dtype=hm.dtype, device=hm.device)
    sums.index_add_(1, pixel_feature, hm.flatten(1))
    return sums / counts, pixel_feature


def removal_ranks(scores: torch.Tensor, order: str, gen: torch.Generator) -> torch.Tensor:
    """``rank[i, f]``: at which position feature ``f`` of sample ``i`` is removed (0 = first).

    ``order``: "morf" (highest score first), "lerf" (lowest first) or "random" (one seeded
    permutation shared by all samples). Ties follow a seeded random permutation.
    """
    n, f = scores.shape
    perm = torch.randperm(f, generator=gen, device=gen.device).to(scores.device)
    if order == "random":
        sequence = perm[None, :].expand(n, f)
    else:
        idx = torch.argsort(scores[:, perm], dim=1, descending=(order == "morf"), stable=True)
        sequence = perm[idx]
    positions = torch.arange(f, device=scores.device).expand(n, f)
    return torch.empty_like(sequence).scatter_(1, sequence, positions)


def flip_curves(model: Model, x: torch.Tensor, targets: torch.Tensor, ranks: torch.Tensor,
                pixel_feature: torch.Tensor, fill: torch.Tensor, steps: int, insertion: bool,
                output: str, ctx: Context, batch_size: int, max_fraction: float = 1.0) -> torch.Tensor:
    """The target output after each of ``steps + 1`` steps (N, steps + 1).

    At step ``k`` the first ``round(k M / steps)`` features in rank order, ``M = round(max_fraction
    F)``, are taken from ``fill`` (deletion) or are the only ones taken from ``x`` (insertion). All
    (sample, step) pairs are enumerated and evaluated in chunks of ``batch_size`` (``ctx.batches``).
    """
    n, f = ranks.shape
    points = steps + 1
    last = round(max_fraction * f)
    counts = torch.round(torch.linspace(0, last, points, device=x.device, dtype=torch.float64)).long()
    fill = fill.expand_as(x)
    values = []
    for chunk in ctx.batches(n * points, batch_size, unit="input"):
        j = torch.arange(chunk.start, chunk.stop, device=x.device)
        i, k = j // points, j % points
        removed = ranks[i] < counts[k][:, None]
        keep = (removed if insertion else ~removed)[:, pixel_feature].to(x.dtype)
        keep = keep.view(len(j), 1, *x.shape[2:]) if x.dim() == 4 else keep
        batch = x[i] * keep + fill[i] * (1 - keep)
        values.append(target_output(model, batch, targets[i], output, batch_size))
    return torch.cat(values).view(n, points)


class _Flipping(Metric):
    """Shared by the flipping metrics: builds the fill and the curves."""

    order: str = "morf"
    insertion: bool = False

    def _curve(self, model: Model, x: torch.Tensor, attributions: torch.Tensor, targets: torch.Tensor,
               ctx: Context, order: str, insertion: bool = False) -> torch.Tensor:
        """One curve; every curve of a call replays the same random stream (same fill, same ties)."""
        p = self.params
        gen = ctx.fresh_generator()
        fill = make_perturbation(p.perturbation).fill(x, model.input_range, gen)
        scores, pixel_feature = feature_scores(attributions, p.patch)
        ranks = removal_ranks(scores, order, gen)
        return flip_curves(model, x, targets, ranks, pixel_feature, fill, p.steps, insertion,
                           p.output, ctx, p.batch_size, getattr(p, "max_fraction", 1.0))

    def _fractions(self, x: torch.Tensor) -> torch.Tensor:
        last = getattr(self.params, "max_fraction", 1.0)
        return torch.linspace(0, last, self.params.steps + 1, dtype=x.dtype, device=x.device)


def aopc(curve: torch.Tensor) -> torch.Tensor:
    """Samek et al.'s area over the perturbation curve: mean of ``f(x^(0)) - f(x^(k))``."""
    return (curve[:, :1] - curve).mean(dim=1)


@dataclasses.dataclass(frozen=True)
class FlipParams:
    perturbation: Component = component("uniform-noise", "perturbation", "replacement, a registered perturbation "
                                                                         "(Noise Covering thesis: uniform noise)")
    steps: int = steps(100, "number of equal removal steps (the curve has steps + 1 points)")
    patch: int = param(1, "features are patch x patch pixel regions (1: single pixels)", low=1)
    max_fraction: float = param(1.0, "fraction of the features removed by the last step (Noise Covering "
                                     "thesis: 0.9)", low=0.0, high=1.0)
    output: str = output("probabilities", "the followed output of the target class")
    random_order: bool = param(True, "also run a random removal order (extras: random_curve, random_aopc)")
    batch_size: int = batch_size(256, "perturbed inputs per forward pass")


class MoRF(_Flipping):
    name = "morf"
    summary = "AOPC of most-relevant-first flipping (Samek et al. 2016); higher is better"
    higher_is_better = True
    Params = FlipParams

    def score(self, model: Model, x: torch.Tensor, attributions: torch.Tensor, targets: torch.Tensor,
              ctx: Context, **context: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        curve = self._curve(model, x, attributions, targets, ctx, self.order)
        extras = {"fractions": self._fractions(x), "curve": curve}
        if self.params.random_order:
            random_curve = self._curve(model, x, attributions, targets, ctx, "random")
            extras.update(random_curve=random_curve, random_aopc=aopc(random_curve))
        return aopc(curve), extras


class LeRF(MoRF):
    name = "lerf"
    summary = "AOPC of least-relevant-first flipping (Samek et al. 2016); lower is better"
    higher_is_better = False
    order = "lerf"


class ABPC(_Flipping):
    name = "abpc"
    summary = "area between the LeRF and MoRF curves (AOPC_MoRF - AOPC_LeRF); higher is better"
    higher_is_better = True

    @dataclasses.dataclass(frozen=True)
    class Params:
        perturbation: Component = component("uniform-noise", "perturbation", "replacement, a registered perturbation")
        steps: int = steps(100, "number of equal removal steps")
        patch: int = param(1, "features are patch x patch pixel regions", low=1)
        max_fraction: float = param(1.0, "fraction of the features removed by the last step (Noise Covering "
                                         "thesis: 0.9)", low=0.0, high=1.0)
        unnormalised: bool = param(False, "sum over the curves' points instead of their mean (the Noise "
                                          "Covering thesis's ABPC)")
        output: str = output("probabilities", "the followed output of the target class")
        batch_size: int = batch_size(256, "perturbed inputs per forward pass")

    def score(self, model: Model, x: torch.Tensor, attributions: torch.Tensor, targets: torch.Tensor,
              ctx: Context, **context: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        morf = self._curve(model, x, attributions, targets, ctx, "morf")
        lerf = self._curve(model, x, attributions, targets, ctx, "lerf")
        between = lerf - morf
        area = between.sum(dim=1) if self.params.unnormalised else between.mean(dim=1)
        return area, {"fractions": self._fractions(x), "morf_curve": morf, "lerf_curve": lerf}


class Deletion(_Flipping):
    name = "deletion"
    summary = "area under the probability curve deleting most relevant first (Petsiuk et al. 2018); lower is better"
    higher_is_better = False

    @dataclasses.dataclass(frozen=True)
    class Params:
        perturbation: Component = component("black", "perturbation", "what deleted features become (RISE: black)")
        steps: int = steps(100, "number of equal deletion steps")
        patch: int = param(1, "features are patch x patch pixel regions", low=1)
        output: str = output("probabilities", "the followed output of the target class")
        batch_size: int = batch_size(256, "perturbed inputs per forward pass")

    def score(self, model: Model, x: torch.Tensor, attributions: torch.Tensor, targets: torch.Tensor,
              ctx: Context, **context: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        curve = self._curve(model, x, attributions, targets, ctx, "morf", self.insertion)
        return torch.trapezoid(curve, dx=1.0 / self.params.steps, dim=1), {
            "fractions": self._fractions(x), "curve": curve}


class Insertion(Deletion):
    name = "insertion"
    summary = "area under the probability curve inserting most relevant first into a blurred canvas " \
              "(Petsiuk et al. 2018); higher is better"
    higher_is_better = True
    insertion = True

    @dataclasses.dataclass(frozen=True)
    class Params:
        perturbation: Component = component("blur", "perturbation", "the starting canvas (RISE: a blurred input; "
                                                                    "registry blur, sigma 5)")
        steps: int = steps(100, "number of equal insertion steps")
        patch: int = param(1, "features are patch x patch pixel regions", low=1)
        output: str = output("probabilities", "the followed output of the target class")
        batch_size: int = batch_size(256, "perturbed inputs per forward pass")


FLIPPING = (MoRF, LeRF, ABPC, Deletion, Insertion)
