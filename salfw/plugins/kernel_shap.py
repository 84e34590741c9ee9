"""KernelSHAP (Lundberg & Lee 2017, "A unified approach to interpreting model
predictions"): Shapley values of the features (superpixels of an image, or the
entries of a vector) by a weighted linear regression over coalitions z in {0, 1}^M,
with the Shapley kernel

    pi(z) = (M - 1) / (C(M, |z|) |z| (M - |z|))

and the efficiency constraint sum_j phi_j = f(x) - f(baseline) imposed exactly
(the last coefficient is eliminated, as the ``shap`` library does). Hidden
features take the ``baseline`` (an array shaped like one input) when given, else a
perturbation's fill (``black`` by default, Captum's baseline 0 on [0, 1] inputs;
``superpixel-mean`` fills each hidden superpixel with its own mean).

When all 2^M - 2 proper coalitions fit in ``num_samples`` they are enumerated with
their kernel weights, and the result is the exact Shapley value (the kernel
regression's solution, Lundberg & Lee Theorem 2). Otherwise coalitions are
sampled from the kernel's size distribution (sizes 1..M-1 with probability
proportional to (M - 1) / (s (M - s)), then a uniform subset of that size) in
complementary pairs, and fit with equal weights (sampling already follows the
kernel). Default ``num_samples``: the ``shap`` library's 2 M + 2048. ``f`` is the
target's raw score by default (Captum's KernelShap explains the model output);
the attributions are each pixel's superpixel value (N, 1, H, W) for images, the
feature values for vectors. Local explanation.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import torch

from salfw.core.contracts import Method
from salfw.core.errors import ParameterError
from salfw.core.hookspecs import hookimpl
from salfw.core.params import param
from salfw.sdk.hiding import (Hider, SegmentationParams, evaluate_coalitions, resolve_perturbation,
                                        segment_with)


def shapley_kernel(m: int, sizes: np.ndarray) -> np.ndarray:
    """Shapley kernel weight of coalitions of the given sizes (0 < size < m)."""
    comb = np.array([math.comb(m, int(s)) for s in sizes], dtype=np.float64)
    return (m - 1) / (comb * sizes * (m - sizes))


def all_coalitions(m: int) -> np.ndarray:
    """Every coalition except the empty and the full one, (2^m - 2, m)."""
    z = np.array(list(itertools.product((0, 1), repeat=m)), dtype=np.float64)
    sizes = z.sum(1)
    return z[(sizes > 0) & (sizes < m)]


def sampled_coalitions(rng: np.random.Generator, m: int, count: int) -> np.ndarray:
    """``count`` coalitions in complementary pairs, sizes drawn from the Shapley kernel's distribution."""
    sizes = np.arange(1, m)
    prob = (m - 1) / (sizes * (m - sizes))
    half = max(1, count // 2)
    drawn = rng.choice(sizes, size=half, p=prob / prob.sum())
    order = np.argsort(rng.random((half, m)), axis=1)
    z = (np.argsort(order, axis=1) < drawn[:, None]).astype(np.float64)  # a uniform subset of each size
    return np.concatenate([z, 1 - z])


def constrained_regression(z: np.ndarray, y: np.ndarray, weights: np.ndarray, total: float) -> np.ndarray:
    """Weighted least squares of y on z with sum(phi) = total, by eliminating the last
    coefficient: y - z_M total = (z_{:M-1} - z_M) phi_{:M-1}."""
    m = z.shape[1]
    if m == 1:
        return np.array([total])
    X = z[:, :-1] - z[:, -1:]
    target = y - z[:, -1] * total
    sw = np.sqrt(weights)
    head, *_ = np.linalg.lstsq(X * sw[:, None], target * sw, rcond=None)
    return np.append(head, total - head.sum())


class KernelShap(Method):
    name = "kernel-shap"
    box = "black"
    kind = "additive"
    summary = "Shapley values by kernel-weighted regression over coalitions (Lundberg & Lee 2017)"
    scope = "local"
    random = True
    test_params = {"segmentation": "grid", "cell": 4, "num_samples": 64}

    @dataclasses.dataclass(frozen=True)
    class Params(SegmentationParams):
        num_samples: int | None = param(None, "coalitions to evaluate; None: shap's 2 M + 2048; exact "
                                        "enumeration when 2^M - 2 fit", low=2)
        perturbation: str = param("black", "how hidden features are filled: a registered perturbation "
                                  "or superpixel-mean")
        perturbation_params: object = param(None, "dict of the perturbation's parameters, e.g. {'sigma': 2}")
        baseline: object = param(None, "array shaped like one input used for hidden features "
                                 "(overrides the perturbation)")
        output: str = param("scores", "explain raw scores (Captum) or softmax probabilities",
                            choices=("scores", "probabilities"))
        batch_size: int = param(256, "perturbed inputs per forward pass", low=1)

    def _baseline(self, x: torch.Tensor) -> torch.Tensor | None:
        b = self.params.baseline
        if b is None:
            return None
        b = torch.as_tensor(np.asarray(b.detach().cpu() if isinstance(b, torch.Tensor) else b))
        if b.dim() == x.dim() and b.shape[0] == 1:
            b = b[0]
        if tuple(b.shape) != tuple(x.shape[1:]):
            raise ParameterError(f"kernel-shap baseline must be shaped like one input "
                                 f"{tuple(x.shape[1:])}, got {tuple(b.shape)}")
        return b.to(device=x.device, dtype=x.dtype)

    def attribute(self, model, x, targets, ctx):
        seed = ctx.seed
        p = self.params
        baseline = self._baseline(x)
        fill = baseline if baseline is not None else resolve_perturbation(p.perturbation, p.perturbation_params)
        image = x.dim() == 4
        out = torch.zeros(x.shape[0], 1, *x.shape[2:], dtype=x.dtype, device=x.device) if image \
            else torch.zeros_like(x)
        meta = {"segments": [], "values": [], "exact": []}
        for n in range(x.shape[0]):  # segmentations differ per input; each input's coalitions are batched
            if image:
                labels = torch.from_numpy(segment_with(p, x[n], model.input_range, seed)).to(x.device)
            else:
                labels = torch.arange(x.shape[1], device=x.device)
            m = int(labels.max()) + 1
            count = p.num_samples if p.num_samples is not None else 2 * m + 2048
            rng = np.random.default_rng(seed)
            exact = m <= 30 and 2 ** m - 2 <= count
            if exact:
                z = all_coalitions(m)
                weights = shapley_kernel(m, z.sum(1)) if m > 1 else np.ones(0)
            else:
                z = sampled_coalitions(rng, m, count)
                weights = np.ones(z.shape[0])
            ends = np.stack([np.zeros(m), np.ones(m)])
            generator = torch.Generator(device=x.device).manual_seed(seed)
            hider = Hider(x[n], labels, fill, model.input_range, generator)
            z_all = torch.from_numpy(np.concatenate([ends, z]))
            values = evaluate_coalitions(model, hider, z_all, targets[n:n + 1], p.output, p.batch_size)[:, 0]
            values = values.double().cpu().numpy()
            f0, fx = values[0], values[1]
            phi = constrained_regression(z, values[2:] - f0, weights, fx - f0)
            phi_t = torch.from_numpy(phi).to(device=x.device, dtype=x.dtype)
            out[n] = phi_t[labels][None] if image else phi_t[labels]
            meta["segments"].append(labels.cpu())
            meta["values"].append(phi)
            meta["exact"].append(bool(exact))
        return out, meta


@hookimpl
def salfw_register_methods(register):
    register(KernelShap)
