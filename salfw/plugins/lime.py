"""LIME (Ribeiro, Singh & Guestrin 2016, "Why should I trust you?"): fit a weighted
linear surrogate g(z) = w . z + b to the model's outputs on perturbed copies of
the input, where z in {0, 1}^M says which interpretable features are kept.

Images (as ``lime.lime_image.LimeImageExplainer``): features are superpixels
(SLIC with ``n_segments=100`` by default: 61-72 superpixels on the built-in 28 px
digits, 65-91 on 224 px photos; lime's own quickshift with kernel_size=4,
max_dist=200, ratio=0.2, ``segmentation="quickshift"``, suits photos of about 300 px
and gives 1-3 superpixels on a digit; Felzenszwalb; or a regular grid), optionally
cut to at most
``max_superpixel_size`` pixels (the GeoSal thesis's change, down to single
pixels). Sample 0 keeps everything; the others switch each superpixel off with
probability 1/2 (lime's ``randint(0, 2)``), and at most ``max_off_fraction`` of the
superpixels per sample (the thesis's "change fraction": when a draw switches off
more, the excess is switched back on at random). Hidden superpixels take a
perturbation's fill (``black``, ``white``, ``inverse`` -- the thesis's best on MNIST
--, ``blur``, noise, ...; its settings nested, ``perturbation.sigma=2``) or
``superpixel-mean``: each its own mean colour, lime's default ``hide_color=None``.
The weights are lime's kernel
``pi(z) = sqrt(exp(-d(z, 1)^2 / width^2))`` on the cosine distance to the
all-kept vector (width 0.25, lime's image default; ``kernel_width=inf`` weighs every
sample the same), and the surrogate is
``Ridge(alpha=1)`` fit with those sample weights (lime's default regressor; with
lime's default ``num_features=100000`` every superpixel is kept, so its feature
selection changes nothing). The attributions are a continuous per-pixel heatmap:
each pixel gets its superpixel's weight for the target, (N, 1, H, W). ``meta``
holds, per sample, the segmentation, the binary samples z, the weights, intercept and R^2 score for each
explained label (the target and the ``top_labels`` predicted ones, all fit to the
same samples), the target's R² adjusted for chance (``adjusted_score``, below), and
the evidence-for / evidence-against masks (the
``mask_features`` superpixels with the largest |weight|, positive or negative, as
lime's ``get_image_and_mask(num_features=5)``).

Vectors (as ``LimeTabularExplainer`` with ``sample_around_instance=False``):
samples are drawn from ``N(mean, std^2)`` of ``training_data`` per feature (sample 0 is
the input), scaled to ``(v - mean) / std``, weighted by
``sqrt(exp(-d^2 / width^2))`` on the Euclidean distance of the scaled sample to the
scaled input (width ``0.75 sqrt(D)``), and the surrogate is fit on the scaled
samples; the attributions are its coefficients. Without ``training_data`` the
statistics of the uniform distribution over the input range are used, with an
:class:`~salfw.core.errors.AssumptionWarning` naming ``training_data``: lime_tabular
always takes them from the training data. With
``discretize=True`` features are cut at the training quartiles (lime's default
``QuartileDiscretizer``): each sample draws a quartile bin per feature with the
training frequencies and takes a training value from that bin (lime draws from a
truncated normal in the bin instead), and the surrogate is fit on "same bin as
the input" indicators. Local explanation; ``top_labels`` makes it comparative
across classes.

Seeding: each sample's segmentation, binary samples z (a NumPy generator) and
random fills (a CPU torch generator) are seeded with the seed afresh, so a batch
and its samples one by one agree. ``samples`` perturbed inputs per explained
sample (lime's ``num_samples``), evaluated ``batch_size`` at a time (by default as
many as fit in ``memory_gib`` GiB on a white box, :func:`salfw.sdk.memory.forward_chunk`;
256 on a black box).

Degenerate results give a :class:`~salfw.core.errors.DegenerateWarning` naming the
setting that fixes them: an image cut into fewer than 8 superpixels, and a
surrogate whose R² on the target, adjusted for what fitting M weights to noise
gives by chance (``meta["adjusted_score"]``, with the kernel's effective sample
size), is below 0.05: its weights are then noise.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

import numpy as np
import torch

from salfw.core.context import Context, warn_degenerate
from salfw.core.contracts import Method
from salfw.core.errors import AssumptionWarning, ParameterError
from salfw.core.hookspecs import hookimpl
from salfw.core.models import Model
from salfw.core.params import Component, batch_size, output, param, samples
from salfw.core.ranges import range_ends
from salfw.sdk.hiding import (
    SUPERPIXEL_MEAN,
    Hider,
    SegmentationParams,
    evaluate_coalitions,
    fill_component,
    resolve_fill,
    segment_with,
    target_values,
    warn_few_features,
    weighted_ridge,
)
from salfw.sdk.memory import forward_chunk

#: Perturbed inputs per forward pass on a black box, whose memory cannot be measured.
BLACK_BOX_BATCH = 256

#: An adjusted R² of the surrogate below this is "near 0": :meth:`Lime._warn_if_unexplained` says so.
MIN_R2 = 0.05


def adjusted_r2(score: float, weights: np.ndarray, features: int) -> float:
    """The weighted R² less what fitting ``features`` coefficients to noise gives by chance:
    ``1 − (1 − R²)(n − 1)/(n − M − 1)`` with the kernel's effective sample size
    ``n = (Σw)² / Σw²`` (−inf when n ≤ M + 1: the fit could follow any output). Pure noise
    scores about M/n in R² and about 0 here."""
    n = weights.sum() ** 2 / (weights ** 2).sum()
    if n <= features + 1:
        return float("-inf")
    return float(1 - (1 - score) * (n - 1) / (n - features - 1))


def sample_coalitions(rng: np.random.Generator, count: int, features: int,
                      max_off_fraction: float) -> np.ndarray:
    """Binary samples (count, M): row 0 all ones, the others Bernoulli(1/2) per feature with at
    most ``floor(max_off_fraction * M)`` zeros (excess zeros switched back at random)."""
    z = rng.integers(0, 2, size=(count, features))
    z[0] = 1
    cap = int(math.floor(max_off_fraction * features + 1e-9))
    if cap < features:
        priority = rng.random((count, features))
        priority[z == 1] = np.inf  # only switched-off features compete for the cap
        rank = np.argsort(np.argsort(priority, axis=1), axis=1)
        z[(z == 0) & (rank >= cap)] = 1
    return z


def lime_kernel(distances: np.ndarray, width: float) -> np.ndarray:
    """lime's default kernel ``sqrt(exp(-d^2 / width^2))``."""
    return np.sqrt(np.exp(-(distances ** 2) / width ** 2))


