"""Finding a named layer and reading (or differentiating through) its output.

Layers are named as in ``module.named_modules()`` (``"3"`` for the fourth
module of an ``nn.Sequential``, ``"features.conv1"`` in a nested network).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from salfw.core.context import Context
from salfw.core.errors import ModelRequirementError, ParameterError
from salfw.core.guard import calling_thread_only
from salfw.core.models import Model, WhiteBox


def require_white_box(model: Model, who: str) -> WhiteBox:
    """``model`` if it is a :class:`WhiteBox`; otherwise a ModelRequirementError naming ``who``."""
    if not isinstance(model, WhiteBox):
        raise ModelRequirementError(f"{who} needs a white box (salfw.WhiteBox over a torch.nn.Module), "
                                    f"got {type(model).__name__}")
    return model


def find_layer(module: nn.Module, name: str | None) -> nn.Module:
    """The submodule called ``name``; a ParameterError listing the names otherwise (also for None)."""
    layers = dict(module.named_modules())
    if not name or name not in layers:
        names = [n for n in layers if n]
        raise ParameterError(f"no layer named {name!r}; the network's layers are: {', '.join(names)}")
    return layers[name]


@contextlib.contextmanager
def tapped(layer: nn.Module, detach_leaf: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Record ``layer``'s output in ``tap["out"]`` while the context is open.

    With ``detach_leaf`` the output is replaced by a detached copy that
    requires grad, so that the gradient of anything downstream with respect
    to the layer's activations is available even when neither the input nor
    the parameters require grad (TCAV's directional derivatives).
    """
    tap: dict[str, torch.Tensor] = {}

    def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        if detach_leaf:
            output = output.detach().requires_grad_(True)
        tap["out"] = output
        return output

    handle = layer.register_forward_hook(calling_thread_only(hook))
    try:
        yield tap
    finally:
        handle.remove()


def activations(model: WhiteBox, layer_name: str | None, x: torch.Tensor, ctx: Context) -> torch.Tensor:
    """The output of layer ``layer_name`` for the pixel-space batch ``x`` (no grad, in chunks of
    ``ctx``'s batch size)."""
    layer = find_layer(model.module, layer_name)
    outs = []
    with torch.no_grad(), tapped(layer) as tap:
        for chunk in ctx.batches(len(x), description=f"activations of {layer_name}"):
            model.forward(x[chunk])
            outs.append(tap["out"])
    return torch.cat(outs)
