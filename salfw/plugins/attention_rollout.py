"""Attention rollout (Abnar & Zuidema 2020, "Quantifying attention flow in
transformers", ACL): how much of the class token's representation in the last
layer comes from each input patch, following the attention weights through
every layer.

For layer ``l`` with attention weights ``W_l`` (N, heads, T, T) over T tokens
(rows: the attending token, summing to 1):

    A_l = mean over heads of W_l + I,  each row renormalised to sum 1   (= (W̄_l + I) / 2)
    R   = A_L · A_{L-1} ⋯ A_1
    rollout = R[class token, patches]

The identity stands for the residual connection around each attention layer,
with the paper's equal weight of 0.5 for the residual and the attention; heads
are averaged, as in the paper. The class token's row over the patch tokens is
laid on the patch grid (h, w) and upsampled to the input (``interpolation``,
bilinear by default, ``F.interpolate`` with ``align_corners=False``). The
result (N, 1, H, W) sums to at most 1 per sample before upsampling (the rest
stays on the class token itself); ``meta["layer_map"]`` holds the (N, 1, h, w)
grid and ``meta["layers"]`` the attention layers multiplied. Like VisualBackProp
it does not depend on the target class: it shows where the class token reads
from, for every class at once. A local explanation.

Which networks: every ``nn.MultiheadAttention`` layer of the model, in the
order they are called, torchvision's ``VisionTransformer`` among them. Its
``EncoderBlock`` calls the attention with ``need_weights=False``; while the
method runs, a forward pre-hook asks each attention layer for its per-head
weights (``need_weights=True, average_attn_weights=False``), so the weights
are the ones the layer itself computes, and a forward hook records them and
hands the caller the output it asked for. The patch grid is the spatial size
of the patch embedding's map (the last (N, D, h, w) output before the first
attention layer, ``h·w = T − 1``), and the class token is token 0. A model
without ``nn.MultiheadAttention`` layers (a CNN, or a transformer whose
attention is written by hand), or whose tokens have no class token, is
refused with :class:`ModelRequirementError`.

Attention flow, the paper's other method, is left out: it solves a maximum
flow problem per input token on a graph of (L + 1)·T nodes and L·T² edges
(ViT-B/16: 197 problems on about 466 000 edges per image), with no batched
tensor form; the paper itself reports it as much slower than rollout.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from salfw.core.context import Context
from salfw.core.contracts import Method
from salfw.core.errors import ModelRequirementError
from salfw.core.guard import calling_thread_only
from salfw.core.hookspecs import hookimpl
from salfw.core.models import Model, WhiteBox
from salfw.core.params import batch_size, param
from salfw.sdk.layers import INTERPOLATIONS, model_label, patch_grid, trace, upsample

#: ``nn.MultiheadAttention.forward``'s parameters after query, key and value, in order.
_SETTINGS = ("key_padding_mask", "need_weights", "attn_mask", "average_attn_weights", "is_causal")


def attention_layers(model: WhiteBox) -> list[tuple[str, nn.MultiheadAttention]]:
    """The model's ``nn.MultiheadAttention`` layers, or a ModelRequirementError saying what the method needs."""
    found = [(name, m) for name, m in model.module.named_modules() if isinstance(m, nn.MultiheadAttention)]
    if not found:
        conv = next((f": its layers are convolutions, the first {name!r} ({type(m).__name__})"
                     for name, m in model.module.named_modules() if isinstance(m, nn.modules.conv._ConvNd)), "")
        raise ModelRequirementError(
            f"{model_label(model)} has no attention layer (nn.MultiheadAttention){conv}; attention rollout (Abnar & "
            f"Zuidema 2020) multiplies the attention weights of a transformer's layers. Use 'grad-cam' or "
            f"'integrated-gradients', which apply to any differentiable network")
    return found


@contextlib.contextmanager
def captured_attention(layers: list[tuple[str, nn.MultiheadAttention]]) -> Iterator[list[torch.Tensor]]:
    """Record every attention layer call's per-head weights (N, heads, T, T), in the order of the calls.

    A pre-hook asks the layer for its weights, per head; the hook records them and returns the
    output its caller asked for (no weights, or the head average, as the caller's arguments said).
    """
    store: list[torch.Tensor] = []
    asked: list[tuple[bool, bool]] = []

    def pre_hook(module, args, kwargs):
        given = {**dict(zip(_SETTINGS, args[3:], strict=False)), **kwargs}
        asked.append((given.get("need_weights", True), given.get("average_attn_weights", True)))
        return args[:3], {**given, "need_weights": True, "average_attn_weights": False}

    def hook(module, args, kwargs, output):
        need, average = asked.pop()
        out, weights = output
        store.append(weights)
        return out, ((weights.mean(dim=1) if average else weights) if need else None)

    handles = []
    try:
        for _, layer in layers:
            handles.append(layer.register_forward_pre_hook(calling_thread_only(pre_hook), with_kwargs=True))
            handles.append(layer.register_forward_hook(calling_thread_only(hook), with_kwargs=True))
        yield store
    finally:
        for handle in handles:
            handle.remove()


