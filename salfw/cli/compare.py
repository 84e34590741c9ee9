"""``salfw compare METHOD... | --all``: explain the same inputs with several methods and write one
grid image (rows inputs, columns methods; see :func:`salfw.core.render.grid_figure`)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import click
import torch

from salfw.core.api import as_batch, as_targets, explain
from salfw.core.api import methods as registered_methods
from salfw.core.context import Context
from salfw.core.errors import ModelRequirementError, ParameterError
from salfw.core.explanation import Explanation
from salfw.core.models import Model
from salfw.core.registry import get_registry
from salfw.core.render import draw_grid

from .common import check_fits, inputs_for, inverted, model_from_spec, model_options, parse_sets


def split_settings(params: dict[str, str], names: list[str]) -> dict[str, dict[str, str]]:
    """Which ``--set`` goes to which chosen method.

    ``METHOD.KEY=value`` (``METHOD`` a registered method's name) goes to that method only, with
    ``KEY`` kept whole (``lime.perturbation.sigma=2`` gives lime ``perturbation.sigma``); any other
    ``KEY=value`` goes to every chosen method that declares ``KEY``'s first part
    (``perturbation.sigma=2`` to each method with a ``perturbation``). A setting no chosen method
    takes is a :class:`ParameterError`.
    """
    classes = {name: get_registry().get("method", name) for name in names}  # unknown names raise here
    known = registered_methods()
    given: dict[str, dict[str, str]] = {name: {} for name in names}
    unused = []
    for key, value in params.items():
        head, dot, rest = key.partition(".")
        if dot and head in known:
            if head in given:
                given[head][rest] = value
            else:
                unused.append(key)
            continue
        takers = [name for name, cls in classes.items() if head in {f.name for f in dataclasses.fields(cls.Params)}]
        for name in takers:
            given[name][key] = value
        if not takers:
            unused.append(key)
    if unused and names:
        raise ParameterError(f"--set {', '.join(sorted(unused))}: no chosen method declares "
                             f"{'it' if len(unused) == 1 else 'them'}")
    return given


def _failure(name: str, exc: Exception) -> str:
    """Why a method was left out of ``--all``, in one line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reason = lines[0] if lines else type(exc).__name__
    if isinstance(exc, ModelRequirementError):
        return reason
    registry = get_registry().table("method")
    origin = f" in plugin '{registry[name].plugin}'" if name in registry else ""
    return f"failed with {type(exc).__name__}: {reason} (a bug{origin}; report it to its authors)"


def compare(model: Model, x: torch.Tensor, names: list[str], out: str | Path, *, target: Any = None, seed: int = 0,
            params: dict[str, str] | None = None, skip_unfit: bool = False,
            progress: bool | None = None) -> tuple[Path, dict[str, str]]:
    """Explain ``x`` with each method and draw the grid to ``<out>/compare.png``.

    ``params`` (from ``--set``) are shared out by :func:`split_settings`. With ``skip_unfit``
    (``--all``), a method is left out of the grid instead of failing when the model lacks its
    requirements or when it breaks (a plugin's bug: one broken method must not lose the others'
    work); a :class:`ParameterError` in settings the user gave that method still stops the run,
    and so does a bad input or target, checked once before any method runs. Returns the image
    path and the skipped methods with their reasons.
    """
    settings = split_settings(params or {}, names)
    batch = as_batch(model, x)
    probabilities = model.probabilities(batch)  # also tells the class count, to check the target once
    if target is not None:
        as_targets(target, batch.shape[0], model.num_classes, probabilities.argmax(dim=1))
    explanations: dict[str, Explanation] = {}
    errors: dict[str, str] = {}
    show = sys.stderr.isatty() if progress is None else bool(progress)
    bar = Context(progress=show).progress(len(names), "compare", unit="method")  # each method draws its own below
    try:
        for name in names:
            if show:
                bar.set_postfix_str(name)
            try:
                explanations[name] = explain(name, model, x, target=target, seed=seed, progress=show,
                                             **settings[name])
            except Exception as exc:
                user_mistake = isinstance(exc, ParameterError) and bool(settings[name])
                if not skip_unfit or user_mistake:
                    raise
                errors[name] = _failure(name, exc)
            bar.update(1)
    finally:
        bar.close()
    if not explanations:
        raise ModelRequirementError("none of the chosen methods can explain this model: "
                                    + "; ".join(f"{k}: {v}" for k, v in errors.items()))
    first = next(iter(explanations.values()))
    labels = [f"class {t} (p={probabilities[i, t].item():.2f})" for i, t in enumerate(first.targets.tolist())]
    path = draw_grid(x, explanations, Path(out) / "compare.png", model.input_range, labels)
    return path, errors


@click.command("compare")
@click.argument("methods", nargs=-1)
@click.option("--all", "all_methods", is_flag=True, help="every registered method that fits the model and input")
@click.option("--samples", type=int, default=None,
              help="explain the first N built-in sample digits (one grid row each) instead of one input")
@model_options
def compare_command(methods: tuple[str, ...], all_methods: bool, samples: int | None, model_spec: str | None,
                    input_path: str | None, sample: int | None, target: int | None, sets: tuple[str, ...],
                    invert: bool, seed: int, out: str, progress: bool | None) -> None:
    """Explain the same input(s) with METHOD... (or --all) and write <out>/compare.png.

    --set KEY=value goes to every chosen method declaring KEY; --set METHOD.KEY=value to METHOD
    only, e.g. --set lime.perturbation.sigma=2.
    """
    if bool(methods) == bool(all_methods):
        raise click.UsageError("name one or more methods, or pass --all (not both)")
    model = model_from_spec(model_spec)
    if samples is not None:
        if input_path is not None or sample is not None:
            raise click.UsageError("--samples replaces --input and --sample")
        from salfw.zoo.samples import load_samples

        x = load_samples()[0][:max(1, samples)]
        x = inverted(x, model) if invert else x
        check_fits(model, x, f"the first {len(x)} sample digit(s)")
    else:
        x = inputs_for(model, input_path, sample, invert, model_spec)
    names = list(registered_methods()) if all_methods else list(methods)
    if all_methods:
        kind = "image" if x.dim() == 4 else "vector"
        names = [n for n in names if kind in registered_methods()[n].input_kinds
                 and (registered_methods()[n].box == "black" or model.box == "white")]
    path, skipped = compare(model, x, names, out, target=target, seed=seed, params=parse_sets(sets),
                            skip_unfit=all_methods, progress=progress)
    for name, reason in skipped.items():
        click.echo(f"skipped {name}: {reason}", err=True)
    click.echo(f"wrote {path}")
