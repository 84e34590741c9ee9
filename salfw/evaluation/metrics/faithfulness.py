"""Faithfulness of attributions to the model's output changes.

* ``completeness`` -- the conservation error ``|sum_i a_i - (f(x) - f(x_0))|`` with ``f`` the
  target's raw score and ``x_0`` the baseline (a registered perturbation, a number or a tensor,
  resolved by :func:`salfw.sdk.reference.reference`; black by default, the usual reference of
  integrated gradients and DeepLIFT). Methods with a completeness axiom (integrated gradients,
  DeepLIFT, LRP-epsilon on a bias-free net) score near 0; lower is better.
* ``sensitivity-n`` -- Ancona, Ceolini, Öztireli & Gross 2018 ("Towards better understanding of
  gradient-based attribution methods"): over ``samples`` random sets S of ``n`` features, the
  Pearson correlation between ``sum_{i in S} a_i`` and ``f(x) - f(x_{S <- x_0})`` (``x_0`` the
  baseline, as for completeness). Features are pixel positions (all channels together). The
  subsets are drawn once per seed and shared by the samples. Higher is better; a linear model
  explained by ``w * (x - x_0)`` scores exactly 1.
* ``infidelity`` -- Yeh, Hsieh, Suggala, Inouye & Ravikumar 2019, following Captum's
  ``captum.metrics.infidelity``: ``E_I[(I . a - (f(x) - f(x - I)))^2]`` over ``samples``
  perturbations ``I ~ N(0, (sigma (hi - lo))^2)`` per pixel (the paper's "noisy baseline"
  perturbation); with ``optimal_scale`` the attributions are first scaled by the optimal
  ``beta = E[I.a (f(x) - f(x-I))] / E[(I.a)^2]`` (Captum's ``normalize=True``; a yes/no choice,
  so it is not the shared ``normalise`` field, which chooses how a map is scaled). Lower is
  better.
* ``max-sensitivity`` -- Yeh et al. 2019, following ``captum.metrics.sensitivity_max``: the
  largest ``||Phi(x + d) - Phi(x)|| / ||Phi(x)||`` (Frobenius norms) over ``samples``
  perturbations ``d ~ U(-radius, radius)`` per pixel (Captum's default: radius 0.02, 10
  samples), re-running the explanation's method on all perturbed inputs in one call. The
  perturbed inputs are clipped to the input range (salfw validates it; Captum does not clip).
  Lower is better.

``f`` is the raw score of the target (the logit for a WhiteBox) unless ``output`` says
"probabilities". All random draws come from the call's CPU generator (``ctx.generator``), with
shapes that exclude the batch, so a batch and its samples one by one score alike, on any device.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from salfw.core.api import explain
from salfw.core.context import Context
from salfw.core.contracts import Metric
from salfw.core.errors import ParameterError
from salfw.core.models import Model
from salfw.core.params import baseline, batch_size, output, param, samples
from salfw.sdk.reference import reference

from .common import pearson, require_explanation, target_output
from .randomization import replay_params


def _feature_sums(attributions: torch.Tensor) -> torch.Tensor:
    """(N, F): attributions summed over channels for images (features are pixel positions)."""
    return attributions.sum(dim=1).flatten(1) if attributions.dim() == 4 else attributions


class Completeness(Metric):
    name = "completeness"
    summary = "|sum of attributions - (f(x) - f(baseline))|, the conservation error; lower is better"
    higher_is_better = False

    @dataclasses.dataclass(frozen=True)
    class Params:
        baseline: object = baseline("black")
        output: str = output("logits", "the target output that should be conserved")
        batch_size: int = batch_size(256, "inputs per forward pass")

    def score(self, model: Model, x: torch.Tensor, attributions: torch.Tensor, targets: torch.Tensor,
              ctx: Context, **context: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        p = self.params
        x0 = reference(p.baseline, x, model.input_range, ctx.generator).expand_as(x)
        both = torch.cat([x, x0])
        out = target_output(model, both, targets.repeat(2), p.output, p.batch_size).view(2, -1)
        difference = out[0] - out[1]
        total = attributions.flatten(1).sum(dim=1)
        return (total - difference).abs(), {"sum": total, "difference": difference}


class SensitivityN(Metric):
    name = "sensitivity-n"
    summary = "Pearson correlation of attribution sums and output drops over random n-subsets (Ancona et al. 2018)"
    higher_is_better = True

    @dataclasses.dataclass(frozen=True)
    class Params:
        n: int = param(20, "features removed together (Ancona et al. sweep n; 20 of MNIST's 784 pixels)", low=1)
        samples: int = samples(100, "random subsets of n features per sample (the paper uses 100)", low=2)
        baseline: object = baseline("black", "what removed features become: a perturbation name ('black', "
                                             "'blur', ...), a number, or a tensor")
        output: str = output("logits", "the target output")
        batch_size: int = batch_size(256, "inputs per forward pass")

    def score(self, model: Model, x: torch.Tensor, attributions: torch.Tensor, targets: torch.Tensor,
              ctx: Context, **context: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        p = self.params
        n, s = x.shape[0], p.samples
        sums = _feature_sums(attributions)
        features = sums.shape[1]
        if p.n > features:
            raise ParameterError(f"sensitivity-n: n={p.n} exceeds the {features} features of the input")
        gen = ctx.generator
        x0 = reference(p.baseline, x, model.input_range, gen).expand_as(x)
        chosen = torch.rand(s, features, generator=gen).to(x.device).argsort(dim=1)[:, :p.n]
        removed = torch.zeros(s, features, dtype=x.dtype, device=x.device).scatter_(1, chosen, 1.0)  # (S, F)
        attribution_sums = sums @ removed.T  # (N, S)
        keep = (1 - removed).view(s, 1, *x.shape[2:]) if x.dim() == 4 else 1 - removed
        perturbed = (x[:, None] * keep + x0[:, None] * (1 - keep)).flatten(0, 1)  # (N*S, ...)
        out = target_output(model, torch.cat([x, perturbed]), torch.cat([targets, targets.repeat_interleave(s)]),
                            p.output, p.batch_size)
        drops = out[:n, None] - out[n:].view(n, s)
        return pearson(attribution_sums, drops, dim=1), {"attribution_sums": attribution_sums, "output_drops": drops}


class Infidelity(Metric):
    name = "infidelity"
    summary = ("E[(I.a - (f(x) - f(x - I)))^2] over Gaussian perturbations I (Yeh et al. 2019, as Captum); "
               "lower is better")
    higher_is_better = False

    @dataclasses.dataclass(frozen=True)
    class Params:
        sigma: float = param(0.1, "perturbation standard deviation as a fraction of the input range", low=0.0)
        samples: int = samples(32, "perturbations per sample (Captum's n_perturb_samples)")
        optimal_scale: bool = param(True, "scale attributions by the optimal beta first (Captum's normalize=True)")
        output: str = output("logits", "the target output")
        batch_size: int = batch_size(256, "inputs per forward pass")

    def score(self, model: Model, x: torch.Tensor, attributions: torch.Tensor, targets: torch.Tensor,
              ctx: Context, **context: Any) -> torch.Tensor:
        p = self.params
        n, s = x.shape[0], p.samples
        lo, hi = model.input_range
        noise = (torch.randn((s, *x.shape[1:]), generator=ctx.generator, dtype=x.dtype)
                 .to(x.device) * p.sigma * (hi - lo))  # (S, ...)
        if attributions.shape[1] != x.shape[1]:  # a channel-free map meets the channel-summed noise
            noise_for_map = noise.sum(dim=1, keepdim=True)
        else:
            noise_for_map = noise
        dot = attributions.flatten(1) @ noise_for_map.flatten(1).T  # (N, S): I . a
        perturbed = (x[:, None] - noise[None]).flatten(0, 1)
        out = target_output(model, torch.cat([x, perturbed]), torch.cat([targets, targets.repeat_interleave(s)]),
                            p.output, p.batch_size)
        change = out[:n, None] - out[n:].view(n, s)
        if p.optimal_scale:
            denom = (dot * dot).mean(dim=1, keepdim=True)
            beta = (dot * change).mean(dim=1, keepdim=True) / torch.where(denom > 0, denom, torch.ones_like(denom))
            dot = dot * beta
        return ((dot - change) ** 2).mean(dim=1)


class MaxSensitivity(Metric):
    name = "max-sensitivity"
    summary = ("max relative change of the map under small input perturbations (Yeh et al. 2019, as Captum); "
               "lower is better")
    higher_is_better = False

    @dataclasses.dataclass(frozen=True)
    class Params:
        radius: float = param(0.02, "L-infinity radius of the uniform perturbations, fraction of the range "
                                    "(Captum's default 0.02)", low=0.0)
        samples: int = samples(10, "perturbations per sample (Captum's default 10)")

    def score(self, model: Model, x: torch.Tensor, attributions: torch.Tensor, targets: torch.Tensor,
              ctx: Context, **context: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        explanation = require_explanation(self.name, context)
        p = self.params
        n, s = x.shape[0], p.samples
        lo, hi = model.input_range
        delta = ((torch.rand((s, *x.shape[1:]), generator=ctx.generator, dtype=x.dtype).to(x.device)
                  * 2 - 1) * p.radius * (hi - lo))
        perturbed = (x[:, None] + delta[None]).clamp(lo, hi).flatten(0, 1)
        again = explain(explanation.method, model, perturbed, targets.repeat_interleave(s), ctx.seed,
                        progress=ctx.show_progress, **replay_params(explanation))
        changed = again.attributions.to(x.dtype).flatten(1).view(n, s, -1)
        original = attributions.flatten(1)
        norms = (changed - original[:, None]).norm(dim=2)
        base = original.norm(dim=1, keepdim=True)
        relative = norms / torch.where(base > 0, base, torch.ones_like(base))
        return relative.max(dim=1).values, {"sensitivities": relative}


FAITHFULNESS = (Completeness, SensitivityN, Infidelity, MaxSensitivity)
