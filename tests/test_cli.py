"""The CLI: listings, info, run, and one-line errors with a non-zero exit for user mistakes;
the file model loaders (TorchScript, python:, ONNX)."""

import dataclasses
import json

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import salfw
from salfw.cli.main import cli, main
from salfw.core import registry as reg
from salfw.core.api import make_perturbation
from salfw.core.contracts import Method
from salfw.core.params import Component, component, param
from salfw.testing import tiny_mlp


def run_cli(args, capsys):
    """Call the console entry point; return (exit code, stdout, stderr)."""
    code = 0
    try:
        main(args)
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("what", ["methods", "metrics", "perturbations", "plugins", "models", "loaders",
                                  "explainers", "rules", "composites", "commands"])
def test_list_json_rows_have_the_contract_fields(what, capsys):
    code, out, err = run_cli(["list", what, "--json"], capsys)
    assert code == 0, err
    rows = json.loads(out)
    assert isinstance(rows, list)
    for row in rows:
        assert {"name", "type", "box", "kind", "plugin", "distribution", "version", "summary"} <= set(row)
    if what == "methods":
        by_name = {r["name"]: r for r in rows}
        assert by_name["gradient"]["box"] == "white" and by_name["gradient"]["distribution"] == "salfw"


def test_list_plain_and_info(capsys):
    code, out, _ = run_cli(["list"], capsys)
    assert code == 0 and "gradient" in out
    code, out, _ = run_cli(["info", "gradient"], capsys)
    assert code == 0 and "absolute" in out and "Simonyan" in out
    code, out, _ = run_cli(["info", "blur"], capsys)
    assert code == 0 and "sigma" in out


def _torchscript(tmp_path):
    torch.manual_seed(0)
    net = torch.jit.script(tiny_mlp(bias=True))
    path = tmp_path / "net.pt"
    net.save(str(path))
    return path


def test_run_writes_the_four_files(tmp_path, capsys):
    path = _torchscript(tmp_path)
    np.save(tmp_path / "x.npy", np.full((6,), 0.5, dtype=np.float32))
    out_dir = tmp_path / "out"
    code, out, err = run_cli(["run", "gradient", "--model", f"torchscript:{path}", "--input",
                              str(tmp_path / "x.npy"), "--target", "1", "--set", "absolute=true",
                              "--out", str(out_dir), "--json"], capsys)
    assert code == 0, err
    meta = json.loads(out)
    assert meta["targets"] == [1] and meta["params"]["absolute"] is True
    assert (out_dir / "gradient.npy").exists() and (out_dir / "gradient.json").exists()


def test_run_on_an_image_file_resizes_with_a_notice(tmp_path, capsys):
    from PIL import Image

    torch.manual_seed(0)
    net = torch.jit.script(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)))
    net.save(str(tmp_path / "img.pt"))
    Image.fromarray((np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)).save(tmp_path / "a.png")
    code, out, err = run_cli(["run", "gradient", "--model", f"torchscript:{tmp_path / 'img.pt'}?input_shape=1,8,8",
                              "--input", str(tmp_path / "a.png"), "--out", str(tmp_path / "o")], capsys)
    assert code == 0, err
    assert "resized a.png from 16x16 to the model's 8x8" in err
    for name in ("gradient.png", "gradient-overlay.png", "gradient.npy", "gradient.json"):
        assert (tmp_path / "o" / name).exists()


