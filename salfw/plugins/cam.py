"""The class activation map family: CAM, Grad-CAM, Grad-CAM++ and Guided Grad-CAM.

All four weight the feature maps ``A^k`` (channel ``k``) of one convolutional
layer and sum them into a coarse map of the layer's resolution, which is then
upsampled to the input size (``interpolation``, bilinear by default as in the
Grad-CAM paper; the same call as Captum's ``LayerAttribution.interpolate``,
``F.interpolate`` with ``align_corners=False``). Attributions are (N, 1, H, W)
(Guided Grad-CAM: shaped like the input); ``meta["layer_map"]`` holds the
layer-resolution map (N, 1, h, w) before upsampling and ``meta["layer"]`` the
layer's name. Scores ``y_c`` are the logits (before softmax), as in the papers.

* ``grad-cam`` (Selvaraju et al. 2017, "Grad-CAM: visual explanations from
  deep networks via gradient-based localization"):
  ``ReLU(Σ_k α_k A^k)`` with ``α_k = mean_ij ∂y_c/∂A^k_ij`` (the gradients'
  spatial mean). Equal to Captum's ``LayerGradCam`` (``relu_attributions=True``).
* ``grad-cam-plus-plus`` (Chattopadhay, Sarkar, Howlader & Balasubramanian
  2018, "Grad-CAM++"): ``ReLU(Σ_k w_k A^k)``, ``w_k = Σ_ij a^k_ij relu(g^k_ij)``
  with ``g = ∂y_c/∂A`` and the closed form of the paper's eq. 19 for an
  exponential-free score, ``a^k_ij = g² / (2g² + Σ_ab A^k_ab · g³ + ε)``
  (``a = 0`` where ``g = 0``, ``ε = 1e-6``), exactly as pytorch-grad-cam's
  ``GradCAMPlusPlus``.
* ``cam`` (Zhou, Khosla, Lapedriza, Oliva & Torralba 2016, "Learning deep
  features for discriminative localization"): needs a network ending in a
  global average pool (``nn.AdaptiveAvgPool2d(1)``), optionally ``nn.Flatten``
  / ``nn.Dropout``, and a final ``nn.Linear`` ``W``; then
  ``CAM_c = Σ_k W_ck A^k`` on the pool's input (the linear bias is spatially
  constant and left out, as in the paper). No ReLU by default (``relu``).
  On such a network Grad-CAM at the same layer without ReLU equals
  ``CAM / (h·w)``, since ``∂y_c/∂A^k_ij = W_ck / (h·w)``.
* ``guided-grad-cam`` (Selvaraju et al. 2017): guided backprop ⊙ the
  upsampled ReLU'd Grad-CAM map, as Captum's ``GuidedGradCam``.

The layer is a dotted path relative to the user's module, as in
``module.named_modules()`` (``layer="features.7"``). A module called more
than once per forward pass (ResNet's ``relu``, used twice in each block) is
named with the call's index after ``#``, counting from 0:
``layer="layer4.1.relu#1"`` is the block's second ReLU, its output; naming
such a module without an index is refused with the calls listed. Without
``layer``, a traced forward pass finds it (:func:`~salfw.sdk.layers.choose_layer`):
the last submodule whose output is a spatial (N, C, H, W) map with more than
one position (the last convolutional block, the usual choice in the papers;
``layer4`` in a ResNet, ``features`` in VGG, MobileNet, DenseNet and
EfficientNet). In a vision transformer, layers output tokens (N, 1 + h·w, D);
they are read as maps (N, D, h, w) on the patch grid with the class token
dropped, as pytorch-grad-cam's ``reshape_transform``, and the automatic layer
is the last block's first LayerNorm (``encoder.layers.encoder_layer_<L-1>.ln_1``
in torchvision's ``VisionTransformer``; pytorch-grad-cam's ViT example uses
timm's ``blocks[-1].norm1``): the last block's output reaches the logits only
through the class token, so its patch tokens' gradient is zero.
Local explanations.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import nn

from salfw.core.context import Context
from salfw.core.contracts import Method
from salfw.core.errors import ModelRequirementError
from salfw.core.guard import calling_thread_only
from salfw.core.hookspecs import hookimpl
from salfw.core.models import Model, WhiteBox
from salfw.core.params import batch_size, layer, param
from salfw.sdk.backprop import guided_relus
from salfw.sdk.layers import (
    INTERPOLATIONS,
    LayerChoice,
    captured_output,
    choose_layer,
    chosen_call,
    layer_activations_and_gradients,
    model_label,
    resolve_layer,
    trace,
    upsample,
)

GRADCAM_PLUS_PLUS_EPS = 1e-6  # pytorch-grad-cam's value


def activations_and_gradients(model: WhiteBox, x: torch.Tensor, targets: torch.Tensor, choice: LayerChoice,
                              ctx: Context, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The chosen layer's activations ``A`` (as maps) and ``∂y_c/∂A`` for the batch, in chunks of ``size`` samples."""
    pairs = [layer_activations_and_gradients(model, x[sl], targets[sl], choice)
             for sl in ctx.batches(x.shape[0], size)]
    return torch.cat([a for a, _ in pairs]), torch.cat([g for _, g in pairs])


