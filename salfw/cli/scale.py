"""``salfw explain METHOD... --dataset D --out STORE`` and ``salfw evaluate --dataset D``: whole
datasets, chunk by chunk into a zarr store, resumable, in one process or under ``torchrun``
(see :mod:`salfw.evaluation.scale` and docs/scale.md)."""

from __future__ import annotations

from typing import Any

import click

from salfw.core.api import load_dataset
from salfw.core.errors import ParameterError
from salfw.evaluation.scale import CHUNK, Run, evaluate_dataset, explain_dataset, local_device, on_device, open_store

from .common import DEFAULT_MODEL, model_from_spec, parse_sets, progress_option


def method_settings(sets: tuple[str, ...], names: list[str]) -> dict[str, dict[str, str]]:
    """``--set``: ``METHOD.key=value``; with a single method the name may be left out."""
    out: dict[str, dict[str, str]] = {name: {} for name in names}
    for key, value in parse_sets(sets).items():
        name, dot, rest = key.partition(".")
        if dot and rest and name in out:
            out[name][rest] = value
        elif len(names) == 1:
            out[names[0]][key] = value
        else:
            raise ParameterError(f"--set {key}={value}: with several methods, name the one it is for "
                                 f"(METHOD.{key}=...; methods: {', '.join(names)})")
    return out


def _distinct(names: list[str], what: str) -> list[str]:
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ParameterError(f"{what} {', '.join(repeated)} given more than once")
    return names


