"""``salfw``: list, info and run; ``compare``, ``evaluate`` and the training
commands come from their own modules. A user mistake prints one line on
stderr and exits with status 2; bugs keep their traceback."""

from __future__ import annotations

import json
import sys

import click

from salfw.core.api import explain
from salfw.core.errors import SalfwError, UnknownNameError
from salfw.core.params import describe_params
from salfw.core.registry import TYPES, get_registry

from .common import inputs_for, model_from_spec, model_options, parse_sets
from .compare import compare_command
from .evaluate import evaluate_command
from .toolkit import plot_command, test_command, train_command
from .train_masker import train_masker as train_masker_command

LISTABLE = {"methods": "method", "metrics": "metric", "perturbations": "perturbation",
            "loaders": "model-loader", "explainers": "model-explainer"}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="salfw")
def cli():
    """salfw: which input features made a network decide what it decided."""


def _entry_row(entry) -> dict:
    obj = entry.obj
    return {"name": entry.name, "type": entry.type, "box": getattr(obj, "box", None),
            "kind": getattr(obj, "kind", None), "plugin": entry.plugin, "distribution": entry.distribution,
            "version": entry.version, "summary": getattr(obj, "summary", "")}


def _rows(what: str) -> list[dict]:
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


@cli.command("list")
@click.argument("what", default="methods",
                type=click.Choice([*LISTABLE, "plugins", "models"]))
@click.option("--json", "as_json", is_flag=True, help="print a JSON array of objects")
def list_command(what, as_json):
    """List registered methods, metrics, perturbations, plugins, models, loaders or explainers."""
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
        else:
            tags = " ".join(t for t in (row["box"] and f"{row['box']}-box", row["kind"]) if t)
            click.echo(f"{row['name']:<32} {tags:<22} {row['summary']}")


@cli.command("info")
@click.argument("name")
def info_command(name):
    """Describe a method, metric, perturbation or model explainer and its parameters."""
    registry = get_registry()
    for kind in TYPES:
        table = registry.table(kind)
        if name in table:
            entry = table[name]
            obj = entry.obj
            click.echo(f"{name} ({kind}, plugin '{entry.plugin}' from {entry.distribution or 'in-process'})")
            click.echo(f"  {obj.summary}")
            for attr in ("box", "kind", "scope", "requires", "input_kinds", "higher_is_better", "needs"):
                value = getattr(obj, attr, None)
                if value not in (None, ()):
                    click.echo(f"  {attr}: {', '.join(value) if isinstance(value, tuple) else value}")
            if obj.__doc__:
                click.echo("")
                click.echo("  " + obj.__doc__.strip().replace("\n", "\n  "))
            params = describe_params(obj.Params) if hasattr(obj, "Params") else []
            click.echo("\nparameters (--set key=value):" if params else "\nno parameters")
            for p in params:
                extra = f" one of {', '.join(map(str, p['choices']))}" if p["choices"] else ""
                click.echo(f"  {p['name']:<20} {p['type']:<16} default {p['default']!r:<12} {p['help']}{extra}")
            return
    raise UnknownNameError(f"no method, metric, perturbation or explainer named '{name}'; "
                           f"try 'salfw list methods'")


@cli.command("run")
@click.argument("method")
@model_options
@click.option("--json", "as_json", is_flag=True, help="print the explanation's metadata as JSON")
def run_command(method, model_spec, input_path, sample, target, sets, seed, out, as_json):
    """Explain one input with METHOD and write <out>/<method>.png, -overlay.png, .npy and .json."""
    model = model_from_spec(model_spec)
    x = inputs_for(model, input_path, sample)
    explanation = explain(method, model, x, target=target, seed=seed, **parse_sets(sets))
    probabilities = model.probabilities(explanation.inputs)
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


cli.add_command(compare_command)
cli.add_command(evaluate_command)
cli.add_command(train_masker_command)
cli.add_command(train_command)
cli.add_command(test_command)
cli.add_command(plot_command)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one line and a non-zero exit for user mistakes."""
    try:
        cli.main(args=argv, prog_name="salfw", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except SalfwError as exc:
        click.echo(f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
