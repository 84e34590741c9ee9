"""Path-integral attributions: integrated gradients and expected gradients.

* ``integrated-gradients`` (Sundararajan, Taly & Yan 2017, "Axiomatic attribution
  for deep networks"): for a baseline ``x'``,

      IG_i(x) = (x_i − x'_i) · ∫₀¹ ∂f_c(x' + α (x − x')) / ∂x_i dα
              ≈ (x_i − x'_i) · Σ_k w_k ∂f_c(x' + α_k (x − x')) / ∂x_i

  with the quadrature ``rule``: Riemann left (α_k = k/m), right (α_k = (k+1)/m,
  the paper's formula), middle, trapezoid (α_k = k/(m−1), end weights halved;
  exact for linear integrands) or Gauss–Legendre (numpy's ``leggauss`` nodes
  mapped from [−1, 1] to [0, 1], weights halved; Captum's default and ours).
  ``steps`` defaults to 50, as in Captum (the paper suggests 20 to 300).
  Completeness says ``Σ_i IG_i = f_c(x) − f_c(x')``; the quadrature's error,
  ``Σ_i IG_i − (f_c(x) − f_c(x'))`` per sample, is returned as
  ``meta["convergence_delta"]`` (Captum's ``return_convergence_delta``).
  Baselines (``baseline``), resolved by :func:`salfw.sdk.reference.reference`:
  the name of a registered perturbation (``black``, the paper's choice for
  images and the default; ``white``, ``mean``, ``uniform-noise`` (seeded, one
  draw shared by the batch), ``blur`` with sigma 5, ...), with settings as a
  :class:`~salfw.core.params.Component` or a
  :class:`~salfw.core.contracts.Perturbation` instance (e.g.
  ``make_perturbation("blur", sigma=2)``), a number (a constant input), or a
  tensor shaped like one sample or like the batch. Local explanation.

  Captum's ``riemann_trapezoid`` uses weights 1/m (ends halved), which sum to
  (m−1)/m rather than 1, so its trapezoid attributions are ours times (m−1)/m;
  every other rule agrees with Captum.

* ``expected-gradients`` (Erion, Janizek, Sturmfels, Lundberg & Lee 2019/2021,
  "Improving performance of deep learning models with axiomatic attribution
  priors and expected gradients"): integrated gradients averaged over baselines
  ``x'`` drawn from a reference distribution, estimated by Monte Carlo with one
  uniform ``α`` per draw,

      EG_i(x) = E_{x'∼D, α∼U(0,1)} [ (x_i − x'_i) · ∂f_c(x' + α (x − x')) / ∂x_i ]
              ≈ (1/S) Σ_j (x_i − x'_j) · ∂f_c(x'_j + α_j (x − x'_j)) / ∂x_i .

  The distribution ``baseline`` (drawn by :func:`salfw.sdk.reference.draws`) is
  a data set of reference inputs, a tensor (M, ...) whose rows are drawn
  uniformly: the paper draws them from the training set (for the built-in
  MNIST models, your own training digits or ``salfw.zoo.samples.load_samples()[0]``).
  The default, ``"uniform-noise"``, draws each reference as uniform noise over
  ``input_range``, so that the method runs on any model without data; any other
  random perturbation is drawn anew per draw too, and a fixed baseline
  (``black``, a number, a tensor shaped like one sample) makes expected
  gradients a Monte Carlo estimate of integrated gradients from it. The S
  (reference, α) pairs are drawn once from the seed (references first, then
  the α) and shared by every sample of the batch. ``samples`` defaults to 200
  (the paper reports that a single sample per training step suffices for its
  attribution priors; for a stable explanation of one input it uses hundreds).
  It is Captum's ``GradientShap`` with ``stdevs=0``.
  ``meta["convergence_delta"]`` is ``Σ_i EG_i − (f_c(x) − mean_j f_c(x'_j))``,
  zero in expectation (completeness holds in expectation only). Local
  explanation.

All steps × samples path points run through
:func:`~salfw.sdk.backprop.target_gradient` in chunks (``ctx.batches``). The chunk is
``batch_size`` points when given; by default it is as many points as fit in
``memory_gib`` GiB (1 by default) of the activations autograd keeps for the backward
pass, measured on one sample (:func:`salfw.sdk.memory.budget_chunk`: one more forward
pass). A fixed 128 points was a few MiB on a digit but 10 GiB for 224 px photos on
EfficientNet-Lite0 (78 MiB per point; 11 GB peak RSS for 4 photos); with the budget
integrated gradients on 4 such photos peaks at 1.6 GB (``docs/results/memory.md``).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np
import torch

from salfw.core.context import Context
from salfw.core.contracts import Method
from salfw.core.errors import ParameterError
from salfw.core.hookspecs import hookimpl
from salfw.core.models import Model, WhiteBox
from salfw.core.params import baseline, batch_size, param, samples, steps
from salfw.sdk.backprop import target_gradient
from salfw.sdk.memory import budget_chunk
from salfw.sdk.reference import check, draws, reference

#: The default budget of activations per forward/backward pass, in GiB (see the module docstring).
MEMORY_GIB = 1.0

RULES = ("gauss-legendre", "riemann-left", "riemann-right", "riemann-middle", "riemann-trapezoid")


@functools.lru_cache(maxsize=32)
def quadrature(rule: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes ``α_k`` in [0, 1] and weights ``w_k`` (summing to 1) of ``∫₀¹ g(α) dα ≈ Σ w_k g(α_k)``.

    Cached (numpy's ``leggauss`` solves an eigenproblem of size ``steps``); the arrays are read-only.
    """
    if rule == "gauss-legendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        nodes, weights = 0.5 * (nodes + 1.0), 0.5 * weights
    elif rule == "riemann-trapezoid":
        if steps < 2:
            raise ParameterError("rule 'riemann-trapezoid' needs steps >= 2 (both end points), got 1")
        nodes, weights = np.arange(steps) / (steps - 1), np.full(steps, 1.0 / (steps - 1))
        weights[[0, -1]] /= 2
    else:
        offset = {"riemann-left": 0.0, "riemann-middle": 0.5, "riemann-right": 1.0}[rule]
        nodes, weights = (np.arange(steps) + offset) / steps, np.full(steps, 1.0 / steps)
    nodes.flags.writeable = weights.flags.writeable = False
    return nodes, weights


