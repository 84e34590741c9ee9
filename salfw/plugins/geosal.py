"""GeoSal: geometric saliency for piecewise-linear (ReLU) networks (the GeoSal thesis,
"New method - Geometric Saliency").

A ReLU network is affine inside each activation region (see
:mod:`salfw.sdk.geometry`). To explain why it chose class ``P`` over a
class ``Q``, GeoSal walks from the image to the closest point where ``Q`` wins,
one region at a time. For each comparison class ``Q ≠ P``, taken in order of
output probability while ``p_Q`` is at least ``threshold`` (the most probable
other class is always taken), starting from ``x_0 = x``. The thesis has no
threshold: it checks every class, i.e. ``threshold=0``; salfw's default 1e-3
(our choice) skips classes whose weight ``p_Q`` would add less than 0.1 % of
their distance, which saves their searches on confident inputs but drops their
small terms from the sum below. Use ``threshold=0`` to reproduce the thesis.

1. find the region's matrices at ``x_i``: ``y = x·W + B`` (``find_plane``);
2. form the region's decision plane ``y_P − y_Q = 0``, i.e. ``w·x + b = 0`` with
   ``w = W_P − W_Q`` and ``b = B_P − B_Q``;
3. move to the closest point on it (equations 4-5)::

       x' = x_i − (w·x_i + b) / ‖w‖² · w

4. clip ``x'`` into the input range;
5. if the same plane has been used for 3 successive iterations, jump to the
   convergence point of the geometric series (equation 9): with clipping, each
   projection leaves a residual caused by the clipped pixels, and while the
   clipped set is fixed the residual - and so the step - shrinks by the same
   factor ``ρ = ‖s_i‖ / ‖s_{i−1}‖`` each time; the remaining steps sum to
   ``s_i · ρ / (1 − ρ)``, which is added at once (then clipped);
6. stop when ``y_Q ≥ y_P`` at the new point; otherwise repeat from 1, at most
   ``iterations`` times, and return the best guess: the visited point with the
   smallest margin ``y_P − y_Q`` (the crossing point when it converged).

Projecting exactly onto the plane leaves ``y_P − y_Q`` at zero up to rounding,
on either side; salfw therefore aims at the plane shifted past the boundary by
``overshoot`` times the starting margin, ``w·x + b = −η (y_P − y_Q)(x)`` (not in
the thesis; ``η = 0.001`` by default, ``0`` gives the exact projection), so a
converged example really has ``y_Q ≥ y_P``.

The importance of each pixel sums the distances to every compared class's
region, weighted by how likely that class is::

    importance = Σ_Q p_Q · |x − x'_Q|         (signed=False, the default)
    importance = Σ_Q p_Q · (x − x'_Q)         (signed=True)

The thesis writes the weights as the outputs ``y_Q``; salfw uses the softmax
probabilities ``p_Q = softmax(y)_Q`` at ``x`` - non-negative, so the absolute
variant stays a sum of magnitudes, and "in order of output probability" orders
the same classes. With ``versus=Q`` only that class is compared (why ``P`` and
not ``Q``). A comparative explanation; its model (the region's plane) is local.

All (sample, Q) pairs are stacked into one batch and iterate together; finished
pairs are masked out, so an iteration is one forward/backward pass over the
active pairs (counted as one backward pass per pair), in chunks of ``batch_size`` pairs: by
default as many as ``memory_gib`` (1 GiB) of kept activations allow
(:func:`salfw.sdk.memory.budget_chunk`): every pair on a 28 px digit, 13 on 224 px photos with
EfficientNet-Lite0, where a fixed 256 pairs would keep about 20 GiB. ``meta`` lists the
compared classes of each sample in order of probability, ``classes`` (N, C; C the most
compared for one sample, padded with −1), and aligned with it: ``adversarial``
(N, C, *x.shape[1:]; the input itself in padding), ``distances`` (L2 ``‖x − x'_Q‖``;
NaN in padding), ``margins`` (``y_P − y_Q`` at ``x'_Q``; NaN in padding), ``converged``
and ``iterations``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from salfw.core.context import Context
from salfw.core.contracts import Method
from salfw.core.errors import TargetError
from salfw.core.hookspecs import hookimpl
from salfw.core.models import Model, WhiteBox
from salfw.core.params import batch_size, iterations, param
from salfw.sdk.geometry import check_piecewise_linear, plane_rows
from salfw.sdk.memory import budget_chunk

#: Successive iterations on one plane before the geometric-series jump (the thesis: 3).
SAME_PLANE_ITERATIONS = 3


def _same_plane(w: torch.Tensor, b: torch.Tensor, prev_w: torch.Tensor, prev_b: torch.Tensor) -> torch.Tensor:
    """Whether two planes (flattened ``w`` (m, D), ``b`` (m,)) coincide up to rounding.

    Inside one region the gradient is computed from the same weights and masks, so
    ``w`` repeats to the last bits; ``b = y − w·x`` carries the rounding of ``y``.
    """
    scale = w.abs().amax(dim=1).clamp_min(torch.finfo(w.dtype).tiny)
    same_w = (w - prev_w).abs().amax(dim=1) <= 1e-5 * scale
    same_b = (b - prev_b).abs() <= 1e-4 * (1 + b.abs())
    return same_w & same_b


def geosal_search(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, p: torch.Tensor,
                  q: torch.Tensor, num_classes: int, input_range: tuple[float, float], *, overshoot: float = 1e-3,
                  iterations: int = 50, batch_size: int = 256, ctx: Context | None = None
                  ) -> dict[str, torch.Tensor]:
    """GeoSal's walk to the closest point where ``y_q ≥ y_p``, for M pairs at once.

    ``x`` (M, ...) the starting points, ``p``/``q`` (M,) the classes of each pair
    (among ``num_classes`` outputs of ``forward``); at most ``iterations`` steps,
    reported to ``ctx``'s progress bar when given.
    Returns ``adversarial`` (M, ...), ``margin`` (M,) ``y_p − y_q`` there,
    ``converged`` (M,) and ``iterations`` (M,), the iterations used per pair.
    """
    lo, hi = input_range
    m = x.shape[0]
    device, dtype = x.device, x.dtype
    eye = torch.eye(num_classes, device=device, dtype=dtype)
    selection = (eye[p] - eye[q])[:, None]  # (M, 1, K): the row e_p − e_q
    flat = x.reshape(m, -1)
    current = flat.clone()
    best = flat.clone()
    best_margin = torch.full((m,), float("inf"), device=device, dtype=dtype)
    shift = torch.zeros(m, device=device, dtype=dtype)
    converged = torch.zeros(m, dtype=torch.bool, device=device)
    used = torch.zeros(m, dtype=torch.long, device=device)
    prev_w = torch.zeros_like(flat)
    prev_b = torch.zeros(m, device=device, dtype=dtype)
    prev_step = torch.zeros_like(flat)
    same_count = torch.zeros(m, dtype=torch.long, device=device)
    active = torch.arange(m, device=device)
    bar = (ctx or Context()).progress(iterations, "geosal")
    try:
        for step in range(iterations + 1):
            if active.numel() == 0:
                break
            here = current[active]
            w, margin, _, _ = plane_rows(forward, here.reshape(-1, *x.shape[1:]), selection[active], batch_size)
            w, margin = w.reshape(active.numel(), -1), margin[:, 0]
            if step == 0:
                shift[active] = overshoot * margin.clamp_min(0)
            improved = margin < best_margin[active]
            best_margin[active] = torch.where(improved, margin, best_margin[active])
            best[active] = torch.where(improved[:, None], here, best[active])
            done = margin <= 0
            converged[active] = done
            used[active] = step
            if step == iterations:
                break
            b = margin - (w * here).sum(dim=1)
            norm2 = (w * w).sum(dim=1)
            same = _same_plane(w, b, prev_w[active], prev_b[active])
            count = torch.where(same, same_count[active] + 1, torch.ones_like(same_count[active]))
            # equations 4-5: the closest point on the (shifted) plane, then clipped into the input range
            factor = torch.where(norm2 > 0, (margin + shift[active]) / norm2, torch.zeros_like(norm2))
            moved = (here - factor[:, None] * w).clamp(lo, hi)
            taken = moved - here
            # equation 9: the third iteration on one plane jumps to the geometric series' limit
            length, prev_length = taken.norm(dim=1), prev_step[active].norm(dim=1)
            ratio = torch.where(prev_length > 0, length / prev_length, torch.ones_like(length))
            jump = (count >= SAME_PLANE_ITERATIONS) & (ratio < 1)
            gain = torch.where(jump, ratio / (1 - ratio).clamp_min(torch.finfo(dtype).eps), torch.zeros_like(ratio))
            moved = (moved + gain[:, None] * taken).clamp(lo, hi)
            count = torch.where(jump, torch.zeros_like(count), count)
            stuck = (moved == here).all(dim=1)  # no direction left inside the input range
            current[active] = moved
            prev_w[active], prev_b[active], prev_step[active], same_count[active] = w, b, taken, count
            active = active[~done & ~stuck]
            bar.update(1)
    finally:
        bar.close()
    return {"adversarial": best.reshape(x.shape), "margin": best_margin, "converged": converged,
            "iterations": used}


class GeoSal(Method):
    name = "geosal"
    box = "white"
    kind = "comparative"
    summary = ("geometric saliency: probability-weighted distances to the closest points of the other classes' "
               "regions, walking the ReLU network's linear regions (GeoSal thesis)")
    scope = "local"
    requires = ("piecewise linear (ReLU, pooling, linear, conv)",)
    test_params = {"iterations": 10}

    @dataclasses.dataclass(frozen=True)
    class Params:
        threshold: float = param(1e-3, "compare classes whose probability is at least this (the most probable "
                                       "other class always); 0 compares all, as the thesis does", low=0.0,
                                 high=1.0)
        versus: int | None = param(None, "compare with this one class only: why the target and not this class",
                                   low=0)
        signed: bool = param(False, "Σ p_Q (x − x'_Q) instead of Σ p_Q |x − x'_Q|")
        overshoot: float = param(1e-3, "aim past the decision plane by this fraction of the starting margin "
                                       "(0: the exact projection of the thesis)", low=0.0)
        iterations: int = iterations(50, "maximum iterations per compared class")
        batch_size: int | None = batch_size(None, "(sample, class) pairs per forward/backward pass; None: as many "
                                                  "as memory_gib allows")
        memory_gib: float = param(1.0, "GiB of activations one forward/backward pass may keep, which sets "
                                       "batch_size when it is None", low=0.0)

    def check_model(self, model: Model) -> None:
        super().check_model(model)
        assert isinstance(model, WhiteBox)  # refused above otherwise
        check_piecewise_linear(model.module, self.name, eval_mode=False)

    def attribute(self, model: Model, x: torch.Tensor, targets: torch.Tensor, ctx: Context
                  ) -> torch.Tensor | tuple[torch.Tensor, dict[str, Any]]:
        assert isinstance(model, WhiteBox)  # check_model refused any other model
        prm = self.params
        n = x.shape[0]
        with torch.no_grad():
            probs = torch.softmax(model.forward(x), dim=1)
        k = probs.shape[1]
        if prm.versus is not None:
            if prm.versus >= k:
                raise TargetError(f"versus={prm.versus} is out of range: the model has {k} classes (0..{k - 1})")
            if (targets == prm.versus).any():
                raise TargetError(f"versus={prm.versus} equals the explained class of sample(s) "
                                  f"{(targets == prm.versus).nonzero()[:, 0].tolist()}; compare with another class")
            classes = torch.full((n, 1), prm.versus, dtype=torch.long, device=x.device)
            valid = torch.ones(n, 1, dtype=torch.bool, device=x.device)
        else:  # the other classes by probability, down to the threshold (the most probable one always)
            others, order = probs.scatter(1, targets[:, None], -1.0).sort(dim=1, descending=True)
            valid = others[:, :k - 1] >= prm.threshold
            valid[:, 0] = True
            width = int(valid.sum(dim=1).max())
            classes, valid = order[:, :width], valid[:, :width]
        sample, slot = valid.nonzero(as_tuple=True)
        cls = classes[sample, slot]
        pairs = prm.batch_size or budget_chunk(model, x, prm.memory_gib, len(sample))
        result = geosal_search(model.forward, x[sample], targets[sample], cls, k, model.input_range,
                               overshoot=prm.overshoot, iterations=prm.iterations, batch_size=pairs, ctx=ctx)
        difference = x[sample] - result["adversarial"]
        weights = probs[sample, cls].view(-1, *([1] * (x.dim() - 1)))
        contribution = weights * (difference if prm.signed else difference.abs())
        importance = torch.zeros_like(x).index_add_(0, sample, contribution)

        shape = valid.shape
        adversarial = x[:, None].repeat(1, shape[1], *([1] * (x.dim() - 1)))
        adversarial[sample, slot] = result["adversarial"]
        distances = torch.full(shape, float("nan"), device=x.device, dtype=x.dtype)
        margins = distances.clone()
        distances[sample, slot] = difference.flatten(1).norm(dim=1)
        margins[sample, slot] = result["margin"]
        converged = torch.zeros(shape, dtype=torch.bool, device=x.device)
        converged[sample, slot] = result["converged"]
        iterations = torch.zeros(shape, dtype=torch.long, device=x.device)
        iterations[sample, slot] = result["iterations"]
        meta = {"classes": torch.where(valid, classes, -1), "adversarial": adversarial, "distances": distances,
                "margins": margins, "converged": converged, "iterations": iterations}
        return importance, meta


@hookimpl
def salfw_register_methods(register: Any) -> None:
    register(GeoSal)
