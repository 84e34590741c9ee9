"""Layer helpers shared by the guided-backprop, CAM, attention and VisualBackProp plugins.

Layers are named as in ``model.module.named_modules()`` (a dotted path relative
to the user's module, e.g. ``"features.7"`` or ``"layer4.1.relu"``; the
preprocessing stage in front of it is never a candidate). A module called
several times in one forward pass (ResNet's ``relu``, used twice per block)
is named with the call's index after ``#``, counting from 0 in the order of
the calls: ``"layer4.1.relu#1"`` is the second call, the block's output
(:func:`parse_layer`). Every hook these helpers add is removed in a
``finally`` block, so the user's model is left as it was even when a forward
or backward pass raises (``salfw.core.guard`` removes leftovers as well), and
every hook is wrapped in :func:`~salfw.core.guard.calling_thread_only`, so it
acts only on the forward passes of the thread that added it (another thread
explaining with the same model at the same time passes through untouched).
Each helper works on the batch it is given, in one pass; a method chunks its
batch with :meth:`salfw.core.context.Context.batches`.

Token layers: a vision transformer's layers output tokens (N, T, D) rather
than maps. :func:`choose_layer` recognises them by the patch grid of the
network's last spatial map before them (the patch embedding's (N, D, h, w)
output, with ``T = h·w`` or ``T = 1 + h·w`` with a class token first) and reads
them as maps (N, D, h, w), the class token dropped, exactly as
pytorch-grad-cam's ``reshape_transform`` for vision transformers does
(``t[:, 1:].reshape(N, h, w, D)`` moved to channels first).
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
    """One module call seen during a traced forward pass.

    ``index`` counts the module's calls in the pass (from 0); ``start`` and ``end``
    are the call's positions on one clock of call starts and ends (a call nested in
    another starts after it and ends before it); ``input_version`` and
    ``output_version`` are the in-place version counters of the input when the call
    started and of the output when it ended (an in-place change in between shows)."""

    name: str
    module: nn.Module
    input: torch.Tensor | None
    output: torch.Tensor | None
    index: int = 0
    start: int = 0
    end: int = 0
    input_version: int | None = None
    output_version: int | None = None


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
    open_calls: dict[int, list[tuple[int, int, int | None]]] = {}
    counts: dict[int, int] = {}
    clock = [0]
    handles = []

    def pre_hook(module, inputs):
        first = _first_tensor(inputs)
        index = counts.get(id(module), 0)
        counts[id(module)] = index + 1
        open_calls.setdefault(id(module), []).append((index, clock[0], None if first is None else first._version))
        clock[0] += 1

    def hook_for(name):
        def hook(module, inputs, output):
            index, start, version = open_calls[id(module)].pop()
            out = _first_tensor(output)
            calls.append(Call(name, module, _first_tensor(inputs), out, index, start, clock[0], version,
                              None if out is None else out._version))
            clock[0] += 1
        return hook

    try:
        for name, module in model.module.named_modules():
            if name:
                handles.append(module.register_forward_pre_hook(calling_thread_only(pre_hook)))
                handles.append(module.register_forward_hook(calling_thread_only(hook_for(name))))
        with torch.no_grad():
            logits = model.forward(x)
    finally:
        for handle in handles:
            handle.remove()
    return calls, logits


def _module_names(model: WhiteBox) -> dict[str, nn.Module]:
    modules = dict(model.module.named_modules())
    modules.pop("", None)
    return modules


def parse_layer(model: WhiteBox, spec: str) -> tuple[str, int | None]:
    """``"name"`` or ``"name#k"`` as (module path, call index or None), or a ParameterError listing the names."""
    name, _, index = spec.rpartition("#") if "#" in spec else (spec, "", "")
    if "#" in spec and not (index.isdigit() and name):
        raise ParameterError(f"layer {spec!r}: a call index is a whole number after '#', counting a module's "
                             f"calls in one forward pass from 0 (e.g. 'layer4.1.relu#1')")
    resolve_layer(model, name)
    return name, int(index) if index else None


def resolve_layer(model: WhiteBox, name: str) -> nn.Module:
    """The submodule of ``model.module`` at the dotted path ``name``, or a ParameterError listing the names."""
    modules = _module_names(model)
    if name not in modules:
        names = list(modules)
        shown = ", ".join(names[:40]) + (", ..." if len(names) > 40 else "")
        raise ParameterError(f"layer {name!r} is not a submodule of {model_label(model)}; layers are named "
                             f"as in module.named_modules() (add '#k' for the k-th call of a module called "
                             f"several times): {shown or 'none (the model has no submodules)'}")
    return modules[name]


def is_spatial(t: torch.Tensor | None) -> bool:
    """A (N, C, H, W) activation with more than one position (a global pool's 1x1 output is not spatial)."""
    return t is not None and t.dim() == 4 and t.shape[2] * t.shape[3] > 1


@dataclass(frozen=True)
class LayerChoice:
    """One call of one layer, and how its output reads as feature maps (N, C, h, w).

    ``index`` is the call (None: the module is called once per forward pass);
    ``grid`` the patch grid (h, w) of a token output (N, T, D), None for a map;
    ``class_token`` whether the first token is a class token (dropped)."""

    name: str
    index: int | None = None
    grid: tuple[int, int] | None = None
    class_token: bool = False

    @property
    def label(self) -> str:
        return self.name if self.index is None else f"{self.name}#{self.index}"

    def as_maps(self, t: torch.Tensor) -> torch.Tensor:
        """The layer output ``t`` as maps (N, C, h, w): unchanged for a map; tokens (N, T, D) without the
        class token, laid on the patch grid, channels first (pytorch-grad-cam's ``reshape_transform``)."""
        if self.grid is None:
            return t
        tokens = t[:, 1:] if self.class_token else t
        return tokens.reshape(t.shape[0], *self.grid, t.shape[2]).permute(0, 3, 1, 2)


def patch_grid(calls: list[Call], call: Call) -> tuple[tuple[int, int], bool] | None:
    """The patch grid (h, w) of a call's token output (N, T, D) and whether a class token comes first (T = 1 + h·w;
    T = h·w without one), from the last spatial (N, C, h, w) map before the call (the patch embedding), or None
    when the output is not tokens on such a grid. ``calls`` is :func:`trace`'s list."""
    out = call.output
    if out is None or out.dim() != 3:
        return None
    tokens = out.shape[1]
    for earlier in reversed([c for c in calls if c.end < call.start and is_spatial(c.output)]):
        assert earlier.output is not None
        h, w = earlier.output.shape[2:]
        if h * w in (tokens, tokens - 1):
            return (int(h), int(w)), h * w == tokens - 1
    return None


def _is_attention(module: nn.Module) -> bool:
    return isinstance(module, nn.MultiheadAttention) or type(module).__name__.endswith("Attention")


def _default_call(model: WhiteBox, calls: list[Call]) -> Call:
    """The automatic layer: the last feature map, or, in a transformer, the tokens entering the last attention."""
    maps = [c for c in calls if is_spatial(c.output) and not _enlarges(c)]
    tokens = [c for c in calls if patch_grid(calls, c) is not None]
    if tokens and (not maps or tokens[-1].end > maps[-1].end):
        attention = [c for c in calls if _is_attention(c.module)]
        if attention:
            last = max(attention, key=lambda c: c.start)
            before = [c for c in tokens if c.end < last.start]
            if before:
                return before[-1]
        return tokens[-1]
    if not maps:
        raise ModelRequirementError(f"{model_label(model)} has no layer with a spatial (N, C, H, W) output of more "
                                    f"than one position; the CAM family needs a convolutional layer")
    return maps[-1]


def _enlarges(call: Call) -> bool:
    """An upsampling layer (VGG's AdaptiveAvgPool2d((7, 7)) on a smaller map) repeats its input: not a feature map."""
    return call.input is not None and call.input.dim() == 4 and call.output is not None \
        and call.output.shape[2] * call.output.shape[3] > call.input.shape[2] * call.input.shape[3]


def choose_layer(model: WhiteBox, x: torch.Tensor, spec: str | None) -> LayerChoice:
    """The layer call named by ``spec`` (``"name"`` or ``"name#k"``), or the automatic one when None.

    One traced forward pass of the first sample. Automatic: the last submodule whose
    output is a spatial (N, C, H, W) map (in order of completion; an upsampling pool is
    skipped), in a plain CNN the last convolutional block's ReLU, in a ResNet the last
    stage. In a network whose last features are tokens (a vision transformer), the token
    output that enters the last attention layer: the last block's first LayerNorm
    (``encoder.layers.encoder_layer_<L-1>.ln_1`` in torchvision's VisionTransformer,
    pytorch-grad-cam's ``blocks[-1].norm1`` for timm's), because the logits read the last
    block's *output* only through its class token, so its patch tokens have zero gradient.
    """
    name, index = (None, None) if spec is None else parse_layer(model, spec)
    calls, _ = trace(model, x[:1])
    if name is None:
        call = _default_call(model, calls)
        several = sum(c.module is call.module for c in calls) > 1
        name, index = call.name, (call.index if several else None)
    else:
        mine = sorted((c for c in calls if c.name == name), key=lambda c: c.index)
        if not mine:
            raise ModelRequirementError(f"layer {name!r} is not called in the forward pass of {model_label(model)}")
        if index is None and len(mine) > 1:
            raise ModelRequirementError(
                f"layer {name!r} ({type(mine[0].module).__name__}) is called {len(mine)} times per forward pass; "
                f"pick one call: {', '.join(f'{name}#{c.index}' for c in mine)}")
        if index is not None and index >= len(mine):
            raise ParameterError(f"layer {spec!r}: {name!r} is called {len(mine)} time(s) per forward pass "
                                 f"(calls #0 to #{len(mine) - 1})")
        call = mine[index or 0]
    found = patch_grid(calls, call)
    if found is not None:
        return LayerChoice(name, index, found[0], found[1])
    shape = None if call.output is None else tuple(call.output.shape)
    if call.output is None or call.output.dim() != 4:
        raise ModelRequirementError(
            f"layer {LayerChoice(name, index).label!r} ({type(call.module).__name__}) has output shape {shape}; "
            f"the CAM family needs a spatial (N, C, H, W) layer output, or transformer tokens (N, T, D) on the "
            f"patch grid of an earlier spatial layer")
    return LayerChoice(name, index)


@contextlib.contextmanager
def captured_output(layer: nn.Module, name: str, cut: bool = False, index: int | None = None
                    ) -> Iterator[list[torch.Tensor]]:
    """Forward hook that records ``layer``'s output on each call (``store[k]`` is call ``k``).

    The recorded activation of the chosen call (call ``index``; every call when None) is
    passed on as a clone, so an in-place operation downstream (``ReLU(inplace=True)``)
    cannot overwrite it. With ``cut`` it is a new leaf that requires grad: gradients
    stop there, and the layers before it need not record a graph (Grad-CAM only needs
    ``∂y/∂A``); the other calls pass through unchanged, so the paths from the chosen
    call through the module's later calls keep their gradient.
    """
    store: list[torch.Tensor] = []

    def hook(module, inputs, output):
        if not isinstance(output, torch.Tensor):
            raise ModelRequirementError(f"layer {name!r} ({type(module).__name__}) returns "
                                        f"{type(output).__name__}, not a tensor")
        if index is not None and len(store) != index:
            store.append(output)
            return None
        recorded = output.detach().requires_grad_(True) if cut else output
        store.append(recorded)
        return recorded.clone()

    handle = layer.register_forward_hook(calling_thread_only(hook))
    try:
        yield store
    finally:
        handle.remove()


def chosen_call(store: list[torch.Tensor], choice: LayerChoice, module: nn.Module) -> torch.Tensor:
    """The chosen call's recorded output from :func:`captured_output`'s ``store``, checking the call count."""
    if choice.index is None and len(store) != 1:
        raise ModelRequirementError(f"layer {choice.name!r} ({type(module).__name__}) is called {len(store)} "
                                    f"times per forward pass; pick one call with '{choice.name}#k', k from 0 to "
                                    f"{len(store) - 1}")
    if choice.index is not None and choice.index >= len(store):
        raise ModelRequirementError(f"layer {choice.label!r}: {choice.name!r} is called {len(store)} time(s) "
                                    f"per forward pass")
    return store[choice.index or 0]


def layer_activations_and_gradients(model: WhiteBox, x: torch.Tensor, targets: torch.Tensor,
                                    choice: LayerChoice) -> tuple[torch.Tensor, torch.Tensor]:
    """Activations ``A`` of the chosen layer call, as maps (N, C, h, w), and ``∂y_target/∂A`` for each
    sample of ``x``, in one forward and one backward pass (batching is the caller's, as for
    :func:`salfw.sdk.backprop.target_gradient`)."""
    layer = resolve_layer(model, choice.name)
    with captured_output(layer, choice.label, cut=True, index=choice.index) as store, torch.enable_grad():
        out = model.forward(x)
        act = chosen_call(store, choice, layer)
        selected = out.gather(1, targets[:, None].to(out.device)).sum()
        (grad,) = torch.autograd.grad(selected, act)
    return choice.as_maps(act.detach()), choice.as_maps(grad)


def upsample(maps: torch.Tensor, size: Sequence[int], mode: str) -> torch.Tensor:
    """Resize (N, 1, h, w) maps to the input's (H, W), as Captum's ``LayerAttribution.interpolate``
    (``F.interpolate`` with ``align_corners`` left at its default, False)."""
    return F.interpolate(maps, size=tuple(size), mode=mode)


INTERPOLATIONS = ("bilinear", "nearest", "bicubic", "area")
