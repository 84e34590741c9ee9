"""Input ranges given per feature, for vector inputs (tabular data).

A model's ``input_range`` is two numbers, the domain of every input element, or for vectors (N, D)
one low and one high per feature: a :class:`FeatureRange`. Perturbations fill with each feature's
own ends, and inputs are checked against them (:func:`range_ends`).
"""

from __future__ import annotations

from typing import Any

import torch


class FeatureRange(tuple[float, float]):
    """An ``input_range`` given per feature, for vector inputs (N, D): ``lows`` and ``highs``, two (D,)
    float64 tensors. As a pair it is the overall ``(min(lows), max(highs))``, so code written for two
    numbers still reads two numbers; what must honour each feature's own range (perturbations' fills,
    the range check of inputs) asks :func:`range_ends`. Methods and metrics declare whether they do
    (``per_feature_ranges``), and ``salfw.explain``/``salfw.evaluate`` refuse the others."""

    lows: torch.Tensor
    highs: torch.Tensor

    def __new__(cls, lows: torch.Tensor, highs: torch.Tensor) -> FeatureRange:
        pair = super().__new__(cls, (float(lows.min()), float(highs.max())))
        pair.lows, pair.highs = lows, highs
        return pair

    def __reduce__(self) -> tuple[Any, ...]:  # pickle and copy rebuild from the per-feature ends
        return FeatureRange, (self.lows, self.highs)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, FeatureRange) and torch.equal(self.lows, other.lows)
                and torch.equal(self.highs, other.highs))

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash((tuple(self.lows.tolist()), tuple(self.highs.tolist())))

    def __repr__(self) -> str:
        return f"FeatureRange(lows={self.lows.tolist()}, highs={self.highs.tolist()})"


def range_ends(input_range: tuple[float, float], like: torch.Tensor) -> tuple[Any, Any]:
    """``(lo, hi)`` ready to broadcast against the batch ``like``: the two floats, or a
    :class:`FeatureRange`'s ends as (1, D) tensors on ``like``'s device and dtype."""
    if isinstance(input_range, FeatureRange):
        return (input_range.lows.to(device=like.device, dtype=like.dtype).view(1, -1),
                input_range.highs.to(device=like.device, dtype=like.dtype).view(1, -1))
    lo, hi = input_range
    return lo, hi
