"""DeepFool (Moosavi-Dezfooli, Fawzi & Frossard 2016, "DeepFool: a simple and accurate
method to fool deep neural networks"), multi-class version (the paper's Algorithm 2).

Around the current point ``x_i`` every classifier ``f_k`` is replaced by its
linearisation; the closest decision boundary of the linearised classifier is
crossed by the smallest step::

    w'_k = ∇f_k(x_i) − ∇f_k̂(x_i),   f'_k = f_k(x_i) − f_k̂(x_i)      (k among the candidates, k ≠ k̂)
    l = argmin_k |f'_k| / ‖w'_k‖
    r_i = |f'_l| / ‖w'_l‖² · w'_l,   r̂ = Σ_i r_i

until the label of ``x_0 + (1 + η) r̂`` differs from ``k̂``. Defaults from the
paper: overshoot ``η = 0.02``, at most 50 iterations (``iterations``) and the 10 classes with the
highest original scores as candidates (section 4, as in the authors' reference
code, which also checks the label of the overshot point at every iteration).
Every point is clipped into the model's ``input_range`` (the paper works in an
unbounded space), so the returned perturbation is ``x_adv − x`` with
``x_adv = clip(x + (1 + η) r̂)``. Clipping after the paper's step (Foolbox's
way, ``clip_aware=False``) stalls on images with many pixels at a bound (MNIST's
black background): the step keeps pushing those pixels outward, clipping
undoes it, and the iterates only creep towards the boundary geometrically (a
third of the built-in MNIST digits are not fooled in 50 iterations). With
``clip_aware=True`` (the default; identical to the paper whenever no pixel is at
a bound) the coordinates of ``w'_k`` that would push a pixel held at a bound
further out are left out of that iteration's distances and step, and ``r̂``
drops what clipping removed; the digits are then fooled in one or two
iterations.

``k̂`` is the explained target (the predicted class by default): DeepFool finds
the minimal perturbation that moves ``x`` out of the target's decision region;
a target that is not the prediction is already "fooled" and gets a zero
perturbation after zero iterations.

All samples iterate together; finished samples are masked out, and each
iteration is one batched forward/backward pass over the active samples times
(candidates − 1) rows (:func:`salfw.sdk.geometry.plane_rows`), counted as that
many backward passes. ``meta``: ``adversarial`` (the examples),
``adversarial_class``, ``iterations`` (used per sample), ``success`` (whether
the label changed within ``iterations`` iterations). A comparative explanation
(the step towards the nearest other class's region), local.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from salfw.core.context import Context
from salfw.core.contracts import Method
from salfw.core.hookspecs import hookimpl
from salfw.core.models import Model, WhiteBox
from salfw.core.params import batch_size, iterations, param
from salfw.sdk.geometry import plane_rows


def deepfool(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, targets: torch.Tensor,
             input_range: tuple[float, float], *, overshoot: float = 0.02, iterations: int = 50,
             candidates: int = 10, clip_aware: bool = True, batch_size: int = 256,
             ctx: Context | None = None) -> dict[str, torch.Tensor]:
    """Batched multi-class DeepFool of ``x`` away from ``targets`` (see the module docs).

    ``forward`` maps a batch to logits (N, K); at most ``iterations`` steps, reported
    to ``ctx``'s progress bar when given. Returns a dict with ``perturbation``
    (``adversarial − x``), ``adversarial``, ``adversarial_class``, ``iterations``
    (used per sample) and ``success``.
    """
    lo, hi = input_range
    n = x.shape[0]
    device = x.device
    with torch.no_grad():
        scores = forward(x)
    k = scores.shape[1]
    c = min(candidates, k)
    ranked = scores.detach().scatter(1, targets[:, None], float("inf"))
    order = ranked.argsort(dim=1, descending=True)[:, :c]  # the target first, then the top c − 1 others
    eye = torch.eye(k, device=device, dtype=x.dtype)
    selection = eye[order[:, 1:]] - eye[targets][:, None]  # rows e_k − e_k̂: (N, c − 1, K)

    total = torch.zeros_like(x)
    current = x.detach().clone()
    used = torch.zeros(n, dtype=torch.long, device=device)
    success = torch.zeros(n, dtype=torch.bool, device=device)
    label = targets.clone()
    active = torch.arange(n, device=device)
    bar = (ctx or Context()).progress(iterations, "deepfool")
    try:
        for step in range(iterations + 1):
            if active.numel() == 0:
                break
            w, f, _, y = plane_rows(forward, current[active], selection[active], batch_size)
            label[active] = y.argmax(dim=1)
            fooled = label[active] != targets[active]
            success[active] = fooled
            used[active] = step
            moving = ~fooled
            if step == iterations:
                break
            if clip_aware:  # moving along +w'_k: coordinates at a bound that the step would push outward stay
                here = current[active].unsqueeze(1)
                w = w * ~(((here <= lo) & (w < 0)) | ((here >= hi) & (w > 0)))
            norms = w.flatten(2).norm(dim=2)  # (m, c − 1)
            distance = torch.where(norms > 0, f.abs() / norms, torch.full_like(norms, float("inf")))
            best = distance.argmin(dim=1)
            stuck = torch.isinf(distance.gather(1, best[:, None]))[:, 0]  # no direction changes any margin
            moving = moving & ~stuck
            idx = active[moving]
            pick = best[moving]
            w_l = w[moving, pick]
            f_l = f[moving, pick]
            norm_l = norms[moving, pick]
            shape = (-1,) + (1,) * (x.dim() - 1)
            total[idx] = total[idx] + (f_l.abs() / norm_l ** 2).view(shape) * w_l
            current[idx] = (x[idx] + (1 + overshoot) * total[idx]).clamp(lo, hi)
            if clip_aware:  # what clipping removed is no longer part of r̂
                total[idx] = (current[idx] - x[idx]) / (1 + overshoot)
            active = idx
            bar.update(1)
    finally:
        bar.close()
    return {"perturbation": current - x, "adversarial": current, "adversarial_class": label,
            "iterations": used, "success": success}


class DeepFool(Method):
    name = "deepfool"
    box = "white"
    kind = "comparative"
    summary = "minimal perturbation to the nearest other class, multi-class DeepFool (Moosavi-Dezfooli et al. 2016)"
    scope = "local"
    requires = ("differentiable",)
    test_params = {"iterations": 10}

    @dataclasses.dataclass(frozen=True)
    class Params:
        overshoot: float = param(0.02, "η: the perturbation is scaled by 1 + η to cross the boundary (paper: 0.02)",
                                 low=0.0)
        iterations: int = iterations(50, "maximum number of iterations (paper: 50)")
        candidates: int = param(10, "classes considered: the target and the top others by score (paper: 10)",
                                low=2)
        clip_aware: bool = param(True, "leave out of each step the pixels held at a bound of the input range "
                                       "(False: the paper's step, clipped afterwards, as Foolbox)")
        batch_size: int = batch_size(256, "samples × candidate rows per forward/backward pass")

    def attribute(self, model: Model, x: torch.Tensor, targets: torch.Tensor, ctx: Context
                  ) -> torch.Tensor | tuple[torch.Tensor, dict[str, Any]]:
        assert isinstance(model, WhiteBox)  # check_model refused any other model
        p = self.params
        result = deepfool(model.forward, x, targets, model.input_range, overshoot=p.overshoot,
                          iterations=p.iterations, candidates=p.candidates, clip_aware=p.clip_aware,
                          batch_size=p.batch_size, ctx=ctx)
        meta = {key: result[key] for key in ("adversarial", "adversarial_class", "iterations", "success")}
        return result["perturbation"], meta


@hookimpl
def salfw_register_methods(register: Any) -> None:
    register(DeepFool)