@pytest.mark.parametrize("args,words", [
    (["run", "no-such-method", "--model", "TS", "--input", "X"], "unknown method 'no-such-method'"),
    (["run", "gradient", "--model", "TS", "--input", "X", "--set", "steps"], "--set takes key=value"),
    (["run", "gradient", "--model", "TS", "--input", "X", "--set", "bogus=1"], "unknown parameter(s) bogus"),
    (["run", "gradient", "--model", "TS", "--input", "X", "--set", "absolute=perhaps"], "must be a bool"),
    (["run", "gradient", "--model", "TS", "--input", "X", "--target", "7"], "out of range"),
    (["run", "gradient", "--model", "TS", "--input", "missing.npy"], "does not exist"),
    (["run", "gradient", "--model", "TS", "--input", "BAD_PNG"], "cannot read"),
    (["run", "gradient", "--model", "TS", "--input", "X.txt"], "accepted formats"),
    (["run", "gradient", "--model", "torchscript:nope.pt", "--input", "X"], "does not exist"),
    (["run", "gradient", "--model", "torchscript:BAD_MODEL", "--input", "X"], "cannot load"),
    (["run", "gradient", "--model", "nonsense", "--input", "X"], "scheme:rest"),
    (["run", "gradient", "--model", "zip:x", "--input", "X"], "unknown model-loader 'zip'"),
    (["run", "gradient", "--model", "python:os:nothing_here", "--input", "X"], "cannot import"),
    (["run", "gradient", "--model", "TS?colour=red", "--input", "X"], "unknown model option"),
    (["run", "gradient", "--model", "TS", "--input", "NAN"], "NaN"),
    (["run", "gradient", "--model", "TS", "--input", "X", "--sample", "1"], "either --input or --sample"),
    (["run"], "Missing argument"),
    (["list", "things"], "Invalid value"),
    (["info", "nothing"], "no method, metric"),
])
def test_user_mistakes_print_one_line_and_exit_non_zero(args, words, tmp_path, capsys):
    ts = _torchscript(tmp_path)
    np.save(tmp_path / "x.npy", np.full((1, 6), 0.5, dtype=np.float32))
    np.save(tmp_path / "nan.npy", np.full((1, 6), np.nan, dtype=np.float32))
    (tmp_path / "bad.png").write_bytes(b"not a png at all")
    (tmp_path / "bad.pt").write_bytes(b"not a model")
    (tmp_path / "x.txt").write_text("0.5")
    subst = {"TS": f"torchscript:{ts}", "X": str(tmp_path / "x.npy"), "BAD_PNG": str(tmp_path / "bad.png"),
             "BAD_MODEL": str(tmp_path / "bad.pt"), "NAN": str(tmp_path / "nan.npy"), "X.txt": str(tmp_path / "x.txt"),
             "missing.npy": str(tmp_path / "missing.npy"), "TS?colour=red": f"torchscript:{ts}?colour=red"}
    args = [subst.get(a, a).replace("nope.pt", str(tmp_path / "nope.pt")) for a in args]
    args = [a.replace("torchscript:BAD_MODEL", f"torchscript:{tmp_path / 'bad.pt'}") for a in args]
    code, out, err = run_cli(args, capsys)
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and words in lines[0], lines[0]
    assert "Traceback" not in err


def test_console_script_is_wired():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0 and "run" in result.output and "list" in result.output


# -- loaders -----------------------------------------------------------------------------------
def test_python_loader_with_safetensors_weights(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    net = tiny_mlp(seed=5)
    save_file(net.state_dict(), str(tmp_path / "w.safetensors"))
    save_file(tiny_mlp(bias=True).state_dict(), str(tmp_path / "other.safetensors"))
    with pytest.raises(salfw.ModelError, match="do not fit salfw.testing:tiny_mlp"):
        salfw.load_model(f"python:salfw.testing:tiny_mlp@{tmp_path / 'other.safetensors'}")
    m = salfw.load_model(f"python:salfw.testing:tiny_mlp@{tmp_path / 'w.safetensors'}?input_range=-1,1")
    x = torch.rand(3, 6)
    assert isinstance(m, salfw.WhiteBox) and m.input_range == (-1.0, 1.0)
    assert torch.allclose(m.scores(x), net(x))


def test_python_loader_refuses_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(salfw.ModelError, match="cannot load weights"):
        salfw.load_model(f"python:salfw.testing:tiny_mlp@{tmp_path / 'evil.pt'}")


def test_onnx_loader_is_a_black_box_matching_the_graph(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((6, 3)).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"])], "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "lin.onnx"))
    m = salfw.load_model(f"onnx:{tmp_path / 'lin.onnx'}")
    x = torch.rand(4, 6)
    assert isinstance(m, salfw.BlackBox)
    assert torch.allclose(m.scores(x), torch.from_numpy(x.numpy() @ w + b), atol=1e-5)
    with pytest.raises(salfw.ModelRequirementError, match="white-box"):
        salfw.explain("gradient", m, x)


# -- commands through the registry ---------------------------------------------------------------
@pytest.fixture
def fresh_registry():
    reg.reset_registry()
    yield reg.get_registry()
    reg.reset_registry()


BUILTIN_COMMANDS = {"list", "info", "run", "compare", "evaluate", "train", "test", "plot"}