def cosine_to_ones(z: np.ndarray) -> np.ndarray:
    """Cosine distance of each row of z to the all-ones vector (1 for an all-zero row,
    as ``sklearn.metrics.pairwise_distances(metric="cosine")``)."""
    norms = np.sqrt((z ** 2).sum(1)) * math.sqrt(z.shape[1])
    sim = np.where(norms > 0, z.sum(1) / np.where(norms > 0, norms, 1), 0.0)
    return np.clip(1 - sim, 0, 2)


class Lime(Method):
    name = "lime"
    box = "black"
    kind = "additive"
    summary = "weighted linear surrogate over superpixels or features (Ribeiro et al. 2016)"
    scope = "local"
    per_feature_ranges = True  # vectors: statistics per feature (training_data, or each feature's range)
    random = True
    test_params = {"segmentation": "grid", "cell": 2, "samples": 64}

    @dataclasses.dataclass(frozen=True)
    class Params(SegmentationParams):
        perturbation: Component = fill_component(SUPERPIXEL_MEAN, "how hidden superpixels are filled: a "
                                                 "registered perturbation (black, white, inverse, blur, ...) "
                                                 "or superpixel-mean (lime's default hide_color=None)")
        samples: int = samples(1000, "perturbed samples (lime's default num_samples=1000)", low=2)
        max_off_fraction: float = param(1.0, "largest fraction of features switched off in one sample "
                                        "(GeoSal thesis's change fraction; 1 = lime)", low=0.0, high=1.0)
        kernel_width: float | None = param(None, "kernel width; None: 0.25 for images (lime_image), "
                                           "0.75 sqrt(D) for vectors (lime_tabular); inf: every sample "
                                           "weighs the same (no locality)", low=0.0, allow_inf=True)
        distance: str = param("cosine", "distance of a sample to the input for images (lime's cosine)",
                              choices=("cosine", "euclidean"))
        alpha: float = param(1.0, "ridge penalty of the surrogate (lime's Ridge(alpha=1))", low=0.0)
        top_labels: int | None = param(None, "also explain the k most probable labels from the same samples",
                                       low=1)
        mask_features: int = param(5, "superpixels in the evidence masks, by |weight| "
                                   "(lime's get_image_and_mask default)", low=1)
        output: str = output("probabilities", "model output the surrogate fits (lime: probabilities)")
        training_data: object = param(None, "vectors: training array (M, D) for the sampling statistics")
        discretize: bool = param(False, "vectors: quartile-discretise features (lime_tabular's discretizer)")
        batch_size: int | None = batch_size(None, "perturbed inputs per forward pass; None: as many as memory_gib "
                                                  "allows on a white box (256 on a black box)")
        memory_gib: float = param(1.0, "GiB one forward pass may keep, which sets batch_size when it is None",
                                  low=0.0)

    # -- shared ---------------------------------------------------------------------
    def _classes(self, model: Model, x1: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.params.top_labels is None:
            return target
        probs = model.probabilities(x1)[0]
        top = torch.argsort(probs, descending=True)[: self.params.top_labels].to(target.device)
        return torch.cat([target, top[top != target[0]]])

    def attribute(self, model: Model, x: torch.Tensor, targets: torch.Tensor, ctx: Context
                  ) -> torch.Tensor | tuple[torch.Tensor, dict[str, Any]]:
        if self.params.kernel_width == 0:
            raise ParameterError("lime's kernel_width must be > 0 (it divides the distances)")
        ctx.batch_size = self.params.batch_size or forward_chunk(model, x, self.params.memory_gib, BLACK_BOX_BATCH)
        if x.dim() == 4:
            return self._images(model, x, targets, ctx)
        return self._vectors(model, x, targets, ctx)

    # -- images ---------------------------------------------------------------------
    def _images(self, model: Model, x: torch.Tensor, targets: torch.Tensor, ctx: Context
                ) -> tuple[torch.Tensor, dict[str, Any]]:
        p = self.params
        fill = resolve_fill(p.perturbation)
        width = 0.25 if p.kernel_width is None else p.kernel_width
        out = torch.zeros(x.shape[0], 1, *x.shape[2:], dtype=x.dtype, device=x.device)
        meta: dict[str, Any] = {k: [] for k in ("segments", "samples", "labels", "weights", "intercept", "score",
                                                "adjusted_score", "evidence_for", "evidence_against")}
        for n in range(x.shape[0]):  # segmentations differ per image; each image's samples are batched
            labels = segment_with(p, x[n], model.input_range, ctx.seed)
            m = int(labels.max()) + 1
            z = sample_coalitions(ctx.numpy_rng(), p.samples, m, p.max_off_fraction)
            labels_t = torch.from_numpy(labels).to(x.device)
            hider = Hider(x[n], labels_t, fill, model.input_range, ctx.fresh_generator())
            classes = self._classes(model, x[n:n + 1], targets[n:n + 1])
            values = evaluate_coalitions(model, hider, torch.from_numpy(z), classes, p.output, ctx)
            if p.distance == "cosine":
                d = cosine_to_ones(z.astype(np.float64))
            else:
                d = np.sqrt(((1 - z) ** 2).sum(1))
            kernel = lime_kernel(d, width)
            coef, intercept, score = weighted_ridge(z, values.double().cpu().numpy(), kernel, p.alpha)
            meta["adjusted_score"].append(adjusted_r2(float(score[0]), kernel, m))
            w_t = torch.from_numpy(coef[0]).to(device=x.device, dtype=x.dtype)
            out[n, 0] = w_t[labels_t]
            order = np.argsort(-np.abs(coef[0]), kind="stable")[: p.mask_features]
            top = np.zeros(m, dtype=bool)
            top[order] = True
            meta["segments"].append(labels_t.cpu())
            meta["samples"].append(z.astype(np.int8))
            meta["labels"].append(classes.tolist())
            meta["weights"].append(coef)
            meta["intercept"].append(intercept)
            meta["score"].append(score)
            meta["evidence_for"].append(torch.from_numpy((top & (coef[0] > 0))[labels]))
            meta["evidence_against"].append(torch.from_numpy((top & (coef[0] < 0))[labels]))
        meta["evidence_for"] = torch.stack(meta["evidence_for"])
        meta["evidence_against"] = torch.stack(meta["evidence_against"])
        warn_few_features(self.name, p, [int(labels.max()) + 1 for labels in meta["segments"]])
        self._warn_if_unexplained(meta["adjusted_score"])
        return out, meta

    def _warn_if_unexplained(self, adjusted: list[float]) -> None:
        """A :class:`~salfw.core.errors.DegenerateWarning` when the surrogate explains no more of the model's
        output on the target than a fit to noise would (adjusted R² below :data:`MIN_R2`): its weights are
        then noise."""
        low = [(n, r2) for n, r2 in enumerate(adjusted) if r2 < MIN_R2]
        if not low:
            return
        listed = ", ".join(f"sample {n}: {r2:.3f}" for n, r2 in low[:5]) + (", ..." if len(low) > 5 else "")
        hint = "output='logits' (probabilities may be saturated), " if self.params.output == "probabilities" else ""
        warn_degenerate(f"lime's linear surrogate explains no more of the model's output than a fit to noise would "
                        f"(adjusted R² {listed}); its weights are noise: try {hint}a larger kernel_width, or more "
                        f"samples", stacklevel=4)

    # -- vectors --------------------------------------------------------------------
    def _statistics(self, model: Model, d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        data = self.params.training_data
        if data is None:
            lo, hi = (np.asarray(end, dtype=np.float64).reshape(-1)  # two numbers, or one per feature
                      for end in range_ends(model.input_range, torch.zeros(1, dtype=torch.float64)))
            return np.full(d, (lo + hi) / 2), np.full(d, (hi - lo) / math.sqrt(12)), None
        data = np.asarray(data.detach().cpu() if isinstance(data, torch.Tensor) else data, dtype=np.float64)
        if data.ndim != 2 or data.shape[1] != d or data.shape[0] < 2:
            raise ParameterError(f"training_data must be an array (M >= 2, D={d}) of training vectors, "
                                 f"got shape {data.shape}")
        std = data.std(0)
        return data.mean(0), np.where(std > 0, std, 1.0), data

    def _vectors(self, model: Model, x: torch.Tensor, targets: torch.Tensor, ctx: Context
                 ) -> tuple[torch.Tensor, dict[str, Any]]:
        p = self.params
        d = x.shape[1]
        mean, std, data = self._statistics(model, d)
        if data is None:
            warnings.warn("lime was given no training_data, so it samples each feature from a uniform "
                          "distribution over the model's input range, which is not the data's distribution; pass "
                          "training_data=<array (M, D) of training vectors> for lime_tabular's statistics",
                          AssumptionWarning, stacklevel=3)
        width = 0.75 * math.sqrt(d) if p.kernel_width is None else p.kernel_width
        if p.discretize and data is None:
            raise ParameterError("lime's discretize=True needs training_data (M, D) for the quartiles")
        out = torch.zeros_like(x)
        meta: dict[str, Any] = {k: [] for k in ("labels", "weights", "intercept", "score", "adjusted_score")}
        for n in range(x.shape[0]):  # each sample's perturbations are batched
            rng = ctx.numpy_rng()
            row = x[n].double().cpu().numpy()
            if p.discretize and data is not None:
                draws, features = self._discretized(rng, row, data)
            else:
                draws = rng.standard_normal((p.samples, d)) * std + mean
                draws[0] = row
                features = (draws - mean) / std
            dist = np.sqrt(((features - features[0]) ** 2).sum(1))
            classes = self._classes(model, x[n:n + 1], targets[n:n + 1])
            inputs = torch.from_numpy(draws).to(device=x.device, dtype=x.dtype)
            values = torch.cat([target_values(model, inputs[rows], classes, p.output, ctx.batch_size)
                                for rows in ctx.batches(p.samples, unit="input")])
            kernel = lime_kernel(dist, width)
            coef, intercept, score = weighted_ridge(features, values.double().cpu().numpy(), kernel, p.alpha)
            meta["adjusted_score"].append(adjusted_r2(float(score[0]), kernel, features.shape[1]))
            out[n] = torch.from_numpy(coef[0]).to(device=x.device, dtype=x.dtype)
            meta["labels"].append(classes.tolist())
            meta["weights"].append(coef)
            meta["intercept"].append(intercept)
            meta["score"].append(score)
        self._warn_if_unexplained(meta["adjusted_score"])
        return out, meta

    def _discretized(self, rng: np.random.Generator, row: np.ndarray, data: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
        """Samples drawn bin by bin (training quartiles) and their "same bin as the input" indicators."""
        s = self.params.samples
        cuts = np.quantile(data, [0.25, 0.5, 0.75], axis=0)  # (3, D)
        bins = np.stack([np.searchsorted(cuts[:, j], data[:, j], side="left") for j in range(data.shape[1])], 1)
        row_bins = np.array([np.searchsorted(cuts[:, j], row[j], side="left") for j in range(row.shape[0])])
        # a training row per (sample, feature): its value is the feature's draw, its bin the draw's bin
        picks = rng.integers(0, data.shape[0], size=(s, data.shape[1]))
        cols = np.arange(data.shape[1])[None]
        draws = data[picks, cols]
        sample_bins = bins[picks, cols]
        draws[0] = row
        sample_bins[0] = row_bins
        return draws, (sample_bins == row_bins[None]).astype(np.float64)


@hookimpl
def salfw_register_methods(register: Any) -> None:
    register(Lime)
