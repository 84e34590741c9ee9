"""salfw's own subcommands, a plugin like any other: the ``commands`` entry point in
pyproject.toml, whose ``salfw_register_commands(cli)`` adds ``list``, ``info`` and ``run``
(here) and ``compare``, ``evaluate``, ``explain``, ``train``, ``test`` and ``plot`` (from their modules),
exactly as a third-party package adds its own."""

from __future__ import annotations

import json
from typing import Any

import click

from salfw.core.api import explain
from salfw.core.errors import UnknownNameError
from salfw.core.hookspecs import hookimpl
from salfw.core.params import describe_params
from salfw.core.registry import TYPES, Entry, get_registry

from .common import inputs_for, model_from_spec, model_options, parse_sets
from .compare import compare_command
from .evaluate import evaluate_command
from .scale import explain_command
from .toolkit import plot_command, test_command, train_command

#: ``salfw list WHAT``: every registry type by a plural (plus plugins and models).
PLURALS = {"model-loader": "loaders", "model-explainer": "explainers"}
LISTABLE = {PLURALS.get(kind, f"{kind}s"): kind for kind in (*TYPES, "command")}


def summary(obj: Any) -> str:
    """One line about a registered thing: its ``summary``, a command's short help, or its docstring's first line."""
    if isinstance(obj, click.Command):
        return obj.get_short_help_str(limit=100)
    doc = (obj.__doc__ or "").strip()
    return getattr(obj, "summary", "") or (doc.splitlines()[0] if doc else "")


def _entry_row(entry: Entry) -> dict[str, Any]:
    obj = entry.obj
    return {"name": entry.name, "type": entry.type, "box": getattr(obj, "box", None),
            "kind": getattr(obj, "kind", None), "plugin": entry.plugin, "distribution": entry.distribution,
            "version": entry.version, "summary": summary(obj)}


def _rows(what: str) -> list[dict[str, Any]]:
    registry = get_registry()
    if what == "plugins":
        registry.ensure_loaded()
        return [{"name": p.name, "type": "plugin", "box": None, "kind": None, "plugin": p.name,
                 "distribution": p.distribution, "version": p.version, "status": p.status,
                 "module": p.module, "error": p.error, "provides": p.provides,
                 "summary": p.error or ", ".join(p.provides)} for _, p in sorted(registry.plugins.items())]
    if what == "models":
        rows = []
        for entry in registry.table("model-loader").values():
            for model in entry.obj().available():
                rows.append({"name": f"{entry.name}:{model['name']}", "type": "model", "box": model.get("box"),
                             "kind": None, "plugin": entry.plugin, "distribution": entry.distribution,
                             "version": entry.version, "summary": model.get("summary", ""),
                             **{k: v for k, v in model.items() if k not in ("name", "summary", "box")}})
        return rows
    return [_entry_row(e) for _, e in sorted(registry.table(LISTABLE[what]).items())]


@click.command("list")
@click.argument("what", default="methods", type=click.Choice([*LISTABLE, "plugins", "models"]))
@click.option("--json", "as_json", is_flag=True, help="print a JSON array of objects")
def list_command(what: str, as_json: bool) -> None:
    """List what is registered: methods, metrics, perturbations, rules, composites, commands,
    loaders, explainers, models, or the plugins that provide them."""
    rows = _rows(what)
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    for row in rows:
        if what == "plugins":
            status = row["status"] if row["status"] != "failed" else f"FAILED: {row['error']}"
            click.echo(f"{row['name']:<26} {row['distribution'] or '-'} {row['version'] or ''}  {status}"
                       + (f"  [{', '.join(row['provides'])}]" if row["provides"] else ""))
        elif what == "models":
            acc = f"  accuracy {row['accuracy']:.2%}" if isinstance(row.get("accuracy"), float) else ""
            click.echo(f"{row['name']:<28} {row['summary']}{acc}")
        elif row["box"] or row["kind"]:
            tags = " ".join(t for t in (row["box"] and f"{row['box']}-box", row["kind"]) if t)
            click.echo(f"{row['name']:<32} {tags:<22} {row['summary']}")
        else:
            click.echo(f"{row['name']:<32} {row['plugin']:<22} {row['summary']}")


