"""Extremal perturbation (Fong, Patrick & Vedaldi 2019, "Understanding deep networks via
extremal perturbations and smooth masks", ICCV). Written after reading TorchRay's
reference implementation (``torchray/attribution/extremal_perturbation.py``);
defaults are TorchRay's, lengths scaled from 224 px to the input size.

For a target area ``a`` the method finds the smooth mask ``m`` of area ``a`` that
maximises the target's logit ``Φ_c`` of the preserved image (``preserve``), minimises
it on the deleted image (``delete``), or both (``dual``: ``Φ_c(m ⊗ x) − Φ_c((1 − m) ⊗ x)``):

    max_m  reward(m) − λ_t · R_a(m),   R_a(m) = ‖sort(vec m) − r_a‖² / |Ω|

* **area constraint** (paper eq. 6): ``r_a`` is the sorted reference vector with a
  fraction ``1 − a`` of zeros then ones, so ``R_a`` is zero exactly when the mask is
  binary with area ``a``; its weight starts at λ_0 = 300 and grows by 1.0035 per
  iteration (TorchRay).
* **smooth masks** (paper sec. 3.3): parameters ``m̄`` on a grid of stride ``step``
  (7 px at 224 px), and ``m(u) = smax_k g(u − u_k) m̄_k`` with the truncated
  Gaussian kernel ``g(z) = exp(−2 max(|z|/σ − ½, 0)²)`` (σ = 21 px at 224 px) and
  the smooth maximum ``smax(a) = Σ_k a_k softmax(T a)_k`` with temperature T = 20
  (TorchRay's ``MaskGenerator`` with "softmax" pooling).
* **blur-pyramid perturbation**: ``m ⊗ x`` interpolates linearly between L = 8
  levels blurred with σ_l = σ_max (1 − l/(L − 1)) (σ_max = 20 px at 224 px):
  mask 1 keeps the pixel, mask 0 takes the most blurred value (``fade``: level l
  is ``x · l/(L − 1)``, i.e. ``m ⊗ x = m x``, TorchRay's other perturbation). A blur
  keeps local means, so for a network that reads only averages use ``fade``.
* optimiser (TorchRay): SGD, learning rate 0.01, momentum 0.9 with dampening 0.9,
  800 iterations, parameters clamped to [0, 1] after each step, jitter by a
  horizontal flip of the perturbed image at every other iteration.

All target areas of all samples are one batch of masks optimised together. The
attributions are the mask of the first area (``output="first"``) or the sum of
the masks over the areas (``output="sum"``); every mask is in ``meta["masks"]``
(N, A, H, W). In each variant the mask marks the important region (kept for
``preserve``, deleted for ``delete``), so high = important. Local explanation.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from salfw.core.contracts import Method
from salfw.core.hookspecs import hookimpl
from salfw.core.params import param

from salfw.sdk.masks import gaussian_blur, scaled

COLDNESS = 20.0


def smooth_kernel(z: torch.Tensor) -> torch.Tensor:
    """TorchRay's truncated Gaussian ``exp(−2 max(z − ½, 0)²)`` of a normalised distance ``z``."""
    return torch.exp(-2 * (z - 0.5).clamp(min=0) ** 2)


class SmoothMask:
    """The paper's smooth-mask family: max-convolution of a coarse parameter grid.

    Parameters ``m̄`` (N, 1, ceil(H/step), ceil(W/step)) sit on nodes at pixel
    centres ``step·j + (step − 1)/2``. Each output pixel pools, with the smooth
    maximum, the kernel-weighted values of the (2r+1)² nodes around its cell,
    r = 1 + ceil(σ/step). Nodes outside the grid count as 0.
    """

    def __init__(self, shape: tuple[int, int], step: int, sigma: float, device, dtype):
        self.shape, self.step, self.sigma = shape, step, sigma
        self.shape_in = tuple(math.ceil(s / step) for s in shape)
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

    def parameters_like(self, n: int, value: float, device, dtype) -> torch.Tensor:
        return torch.full((n, 1, *self.shape_in), value, dtype=dtype, device=device)

    def __call__(self, pmask: torch.Tensor) -> torch.Tensor:
        n = pmask.shape[0]
        width = 2 * self.radius + 1
        neighbours = F.unfold(pmask, width, padding=self.radius).reshape(n, width * width, *self.shape_in)
        neighbours = neighbours.repeat_interleave(self.step, dim=2).repeat_interleave(self.step, dim=3)
        weighted = self.weight * neighbours[:, :, :self.shape[0], :self.shape[1]]
        pooled = (weighted * torch.softmax(COLDNESS * weighted, dim=1)).sum(dim=1, keepdim=True)
        return pooled.clamp(0, 1)


def perturbation_pyramid(x: torch.Tensor, levels: int, max_blur: float, kind: str = "blur") -> torch.Tensor:
    """(N, L, C, H, W), the last level being ``x`` (TorchRay's ``Perturbation``): for "blur", level l
    is blurred with σ = max_blur (1 − l/(L − 1)); for "fade" it is ``x · l/(L − 1)`` (fade to black, 0)."""
    fractions = [level / (levels - 1) for level in range(levels)]
    if kind == "fade":
        return torch.stack([x * f for f in fractions], dim=1)
    return torch.stack([gaussian_blur(x, max_blur * (1 - f)) for f in fractions], dim=1)


