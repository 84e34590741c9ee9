"""The input stage of a white box: a per-channel affine map from pixel space.

The GeoSal thesis puts an offset/scale/invert "front layer" before its MNIST
networks; ImageNet models expect mean/std normalisation. Both are affine per
channel, so salfw folds them into one map ``y = a * x + b`` applied in front of
the user's network. Explanations and perturbations then live in the raw pixel
space the user sees (``input_range``), while methods that need the network's
own input domain (Deep Taylor's z^B bounds) ask :meth:`Preprocessing.bounds`.

Order of operations, as in the thesis and then torchvision's ``Normalize``::

    x -> (lo + hi - x if invert) -> (+ offset) -> (* scale) -> ((. - mean) / std)

Each of offset, scale, mean and std is one value (every channel) or one per channel
(per feature for vectors); those given per channel must agree in number, and that
number must be the inputs' channel count: checked against a declared input shape by
:meth:`Preprocessing.check_channels`, and against every batch it is applied to.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .errors import InputError, ParameterError
from .ranges import FeatureRange, range_ends


def _as_vector(name: str, value: float | Sequence[float] | None, default: float) -> torch.Tensor:
    if value is None:
        return torch.tensor([default], dtype=torch.float64)
    vec = torch.as_tensor(value, dtype=torch.float64).reshape(-1)
    if vec.numel() == 0 or not torch.isfinite(vec).all():
        raise ParameterError(f"preprocessing '{name}' must be finite numbers, got {value!r}")
    return vec


class Preprocessing(nn.Module):
    """``y = a * x + b`` per channel (channel dimension 1; vectors use one channel)."""

    def __init__(self, input_range: tuple[float, float] = (0.0, 1.0), *, invert: bool = False,
                 offset: float | Sequence[float] | None = None, scale: float | Sequence[float] | None = None,
                 mean: float | Sequence[float] | None = None, std: float | Sequence[float] | None = None):
        super().__init__()
        lo, hi = (input_range.lows, input_range.highs) if isinstance(input_range, FeatureRange) else input_range
        off, sc = _as_vector("offset", offset, 0.0), _as_vector("scale", scale, 1.0)
        mu, sd = _as_vector("mean", mean, 0.0), _as_vector("std", std, 1.0)
        if (sd == 0).any() or (sc == 0).any():
            raise ParameterError("preprocessing 'std' and 'scale' must be non-zero")
        given = {"offset": off, "scale": sc, "mean": mu, "std": sd}
        #: The settings given per channel and their value counts (in the order of the formula).
        self.per_channel = {name: int(v.numel()) for name, v in given.items() if v.numel() > 1}
        if len(set(self.per_channel.values())) > 1:
            raise ParameterError(f"preprocessing settings given per channel must have one value per channel "
                                 f"each: {self._counts()}")
        # invert: x' = (lo + hi) - x, i.e. a0 = -1, b0 = lo + hi
        a0, b0 = (-1.0, lo + hi) if invert else (1.0, 0.0)
        a = a0 * sc / sd
        b = ((b0 + off) * sc - mu) / sd
        self.settings = {"invert": invert, "offset": offset, "scale": scale, "mean": mean, "std": std}
        self.register_buffer("a", a, persistent=False)
        self.register_buffer("b", b, persistent=False)

    @property
    def channels(self) -> int | None:
        """The channel count the settings are given for (None: one value for every channel)."""
        return next(iter(self.per_channel.values()), None)

    def _counts(self) -> str:
        return ", ".join(f"{name} has {count} values" for name, count in self.per_channel.items())

    def check_channels(self, input_shape: tuple[int, ...]) -> None:
        """Refuse per-channel settings whose count is not a declared input shape's channel count
        (``input_shape[0]``: channels of (C, H, W), features of (D,))."""
        if self.channels is not None and self.channels != input_shape[0]:
            what = "feature(s)" if len(input_shape) == 1 else "channel(s)"
            raise ParameterError(f"preprocessing {self._counts()} (one per channel), but input_shape "
                                 f"{tuple(input_shape)} has {input_shape[0]} {what}; give one value per "
                                 f"{what[:-3]} or a single value for all")

    def _check_inputs(self, x: torch.Tensor) -> None:
        if self.channels is not None and (x.dim() < 2 or x.shape[1] != self.channels):
            what = "feature(s)" if x.dim() == 2 else "channel(s)"
            have = x.shape[1] if x.dim() >= 2 else 1
            raise InputError(f"the adapter's preprocessing {self._counts()} (one per channel), but the inputs "
                             f"of shape {tuple(x.shape)} have {have} {what}; give WhiteBox one mean/std value "
                             f"per input {what[:-3]} or a single value for all")

    @property
    def is_identity(self) -> bool:
        a, b = self.buffer("a"), self.buffer("b")
        return bool(torch.all(a == 1) and torch.all(b == 0))

    def buffer(self, name: str) -> torch.Tensor:
        """The per-channel factor ``a`` or offset ``b`` (``y = a·x + b``)."""
        value = getattr(self, name)
        assert isinstance(value, torch.Tensor)
        return value

    def _shaped(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        t = t.to(device=x.device, dtype=x.dtype)
        if x.dim() == 4 and t.numel() > 1:
            return t.view(1, -1, 1, 1)
        return t.reshape(()) if t.numel() == 1 else t.view(1, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_inputs(x)
        if self.is_identity:
            return x
        return x * self._shaped(self.buffer("a"), x) + self._shaped(self.buffer("b"), x)

    def bounds(self, input_range: tuple[float, float], like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Lowest and highest value each network input can take, shaped to broadcast with ``like``.

        With a negative factor (invert, negative scale) the bounds swap, per channel.
        """
        self._check_inputs(like)
        lo, hi = range_ends(input_range, like)
        a, b = self._shaped(self.buffer("a"), like), self._shaped(self.buffer("b"), like)
        y_lo, y_hi = a * lo + b, a * hi + b
        return torch.minimum(y_lo, y_hi), torch.maximum(y_lo, y_hi)