@click.command("info")
@click.argument("name")
def info_command(name: str) -> None:
    """Describe a method, metric, perturbation, explainer, rule, composite or command and its parameters."""
    registry = get_registry()
    for kind in TYPES:
        table = registry.table(kind)
        if name in table:
            entry = table[name]
            obj = entry.obj
            click.echo(f"{name} ({kind}, plugin '{entry.plugin}' from {entry.distribution or 'in-process'})")
            click.echo(f"  {summary(obj)}")
            for attr in ("box", "kind", "scope", "requires", "input_kinds", "higher_is_better", "needs"):
                value = getattr(obj, attr, None)
                if value not in (None, ()):
                    click.echo(f"  {attr}: {', '.join(value) if isinstance(value, tuple) else value}")
            if obj.__doc__:
                click.echo("")
                click.echo("  " + obj.__doc__.strip().replace("\n", "\n  "))
            params = describe_params(obj.Params) if hasattr(obj, "Params") else []
            if kind == "model-loader":
                _loader_models(obj)
                click.echo(f"\nspec options ({name}:...?key=value&key=value):" if params else "\nno spec options")
            else:
                how = f"{name}:LOCATION?key=value&..." if kind == "dataset" else "--set key=value"
                click.echo(f"\nparameters ({how}):" if params else "\nno parameters")
            for p in params:
                extra = f" one of {', '.join(map(str, p['choices']))}" if p["choices"] else ""
                click.echo(f"  {p['name']:<20} {p['type']:<16} default {p['default']!r:<12} {p['help']}{extra}")
            return
    commands = registry.table("command")
    if name in commands:
        click.echo(f"{name} (command, plugin '{commands[name].plugin}'); see 'salfw {name} --help'")
        click.echo(f"  {summary(commands[name].obj)}")
        return
    raise UnknownNameError(f"no method, metric, perturbation, explainer, rule, composite or command named "
                           f"'{name}'; try 'salfw list methods'")


def _loader_models(loader: Any) -> None:
    """The models a loader names without a path (``builtin:``'s networks), for ``salfw info``."""
    models = loader().available()
    if models:
        click.echo("\nmodels:")
    for model in models:
        click.echo(f"  {loader.scheme}:{model['name']:<24} {model.get('summary', '')}")


@click.command("run")
@click.argument("method")
@model_options
@click.option("--json", "as_json", is_flag=True, help="print the explanation's metadata as JSON")
def run_command(method: str, model_spec: str | None, input_path: str | None, sample: int | None,
                target: int | None, sets: tuple[str, ...], invert: bool, seed: int, out: str,
                progress: bool | None, as_json: bool) -> None:
    """Explain one input with METHOD and write <out>/<method>.png, -overlay.png, .npy and .json.

    Nested settings name a component's own parameter: --set perturbation=blur --set perturbation.sigma=2.
    """
    model = model_from_spec(model_spec)
    x = inputs_for(model, input_path, sample, invert, model_spec)
    explanation = explain(method, model, x, target=target, seed=seed, progress=progress, **parse_sets(sets))
    probabilities = model.probabilities(x if explanation.inputs is None else explanation.inputs)
    explanation.meta["predicted"] = probabilities.argmax(dim=1).tolist()
    explanation.meta["probabilities"] = probabilities.tolist()
    written = explanation.save(out)
    if as_json:
        click.echo(json.dumps(explanation.to_json(), indent=2))
        return
    meta = explanation.meta
    predicted = meta["predicted"][0]
    click.echo(f"{method}: class {explanation.targets[0].item()} explained (predicted {predicted}, "
               f"p={meta['probabilities'][0][predicted]:.3f}) in {meta['seconds']:.3f} s, "
               f"{meta['forward_passes']} forward / {meta['backward_passes']} backward passes")
    for path in written:
        click.echo(f"  wrote {path}")


@hookimpl
def salfw_register_commands(cli: Any) -> None:
    for command in (list_command, info_command, run_command, compare_command, evaluate_command, train_command,
                    test_command, plot_command, explain_command):
        cli.add_command(command)
