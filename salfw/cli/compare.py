"""``salfw compare METHOD... | --all``: explain the same inputs with several methods and write one
grid image (rows inputs, columns methods; see :mod:`salfw.evaluation.grid`)."""

from __future__ import annotations

from pathlib import Path

import click
import torch

from salfw.core.api import explain, methods as registered_methods
from salfw.core.errors import ModelRequirementError, ParameterError
from salfw.core.models import Model

from .common import inputs_for, model_from_spec, model_options, parse_sets


def compare(model: Model, x: torch.Tensor, names: list[str], out: str | Path, *, target=None, seed: int = 0,
            params: dict[str, str] | None = None, skip_unfit: bool = False) -> tuple[Path, dict[str, str]]:
    """Explain ``x`` with each method and draw the grid to ``<out>/compare.png``.

    ``params`` (from ``--set``) go to every method that declares them; ``method.key`` goes to that
    method only. With ``skip_unfit``
    (``--all``), methods whose requirements the model lacks are left out of the grid instead of
    failing. Returns the image path and the skipped methods with their reasons.
    """
    import dataclasses

    from salfw.evaluation.grid import draw_grid

    params = params or {}
    known = registered_methods()
    unused = set(params)
    explanations, errors = {}, {}
    for name in names:
        cls = known.get(name)
        declared = {f.name for f in dataclasses.fields(cls.Params)} if cls is not None else set(params)
        given = {k: v for k, v in params.items() if k in declared}
        scoped = {k: v for k, v in params.items() if k.startswith(f"{name}.")}
        given.update({k.split(".", 1)[1]: v for k, v in scoped.items()})
        unused -= set(given) | set(scoped)
        try:
            explanations[name] = explain(name, model, x, target=target, seed=seed, **given)
        except ModelRequirementError as exc:
            if not skip_unfit:
                raise
            errors[name] = str(exc).splitlines()[0]
    if unused and names:
        raise ParameterError(f"--set {', '.join(sorted(unused))}: no chosen method declares "
                             f"{'it' if len(unused) == 1 else 'them'}")
    labels = None
    if explanations:
        first = next(iter(explanations.values()))
        probabilities = model.probabilities(first.inputs).tolist()
        labels = [f"class {t} (p={probabilities[i][t]:.2f})" for i, t in enumerate(first.targets.tolist())]
    if not explanations:
        raise ModelRequirementError("none of the chosen methods can explain this model: "
                                    + "; ".join(f"{k}: {v}" for k, v in errors.items()))
    path = draw_grid(x, explanations, Path(out) / "compare.png", model.input_range, labels)
    return path, errors


@click.command("compare")
@click.argument("methods", nargs=-1)
@click.option("--all", "all_methods", is_flag=True, help="every registered method that fits the model and input")
@click.option("--samples", type=int, default=None,
              help="explain the first N built-in sample digits (one grid row each) instead of one input")
@model_options
def compare_command(methods, all_methods, samples, model_spec, input_path, sample, target, sets, seed, out):
    """Explain the same input(s) with METHOD... (or --all) and write <out>/compare.png."""
    if bool(methods) == bool(all_methods):
        raise click.UsageError("name one or more methods, or pass --all (not both)")
    model = model_from_spec(model_spec)
    if samples is not None:
        if input_path is not None or sample is not None:
            raise click.UsageError("--samples replaces --input and --sample")
        from salfw.zoo.samples import load_samples

        x = load_samples()[0][:max(1, samples)]
    else:
        x = inputs_for(model, input_path, sample)
    names = list(registered_methods()) if all_methods else list(methods)
    if all_methods:
        kind = "image" if x.dim() == 4 else "vector"
        names = [n for n in names if kind in registered_methods()[n].input_kinds
                 and (registered_methods()[n].box == "black" or model.box == "white")]
    path, skipped = compare(model, x, names, out, target=target, seed=seed, params=parse_sets(sets),
                            skip_unfit=all_methods)
    for name, reason in skipped.items():
        click.echo(f"skipped {name}: {reason}", err=True)
    click.echo(f"wrote {path}")
