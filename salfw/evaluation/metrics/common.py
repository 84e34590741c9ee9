"""Helpers shared by the metrics: heatmaps, target outputs, batched rank and linear
correlations, map normalisation."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from salfw.core.errors import InputError
from salfw.core.explanation import Explanation
from salfw.core.models import Model


def heatmap(attributions: torch.Tensor) -> torch.Tensor:
    """(N, H, W) for images (sum over channels, as ``Explanation.heatmap``), (N, D) for vectors."""
    return attributions.sum(dim=1) if attributions.dim() == 4 else attributions


def target_output(model: Model, x: torch.Tensor, targets: torch.Tensor, output: str,
                  batch_size: int) -> torch.Tensor:
    """The target class's probability or raw score for each row of ``x`` (no gradients, chunked).

    ``output`` is one of :data:`salfw.core.params.OUTPUTS`: "logits" is the model's raw score
    (a black box returning probabilities gives those).
    """
    scores = model.scores(x, batch_size)
    values = model.to_probabilities(scores) if output == "probabilities" else scores
    return values.gather(1, targets.to(values.device)[:, None]).squeeze(1)


def pearson(a: torch.Tensor, b: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Pearson correlation along ``dim``; 0 where either side is constant."""
    a = a - a.mean(dim=dim, keepdim=True)
    b = b - b.mean(dim=dim, keepdim=True)
    denom = (a.pow(2).sum(dim=dim) * b.pow(2).sum(dim=dim)).sqrt()
    num = (a * b).sum(dim=dim)
    return torch.where(denom > 0, num / denom.clamp_min(torch.finfo(denom.dtype).tiny), torch.zeros_like(num))


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of each row of ``a`` (N, F) with the same row of ``b``.

    Ties get their average rank (``scipy.stats.rankdata``), as in ``scipy.stats.spearmanr``;
    all rows are ranked in one vectorised call.
    """
    from scipy.stats import rankdata  # imported here: scipy.stats costs ~1 s at plugin load

    ra = rankdata(a.detach().cpu().double().numpy(), axis=1)
    rb = rankdata(b.detach().cpu().double().numpy(), axis=1)
    return pearson(torch.from_numpy(ra), torch.from_numpy(rb)).to(a.dtype)


def normalise_map(hm: torch.Tensor, how: str) -> torch.Tensor:
    """Scale each (H, W) map of an (N, H, W) batch to [0, 1] (``how``: one of
    :data:`salfw.core.params.NORMALISATIONS`).

    "abs-max": ``|h| / max|h|`` (zero stays zero: black background like MNIST's);
    "min-max": ``(h - min) / (max - min)``; "none": the map as it is (for maps already in
    [0, 1], such as masks). A constant map becomes all zeros (min-max) or all ones (abs-max,
    unless it is zero).
    """
    if how == "none":
        return hm
    flat = hm.flatten(1)
    if how == "abs-max":
        flat = flat.abs()
        scale = flat.max(dim=1, keepdim=True).values
        out = flat / torch.where(scale > 0, scale, torch.ones_like(scale))
    else:
        lo = flat.min(dim=1, keepdim=True).values
        span = flat.max(dim=1, keepdim=True).values - lo
        out = (flat - lo) / torch.where(span > 0, span, torch.ones_like(span))
    return out.view_as(hm)


def require_images(name: str, x: torch.Tensor) -> None:
    if x.dim() != 4:
        raise InputError(f"metric '{name}' scores image maps (N, C, H, W); got inputs of shape {tuple(x.shape)}")


def require_explanation(name: str, context: dict[str, Any]) -> Explanation:
    """The Explanation passed through ``salfw.evaluate`` (metrics that re-run the method need it)."""
    explanation = context.get("explanation")
    if explanation is None:
        raise InputError(f"metric '{name}' re-runs or reads the explanation's method: pass the Explanation "
                         f"returned by salfw.explain, not a bare attribution tensor")
    return explanation


def as_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()
