"""Meaningful perturbation (Fong & Vedaldi 2017, "Interpretable explanations of black
boxes by meaningful perturbation", ICCV): learn the smallest region whose deletion
destroys the target's score (deletion game) or the smallest region whose
preservation keeps it (preservation game).

The mask ``m`` (1 keeps a pixel, 0 perturbs it) is optimised at low resolution,
upsampled (bilinear) and blurred to the input size, and the image is perturbed as
``Φ(x; m) = m ⊙ x + (1 − m) ⊙ fill`` (paper eq. 2). Losses, one per sample
(eq. 3-4 with the paper's λ1 = 1e-4, λ2 = 1e-2, β = 3):

* deletion:     ``λ1 ‖1 − m‖₁ + λ2 TV_β(m) + E_τ[f_c(Φ(x(· − τ); m))]``
* preservation: ``λ1 ‖m‖₁ + λ2 TV_β(m) + E_τ[1 − f_c(Φ(x(· − τ); m))]``

where ``f_c`` is the target's softmax probability and τ a random jitter: the image and
its fill are shifted (circularly) by τ under the fixed mask, ``Φ(x(· − τ); m) =
m ⊙ x(· − τ) + (1 − m) ⊙ fill(· − τ)``, one τ per iteration shared by the batch. The
regularisers are sums over the low-resolution mask, normalised to the paper's
28×28 mask (multiplied by 784 / (h·w)) so that λ1 and λ2 keep their meaning at
any input size. Paper defaults, all parameters: Adam with learning rate 0.1, 300
iterations, mask upsampling factor 8 (a 28×28 mask for 224×224), blur perturbation
with σ = 10 px at 224 px scaled to the input (1.25 px on MNIST), jitter of up to
4 px at 224 px (at least 1 px). Every length scales with the input, so the defaults
are the paper's at 224 px: the upsampling factor too is the shorter side / 28
(``factor=None``), a mask of 28 cells per side at any size (1 px cells on a 28 px
digit, 4 px at 112 px, the paper's 8 at 224 px). A fixed factor 8 gives a 4×4 mask
on a 28 px digit, too coarse to find a region: on a model that reads only one
quadrant, 29% of the deletion mask's mass lay in that quadrant (uniform is 25%) at
28 px and 73% at 112 px; with the scaled factor 90% at 28 and 112 px and 91% at
224 px (``tests/test_defaults.py``). ``factor=8`` is the paper's setting at any size.
Our choices (not fixed by the paper): the mask starts at ``init`` = 0.5, the
upsampled mask is blurred with σ = factor / 2.

The fill is ``perturbation``: any registered perturbation, its settings nested
(``perturbation.sigma=2``). Unset settings take the paper's values: ``blur``'s σ
as above, ``constant``'s value the middle of the input range (our choice).
Random fills (``uniform-noise``, ``gaussian-noise``) are drawn afresh at each
iteration; ``noise`` is the paper's i.i.d. Gaussian noise, around the middle of
the range with standard deviation ``noise_std`` of the range (our choices), drawn
afresh at each iteration; its final loss terms are measured with its mean.

Output convention: attributions are a saliency where high = important, i.e.
``1 − m`` for the deletion game (the deleted region) and ``m`` for the
preservation game (the kept region); the mask itself is in ``meta["mask"]``.
Each sample's loss depends only on that sample, the batch is optimised as one
tensor with one Adam optimiser, and random draws (jitter, noise) come from the
context's seed afresh for each batch and are shared by its samples, so a batch
gives the same masks as its samples one by one. A mask the optimisation left uniform
(the penalties alone move it to one value when the fill does not change the
probability) gives a :class:`~salfw.core.errors.DegenerateWarning`. Local explanation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from salfw.core.api import make_perturbation
from salfw.core.context import Context
from salfw.core.contracts import Method
from salfw.core.hookspecs import hookimpl
from salfw.core.models import Model, WhiteBox
from salfw.core.params import Component, batch_size, component, iterations, learning_rate, param
from salfw.sdk.masks import (
    gaussian_blur,
    jitter,
    l1,
    low_res_shape,
    random_shift,
    scaled,
    total_variation,
    upsample,
    warn_if_unmoved,
)
from salfw.sdk.reference import reference

#: The paper's mask: 28×28 cells for a 224×224 image (upsampling factor 8). The default factor keeps
#: 28 cells along the shorter side at any size, so the penalties keep their meaning.
PAPER_MASK_SIDE = 28
PAPER_MASK_PIXELS = PAPER_MASK_SIDE * PAPER_MASK_SIDE
#: The paper's i.i.d. Gaussian noise fill, handled by the method itself (not a registered perturbation).
NOISE = "noise"


def perturbed(x: torch.Tensor, mask: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """``Φ(x; m) = m ⊙ x + (1 − m) ⊙ fill``."""
    return mask * x + (1 - mask) * fill


def full_mask(low: torch.Tensor, size: tuple[int, int], mask_sigma: float) -> torch.Tensor:
    """The low-resolution mask upsampled (bilinear) to ``size``, blurred with ``mask_sigma`` and clamped to [0, 1]."""
    return gaussian_blur(upsample(low, size), mask_sigma).clamp(0, 1)


class MeaningfulPerturbation(Method):
    name = "meaningful-perturbation"
    box = "white"
    kind = "mask"
    summary = "deletion/preservation mask learnt by gradient descent (Fong & Vedaldi 2017)"
    scope = "local"
    requires = ("differentiable", "gradients w.r.t. the input")
    input_kinds = ("image",)
    random = True
    test_params = {"iterations": 4}

    @dataclasses.dataclass(frozen=True)
    class Params:
        mode: str = param("deletion", "the game: delete the smallest region that destroys the target's "
                          "probability, or preserve the smallest that keeps it", choices=("deletion", "preservation"))
        perturbation: Component = component(
            "blur", "perturbation", "how the masked-out region is filled: a registered perturbation (settings "
            "nested: perturbation.sigma, default 10 px at 224 px; constant's perturbation.value, default the "
            "middle of the range) or noise (Gaussian around the middle of the range)", special=(NOISE,))
        noise_std: float = param(0.2, "perturbation=noise: standard deviation as a fraction of the input range",
                                 low=0.0)
        lambda1: float = param(1e-4, "L1 weight λ1 (paper: 1e-4)", low=0.0)
        lambda2: float = param(1e-2, "total-variation weight λ2 (paper: 1e-2)", low=0.0)
        beta: float = param(3.0, "total-variation exponent β (paper: 3)", low=1.0)
        factor: int | None = param(None, "mask upsampling factor; None = the shorter side / 28, a mask of 28 "
                                   "cells per side at any size (paper: 8, its 28×28 mask for 224×224)", low=1)
        mask_sigma: float | None = param(None, "blur σ of the upsampled mask in pixels; None = factor / 2", low=0.0)
        jitter: int | None = param(None, "maximal random shift in pixels; None = 4 px at 224 px (at least 1)", low=0)
        init: float = param(0.5, "initial mask value", low=0.0, high=1.0)
        learning_rate: float = learning_rate(0.1, "Adam learning rate (paper: 0.1)")
        iterations: int = iterations(300, "optimisation steps (paper: 300)")
        batch_size: int = batch_size(64, "samples optimised together")

    def attribute(self, model: Model, x: torch.Tensor, targets: torch.Tensor, ctx: Context
                  ) -> torch.Tensor | tuple[torch.Tensor, dict[str, Any]]:
        assert isinstance(model, WhiteBox)  # check_model refused any other model
        p = self.params
        size = (x.shape[-2], x.shape[-1])
        shift = max(1, round(scaled(4.0, min(size)))) if p.jitter is None else p.jitter
        factor = p.factor or max(1, round(min(size) / PAPER_MASK_SIDE))
        mask_sigma = factor / 2 if p.mask_sigma is None else p.mask_sigma
        fill = self.fill(size, model.input_range)
        masks: list[torch.Tensor] = []
        terms: dict[str, list[torch.Tensor]] = {"probability": [], "l1": [], "tv": [], "loss": []}
        for rows in ctx.batches(x.shape[0]):
            m, t = self._optimise(model, x[rows], targets[rows], ctx, fill, shift, factor, mask_sigma)
            masks.append(m)
            for k in terms:
                terms[k].append(t[k])
        mask = torch.cat(masks)
        warn_if_unmoved(self.name, None, mask, "the fill may not change the model's probability here (try another "
                        "perturbation, e.g. perturbation=noise), or use a larger learning_rate or more iterations")
        saliency = 1 - mask if p.mode == "deletion" else mask
        meta = {"mask": mask, **{k: torch.cat(v).tolist() for k, v in terms.items()},
                "mask_shape": list(low_res_shape(size, factor)), "factor": factor,
                "perturbation": {"name": fill.name, **fill.kwargs}, "jitter": shift}
        return saliency, meta

    def fill(self, size: tuple[int, int], input_range: tuple[float, float]) -> Component:
        """``perturbation`` with the paper's values for its unset settings: blur σ = 10 px at 224 px,
        constant value the middle of the range, noise's ``noise_std``."""
        chosen = self.params.perturbation
        lo, hi = input_range
        defaults = {"blur": {"sigma": scaled(10.0, min(size))}, "constant": {"value": (lo + hi) / 2},
                    NOISE: {"noise_std": self.params.noise_std}}.get(chosen.name, {})
        return Component(chosen.name, tuple({**defaults, **chosen.kwargs}.items()))

    @staticmethod
    def _fills(fill: Component, x: torch.Tensor, input_range: tuple[float, float], generator: torch.Generator
               ) -> tuple[Callable[[], torch.Tensor], torch.Tensor | None]:
        """A function giving each iteration's fill (random fills drawn afresh from ``generator``), and
        the final evaluation's fill (None: draw one more)."""
        lo, hi = input_range
        if fill.name == NOISE:
            mean, std = (lo + hi) / 2, fill.kwargs["noise_std"] * (hi - lo)
            return (lambda: mean + std * torch.randn((1, *x.shape[1:]), generator=generator).to(x.device, x.dtype),
                    torch.full((), mean, dtype=x.dtype, device=x.device))
        perturbation = make_perturbation(fill)
        if perturbation.random:
            return (lambda: reference(perturbation, x, input_range, generator, "perturbation")), None
        fixed = reference(perturbation, x, input_range, generator, "perturbation")
        return (lambda: fixed), fixed

    def _optimise(self, model: WhiteBox, x: torch.Tensor, targets: torch.Tensor, ctx: Context, fill: Component,
                  shift: int, factor: int, mask_sigma: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        p = self.params
        size = (x.shape[-2], x.shape[-1])
        generator = ctx.fresh_generator()  # every batch replays the same draws, as its samples alone would
        h, w = low_res_shape(size, factor)
        norm = PAPER_MASK_PIXELS / (h * w)
        low = torch.full((x.shape[0], 1, h, w), p.init, dtype=x.dtype, device=x.device, requires_grad=True)
        optimiser = torch.optim.Adam([low], lr=p.learning_rate)
        draw, final_fill = self._fills(fill, x, model.input_range, generator)
        index = targets[:, None].to(x.device)

        def loss_terms(prob: torch.Tensor, low: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            reg_l1 = norm * l1(1 - low if p.mode == "deletion" else low)
            reg_tv = norm * total_variation(low, p.beta)
            objective = prob if p.mode == "deletion" else 1 - prob
            return reg_l1, reg_tv, objective

        bar = ctx.progress(p.iterations, self.name)
        try:
            for _ in range(p.iterations):
                current = draw()
                tau = random_shift(shift, generator)
                with torch.enable_grad():
                    full = full_mask(low, size, mask_sigma)
                    composite = perturbed(jitter(x, tau), full, jitter(current, tau))
                    prob = torch.softmax(model.forward(composite), dim=1).gather(1, index)[:, 0]
                    reg_l1, reg_tv, objective = loss_terms(prob, low)
                    loss = (p.lambda1 * reg_l1 + p.lambda2 * reg_tv + objective).sum()
                    optimiser.zero_grad()
                    loss.backward()
                optimiser.step()
                with torch.no_grad():
                    low.clamp_(0, 1)
                bar.update(1)
        finally:
            bar.close()
        with torch.no_grad():
            full = full_mask(low, size, mask_sigma)
            last = draw() if final_fill is None else final_fill
            prob = torch.softmax(model.forward(perturbed(x, full, last)), dim=1).gather(1, index)[:, 0]
            reg_l1, reg_tv, objective = loss_terms(prob, low)
            final = p.lambda1 * reg_l1 + p.lambda2 * reg_tv + objective
        return full, {"probability": prob, "l1": reg_l1, "tv": reg_tv, "loss": final}


@hookimpl
def salfw_register_methods(register: Any) -> None:
    register(MeaningfulPerturbation)