def grad_cam_maps(model: WhiteBox, x: torch.Tensor, targets: torch.Tensor, layer: str | None, relu: bool,
                  ctx: Context, size: int) -> tuple[torch.Tensor, str]:
    """Layer-resolution Grad-CAM maps (N, 1, h, w) and the layer's name."""
    choice = choose_layer(model, x, layer)
    acts, grads = activations_and_gradients(model, x, targets, choice, ctx, size)
    alpha = grads.mean(dim=(2, 3), keepdim=True)
    maps = (alpha * acts).sum(dim=1, keepdim=True)
    return (maps.clamp(min=0) if relu else maps), choice.label


def grad_cam_plus_plus_maps(model: WhiteBox, x: torch.Tensor, targets: torch.Tensor, layer: str | None, relu: bool,
                            ctx: Context, size: int) -> tuple[torch.Tensor, str]:
    """Layer-resolution Grad-CAM++ maps (N, 1, h, w) and the layer's name."""
    choice = choose_layer(model, x, layer)
    acts, grads = activations_and_gradients(model, x, targets, choice, ctx, size)
    g2 = grads * grads
    g3 = g2 * grads
    sum_acts = acts.sum(dim=(2, 3), keepdim=True)
    a = g2 / (2 * g2 + sum_acts * g3 + GRADCAM_PLUS_PLUS_EPS)
    a = torch.where(grads != 0, a, torch.zeros_like(a))
    weights = (a * grads.clamp(min=0)).sum(dim=(2, 3), keepdim=True)
    maps = (weights * acts).sum(dim=1, keepdim=True)
    return (maps.clamp(min=0) if relu else maps), choice.label


def _leaf(call) -> bool:
    return next(call.module.children(), None) is None


def find_gap_head(model: WhiteBox, x: torch.Tensor) -> tuple[str, nn.Module, str, nn.Linear]:
    """(pool name, pool module, linear name, linear module) of a global-average-pool + linear head.

    Raises :class:`ModelRequirementError` naming the layer that breaks the pattern.
    """
    calls, logits = trace(model, x[:1])
    leaves = [c for c in calls if _leaf(c)]
    label = model_label(model)
    if not leaves:
        raise ModelRequirementError(f"{label} has no submodules; 'cam' needs a network ending in "
                                    f"nn.AdaptiveAvgPool2d(1), nn.Flatten and nn.Linear")
    last = leaves[-1]
    if not isinstance(last.module, nn.Linear) or last.output is None or last.output.shape != logits.shape \
            or not torch.equal(last.output, logits):
        raise ModelRequirementError(
            f"'cam' needs {label} to end in an nn.Linear layer giving the logits (after a global average pool); "
            f"its last layer is {last.name!r} ({type(last.module).__name__})")
    rest = [c for c in leaves[:-1] if not isinstance(c.module, (nn.Flatten, nn.Dropout, nn.Identity))]
    pool = rest[-1] if rest else None
    if pool is None or not isinstance(pool.module, nn.AdaptiveAvgPool2d) or pool.output is None \
            or pool.output.shape[2:] != (1, 1) or pool.input is None or pool.input.dim() != 4:
        found = f"{pool.name!r} ({type(pool.module).__name__})" if pool is not None else "nothing"
        raise ModelRequirementError(
            f"'cam' needs a global average pool (nn.AdaptiveAvgPool2d(1)) right before the final linear layer "
            f"{last.name!r} of {label} (Flatten/Dropout may sit between); found {found}. Use 'grad-cam' instead")
    return pool.name, pool.module, last.name, last.module


