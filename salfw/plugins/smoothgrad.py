"""SmoothGrad and its variants: any attribution method averaged over noisy copies.

Smilkov, Thorat, Kim, Viégas & Wattenberg 2017, "SmoothGrad: removing noise by
adding noise": for an explanation method ``E``,

    SG(x)  = (1/n) Σ_k E(x + ε_k),         ε_k ~ N(0, σ²),  σ = noise_level · (hi − lo)

"applicable to all basic explanation techniques", so ``base`` names any
registered additive method (``gradient`` by default, as in the paper) with its
own settings nested under it: ``base="integrated-gradients"`` and
``base.steps=8`` (CLI ``--set base=integrated-gradients --set base.steps=8``;
Python ``**{"base.steps": 8}`` or ``base={"name": "integrated-gradients",
"steps": 8}``), validated against that method's parameters when SmoothGrad is
made. (Not ``method``: that is ``salfw.explain``'s first argument.) Variants
(``variant``):

* ``smoothgrad``: the mean above;
* ``smoothgrad-squared``: the mean of ``E(x + ε_k)²`` (Hooker, Erhan,
  Kindermans & Kim 2019, "A benchmark for interpretability methods");
* ``vargrad``: the variance ``mean(E²) − mean(E)²`` (Adebayo et al. 2018,
  "Local explanation methods for deep neural networks lack sensitivity to
  parameter values").

These are Captum's ``NoiseTunnel`` nt_types smoothgrad, smoothgrad_sq and vargrad.

Defaults: ``samples`` = 50 (the paper's n = 50; it sees little change beyond)
and ``noise_level`` = 0.15 (the paper finds 10–20% of the input's span works
best; 0.15 is also the PAIR ``saliency`` package's default ``stdev_spread``).
The paper measures the span per image (max − min of that image); salfw uses the
model's ``input_range``, the same for every sample. Noisy inputs may leave the
input range, as in the paper; ``clip=True`` clips them back.

The n noise tensors are drawn once from the seed (the context's generator)
with the shape of one sample and shared by every sample of the batch (so a
batch equals its samples one by one). The N × n noisy copies go through the
wrapped method's ``attribute`` in chunks of ``batch_size`` copies, each with its
copies' targets and a fresh context of the same seed (so every chunk sees the
wrapped method's same random draws, as one batch would, and the wrapped method
chunks by its own ``batch_size``). Its ``meta`` (e.g. integrated gradients'
convergence delta) is not kept; ``meta["noise_sigma"]`` records σ. ``batch_size``
copies per call when given; by default as many as fit in ``memory_gib`` GiB (1 by
default) of the activations autograd keeps for one sample's backward pass, measured
once on the model (:func:`salfw.sdk.memory.budget_chunk`; 128 copies on a black
box, which cannot be measured): a fixed 128 copies of a 224 px photo keep 10 GiB
on EfficientNet-Lite0.

SmoothGrad's class declares what its default, the gradient, is: a white-box,
additive, local method. The model is checked by the wrapped method, so
smoothing a black-box method (``base="occlusion"``) runs on a
:class:`~salfw.core.models.BlackBox`, while a white-box one refuses it; the
wrapped method's input kinds apply too. A wrapped method must give additive
attributions (SmoothGrad's ``kind``): masks and comparative explanations are
refused.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from salfw.core.api import make_method
from salfw.core.context import Context
from salfw.core.contracts import Method
from salfw.core.errors import InputError, ParameterError
from salfw.core.hookspecs import hookimpl
from salfw.core.models import Model, WhiteBox
from salfw.core.params import Component, batch_size, component, param, samples
from salfw.sdk.memory import budget_chunk

VARIANTS = ("smoothgrad", "smoothgrad-squared", "vargrad")
#: Noisy copies per call of a wrapped black-box method, whose memory cannot be measured.
BLACK_BOX_COPIES = 128


class SmoothGrad(Method):
    name = "smoothgrad"
    box = "white"
    kind = "additive"
    summary = "any method averaged over noisy copies of the input (Smilkov et al. 2017), also SG² and VarGrad"
    scope = "local"
    random = True
    test_params = {"samples": 4}

    @dataclasses.dataclass(frozen=True)
    class Params:
        base: Component = component("gradient", "method", "the registered method to smooth, with its settings "
                                                          "as base.KEY=value")
        variant: str = param("smoothgrad", "mean, mean of squares, or variance of the noisy attributions",
                             choices=VARIANTS)
        noise_level: float = param(0.15, "noise standard deviation as a fraction of the input range", low=0.0)
        samples: int = samples(50, "noisy copies per input")
        clip: bool = param(False, "clip noisy inputs to the input range (the paper does not)")
        batch_size: int | None = batch_size(None, "noisy copies per call of the wrapped method; None: as many as "
                                                  "memory_gib allows (128 on a black box)")
        memory_gib: float = param(1.0, "GiB of activations one call may keep, which sets the copies per call when "
                                  "batch_size is None", low=0.0)

    def __init__(self, params: Any):
        super().__init__(params)
        if params.base.name == self.name:
            raise ParameterError("smoothgrad cannot wrap itself; choose another method for 'base', e.g. 'gradient'")
        self.wrapped = make_method(params.base.name, **params.base.kwargs)
        if self.wrapped.kind != self.kind:
            raise ParameterError(f"smoothgrad averages additive attributions; 'base' {self.wrapped.name!r} gives "
                                 f"{self.wrapped.kind} explanations")

    def check_model(self, model: Model) -> None:
        self.wrapped.check_model(model)

    def attribute(self, model: Model, x: torch.Tensor, targets: torch.Tensor, ctx: Context
                  ) -> tuple[torch.Tensor, dict[str, Any]]:
        p, base = self.params, self.wrapped
        input_kind = "image" if x.dim() == 4 else "vector"
        if input_kind not in base.input_kinds:
            raise InputError(f"'{base.name}' (smoothgrad's base) explains {' or '.join(base.input_kinds)} "
                             f"inputs, got a batch of {input_kind}s of shape {tuple(x.shape)}")
        lo, hi = model.input_range
        sigma = p.noise_level * (hi - lo)  # σ as a fraction of the input range
        noise = torch.randn((p.samples, *x.shape[1:]), generator=ctx.generator, dtype=x.dtype).to(x.device) * sigma
        base_batch = getattr(base.params, "batch_size", None)
        first = second = None
        total = x.shape[0] * p.samples
        size = p.batch_size or (budget_chunk(model, x, p.memory_gib, total) if isinstance(model, WhiteBox)
                                else BLACK_BOX_COPIES)
        for sl in ctx.batches(total, size, unit="copies"):
            copy = torch.arange(sl.start, sl.stop, device=x.device)
            i, k = copy // p.samples, copy % p.samples  # sample, noise draw
            noisy = x[i] + noise[k]
            if p.clip:
                noisy = noisy.clamp(lo, hi)
            # a fresh context of the same seed per chunk: the wrapped method's draws repeat, as for one batch
            result = base.attribute(model, noisy, targets[i], Context(ctx.seed, batch_size=base_batch))
            attr = (result[0] if isinstance(result, tuple) else result).detach()
            if first is None:
                first = attr.new_zeros((x.shape[0], *attr.shape[1:]))
                second = torch.zeros_like(first) if p.variant != "smoothgrad" else None
            first.index_add_(0, i, attr)
            if second is not None:
                second.index_add_(0, i, attr * attr)
        assert first is not None  # at least one chunk: samples >= 1 and the batch is not empty
        mean = first / p.samples
        meta = {"noise_sigma": sigma}
        if second is None:
            return mean, meta
        mean_sq = second / p.samples
        return (mean_sq if p.variant == "smoothgrad-squared" else mean_sq - mean * mean), meta


@hookimpl
def salfw_register_methods(register):
    register(SmoothGrad)
