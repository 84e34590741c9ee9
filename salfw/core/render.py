"""Heatmap pictures: signed maps in a diverging colour map centred on zero
(``bwr``), unsigned ones in a sequential one (``inferno``), as in the seed
papers' figures. Kept apart so that only drawing imports matplotlib.

:func:`grid_figure` draws the comparison grid (rows are inputs, columns the
input and then each method) on a :class:`matplotlib.figure.Figure` of its own:
no pyplot, no backend chosen, nothing global touched, so it works the same in
a script, a notebook and a test. :func:`plot` (``salfw.plot``) and
:func:`draw_grid` (``salfw.draw_grid``, ``salfw compare``) build on it.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import InputError
from .explanation import Explanation
from .ranges import FeatureRange

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


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
        img = img.resize((img.width * upscale, img.height * upscale), Image.Resampling.NEAREST)
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


#: The most features a bar chart of a vector's attributions shows (the largest |attribution| first).
BAR_FEATURES = 20


def bars_png(explanation: Explanation, index: int, path: Path) -> Path:
    """:func:`bars_figure` written to ``path`` (a PNG)."""
    path = Path(path)
    bars_figure(explanation, index).savefig(path, dpi=100)
    return path


def bars_figure(explanation: Explanation, index: int) -> Figure:
    """Sample ``index``'s attributions of a vector as a horizontal bar chart: the :data:`BAR_FEATURES`
    features with the largest |attribution|, largest on top (:meth:`Explanation.as_list`), red for
    evidence for the class and blue against (as the signed heatmaps), each bar labelled with the
    feature's name (or index) and the input's value."""
    from matplotlib.figure import Figure

    items = explanation.as_list(index, top=BAR_FEATURES)
    total = explanation.attributions.shape[1]
    row = None if explanation.inputs is None else to_numpy(explanation.inputs[index])
    names = explanation.feature_names
    labels = []
    for name, _ in items:
        column = names.index(name) if names is not None else name
        labels.append(str(name) if row is None else f"{name} = {row[column]:.4g}")
    values = [v for _, v in items][::-1]
    fig = Figure(figsize=(6.4, 0.8 + 0.28 * len(items)))
    ax = fig.subplots()
    ax.barh(range(len(values)), values, color=["tab:red" if v > 0 else "tab:blue" for v in values])
    ax.set_yticks(range(len(values)), labels[::-1], fontsize=8)
    ax.axvline(0.0, color="black", linewidth=0.6)
    shown = f", the {len(items)} largest of {total} features" if len(items) < total else ""
    ax.set_title(f"{explanation.method}: class {explanation.targets[index].item()}{shown}", fontsize=9)
    ax.set_xlabel("attribution", fontsize=8)
    fig.tight_layout()
    return fig


# -- figures (matplotlib.figure.Figure, never pyplot) ---------------------------------------------
def to_numpy(values: Any) -> np.ndarray:
    """A float64 array from a tensor (any device) or an array."""
    return np.asarray(values.detach().cpu() if hasattr(values, "detach") else values, dtype=np.float64)


def _clean(ax: Axes) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def draw_input(ax: Axes, sample: np.ndarray, input_range: tuple[float, float]) -> None:
    """One input in grey (one channel) or colour: (C, H, W), or (D,) drawn as a strip."""
    lo, hi = (input_range.lows.numpy(), input_range.highs.numpy()) if isinstance(input_range, FeatureRange) \
        else input_range
    picture = (np.asarray(sample, dtype=np.float64) - lo) / (hi - lo)
    if picture.ndim == 1:
        ax.imshow(picture[None], cmap="gray", vmin=0, vmax=1, aspect="auto")
    else:
        picture = np.moveaxis(picture, 0, -1)
        ax.imshow(picture[..., 0] if picture.shape[-1] == 1 else picture[..., :3], cmap="gray", vmin=0, vmax=1)
    _clean(ax)


def draw_map(ax: Axes, hm: np.ndarray, signed: bool) -> None:
    """One heatmap: (H, W) for an image, (D,) drawn as a strip for a vector."""
    hm = np.asarray(hm, dtype=np.float64)
    ax.imshow(colourise(hm if hm.ndim == 2 else hm[None], signed), aspect="auto" if hm.ndim == 1 else None)
    _clean(ax)


def row_labels(explanation: Explanation) -> list[str]:
    """``class t`` per sample, with its probability when the explanation recorded it."""
    probabilities = explanation.meta.get("probabilities")
    labels = []
    for i, t in enumerate(explanation.targets.tolist()):
        p = f" (p={probabilities[i][t]:.2f})" if probabilities is not None else ""
        labels.append(f"class {t}{p}")
    return labels


def grid_figure(x: Any, explanations: Mapping[str, Explanation], input_range: tuple[float, float] = (0.0, 1.0),
                labels: Sequence[str] | None = None, max_rows: int | None = None) -> Figure:
    """The comparison grid for inputs ``x`` ((N, C, H, W), (N, D), or None for no input column) and
    ``{column title: Explanation}``; ``labels`` name the rows, ``max_rows`` keeps the first rows.

    Each method column is titled with its name and kind; its maps share one colour scheme
    (:func:`colourise`), signed when the explanation holds both signs.
    """
    from matplotlib.figure import Figure

    images = None if x is None else to_numpy(x)
    n = len(images) if images is not None else len(next(iter(explanations.values())).targets)
    n = n if max_rows is None else min(n, max_rows)
    first = 0 if images is None else 1  # the column of the first method
    maps = [(to_numpy(e.heatmap()[:n]), e.signed) for e in explanations.values()]
    fig = Figure(figsize=(1.6 * (first + len(explanations)), 1.7 * n + 0.4))
    axes = fig.subplots(n, first + len(explanations), squeeze=False)
    for i in range(n):
        if images is not None:
            draw_input(axes[i][0], images[i], input_range)
        for j, (hm, signed) in enumerate(maps, start=first):
            draw_map(axes[i][j], hm[i], signed)
        if labels is not None:
            axes[i][0].set_ylabel(labels[i], fontsize=7)
    if images is not None:
        axes[0][0].set_title("input", fontsize=7)
    for j, (title, explanation) in enumerate(explanations.items(), start=first):
        axes[0][j].set_title(f"{title}\n({explanation.kind})", fontsize=7)
    fig.tight_layout()
    return fig


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """The figure as PNG bytes (for ``_repr_png_``)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _columns(explanations: Explanation | Sequence[Explanation] | Mapping[str, Explanation]
             ) -> dict[str, Explanation]:
    if isinstance(explanations, Explanation):
        return {explanations.method: explanations}
    if isinstance(explanations, Mapping):
        columns = dict(explanations)
    else:
        columns = {}
        for e in explanations:
            title, k = e.method, 2
            while title in columns:  # the same method twice (other settings): number the copies
                title, k = f"{e.method} ({k})", k + 1
            columns[title] = e
    if not columns or not all(isinstance(e, Explanation) for e in columns.values()):
        raise InputError("plot takes an Explanation, a list of them or a {title: Explanation} dict")
    sizes = {len(e.targets) for e in columns.values()}
    if len(sizes) != 1:
        raise InputError(f"the explanations cover different numbers of samples ({sorted(sizes)}); "
                         f"plot explanations of the same inputs")
    return columns


def plot(explanations: Explanation | Sequence[Explanation] | Mapping[str, Explanation], *,
         labels: Sequence[str] | None = None, max_rows: int | None = None) -> Figure:
    """A grid of one or more explanations of the same inputs (``salfw.plot``): rows are inputs,
    columns the input (when the explanations carry it) and then each explanation.

    ``labels`` name the rows (default: the explained class and its probability). Returns a
    :class:`matplotlib.figure.Figure`; a notebook shows it, ``fig.savefig(path)`` writes it.
    """
    columns = _columns(explanations)
    first = next(iter(columns.values()))
    return grid_figure(first.inputs, columns, first.input_range,
                       row_labels(first) if labels is None else labels, max_rows)


def draw_grid(x: Any, explanations: Mapping[str, Explanation], path: str | Path,
              input_range: tuple[float, float] = (0.0, 1.0), labels: Sequence[str] | None = None) -> Path:
    """Write :func:`grid_figure` for inputs ``x`` and ``{method: Explanation}`` to ``path`` (a PNG);
    ``labels`` name the rows. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid_figure(x, explanations, input_range, labels).savefig(path, dpi=100)
    return path
