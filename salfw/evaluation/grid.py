"""The comparison grid: one image, rows are inputs, columns the input and then each method.

Signed maps (both signs present in the method's maps) use the diverging ``bwr`` colour map,
symmetric around zero (white = 0, scaled per map by its largest |value|); unsigned maps use the
sequential ``inferno`` scaled from the map's minimum to its maximum -- the convention of the
seed papers' figures and of :mod:`salfw.core.render`. Each column is labelled with the method
and its kind, each row with the explained class and its probability. Methods that could not run
are left out (the callers report them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from salfw.core.explanation import Explanation


def draw_grid(x, explanations: dict[str, Explanation], path: str | Path, input_range=(0.0, 1.0),
              labels: list[str] | None = None) -> Path:
    """Save the grid for inputs ``x`` (N, C, H, W) and ``{method: Explanation}`` to ``path``;
    ``labels`` name the rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from salfw.core.render import colourise

    columns = ["input", *explanations]
    images = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=np.float64)
    n = images.shape[0]
    lo, hi = input_range
    fig, axes = plt.subplots(n, len(columns), figsize=(1.6 * len(columns), 1.7 * n + 0.4), squeeze=False)
    for j, name in enumerate(columns):
        title = "input" if name == "input" else f"{name}\n({explanations[name].kind})"
        axes[0][j].set_title(title, fontsize=7)
        if name != "input":
            signed = explanations[name].signed
            maps = explanations[name].heatmap().detach().cpu().numpy()
        for i in range(n):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if name == "input":
                picture = np.moveaxis((images[i] - lo) / (hi - lo), 0, -1)
                ax.imshow(picture[..., 0] if picture.shape[-1] == 1 else picture[..., :3], cmap="gray",
                          vmin=0, vmax=1)
                if labels is not None:
                    ax.set_ylabel(labels[i], fontsize=7)
            else:
                ax.imshow(colourise(maps[i], signed))
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
