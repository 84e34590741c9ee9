"""Prediction difference analysis (Zintgraf, Cohen, Adel & Welling 2017,
"Visualizing deep neural network decisions: prediction difference analysis"),
with marginal sampling over sliding windows.

For every k x k window W (sliding by ``stride``; for vectors a run of k
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
surrounding frame) is not implemented.

Defaults: the window is a seventh of the input's shorter side (4 px on a 28 px
digit, 32 px on a 224 px photo) and slides by a quarter of itself (1 px on a digit,
as in the paper; 8 px at 224 px), so any input costs 25 x 25 = 625 windows, each
with ``samples=10`` draws (the paper's choice): 6,250 forward passes. The paper's
setting for 224 px ImageNet images, k = 10 with stride 1 (``window=10, stride=1``),
is 46,225 windows, about 462,000 forward passes per image. N = 8000 (the built-in
MNIST models' training set). Each sample's window masks are built a chunk at a time
(never all at once) and ``batch_size`` perturbed inputs go through each forward pass (by
default as many as fit in ``memory_gib`` GiB on a white box,
:func:`salfw.sdk.memory.forward_chunk`; 256 on a black box).
The window and stride used are in ``meta``. The draws come from a fresh CPU generator
per sample (seeded with the seed), so a batch and its samples one by one agree on
every device. Local
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
from salfw.sdk.hiding import Windows, target_values
from salfw.sdk.memory import forward_chunk

#: Perturbed inputs per forward pass on a black box, whose memory cannot be measured.
BLACK_BOX_BATCH = 256


def laplace(p: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """Laplace correction (p N + 1) / (N + K) (Zintgraf et al. 2017, Sec. 3)."""
    return (p * n + 1) / (n + k)


def log_odds(p: torch.Tensor) -> torch.Tensor:
    return torch.log2(p) - torch.log2(1 - p)


#: The default window side as a fraction of the input's shorter side (4 px on a 28 px digit, the
#: earlier default there; the paper's 10 px on 224 px images is a 22nd).
WINDOW_FRACTION = 1 / 7


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
        window: int | None = param(None, "window side k in pixels (features for vectors); None = a seventh "
                                   "of the shorter side (4 px at 28 px, 32 px at 224 px; the paper: 10 at 224)", low=1)
        stride: int | None = param(None, "step between windows; None = a quarter of the window (1 px at 28 px as "
                                   "in the paper, 8 px at 224 px)", low=1)
        samples: int = samples(10, "samples per window (paper: 10)")
        baseline: object = baseline(None, "data to sample windows from, (M, C, H, W) or (M, D); "
                                    "None: uniform noise over the input range")
        training_size: int = param(8000, "N in the Laplace correction (p N + 1) / (N + K)", low=1)
        batch_size: int | None = batch_size(None, "perturbed inputs per forward pass; None: as many as memory_gib "
                                                  "allows on a white box (256 on a black box)")
        memory_gib: float = param(1.0, "GiB one forward pass may keep, which sets batch_size when it is None",
                                  low=0.0)

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
        size = p.batch_size or forward_chunk(model, x, p.memory_gib, BLACK_BOX_BATCH)
        window, stride = self.geometry(tuple(x.shape[1:]))
        windows = Windows(tuple(x.shape[1:]), (window, window), (stride, stride), x.device, x.dtype,
                          what="prediction-difference window")
        coverage = windows.coverage()
        if bool((coverage == 0).any()):
            raise ParameterError(f"prediction-difference's stride {stride} is larger than its window {window}: "
                                 f"some inputs would lie between windows; use a stride no larger than the window")
        s = p.samples
        out = torch.zeros_like(x)
        probs = model.probabilities(x, size)
        classes = probs.shape[1]
        for n in range(x.shape[0]):  # each sample: its windows and their samples, a batch at a time
            generator = ctx.fresh_generator()
            target = targets[n:n + 1]
            we_full = log_odds(laplace(probs[n, target[0]].double(), p.training_size, classes))
            total = torch.zeros_like(x[0], dtype=torch.float64)
            # s perturbed inputs per window: as many windows per chunk as fill batch_size inputs
            for rows in ctx.batches(len(windows), size=max(1, size // s), unit="window"):
                m = windows.masks(rows)
                count = m.shape[0]
                if data is None:
                    fill = lo + (hi - lo) * torch.rand((count * s, *x.shape[1:]), generator=generator,
                                                       dtype=x.dtype).to(x.device)
                else:
                    fill = data[torch.randint(0, data.shape[0], (count * s,), generator=generator).to(x.device)]
                window_mask = m.repeat_interleave(s, dim=0)
                inputs = x[n:n + 1] * (1 - window_mask) + fill * window_mask
                values = target_values(model, inputs, target, "probabilities", size)[:, 0]
                p_without = values.double().view(count, s).mean(1)
                we = we_full - log_odds(laplace(p_without, p.training_size, classes))
                total += (we.view(-1, *[1] * (x.dim() - 1)) * m.double()).sum(0)
            out[n] = (total / coverage).to(x.dtype)
        return out, {"window": window, "stride": stride, "windows": len(windows)}

    def geometry(self, shape: tuple[int, ...]) -> tuple[int, int]:
        """The window side and stride for one input's ``shape`` (C, H, W) or (D,): the given ones, or
        a seventh of the shorter side and a quarter of that."""
        side = min(shape[-2:]) if len(shape) == 3 else shape[-1]
        window = self.params.window or max(1, round(side * WINDOW_FRACTION))
        stride = self.params.stride or max(1, window // 4)
        return window, stride


@hookimpl
def salfw_register_methods(register: Any) -> None:
    register(PredictionDifference)
