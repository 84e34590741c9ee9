"""Activation maximisation: synthesise the input a unit likes most.

Erhan et al. (2009) and Simonyan et al. (2014) find ``x* = argmax_x a(x)`` by
gradient ascent on the input; Yosinski et al. (2015, "Understanding Neural
Networks Through Deep Visualization") showed that the raw optimum is
high-frequency noise and added image priors; Olah et al. (2017, "Feature
Visualization", Distill) added transformation robustness (jitter). Each of
the ``iterations`` steps here maximises

    J(x) = a(T(x)) - l2 * ||x - m||^2 / n - tv * TV(x) / n

with ``a`` the objective: a class logit (the pre-softmax score, as Simonyan
et al. and Yosinski et al. use: the probability can rise by lowering the
other classes), or with ``objective="log-probabilities"`` the class's
log-softmax (which does push the other classes down, so that the synthesis
is classified as its class), or the spatial mean of one channel of any
layer. ``T`` is a random
translation by up to ``jitter`` pixels shared by the batch (Olah et al.), ``m``
the middle of the input range, ``n`` the number of input values per sample and
``TV`` the anisotropic total variation sum |x[i+1]-x[i]| + |x[:, j+1]-x[:, j]|
(Mahendran and Vedaldi, 2015). Every ``blur_every`` steps the image is
blurred by a Gaussian of width ``blur_sigma`` (Yosinski et al.'s blur
regulariser; they blur every 4 steps with a width of about 0.5-1 pixel), and
after each step the image is clipped to the input range. The optimiser is
Adam with ``learning_rate`` 0.05 (times the width of the input range), as in
Olah et al.'s lucid library. The weights
``l2 = tv = 0.01`` are this implementation's choice (the papers tune them
per network): on the built-in MNIST CNN they keep the images smooth while
every class logit still rises well above its value on the grey start. Several ``classes`` are
synthesised at once, one batch row each; the initial image is the middle of
the range plus uniform noise of amplitude ``init_noise`` (Olah et al. start
from small random noise), drawn, like the jitter, from the seed's CPU
generator (``ctx.generator``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F

from salfw.core.contracts import ModelExplainer
from salfw.core.errors import ParameterError
from salfw.core.guard import preserved
from salfw.core.hookspecs import hookimpl
from salfw.core.models import Model
from salfw.core.params import iterations, layer, learning_rate, param
from salfw.sdk.understanding.context import explainer_context
from salfw.sdk.understanding.layers import find_layer, require_white_box, tapped


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation per sample of an (N, C, H, W) batch, shape (N,)."""
    dh = (x[:, :, 1:, :] - x[:, :, :-1, :]).abs().flatten(1).sum(1)
    dw = (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().flatten(1).sum(1)
    return dh + dw


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of an (N, C, H, W) batch (radius 2 sigma, edges replicated)."""
    radius = max(1, int(round(2 * sigma)))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-t ** 2 / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    padded = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    out = F.conv2d(padded, kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


class ActivationMaximisation(ModelExplainer):
    """Regularised activation maximisation (Yosinski et al. 2015; Olah et al. 2017).

    ``classes`` lists the classes to synthesise (one image each); with
    ``layer`` set, ``channels`` lists channels of that layer instead and the
    objective is the channel's mean activation. ``run`` returns ``inputs``
    (K, C, H, W) in the model's input range, ``start`` (the initial images),
    ``objective_start`` and ``objective_end`` (K,) (the objective on the
    initial and final images, without jitter), ``units`` (the classes or
    channels, one per image) and ``layer``.
    """

    name = "activation-maximisation"
    box = "white"
    summary = ("Synthesise the input maximising a class or channel, with jitter, blur, L2 and TV "
               "(Yosinski 2015; Olah 2017)")

    @dataclasses.dataclass(frozen=True)
    class Params:
        classes: tuple[int, ...] = param((0, 1, 2, 3, 4, 5, 6, 7, 8, 9), "classes to synthesise, one image each")
        layer: str | None = layer(None, "maximise channels of this layer (named as in named_modules()) "
                                  "instead of class scores")
        channels: tuple[int, ...] = param((0,), "channels (or units) of `layer` to maximise, one image each")
        iterations: int = iterations(256, "gradient ascent steps")
        learning_rate: float = learning_rate(0.05, "Adam step size, times the width of the input range "
                                                   "(Olah et al.'s lucid default)")
        jitter: int = param(1, "largest random shift in pixels per step (Olah et al.)", low=0)
        blur_every: int = param(4, "blur the image every k steps (Yosinski et al.); 0 = never", low=0)
        blur_sigma: float = param(0.5, "Gaussian blur width in pixels", low=0.0)
        l2: float = param(1e-2, "weight of the L2 decay towards the middle of the input range", low=0.0)
        tv: float = param(1e-2, "weight of the total variation penalty", low=0.0)
        init_noise: float = param(0.1, "amplitude of the seeded uniform noise of the initial image, as a "
                                       "fraction of the input range", low=0.0, high=1.0)
        shape: tuple[int, ...] | None = param(None, "input shape (C, H, W) when the model does not record one")
        objective: str = param("logits", "for classes: maximise the class's logit (Yosinski et al.) or its "
                                         "log-probability (which also pushes the other classes down)",
                               choices=("logits", "log-probabilities"))

    def _shape(self, model: Model) -> tuple[int, ...]:
        shape = self.params.shape or model.input_shape
        if shape is None or len(shape) != 3:
            raise ParameterError(f"activation-maximisation needs an image input shape (C, H, W); the model records "
                                 f"{model.input_shape}, params give {self.params.shape}: set shape=(C, H, W)")
        return tuple(shape)

    def run(self, model: Model, data: Any = None, seed: int = 0) -> dict[str, Any]:
        white = require_white_box(model, "activation-maximisation")
        p = self.params
        if data is not None:
            raise ParameterError("activation-maximisation takes no data (it synthesises its inputs); pass data=None")
        units = list(p.channels if p.layer is not None else p.classes)
        if not units or min(units) < 0:
            raise ParameterError(f"classes/channels must be non-empty non-negative ints, got {tuple(units)}")
        shape = self._shape(white)
        lo, hi = white.input_range
        ctx = explainer_context(self, seed)
        with preserved(white.module):
            tapped_layer = find_layer(white.module, p.layer) if p.layer is not None else None
            index = torch.tensor(units, device=white.device)
            rows = torch.arange(len(units), device=white.device)

            def objective(x: torch.Tensor) -> torch.Tensor:
                if tapped_layer is None:
                    out = white.forward(x)
                    if p.objective == "log-probabilities":
                        out = torch.log_softmax(out, dim=1)
                else:
                    with tapped(tapped_layer) as tap:
                        white.forward(x)
                    out = tap["out"]
                if index.max() >= out.shape[1]:
                    what = f"layer {p.layer!r} has {out.shape[1]} channels" if tapped_layer is not None \
                        else f"the model has {out.shape[1]} classes"
                    raise ParameterError(f"{what}; got {'channels' if tapped_layer is not None else 'classes'} "
                                         f"{tuple(units)}")
                picked = out[rows, index]
                return picked.flatten(1).mean(1) if picked.dim() > 1 else picked

            noise = (torch.rand((1, *shape), generator=ctx.generator) * 2 - 1) * p.init_noise * (hi - lo)
            start = ((lo + hi) / 2 + noise).clamp(lo, hi).to(white.device, white.dtype).repeat(len(units), 1, 1, 1)
            with torch.no_grad():
                before = objective(start)
            x = start.clone().requires_grad_(True)
            optimiser = torch.optim.Adam([x], lr=p.learning_rate * (hi - lo))
            n = x[0].numel()
            mid = (lo + hi) / 2
            shifts = torch.randint(-p.jitter, p.jitter + 1, (p.iterations, 2), generator=ctx.generator).tolist()
            bar = ctx.progress(p.iterations)
            try:
                for step in range(p.iterations):
                    jittered = torch.roll(x, shifts=tuple(shifts[step]), dims=(2, 3)) if p.jitter else x
                    value = objective(jittered)
                    penalty = (p.l2 * ((x - mid) ** 2).flatten(1).sum(1) + p.tv * total_variation(x)) / n
                    loss = (penalty - value).sum()
                    optimiser.zero_grad()
                    loss.backward()
                    optimiser.step()
                    with torch.no_grad():
                        if p.blur_every and p.blur_sigma > 0 and (step + 1) % p.blur_every == 0:
                            x.copy_(gaussian_blur(x, p.blur_sigma))
                        x.clamp_(lo, hi)
                    bar.update(1)
            finally:
                bar.close()
            with torch.no_grad():
                after = objective(x)
        return {"inputs": x.detach(), "objective_start": before.detach(), "objective_end": after.detach(),
                "units": units, "layer": p.layer, "start": start}


@hookimpl
def salfw_register_model_explainers(register):
    register(ActivationMaximisation)
