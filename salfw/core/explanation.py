"""The result of every method: attributions plus what is needed to trust them.

``attributions`` has the input's shape ((N, C, H, W) or (N, 1, H, W) for a
channel-free map, (N, D) for vectors). ``heatmap()`` sums over channels, the
convention of Captum's and Zennit's visualisations. ``as_list()`` ranks one
sample's features (or pixels) by the size of their attribution, like lime's
``Explanation.as_list``. ``save()`` writes the raw array, the JSON metadata and,
for images, a PNG heatmap and an overlay on the input; for vectors, a bar chart
of the features (named by the model's ``feature_names``). ``plot()`` draws the
maps on a matplotlib figure (``_repr_png_`` shows them in a notebook).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .errors import InputError
from .params import to_json

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

KINDS = ("additive", "comparative", "mask")
#: Rows of the picture a notebook shows for an explanation (``_repr_png_``).
PREVIEW_ROWS = 8


@dataclasses.dataclass(repr=False)
class Explanation:
    attributions: torch.Tensor
    targets: torch.Tensor
    method: str
    kind: str
    params: dict[str, Any]
    meta: dict[str, Any]
    inputs: torch.Tensor | None = None
    input_range: tuple[float, float] = (0.0, 1.0)
    #: The model's names of the D features of vector inputs (None: features are named by index).
    feature_names: tuple[str, ...] | None = None

    def heatmap(self) -> torch.Tensor:
        """(N, H, W) for images (sum over channels), (N, D) for vectors."""
        a = self.attributions
        return a.sum(dim=1) if a.dim() == 4 else a

    def as_list(self, index: int = 0, top: int | None = None) -> list[tuple[Any, float]]:
        """Sample ``index``'s features as ``(name, attribution)``, largest ``|attribution|`` first (ties
        in input order), the ``top`` first of them (None: all); lime's ``Explanation.as_list``.

        A feature is named by the model's ``feature_names``, or by its index without them. For
        images the features are the pixels of :meth:`heatmap` (the channels summed), named by their
        ``(row, column)``.
        """
        n = len(self.targets)
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not -n <= index < n:
            raise InputError(f"as_list: index must be an int in 0..{n - 1} (a sample of the batch), got {index!r}")
        if top is not None and (isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1):
            raise InputError(f"as_list: top must be a positive int or None (every feature), got {top!r}")
        values = self.heatmap()[int(index)].detach().cpu().double()
        flat = values.reshape(-1)
        order = np.argsort(-flat.abs().numpy(), kind="stable")[:top]
        if values.dim() == 2:
            width = values.shape[1]
            return [((int(k) // width, int(k) % width), float(flat[k])) for k in order]
        names = self.feature_names
        return [(names[k] if names is not None else int(k), float(flat[k])) for k in order]

    @property
    def signed(self) -> bool:
        """Whether the map holds both signs (drawn with a diverging colour map)."""
        return bool((self.attributions < 0).any() and (self.attributions > 0).any())

    def __repr__(self) -> str:
        targets = self.targets.tolist()
        shown = ", ".join(map(str, targets[:8])) + (f", ... ({len(targets)} in all)" if len(targets) > 8 else "")
        seconds = self.meta.get("seconds")
        timing = f", seconds={seconds:.3g}" if isinstance(seconds, (int, float)) else ""
        return (f"Explanation(method={self.method!r}, kind={self.kind!r}, shape={tuple(self.attributions.shape)}, "
                f"targets=[{shown}]{timing})")

    def plot(self, ax: Axes | None = None, *, index: int = 0, max_rows: int | None = None) -> Figure | Axes:
        """Draw the maps with matplotlib (no pyplot state is touched).

        Without ``ax``: returns a new :class:`matplotlib.figure.Figure`, one row per sample (the
        first ``max_rows``), the input beside its map. With ``ax``: draws sample ``index``'s map
        into that axes and returns it.
        """
        from .render import draw_map, to_numpy

        if ax is None:
            return self._figure(max_rows)
        draw_map(ax, to_numpy(self.heatmap()[index]), self.signed)
        ax.set_title(f"{self.method} (class {self.targets[index].item()})", fontsize=8)
        return ax

    def _figure(self, max_rows: int | None) -> Figure:
        from .render import grid_figure, row_labels

        return grid_figure(self.inputs, {self.method: self}, self.input_range, row_labels(self), max_rows)

    def _repr_png_(self) -> bytes:
        """The maps as a PNG (the first :data:`PREVIEW_ROWS` samples), for notebooks."""
        from .render import figure_png

        return figure_png(self._figure(PREVIEW_ROWS))

    def to_json(self) -> dict:
        out = {"method": self.method, "kind": self.kind, "params": to_json(self.params),
               "targets": self.targets.tolist(), "shape": list(self.attributions.shape),
               "meta": to_json(self.meta)}
        return out if self.feature_names is None else {**out, "feature_names": list(self.feature_names)}

    def save(self, directory: str | Path, stem: str | None = None) -> list[Path]:
        """Write ``<stem>.npy``, ``<stem>.json`` and pictures: for images ``<stem>.png`` (the heatmap)
        and ``<stem>-overlay.png``; for vectors ``<stem>.png``, a bar chart of the features with the
        largest attributions (:func:`salfw.core.render.bars_png`).

        For a batch of more than one input the PNGs get an index suffix
        (``<stem>-3.png``). Returns the written paths.
        """
        from .render import bars_png, heatmap_png, overlay_png  # matplotlib/PIL only when saving

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        stem = stem or self.method
        written = [out / f"{stem}.npy", out / f"{stem}.json"]
        np.save(written[0], self.attributions.detach().cpu().numpy())
        written[1].write_text(json.dumps(self.to_json(), indent=2))
        if self.attributions.dim() == 4:
            maps = self.heatmap().detach().cpu().numpy()
            for i, hm in enumerate(maps):
                suffix = "" if len(maps) == 1 else f"-{i}"
                written.append(heatmap_png(hm, out / f"{stem}{suffix}.png", signed=self.signed))
                if self.inputs is not None:
                    written.append(overlay_png(self.inputs[i].detach().cpu().numpy(), hm,
                                               out / f"{stem}{suffix}-overlay.png", self.input_range,
                                               signed=self.signed))
        elif self.attributions.dim() == 2:
            for i in range(len(self.targets)):
                suffix = "" if len(self.targets) == 1 else f"-{i}"
                written.append(bars_png(self, i, out / f"{stem}{suffix}.png"))
        return written
