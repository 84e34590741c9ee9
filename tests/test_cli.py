"""The CLI: listings, info, run, and one-line errors with a non-zero exit for user mistakes;
the file model loaders (TorchScript, python:, ONNX)."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import salfw
from salfw.cli.main import cli, main
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


@pytest.mark.parametrize("what", ["methods", "metrics", "perturbations", "plugins", "models", "loaders"])
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