def cam_maps(model: WhiteBox, x: torch.Tensor, targets: torch.Tensor, relu: bool, ctx: Context,
             size: int) -> tuple[torch.Tensor, str]:
    """Layer-resolution CAM maps ``Σ_k W_ck A^k`` (N, 1, h, w) and the name of the pool whose input ``A`` is."""
    pool_name, pool, _, linear = find_gap_head(model, x)
    store: list[torch.Tensor] = []
    handle = pool.register_forward_pre_hook(calling_thread_only(lambda module, args: store.append(args[0])))
    try:
        with torch.no_grad():
            for sl in ctx.batches(x.shape[0], size):
                model.forward(x[sl])
    finally:
        handle.remove()
    acts = torch.cat(store)
    weights = linear.weight[targets.to(linear.weight.device)]
    maps = torch.einsum("nk,nkhw->nhw", weights.to(acts.dtype), acts)[:, None]
    return (maps.clamp(min=0) if relu else maps), pool_name


class _CamMethod(Method):
    """Shared by the CAM variants: each defines ``maps(model, x, targets, ctx) -> (layer maps, layer name)``."""

    box = "white"
    kind = "additive"
    scope = "local"
    input_kinds = ("image",)
    requires: ClassVar[tuple[str, ...]] = ("conv",)

    @dataclasses.dataclass(frozen=True)
    class Params:
        layer: str | None = layer(None, "dotted module path (as in named_modules()), '#k' for a module's k-th call "
                                        "('layer4.1.relu#1'); None: the last spatial layer")
        relu: bool = param(True, "keep only positive evidence, ReLU(Σ_k w_k A^k), as in the paper")
        interpolation: str = param("bilinear", "how the layer map is resized to the input (F.interpolate mode)",
                                   choices=INTERPOLATIONS)
        batch_size: int = batch_size(128, "samples per forward/backward pass")

    def maps(self, model: WhiteBox, x: torch.Tensor, targets: torch.Tensor, ctx: Context
             ) -> tuple[torch.Tensor, str]:
        raise NotImplementedError

    def attribute(self, model: Model, x: torch.Tensor, targets: torch.Tensor, ctx: Context
                  ) -> tuple[torch.Tensor, dict[str, Any]]:
        assert isinstance(model, WhiteBox)  # check_model refused any other model
        maps, name = self.maps(model, x, targets, ctx)
        up = upsample(maps, x.shape[2:], self.params.interpolation)
        return up, {"layer": name, "layer_map": maps.detach()}


class GradCam(_CamMethod):
    name = "grad-cam"
    summary = "ReLU(Σ_k α_k A^k), α_k the mean gradient of feature map k (Selvaraju et al. 2017, Grad-CAM)"

    def maps(self, model: WhiteBox, x: torch.Tensor, targets: torch.Tensor, ctx: Context
             ) -> tuple[torch.Tensor, str]:
        p = self.params
        return grad_cam_maps(model, x, targets, p.layer, p.relu, ctx, p.batch_size)


