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
from a random image of ``reference`` (an array (M, C, H, W) or (M, D) of data in
the input range, e.g. training images); the paper's marginal is exactly this
empirical distribution of the window's pixels. Without ``reference``, uniform
noise over the input range is used (a fallback: it is not the data's marginal,
so say so when reporting). The paper's conditional sampling (a Gaussian on the
surrounding frame) is not implemented. Defaults: window 4 (the paper uses k = 10
on 224 px ImageNet images, a similar fraction of a 28 px digit is about 2-4),
10 samples per window (the paper's choice), N = 8000 (the built-in MNIST
models' training set). Windows are batched: ``batch_size`` perturbed inputs per
forward pass. Local explanation.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from salfw.core.contracts import Method
from salfw.core.errors import ParameterError
from salfw.core.hookspecs import hookimpl
from salfw.core.params import param
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
    test_params = {"window": 3, "num_samples": 2}

    @dataclasses.dataclass(frozen=True)
    class Params:
        window: int = param(4, "window side k in pixels (features for vectors); slides with stride 1", low=1)
        num_samples: int = param(10, "samples per window (paper: 10)", low=1)
        reference: object = param(None, "data to sample windows from, (M, C, H, W) or (M, D); "
                                  "None: uniform noise over the input range")
        training_size: int = param(8000, "N in the Laplace correction (p N + 1) / (N + K)", low=1)
        batch_size: int = param(256, "perturbed inputs per forward pass", low=1)

    def _reference(self, x: torch.Tensor, input_range) -> torch.Tensor | None:
        ref = self.params.reference
        if ref is None:
            return None
        ref = torch.as_tensor(np.asarray(ref.detach().cpu() if isinstance(ref, torch.Tensor) else ref))
        if ref.dim() != x.dim() or tuple(ref.shape[1:]) != tuple(x.shape[1:]) or ref.shape[0] < 1:
            raise ParameterError(f"reference must be a batch (M, {', '.join(map(str, x.shape[1:]))}) of data "
                                 f"like the inputs, got shape {tuple(ref.shape)}")
        lo, hi = input_range
        if ref.min() < lo - 1e-6 * (hi - lo) or ref.max() > hi + 1e-6 * (hi - lo):
            raise ParameterError(f"reference data must lie in the input range {input_range}")
        return ref.to(device=x.device, dtype=x.dtype)

    def attribute(self, model, x, targets, ctx):
        seed = ctx.seed
        p = self.params
        reference = self._reference(x, model.input_range)
        lo, hi = model.input_range
        k = p.window
        masks = window_masks(tuple(x.shape[1:]), (k, k), (1, 1), x.device, x.dtype)  # (P, 1, H, W) or (P, D)
        coverage = masks.sum(0)
        s = p.num_samples
        per_chunk = max(1, p.batch_size // s)
        out = torch.zeros_like(x)
        probs = model.probabilities(x, p.batch_size)
        classes = probs.shape[1]
        for n in range(x.shape[0]):  # each sample: all its windows and their samples are batched
            generator = torch.Generator(device=x.device).manual_seed(seed)
            target = targets[n:n + 1]
            we_full = log_odds(laplace(probs[n, target[0]].double(), p.training_size, classes))
            total = torch.zeros_like(x[0], dtype=torch.float64)
            for i in range(0, masks.shape[0], per_chunk):
                m = masks[i:i + per_chunk]
                count = m.shape[0]
                if reference is None:
                    fill = lo + (hi - lo) * torch.rand((count * s, *x.shape[1:]), generator=generator,
                                                       device=x.device, dtype=x.dtype)
                else:
                    pick = torch.randint(0, reference.shape[0], (count * s,), generator=generator,
                                         device=x.device)
                    fill = reference[pick]
                window = m.repeat_interleave(s, dim=0)
                inputs = x[n:n + 1] * (1 - window) + fill * window
                values = target_values(model, inputs, target, "probabilities", p.batch_size)[:, 0]
                p_without = values.double().view(count, s).mean(1)
                we = we_full - log_odds(laplace(p_without, p.training_size, classes))
                total += (we.view(-1, *[1] * (x.dim() - 1)) * m.double()).sum(0)
            out[n] = (total / coverage).to(x.dtype)
        return out


@hookimpl
def salfw_register_methods(register):
    register(PredictionDifference)
