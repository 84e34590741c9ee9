"""Helpers shared by the black-box perturbation family (LIME, KernelSHAP, occlusion,
RISE, prediction difference): segmentation into superpixels, window masks, hiding
features with a perturbation (the :func:`fill_component` field and
:func:`resolve_fill`), evaluating the perturbed inputs in batches
(:func:`target_values`, :func:`evaluate_coalitions`) and a weighted ridge solver.

Segmentation follows ``lime.wrappers.scikit_image.SegmentationAlgorithm``
(quickshift with lime's defaults kernel_size=4, max_dist=200, ratio=0.2; SLIC, the
default here since it gives a useful number of superpixels at any resolution;
Felzenszwalb) plus a regular grid, and the GeoSal thesis's change to LIME: a
**maximum superpixel size** -- a superpixel with more pixels than that is cut
along a regular grid of cells of at most that many pixels, down to single
pixels (``max_size=1``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch

from salfw.core.api import make_perturbation
from salfw.core.context import Context, warn_degenerate
from salfw.core.contracts import Perturbation
from salfw.core.errors import ParameterError
from salfw.core.models import Model
from salfw.core.params import Component, component, param

SEGMENTATIONS = ("quickshift", "slic", "felzenszwalb", "grid")
SUPERPIXEL_MEAN = "superpixel-mean"


def _grid_labels(h: int, w: int, cell: int) -> np.ndarray:
    rows = np.arange(h) // cell
    cols = np.arange(w) // cell
    return rows[:, None] * (-(-w // cell)) + cols[None, :]


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Consecutive labels 0..M-1, ordered by first appearance in raster order."""
    flat = labels.reshape(-1)
    _, first, inverse = np.unique(flat, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    return order[inverse].reshape(labels.shape).astype(np.int64)


def limit_size(labels: np.ndarray, max_size: int) -> np.ndarray:
    """Split every superpixel with more than ``max_size`` pixels along a grid of
    square cells of side ``floor(sqrt(max_size))`` (so each piece has at most
    ``max_size`` pixels); ``max_size=1`` gives single pixels (GeoSal thesis)."""
    labels = _relabel(labels)
    sizes = np.bincount(labels.reshape(-1))
    large = sizes[labels] > max_size
    if not large.any():
        return labels
    cell = max(1, int(math.isqrt(int(max_size))))
    h, w = labels.shape
    grid = _grid_labels(h, w, cell)
    n_cells = int(grid.max()) + 1
    combined = np.where(large, sizes.shape[0] + labels * n_cells + grid, labels)
    return _relabel(combined)


def segment(image: torch.Tensor, method: str, *, kernel_size: float = 4.0, max_dist: float = 200.0,
            ratio: float = 0.2, n_segments: int = 50, compactness: float = 10.0, scale: float = 100.0,
            sigma: float = 0.5, min_size: int = 10, cell: int = 4, max_size: int | None = None,
            input_range: tuple[float, float] = (0.0, 1.0), seed: int = 0) -> np.ndarray:
    """Superpixel labels (H, W), consecutive from 0, for one image (C, H, W).

    ``quickshift`` (``kernel_size``, ``max_dist``, ``ratio``; lime's defaults), ``slic``
    (``n_segments``, ``compactness``, ``sigma``), ``felzenszwalb`` (``scale``, ``sigma``,
    ``min_size``) from scikit-image, or ``grid`` (square cells of side ``cell``). Like lime,
    a grey image is repeated to RGB and quickshift converts RGB to Lab; the image is
    scaled from ``input_range`` to [0, 1] first. ``max_size`` then splits large superpixels.
    """
    if method not in SEGMENTATIONS:
        raise ParameterError(f"segmentation must be one of {', '.join(SEGMENTATIONS)}; got {method!r}")
    c, h, w = image.shape
    if method == "grid":
        labels = _grid_labels(h, w, int(cell))
    else:
        from skimage import segmentation as seg

        lo, hi = input_range
        img = ((image.detach().cpu().double() - lo) / (hi - lo)).clamp(0, 1).permute(1, 2, 0).numpy()
        if c == 1:
            img = np.repeat(img, 3, axis=2)
        rgb = img.shape[2] == 3
        if method == "quickshift":
            labels = seg.quickshift(img, kernel_size=kernel_size, max_dist=max_dist, ratio=ratio,
                                    convert2lab=rgb, rng=seed)
        elif method == "slic":
            labels = seg.slic(img, n_segments=int(n_segments), compactness=compactness, sigma=sigma,
                              start_label=0, channel_axis=-1)
        else:
            labels = seg.felzenszwalb(img, scale=scale, sigma=sigma, min_size=int(min_size), channel_axis=-1)
    labels = _relabel(np.asarray(labels))
    return limit_size(labels, int(max_size)) if max_size is not None else labels


@dataclasses.dataclass(frozen=True)
class SegmentationParams:
    """The superpixel parameters LIME and KernelSHAP share (images only).

    The default is SLIC with ``n_segments=100``: it asks for a number of superpixels, so it gives a
    useful number at any resolution, 61-72 on the built-in 28 px digits and 65-91 on scikit-image's
    chelsea, astronaut, coffee and rocket photos centre-cropped and resized to 224 px (measured;
    ``docs/perturbation.md``). lime's own default, quickshift with kernel_size=4, max_dist=200 and
    ratio=0.2 (``segmentation="quickshift"``), suits photos of about 300 px (lime's tutorials use
    Inception's 299 px): it gives 23-41 superpixels at 224 px and 1-3 on a digit, a map of one or two
    solid blocks.
    """

    segmentation: str = param("slic", "superpixels (images): slic (about n_segments at any resolution), "
                              "lime's quickshift, felzenszwalb or a regular grid", choices=SEGMENTATIONS)
    kernel_size: float = param(4.0, "quickshift kernel_size (lime's default)", low=0.0)
    max_dist: float = param(200.0, "quickshift max_dist (lime's default)", low=0.0)
    ratio: float = param(0.2, "quickshift ratio between colour and space (lime's default)", low=0.0, high=1.0)
    n_segments: int = param(100, "slic: approximate number of superpixels (skimage default)", low=1)
    compactness: float = param(10.0, "slic compactness (skimage default)", low=0.0)
    scale: float = param(1.0, "felzenszwalb scale (skimage default)", low=0.0)
    sigma: float = param(0.8, "slic and felzenszwalb pre-smoothing (felzenszwalb's skimage default)", low=0.0)
    min_size: int = param(20, "felzenszwalb minimum superpixel size (skimage default)", low=1)
    cell: int = param(4, "grid cell side in pixels", low=1)
    max_superpixel_size: int | None = param(None, "split superpixels larger than this many pixels into grid "
                                            "cells (GeoSal thesis; 1 = single pixels)", low=1)


def segment_with(params: SegmentationParams, image: torch.Tensor, input_range: tuple[float, float],
                 seed: int) -> np.ndarray:
    """:func:`segment` with the settings of a :class:`SegmentationParams`."""
    return segment(image, params.segmentation, kernel_size=params.kernel_size, max_dist=params.max_dist,
                   ratio=params.ratio, n_segments=params.n_segments, compactness=params.compactness,
                   scale=params.scale, sigma=params.sigma, min_size=params.min_size, cell=params.cell,
                   max_size=params.max_superpixel_size, input_range=input_range, seed=seed)


#: Fewer superpixels than this make a map of a few solid blocks: :func:`warn_few_features` says so.
MIN_FEATURES = 8
#: The setting that makes more superpixels, per segmentation.
_FINER = {"slic": "a larger n_segments", "quickshift": "a smaller max_dist or kernel_size",
          "felzenszwalb": "a smaller scale", "grid": "a smaller cell"}


def warn_few_features(method: str, params: SegmentationParams, counts: list[int]) -> None:
    """A :class:`~salfw.core.errors.DegenerateWarning` when an image was cut into fewer than
    :data:`MIN_FEATURES` superpixels, naming the setting that gives more."""
    few = [(n, c) for n, c in enumerate(counts) if c < MIN_FEATURES]
    if not few:
        return
    listed = ", ".join(f"sample {n}: {c}" for n, c in few[:5]) + (", ..." if len(few) > 5 else "")
    warn_degenerate(f"{method} used fewer than {MIN_FEATURES} superpixels ({listed}), so its map is a few solid "
                    f"blocks; use {_FINER[params.segmentation]} (segmentation={params.segmentation!r}), or "
                    f"max_superpixel_size to cut large superpixels", stacklevel=4)


def _starts(size: int, k: int, s: int, device: torch.device) -> torch.Tensor:
    """Window starts 0, s, 2s, ... as Captum places them: ceil((size - k) / s) + 1 positions,
    the last one cut off at the border when the stride does not fit."""
    return torch.arange(0, -(-(size - k) // s) * s + 1, s, device=device)


def scaled_window(shape: tuple[int, ...], fraction: float) -> tuple[int, ...]:
    """A window of about ``fraction`` of each side of an input shape (C, H, W) or (D,): (h, w) for an
    image, (d,) for a vector, at least 1. Used for resolution-aware defaults (the same windows, relative
    to the input, on a 28 px digit and a 224 px photo)."""
    sides = shape[-2:] if len(shape) == 3 else shape[-1:]
    return tuple(max(1, round(side * fraction)) for side in sides)


class Windows:
    """The positions of a window sliding over one input of ``shape`` (C, H, W) or (D,), with masks
    built per chunk of positions, never all at once (P masks of the input's size would be P x H x W
    numbers: 12,321 x 224 x 224 floats, 2.3 GiB, for a 4 px window with stride 2 at 224 px).

    ``window``/``stride``: (h, w) or one int for a square for images, the last entry for vectors.
    Positions are row-major: ``ceil((H - h) / s) + 1`` starts per axis as Captum places them, the last
    one cut at the border when the stride does not fit (:func:`_starts`).
    """

    def __init__(self, shape: tuple[int, ...], window: tuple[int, ...], stride: tuple[int, ...],
                 device: torch.device, dtype: torch.dtype, what: str = "window"):
        self.shape, self.device, self.dtype = tuple(shape), device, dtype
        self.sides: tuple[int, ...]
        self.windows: tuple[int, ...]
        self.starts: tuple[torch.Tensor, ...]
        if len(shape) == 1:
            (d,), (k,), (s,) = shape, window[-1:], stride[-1:]
            if k > d:
                raise ParameterError(f"{what} {k} is wider than the {d} features")
            self.sides, self.windows = (d,), (k,)
            self.starts = (_starts(d, k, s, device),)
        else:
            _, h, w = shape
            kh, kw = (window * 2)[:2] if len(window) == 1 else window[-2:]
            sh, sw = (stride * 2)[:2] if len(stride) == 1 else stride[-2:]
            if kh > h or kw > w:
                raise ParameterError(f"{what} {kh}x{kw} is larger than the {h}x{w} image")
            self.sides, self.windows = (h, w), (kh, kw)
            self.starts = (_starts(h, kh, sh, device), _starts(w, kw, sw, device))

    def __len__(self) -> int:
        return math.prod(len(s) for s in self.starts)

    def _inside(self, axis: int, starts: torch.Tensor) -> torch.Tensor:
        """(P, side) booleans: which positions along ``axis`` each window start covers."""
        idx = torch.arange(self.sides[axis], device=self.device)
        return (idx[None] >= starts[:, None]) & (idx[None] < starts[:, None] + self.windows[axis])

    def masks(self, positions: slice) -> torch.Tensor:
        """Masks that are 1 inside the windows at ``positions`` (a slice of ``range(len(self))``):
        (P, 1, H, W) for an image, (P, D) for a vector."""
        index = torch.arange(positions.start or 0, positions.stop, device=self.device)
        if len(self.sides) == 1:
            return self._inside(0, self.starts[0][index]).to(self.dtype)
        columns = len(self.starts[1])
        rows = self._inside(0, self.starts[0][index // columns])   # (P, H)
        cols = self._inside(1, self.starts[1][index % columns])    # (P, W)
        return (rows[:, :, None] & cols[:, None, :])[:, None].to(self.dtype)

    def coverage(self) -> torch.Tensor:
        """How many windows cover each position: (1, H, W) for an image, (D,) for a vector."""
        counts = [self._inside(axis, starts).sum(0).to(self.dtype) for axis, starts in enumerate(self.starts)]
        if len(counts) == 1:
            return counts[0]
        return (counts[0][:, None] * counts[1][None, :])[None]


def window_masks(shape: tuple[int, ...], window: tuple[int, ...], stride: tuple[int, ...],
                 device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Every window's mask at once, (P, *shape) that are 1 inside each window position: (P, 1, H, W)
    for an image shape (C, H, W), (P, D) for a vector shape (D,). For small inputs only; methods
    build them per chunk with :class:`Windows`."""
    windows = Windows(shape, window, stride, device, dtype, what="occlusion window")
    return windows.masks(slice(0, len(windows)))


def fill_component(default: str, help: str) -> Any:
    """Declare a ``perturbation`` field for superpixel hiding: a registered perturbation with
    its settings nested (``perturbation.sigma=2``) or ``superpixel-mean`` (no settings)."""
    return component(default, "perturbation", help, special=(SUPERPIXEL_MEAN,))


def resolve_fill(spec: Component | str) -> Perturbation | str:
    """The perturbation a :func:`fill_component` field names, or :data:`SUPERPIXEL_MEAN`
    (each hidden superpixel takes its own mean, lime's default ``hide_color=None``)."""
    name = spec.name if isinstance(spec, Component) else spec
    return SUPERPIXEL_MEAN if name == SUPERPIXEL_MEAN else make_perturbation(spec)


def superpixel_mean(image: torch.Tensor, labels: torch.Tensor, count: int) -> torch.Tensor:
    """(C, H, W): every pixel replaced by its superpixel's per-channel mean."""
    c = image.shape[0]
    flat = labels.reshape(-1)
    sums = torch.zeros(c, count, dtype=image.dtype, device=image.device)
    sums.index_add_(1, flat, image.reshape(c, -1))
    sizes = torch.bincount(flat, minlength=count).to(image.dtype)
    return (sums / sizes)[:, flat].reshape(image.shape)


class Hider:
    """Builds perturbed copies of one input from binary feature vectors z (S, M):
    where ``z[s, labels] == 0`` the input takes the fill.

    ``labels`` maps each input element to its feature: (H, W) superpixels for an
    image, (D,) for a vector (features may group several entries). ``fill`` is a
    registered perturbation, ``superpixel-mean`` (each superpixel's own mean) or a
    tensor shaped like the input (a baseline).
    """

    def __init__(self, x: torch.Tensor, labels: torch.Tensor, fill: Perturbation | str | torch.Tensor,
                 input_range: tuple[float, float], generator: torch.Generator | None):
        self.x = x
        self.labels = labels.to(x.device)
        self.count = int(labels.max()) + 1
        self.perturbation = fill if isinstance(fill, Perturbation) else None
        self.input_range = input_range
        self.generator = generator
        self.fill: torch.Tensor | None = None
        if isinstance(fill, torch.Tensor):
            self.fill = fill.to(device=x.device, dtype=x.dtype)
        elif fill == SUPERPIXEL_MEAN:
            self.fill = superpixel_mean(x, self.labels, self.count)
        elif self.perturbation is None:
            raise ParameterError(f"a fill is a perturbation, '{SUPERPIXEL_MEAN}' or a tensor; got {fill!r}")

    def keep(self, z: torch.Tensor) -> torch.Tensor:
        """Keep-masks (S, 1, H, W) or (S, D) from z (S, M)."""
        z = z.to(device=self.x.device, dtype=self.x.dtype)
        keep = z[:, self.labels]
        return keep[:, None] if self.x.dim() == 3 else keep

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        keep = self.keep(z)
        x = self.x[None]
        if self.fill is not None:
            return x * keep + self.fill[None] * (1 - keep)
        assert self.perturbation is not None  # __init__ accepts nothing else
        return self.perturbation.apply(x.expand(keep.shape[0], *self.x.shape), keep, self.input_range,
                                       self.generator)


def target_values(model: Model, inputs: torch.Tensor, targets: torch.Tensor, output: str,
                  batch_size: int | None = None) -> torch.Tensor:
    """The given classes' logits (the model's raw scores) or probabilities, as ``output`` says,
    (S, len(targets)) for a batch of inputs; the model evaluates it in chunks of ``batch_size``
    (its own default when None) and counts the passes."""
    scores = model.scores(inputs, batch_size)
    values = model.to_probabilities(scores) if output == "probabilities" else scores
    return values[:, targets.to(values.device)]


def evaluate_coalitions(model: Model, hider: Hider, z: torch.Tensor, targets: torch.Tensor, output: str,
                        ctx: Context) -> torch.Tensor:
    """Model outputs (S, T) for the perturbed inputs of coalitions z (S, M), built and
    evaluated in the context's batches (the method's ``batch_size``), so memory stays bounded."""
    return torch.cat([target_values(model, hider(z[rows]), targets, output, ctx.batch_size)
                      for rows in ctx.batches(z.shape[0], unit="input")])


def weighted_ridge(X: np.ndarray, Y: np.ndarray, weights: np.ndarray, alpha: float
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted ridge regression with intercept, as ``sklearn.linear_model.Ridge(alpha)
    .fit(X, Y, sample_weight=weights)``: centre X and Y by their weighted means and
    solve ``(Xc' W Xc + alpha I) b = Xc' W Yc``. Y is (S, T); returns coefficients
    (T, M), intercepts (T,) and the weighted R^2 (T,) as ``Ridge.score`` gives it.
    Solved in float64 with torch (its thread settings apply; small systems)."""
    Xt = torch.from_numpy(np.asarray(X, dtype=np.float64))
    Yt = torch.from_numpy(np.asarray(Y, dtype=np.float64))
    w = torch.from_numpy(np.asarray(weights, dtype=np.float64))
    total = w.sum()
    x_mean = w @ Xt / total
    y_mean = w @ Yt / total
    Xc = Xt - x_mean
    Yc = Yt - y_mean
    gram = Xc.T @ (Xc * w[:, None]) + alpha * torch.eye(Xt.shape[1], dtype=torch.float64)
    coef = torch.linalg.lstsq(gram, Xc.T @ (Yc * w[:, None])).solution.T
    intercept = y_mean - coef @ x_mean
    residual = Yt - (Xt @ coef.T + intercept)
    ss_res = w @ residual ** 2
    ss_tot = w @ (Yt - y_mean) ** 2
    score = torch.where(ss_tot > 0, 1 - ss_res / torch.where(ss_tot > 0, ss_tot, 1.0), 0.0)
    return coef.numpy(), intercept.numpy(), score.numpy()