class GradCamPlusPlus(_CamMethod):
    name = "grad-cam-plus-plus"
    summary = "Grad-CAM with higher-order pixel weights of the positive gradients (Chattopadhay et al. 2018)"

    def maps(self, model: WhiteBox, x: torch.Tensor, targets: torch.Tensor, ctx: Context
             ) -> tuple[torch.Tensor, str]:
        p = self.params
        return grad_cam_plus_plus_maps(model, x, targets, p.layer, p.relu, ctx, p.batch_size)


class Cam(_CamMethod):
    name = "cam"
    summary = "class activation map Σ_k W_ck A^k of a global-average-pool + linear head (Zhou et al. 2016)"
    requires = ("conv", "global average pool + linear head")

    @dataclasses.dataclass(frozen=True)
    class Params:
        relu: bool = param(False, "clip negative evidence (the paper's CAM has no ReLU)")
        interpolation: str = param("bilinear", "how the layer map is resized to the input (F.interpolate mode)",
                                   choices=INTERPOLATIONS)
        batch_size: int = batch_size(256, "samples per forward pass")

    def maps(self, model: WhiteBox, x: torch.Tensor, targets: torch.Tensor, ctx: Context
             ) -> tuple[torch.Tensor, str]:
        return cam_maps(model, x, targets, self.params.relu, ctx, self.params.batch_size)


class GuidedGradCam(Method):
    name = "guided-grad-cam"
    box = "white"
    kind = "additive"
    scope = "local"
    input_kinds = ("image",)
    requires = ("conv", "rectifiers (ReLU, ReLU6 or LeakyReLU; modules or functional)")
    summary = "guided backprop ⊙ upsampled Grad-CAM (Selvaraju et al. 2017, Guided Grad-CAM)"

    @dataclasses.dataclass(frozen=True)
    class Params:
        layer: str | None = layer(None, "dotted module path (as in named_modules()), '#k' for a module's k-th call "
                                        "('layer4.1.relu#1'); None: the last spatial layer")
        interpolation: str = param("bilinear", "how the Grad-CAM map is resized to the input (F.interpolate mode)",
                                   choices=INTERPOLATIONS)
        batch_size: int = batch_size(128, "samples per forward/backward pass")

    def attribute(self, model: Model, x: torch.Tensor, targets: torch.Tensor, ctx: Context
                  ) -> tuple[torch.Tensor, dict[str, Any]]:
        """One forward pass per chunk, two backward passes over it: the ordinary gradient at the layer
        (Grad-CAM), then the guided gradient at the input."""
        assert isinstance(model, WhiteBox)  # check_model refused any other model
        p = self.params
        choice = choose_layer(model, x, p.layer)
        module = resolve_layer(model, choice.name)
        guided, maps = [], []
        for sl in ctx.batches(x.shape[0], p.batch_size):
            chunk = x[sl].detach().requires_grad_(True)
            with captured_output(module, choice.label, index=choice.index) as store, guided_relus(model) as switch, \
                    torch.enable_grad():
                out = model.forward(chunk)
                acts = chosen_call(store, choice, module)
                selected = out.gather(1, targets[sl, None].to(out.device)).sum()
                switch.on = False
                (grads,) = torch.autograd.grad(selected, acts, retain_graph=True)
                switch.on = True
                (guided_chunk,) = torch.autograd.grad(selected, chunk)
            alpha = choice.as_maps(grads).mean(dim=(2, 3), keepdim=True)
            maps.append((alpha * choice.as_maps(acts.detach())).sum(dim=1, keepdim=True).clamp(min=0))
            guided.append(guided_chunk)
        layer_map = torch.cat(maps)
        attributions = torch.cat(guided) * upsample(layer_map, x.shape[2:], p.interpolation)
        return attributions, {"layer": choice.label, "layer_map": layer_map}


@hookimpl
def salfw_register_methods(register):
    for method in (GradCam, GradCamPlusPlus, Cam, GuidedGradCam):
        register(method)
