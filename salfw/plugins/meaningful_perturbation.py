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

where ``f_c`` is the target's softmax probability and τ a random jitter. The
regularisers are sums over the low-resolution mask, normalised to the paper's
28×28 mask (multiplied by 784 / (h·w)) so that λ1 and λ2 keep their meaning at
any input size. Paper defaults, all parameters: Adam with learning rate 0.1, 300
iterations, mask upsampling factor 8 (a 28×28 mask for 224×224; ``ceil(H/8)``,
i.e. 4×4 on MNIST — use ``factor=4`` for a 7×7 mask), blur perturbation with
σ = 10 px at 224 px scaled to the input (1.25 px on MNIST), jitter of up to
4 px at 224 px (at least 1 px). Our choices (not fixed by the paper): the mask
starts at ``init`` = 0.5, the upsampled mask is blurred with σ = factor / 2,
the ``constant`` fill defaults to the middle of the input range, and ``noise``
draws i.i.d. Gaussian noise around it (standard deviation ``noise_std`` of the
range) afresh at each iteration.

Output convention: attributions are a saliency where high = important, i.e.
``1 − m`` for the deletion game (the deleted region) and ``m`` for the
preservation game (the kept region); the mask itself is in ``meta["mask"]``.
Each sample's loss depends only on that sample, the batch is optimised as one
tensor with one Adam optimiser, and random draws (jitter, noise) are shared by
all samples, so a batch gives the same masks as its samples one by one. Local
explanation.
"""

from __future__ import annotations

import dataclasses

import torch

from salfw.core.contracts import Method
from salfw.core.hookspecs import hookimpl
from salfw.core.params import param

from salfw.sdk.masks import gaussian_blur, jitter, l1, low_res_shape, scaled, total_variation, upsample

PAPER_MASK_PIXELS = 28 * 28


def perturbed(x: torch.Tensor, mask: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """``Φ(x; m) = m ⊙ x + (1 − m) ⊙ fill``."""
    return mask * x + (1 - mask) * fill


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
        perturbation: str = param("blur", "how the masked-out region is filled", choices=("blur", "constant", "noise"))
        sigma: float | None = param(None, "blur σ in pixels; None = 10 px at 224 px scaled to the input", low=0.0)
        value: float | None = param(None, "constant fill (and noise mean); None = middle of the input range")
        noise_std: float = param(0.2, "noise standard deviation as a fraction of the input range", low=0.0)
        lambda1: float = param(1e-4, "L1 weight λ1 (paper: 1e-4)", low=0.0)
        lambda2: float = param(1e-2, "total-variation weight λ2 (paper: 1e-2)", low=0.0)
        beta: float = param(3.0, "total-variation exponent β (paper: 3)", low=1.0)
        factor: int = param(8, "mask upsampling factor (paper: 8, a 28×28 mask for 224×224)", low=1)
        mask_sigma: float | None = param(None, "blur σ of the upsampled mask in pixels; None = factor / 2", low=0.0)
        jitter: int | None = param(None, "maximal random shift in pixels; None = 4 px at 224 px (at least 1)", low=0)
        init: float = param(0.5, "initial mask value", low=0.0, high=1.0)
        learning_rate: float = param(0.1, "Adam learning rate (paper: 0.1)", low=0.0)
        iterations: int = param(300, "optimisation steps (paper: 300)", low=1)
        batch_size: int = param(64, "samples optimised together", low=1)

    def attribute(self, model, x, targets, ctx):
        seed = ctx.seed
        p = self.params
        size = x.shape[-2:]
        lo, hi = model.input_range
        sigma = scaled(10.0, min(size)) if p.sigma is None else p.sigma
        shift = max(1, round(scaled(4.0, min(size)))) if p.jitter is None else p.jitter
        mask_sigma = p.factor / 2 if p.mask_sigma is None else p.mask_sigma
        value = (lo + hi) / 2 if p.value is None else min(max(p.value, lo), hi)
        masks, terms = [], {"probability": [], "l1": [], "tv": [], "loss": []}
        for start in range(0, x.shape[0], p.batch_size):
            m, t = self._optimise(model, x[start:start + p.batch_size], targets[start:start + p.batch_size], seed,
                                  sigma, shift, mask_sigma, value)
            masks.append(m)
            for k in terms:
                terms[k].append(t[k])
        mask = torch.cat(masks)
        saliency = 1 - mask if p.mode == "deletion" else mask
        meta = {"mask": mask, **{k: torch.cat(v).tolist() for k, v in terms.items()},
                "mask_shape": list(low_res_shape(tuple(size), p.factor)), "blur_sigma": sigma, "jitter": shift}
        return saliency, meta

    def _full_mask(self, low: torch.Tensor, size, mask_sigma: float) -> torch.Tensor:
        return gaussian_blur(upsample(low, tuple(size)), mask_sigma).clamp(0, 1)

    def _optimise(self, model, x, targets, seed, sigma, shift, mask_sigma, value):
        p = self.params
        lo, hi = model.input_range
        generator = torch.Generator().manual_seed(seed)
        h, w = low_res_shape(tuple(x.shape[-2:]), p.factor)
        norm = PAPER_MASK_PIXELS / (h * w)
        low = torch.full((x.shape[0], 1, h, w), p.init, dtype=x.dtype, device=x.device, requires_grad=True)
        optimiser = torch.optim.Adam([low], lr=p.learning_rate)
        blurred = gaussian_blur(x, sigma) if p.perturbation == "blur" else None
        index = targets[:, None].to(x.device)

        def loss_terms(prob, low):
            reg_l1 = norm * l1(1 - low if p.mode == "deletion" else low)
            reg_tv = norm * total_variation(low, p.beta)
            objective = prob if p.mode == "deletion" else 1 - prob
            return reg_l1, reg_tv, objective

        for _ in range(p.iterations):
            if p.perturbation == "blur":
                fill = blurred
            elif p.perturbation == "constant":
                fill = torch.full((), value, dtype=x.dtype, device=x.device)
            else:
                noise = torch.randn((1, *x.shape[1:]), generator=generator).to(x.device, x.dtype)
                fill = value + p.noise_std * (hi - lo) * noise
            with torch.enable_grad():
                full = self._full_mask(low, x.shape[-2:], mask_sigma)
                composite = jitter(perturbed(x, full, fill), shift, generator)
                prob = torch.softmax(model.forward(composite), dim=1).gather(1, index)[:, 0]
                reg_l1, reg_tv, objective = loss_terms(prob, low)
                loss = (p.lambda1 * reg_l1 + p.lambda2 * reg_tv + objective).sum()
                optimiser.zero_grad()
                loss.backward()
            optimiser.step()
            with torch.no_grad():
                low.clamp_(0, 1)
        with torch.no_grad():
            full = self._full_mask(low, x.shape[-2:], mask_sigma)
            fill = blurred if p.perturbation == "blur" else torch.full((), value, dtype=x.dtype, device=x.device)
            prob = torch.softmax(model.forward(perturbed(x, full, fill)), dim=1).gather(1, index)[:, 0]
            reg_l1, reg_tv, objective = loss_terms(prob, low)
            loss = p.lambda1 * reg_l1 + p.lambda2 * reg_tv + objective
        return full, {"probability": prob, "l1": reg_l1, "tv": reg_tv, "loss": loss}


@hookimpl
def salfw_register_methods(register):
    register(MeaningfulPerturbation)