def test_builtin_commands_are_a_plugin_like_any_other(capsys):
    code, out, err = run_cli(["list", "commands", "--json"], capsys)
    assert code == 0, err
    rows = {row["name"]: row for row in json.loads(out)}
    assert BUILTIN_COMMANDS <= set(rows)
    assert {rows[n]["plugin"] for n in BUILTIN_COMMANDS} == {"commands"} and rows["run"]["distribution"] == "salfw"
    assert rows["run"]["type"] == "command" and rows["run"]["summary"].startswith("Explain one input")
    code, out, _ = run_cli(["list", "plugins", "--json"], capsys)
    plugin = {row["name"]: row for row in json.loads(out)}["commands"]
    assert plugin["status"] == "loaded" and plugin["module"] == "salfw.cli.commands"
    assert {f"command:{n}" for n in BUILTIN_COMMANDS} <= set(plugin["provides"])
    code, out, _ = run_cli(["list", "commands"], capsys)
    assert any(line.split()[:2] == ["run", "commands"] for line in out.splitlines())
    code, out, _ = run_cli(["info", "compare"], capsys)
    assert code == 0 and "command, plugin 'commands'" in out


def test_listing_is_generic_over_registry_types(fresh_registry, capsys):
    from salfw.core.contracts import Composite, PropagationRule

    rule = type("Flat", (PropagationRule,), {"name": "flat-listed", "summary": "uniform relevance"})
    composite = type("AllFlat", (Composite,), {"name": "all-flat-listed", "__doc__": "Flat everywhere.\n\nMore."})
    fresh_registry.register_plugin(reg.plugin_namespace(
        salfw_register_rules=lambda register: register(rule),
        salfw_register_composites=lambda register: register(composite)), "flat-family")
    for what, name, summary in (("rules", "flat-listed", "uniform relevance"),
                                ("composites", "all-flat-listed", "Flat everywhere.")):
        code, out, err = run_cli(["list", what, "--json"], capsys)
        assert code == 0, err
        row = {r["name"]: r for r in json.loads(out)}[name]
        assert row["plugin"] == "flat-family" and row["summary"] == summary and row["type"] == what[:-1]
        code, out, _ = run_cli(["list", what], capsys)
        assert f"{name}" in out and "flat-family" in out and summary in out
    code, out, _ = run_cli(["list", "plugins"], capsys)
    assert "rule:flat-listed" in out and "composite:all-flat-listed" in out
    code, out, _ = run_cli(["info", "flat-listed"], capsys)
    assert code == 0 and "flat-listed (rule, plugin 'flat-family'" in out and "uniform relevance" in out


@pytest.mark.parametrize("command", ["run", "compare", "evaluate"])
def test_progress_is_an_option_of_the_long_commands(command):
    assert "--progress / --no-progress" in CliRunner().invoke(cli, [command, "--help"]).output


def _hello_plugin(fail: bool = False):
    def add(cli):
        @cli.command("hello")
        @click.option("--name", default="world")
        def hello(name):
            """Say hello."""
            click.echo(f"hello {name}")

        if fail:
            raise RuntimeError("plugin broke after adding its command")

    return reg.plugin_namespace(salfw_register_commands=add)


def test_a_third_party_command_joins_the_cli(fresh_registry, capsys):
    fresh_registry.register_plugin(_hello_plugin(), "hello-plugin", "salfw-hello", "1.0")
    code, out, err = run_cli(["hello", "--name", "salfw"], capsys)
    assert code == 0 and out == "hello salfw\n", err
    code, out, _ = run_cli(["list", "commands", "--json"], capsys)
    row = {r["name"]: r for r in json.loads(out)}["hello"]
    assert (row["plugin"], row["distribution"], row["summary"]) == ("hello-plugin", "salfw-hello", "Say hello.")
    assert "hello" in CliRunner().invoke(cli, ["--help"]).output


def test_a_failing_plugins_commands_are_rolled_back(fresh_registry, capsys):
    with pytest.raises(salfw.PluginError, match="plugin broke"):
        fresh_registry.register_plugin(_hello_plugin(fail=True), "broken-commands")
    assert "hello" not in fresh_registry.table("command")
    code, _, err = run_cli(["hello"], capsys)
    assert code != 0 and "No such command 'hello'" in err
    code, out, _ = run_cli(["list", "plugins", "--json"], capsys)
    row = {r["name"]: r for r in json.loads(out)}["broken-commands"]
    assert row["status"] == "failed" and "plugin broke" in row["error"] and row["provides"] == []
    code, out, _ = run_cli(["list", "methods"], capsys)  # the rest work
    assert code == 0 and "gradient" in out


