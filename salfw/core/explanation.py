"""The result of every method: attributions plus what is needed to trust them.

``attributions`` has the input's shape ((N, C, H, W) or (N, 1, H, W) for a
channel-free map, (N, D) for vectors). ``heatmap()`` sums over channels, the
convention of Captum's and Zennit's visualisations. ``save()`` writes the raw
array, a PNG heatmap, an overlay on the input and the JSON metadata. ``plot()``
draws the maps on a matplotlib figure (``_repr_png_`` shows them in a notebook).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

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

    def heatmap(self) -> torch.Tensor:
        """(N, H, W) for images (sum over channels), (N, D) for vectors."""
        a = self.attributions
        return a.sum(dim=1) if a.dim() == 4 else a

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
        return {"method": self.method, "kind": self.kind, "params": to_json(self.params),
                "targets": self.targets.tolist(), "shape": list(self.attributions.shape),
                "meta": to_json(self.meta)}

    def save(self, directory: str | Path, stem: str | None = None) -> list[Path]:
        """Write ``<stem>.npy``, ``<stem>.png``, ``<stem>-overlay.png`` and ``<stem>.json``.

        For a batch of more than one image the PNGs get an index suffix
        (``<stem>-3.png``). Returns the written paths.
        """
        from .render import heatmap_png, overlay_png  # matplotlib/PIL only when saving

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
        return written
