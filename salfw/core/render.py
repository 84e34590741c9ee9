"""Heatmap pictures: signed maps in a diverging colour map centred on zero
(``bwr``), unsigned ones in a sequential one (``inferno``), as in the seed
papers' figures. Kept apart so that only saving imports matplotlib."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def colourise(hm: np.ndarray, signed: bool) -> np.ndarray:
    """RGB floats in [0, 1] for a 2-D map; signed maps scale by the largest |value|."""
    from matplotlib import colormaps

    hm = np.nan_to_num(np.asarray(hm, dtype=np.float64))
    if signed:
        scale = np.abs(hm).max() or 1.0
        return colormaps["bwr"](0.5 + 0.5 * hm / scale)[..., :3]
    lo, hi = hm.min(), hm.max()
    return colormaps["inferno"]((hm - lo) / ((hi - lo) or 1.0))[..., :3]


def _to_image(rgb: np.ndarray, path: Path, upscale: int) -> Path:
    from PIL import Image

    img = Image.fromarray((np.clip(rgb, 0, 1) * 255).round().astype(np.uint8))
    if upscale > 1:
        img = img.resize((img.width * upscale, img.height * upscale), Image.NEAREST)
    img.save(path)
    return path


def _upscale_for(shape) -> int:
    return max(1, 224 // max(shape))


def heatmap_png(hm: np.ndarray, path: Path, signed: bool) -> Path:
    return _to_image(colourise(hm, signed), Path(path), _upscale_for(hm.shape))


def overlay_png(image: np.ndarray, hm: np.ndarray, path: Path, input_range, signed: bool,
                alpha: float = 0.6) -> Path:
    """The input in grey (or colour) with the heatmap blended on top."""
    lo, hi = input_range
    base = (np.asarray(image, dtype=np.float64) - lo) / (hi - lo)
    base = np.repeat(base, 3, axis=0) if base.shape[0] == 1 else base[:3]
    base = np.moveaxis(base, 0, -1)
    rgb = (1 - alpha) * base + alpha * colourise(hm, signed)
    return _to_image(rgb, Path(path), _upscale_for(hm.shape))
