"""``salfw``: the command group. Its subcommands are the registry's "command" entries: salfw's
own (:mod:`salfw.cli.commands`, the ``commands`` entry point) and any plugin's, all added
through the ``salfw_register_commands(cli)`` hook. A user mistake prints one line on stderr
and exits with status 2; bugs keep their traceback."""

from __future__ import annotations

import sys

import click

from salfw.core.errors import PluginError, SalfwError
from salfw.core.registry import OWN_DISTRIBUTION, get_registry

#: The entry point of salfw's own commands (pyproject.toml, ``[project.entry-points.salfw]``).
BUILTIN_COMMANDS = "commands"


def registered_commands() -> dict[str, click.Command]:
    """Every command plugins registered, by name.

    salfw's own commands are loaded even when ``SALFW_PLUGINS``/``SALFW_DISABLE_PLUGINS`` leave
    their entry point out (the command line cannot work without them). If they failed to load
    (another plugin took one of their names first), every command line says so.
    """
    registry = get_registry()
    table = registry.table("command")
    record = registry.plugins.get(BUILTIN_COMMANDS)
    if record is None or record.status == "disabled":
        from . import commands

        distribution, version = (record.distribution, record.version) if record else (OWN_DISTRIBUTION, None)
        registry.register_plugin(commands, BUILTIN_COMMANDS, distribution, version)
    elif record.status == "failed":
        raise PluginError(f"salfw's own commands failed to load ({record.error}); "
                          f"disable the plugin that clashes with SALFW_DISABLE_PLUGINS")
    return {name: entry.obj for name, entry in table.items()}


class RegistryGroup(click.Group):
    """A click group whose commands are the registry's, looked up when the command line runs,
    so importing this module loads no plugin and a reset registry is read afresh."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(registered_commands())

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return registered_commands().get(cmd_name)


@click.group(cls=RegistryGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="salfw")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """salfw: which input features made a network decide what it decided."""
    from .common import warnings_as_notices

    ctx.with_resource(warnings_as_notices())


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
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        click.echo(f"error: {lines[0] if lines else type(exc).__name__}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
