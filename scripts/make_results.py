"""Regenerate docs/results/: every registered method x every applicable metric on the built-in
MNIST CNN and MLP over held-out digits, with curve plots, a comparison grid and README.md.

    python scripts/make_results.py                 # 200 held-out digits, both models in parallel
    python scripts/make_results.py --samples 50 --out /tmp/r   # a quicker look

Settings (kept cheap so the whole run takes minutes on two CPU cores, written to README.md):
flipping metrics use ``--steps`` steps (default 10) and the uniform-noise replacement; a random
map is scored as the reference row (its AOPC is the random-order baseline); methods with an
iteration or sample count above :data:`CAPS` run with the cap; a method whose measured time on 8
digits (after a warm-up) says it would take longer than ``--method-budget`` seconds on all of them is skipped and
listed; metrics that re-run the method score the first 20 digits only. The LIME hiding experiment
(the GeoSal thesis's claim that inverse hiding suits MNIST best) runs LIME with each fill on the
CNN over ``--lime-samples`` digits.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import sys
import time
from pathlib import Path

import torch

import salfw
from salfw.core.errors import SalfwError
from salfw.evaluation.harness import REFERENCE, Comparison, load_data, markdown_tables, run_comparison, write_comparison

MODELS = ("mnist-cnn", "mnist-mlp")
#: Upper bounds on cost parameters (name, or method.name for one method -> value) for the results
#: table; a method keeps its default when that is lower.
CAPS = {"iterations": 100, "samples": 32, "lime.samples": 300, "kernel-shap.samples": 300,
        "rise.samples": 1000, "steps": 32, "epochs": 20}
FLIPPING = ("morf", "lerf", "abpc", "deletion", "insertion")
LIME_HIDINGS = ("superpixel-mean", "black", "white", "inverse", "blur", "uniform-noise")
CLAIM_METRICS = ("morf", "abpc", "deletion", "insertion")
#: Column order of the tables.
METRIC_ORDER = ("morf", "lerf", "abpc", "deletion", "insertion", "ssim", "png-size", "completeness", "sensitivity-n",
                "infidelity", "max-sensitivity", "randomization", "pointing-game", "runtime")
#: LIME's superpixels for the hiding experiment: a 4-pixel grid (49 features), since quickshift
#: makes only a handful of segments on a 28-pixel digit.
LIME_SEGMENTS = {"segmentation": "grid", "cell": 4}
#: Metrics that re-run the method score this many digits, and are skipped above this many seconds.
REEXPLAIN_SAMPLES = 20
#: Digits timed to decide whether a method fits the budget (after a one-digit warm-up).
PROBE = 8
REEXPLAIN_BUDGET_S = 30.0


def load_builtin(name: str) -> salfw.WhiteBox:
    """``builtin:NAME``; while ``models.json`` is being rewritten by scripts/train_zoo.py, the same
    network straight from its safetensors file (which records its own layer specification)."""
    try:
        return salfw.load_model(f"builtin:{name}")
    except (SalfwError, FileNotFoundError):
        from salfw.zoo import toolkit
        from salfw.zoo.plugin import WEIGHTS

        module, spec, metadata = toolkit.load(WEIGHTS / f"{name}.safetensors")
        return salfw.WhiteBox(module, input_range=(0.0, 1.0), input_shape=spec["input_shape"],
                              **metadata.get("preprocessing", {}))


def cheap_params(method: str) -> dict:
    cls = salfw.methods()[method]
    out = {}
    for f in dataclasses.fields(cls.Params):
        cap = CAPS.get(f"{method}.{f.name}", CAPS.get(f.name))
        if cap is not None and (f.default is None or (isinstance(f.default, int) and f.default > cap)):
            out[f.name] = cap
    return out


def metric_settings(steps: int) -> dict:
    flip = {"steps": steps}
    return {"morf": {**flip, "random_order": False}, "lerf": {**flip, "random_order": False}, "abpc": flip,
            "deletion": flip, "insertion": flip, "sensitivity-n": {"samples": 30},
            "infidelity": {"samples": 16}, "max-sensitivity": {"samples": 5}}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_model(args_tuple) -> Comparison:
    name, samples, steps, method_budget = args_tuple
    torch.set_num_threads(1)
    x, _labels, description = load_data("mnist", samples)
    try:
        model = load_builtin(name)
    except (SalfwError, OSError, ValueError) as exc:
        log(f"{name}: cannot load ({exc}); no results for it")
        skipped = {"model": name, "method": "(all)", "metric": None, "reason": f"model not loaded: {exc}"}
        return Comparison(skipped=[skipped],
                          settings={"data": description})
    methods, params, skipped = [], {}, []
    for method in salfw.methods():
        params[method] = cheap_params(method)
        try:
            salfw.explain(method, model, x[:1], seed=0, **params[method])  # warm-up, and the fit check
        except SalfwError as exc:
            skipped.append({"model": name, "method": method, "metric": None, "reason": str(exc).splitlines()[0]})
            continue
        start = time.perf_counter()
        salfw.explain(method, model, x[:PROBE], seed=0, **params[method])
        estimate = (time.perf_counter() - start) / PROBE * len(x)
        if estimate > method_budget:
            skipped.append({"model": name, "method": method, "metric": None,
                            "reason": f"estimated {estimate:.0f} s for {len(x)} digits exceeds {method_budget:.0f} s"})
            continue
        methods.append(method)
    log(f"{name}: {len(methods)} methods on {description}")
    metrics = [m for m in METRIC_ORDER if m in salfw.metrics()] + [m for m in salfw.metrics() if m not in METRIC_ORDER]
    result = run_comparison({name: model}, methods, metrics, x, seed=0, method_params=params,
                            metric_params=metric_settings(steps), reexplain_samples=REEXPLAIN_SAMPLES,
                            budget_s=REEXPLAIN_BUDGET_S,
                            reference=True, progress=False, log=lambda m: log(f"{name} {m}"))
    result.skipped[:0] = skipped
    result.settings["data"] = description
    return result


def lime_hiding(samples: int, steps: int, name: str) -> Comparison:
    torch.set_num_threads(1)
    model = load_builtin(name)
    x, _labels, description = load_data("mnist", samples)
    merged = Comparison(settings={"data": description, "model": name, "metrics": list(CLAIM_METRICS)})
    settings = metric_settings(steps)
    base = cheap_params("lime")
    for hiding in LIME_HIDINGS:
        result = run_comparison({name: model}, ["lime"], list(CLAIM_METRICS), x, seed=0,
                                method_params={"lime": {**base, **LIME_SEGMENTS, "perturbation": hiding}},
                                metric_params={k: settings[k] for k in CLAIM_METRICS}, progress=False)
        for row in result.rows:
            merged.rows.append({**row, "method": f"lime, hiding {hiding}"})
        merged.skipped.extend(result.skipped)
        log(f"lime hiding {hiding} done")
    return merged


def draw_method_grid(path: Path, name: str) -> None:
    """Every method that fits (cheap settings) on the first ten shipped sample digits (0-9)."""
    from salfw.core.render import draw_grid
    from salfw.zoo.samples import load_samples

    model = load_builtin(name)
    x = load_samples()[0][:10]
    explanations = {}
    for method in salfw.methods():
        try:
            explanations[method] = salfw.explain(method, model, x, seed=0, **cheap_params(method))
        except SalfwError:
            continue  # the results tables list why
    first = next(iter(explanations.values()))
    labels = [f"class {t}" for t in first.targets.tolist()]
    draw_grid(x, explanations, path, model.input_range, labels)


def properties_table(results: Comparison) -> str:
    """The GeoSal thesis's "key properties" table with our measured costs."""
    lines = ["| method | box | kind | scope | needs | model(s) used | ms / input (CNN, MLP) | forward / backward "
             "passes per input (CNN) |", "|---|---|---|---|---|---|---|---|"]
    costs = {(c["model"], c["method"]): c for c in results.costs}
    for name, cls in salfw.methods().items():
        used = [m for m in MODELS if (m, name) in costs]
        times = ", ".join(f"{1000 * costs[(m, name)]['seconds_per_sample']:.3g}" if (m, name) in costs else "—"
                          for m in MODELS)
        cnn = costs.get(("mnist-cnn", name))
        passes = f"{cnn['forward_passes_per_sample']:.0f} / {cnn['backward_passes_per_sample']:.0f}" if cnn else "—"
        needs = ", ".join(cls.requires) or "any layers"
        lines.append(f"| {name} | {cls.box} | {cls.kind} | {cls.scope} | {needs} | {', '.join(used) or 'none'} | "
                     f"{times} | {passes} |")
    return "\n".join(lines)


