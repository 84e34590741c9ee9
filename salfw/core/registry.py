"""The plugin registry: discovers entry points of group ``salfw`` through pluggy.

salfw's built-in families are entry points in its own pyproject, loaded exactly
like a third party's. Loading is lazy (on the first lookup) and isolated: a
plugin whose import or registration raises (any exception, ``sys.exit()`` and
other ``BaseException`` subclasses included; only ``KeyboardInterrupt`` goes through) is
recorded as failed, its partial registrations are rolled back, and the rest keep
working.

Precedence: salfw's own entry points (distribution ``salfw``) load first, then the
others by entry-point name. Two plugins registering the same name is a
:class:`PluginError` naming both, and the one loaded second is recorded as failed,
so a third party reusing a built-in name is the one refused, whatever its entry
point is called. The only override is disabling the built-in's entry point
(``SALFW_DISABLE_PLUGINS=gradient``); a third-party entry point named like a
built-in one is refused too (entry-point names are what the environment
variables name). A hook implementation that matches no hook specification (a
misspelling such as ``salfw_register_method``; pluggy's ``check_pending``) fails
its plugin: a half-registered plugin would otherwise be silently incomplete.

Environment:
  ``SALFW_PLUGINS=a,b``          load only these entry points (an allow-list).
  ``SALFW_DISABLE_PLUGINS=1``    load only salfw's own built-in entry points;
  ``SALFW_DISABLE_PLUGINS=a,b``  skip these entry points.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.metadata
import os
import types
from collections.abc import Callable
from typing import Any

import pluggy

from . import hookspecs
from .contracts import (
    NAME_PATTERN,
    Composite,
    Dataset,
    Method,
    Metric,
    ModelExplainer,
    ModelLoader,
    Perturbation,
    PropagationRule,
)
from .errors import PluginError, UnknownNameError
from .explanation import KINDS

ENTRY_POINT_GROUP = "salfw"
OWN_DISTRIBUTION = "salfw"

# registry type -> (hook name, base class, attribute holding the name)
TYPES: dict[str, tuple[str, type, str]] = {
    "method": ("salfw_register_methods", Method, "name"),
    "metric": ("salfw_register_metrics", Metric, "name"),
    "perturbation": ("salfw_register_perturbations", Perturbation, "name"),
    "model-loader": ("salfw_register_model_loaders", ModelLoader, "scheme"),
    "model-explainer": ("salfw_register_model_explainers", ModelExplainer, "name"),
    "rule": ("salfw_register_rules", PropagationRule, "name"),
    "composite": ("salfw_register_composites", Composite, "name"),
    "dataset": ("salfw_register_datasets", Dataset, "name"),
}
#: CLI subcommands: the hook receives a ``cli`` object that collects click commands.
COMMAND_HOOK = "salfw_register_commands"


@dataclasses.dataclass
class Entry:
    name: str
    type: str
    obj: Any
    plugin: str
    distribution: str | None
    version: str | None


@dataclasses.dataclass
class PluginRecord:
    name: str
    module: str
    distribution: str | None
    version: str | None
    status: str  # "loaded" | "failed" | "disabled"
    error: str | None = None
    provides: list[str] = dataclasses.field(default_factory=list)


def _check_class(kind: str, obj: Any, base: type, key: str) -> str:
    if not (isinstance(obj, type) and issubclass(obj, base)):
        raise PluginError(f"a {kind} plugin must register a subclass of salfw.core.contracts.{base.__name__}, "
                          f"got {obj!r}")
    name = getattr(obj, key, None)
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise PluginError(f"{kind} {obj.__name__} needs a kebab-case '{key}' (like 'my-method'), got {name!r}")
    params = getattr(obj, "Params", None)
    if params is not None and not dataclasses.is_dataclass(params):
        raise PluginError(f"{kind} '{name}': Params must be a dataclass")
    if kind == "method":
        box, explanation_kind = getattr(obj, "box", None), getattr(obj, "kind", None)
        if box not in ("white", "black"):
            raise PluginError(f"method '{name}': box must be 'white' or 'black', got {box!r}")
        if explanation_kind not in KINDS:
            raise PluginError(f"method '{name}': kind must be one of {', '.join(KINDS)}, got {explanation_kind!r}")
    return name


class Registry:
    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.entries: dict[str, dict[str, Entry]] = {kind: {} for kind in (*TYPES, "command")}
        self.plugins: dict[str, PluginRecord] = {}
        self._loaded = False

    # -- loading ----------------------------------------------------------------
    def ensure_loaded(self) -> None:
        if not self._loaded:
            self._loaded = True
            self.load_entry_points()

    def load_entry_points(self) -> None:
        allow = _names_from_env("SALFW_PLUGINS")
        disable = os.environ.get("SALFW_DISABLE_PLUGINS", "").strip()
        only_own = disable.lower() in ("1", "true", "yes", "all")
        skip = set() if only_own else (_names_from_env("SALFW_DISABLE_PLUGINS") or set())
        found = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
        for ep in sorted(found, key=lambda e: (_distribution(e)[0] != OWN_DISTRIBUTION, e.name)):
            dist, version = _distribution(ep)
            key, taken = ep.name, self.plugins.get(ep.name)
            if taken is not None:
                if taken.distribution == dist:
                    continue  # the same entry point seen twice (e.g. an editable install on the path)
                key = f"{dist}:{ep.name}"  # another distribution's entry point of the same name
                if key in self.plugins:
                    continue
            off = (allow is not None and ep.name not in allow) or ep.name in skip or (
                only_own and dist != OWN_DISTRIBUTION)
            if off:
                self.plugins[key] = PluginRecord(key, ep.value, dist, version, "disabled")
                continue
            if taken is not None:
                self.plugins[key] = PluginRecord(
                    key, ep.value, dist, version, "failed",
                    f"PluginError: entry point '{ep.name}' of {dist} has the name of an entry point of "
                    f"{_origin(taken)}, which loads first; rename it (entry-point names are unique)")
                continue
            try:
                module = ep.load()
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # isolate, sys.exit() too: one broken plugin must not take the others down
                self.plugins[key] = PluginRecord(key, ep.value, dist, version, "failed",
                                                 f"{type(exc).__name__}: {exc}")
                continue
            self._register(module, key, ep.value, dist, version, raise_errors=False)

    def register_plugin(self, plugin: Any, name: str, distribution: str | None = None,
                        version: str | None = None) -> None:
        """Register an in-process plugin (a module or object with hookimpls); errors raise."""
        self.ensure_loaded()
        module_name = getattr(plugin, "__name__", type(plugin).__name__)
        self._register(plugin, name, module_name, distribution, version, raise_errors=True)

    def unregister_plugin(self, name: str) -> None:
        """Remove a plugin and everything it registered (tests and interactive use)."""
        for table in self.entries.values():
            for key in [k for k, e in table.items() if e.plugin == name]:
                del table[key]
        plugin = self.pm.get_plugin(name)
        if plugin is not None:
            self.pm.unregister(plugin)
        self.plugins.pop(name, None)

    def register_class(self, obj: Any) -> Any:
        """Register one class in-process (``salfw.register``), as a plugin of its own named
        ``KIND:NAME`` (shown by ``salfw list plugins``); the registry type follows from its base
        class. Returns the class, so this works as a decorator."""
        kinds = [kind for kind, (_, base, _) in TYPES.items() if isinstance(obj, type) and issubclass(obj, base)]
        if len(kinds) != 1:
            bases = ", ".join(base.__name__ for _, base, _ in TYPES.values())
            raise PluginError(f"salfw.register takes a subclass of one of salfw.core.contracts' {bases}; "
                              f"got {obj!r}")
        kind = kinds[0]
        hook, base, key = TYPES[kind]
        name = _check_class(kind, obj, base, key)
        taken = self.table(kind).get(name)
        if taken is not None:
            raise PluginError(f"{kind} '{name}' is registered by both plugin '{taken.plugin}' and "
                              f"salfw.register({obj.__module__}.{obj.__qualname__}); unregister one or rename")
        plugin = plugin_namespace(**{hook: lambda register: register(obj)})
        plugin.__name__ = f"{obj.__module__}.{obj.__qualname__}"
        self.register_plugin(plugin, f"{kind}:{name}")
        return obj

    def unregister_class(self, target: Any) -> None:
        """Remove what :meth:`register_class` registered, given the class or its registered name."""
        self.ensure_loaded()
        found = [e for table in self.entries.values() for e in table.values()
                 if (e.obj is target if isinstance(target, type) else e.name == target)]
        if not found:
            raise UnknownNameError(f"{getattr(target, '__name__', target)!r} is not registered")
        own = [e for e in found if e.plugin == f"{e.type}:{e.name}"]
        if not own:
            raise PluginError(f"{found[0].type} '{found[0].name}' comes from plugin '{found[0].plugin}', not from "
                              f"salfw.register(); disable a plugin with SALFW_DISABLE_PLUGINS")
        for entry in own:
            self.unregister_plugin(entry.plugin)

    def _register(self, plugin: Any, name: str, module_name: str, dist: str | None, version: str | None,
                  raise_errors: bool) -> None:
        record = PluginRecord(name, module_name, dist, version, "loaded")
        added: list[tuple[str, str]] = []
        try:
            if name in self.plugins and self.plugins[name].status == "loaded":
                raise PluginError(f"a plugin named '{name}' is already loaded")
            self.pm.register(plugin, name=name)
            self._check_hook_names(name)
            for kind, (hook, base, key) in TYPES.items():
                for impl in getattr(self.pm.hook, hook).get_hookimpls():
                    if impl.plugin_name == name:
                        impl.function(register=self._callback(kind, base, key, name, dist, version, added))
            for impl in getattr(self.pm.hook, COMMAND_HOOK).get_hookimpls():
                if impl.plugin_name == name:
                    impl.function(cli=CommandCollector(self._add_command(name, dist, version, added)))
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # sys.exit() in a hook too: isolated like any failure
            for kind, key in added:
                del self.entries[kind][key]
            if self.pm.is_registered(plugin):
                self.pm.unregister(plugin)
            record.status, record.error = "failed", f"{type(exc).__name__}: {exc}"
            self.plugins[name] = record
            if raise_errors:
                raise exc if isinstance(exc, PluginError) else PluginError(
                    f"plugin '{name}' failed to register: {record.error}") from exc
            return
        record.provides = [f"{kind}:{key}" for kind, key in added]
        self.plugins[name] = record

    def _check_hook_names(self, name: str) -> None:
        """pluggy's ``check_pending`` for one plugin: each of its hook implementations must match
        a hook specification (``optionalhook=True`` opts out, as in pluggy)."""
        for hook_name, caller in vars(self.pm.hook).items():
            if hook_name.startswith("_") or not isinstance(caller, pluggy.HookCaller) or caller.has_spec():
                continue
            if any(impl.plugin_name == name and not impl.optionalhook for impl in caller.get_hookimpls()):
                close = difflib.get_close_matches(hook_name, _HOOK_NAMES, n=1)
                hint = f"did you mean '{close[0]}'?" if close else f"salfw's hooks: {', '.join(_HOOK_NAMES)}"
                raise PluginError(f"plugin '{name}' implements '{hook_name}', which is not a salfw hook; {hint}")

    def _callback(self, kind: str, base: type, key: str, plugin: str, dist, version,
                  added: list) -> Callable[[type], type]:
        def register(obj: type) -> type:
            entry_name = _check_class(kind, obj, base, key)
            table = self.entries[kind]
            if entry_name in table:
                raise PluginError(_clash(kind, entry_name, table[entry_name], plugin, dist, version))
            table[entry_name] = Entry(entry_name, kind, obj, plugin, dist, version)
            added.append((kind, entry_name))
            return obj
        return register

    def _add_command(self, plugin: str, dist, version, added: list) -> Callable[[Any], Any]:
        def add(command: Any) -> Any:
            import click  # the CLI's library; loaded only when a plugin adds a command

            if not isinstance(command, click.Command) or not command.name:
                raise PluginError(f"plugin '{plugin}' must add click commands with a name, got {command!r}")
            table = self.entries["command"]
            if command.name in table:
                raise PluginError(_clash("command", command.name, table[command.name], plugin, dist, version))
            table[command.name] = Entry(command.name, "command", command, plugin, dist, version)
            added.append(("command", command.name))
            return command
        return add

    # -- lookup -------------------------------------------------------------------
    def table(self, kind: str) -> dict[str, Entry]:
        self.ensure_loaded()
        return self.entries[kind]

    def get(self, kind: str, name: str) -> Any:
        table = self.table(kind)
        if name not in table:
            known = ", ".join(sorted(table)) or "none registered"
            failed = [p.name for p in self.plugins.values() if p.status == "failed"]
            hint = f" (failed plugins: {', '.join(failed)}; see 'salfw list plugins')" if failed else ""
            raise UnknownNameError(f"unknown {kind} '{name}'; available: {known}{hint}")
        return table[name].obj


class CommandCollector:
    """What ``salfw_register_commands(cli)`` receives: ``add_command`` and ``command`` as on a
    ``click.Group``; the commands are recorded per plugin (and rolled back if the plugin fails)."""

    def __init__(self, add: Callable[[Any], Any]):
        self._add = add

    def add_command(self, command: Any, name: str | None = None) -> Any:
        if name is not None:
            command.name = name
        return self._add(command)

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Callable], Any]:
        import click

        def decorate(function: Callable) -> Any:
            return self._add(click.command(*args, **kwargs)(function))
        return decorate


#: Every hook a plugin may implement (the specifications in hookspecs.py).
_HOOK_NAMES = sorted(name for name in vars(hookspecs) if name.startswith("salfw_"))


def _distribution(ep: importlib.metadata.EntryPoint) -> tuple[str | None, str | None]:
    """The name and version of the distribution declaring an entry point."""
    return (ep.dist.name, ep.dist.version) if ep.dist is not None else (None, None)


def _origin(record: PluginRecord | Entry) -> str:
    """Where a plugin comes from, for messages: 'salfw 0.1.0 (built in)', a distribution, or in-process."""
    if record.distribution is None:
        return "in-process"
    text = f"{record.distribution} {record.version or ''}".strip()
    return f"{text} (built in)" if record.distribution == OWN_DISTRIBUTION else text


def _clash(kind: str, name: str, taken: Entry, plugin: str, dist: str | None, version: str | None) -> str:
    """Two plugins registering one name: name both, and the one override for a built-in."""
    mine = "in-process" if dist is None else f"{dist} {version or ''}".strip()
    text = (f"{kind} '{name}' is registered by both plugin '{taken.plugin}' and plugin '{plugin}' "
            f"('{taken.plugin}' from {_origin(taken)}, '{plugin}' from {mine}); the one loaded first keeps it")
    if taken.distribution == OWN_DISTRIBUTION and dist != OWN_DISTRIBUTION:
        text += f"; to use plugin '{plugin}' for it, disable the built-in: SALFW_DISABLE_PLUGINS={taken.plugin}"
    return text


def _names_from_env(var: str) -> set[str] | None:
    value = os.environ.get(var)
    if value is None or not value.strip():
        return None
    return {v.strip() for v in value.split(",") if v.strip()}


_REGISTRY: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry (created on first use)."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = Registry()
    return _REGISTRY


def reset_registry() -> None:
    """Forget everything loaded, so the next lookup reads the entry points and environment again."""
    global _REGISTRY
    _REGISTRY = None


def plugin_namespace(**hooks: Callable) -> types.SimpleNamespace:
    """A plugin object from hook functions, for in-process registration in tests and notebooks."""
    return types.SimpleNamespace(**{k: hookspecs.hookimpl(v) for k, v in hooks.items()})
