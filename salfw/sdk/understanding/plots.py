"""Plots of the model toolkit (the GeoSal thesis's ``Mnist_net`` plots),
written to image files. Each is drawn on its own ``matplotlib.figure.Figure``
(no pyplot), so importing or calling this module never switches matplotlib's
backend nor touches a notebook's figures:

* :func:`plot_conv_weights`: a convolution layer's kernels, one tile per
  output channel (for one input channel), on a symmetric diverging scale so
  that zero is white;
* :func:`plot_layer_outputs`: a layer's output for one input, one tile per
  channel (a bar chart for a flat layer);
* :func:`plot_layer_averages`: each layer's output averaged over a batch,
  per channel (spatial mean) or per unit, one bar chart per layer;
* :func:`plot_errors`: example misclassified inputs titled "true -> predicted".

Every function returns the path it wrote.
"""

from __future__ import annotations

import math
import os

import torch
from matplotlib.figure import Figure
from torch import nn

from salfw.core.errors import InputError, ParameterError
from salfw.core.guard import calling_thread_only
from salfw.core.models import WhiteBox

from .layers import find_layer

PathLike = str | os.PathLike[str]


def _grid(n: int) -> tuple[int, int]:
    cols = min(n, 8)
    return math.ceil(n / cols), cols


def _save(fig: Figure, path: PathLike) -> str:
    out = os.fspath(path)
    fig.savefig(out, dpi=80, bbox_inches="tight")
    return out


def _tiles(maps: torch.Tensor, titles: list[str], path: PathLike, suptitle: str, symmetric: bool) -> str:
    """One mosaic image of the 2-D ``maps`` (one axes, so that many tiles draw fast), each tile titled."""
    rows, cols = _grid(len(maps))
    h, w = maps.shape[1:]
    gap = max(1, h // 6)
    mosaic = torch.full((rows * (h + gap), cols * (w + gap)), float("nan"))
    for i, image in enumerate(maps):
        r, c = divmod(i, cols)
        mosaic[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = image
    fig = Figure(figsize=(1.3 * cols, 1.3 * rows + 0.4))
    ax = fig.subplots()
    limit = maps.abs().max().item() or 1.0
    if symmetric:
        ax.imshow(mosaic.numpy(), cmap="bwr", vmin=-limit, vmax=limit, interpolation="nearest")
    else:
        ax.imshow(mosaic.numpy(), cmap="gray", interpolation="nearest")
    for i, title in enumerate(titles):
        r, c = divmod(i, cols)
        ax.text(c * (w + gap) + w / 2, r * (h + gap) - 0.5, title, ha="center", va="bottom", fontsize=6)
    ax.axis("off")
    ax.set_title(suptitle, fontsize=9, pad=12)
    return _save(fig, path)


def plot_conv_weights(module: nn.Module, layer: str, path: PathLike, in_channel: int = 0) -> str:
    """Tiles of the kernels ``weight[:, in_channel]`` of the Conv2d layer ``layer``."""
    conv = find_layer(module, layer)
    if not isinstance(conv, nn.Conv2d):
        raise ParameterError(f"layer {layer!r} is a {type(conv).__name__}, expected a Conv2d "
                             f"to plot convolution weights")
    if not 0 <= in_channel < conv.in_channels:
        raise ParameterError(f"in_channel must be in 0..{conv.in_channels - 1}, got {in_channel}")
    weights = conv.weight.detach().cpu().float()[:, in_channel]
    return _tiles(weights, [f"filter {i}" for i in range(len(weights))], path,
                  f"layer {layer}: Conv2d weights, input channel {in_channel}", symmetric=True)


def _outputs(model: WhiteBox, x: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    """Outputs of the named layers for the pixel-space batch ``x`` (one forward pass)."""
    layers = [find_layer(model.module, n) for n in names]
    outs: dict[str, torch.Tensor] = {}
    handles = [layer.register_forward_hook(
        calling_thread_only(lambda _m, _i, o, n=n: outs.__setitem__(n, o.detach().cpu().float())))
               for n, layer in zip(names, layers, strict=True)]
    try:
        with torch.no_grad():
            model.forward(x)
    finally:
        for h in handles:
            h.remove()
    return outs


def plot_layer_outputs(model: WhiteBox, x: torch.Tensor, layer: str, path: PathLike) -> str:
    """Layer ``layer``'s output for the single pixel-space input ``x`` (shape (1, ...))."""
    if x.shape[0] != 1:
        raise InputError(f"plot_layer_outputs takes one input (a batch of 1), got a batch of {x.shape[0]}")
    out = _outputs(model, x, [layer])[layer][0]
    if out.dim() == 3:
        return _tiles(out, [f"channel {i}" for i in range(len(out))], path,
                      f"layer {layer}: output ({tuple(out.shape)})", symmetric=bool((out < 0).any()))
    fig = Figure(figsize=(6, 2.5))
    ax = fig.subplots()
    ax.bar(range(out.numel()), out.flatten().numpy())
    ax.set_xlabel("unit")
    ax.set_title(f"layer {layer}: output ({tuple(out.shape)})", fontsize=9)
    return _save(fig, path)


def layer_names(module: nn.Module) -> list[str]:
    """Names of the leaf modules (the layers that compute), in definition order."""
    return [n for n, m in module.named_modules() if n and not list(m.children())]


def average_outputs(model: WhiteBox, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each layer's output averaged over the batch and, for maps, over space: one value per channel or unit."""
    names = layer_names(model.module)
    outs = _outputs(model, x, names)
    return {n: (o.mean(dim=(0, *range(2, o.dim()))) if o.dim() > 2 else o.mean(0).flatten()) for n, o in outs.items()}


def plot_layer_averages(model: WhiteBox, x: torch.Tensor, path: PathLike) -> str:
    """One bar chart per layer of :func:`average_outputs` over the batch ``x``."""
    averages = average_outputs(model, x)
    fig = Figure(figsize=(6, 1.3 * len(averages)))
    axes = fig.subplots(len(averages), 1, squeeze=False)
    for ax, (name, values) in zip(axes[:, 0], averages.items(), strict=True):
        ax.vlines(range(len(values)), 0, values.numpy(), linewidth=2)
        ax.axhline(0, color="grey", linewidth=0.5)
        ax.set_ylabel(f"{name}\n{type(find_layer(model.module, name)).__name__}", fontsize=7, rotation=0,
                      ha="right", va="center")
        ax.tick_params(labelsize=6)
    axes[0, 0].set_title(f"average output per channel/unit over {len(x)} inputs", fontsize=9)
    return _save(fig, path)


def plot_errors(images: torch.Tensor, labels: torch.Tensor, predicted: torch.Tensor, path: PathLike) -> str:
    """Tiles of misclassified images (N, C, H, W) titled "true -> predicted"."""
    if len(images) == 0:
        raise InputError("no errors to plot: the model classifies every input correctly")
    maps = images.detach().cpu().float().mean(1)
    titles = [f"{int(t)} -> {int(p)}" for t, p in zip(labels, predicted, strict=True)]
    return _tiles(maps, titles, path, "misclassified examples (true -> predicted)", symmetric=False)
