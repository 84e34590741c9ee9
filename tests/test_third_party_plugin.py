"""The third-party path: the example package's distribution metadata is built on a
temporary path, and its method shows up in `salfw list` and runs through `salfw run`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "salfw-random-map"


@pytest.fixture
def plugin_path(tmp_path):
    """A site directory holding the example's .dist-info (as pip would write it) and its source."""
    dist = tmp_path / "salfw_random_map-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: salfw-random-map\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text("[salfw]\nrandom-map = salfw_random_map\n")
    return os.pathsep.join([str(tmp_path), str(EXAMPLE)])


def _salfw(args, pythonpath, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [pythonpath, os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "salfw.cli.main", *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)


def test_listed_and_run_from_the_cli(plugin_path, tmp_path):
    listing = _salfw(["list", "methods", "--json"], plugin_path, tmp_path)
    assert listing.returncode == 0, listing.stderr
    rows = {row["name"]: row for row in json.loads(listing.stdout)}
    assert rows["random-map"]["distribution"] == "salfw-random-map"
    assert rows["random-map"]["plugin"] == "random-map" and rows["random-map"]["box"] == "black"
    assert "gradient" in rows  # the built-ins still load beside it

    np.save(tmp_path / "x.npy", np.full((1, 6), 0.5, dtype=np.float32))
    run = _salfw(["run", "random-map", "--model", "python:salfw.testing:tiny_mlp", "--input", "x.npy",
                  "--out", "out"], plugin_path, tmp_path)
    assert run.returncode == 0, run.stderr
    saved = json.loads((tmp_path / "out" / "random-map.json").read_text())
    assert saved["method"] == "random-map" and saved["shape"] == [1, 6]


def test_disabling_third_party_plugins_keeps_the_built_ins(plugin_path, tmp_path, monkeypatch):
    monkeypatch.setenv("SALFW_DISABLE_PLUGINS", "1")
    listing = _salfw(["list", "plugins", "--json"], plugin_path, tmp_path)
    rows = {row["name"]: row for row in json.loads(listing.stdout)}
    assert rows["random-map"]["status"] == "disabled"
    assert rows["gradient"]["status"] == "loaded"


COMMAND_PLUGIN = """
import click
import salfw


@salfw.hookimpl
def salfw_register_commands(cli):
    @cli.command("greet")
    @click.argument("who")
    def greet(who):
        \"\"\"Greet WHO.\"\"\"
        click.echo(f"hello {who}")

    if BROKEN:
        raise RuntimeError("broke after adding greet")
"""


@pytest.mark.parametrize("broken", [False, True])
def test_a_packaged_command_joins_the_cli_or_is_rolled_back(broken, tmp_path):
    """A package's ``salfw_register_commands`` adds a subcommand; if the plugin then raises,
    its command is gone and ``salfw list plugins`` says why, while the rest of salfw works."""
    (tmp_path / "salfw_greet.py").write_text(f"BROKEN = {broken}\n{COMMAND_PLUGIN}")
    dist = tmp_path / "salfw_greet-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: salfw-greet\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[salfw]\ngreet = salfw_greet\n")
    greet = _salfw(["greet", "you"], str(tmp_path), tmp_path)
    plugins = {row["name"]: row for row in json.loads(_salfw(["list", "plugins", "--json"], str(tmp_path),
                                                             tmp_path).stdout)}
    if broken:
        assert greet.returncode != 0 and "No such command 'greet'" in greet.stderr
        assert plugins["greet"]["status"] == "failed" and "broke after adding greet" in plugins["greet"]["error"]
    else:
        assert greet.returncode == 0 and greet.stdout == "hello you\n", greet.stderr
        assert plugins["greet"]["provides"] == ["command:greet"] and plugins["greet"]["distribution"] == "salfw-greet"
    assert plugins["commands"]["status"] == "loaded"


def test_conforms():
    import salfw_random_map  # noqa: F401  (on the path through the fixture below)

    from salfw.core import registry

    registry.reset_registry()
    try:
        registry.get_registry().register_plugin(salfw_random_map, "random-map-inprocess")
        from salfw.testing import check_method
        check_method("random-map", "image")
        check_method("random-map", "vector")
    finally:
        registry.reset_registry()


@pytest.fixture(autouse=True)
def _example_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