def test_a_command_name_clash_names_both_plugins(fresh_registry):
    clash = reg.plugin_namespace(salfw_register_commands=lambda cli: cli.add_command(click.Command("run")))
    with pytest.raises(salfw.PluginError, match="command 'run' is registered by both plugin 'commands' and plugin "
                                               "'mine'"):
        fresh_registry.register_plugin(clash, "mine")
    assert fresh_registry.table("command")["run"].plugin == "commands"


def test_builtin_commands_survive_an_allow_list(monkeypatch, capsys):
    monkeypatch.setenv("SALFW_PLUGINS", "gradient,perturbations")
    reg.reset_registry()
    try:
        code, out, err = run_cli(["list", "methods"], capsys)
        assert code == 0 and "gradient" in out and "lime" not in out, err
        assert reg.get_registry().plugins["commands"].status == "loaded"
    finally:
        reg.reset_registry()


# -- nested settings and progress ------------------------------------------------------------------
class _Filled(Method):
    """Input minus a fill (a test method with a nested perturbation setting)."""

    name = "filled-test"
    box = "black"

    @dataclasses.dataclass(frozen=True)
    class Params:
        perturbation: Component = component("black", "perturbation", "the fill")
        scale: float = param(1.0, "a factor")

    def attribute(self, model, x, targets, ctx):
        fill = make_perturbation(self.params.perturbation).fill(x, model.input_range, ctx.generator)
        return self.params.scale * (x - fill), {"progress": ctx.show_progress}


@pytest.fixture
def filled(fresh_registry):
    salfw.register(_Filled)


def test_run_passes_nested_settings_through(filled, tmp_path, capsys):
    code, out, err = run_cli(["run", "filled-test", "--sample", "1", "--set", "perturbation=blur",
                              "--set", "perturbation.sigma=2", "--out", str(tmp_path), "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["params"]["perturbation"] == {"name": "blur", "sigma": 2.0}
    code, _, err = run_cli(["run", "filled-test", "--set", "perturbation=blur", "--set", "perturbation.sigma=-1",
                            "--out", str(tmp_path)], capsys)
    assert code == 2 and "sigma" in err and ">= 0" in err
    code, _, err = run_cli(["run", "filled-test", "--set", "perturbation.sigma=2", "--out", str(tmp_path)], capsys)
    assert code == 2 and "unknown parameter(s) sigma for perturbation 'black'" in err  # the default has none


@pytest.mark.parametrize("flag,shown", [([], False), (["--progress"], True), (["--no-progress"], False)])
def test_run_progress_flag_reaches_the_context(filled, flag, shown, tmp_path, capsys):
    code, out, err = run_cli(["run", "filled-test", "--out", str(tmp_path), "--json", *flag], capsys)
    assert code == 0, err
    assert json.loads(out)["meta"]["progress"] is shown  # stderr is not a terminal under pytest


def test_compare_splits_only_a_leading_method_name(filled, tmp_path, capsys):
    from salfw.cli.compare import split_settings

    given = split_settings({"filled-test.perturbation.sigma": "2", "perturbation": "blur", "batch_size": "4",
                            "gradient.absolute": "true"}, ["filled-test", "gradient"])
    assert given == {"filled-test": {"perturbation.sigma": "2", "perturbation": "blur"},
                     "gradient": {"batch_size": "4", "absolute": "true"}}
    with pytest.raises(salfw.ParameterError, match="lime.samples, scale: no chosen method declares them"):
        split_settings({"lime.samples": "3", "scale": "2"}, ["gradient"])
    with pytest.raises(salfw.UnknownNameError, match="unknown method 'nope'"):
        split_settings({}, ["nope"])
    code, out, err = run_cli(["compare", "filled-test", "gradient", "--set", "perturbation=blur",
                              "--set", "filled-test.perturbation.sigma=2", "--set", "gradient.absolute=true",
                              "--no-progress", "--out", str(tmp_path)], capsys)
    assert code == 0 and (tmp_path / "compare.png").exists(), err
    code, _, err = run_cli(["compare", "filled-test", "--set", "filled-test.perturbation.sigma=x",
                            "--out", str(tmp_path)], capsys)
    assert code == 2 and "sigma" in err
