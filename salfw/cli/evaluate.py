"""``salfw evaluate --methods a,b --metrics x,y``: run methods x metrics over held-out samples and
write results.csv, results.json, results.md and curve plots (see :mod:`salfw.evaluation.harness`)."""

from __future__ import annotations

import click

from salfw.core.api import methods as registered_methods
from salfw.core.api import metrics as registered_metrics
from salfw.core.errors import ParameterError

from .common import (
    DEFAULT_MODEL,
    SEED_RANGE,
    inverted,
    model_from_spec,
    output_directory,
    parse_sets,
    progress_option,
)
from .scale import dataset_options, evaluate_on_dataset


def _names(value: str | None, known: dict[str, type], what: str) -> list[str]:
    if value is None or value == "all":
        return list(known)
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ParameterError(f"unknown {what} {', '.join(unknown)}; available: {', '.join(known)}")
    return names


def _scoped(pairs: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """``("lime.samples=200", "lime.perturbation.sigma=2")`` -> ``{"lime": {"samples": "200",
    "perturbation.sigma": "2"}}``: only the leading name (a method or metric) is split off."""
    out: dict[str, dict[str, str]] = {}
    for key, value in parse_sets(pairs).items():
        name, dot, field = key.partition(".")
        if not dot or not field:
            raise ParameterError(f"--set for evaluate takes NAME.key=value (a method or metric name), got {key!r}")
        out.setdefault(name, {})[field] = value
    return out


@click.command("evaluate")
@click.option("--methods", "method_names", default=None, help="comma-separated methods (default: all)")
@click.option("--metrics", "metric_names", default=None, help="comma-separated metrics (default: all)")
@click.option("--samples", type=int, default=200, show_default=True, help="held-out inputs to score")
@click.option("--model", "model_specs", multiple=True,
              help=f"model spec, repeatable (default {DEFAULT_MODEL})")
@click.option("--data", default="mnist", show_default=True,
              help="'mnist' (held-out digits 8000+, or the shipped samples) or a .npy batch in the input range")
@click.option("--set", "sets", multiple=True, metavar="NAME.KEY=VALUE",
              help="a method or metric parameter, e.g. lime.samples=200, lime.perturbation.sigma=2 or "
                   "morf.steps=20; repeatable")
@click.option("--seed", type=SEED_RANGE, default=0, show_default=True)
@click.option("--reexplain-samples", type=int, default=50, show_default=True,
              help="inputs scored by metrics that re-run the method (randomization, max-sensitivity)")
@click.option("--out", default="salfw-eval", show_default=True, callback=output_directory,
              help="output directory (checked before any work)")
@click.option("--dataset", "dataset_spec", default=None,
              help="score every sample of a dataset (mnist:DIR?start=&stop=, folder:DIR, npy:FILE): per-sample "
                   "scores in OUT/scores.csv, resumable, shared among torchrun's processes")
@click.option("--attributions", default=None, help="with --dataset: the 'salfw explain' store whose maps to score")
@click.option("--invert", is_flag=True,
              help="invert the --data inputs within the models' input range (dark digits on white)")
@dataset_options
@progress_option
def evaluate_command(method_names: str | None, metric_names: str | None, samples: int, model_specs: tuple[str, ...],
                     data: str, sets: tuple[str, ...], seed: int, reexplain_samples: int, out: str,
                     dataset_spec: str | None, attributions: str | None, invert: bool, target: str, chunk: int,
                     device: str, progress: bool | None) -> None:
    """Score methods x metrics on the same model and inputs; write a table and curve plots.

    With --dataset: every sample of a dataset, chunk by chunk (see 'salfw explain')."""
    if dataset_spec is not None or attributions is not None:
        if invert:
            raise ParameterError("--invert applies to --data, not to --dataset or --attributions")
        evaluate_on_dataset(method_names, metric_names, model_specs, dataset_spec, attributions, sets, seed,
                            target, chunk, device, out, progress)
        return
    from salfw.evaluation.harness import load_data, run_comparison, write_comparison

    methods = _names(method_names, registered_methods(), "method(s)")
    metrics = _names(metric_names, registered_metrics(), "metric(s)")
    scoped = _scoped(sets)
    stray = [k for k in scoped if k not in methods and k not in metrics]
    if stray:
        raise ParameterError(f"--set names {', '.join(stray)}, which is not among the chosen methods or metrics")
    specs = model_specs or (DEFAULT_MODEL,)
    models = {spec.split(":", 1)[-1]: model_from_spec(spec) for spec in specs}
    x, _labels, description = load_data(data, samples)
    if invert:
        ranges = {model.input_range for model in models.values()}
        if len(ranges) > 1:
            raise ParameterError(f"--invert needs models of one input range; these have "
                                 f"{', '.join(map(str, ranges))}")
        x = inverted(x, next(iter(models.values())))
        description += ", inverted"
    click.echo(f"{len(methods)} methods x {len(metrics)} metrics on {description}", err=True)
    result = run_comparison(models, methods, metrics, x, seed=seed,
                            method_params={k: v for k, v in scoped.items() if k in methods},
                            metric_params={k: v for k, v in scoped.items() if k in metrics},
                            reexplain_samples=reexplain_samples, progress=progress)
    for path in write_comparison(result, out):
        click.echo(f"wrote {path}")
