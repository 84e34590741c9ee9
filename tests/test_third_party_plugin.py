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


def test_conforms():
    from salfw.core import registry
    import salfw_random_map  # noqa: F401  (on the path through the fixture below)

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
