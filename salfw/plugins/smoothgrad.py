"""SmoothGrad and its variants: any attribution method averaged over noisy copies.

Smilkov, Thorat, Kim, Viégas & Wattenberg 2017, "SmoothGrad: removing noise by
adding noise": for an explanation method ``E``,

    SG(x)  = (1/n) Σ_k E(x + ε_k),         ε_k ~ N(0, σ²),  σ = noise_level · (hi − lo)

"applicable to all basic explanation techniques", so ``base_method`` names any
registered method (``gradient`` by default, as in the paper) and
``base_params`` gives its parameters (not ``method``: that name is
``salfw.explain``'s first argument). Variants (``variant``):

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

The n noise tensors are drawn once from ``seed`` with the shape of one sample
and shared by every sample of the batch (so a batch equals its samples one by
one). The N × n noisy copies are built in chunks of at most ``batch_size`` (a
chunk of samples × a block of noise draws) and each chunk goes through the
wrapped method's ``attribute`` as one batch, with the targets repeated; the
wrapped method gets the same ``seed``. Its ``meta`` (e.g. integrated gradients'
convergence delta) is not kept; ``meta["noise_sigma"]`` records σ.

``base_params``: a dict, or for the CLI a string of ``key=value`` pairs
separated by commas, e.g. ``"steps=16,baseline=blur"``; a piece without ``=``
continues the previous value, so tuples work: ``"size=4,4,stride=2"``.
Scope: that of the wrapped method (local for gradients).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from salfw.core.api import make_method
from salfw.core.contracts import Method
from salfw.core.errors import ParameterError, UnknownNameError
from salfw.core.hookspecs import hookimpl
from salfw.core.params import param

VARIANTS = ("smoothgrad", "smoothgrad-squared", "vargrad")


def parse_params_spec(spec: Any) -> dict[str, Any]:
    """``None`` -> {}; a dict passes through; ``"a=1,b=x,size=4,4"`` -> {"a": "1", "b": "x", "size": "4,4"}."""
    if spec is None:
        return {}
    if isinstance(spec, dict):
        return dict(spec)
    if not isinstance(spec, str):
        raise ParameterError(f"base_params must be a dict or a string 'key=value,key=value', got {spec!r}")
    out: dict[str, Any] = {}
    last = None
    for piece in (p.strip() for p in spec.split(",")):
        if not piece:
            continue
        if "=" in piece:
            key, value = (s.strip() for s in piece.split("=", 1))
            if not key:
                raise ParameterError(f"base_params: empty parameter name in {spec!r}")
            out[key], last = value, key
        elif last is None:
            raise ParameterError(f"base_params must look like 'key=value,key=value', got {spec!r}")
        else:
            out[last] = f"{out[last]},{piece}"
    return out


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
        base_method: str = param("gradient", "the registered method to smooth")
        base_params: object = param(None, "the wrapped method's parameters: a dict or 'key=value,key=value'")
        variant: str = param("smoothgrad", "mean, mean of squares, or variance of the noisy attributions",
                             choices=VARIANTS)
        noise_level: float = param(0.15, "noise standard deviation as a fraction of the input range", low=0.0)
        samples: int = param(50, "noisy copies per input", low=1)
        clip: bool = param(False, "clip noisy inputs to the input range (the paper does not)")
        batch_size: int = param(128, "noisy copies per call of the wrapped method", low=1)

    def __init__(self, params):
        super().__init__(params)
        if params.base_method == self.name:
            raise ParameterError("smoothgrad cannot wrap itself; choose another method, e.g. 'gradient'")
        try:
            self.inner = make_method(params.base_method, **parse_params_spec(params.base_params))
        except UnknownNameError as exc:
            raise ParameterError(f"smoothgrad parameter 'base_method': {exc}") from None
        # The wrapper explains what the wrapped method explains, on the models it accepts.
        self.box = self.inner.box
        self.kind = self.inner.kind
        self.input_kinds = self.inner.input_kinds

    def check_model(self, model):
        self.inner.check_model(model)

    def attribute(self, model, x, targets, ctx):
        seed = ctx.seed
        p = self.params
        lo, hi = model.input_range
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn((p.samples, *x.shape[1:]), generator=generator, dtype=x.dtype).to(x.device)
        noise *= p.noise_level * (hi - lo)  # σ as a fraction of the input range
        chunk = min(x.shape[0], p.batch_size)
        block = max(1, p.batch_size // chunk)
        first = second = None
        for i0 in range(0, x.shape[0], chunk):
            xi, ti = x[i0:i0 + chunk], targets[i0:i0 + chunk]
            for k0 in range(0, p.samples, block):
                eps = noise[k0:k0 + block]
                noisy = (xi[None] + eps[:, None]).reshape(-1, *x.shape[1:])
                if p.clip:
                    noisy = noisy.clamp(lo, hi)
                result = self.inner.attribute(model, noisy, ti.repeat(eps.shape[0]), ctx)
                attr = (result[0] if isinstance(result, tuple) else result).detach()
                attr = attr.view(eps.shape[0], xi.shape[0], *attr.shape[1:])
                if first is None:
                    first = attr.new_zeros((x.shape[0], *attr.shape[2:]))
                    second = torch.zeros_like(first) if p.variant != "smoothgrad" else None
                first[i0:i0 + chunk] += attr.sum(0)
                if second is not None:
                    second[i0:i0 + chunk] += (attr * attr).sum(0)
        mean = first / p.samples
        meta = {"noise_sigma": p.noise_level * (hi - lo)}
        if p.variant == "smoothgrad":
            return mean, meta
        mean_sq = second / p.samples
        return (mean_sq if p.variant == "smoothgrad-squared" else mean_sq - mean * mean), meta


@hookimpl
def salfw_register_methods(register):
    register(SmoothGrad)
