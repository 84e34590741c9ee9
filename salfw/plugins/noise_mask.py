"""Noise Mask (the Noise Covering thesis): the largest part of the input that can be
covered with uniform noise without changing what the network computes.

With a mask ``M = σ(V)`` (1 keeps a pixel, 0 covers it with noise) the input is

    X̂ = X ⊙ M + U_t ⊙ (1 − M),   U_t ~ U(lo, hi) drawn afresh at every iteration t,

and the loss per sample is

    L(V) = mean(M) + β · MSE(FeatMap_l(X), FeatMap_l(X̂)),   β = factor · β0,
    β0 = 1 / MSE(FeatMap_l(noise), FeatMap_l(X)),

where ``FeatMap_l`` is the pre-softmax output (default) or the output of any named
layer (``layer``: a dotted path in the user's module, captured with a forward
hook). β0 makes the feature term 1 for an image covered entirely by noise, so
``factor`` weighs "keep few pixels" against "keep the features". Thesis settings:
``V`` initialised close to 1 (``init`` = 3, σ(3) ≈ 0.95) and Adam with learning
rate 0.015; optimisation stops for a sample when its loss changed by less than
``tolerance`` (relative) over the last ``window`` iterations, or after ``iterations``.
``factor`` = 1, ``tolerance`` = 1e-4 and ``window`` = 20 are our choices.

The mask is one channel, shared by the colour channels; attributions are ``M``
(high = kept = important). ``meta`` holds the final preservation ``mean(M)``, the
loss terms, β0, the iterations run and whether the tolerance test stopped the sample
before ``iterations`` (``converged``), per sample. Applied to intermediate layers
the method shows which input regions a layer's features depend on (the thesis's
"model discovery" study). All samples are optimised as one tensor with one Adam
optimiser; converged samples are frozen while the others go on, and the noise
(drawn from the context's seed afresh for each batch) is shared by the batch's
samples, so a batch gives the same masks as its samples one by one. Each
iteration is one backward pass per sample, through the logits or through the
named layer (counted there). Local explanation.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from salfw.core.context import Context, count_backward_through
from salfw.core.contracts import Method
from salfw.core.errors import ParameterError
from salfw.core.guard import calling_thread_only
from salfw.core.hookspecs import hookimpl
from salfw.core.models import Model, WhiteBox
from salfw.core.params import batch_size, iterations, layer, learning_rate, param, tolerance
from salfw.sdk.masks import warn_if_unmoved


def feature_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared difference of two feature batches (N,)."""
    return (a - b).pow(2).flatten(1).mean(dim=1)


