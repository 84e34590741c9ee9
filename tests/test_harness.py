"""The comparison harness, the grid and the compare/evaluate commands on tiny models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import salfw
from salfw.cli.compare import compare, compare_command
from salfw.cli.evaluate import evaluate_command
from salfw.evaluation.harness import load_data, object_masks, run_comparison, write_comparison
from salfw.testing import tiny_cnn

SPEC = "python:salfw.testing:tiny_cnn?input_shape=1,12,12"


@pytest.fixture
def batch():
    x = torch.rand(6, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    return x


def test_run_and_write(batch, tmp_path):
    model = salfw.WhiteBox(tiny_cnn(bias=True), input_shape=(1, 12, 12))
    flip = {"steps": 5}
    result = run_comparison({"tiny": model}, ["gradient", "input-x-gradient"],
                            ["morf", "lerf", "abpc", "ssim", "pointing-game", "randomization", "runtime"], batch,
                            metric_params={"morf": flip, "lerf": flip, "abpc": flip}, reexplain_samples=2,
                            progress=False)
    rows = {(r["method"], r["metric"]): r for r in result.rows}
    assert len(rows) == 2 * 7 and not result.skipped
    assert rows[("gradient", "randomization")]["n"] == 2
    direct = salfw.evaluate("abpc", model, batch, salfw.explain("gradient", model, batch), steps=5)
    assert rows[("gradient", "abpc")]["mean"] == pytest.approx(direct.double().mean().item(), abs=1e-6)
    assert set(result.curves["tiny"]) == {"morf", "lerf"} and "random order" in result.curves["tiny"]["morf"]
    written = write_comparison(result, tmp_path)
    assert {p.name for p in written} == {"results.csv", "results.json", "results.md", "curves-tiny.png"}
    table = (tmp_path / "results.md").read_text()
    assert "| gradient |" in table and "morf ↑" in table and "lerf ↓" in table
    data = json.loads((tmp_path / "results.json").read_text())
    assert len(data["rows"]) == 14


def test_unfit_pairs_are_skipped_with_a_reason(batch):
    black = salfw.BlackBox(tiny_cnn(), input_shape=(1, 12, 12))
    result = run_comparison({"black": black}, ["gradient"], ["morf"], batch, progress=False)
    assert result.rows == [] and "white-box" in result.skipped[0]["reason"]
    small = torch.rand(2, 1, 8, 8)
    model = salfw.WhiteBox(tiny_cnn())
    result = run_comparison({"tiny": model}, ["gradient"], ["ssim"], small, progress=False)
    assert result.skipped[0]["metric"] == "ssim" and "11" in result.skipped[0]["reason"]


def test_load_data_and_masks(tmp_path):
    array = (np.arange(3 * 12 * 12) % 256).astype(np.uint8).reshape(3, 12, 12)
    np.save(tmp_path / "d.npy", array)
    x, labels, _ = load_data(str(tmp_path / "d.npy"), samples=2)
    assert x.shape == (2, 1, 12, 12) and labels is None and x.max() <= 1
    assert object_masks(torch.tensor([[[[0.2, 0.9]]]]), (0.0, 1.0)).tolist() == [[[False, True]]]
    with pytest.raises(salfw.InputError):
        load_data(str(tmp_path / "missing.txt"))


def test_evaluate_command(batch, tmp_path):
    np.save(tmp_path / "x.npy", batch.numpy())
    result = CliRunner().invoke(evaluate_command, [
        "--methods", "gradient,input-x-gradient", "--metrics", "morf,deletion,ssim", "--model", SPEC,
        "--data", str(tmp_path / "x.npy"), "--samples", "4", "--set", "morf.steps=4", "--set", "deletion.steps=4",
        "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    csv = (tmp_path / "out" / "results.csv").read_text().splitlines()
    assert len(csv) == 1 + 2 * 3
    assert (tmp_path / "out" / "curves-salfw.testing_tiny_cnn_input_shape_1_12_12.png").exists()


def test_evaluate_command_rejects_unknown_names(tmp_path):
    result = CliRunner().invoke(evaluate_command, ["--metrics", "nope", "--out", str(tmp_path)])
    assert result.exit_code != 0 and isinstance(result.exception, salfw.ParameterError)
    result = CliRunner().invoke(evaluate_command, ["--methods", "gradient", "--metrics", "morf",
                                                   "--set", "steps=3", "--out", str(tmp_path)])
    assert isinstance(result.exception, salfw.ParameterError)


def test_compare_grid(batch, tmp_path):
    model = salfw.WhiteBox(tiny_cnn(), input_shape=(1, 12, 12))
    path, skipped = compare(model, batch[:2], ["gradient", "input-x-gradient"], tmp_path, params={"batch_size": "4"})
    assert path.exists() and skipped == {}
    with pytest.raises(salfw.ParameterError):
        compare(model, batch[:2], ["gradient"], tmp_path, params={"nonsense": "1"})


def test_compare_command(batch, tmp_path):
    np.save(tmp_path / "x.npy", batch[:2].numpy())
    runner = CliRunner()
    result = runner.invoke(compare_command, ["gradient", "input-x-gradient", "--model", SPEC,
                                             "--input", str(tmp_path / "x.npy"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "o" / "compare.png").exists()
    result = runner.invoke(compare_command, ["--model", SPEC, "--out", str(tmp_path)])
    assert result.exit_code != 0
