"""Layer helpers shared by the guided-backprop, CAM and VisualBackProp plugins.

Layers are named as in ``model.module.named_modules()`` (a dotted path relative
to the user's module, e.g. ``"features.7"`` or ``"layer4.1.relu"``; the
preprocessing stage in front of it is never a candidate). Every hook these
helpers add is removed in a ``finally`` block, so the user's model is left as
it was even when a forward or backward pass raises (``salfw.core.guard``
removes leftovers as well), and every hook is wrapped in
:func:`~salfw.core.guard.calling_thread_only`, so it acts only on the forward
passes of the thread that added it (another thread explaining with the same
model at the same time passes through untouched). Each helper works on the
batch it is given, in one pass; a method chunks its batch with
:meth:`salfw.core.context.Context.batches`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from salfw.core.errors import ModelRequirementError, ParameterError
from salfw.core.guard import calling_thread_only
from salfw.core.models import WhiteBox


@dataclass
class Call:
    """One module call seen during a traced forward pass."""

    name: str
    module: nn.Module
    input: torch.Tensor | None
    output: torch.Tensor | None


def _first_tensor(value) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    return None


def model_label(model: WhiteBox) -> str:
    """How error messages name the user's network."""
    return f"the model ({type(model.module).__name__})"


def trace(model: WhiteBox, x: torch.Tensor) -> tuple[list[Call], torch.Tensor]:
    """Forward ``x`` once without gradients; return every submodule call in order of completion, and the logits.

    A container finishes after its children, so it comes after them. The root
    module itself is left out. Inputs and outputs are kept (first tensor of each).
    """
    calls: list[Call] = []
    handles = []

    def hook_for(name):
        def hook(module, inputs, output):
            calls.append(Call(name, module, _first_tensor(inputs), _first_tensor(output)))
        return hook

    try:
        for name, module in model.module.named_modules():
            if name:
                handles.append(module.register_forward_hook(calling_thread_only(hook_for(name))))
        with torch.no_grad():
            logits = model.forward(x)
    finally:
        for handle in handles:
            handle.remove()
    return calls, logits


def resolve_layer(model: WhiteBox, name: str) -> nn.Module:
    """The submodule of ``model.module`` at the dotted path ``name``, or a ParameterError listing the names."""
    modules = dict(model.module.named_modules())
    modules.pop("", None)
    if name not in modules:
        names = list(modules)
        shown = ", ".join(names[:40]) + (", ..." if len(names) > 40 else "")
        raise ParameterError(f"layer {name!r} is not a submodule of {model_label(model)}; layers are named "
                             f"as in module.named_modules(): {shown or 'none (the model has no submodules)'}")
    return modules[name]


def is_spatial(t: torch.Tensor | None) -> bool:
    """A (N, C, H, W) activation with more than one position (a global pool's 1x1 output is not spatial)."""
    return t is not None and t.dim() == 4 and t.shape[2] * t.shape[3] > 1


def last_spatial_layer(model: WhiteBox, x: torch.Tensor) -> str:
    """Name of the last submodule (in order of completion) whose output is a spatial (N, C, H, W) map.

    Found by one traced forward pass of the first sample; in a plain CNN this is
    the last convolutional block's ReLU, in a ResNet the last stage.
    """
    calls = [c for c in trace(model, x[:1])[0] if is_spatial(c.output)]
    if not calls:
        raise ModelRequirementError(f"{model_label(model)} has no layer with a spatial (N, C, H, W) output of more "
                                    f"than one position; the CAM family needs a convolutional layer")
    return calls[-1].name


@contextlib.contextmanager
def captured_output(layer: nn.Module, name: str, cut: bool = False) -> Iterator[list[torch.Tensor]]:
    """Forward hook that records ``layer``'s output on each call.

    A clone of the recorded activation is passed on to the rest of the network,
    so an in-place operation downstream (``ReLU(inplace=True)``) cannot
    overwrite it. With ``cut`` the recorded activation is a new leaf that
    requires grad: gradients stop there, and the layers before it need not
    record a graph (Grad-CAM only needs ``∂y/∂A``).
    """
    store: list[torch.Tensor] = []

    def hook(module, inputs, output):
        if not isinstance(output, torch.Tensor):
            raise ModelRequirementError(f"layer {name!r} ({type(module).__name__}) returns "
                                        f"{type(output).__name__}, not a tensor")
        recorded = output.detach().requires_grad_(True) if cut else output
        store.append(recorded)
        return recorded.clone()

    handle = layer.register_forward_hook(calling_thread_only(hook))
    try:
        yield store
    finally:
        handle.remove()


def layer_activations_and_gradients(model: WhiteBox, x: torch.Tensor, targets: torch.Tensor,
                                    layer_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Activations ``A`` of the named layer and ``∂y_target/∂A`` for each sample of ``x``, in one
    forward and one backward pass (batching is the caller's, as for
    :func:`salfw.sdk.backprop.target_gradient`).

    The layer must be called exactly once per forward pass.
    """
    layer = resolve_layer(model, layer_name)
    with captured_output(layer, layer_name, cut=True) as store, torch.enable_grad():
        out = model.forward(x)
        if len(store) != 1:
            raise ModelRequirementError(f"layer {layer_name!r} ({type(layer).__name__}) is called "
                                        f"{len(store)} times per forward pass; pick a layer called once")
        (act,) = store
        selected = out.gather(1, targets[:, None].to(out.device)).sum()
        (grad,) = torch.autograd.grad(selected, act)
    return act.detach(), grad


def upsample(maps: torch.Tensor, size: Sequence[int], mode: str) -> torch.Tensor:
    """Resize (N, 1, h, w) maps to the input's (H, W), as Captum's ``LayerAttribution.interpolate``
    (``F.interpolate`` with ``align_corners`` left at its default, False)."""
    return F.interpolate(maps, size=tuple(size), mode=mode)


INTERPOLATIONS = ("bilinear", "nearest", "bicubic", "area")
