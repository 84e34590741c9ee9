"""Model parameter randomisation test (Adebayo, Gilmer, Muelly, Goodfellow, Hardt & Kim 2018,
"Sanity checks for saliency maps").

The explanation's method is re-run on copies of the network whose weights are re-drawn:

* cascading -- from the top (output) layer down, each step randomising one more layer;
* independent -- one layer at a time, the others left trained.

Each re-drawn map is compared with the original one by Spearman rank correlation of the
channel-summed maps, signed and of absolute values (the paper shows both), and by SSIM of the
maps scaled to [0, 1] by ``|h| / max|h|``. A method whose maps do not depend on the learned
weights keeps a high similarity; the score is the Spearman correlation (``absolute`` chooses
which) of the fully randomised network's map, lower is better. ``extras`` hold the per-layer
curves: ``cascading_spearman``, ``cascading_spearman_abs``, ``cascading_ssim`` (N, layers),
likewise ``independent_*``, and ``layers`` (the module paths, top first).

"A layer" is every module with its own parameters (convolutions, linear layers, norms), in
registration order. Re-drawn values are Gaussian with the same mean and standard deviation as
the trained tensor (the paper re-initialises from a truncated normal; matching the moments keeps
the activations' scale, so no map dies of vanishing signals). The user's module is never
touched: each variant is a ``copy.deepcopy``, its weights drawn from a CPU generator seeded per
layer path (``ctx.fresh_generator``), so a layer gets the same weights in every variant and on
every device. The method is re-run through ``salfw.explain`` with the explanation's recorded
parameters and the call's seed; parameters recorded only as JSON summaries (tensor baselines)
cannot be replayed and raise a ParameterError.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch

from salfw.core.api import explain
from salfw.core.context import Context
from salfw.core.contracts import Metric
from salfw.core.errors import ParameterError
from salfw.core.explanation import Explanation
from salfw.core.models import Model
from salfw.core.params import param
from salfw.sdk.understanding.layers import require_white_box

from .common import heatmap, normalise_map, require_explanation, spearman
from .image import ssim


def parameter_layers(module: torch.nn.Module) -> list[str]:
    """Paths of the modules that hold parameters directly, in registration order."""
    return [name for name, m in module.named_modules()
            if any(True for _ in m.parameters(recurse=False))]


def randomised_copy(module: torch.nn.Module, layers: list[str], ctx: Context) -> torch.nn.Module:
    """A deep copy of ``module`` with the parameters of ``layers`` re-drawn (a CPU generator seeded
    per layer path: ``ctx.fresh_generator`` at an offset derived from the path)."""
    clone = copy.deepcopy(module)
    named = dict(clone.named_modules())
    for path in layers:
        gen = ctx.fresh_generator(sum(path.encode()) * 7919)
        for p in named[path].parameters(recurse=False):
            mean, std = p.detach().mean(), (p.detach().std() if p.numel() > 1 else p.detach().abs())
            draw = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            p.data = (mean + std * draw.to(p.device)).to(p.dtype)
    return clone


def replay_params(explanation: Explanation) -> dict[str, Any]:
    summaries = [k for k, v in explanation.params.items() if isinstance(v, dict)]
    if summaries:
        raise ParameterError(f"cannot re-run '{explanation.method}': parameter(s) {', '.join(summaries)} were "
                             f"recorded only as summaries (tensors); use their defaults or scalar values")
    return dict(explanation.params)


class Randomization(Metric):
    name = "randomization"
    summary = ("Spearman correlation of the map after cascading weight randomisation (Adebayo et al. 2018); "
               "lower is better")
    higher_is_better = False
    needs = ("white-box",)

    @dataclasses.dataclass(frozen=True)
    class Params:
        absolute: bool = param(False, "score with the Spearman correlation of |maps| instead of signed maps")
        independent: bool = param(True, "also randomise each layer on its own (extras independent_*)")

    def _compare(self, original: torch.Tensor, changed: torch.Tensor) -> dict[str, torch.Tensor]:
        a, b = original.flatten(1), changed.flatten(1)
        return {"spearman": spearman(a, b), "spearman_abs": spearman(a.abs(), b.abs()),
                "ssim": ssim(normalise_map(original, "abs-max"), normalise_map(changed, "abs-max")).to(a.dtype)
                if original.dim() == 3 and min(original.shape[1:]) >= 11 else torch.full_like(a[:, 0], float("nan"))}

    def score(self, model: Model, x: torch.Tensor, attributions: torch.Tensor, targets: torch.Tensor,
              ctx: Context, **context: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        white = require_white_box(model, "metric 'randomization'")
        explanation = require_explanation(self.name, context)
        params = replay_params(explanation)
        layers = parameter_layers(white.module)[::-1]  # top first
        original = heatmap(attributions)
        schedules = {"cascading": [layers[:i + 1] for i in range(len(layers))]}
        if self.params.independent:
            schedules["independent"] = [[layer] for layer in layers]
        bar = ctx.progress(sum(map(len, schedules.values())), "randomization", unit="network")

        def run(randomised_layers: list[str]) -> dict[str, torch.Tensor]:
            variant = copy.copy(white)
            variant.module = randomised_copy(white.module, randomised_layers, ctx)
            again = explain(explanation.method, variant, x, targets, ctx.seed, progress=False, **params)
            bar.update(1)
            return self._compare(original, heatmap(again.attributions.to(x.dtype)))

        extras: dict[str, Any] = {"layers": layers}
        try:
            results = {kind: [run(chosen) for chosen in schedule] for kind, schedule in schedules.items()}
        finally:
            bar.close()
        for kind in schedules:
            for key in ("spearman", "spearman_abs", "ssim"):
                extras[f"{kind}_{key}"] = torch.stack([r[key] for r in results[kind]], dim=1)
        key = "cascading_spearman_abs" if self.params.absolute else "cascading_spearman"
        return extras[key][:, -1], extras


RANDOMIZATION = (Randomization,)