def _best(rows: list[dict], model: str, metric: str, exclude=(REFERENCE,)) -> list[tuple[str, float]]:
    chosen = [r for r in rows if r["model"] == model and r["metric"] == metric and r["method"] not in exclude]
    reverse = chosen[0]["higher_is_better"] is not False if chosen else True
    return sorted(((r["method"], r["mean"]) for r in chosen), key=lambda t: t[1], reverse=reverse)


def claims(results: Comparison, lime: Comparison | None) -> str:
    rows = results.rows
    out = []
    # 1. Noise Mask has the highest SSIM and ABPC (Noise Covering thesis, Tables 2 and 3).
    if "noise-mask" in salfw.methods():
        for metric in ("ssim", "abpc"):
            for model in MODELS:
                ranking = _best(rows, model, metric)
                if not ranking:
                    continue
                place = [m for m, _ in ranking].index("noise-mask") + 1 if "noise-mask" in dict(ranking) else None
                verdict = "confirmed" if place == 1 else (f"not confirmed: noise-mask ranks {place} of {len(ranking)}"
                                                          if place else "noise-mask was not scored")
                out.append(f"- **Noise Mask has the highest {metric.upper()}** ({model}): {verdict}; best is "
                           f"{ranking[0][0]} ({ranking[0][1]:.3f}).")
    else:
        out.append("- **Noise Mask has the highest SSIM and ABPC**: not checked -- no `noise-mask` method was "
                   "registered when these results were generated.")
        for metric in ("ssim", "abpc"):
            for model in MODELS:
                ranking = _best(rows, model, metric)
                if ranking:
                    out.append(f"  - best {metric} on {model}: {ranking[0][0]} ({ranking[0][1]:.3f}), then "
                               f"{', '.join(f'{m} ({v:.3f})' for m, v in ranking[1:4])}.")
    # 2. LIME's inverse hiding suits MNIST best (GeoSal thesis).
    if lime is not None and lime.rows:
        for metric in CLAIM_METRICS:
            ranking = _best(lime.rows, lime.settings["model"], metric)
            if not ranking:
                continue
            top = ranking[0][0].split("hiding ")[-1]
            verdict = "confirmed" if top == "inverse" else f"not confirmed (best: {top})"
            out.append(f"- **LIME's inverse hiding is best on MNIST** by {metric}: {verdict}; "
                       + ", ".join(f"{m.split('hiding ')[-1]} {v:.3f}" for m, v in ranking) + ".")
    else:
        out.append("- **LIME's inverse hiding is best on MNIST**: not checked (no LIME method registered).")
    # 3. Maps that survive weight randomisation (Adebayo et al.: guided backprop, guided Grad-CAM).
    for model in MODELS:
        ranking = _best(rows, model, "randomization")
        if not ranking:
            continue
        survive = [f"{m} ({v:.2f})" for m, v in ranking if v > 0.5]
        fail = [f"{m} ({v:.2f})" for m, v in ranking if v <= 0.5]
        out.append(f"- **Maps that survive cascading randomisation** ({model}; Spearman of the fully randomised "
                   f"map > 0.5, i.e. they fail the sanity check): {', '.join(survive) or 'none'}; maps that change: "
                   f"{', '.join(fail) or 'none'}.")
    return "\n".join(out)


