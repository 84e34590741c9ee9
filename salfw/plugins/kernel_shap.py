"""KernelSHAP (Lundberg & Lee 2017, "A unified approach to interpreting model
predictions"): Shapley values of the features (superpixels of an image, or the
entries of a vector) by a weighted linear regression over coalitions z in {0, 1}^M,
with the Shapley kernel

    pi(z) = (M - 1) / (C(M, |z|) |z| (M - |z|))

and the efficiency constraint sum_j phi_j = f(x) - f(baseline) imposed exactly
(the last coefficient is eliminated, as the ``shap`` library does). Hidden
features take the ``baseline`` when given (a reference input resolved by
:func:`salfw.sdk.reference.reference`: an array shaped like one input or like the
batch, a number, or a perturbation name whose fill of the whole input is the
reference), else a perturbation's fill (``black`` by default, Captum's baseline 0
on [0, 1] inputs; its settings nested, ``perturbation.sigma=2``;
``superpixel-mean`` fills each hidden superpixel with its own mean). Vectors given
neither a ``baseline`` nor a ``perturbation`` get an
:class:`~salfw.core.errors.AssumptionWarning` naming ``baseline``: the low end of the
input range is rarely a meaningful reference for tabular data (shap takes it from
background data).

Images are cut into superpixels as LIME's are (:class:`salfw.sdk.hiding.SegmentationParams`:
SLIC with ``n_segments=100`` by default, 61-72 superpixels on a 28 px digit and 65-91
on a 224 px photo; lime's quickshift gives 1-3 on a digit, which makes
an "exact" but useless two-feature explanation). Fewer than 8 superpixels give a
:class:`~salfw.core.errors.DegenerateWarning` naming the setting that makes more.

When all 2^M - 2 proper coalitions fit in ``samples`` they are enumerated with
their kernel weights, and the result is the exact Shapley value (the kernel
regression's solution, Lundberg & Lee Theorem 2). Otherwise coalitions are
sampled from the kernel's size distribution (sizes 1..M-1 with probability
proportional to (M - 1) / (s (M - s)), then a uniform subset of that size) in
complementary pairs, and fit with equal weights (sampling already follows the
kernel). Default ``samples``: the ``shap`` library's ``nsamples`` 2 M + 2048. ``f``
is the target's logit (the model's raw score) by default (Captum's KernelShap
explains the model output); the attributions are each pixel's superpixel value
(N, 1, H, W) for images, the feature values for vectors. Each input's
segmentation, coalitions (a NumPy generator) and random fills (a CPU torch
generator) are seeded with the seed afresh, so a batch and its inputs one by one
agree. ``batch_size`` perturbed inputs per forward pass; by default as many as fit in
``memory_gib`` GiB on a white box (:func:`salfw.sdk.memory.forward_chunk`), 256 on a
black box. Local explanation.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import warnings
from typing import Any

import numpy as np
import torch

from salfw.core.context import Context
from salfw.core.contracts import Method, Perturbation
from salfw.core.errors import AssumptionWarning
from salfw.core.hookspecs import hookimpl
from salfw.core.models import Model
from salfw.core.params import Component, baseline, batch_size, output, param, samples
from salfw.sdk.hiding import (
    Hider,
    SegmentationParams,
    evaluate_coalitions,
    fill_component,
    resolve_fill,
    segment_with,
    warn_few_features,
)
from salfw.sdk.memory import forward_chunk
from salfw.sdk.reference import reference

#: Perturbed inputs per forward pass on a black box, whose memory cannot be measured.
BLACK_BOX_BATCH = 256


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
    per_feature_ranges = True  # hidden features take a perturbation's fill or the baseline, per feature
    random = True
    test_params = {"segmentation": "grid", "cell": 4, "samples": 64}

    @dataclasses.dataclass(frozen=True)
    class Params(SegmentationParams):
        samples: int | None = samples(None, "coalitions to evaluate; None: shap's 2 M + 2048; exact "
                                      "enumeration when 2^M - 2 fit", low=2)
        perturbation: Component = fill_component("black", "how hidden features are filled: a registered "
                                                 "perturbation or superpixel-mean")
        baseline: object = baseline(None, "reference input for hidden features, overriding the perturbation: "
                                    "an array shaped like one input (or the batch), a number, or a "
                                    "perturbation name (its fill of the whole input)")
        output: str = output("logits", "explain the logits (Captum) or the softmax probabilities")
        batch_size: int | None = batch_size(None, "perturbed inputs per forward pass; None: as many as memory_gib "
                                                  "allows on a white box (256 on a black box)")
        memory_gib: float = param(1.0, "GiB one forward pass may keep, which sets batch_size when it is None",
                                  low=0.0)

    def attribute(self, model: Model, x: torch.Tensor, targets: torch.Tensor, ctx: Context
                  ) -> torch.Tensor | tuple[torch.Tensor, dict[str, Any]]:
        p = self.params
        ctx.batch_size = p.batch_size or forward_chunk(model, x, p.memory_gib, BLACK_BOX_BATCH)
        fills: list[Perturbation | str | torch.Tensor]  # what hidden features of each input take
        if p.baseline is None:
            fills = [resolve_fill(p.perturbation)] * x.shape[0]
            if x.dim() == 2 and p.perturbation == Component("black"):
                warnings.warn("kernel-shap was given no baseline for these vectors, so hidden features take the "
                              "low end of the input range (perturbation='black'), which is rarely a meaningful "
                              "reference for tabular data; pass baseline=<a reference vector, e.g. the training "
                              "data's mean> (shap takes it from background data)", AssumptionWarning, stacklevel=3)
        else:
            given = np.asarray(p.baseline, dtype=np.float64) if isinstance(p.baseline, (list, tuple)) \
                else p.baseline
            fills = list(reference(given, x, model.input_range, ctx.generator).expand(x.shape))
        image = x.dim() == 4
        out = torch.zeros(x.shape[0], 1, *x.shape[2:], dtype=x.dtype, device=x.device) if image \
            else torch.zeros_like(x)
        meta: dict[str, Any] = {"segments": [], "values": [], "exact": []}
        for n in range(x.shape[0]):  # segmentations differ per input; each input's coalitions are batched
            if image:
                labels = torch.from_numpy(segment_with(p, x[n], model.input_range, ctx.seed)).to(x.device)
            else:
                labels = torch.arange(x.shape[1], device=x.device)
            m = int(labels.max()) + 1
            count = p.samples if p.samples is not None else 2 * m + 2048
            exact = m <= 30 and 2 ** m - 2 <= count
            if exact:
                z = all_coalitions(m)
                weights = shapley_kernel(m, z.sum(1)) if m > 1 else np.ones(0)
            else:
                z = sampled_coalitions(ctx.numpy_rng(), m, count)
                weights = np.ones(z.shape[0])
            ends = np.stack([np.zeros(m), np.ones(m)])
            hider = Hider(x[n], labels, fills[n], model.input_range, ctx.fresh_generator())
            z_all = torch.from_numpy(np.concatenate([ends, z]))
            values = evaluate_coalitions(model, hider, z_all, targets[n:n + 1], p.output, ctx)[:, 0] \
                .double().cpu().numpy()
            f0, fx = values[0], values[1]
            phi = constrained_regression(z, values[2:] - f0, weights, fx - f0)
            phi_t = torch.from_numpy(phi).to(device=x.device, dtype=x.dtype)
            out[n] = phi_t[labels][None] if image else phi_t[labels]
            meta["segments"].append(labels.cpu())
            meta["values"].append(phi)
            meta["exact"].append(bool(exact))
        if image:
            warn_few_features(self.name, p, [int(labels.max()) + 1 for labels in meta["segments"]])
        return out, meta


@hookimpl
def salfw_register_methods(register: Any) -> None:
    register(KernelShap)