def path_gradients(model: WhiteBox, starts: torch.Tensor, x: torch.Tensor, targets: torch.Tensor,
                   alphas: torch.Tensor, weights: torch.Tensor, ctx: Context, size: int,
                   times_difference: bool) -> torch.Tensor:
    """``Σ_k w_k · g_k`` per sample, with ``g_k = ∂f(s_k + α_k (x − s_k))/∂x``, times ``(x − s_k)``
    inside the sum when ``times_difference`` (expected gradients).

    ``starts`` has shape (K or 1, N or 1, *sample shape): one start point per step
    or one for all, per sample or shared. The N × K path points (sample-major) are
    built and differentiated in chunks of ``size``; each point's term is added to its
    sample's sum in step order.
    """
    n, k = x.shape[0], alphas.shape[0]
    starts = starts.expand(k, n, *x.shape[1:])
    ones = (1,) * (x.dim() - 1)
    total = torch.zeros_like(x)
    for sl in ctx.batches(n * k, size, unit="points"):
        point = torch.arange(sl.start, sl.stop, device=x.device)
        i, j = point // k, point % k  # sample, step
        start = starts[j, i]
        diff = x[i] - start
        grads = target_gradient(model, start + alphas[j].view(-1, *ones) * diff, targets[i])
        if times_difference:
            grads = grads * diff
        total.index_add_(0, i, weights[j].view(-1, *ones) * grads)
    return total


def mean_target_scores(model: Model, inputs: torch.Tensor, targets: torch.Tensor, size: int) -> torch.Tensor:
    """``mean_j f_c(inputs_j)`` per sample (no gradients), for inputs shaped (S, 1 or N, *sample shape)."""
    s, shared = inputs.shape[0], inputs.shape[1] == 1
    scores = model.scores(inputs.flatten(0, 1), size).view(s, inputs.shape[1], -1)
    scores = scores.expand(s, targets.shape[0], -1) if shared else scores
    return scores.gather(2, targets.to(scores.device).view(1, -1, 1).expand(s, -1, 1))[..., 0].mean(0)