def winners(results: Comparison) -> str:
    """Per model and metric: the best method, the runner-up and the random map's level."""
    lines = ["| metric | " + " | ".join(f"best on {m} (random map)" for m in MODELS) + " |",
             "|---" * (len(MODELS) + 1) + "|"]
    order = [m for m in METRIC_ORDER if any(r["metric"] == m for r in results.rows)]
    for metric in order:
        if metric in ("png-size", "runtime"):
            continue
        cells = []
        for model in MODELS:
            ranking = _best(results.rows, model, metric)
            reference = [r["mean"] for r in results.rows
                         if r["model"] == model and r["metric"] == metric and r["method"] == REFERENCE]
            level = f" ({reference[0]:.3f})" if reference else ""
            cells.append(", ".join(f"{m} {v:.3f}" for m, v in ranking[:2]) + level if ranking else "—")
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_readme(out: Path, results: Comparison, lime: Comparison | None, args, seconds: float) -> None:
    settings = json.dumps(metric_settings(args.steps))
    caps = ", ".join(f"{k} <= {v}" for k, v in CAPS.items())
    text = f"""# Results: every method x every metric on the built-in MNIST networks

Regenerate with `python scripts/make_results.py` (this run: `--samples {args.samples} --steps {args.steps}
--method-budget {args.method_budget:.0f} --lime-samples {args.lime_samples}`, {seconds / 60:.1f} minutes on a
shared 2-core CPU). Data: {results.settings.get("data", "held-out MNIST digits")} (never seen in training).
Explained class: the predicted one. Files: `results.csv`/`results.json` (per model, method and
metric: mean, standard deviation, standard error, n), `results.md` (the tables below),
`curves-mnist-cnn.png` / `curves-mnist-mlp.png` (MoRF, LeRF, deletion and insertion curves,
mean over digits, with the random map as the dashed reference), `grid-mnist-cnn.png` (every method
on ten sample digits) and `lime-hiding.md`.

Settings, chosen to keep the run at minutes: metric parameters {settings} (all flipping metrics
replace pixels one by one; MoRF/LeRF/ABPC with uniform noise, deletion to black, insertion into a
blur); cost parameters capped at {caps}; metrics that re-run the method (randomization,
max-sensitivity) score the first {REEXPLAIN_SAMPLES} digits and are skipped when they would exceed
{REEXPLAIN_BUDGET_S:.0f} s; a method
whose time on {PROBE} digits predicts more than {args.method_budget:.0f} s for all digits is skipped
(listed at the end of `results.md`). The row "{REFERENCE}" is a uniform random map: for every
metric it is the chance level (its MoRF AOPC is the random-order baseline of Samek et al.).

## Key properties (in the spirit of the GeoSal thesis's table)

"needs" is what the method requires of the network (layer kinds); "model(s) used" is where it ran
in this table; time is the measured milliseconds per digit of `salfw.explain` over the whole batch.

{properties_table(results)}

## Who does best on each metric

The two best methods per metric (mean over digits; the random map's level in brackets). A method
that is best on one metric is often poor on another: faithfulness (MoRF, deletion, insertion),
conservation (completeness, sensitivity-n), resemblance to the input (SSIM) and dependence on the
weights (randomisation) measure different things.

{winners(results)}

## Do our numbers confirm the seeds' claims?

{claims(results, lime)}

Reading the scores: MoRF AOPC, ABPC, insertion, SSIM, sensitivity-n and the pointing game are
better high; LeRF AOPC, deletion, completeness error, infidelity, max-sensitivity, runtime and the
randomisation correlation better low; PNG size has no direction (smaller = simpler map). Compare
every score with the "{REFERENCE}" row before calling a method good.

## Tables (mean ± standard error over digits)

{markdown_tables(results)}
"""
    (out / "README.md").write_text(text)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--method-budget", type=float, default=120.0)
    parser.add_argument("--lime-samples", type=int, default=50)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--models", default=",".join(MODELS), help="built-in models, comma-separated")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "results"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    jobs = [("model", (name, args.samples, args.steps, args.method_budget)) for name in models]
    if "lime" in salfw.methods():
        jobs.append(("lime", None))
    context = multiprocessing.get_context("spawn")  # fork after torch is loaded can deadlock
    with context.Pool(max(1, args.jobs)) as pool:
        pending = [pool.apply_async(run_model, (job,)) if kind == "model" else
                   pool.apply_async(lime_hiding, (args.lime_samples, args.steps, models[0])) for kind, job in jobs]
        outcomes = [p.get() for p in pending]
    results = Comparison(settings={"data": outcomes[0].settings.get("data"), "steps": args.steps,
                                   "metrics": outcomes[0].settings.get("metrics"),
                                   "samples": args.samples, "metric_params": metric_settings(args.steps)})
    for part in outcomes[:len(models)]:
        results.rows += part.rows
        results.skipped += part.skipped
        results.costs += part.costs
        results.curves.update(part.curves)
    lime = outcomes[len(models)] if len(outcomes) > len(models) else None
    write_comparison(results, out)
    if lime is not None:
        (out / "lime-hiding.md").write_text(
            f"# LIME hiding on MNIST ({lime.settings['model']}, {lime.settings['data']})\n\n"
            + markdown_tables(lime))
    draw_method_grid(out / f"grid-{models[0]}.png", models[0])
    write_readme(out, results, lime, args, time.perf_counter() - start)
    log(f"wrote {out} in {(time.perf_counter() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
