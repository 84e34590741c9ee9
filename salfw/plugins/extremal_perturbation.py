"""Extremal perturbation (Fong, Patrick & Vedaldi 2019, "Understanding deep networks via
extremal perturbations and smooth masks", ICCV). Written after reading TorchRay's
reference implementation (``torchray/attribution/extremal_perturbation.py``);
lengths are TorchRay's scaled from 224 px to the input size; where our defaults
differ from TorchRay's (the area weight's schedule, iterations and learning rate,
the flip jitter) the reason is below, and TorchRay's values are one setting away.

For a target area ``a`` the method finds the smooth mask ``m`` of area ``a`` that
maximises the target's logit ``Φ_c`` of the preserved image (``preserve``), minimises
it on the deleted image (``delete``), or both (``dual``: ``Φ_c(m ⊗ x) − Φ_c((1 − m) ⊗ x)``):

    max_m  reward(m) − λ_t · R_a(m),   R_a(m) = ‖sort(vec m) − r_a‖² / |Ω|

(``reward="contrastive"`` replaces the logit by its margin over the best other class).

* **area constraint** (paper eq. 6): ``r_a`` is the sorted reference vector with a
  fraction ``1 − a`` of zeros then ones, so ``R_a`` is zero exactly when the mask is
  binary with area ``a``. Its weight λ_t grows geometrically from λ_0. TorchRay starts
  at λ_0 = 300 and multiplies by 1.0035 per iteration (to about 4,900 after 800),
  numbers that suit ImageNet logits: on a model whose logit moves by 10 between the
  input and its fully blurred copy, 300 makes the constraint 30 times the reward from
  the first step, and the masks settle where small differences put them (the image's
  corners; about a third of the mass in the one quadrant such a model reads). Our default
  (``area_weight=None``) starts at the reward's own scale, λ_0 = |Φ_c(x) − Φ_c(x̃)|
  per sample, x̃ the most perturbed level (two forward passes), and grows 1000-fold
  over the run whatever the iteration count (``area_growth=None``; TorchRay's
  ratio of its final λ to such a gap is a few hundred): the reward shapes the mask
  first and the constraint then makes it binary with its area (97-100% of the mass
  in the quadrant at 28, 112 and 224 px; ``tests/test_defaults.py``). Set
  ``area_weight=300, area_growth=1.0035`` for TorchRay's schedule. The masks start at
  1, the whole image kept (TorchRay's ``pmask = torch.ones``).
* **smooth masks** (paper sec. 3.3, :class:`salfw.sdk.masks.SmoothMask`): parameters
  ``m̄`` on a grid of stride ``mask_stride`` (7 px at 224 px), and
  ``m(u) = smax_k g(u − u_k) m̄_k`` with the truncated Gaussian kernel
  ``g(z) = exp(−2 max(|z|/σ − ½, 0)²)`` (σ = ``mask_sigma``, 21 px at 224 px) and
  the smooth maximum ``smax(a) = Σ_k a_k softmax(T a)_k`` with temperature T = 20
  (TorchRay's ``MaskGenerator`` with "softmax" pooling).
* **perturbation pyramid** (``pyramid``, TorchRay's ``Perturbation``): ``m ⊗ x``
  interpolates linearly between L = 8 levels blurred with σ_l = σ_max (1 − l/(L − 1))
  (σ_max = 20 px at 224 px): mask 1 keeps the pixel, mask 0 takes the most blurred
  value (``fade``: level l is ``x · l/(L − 1)``, i.e. ``m ⊗ x = m x``, TorchRay's other
  perturbation). A blur keeps local means, so for a network that reads only
  averages use ``fade``. The pyramid is not a registered perturbation: it
  interpolates between levels rather than filling where the mask is 0.
* optimiser: SGD with momentum 0.9 and dampening 0.9, parameters clamped to [0, 1]
  after each step (TorchRay). TorchRay runs 800 iterations at learning rate 0.01; with
  the schedule above 100 iterations at 0.03 reach the same masks on the quadrant
  model at 28, 112 and 224 px, and an iteration costs about a second for three 224 px
  masks on one CPU thread (the smooth max over 81 neighbours of every pixel), so those are the
  defaults (``iterations=800, learning_rate=0.01`` for TorchRay's). TorchRay also
  flips the perturbed image horizontally at every other iteration (``jitter=True``);
  that assumes a model that does not care about left and right (ImageNet networks
  are trained with flips; digit models and the quadrant model are not, and there it
  splits the mask between the region and its mirror image), so it is off by default.

All target areas of a batch's samples are one batch of masks optimised together. The
attributions are the mask of the first area (``combine="first"``) or the sum of
the masks over the areas (``combine="sum"``); every mask is in ``meta["masks"]``
(N, A, H, W), each sample's λ_0 in ``meta["area_weight"]``. In each variant the mask
marks the important region (kept for ``preserve``, deleted for ``delete``), so high =
important. Masks the optimisation did not move give a
:class:`~salfw.core.errors.DegenerateWarning`. Local explanation.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from salfw.core.context import Context
from salfw.core.contracts import Method
from salfw.core.hookspecs import hookimpl
from salfw.core.models import Model, WhiteBox
from salfw.core.params import batch_size, iterations, learning_rate, param
from salfw.sdk.masks import SmoothMask, apply_pyramid, perturbation_pyramid, scaled, warn_if_unmoved

#: The rewards: the target's logit, or its margin over the best other class.
REWARDS = ("logits", "contrastive")
#: How much the default area weight grows over the whole run (λ_T = GROWTH · λ_0, whatever the
#: iteration count). TorchRay grows 300 by 1.0035 per iteration to about 4900 after 800 iterations.
GROWTH = 1000.0


def area_reference(areas: tuple[float, ...], pixels: int, device: torch.device | str, dtype: torch.dtype
                   ) -> torch.Tensor:
    """Sorted reference vectors r_a (A, |Ω|): ``int(|Ω|(1 − a))`` zeros then ones (TorchRay)."""
    ref = torch.ones(len(areas), pixels, dtype=dtype, device=device)
    for i, a in enumerate(areas):
        ref[i, :int(pixels * (1 - a))] = 0
    return ref


def area_loss(mask: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """The ranking loss ``mean((sort(vec m) − r_a)²)`` per mask; ``reference`` broadcasts (K, |Ω|)."""
    return ((mask.flatten(1).sort(dim=1).values - reference) ** 2).mean(dim=1)


class ExtremalPerturbation(Method):
    name = "extremal-perturbation"
    box = "white"
    kind = "mask"
    summary = "smooth masks of fixed areas maximising the target (Fong, Patrick & Vedaldi 2019)"
    scope = "local"
    requires = ("differentiable", "gradients w.r.t. the input")
    input_kinds = ("image",)
    random = False
    test_params = {"iterations": 4, "areas": (0.1, 0.3)}

    @dataclasses.dataclass(frozen=True)
    class Params:
        areas: tuple[float, ...] = param((0.05, 0.1, 0.2), "target areas, as fractions of the image, "
                                         "optimised together", low=0.0, high=1.0)
        variant: str = param("preserve", "preserve the region, delete it, or both (dual)",
                             choices=("preserve", "delete", "dual"))
        pyramid: str = param("blur", "perturbation pyramid: blur levels, or fade to 0 (TorchRay's two "
                             "perturbations)", choices=("blur", "fade"))
        reward: str = param(REWARDS[0], "the target's logits (TorchRay's simple reward) or its margin over "
                            "the best other class (contrastive)", choices=REWARDS)
        combine: str = param("first", "attributions: the first area's mask, or the sum of the areas' masks",
                             choices=("first", "sum"))
        mask_stride: int | None = param(None, "smooth-mask parameter stride in pixels; None = 7 px at 224 px "
                                        "(at least 1)", low=1)
        mask_sigma: float | None = param(None, "smooth-mask kernel σ in pixels; None = 21 px at 224 px", low=0.0)
        max_blur: float | None = param(None, "pyramid's largest blur σ in pixels; None = 20 px at 224 px", low=0.0)
        levels: int = param(8, "pyramid levels (TorchRay: 8)", low=2)
        area_weight: float | None = param(None, "initial area-constraint weight λ_0; None = the reward's gap "
                                          "between the input and its fully perturbed copy, per sample "
                                          "(TorchRay: 300, for ImageNet logits)", low=0.0)
        area_growth: float | None = param(None, "per-iteration growth of the area weight; None = 1000-fold "
                                          "over the run, whatever `iterations` (TorchRay: 1.0035)", low=1.0)
        init: float = param(1.0, "initial mask parameters (TorchRay: 1, the whole image kept)", low=0.0, high=1.0)
        learning_rate: float = learning_rate(0.03, "SGD learning rate (TorchRay: 0.01)")
        momentum: float = param(0.9, "SGD momentum and dampening (TorchRay: 0.9)", low=0.0, high=1.0)
        iterations: int = iterations(100, "optimisation steps (TorchRay: 800)")
        jitter: bool = param(False, "flip the perturbed image horizontally at every other iteration (TorchRay: "
                             "True; only for models that do not care about left and right)")
        batch_size: int = batch_size(32, "samples optimised together (each with all its areas)")

    def attribute(self, model: Model, x: torch.Tensor, targets: torch.Tensor, ctx: Context
                  ) -> torch.Tensor | tuple[torch.Tensor, dict[str, Any]]:
        assert isinstance(model, WhiteBox)  # check_model refused any other model
        p = self.params
        size = (x.shape[-2], x.shape[-1])
        stride = max(1, round(scaled(7.0, min(size)))) if p.mask_stride is None else p.mask_stride
        sigma = scaled(21.0, min(size)) if p.mask_sigma is None else p.mask_sigma
        max_blur = scaled(20.0, min(size)) if p.max_blur is None else p.max_blur
        smooth = SmoothMask(size, stride, max(sigma, 1e-6), x.device, x.dtype)
        masks, rewards, regs, weights = [], [], [], []
        for rows in ctx.batches(x.shape[0]):
            m, r, a, w = self._optimise(model, x[rows], targets[rows], smooth, max_blur, ctx)
            masks.append(m)
            rewards.append(r)
            regs.append(a)
            weights.append(w)
        every = torch.cat(masks)                                   # (N, A, H, W)
        warn_if_unmoved(self.name, smooth(smooth.parameters_like(1, p.init, x.device, x.dtype))[0], every,
                        "the perturbation may not change the target's score (try pyramid=fade or a larger "
                        "max_blur), or use a larger learning_rate or more iterations")
        attributions = every[:, :1] if p.combine == "first" else every.sum(dim=1, keepdim=True)
        meta = {"masks": every, "areas": list(p.areas), "reward": torch.cat(rewards).tolist(),
                "area_loss": torch.cat(regs).tolist(), "area_weight": torch.cat(weights).tolist(),
                "mask_stride": stride, "mask_sigma": sigma, "max_blur": max_blur}
        return attributions, meta

    def _reward(self, logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        score = logits.gather(1, index)[:, 0]
        if self.params.reward == "contrastive":
            others = logits.scatter(1, index, float("-inf"))
            score = score - others.max(dim=1).values
        return score

    def _gap(self, model: WhiteBox, pyramid: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The reward's range per sample, ``|Φ_c(x) − Φ_c(fully perturbed x)|`` (two forward passes), the
        scale of the default area weight; a sample whose perturbation changes nothing gets a tiny floor."""
        with torch.no_grad():
            both = torch.cat((pyramid[:, -1], pyramid[:, 0]))  # the input and its most perturbed level
            index = targets.to(both.device).repeat(2)[:, None]
            scores = self._reward(model.forward(both), index)
        n = pyramid.shape[0]
        return (scores[:n] - scores[n:]).abs().clamp(min=1e-6)

    def _optimise(self, model: WhiteBox, x: torch.Tensor, targets: torch.Tensor, smooth: SmoothMask, max_blur: float,
                  ctx: Context) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        p = self.params
        n, a = x.shape[0], len(p.areas)
        pyramid = perturbation_pyramid(x, p.levels, max_blur, p.pyramid).repeat_interleave(a, dim=0)  # (N·A, L, ...)
        index = targets.to(x.device).repeat_interleave(a)[:, None]
        reference = area_reference(p.areas, x.shape[-2] * x.shape[-1], x.device, x.dtype).repeat(n, 1)
        pmask = smooth.parameters_like(n * a, p.init, x.device, x.dtype).requires_grad_(True)
        optimiser = torch.optim.SGD([pmask], lr=p.learning_rate, momentum=p.momentum, dampening=p.momentum)
        if p.area_weight is None:
            weight = self._gap(model, pyramid[::a], targets).repeat_interleave(a)  # (N·A,)
        else:
            weight = torch.full((n * a,), p.area_weight, dtype=x.dtype, device=x.device)
        start = weight.view(n, a)[:, 0]
        growth = GROWTH ** (1 / p.iterations) if p.area_growth is None else p.area_growth

        def energy_terms(mask: torch.Tensor, flip: bool) -> tuple[torch.Tensor, torch.Tensor]:
            if p.variant == "dual":
                inputs = torch.cat((apply_pyramid(pyramid, mask), apply_pyramid(pyramid, 1 - mask)))
            else:
                inputs = apply_pyramid(pyramid, mask if p.variant == "preserve" else 1 - mask)
            if flip:
                inputs = torch.flip(inputs, dims=(3,))
            scores = self._reward(model.forward(inputs), index.repeat(2, 1) if p.variant == "dual" else index)
            if p.variant == "dual":
                reward = scores[:n * a] - scores[n * a:]
            else:
                reward = scores if p.variant == "preserve" else -scores
            return reward, area_loss(mask, reference)

        bar = ctx.progress(p.iterations, self.name)
        try:
            for t in range(p.iterations):
                with torch.enable_grad():
                    mask = smooth(pmask)
                    reward, reg = energy_terms(mask, p.jitter and t % 2 == 0)
                    loss = -(reward - weight * reg).sum()
                    optimiser.zero_grad()
                    loss.backward()
                optimiser.step()
                with torch.no_grad():
                    pmask.clamp_(0, 1)
                weight = weight * growth
                bar.update(1)
        finally:
            bar.close()
        with torch.no_grad():
            mask = smooth(pmask)
            reward, reg = energy_terms(mask, False)
        shape = (n, a)
        return mask.reshape(*shape, *x.shape[-2:]), reward.reshape(shape), reg.reshape(shape), start


@hookimpl
def salfw_register_methods(register: Any) -> None:
    register(ExtremalPerturbation)
