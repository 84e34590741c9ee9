"""The result of every method: attributions plus what is needed to trust them.

``attributions`` has the input's shape ((N, C, H, W) or (N, 1, H, W) for a
channel-free map, (N, D) for vectors). ``heatmap()`` sums over channels, the
convention of Captum's and Zennit's visualisations. ``save()`` writes the raw
array, a PNG heatmap, an overlay on the input and the JSON metadata.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .params import to_json

KINDS = ("additive", "comparative", "mask")


@dataclasses.dataclass
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