class IntegratedGradients(Method):
    name = "integrated-gradients"
    box = "white"
    kind = "additive"
    summary = "integrated gradients along the path from a baseline (Sundararajan et al. 2017)"
    scope = "local"
    per_feature_ranges = True  # the baseline is a perturbation's fill: black is each feature's low
    test_params = {"steps": 8}

    @dataclasses.dataclass(frozen=True)
    class Params:
        baseline: object = baseline("black", "a perturbation name (black, white, mean, uniform-noise, blur, ...), "
                                             "a number, or a tensor shaped like one sample or the batch")
        steps: int = steps(50, "quadrature points along the path (Captum's default 50)")
        rule: str = param("gauss-legendre", "quadrature rule", choices=RULES)
        batch_size: int | None = batch_size(None, "path points per forward/backward pass; None: as many as "
                                                  "memory_gib allows")
        memory_gib: float = param(MEMORY_GIB, "GiB of activations one forward/backward pass may keep, which "
                                  "sets the chunk of path points when batch_size is None", low=0.0)

    def __init__(self, params: Any):
        super().__init__(params)
        if params.rule == "riemann-trapezoid" and params.steps < 2:
            raise ParameterError("rule 'riemann-trapezoid' needs steps >= 2 (both end points), got 1")
        check(params.baseline, "baseline")

    def attribute(self, model: Model, x: torch.Tensor, targets: torch.Tensor, ctx: Context
                  ) -> tuple[torch.Tensor, dict[str, Any]]:
        assert isinstance(model, WhiteBox)  # check_model refused any other model
        p = self.params
        start = reference(p.baseline, x, model.input_range, ctx.generator, "baseline")
        nodes, weights = quadrature(p.rule, p.steps)
        alphas = torch.tensor(nodes, dtype=x.dtype, device=x.device)
        w = torch.tensor(weights, dtype=x.dtype, device=x.device)
        size = p.batch_size or budget_chunk(model, x, p.memory_gib, x.shape[0] * p.steps)
        total = path_gradients(model, start[None], x, targets, alphas, w, ctx, size, times_difference=False)
        attributions = (x - start) * total
        gap = (mean_target_scores(model, x[None], targets, size)
               - mean_target_scores(model, start[None], targets, size))
        delta = attributions.flatten(1).sum(1) - gap
        return attributions, {"convergence_delta": delta.detach().cpu().tolist()}


class ExpectedGradients(Method):
    name = "expected-gradients"
    box = "white"
    kind = "additive"
    summary = "integrated gradients averaged over reference baselines and random points (Erion et al. 2019)"
    scope = "local"
    random = True
    test_params = {"samples": 16}

    @dataclasses.dataclass(frozen=True)
    class Params:
        baseline: object = baseline("uniform-noise", "reference distribution: a data set tensor (M, ...) of "
                                                     "reference inputs, or a perturbation name ('uniform-noise': "
                                                     "a fresh uniform draw per pair)")
        samples: int = samples(200, "(reference, alpha) pairs drawn per explanation")
        batch_size: int | None = batch_size(None, "path points per forward/backward pass; None: as many as "
                                                  "memory_gib allows")
        memory_gib: float = param(MEMORY_GIB, "GiB of activations one forward/backward pass may keep, which "
                                  "sets the chunk of path points when batch_size is None", low=0.0)

    def __init__(self, params: Any):
        super().__init__(params)
        check(params.baseline, "baseline")

    def attribute(self, model: Model, x: torch.Tensor, targets: torch.Tensor, ctx: Context
                  ) -> tuple[torch.Tensor, dict[str, Any]]:
        assert isinstance(model, WhiteBox)  # check_model refused any other model
        p = self.params
        refs = draws(p.baseline, x, model.input_range, ctx.generator, p.samples, "baseline")
        alphas = torch.rand(p.samples, generator=ctx.generator, dtype=torch.float64)
        alphas = alphas.to(device=x.device, dtype=x.dtype)
        weights = torch.full_like(alphas, 1.0 / p.samples)
        size = p.batch_size or budget_chunk(model, x, p.memory_gib, x.shape[0] * p.samples)
        attributions = path_gradients(model, refs, x, targets, alphas, weights, ctx, size, times_difference=True)
        gap = (mean_target_scores(model, x[None], targets, size)
               - mean_target_scores(model, refs, targets, size))
        delta = attributions.flatten(1).sum(1) - gap
        return attributions, {"convergence_delta": delta.detach().cpu().tolist()}


@hookimpl
def salfw_register_methods(register):
    register(IntegratedGradients)
    register(ExpectedGradients)