def rollout(weights: list[torch.Tensor]) -> torch.Tensor:
    """``A_L ⋯ A_1`` (N, T, T) with ``A_l`` the head mean of layer ``l``'s weights plus the identity, rows
    renormalised (Abnar & Zuidema 2020, eq. 1)."""
    result = None
    for w in weights:
        a = w.mean(dim=1)
        a = a + torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        a = a / a.sum(dim=-1, keepdim=True)
        result = a if result is None else a @ result
    assert result is not None  # attention_layers refused a model without attention
    return result


def tiny_vit(seed: int = 0, channels: int = 1, classes: int = 3, dim: int = 8, heads: int = 2, depth: int = 2,
             patch: int = 2, tokens: int = 20) -> nn.Module:
    """A small vision transformer shaped like torchvision's ``VisionTransformer`` (patch embedding by a
    strided convolution, a class token first, learnt position embeddings, pre-norm blocks of
    ``nn.MultiheadAttention`` and a GELU MLP, the head on the class token), for any image whose patch grid
    has ``tokens`` patches (the conformance suite's 1×8×10 images: 4×5 patches of 2×2)."""
    torch.manual_seed(seed)
    return _TinyViT(channels, classes, dim, heads, depth, patch, tokens).eval()


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.self_attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        y, _ = self.self_attention(y, y, y, need_weights=False)
        x = x + y
        return x + self.mlp(self.ln_2(x))


class _TinyViT(nn.Module):
    def __init__(self, channels: int, classes: int, dim: int, heads: int, depth: int, patch: int, tokens: int):
        super().__init__()
        self.conv_proj = nn.Conv2d(channels, dim, patch, stride=patch)
        self.class_token = nn.Parameter(0.1 * torch.randn(1, 1, dim))
        self.pos_embedding = nn.Parameter(0.1 * torch.randn(1, tokens + 1, dim))
        self.layers = nn.Sequential(*[_Block(dim, heads) for _ in range(depth)])
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embedding
        return self.head(self.ln(self.layers(x))[:, 0])


def _test_model(kind: str) -> Model:
    return WhiteBox(tiny_vit())


class AttentionRollout(Method):
    name = "attention-rollout"
    box = "white"
    kind = "additive"
    scope = "local"
    input_kinds = ("image",)
    requires = ("nn.MultiheadAttention layers over patch tokens with a class token",)
    summary = "product of head-averaged attention (+ identity) over the layers, class token row (Abnar & Zuidema 2020)"
    test_model = staticmethod(_test_model)  # type: ignore[assignment]  # mypy binds a ClassVar callable as a method

    @dataclasses.dataclass(frozen=True)
    class Params:
        interpolation: str = param("bilinear", "how the patch grid is resized to the input (F.interpolate mode)",
                                   choices=INTERPOLATIONS)
        batch_size: int = batch_size(128, "samples per forward pass")

    def check_model(self, model: Model) -> None:
        super().check_model(model)
        assert isinstance(model, WhiteBox)  # the white-box check above refused any other model
        attention_layers(model)

    def attribute(self, model: Model, x: torch.Tensor, targets: torch.Tensor, ctx: Context
                  ) -> tuple[torch.Tensor, dict[str, Any]]:
        assert isinstance(model, WhiteBox)  # check_model refused any other model
        layers = attention_layers(model)
        grid = self._grid(model, x, layers)
        maps = []
        with captured_attention(layers) as store, torch.no_grad():
            for sl in ctx.batches(x.shape[0], self.params.batch_size):
                store.clear()
                model.forward(x[sl])
                sizes = {w.shape[-1] for w in store}
                if len(sizes) != 1:
                    raise ModelRequirementError(f"the attention layers of {model_label(model)} attend over different "
                                                f"numbers of tokens ({sorted(sizes)}); rollout multiplies attention "
                                                f"maps over one set of tokens")
                rolled = rollout(store)
                maps.append(rolled[:, 0, 1:].reshape(-1, 1, *grid))
        layer_map = torch.cat(maps)
        return upsample(layer_map, x.shape[2:], self.params.interpolation), {
            "layer_map": layer_map, "layers": [name for name, _ in layers]}

    @staticmethod
    def _grid(model: WhiteBox, x: torch.Tensor, layers: list[tuple[str, nn.MultiheadAttention]]) -> tuple[int, int]:
        """The patch grid (h, w), from one traced forward pass of the first sample."""
        calls, _ = trace(model, x[:1])
        first = next((c for c in calls if c.module is layers[0][1]), None)
        found = None if first is None else patch_grid(calls, first)
        if found is None or not found[1]:
            raise ModelRequirementError(
                f"attention rollout reads the class token's row over the patch tokens; the tokens of "
                f"{model_label(model)} at its first attention layer {layers[0][0]!r} are not a class token followed "
                f"by the patches of an earlier (N, C, h, w) patch embedding. Use 'grad-cam'")
        return found[0]


@hookimpl
def salfw_register_methods(register):
    register(AttentionRollout)
