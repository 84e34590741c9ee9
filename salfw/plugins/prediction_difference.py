"""Prediction difference analysis (Zintgraf, Cohen, Adel & Welling 2017,
"Visualizing deep neural network decisions: prediction difference analysis"),
with marginal sampling over sliding windows.

For every k x k window W (stride 1, as in the paper; for vectors a run of k
features) the window's content is replaced by samples x_W ~ p(x_W) and

    p(c | x \\ W) ~= mean over samples of p(c | x with W replaced by the sample)
    WE_W = log2(odds(p(c | x))) - log2(odds(p(c | x \\ W))),   odds(p) = p / (1 - p),

with the paper's Laplace correction p <- (p N + 1) / (N + K) (N training
instances, K classes) so that the odds stay finite. A pixel's relevance is the
average weight of evidence of the windows that contain it (the paper's
multivariate analysis). Positive values are evidence for the class.

Marginal sampling: each sample takes the window's pixels, at the same place,
from a random image of ``baseline`` (an array (M, C, H, W) or (M, D) of data in
the input range, e.g. training images); the paper's marginal is exactly this
empirical distribution of the window's pixels. Without ``baseline``, uniform
noise over the input range is used (a fallback: it is not the data's marginal,
so say so when reporting). The paper's conditional sampling (a Gaussian on the
surrounding frame) is not implemented. Defaults: window 4 (the paper uses k = 10
on 224 px ImageNet images, a similar fraction of a 28 px digit is about 2-4),
``samples=10`` per window (the paper's choice), N = 8000 (the built-in MNIST
models' training set). Windows are batched: ``batch_size`` perturbed inputs per
forward pass. The draws come from a fresh CPU generator per sample (seeded with
the seed), so a batch and its samples one by one agree on every device. Local
explanation.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from salfw.core.context import Context
from salfw.core.contracts import Method
from salfw.core.errors import ParameterError
from salfw.core.hookspecs import hookimpl
from salfw.core.models import Model
from salfw.core.params import baseline, batch_size, param, samples
from salfw.sdk.hiding import target_values, window_masks


def laplace(p: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """Laplace correction (p N + 1) / (N + K) (Zintgraf et al. 2017, Sec. 3)."""
    return (p * n + 1) / (n + k)


def log_odds(p: torch.Tensor) -> torch.Tensor:
    return torch.log2(p) - torch.log2(1 - p)


class PredictionDifference(Method):
    name = "prediction-difference"
    box = "black"
    kind = "additive"
    summary = "weight of evidence of windows under marginal sampling (Zintgraf et al. 2017)"
    scope = "local"
    random = True
    test_params = {"window": 3, "samples": 2}

    @dataclasses.dataclass(frozen=True)
    class Params:
        window: int = param(4, "window side k in pixels (features for vectors); slides with stride 1", low=1)
        samples: int = samples(10, "samples per window (paper: 10)")
        baseline: object = baseline(None, "data to sample windows from, (M, C, H, W) or (M, D); "
                                    "None: uniform noise over the input range")
        training_size: int = param(8000, "N in the Laplace correction (p N + 1) / (N + K)", low=1)
        batch_size: int = batch_size(256, "perturbed inputs per forward pass")

    def _data(self, x: torch.Tensor, input_range: tuple[float, float]) -> torch.Tensor | None:
        """The ``baseline`` data (M, ...) checked against the inputs, on their device."""
        data = self.params.baseline
        if data is None:
            return None
        data = torch.as_tensor(np.asarray(data.detach().cpu() if isinstance(data, torch.Tensor) else data))
        if data.dim() != x.dim() or tuple(data.shape[1:]) != tuple(x.shape[1:]) or data.shape[0] < 1:
            raise ParameterError(f"baseline must be a batch (M, {', '.join(map(str, x.shape[1:]))}) of data "
                                 f"like the inputs, got shape {tuple(data.shape)}")
        lo, hi = input_range
        if data.min() < lo - 1e-6 * (hi - lo) or data.max() > hi + 1e-6 * (hi - lo):
            raise ParameterError(f"baseline data must lie in the input range {input_range}")
        return data.to(device=x.device, dtype=x.dtype)

    def attribute(self, model: Model, x: torch.Tensor, targets: torch.Tensor, ctx: Context
                  ) -> torch.Tensor | tuple[torch.Tensor, dict[str, Any]]:
        p = self.params
        data = self._data(x, model.input_range)
        lo, hi = model.input_range
        k = p.window
        masks = window_masks(tuple(x.shape[1:]), (k, k), (1, 1), x.device, x.dtype)  # (P, 1, H, W) or (P, D)
        coverage = masks.sum(0)
        s = p.samples
        out = torch.zeros_like(x)
        probs = model.probabilities(x, p.batch_size)
        classes = probs.shape[1]
        for n in range(x.shape[0]):  # each sample: all its windows and their samples are batched
            generator = ctx.fresh_generator()
            target = targets[n:n + 1]
            we_full = log_odds(laplace(probs[n, target[0]].double(), p.training_size, classes))
            total = torch.zeros_like(x[0], dtype=torch.float64)
            # s perturbed inputs per window: as many windows per chunk as fill batch_size inputs
            for rows in ctx.batches(masks.shape[0], size=max(1, p.batch_size // s), unit="window"):
                m = masks[rows]
                count = m.shape[0]
                if data is None:
                    fill = lo + (hi - lo) * torch.rand((count * s, *x.shape[1:]), generator=generator,
                                                       dtype=x.dtype).to(x.device)
                else:
                    fill = data[torch.randint(0, data.shape[0], (count * s,), generator=generator).to(x.device)]
                window = m.repeat_interleave(s, dim=0)
                inputs = x[n:n + 1] * (1 - window) + fill * window
                values = target_values(model, inputs, target, "probabilities", p.batch_size)[:, 0]
                p_without = values.double().view(count, s).mean(1)
                we = we_full - log_odds(laplace(p_without, p.training_size, classes))
                total += (we.view(-1, *[1] * (x.dim() - 1)) * m.double()).sum(0)
            out[n] = (total / coverage).to(x.dtype)
        return out


@hookimpl
def salfw_register_methods(register: Any) -> None:
    register(PredictionDifference)
