"""Plugin precedence and isolation (issue 15, item 2): salfw's own entry points load first and
win; a third party reusing a built-in name is the one refused, naming both; the only override
is disabling the built-in; ``sys.exit()`` or a ``BaseException`` at import or registration is
isolated like any other failure; a misspelt hook implementation fails its plugin, and
``salfw list plugins`` says so.

Third-party packages are real distributions: a ``.dist-info`` with ``entry_points.txt`` on a
temporary path, as pip would write it (as in ``tests/test_third_party_plugin.py``)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import salfw
from salfw.core import registry as reg
from salfw.core.errors import PluginError
from salfw.testing import sample_batch, tiny_cnn

#: A method that takes the built-in's name and returns a constant map.
IMPOSTOR = """
import dataclasses
import torch
import salfw
from salfw.core.contracts import Method


class Impostor(Method):
    name = "gradient"
    box = "black"
    kind = "additive"
    summary = "not the gradient"

    @dataclasses.dataclass(frozen=True)
    class Params:
        pass

    def attribute(self, model, x, targets, ctx):
        return torch.full_like(x, 7.0)


@salfw.hookimpl
def salfw_register_methods(register):
    register(Impostor)
"""

#: Registers a method of its own, then a misspelt hook (``salfw_register_method``).
MISSPELT = """
import dataclasses
import torch
import salfw
from salfw.core.contracts import Method


class Fine(Method):
    name = "misspelt-fine"
    box = "black"
    kind = "additive"
    summary = "registered through the right hook"

    @dataclasses.dataclass(frozen=True)
    class Params:
        pass

    def attribute(self, model, x, targets, ctx):
        return torch.zeros_like(x)


@salfw.hookimpl
def salfw_register_methods(register):
    register(Fine)


@salfw.hookimpl
def salfw_register_method(register):
    register(Fine)
"""

EXITS_AT_IMPORT = "import sys\nsys.exit(3)\n"

BASE_EXCEPTION_AT_REGISTRATION = """
import salfw


class Escape(BaseException):
    pass


@salfw.hookimpl
def salfw_register_methods(register):
    raise Escape("escaped from registration")
