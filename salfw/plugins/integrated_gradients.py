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
  Baselines: the name of a registered perturbation (``black``, the paper's
  choice for images and the default; ``white``, ``mean``, ``uniform-noise``
  (seeded, one draw shared by the batch), ``blur`` with sigma 5, ...), a
  :class:`~salfw.core.contracts.Perturbation` instance (for other settings,
  e.g. ``make_perturbation("blur", sigma=2)``), or a tensor shaped like one
  sample or like the batch. Local explanation.

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

  ``references`` is a tensor (M, ...) of reference inputs (the paper draws them
  from the training set; for the built-in MNIST models ``load_samples()[0]``
  or your own training digits), ``"samples"`` for salfw's shipped MNIST digits
  (1×28×28 inputs only), or ``"uniform-noise"`` (the default, so that the method
  runs on any model: each draw is uniform noise over ``input_range``). The S
  (reference, α) pairs are drawn once from ``seed`` and shared by every sample
  of the batch. ``samples`` defaults to 200 (the paper reports that a single
  sample per training step suffices for its attribution priors; for a stable
  explanation of one input it uses hundreds). It is Captum's ``GradientShap``
  with ``stdevs=0``. ``meta["convergence_delta"]`` is
  ``Σ_i EG_i − (f_c(x) − mean_j f_c(x'_j))``, zero in expectation (completeness
  holds in expectation only). Local explanation.

All steps × samples run through :func:`~salfw.sdk.backprop.target_gradient`
as chunks of ``batch_size`` path points, so memory is bounded by it.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import torch

from salfw.core.api import make_perturbation
from salfw.core.contracts import Method, Perturbation
from salfw.core.errors import ParameterError, SalfwError
from salfw.core.hookspecs import hookimpl
from salfw.core.params import param
from salfw.sdk.backprop import target_gradient

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


def path_gradients(model, starts: torch.Tensor, x: torch.Tensor, targets: torch.Tensor, alphas: torch.Tensor,
                   weights: torch.Tensor, batch_size: int, times_difference: bool) -> torch.Tensor:
    """``Σ_k w_k · g_k`` per sample, with ``g_k = ∂f(s_k + α_k (x − s_k))/∂x``, times ``(x − s_k)``
    inside the sum when ``times_difference`` (expected gradients).

    ``starts`` has shape (K or 1, N or 1, *sample shape): one start point per step
    or one for all, per sample or shared. Path points are built and differentiated
    in blocks of at most ``batch_size`` (a chunk of samples × a block of steps).
    """
    n_samples, n_steps = x.shape[0], alphas.shape[0]
    chunk = min(n_samples, batch_size)
    block = max(1, batch_size // chunk)
    ones = (1,) * (x.dim() - 1)
    total = torch.zeros_like(x)
    for i0 in range(0, n_samples, chunk):
        xi = x[i0:i0 + chunk][None]
        si = starts[:, i0:i0 + chunk] if starts.shape[1] > 1 else starts
        for k0 in range(0, n_steps, block):
            sk = si[k0:k0 + block] if si.shape[0] > 1 else si
            a = alphas[k0:k0 + block].view(-1, 1, *ones)
            diff = xi - sk
            points = sk + a * diff
            steps_here, n_here = a.shape[0], xi.shape[1]
            flat = points.expand(steps_here, n_here, *x.shape[1:]).reshape(-1, *x.shape[1:])
            grads = target_gradient(model, flat, targets[i0:i0 + chunk].repeat(steps_here), flat.shape[0])
            grads = grads.view(steps_here, n_here, *x.shape[1:])
            if times_difference:
                grads = grads * diff
            total[i0:i0 + chunk] += torch.tensordot(weights[k0:k0 + block], grads, dims=1)
    return total


def target_scores(model, x: torch.Tensor, targets: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``f_c(x)`` per sample (no gradients); a single shared ``x`` gives one score per target."""
    scores = model.scores(x, batch_size)
    if scores.shape[0] == 1:
        scores = scores.expand(targets.shape[0], -1)
    return scores.gather(1, targets[:, None].to(scores.device))[:, 0]


def _as_sample_tensor(name: str, value, x: torch.Tensor) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise ParameterError(f"{name} must be a float tensor, got {type(value).__name__}"
                             f"{'' if not isinstance(value, torch.Tensor) else ' of dtype ' + str(value.dtype)}")
    if not torch.isfinite(value).all():
        raise ParameterError(f"{name} contains NaN or infinite values")
    return value.detach().to(device=x.device, dtype=x.dtype)


def make_baseline(spec, model, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The baseline for ``x``: shaped (N, ...) or (1, ...) (shared by the batch)."""
    if isinstance(spec, (str, Perturbation)):
        try:
            perturbation = make_perturbation(spec)
        except SalfwError as exc:
            raise ParameterError(f"baseline: {exc}") from None
        fill = perturbation.fill(x, model.input_range, generator)
        if fill.dim() == 0 or fill.shape[0] == 1:
            return fill.expand(1, *x.shape[1:])
        return fill.expand(x.shape)
    baseline = _as_sample_tensor("baseline", spec, x)
    if tuple(baseline.shape) == tuple(x.shape[1:]):
        return baseline[None]
    if baseline.dim() == x.dim() and baseline.shape[0] in (1, x.shape[0]) and baseline.shape[1:] == x.shape[1:]:
        return baseline
    raise ParameterError(f"baseline must be shaped like one sample {tuple(x.shape[1:])} or like the batch "
                         f"{tuple(x.shape)}, got {tuple(baseline.shape)}")


class IntegratedGradients(Method):
    name = "integrated-gradients"
    box = "white"
    kind = "additive"
    summary = "integrated gradients along the path from a baseline (Sundararajan et al. 2017)"
    scope = "local"
    test_params = {"steps": 8}

    @dataclasses.dataclass(frozen=True)
    class Params:
        baseline: object = param("black", "a perturbation name (black, white, mean, uniform-noise, blur, ...) "
                                          "or a tensor shaped like one sample or the batch")
        steps: int = param(50, "quadrature points along the path (Captum's default 50)", low=1)
        rule: str = param("gauss-legendre", "quadrature rule", choices=RULES)
        batch_size: int = param(128, "path points per forward/backward pass", low=1)

    def __init__(self, params):
        super().__init__(params)
        if params.rule == "riemann-trapezoid" and params.steps < 2:
            raise ParameterError("rule 'riemann-trapezoid' needs steps >= 2 (both end points), got 1")
        if params.baseline is None:
            raise ParameterError("baseline may not be None; give a perturbation name such as 'black' or a tensor")

    def attribute(self, model, x, targets, ctx):
        seed = ctx.seed
        generator = torch.Generator().manual_seed(seed)
        baseline = make_baseline(self.params.baseline, model, x, generator)
        nodes, weights = quadrature(self.params.rule, self.params.steps)
        alphas = torch.tensor(nodes, dtype=x.dtype, device=x.device)
        weights = torch.tensor(weights, dtype=x.dtype, device=x.device)
        size = self.params.batch_size
        total = path_gradients(model, baseline[None], x, targets, alphas, weights, size, times_difference=False)
        attributions = (x - baseline) * total
        gap = target_scores(model, x, targets, size) - target_scores(model, baseline, targets, size)
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
        references: object = param("uniform-noise", "reference inputs: a tensor (M, ...), 'samples' (shipped "
                                                    "MNIST digits) or 'uniform-noise'")
        samples: int = param(200, "(reference, alpha) pairs drawn per explanation", low=1)
        batch_size: int = param(128, "path points per forward/backward pass", low=1)

    def __init__(self, params):
        super().__init__(params)
        refs = params.references
        if isinstance(refs, str) and refs not in ("uniform-noise", "samples"):
            raise ParameterError(f"references must be a tensor (M, ...), 'samples' or 'uniform-noise'; got {refs!r}")
        if refs is None:
            raise ParameterError("references may not be None; give a tensor (M, ...), 'samples' or 'uniform-noise'")

    def _references(self, model, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The S drawn references, (S, *sample shape); draws depend only on the seed and S."""
        refs, count = self.params.references, self.params.samples
        if isinstance(refs, str) and refs == "uniform-noise":
            lo, hi = model.input_range
            return (lo + (hi - lo) * torch.rand((count, *x.shape[1:]), generator=generator, dtype=x.dtype)
                    ).to(x.device)
        if isinstance(refs, str):
            if tuple(x.shape[1:]) != (1, 28, 28):
                raise ParameterError(f"references='samples' are the shipped 1x28x28 MNIST digits; the inputs "
                                     f"are {tuple(x.shape[1:])}: pass a reference tensor (M, "
                                     f"{', '.join(map(str, x.shape[1:]))})")
            from salfw.zoo.samples import load_samples
            refs = load_samples()[0]
        refs = _as_sample_tensor("references", refs, x)
        if refs.dim() != x.dim() or tuple(refs.shape[1:]) != tuple(x.shape[1:]) or refs.shape[0] == 0:
            raise ParameterError(f"references must be shaped (M, {', '.join(map(str, x.shape[1:]))}) with M >= 1, "
                                 f"got {tuple(refs.shape)}")
        index = torch.randint(0, refs.shape[0], (count,), generator=generator)
        return refs[index.to(refs.device)]

    def attribute(self, model, x, targets, ctx):
        seed = ctx.seed
        generator = torch.Generator().manual_seed(seed)
        refs = self._references(model, x, generator)
        alphas = torch.rand(self.params.samples, generator=generator, dtype=torch.float64)
        alphas = alphas.to(device=x.device, dtype=x.dtype)
        weights = torch.full_like(alphas, 1.0 / self.params.samples)
        size = self.params.batch_size
        attributions = path_gradients(model, refs[:, None], x, targets, alphas, weights, size, times_difference=True)
        ref_scores = model.scores(refs, size)[:, targets].mean(0)
        delta = attributions.flatten(1).sum(1) - (target_scores(model, x, targets, size) - ref_scores)
        return attributions, {"convergence_delta": delta.detach().cpu().tolist()}


@hookimpl
def salfw_register_methods(register):
    register(IntegratedGradients)
    register(ExpectedGradients)
