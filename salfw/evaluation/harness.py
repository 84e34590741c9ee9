"""Run methods x metrics on the same model and inputs, and write the comparison.

:func:`run_comparison` explains a batch with every method once (one ``salfw.explain`` call per
method over the whole batch), scores each explanation with every metric (one batched call per
metric), and returns a :class:`Comparison`: one row per (model, method, metric) with the mean,
the standard deviation and the standard error over samples, the mean curves of the flipping
metrics and the reasons any pair was skipped. :func:`write_comparison` writes
``results.csv``, ``results.json``, ``results.md`` (one table per model, arrows give the score
direction) and ``curves-<model>.png`` (MoRF/LeRF with the random-order baseline,
deletion/insertion).

Data (:func:`load_data`): the held-out MNIST digits (test-split indices 8000 and up, never
seen by the built-in models in training) when the MNIST files are found
(``salfw.zoo.mnist.default_mnist_dir``), otherwise the 20 digits shipped with salfw, or a
user's ``.npy`` batch. For the pointing game on MNIST the object mask is the digit itself
(pixels above the middle of the input range): "does the map's peak lie on the stroke?".

Two savings keep a full table affordable, both exact: ``abpc`` is taken as ``morf - lerf`` when
both are computed with the same settings (ABPC = AOPC_MoRF - AOPC_LeRF), and metrics that re-run
the method (``randomization``, ``max-sensitivity``) score the first ``reexplain_samples`` inputs
only, and are skipped when the method's measured time says they would exceed ``budget_s``.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from salfw.core.api import as_batch, evaluate_full, explain, make_metric
from salfw.core.api import metrics as registered_metrics
from salfw.core.context import Context
from salfw.core.contracts import Metric
from salfw.core.errors import InputError, SalfwError
from salfw.core.explanation import Explanation
from salfw.core.models import Model, WhiteBox
from salfw.core.params import params_to_json

#: Metrics that re-run the method, and how many explanations of each input they cost.
REEXPLAIN_COST: dict[str, Callable[[Any, Model], int]] = {
    "randomization": lambda p, model: (2 if p.independent else 1) * _layer_count(model),
    "max-sensitivity": lambda p, model: p.samples,
}
CURVE_METRICS = ("morf", "lerf", "deletion", "insertion")
#: The name of the optional reference row: a seeded uniform random map.
REFERENCE = "random map"


def _layer_count(model: Model) -> int:
    from .metrics.randomization import parameter_layers

    return len(parameter_layers(model.module)) if isinstance(model, WhiteBox) else 0


# -- data ---------------------------------------------------------------------------
def load_data(source: str | None = None, samples: int = 200) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """``(x, labels or None, description)``.

    ``source`` None or "mnist": held-out MNIST digits from index 8000 (falls back to the shipped
    samples when the MNIST files are missing); a path to a ``.npy`` file: its first ``samples``
    rows ((N, H, W) gets a channel; integer arrays are divided by 255).
    """
    if source in (None, "mnist"):
        from salfw.zoo.mnist import HELDOUT_SLICE, default_mnist_dir, load_mnist

        try:
            images, labels = load_mnist(default_mnist_dir())
        except (FileNotFoundError, ValueError):
            from salfw.zoo.samples import load_samples

            images, labels = load_samples()
            return images[:samples], labels[:samples], f"the {min(samples, len(images))} shipped sample digits " \
                                                       f"(MNIST files not found)"
        start = HELDOUT_SLICE.start
        stop = min(start + samples, HELDOUT_SLICE.stop)
        return images[start:stop], labels[start:stop], f"held-out MNIST test digits {start}-{stop - 1}"
    path = Path(source)
    if not path.is_file() or path.suffix.lower() != ".npy":
        raise InputError(f"data must be 'mnist' or a .npy file, got {source!r}")
    array = np.load(path, allow_pickle=False)[:samples]
    x = torch.from_numpy(np.ascontiguousarray(array))
    x = x.float() / 255.0 if not x.is_floating_point() else x.float()
    if x.dim() == 3:
        x = x[:, None]
    return x, None, f"{len(x)} rows of {path.name}"


def object_masks(x: torch.Tensor, input_range) -> torch.Tensor:
    """(N, H, W) boolean: pixels above the middle of the range (an MNIST digit's stroke)."""
    lo, hi = input_range
    return x.mean(dim=1) > lo + 0.5 * (hi - lo)


# -- running ----------------------------------------------------------------------------
@dataclasses.dataclass
class Comparison:
    rows: list[dict] = dataclasses.field(default_factory=list)
    curves: dict[str, dict[str, dict[str, list[float]]]] = dataclasses.field(default_factory=dict)
    skipped: list[dict] = dataclasses.field(default_factory=list)
    costs: list[dict] = dataclasses.field(default_factory=list)
    settings: dict = dataclasses.field(default_factory=dict)


def _subset(explanation: Explanation, k: int) -> Explanation:
    return dataclasses.replace(explanation, attributions=explanation.attributions[:k],
                               targets=explanation.targets[:k],
                               inputs=explanation.inputs[:k] if explanation.inputs is not None else None)


def summarise(values: torch.Tensor) -> dict:
    """Mean, standard deviation, standard error and count of the finite ``values``."""
    v = values.detach().double().cpu()
    v = v[torch.isfinite(v)]
    n = v.numel()
    std = v.std().item() if n > 1 else 0.0
    return {"mean": v.mean().item() if n else float("nan"), "std": std,
            "sem": std / math.sqrt(n) if n > 1 else 0.0, "n": n}


@contextlib.contextmanager
def _progress(items: list, label: str, show: bool) -> Iterator[Iterator]:
    """Iterate over ``items`` (the (model, method) pairs) with a tqdm bar on stderr showing the current
    one; nothing at all when ``show`` is False. Each explanation and score inside draws its own bar."""
    bar = Context(progress=show).progress(len(items), label, unit="method")

    def tracked() -> Iterator:
        for item in items:
            if show:
                bar.set_postfix_str(" ".join(map(str, item)))
            yield item
            bar.update(1)

    try:
        yield tracked()
    finally:
        bar.close()


def run_comparison(models: dict[str, Model], methods: list[str], metrics: list[str], x: torch.Tensor,
                   targets: torch.Tensor | None = None, *, method_params: dict[str, dict] | None = None,
                   metric_params: dict[str, dict] | None = None, seed: int = 0,
                   masks: torch.Tensor | None = None, reexplain_samples: int = 50,
                   budget_s: float | None = 600.0, reference: bool = False, progress: bool | None = None,
                   log: Callable[[str], None] | None = None) -> Comparison:
    """Explain ``x`` with every method on every model and score with every metric.

    ``targets`` None explains each model's predicted classes. ``method_params`` /
    ``metric_params`` map a name to its parameters. ``masks`` (N, H, W) feed the pointing game
    (default for images: :func:`object_masks`). ``budget_s`` caps the estimated seconds of one
    re-explaining metric for one method (None: no cap). ``reference`` adds a row for a random map
    (uniform noise, seeded) scored by every metric that does not re-run or time a method: its
    MoRF/LeRF AOPC estimates the random-order baseline, so one reference row replaces a random
    baseline per method.
    """
    method_params = method_params or {}
    metric_params = metric_params or {}
    log = log or (lambda message: None)
    known = registered_metrics()
    result = Comparison(settings={"methods": methods, "metrics": metrics, "samples": int(x.shape[0]),
                                  "seed": seed, "method_params": method_params, "metric_params": metric_params,
                                  "reexplain_samples": reexplain_samples, "budget_s": budget_s})
    derive_abpc = ("abpc" in metrics and "morf" in metrics and "lerf" in metrics and
                   _same_flip_settings(metric_params))
    names = [*methods, *([REFERENCE] if reference else [])]
    pairs = [(model_name, method) for model_name in models for method in names]
    show = sys.stderr.isatty() if progress is None else bool(progress)
    with _progress(pairs, "explaining and scoring", show) as bar:
        for model_name, method in bar:
            model = models[model_name]
            batch = as_batch(model, x)
            try:
                if method == REFERENCE:
                    explanation = _random_map(model, batch, targets, seed)
                else:
                    explanation = explain(method, model, batch, target=targets, seed=seed, progress=show,
                                          **method_params.get(method, {}))
            except SalfwError as exc:
                result.skipped.append({"model": model_name, "method": method, "metric": None,
                                       "reason": str(exc).splitlines()[0]})
                log(f"{model_name} {method}: skipped ({str(exc).splitlines()[0]})")
                continue
            per_sample = explanation.meta["seconds"] / batch.shape[0]
            if method != REFERENCE:
                result.costs.append({"model": model_name, "method": method, "seconds_per_sample": per_sample,
                                     **{f"{k}_per_sample": explanation.meta[k] / batch.shape[0]
                                        for k in ("forward_passes", "backward_passes")}})
            log(f"{model_name} {method}: explained {batch.shape[0]} inputs in {explanation.meta['seconds']:.1f} s")
            scored: dict[str, torch.Tensor] = {}
            for metric in metrics:
                if metric == "abpc" and derive_abpc:
                    continue
                cls = known.get(metric)
                params = metric_params.get(metric, {})
                if cls is None:
                    result.skipped.append({"model": model_name, "method": method, "metric": metric,
                                           "reason": f"unknown metric '{metric}'"})
                    continue
                reason = _not_applicable(cls, metric, model, batch)
                if method == REFERENCE and (metric in REEXPLAIN_COST or metric == "runtime"):
                    continue
                use_x, use_e, use_mask = batch, explanation, masks
                if reason is None and metric in REEXPLAIN_COST:
                    k = min(reexplain_samples, batch.shape[0])
                    cost = REEXPLAIN_COST[metric](make_metric(metric, **params).params, model) * k * per_sample
                    if budget_s is not None and cost > budget_s:
                        reason = f"estimated {cost:.0f} s exceeds the budget of {budget_s:.0f} s"
                    use_x, use_e = batch[:k], _subset(explanation, k)
                if reason is not None:
                    result.skipped.append({"model": model_name, "method": method, "metric": metric, "reason": reason})
                    continue
                if use_mask is None and "mask" in cls.needs:
                    use_mask = object_masks(batch, model.input_range)
                start = time.perf_counter()
                try:
                    values, extras = evaluate_full(metric, model, use_x, use_e, use_e.targets, seed, mask=use_mask,
                                                  progress=show, **params)
                except SalfwError as exc:
                    result.skipped.append({"model": model_name, "method": method, "metric": metric,
                                           "reason": str(exc).splitlines()[0]})
                    continue
                log(f"  {metric}: {time.perf_counter() - start:.1f} s")
                scored[metric] = values
                _add_row(result, model_name, method, metric, values, cls, per_sample)
                _add_curves(result, model_name, method, metric, extras)
            if derive_abpc and "morf" in scored and "lerf" in scored:
                _add_row(result, model_name, method, "abpc", scored["morf"] - scored["lerf"], known["abpc"],
                         per_sample)
    return result


def _random_map(model: Model, x: torch.Tensor, targets: Any, seed: int) -> Explanation:
    from salfw.core.api import as_targets

    scores = model.scores(x)
    chosen = as_targets(targets, x.shape[0], scores.shape[1], scores.argmax(dim=1))
    gen = Context(seed).fresh_generator(1)
    noise = torch.rand((x.shape[0], 1, *x.shape[2:]) if x.dim() == 4 else x.shape, generator=gen, dtype=x.dtype)
    return Explanation(noise.to(x.device), chosen, REFERENCE, "additive", {}, {"seconds": 0.0}, x,
                       model.input_range)


def _same_flip_settings(metric_params: dict) -> bool:
    keys = ("perturbation", "steps", "patch", "max_fraction", "output")
    morf, lerf, abpc = (metric_params.get(m, {}) for m in ("morf", "lerf", "abpc"))
    return all(morf.get(k) == lerf.get(k) == abpc.get(k) for k in keys) and not abpc.get("unnormalised")


def _not_applicable(cls: type[Metric], metric: str, model: Model, x: torch.Tensor) -> str | None:
    if "white-box" in cls.needs and not isinstance(model, WhiteBox):
        return "needs a white-box model"
    if metric in ("ssim", "png-size", "pointing-game") and x.dim() != 4:
        return "scores image maps only"
    if metric == "ssim" and min(x.shape[2:]) < 11:
        return "needs images of at least 11 x 11 pixels"
    return None


def _add_row(result: Comparison, model: str, method: str, metric: str, values: torch.Tensor, cls,
             seconds_per_sample: float) -> None:
    result.rows.append({"model": model, "method": method, "metric": metric, **summarise(values),
                        "higher_is_better": cls.higher_is_better, "method_seconds_per_sample": seconds_per_sample})


def _add_curves(result: Comparison, model: str, method: str, metric: str, extras: dict) -> None:
    if metric not in CURVE_METRICS or "curve" not in extras:
        return
    curves = result.curves.setdefault(model, {}).setdefault(metric, {})
    curves["fractions"] = extras["fractions"].tolist()
    curves[method] = extras["curve"].double().mean(dim=0).tolist()
    if "random_curve" in extras:
        curves["random order"] = extras["random_curve"].double().mean(dim=0).tolist()


# -- writing ----------------------------------------------------------------------------
def _arrow(higher_is_better) -> str:
    return {True: " ↑", False: " ↓"}.get(higher_is_better, "")


def markdown_tables(result: Comparison, digits: int = 3) -> str:
    """One markdown table per model: rows methods, columns metrics (mean ± standard error)."""
    out = []
    for model in dict.fromkeys(r["model"] for r in result.rows):
        rows = [r for r in result.rows if r["model"] == model]
        order = list(result.settings.get("metrics", []))
        metrics = sorted(dict.fromkeys(r["metric"] for r in rows),
                         key=lambda m: order.index(m) if m in order else len(order))
        directions = {r["metric"]: r["higher_is_better"] for r in rows}
        methods = list(dict.fromkeys(r["method"] for r in rows))
        cell = {(r["method"], r["metric"]): r for r in rows}
        out.append(f"### {model}\n")
        out.append("| method | ms / input | " + " | ".join(m + _arrow(directions[m]) for m in metrics) + " |")
        out.append("|---" * (len(metrics) + 2) + "|")
        for method in methods:
            seconds = next(r["method_seconds_per_sample"] for r in rows if r["method"] == method)
            values = []
            for metric in metrics:
                r = cell.get((method, metric))
                values.append("—" if r is None else f"{_fmt(r['mean'], digits)} ± {_fmt(r['sem'], 2)}")
            out.append(f"| {method} | {1000 * seconds:.3g} | " + " | ".join(values) + " |")
        out.append("")
    return "\n".join(out)


def _fmt(value: float, digits: int) -> str:
    if not math.isfinite(value):
        return "nan"
    return f"{value:.{digits}g}" if abs(value) >= 1e4 or (value != 0 and abs(value) < 1e-3) else f"{value:.{digits}f}"


def plot_curves(result: Comparison, directory: Path) -> list[Path]:
    """``curves-<model>.png``: one panel per flipping metric, one line per method (drawn on a
    ``matplotlib.figure.Figure``, so matplotlib's global backend is left alone)."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    colours = colormaps["tab20"](range(20))
    written = []
    for model, by_metric in result.curves.items():
        panels = [m for m in CURVE_METRICS if m in by_metric]
        fig = Figure(figsize=(4.2 * len(panels), 3.6))
        axes = fig.subplots(1, len(panels), squeeze=False)
        for ax, metric in zip(axes[0], panels, strict=True):
            curves = by_metric[metric]
            fractions = curves["fractions"]
            lines = [name for name in curves if name not in ("fractions", "random order", REFERENCE)]
            for index, name in enumerate(lines):
                ax.plot(fractions, curves[name], label=name, linewidth=1.2, color=colours[index % 20],
                        linestyle=("-", "-.", ":")[index // 20 % 3])
            for name in ("random order", REFERENCE):
                if name in curves:
                    ax.plot(fractions, curves[name], "k--", label=name, linewidth=1.8)
            ax.set_title(f"{metric} ({model})")
            ax.set_xlabel("fraction of features " + ("inserted" if metric == "insertion" else "removed"))
            ax.set_ylabel("target probability")
            ax.set_ylim(-0.02, 1.02)
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7)
        fig.tight_layout()
        path = directory / f"curves-{re.sub(r'[^A-Za-z0-9_.-]+', '_', model)}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        written.append(path)
    return written


def write_comparison(result: Comparison, directory: str | Path) -> list[Path]:
    """Write results.csv, results.json, results.md and the curve plots; return the paths."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    fields = ["model", "method", "metric", "mean", "std", "sem", "n", "higher_is_better",
              "method_seconds_per_sample"]
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(result.rows)
    (out / "results.json").write_text(json.dumps(
        {"settings": params_to_json(result.settings), "rows": params_to_json(result.rows),
         "skipped": result.skipped, "costs": result.costs, "curves": result.curves}, indent=1))
    skipped = "\n".join(f"- {s['model']} / {s['method']}" + (f" / {s['metric']}" if s["metric"] else "")
                        + f": {s['reason']}" for s in result.skipped)
    (out / "results.md").write_text(markdown_tables(result) + ("\n#### Skipped\n\n" + skipped + "\n"
                                                                if skipped else ""))
    return [out / "results.csv", out / "results.json", out / "results.md", *plot_curves(result, out)]