def dataset_options(f: Any) -> Any:
    """``--target``, ``--chunk`` and ``--device``, shared by explain and evaluate --dataset."""
    options = [
        click.option("--target", default="predicted", show_default=True,
                     help="class explained: 'predicted', 'label' (the dataset's) or a class index"),
        click.option("--chunk", type=click.IntRange(min=1), default=CHUNK, show_default=True,
                     help="samples per chunk: the unit of work, of resuming and of the store's chunks"),
        click.option("--device", default="auto", show_default=True,
                     help="auto (CUDA when available, else the CPU), cpu or cuda; under torchrun each process "
                          "takes its own GPU (LOCAL_RANK)"),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _rate(run: Run) -> str:
    new = run.samples - run.resumed_samples
    rate = f", {new / run.seconds:.1f} images/s" if new and run.seconds > 0 else ""
    where = f" in {run.processes} processes" if run.processes > 1 else ""
    return (f"{run.chunks} chunks ({run.resumed} already done), {run.seconds:.1f} s{rate}{where}")


@click.command("explain")
@click.argument("methods", nargs=-1, required=True)
@click.option("--model", "model_spec", default=DEFAULT_MODEL, show_default=True,
              help="model spec: builtin:NAME, torchscript:PATH, onnx:PATH, python:MOD:FN")
@click.option("--dataset", "dataset_spec", required=True,
              help="mnist:DIR?start=&stop=, folder:DIR, npy:FILE?labels=FILE, or a plugin's ('salfw list datasets')")
@click.option("--out", required=True, help="the zarr store to write; the same command resumes it")
@click.option("--set", "sets", multiple=True, metavar="[METHOD.]KEY=VALUE",
              help="a method parameter (METHOD.steps=16; the name may be left out with one method); repeatable")
@click.option("--seed", type=int, default=0, show_default=True, help="seed for every random choice")
@dataset_options
@progress_option
def explain_command(methods: tuple[str, ...], model_spec: str, dataset_spec: str, out: str, sets: tuple[str, ...],
                    seed: int, target: str, chunk: int, device: str, progress: bool | None) -> None:
    """Explain every sample of a dataset with each METHOD into a chunked zarr store.

    Read one map back with zarr.open(STORE)["lrp"][i]. A killed run resumes where it stopped;
    under torchrun --nproc-per-node N the processes share the chunks.
    """
    names = _distinct(list(methods), "method(s)")
    params = method_settings(sets, names)
    model = on_device(model_from_spec(model_spec), local_device(device))
    dataset = load_dataset(dataset_spec, model)
    run = explain_dataset(names, model, dataset, out, model_spec=model_spec, method_params=params, seed=seed,
                          target=target, chunk=chunk, progress=progress)
    if run.rank == 0:
        click.echo(f"explained {run.samples} samples with {', '.join(names)} into {out}: {_rate(run)}")


def evaluate_on_dataset(method_names: str | None, metric_names: str | None, model_specs: tuple[str, ...],
                        dataset_spec: str | None, attributions: str | None, sets: tuple[str, ...], seed: int,
                        target: str, chunk: int, device: str, out: str, progress: bool | None) -> None:
    """``salfw evaluate --dataset``: per-sample scores into OUT/scores.zarr, OUT/scores.csv and the
    summary OUT/results.{csv,json,md}, printed as mean ± standard error."""
    context = click.get_current_context()
    given = [name for name in ("samples", "data", "reexplain_samples")
             if context.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE]
    if given:
        raise ParameterError(f"--{given[0].replace('_', '-')} does not apply to a dataset run (choose the samples "
                             f"with the dataset spec's start= and stop=)")
    if len(model_specs) > 1:
        raise ParameterError("a dataset run scores one model; give --model once")
    stored = _explain_settings(attributions) if attributions else None
    if stored is not None:  # the model, the dataset and the seed default to those the store explains
        model_specs = model_specs or ((stored["model"]["spec"],) if stored["model"]["spec"] else ())
        dataset_spec = dataset_spec or _spec(stored["dataset"])
        if context.get_parameter_source("seed") != click.core.ParameterSource.COMMANDLINE:
            seed = stored["seed"]
    assert dataset_spec is not None  # given, or the store's (this runs only with --dataset or --attributions)
    if metric_names is None or (method_names is None and stored is None):
        raise ParameterError("a dataset run needs --metrics and --methods (or --attributions) named explicitly")
    methods = _distinct([m.strip() for m in method_names.split(",") if m.strip()] if method_names
                        else list(stored["methods"] if stored else []), "method(s)")
    metrics = _distinct([m.strip() for m in metric_names.split(",") if m.strip()], "metric(s)")
    scoped: dict[str, dict[str, str]] = {}
    for key, value in parse_sets(sets).items():
        name, dot, field = key.partition(".")
        if not dot or not field or name not in (*methods, *metrics):
            raise ParameterError(f"--set {key}: name a chosen method or metric (NAME.key=value)")
        scoped.setdefault(name, {})[field] = value
    if stored is not None and any(name in scoped for name in methods):
        raise ParameterError("--attributions scores stored maps: method parameters are the store's, not --set's")
    model_spec = model_specs[0] if model_specs else DEFAULT_MODEL
    model = on_device(model_from_spec(model_spec), local_device(device))
    dataset = load_dataset(dataset_spec, model)
    run, result = evaluate_dataset(methods, metrics, model, dataset, out, model_spec=model_spec,
                                   method_params={k: v for k, v in scoped.items() if k in methods},
                                   metric_params={k: v for k, v in scoped.items() if k in metrics},
                                   seed=seed, target=target, attributions=attributions, chunk=chunk,
                                   progress=progress)
    if result is None:
        return
    from salfw.evaluation.harness import markdown_tables

    click.echo(markdown_tables(result).rstrip())
    for skipped in result.skipped:
        click.echo(f"skipped {skipped['method']} / {skipped['metric']}: {skipped['reason']}")
    click.echo(f"scored {run.samples} samples: {_rate(run)}", err=True)
    for name in ("scores.csv", "results.csv", "results.json", "results.md"):
        click.echo(f"wrote {out}/{name}")


def _explain_settings(store: str) -> dict[str, Any]:
    from salfw.evaluation.scale import StoreError

    try:
        settings = open_store(store).attrs["salfw"]["settings"]
    except Exception:  # a missing path or another kind of store (zarr 2 and 3 raise different errors)
        raise StoreError(f"--attributions {store} is not a store written by 'salfw explain'") from None
    if settings.get("command") != "explain":
        raise StoreError(f"--attributions {store} was written by 'salfw {settings.get('command')}', "
                         f"not 'salfw explain'")
    return settings


def _spec(dataset: dict[str, Any]) -> str:
    """The spec of a dataset as a store records it (name, location, parameters)."""
    from urllib.parse import urlencode

    query = urlencode({k: v for k, v in dataset["params"].items() if v is not None})
    return f"{dataset['name']}:{dataset['location']}" + (f"?{query}" if query else "")