def apply_pyramid(pyramid: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Perturb with a mask in [0, 1] (K, 1, H, W) by linear interpolation across the K pyramids' levels."""
    levels = pyramid.shape[1]
    position = mask * (levels - 1)                                   # (K, 1, H, W)
    index = torch.arange(levels, dtype=mask.dtype, device=mask.device).view(1, levels, 1, 1, 1)
    weight = (1 - (position[:, None] - index).abs()).clamp(min=0)   # (K, L, 1, H, W)
    return (weight * pyramid).sum(dim=1)


def area_reference(areas: tuple[float, ...], pixels: int, device, dtype) -> torch.Tensor:
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
        perturbation: str = param("blur", "blur pyramid, or fade to 0 (TorchRay's two perturbations)",
                                  choices=("blur", "fade"))
        reward: str = param("logit", "the target's logit (TorchRay's simple reward) or its margin over "
                            "the best other class (contrastive)", choices=("logit", "contrastive"))
        output: str = param("first", "attributions: the first area's mask, or the sum over areas",
                            choices=("first", "sum"))
        step: int | None = param(None, "mask parameter stride in pixels; None = 7 px at 224 px (at least 1)", low=1)
        sigma: float | None = param(None, "smooth-mask kernel σ in pixels; None = 21 px at 224 px", low=0.0)
        max_blur: float | None = param(None, "pyramid's largest blur σ in pixels; None = 20 px at 224 px", low=0.0)
        levels: int = param(8, "blur pyramid levels (TorchRay: 8)", low=2)
        area_weight: float = param(300.0, "initial area-constraint weight λ_0 (TorchRay: 300)", low=0.0)
        area_growth: float = param(1.0035, "per-iteration growth of the area weight (TorchRay: 1.0035)", low=1.0)
        learning_rate: float = param(0.01, "SGD learning rate (TorchRay: 0.01)", low=0.0)
        momentum: float = param(0.9, "SGD momentum and dampening (TorchRay: 0.9)", low=0.0, high=1.0)
        iterations: int = param(800, "optimisation steps (TorchRay: 800)", low=1)
        jitter: bool = param(True, "flip the perturbed image horizontally at every other iteration")
        batch_size: int = param(32, "samples optimised together (each with all its areas)", low=1)

    def attribute(self, model, x, targets, ctx):
        seed = ctx.seed
        p = self.params
        size = tuple(x.shape[-2:])
        step = max(1, round(scaled(7.0, min(size)))) if p.step is None else p.step
        sigma = scaled(21.0, min(size)) if p.sigma is None else p.sigma
        max_blur = scaled(20.0, min(size)) if p.max_blur is None else p.max_blur
        generator = SmoothMask(size, step, max(sigma, 1e-6), x.device, x.dtype)
        masks, rewards, regs = [], [], []
        for start in range(0, x.shape[0], p.batch_size):
            m, r, a = self._optimise(model, x[start:start + p.batch_size], targets[start:start + p.batch_size],
                                     generator, max_blur)
            masks.append(m)
            rewards.append(r)
            regs.append(a)
        masks = torch.cat(masks)                                   # (N, A, H, W)
        attributions = masks[:, :1] if p.output == "first" else masks.sum(dim=1, keepdim=True)
        meta = {"masks": masks, "areas": list(p.areas), "reward": torch.cat(rewards).tolist(),
                "area_loss": torch.cat(regs).tolist(), "step": step, "sigma": sigma, "max_blur": max_blur}
        return attributions, meta

    def _reward(self, logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        score = logits.gather(1, index)[:, 0]
        if self.params.reward == "contrastive":
            others = logits.scatter(1, index, float("-inf"))
            score = score - others.max(dim=1).values
        return score

    def _optimise(self, model, x, targets, generator: SmoothMask, max_blur: float):
        p = self.params
        n, a = x.shape[0], len(p.areas)
        pyramid = perturbation_pyramid(x, p.levels, max_blur, p.perturbation).repeat_interleave(a, dim=0)   # (N·A, L, C, H, W)
        index = targets.to(x.device).repeat_interleave(a)[:, None]
        reference = area_reference(p.areas, x.shape[-2] * x.shape[-1], x.device, x.dtype).repeat(n, 1)
        pmask = generator.parameters_like(n * a, 0.5, x.device, x.dtype).requires_grad_(True)
        optimiser = torch.optim.SGD([pmask], lr=p.learning_rate, momentum=p.momentum, dampening=p.momentum)
        weight = p.area_weight

        def energy_terms(mask, flip):
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

        for t in range(p.iterations):
            with torch.enable_grad():
                mask = generator(pmask)
                reward, reg = energy_terms(mask, p.jitter and t % 2 == 0)
                loss = -(reward - weight * reg).sum()
                optimiser.zero_grad()
                loss.backward()
            optimiser.step()
            with torch.no_grad():
                pmask.clamp_(0, 1)
            weight *= p.area_growth
        with torch.no_grad():
            mask = generator(pmask)
            reward, reg = energy_terms(mask, False)
        shape = (n, a)
        return mask.reshape(*shape, *x.shape[-2:]), reward.reshape(shape), reg.reshape(shape)


def inputs_count(masks: int, variant: str) -> int:
    """Images evaluated per iteration: one per mask, two for the dual variant."""
    return 2 * masks if variant == "dual" else masks


@hookimpl
def salfw_register_methods(register):
    register(ExtremalPerturbation)