"""


def _distribution(root, dist: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
    """A site directory entry as pip writes it: ``DIST-1.0.dist-info`` and the modules."""
    info = root / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    lines = "".join(f"{name} = {value}\n" for name, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[salfw]\n{lines}")
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))


def _loaded() -> reg.Registry:
    registry = reg.get_registry()
    registry.ensure_loaded()
    return registry


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A temporary site directory on sys.path and a fresh registry (reset again afterwards)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    for var in ("SALFW_PLUGINS", "SALFW_DISABLE_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    reg.reset_registry()
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("prec_")]:
        del sys.modules[name]
    reg.reset_registry()


def test_a_built_in_wins_over_an_impostor_that_sorts_first(site):
    # "aaa-impostor" sorts before "gradient": loaded first, it used to take the name and the
    # built-in showed as FAILED (and smoothgrad's default base method ran the impostor).
    _distribution(site, "salfw-impostor", {"aaa-impostor": "prec_impostor"}, {"prec_impostor": IMPOSTOR})
    registry = _loaded()
    entry = registry.table("method")["gradient"]
    assert entry.plugin == "gradient" and entry.distribution == "salfw"
    assert registry.plugins["gradient"].status == "loaded"
    impostor = registry.plugins["aaa-impostor"]
    assert impostor.status == "failed" and impostor.provides == []
    # the message names both plugins, both distributions and the one way to override
    for words in ("'gradient'", "'aaa-impostor'", "salfw-impostor", "SALFW_DISABLE_PLUGINS=gradient"):
        assert words in impostor.error, impostor.error

    model = salfw.WhiteBox(tiny_cnn())
    x = sample_batch("image", 2)
    e = salfw.explain("smoothgrad", model, x, samples=2)  # its base method is the built-in gradient
    assert not torch.all(e.attributions == 7.0)


def test_a_third_party_entry_point_with_a_built_in_entry_point_name_is_refused(site):
    _distribution(site, "salfw-impostor", {"gradient": "prec_impostor2"}, {"prec_impostor2": IMPOSTOR})
    registry = _loaded()
    assert registry.table("method")["gradient"].distribution == "salfw"
    record = registry.plugins["salfw-impostor:gradient"]
    assert record.status == "failed" and "salfw-impostor" in record.error and "rename" in record.error


def test_disabling_the_built_in_lets_the_third_party_take_its_name(site, monkeypatch):
    _distribution(site, "salfw-impostor", {"aaa-impostor": "prec_impostor3"}, {"prec_impostor3": IMPOSTOR})
    monkeypatch.setenv("SALFW_DISABLE_PLUGINS", "gradient")
    registry = _loaded()
    assert registry.plugins["gradient"].status == "disabled"
    assert registry.plugins["aaa-impostor"].status == "loaded"
    entry = registry.table("method")["gradient"]
    assert entry.plugin == "aaa-impostor" and entry.distribution == "salfw-impostor"


@pytest.mark.parametrize("source", [EXITS_AT_IMPORT, BASE_EXCEPTION_AT_REGISTRATION],
                         ids=["sys-exit-at-import", "base-exception-at-registration"])
def test_sys_exit_and_base_exceptions_are_isolated(site, source):
    _distribution(site, "salfw-rude", {"rude": "prec_rude"}, {"prec_rude": source})
    registry = _loaded()
    record = registry.plugins["rude"]
    assert record.status == "failed", record
    assert ("SystemExit: 3" in record.error if "sys.exit" in source
            else "Escape: escaped from registration" in record.error)
    assert registry.plugins["gradient"].status == "loaded" and "gradient" in registry.table("method")


def test_keyboard_interrupt_still_interrupts(site):
    _distribution(site, "salfw-interrupt", {"interrupt": "prec_interrupt"},
                  {"prec_interrupt": "raise KeyboardInterrupt\n"})
    with pytest.raises(KeyboardInterrupt):
        reg.get_registry().ensure_loaded()


def test_a_misspelt_hook_fails_its_plugin(site):
    _distribution(site, "salfw-misspelt", {"misspelt": "prec_misspelt"}, {"prec_misspelt": MISSPELT})
    registry = _loaded()
    record = registry.plugins["misspelt"]
    assert record.status == "failed", record
    assert "salfw_register_method" in record.error and "salfw_register_methods" in record.error
    assert "misspelt-fine" not in registry.table("method")  # rolled back like any failure


def test_an_in_process_plugin_with_a_misspelt_hook_raises(site):
    plugin = reg.plugin_namespace(salfw_register_metric=lambda register: None)
    with pytest.raises(PluginError, match="salfw_register_metric.*salfw_register_metrics"):
        reg.get_registry().register_plugin(plugin, "misspelt-in-process")
    assert reg.get_registry().plugins["misspelt-in-process"].status == "failed"


def test_list_plugins_reports_every_failure_and_exits_zero(site):
    _distribution(site, "salfw-several", {"aaa-impostor": "prec_impostor4", "misspelt": "prec_misspelt2",
                                          "rude": "prec_rude2"},
                  {"prec_impostor4": IMPOSTOR, "prec_misspelt2": MISSPELT, "prec_rude2": EXITS_AT_IMPORT})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    env.pop("SALFW_PLUGINS", None)
    env.pop("SALFW_DISABLE_PLUGINS", None)
    out = subprocess.run([sys.executable, "-m", "salfw.cli.main", "list", "plugins", "--json"], env=env,
                         cwd=site, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = {row["name"]: row for row in json.loads(out.stdout)}
    assert rows["gradient"]["status"] == "loaded"
    assert rows["aaa-impostor"]["status"] == "failed" and "'gradient'" in rows["aaa-impostor"]["error"]
    assert rows["misspelt"]["status"] == "failed" and "salfw_register_method" in rows["misspelt"]["error"]
    assert rows["rude"]["status"] == "failed" and "SystemExit" in rows["rude"]["error"]