def noise_beta0(clean: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
    """β0 = 1 / MSE(FeatMap(noise), FeatMap(X)) per sample (a tiny floor avoids dividing by 0)."""
    return 1.0 / feature_mse(noisy, clean).clamp(min=1e-12)


def noise_mask_loss(mask: torch.Tensor, clean: torch.Tensor, covered: torch.Tensor, beta: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The thesis's loss per sample: ``mean(M) + β · MSE(FeatMap(X), FeatMap(X̂))``; returns (loss, mean M, MSE)."""
    preservation = mask.flatten(1).mean(dim=1)
    mse = feature_mse(covered, clean)
    return preservation + beta * mse, preservation, mse


class Features:
    """Evaluates FeatMap_l: the model's logits, or a named layer's output via a forward hook (a
    gradient flowing back from the layer's output counts as one backward pass per sample)."""

    def __init__(self, model: WhiteBox, layer: str | None):
        self.model = model
        self.target: torch.nn.Module | None = None
        if layer is not None:
            try:
                self.target = model.module.get_submodule(layer)
            except AttributeError:
                names = [n for n, _ in model.module.named_modules() if n]
                raise ParameterError(f"noise-mask: no layer '{layer}' in the model; layers: "
                                     f"{', '.join(names[:40])}") from None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.target is None:
            return self.model.forward(x)
        captured: list[torch.Tensor] = []
        handle = self.target.register_forward_hook(
            calling_thread_only(lambda module, inputs, output: captured.append(output)))
        try:
            self.model.forward(x)
        finally:
            handle.remove()
        count_backward_through(captured[0])
        return captured[0]


class NoiseMask(Method):
    name = "noise-mask"
    box = "white"
    kind = "mask"
    summary = "largest region that uniform noise can cover without changing a layer's output (Noise Covering thesis)"
    scope = "local"
    requires = ("differentiable", "gradients w.r.t. the input")
    input_kinds = ("image",)
    random = True
    test_params = {"iterations": 5}

    @dataclasses.dataclass(frozen=True)
    class Params:
        layer: str | None = layer(None, "dotted path of the layer whose output is kept (None = the logits)")
        factor: float = param(1.0, "β = factor · β0 (β0 = 1 / MSE of a noise image's features)", low=0.0)
        init: float = param(3.0, "initial V (σ(3) ≈ 0.95, the thesis's start close to 1)")
        learning_rate: float = learning_rate(0.015, "Adam learning rate (thesis: 0.015)")
        iterations: int = iterations(1000, "maximal iterations")
        tolerance: float = tolerance(1e-4, "stop when the relative loss change over `window` iterations is below "
                                           "this")
        window: int = param(20, "iterations over which convergence is judged", low=1)
        batch_size: int = batch_size(64, "samples optimised together")

    def attribute(self, model: Model, x: torch.Tensor, targets: torch.Tensor, ctx: Context
                  ) -> torch.Tensor | tuple[torch.Tensor, dict[str, Any]]:
        assert isinstance(model, WhiteBox)  # check_model refused any other model
        p = self.params
        features = Features(model, p.layer)
        results = [self._optimise(model, features, x[rows], ctx) for rows in ctx.batches(x.shape[0])]
        mask = torch.cat([r[0] for r in results])
        meta: dict[str, Any] = {key: torch.cat([r[1][key] for r in results]).tolist()
                                for key in ("preservation", "loss", "mse", "beta0", "iterations", "converged")}
        warn_if_unmoved(self.name, torch.sigmoid(torch.tensor(p.init)).item(), mask,
                        "the layer's output may not depend on the input here (try another layer), or use a larger "
                        "learning_rate or factor")
        meta["mask"] = mask
        meta["layer"] = p.layer or "logits"
        return mask, meta

    def _optimise(self, model: Model, features: Features, x: torch.Tensor, ctx: Context
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        p = self.params
        lo, hi = model.input_range
        generator = ctx.fresh_generator()  # every batch replays the same draws, as its samples alone would
        n = x.shape[0]

        def noise() -> torch.Tensor:
            return lo + (hi - lo) * torch.rand((1, *x.shape[1:]), generator=generator).to(x.device, x.dtype)

        with torch.no_grad():
            clean = features(x)
            beta0 = noise_beta0(clean, features(noise().expand_as(x)))
        beta = p.factor * beta0
        v = torch.full((n, 1, *x.shape[2:]), p.init, dtype=x.dtype, device=x.device, requires_grad=True)
        optimiser = torch.optim.Adam([v], lr=p.learning_rate)
        active = torch.ones(n, dtype=torch.bool, device=x.device)
        used = torch.zeros(n, dtype=torch.long, device=x.device)
        history: list[torch.Tensor] = []
        bar = ctx.progress(p.iterations, self.name)
        try:
            for _ in range(p.iterations):
                with torch.enable_grad():
                    mask = torch.sigmoid(v)
                    covered = x * mask + noise() * (1 - mask)
                    loss, _, _ = noise_mask_loss(mask, clean, features(covered), beta)
                    optimiser.zero_grad()
                    loss.sum().backward()
                before = v.detach().clone()
                optimiser.step()
                with torch.no_grad():
                    v.copy_(torch.where(active[:, None, None, None], v, before))
                used += active.long()
                history.append(loss.detach())
                if len(history) > p.window:
                    past = history[-p.window - 1]
                    change = (loss.detach() - past).abs() / past.abs().clamp(min=1e-12)
                    active &= change >= p.tolerance
                    history.pop(0)
                bar.update(1)
                if not bool(active.any()):
                    break
        finally:
            bar.close()
        with torch.no_grad():
            mask = torch.sigmoid(v)
            covered = x * mask + noise() * (1 - mask)
            loss, preservation, mse = noise_mask_loss(mask, clean, features(covered), beta)
        return mask.detach(), {"preservation": preservation, "loss": loss, "mse": mse, "beta0": beta0,
                               "iterations": used, "converged": ~active}


@hookimpl
def salfw_register_methods(register: Any) -> None:
    register(NoiseMask)
