"""Your own model (issue 13, item 4): ``python:`` specs import from the current directory;
``salfw info <scheme>`` lists each loader's declared spec options (``select`` among them);
``--input`` photos of any size are resized (aspect ratio kept) and centre-cropped to the model's
input size, with a one-line notice; ``--invert`` flips dark-on-white digits, and a bright digit
for a model trained on dark backgrounds gets a hint; ONNX graphs with a fixed batch size run."""

import json
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch

import salfw
from salfw.cli.common import load_input
from salfw.cli.main import main
from salfw.zoo.samples import load_samples


def run_cli(args, capsys):
    code = 0
    try:
        main(args)
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


NETWORK = """
    import torch
    from torch import nn


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.body = nn.Linear(6, 3)

        def forward(self, x):
            return {"hidden": x, "logits": self.body(x)}  # as a Hugging Face model's output


    def build():
        return Net()


    def pair():
        net = Net()
        return lambda x: (net(x)["logits"], x)  # a callable: a black box returning a tuple
"""


@pytest.fixture
def own_module(tmp_path, monkeypatch):
    """``mynet_<n>.py`` in a fresh current directory that is not on sys.path; its name."""
    name = f"mynet_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(NETWORK))
    monkeypatch.chdir(tmp_path)
    yield name
    sys.modules.pop(name, None)


# -- python: from the current directory ----------------------------------------------------------
def test_python_specs_import_from_the_current_directory(own_module):
    before = list(sys.path)
    model = salfw.load_model(f"python:{own_module}:build?select=logits")
    assert sys.path == before  # restored after the import
    assert isinstance(model, salfw.WhiteBox) and model.select == "logits"
    x = torch.rand(2, 6)
    assert torch.allclose(model.scores(x), model.module.body(x))
    black = salfw.load_model(f"python:{own_module}:pair?select=0")
    assert isinstance(black, salfw.BlackBox) and black.select == 0
    assert torch.allclose(black.scores(x), model.scores(x))


def test_python_specs_from_the_current_directory_run_from_the_cli(own_module, tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.full((1, 6), 0.5, dtype=np.float32))
    code, out, err = run_cli(["run", "gradient", "--model", f"python:{own_module}:build?select=logits",
                              "--input", "x.npy", "--out", "out", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["shape"] == [1, 6]


def test_a_missing_module_says_where_it_was_looked_for(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(salfw.ModelError, match=f"looked in the current directory {tmp_path}"):
        salfw.load_model("python:no_such_module_here:build")


def test_a_module_that_fails_on_import_is_one_clear_error(tmp_path, monkeypatch):
    (tmp_path / "broken_net.py").write_text("raise RuntimeError('weights server down')\n")
    monkeypatch.chdir(tmp_path)
    try:
        with pytest.raises(salfw.ModelError, match="importing broken_net failed: RuntimeError: weights server"):
            salfw.load_model("python:broken_net:build")
    finally:
        sys.modules.pop("broken_net", None)


# -- spec options: declared, listed, checked ----------------------------------------------------
@pytest.mark.parametrize("scheme,present,absent", [
    ("python", ["input_range", "input_shape", "select", "batch_size", "mean", "std", "invert", "device",
                "layout", "output"], []),
    ("torchscript", ["input_range", "input_shape", "select", "mean", "std", "device"], ["layout"]),
    ("onnx", ["input_range", "input_shape", "select", "layout", "output"], ["mean", "device"]),
])
def test_info_lists_each_loaders_spec_options(scheme, present, absent, capsys):
    code, out, err = run_cli(["info", scheme], capsys)
    assert code == 0, err
    assert f"spec options ({scheme}:...?key=value&key=value):" in out
    listed = {line.split()[0] for line in out.split("spec options", 1)[1].splitlines()[1:] if line.strip()}
    assert set(present) <= listed and not set(absent) & listed


def test_info_builtin_lists_its_models(capsys):
    code, out, err = run_cli(["info", "builtin"], capsys)
    assert code == 0, err
    assert "builtin:mnist-cnn " in out and "no spec options" in out


@pytest.mark.parametrize("spec,words", [
    ("torchscript:TS?layout=NHWC", "unknown model option 'layout' for torchscript: models"),
    ("python:MOD:build?layout=NHWC", r"option\(s\) layout apply to black boxes only; .*:build is a network"),
    ("python:MOD:pair?mean=0.5", r"option\(s\) mean apply to networks \(white boxes\) only; .*:pair is a black"),
    ("python:MOD:build?input_range=0,1,2", "input_range takes two numbers"),
    ("python:MOD:build?batch_size=0", "batch_size' must be >= 1"),
    ("onnx:ONNX?mean=0.5", "unknown model option 'mean' for onnx: models; accepted: input_range"),
    ("python:MOD:build?select=logits&select=0", "given twice"),
])
def test_spec_options_are_checked_against_the_declaration(spec, words, own_module, tmp_path):
    net = torch.jit.script(torch.nn.Linear(6, 3))
    net.save(str(tmp_path / "net.pt"))
    onnx_path = _onnx_linear(tmp_path, ["N", 6])
    spec = spec.replace("TS", str(tmp_path / "net.pt")).replace("MOD", own_module).replace("ONNX", str(onnx_path))
    with pytest.raises(salfw.ModelError, match=words):
        salfw.load_model(spec)


def test_device_and_batch_size_options_reach_the_adapter(own_module):
    model = salfw.load_model(f"python:{own_module}:build?select=logits&device=cpu&batch_size=7")
    assert model.device == torch.device("cpu") and model.batch_size == 7


# -- photos of any size ---------------------------------------------------------------------------
def _bands(path, width, height):
    """Red | green | blue vertical bands; the green one covers the middle half and then some."""
    from PIL import Image

    picture = np.zeros((height, width, 3), dtype=np.uint8)
    picture[:, : width // 4, 0] = 255
    picture[:, width // 4: width - width // 4, 1] = 255
    picture[:, width - width // 4:, 2] = 255
    Image.fromarray(picture).save(path)
    return path


def test_a_wide_photo_is_resized_keeping_its_aspect_and_centre_cropped(tmp_path, capsys):
    path = _bands(tmp_path / "wide.png", 80, 20)
    model = salfw.load_model("python:salfw.testing:tiny_cnn?input_shape=3,8,8")
    x = load_input(str(path), model)
    err = capsys.readouterr().err
    assert "notice: resized wide.png from 80x20 to 32x8 (its aspect ratio kept) and centre-cropped it to the " \
           "model's 8x8" in err and len(err.splitlines()) == 1
    assert x.shape == (1, 3, 8, 8)
    # the crop is the green middle; squashing the whole picture to 8x8 would bring in red and blue
    assert torch.allclose(x[0], torch.tensor([0.0, 1.0, 0.0])[:, None, None].expand(3, 8, 8), atol=1e-6)


def test_a_tall_colour_photo_for_a_greyscale_model_says_both_conversions(tmp_path, capsys):
    from PIL import Image

    picture = np.zeros((60, 20, 3), dtype=np.uint8)
    picture[15:45] = 255  # a white middle half
    Image.fromarray(picture).save(tmp_path / "tall.png")
    model = salfw.load_model("python:salfw.testing:tiny_cnn?input_shape=1,10,10")
    x = load_input(str(tmp_path / "tall.png"), model)
    err = capsys.readouterr().err
    assert "resized tall.png from 20x60 to 10x30 (its aspect ratio kept) and centre-cropped it to the model's " \
           "10x10; converted it from colour to greyscale (the model takes 1 channel)" in err
    assert x.shape == (1, 1, 10, 10) and torch.allclose(x, torch.ones_like(x), atol=1e-6)


def test_a_picture_of_the_right_size_gets_no_notice(tmp_path, capsys):
    from PIL import Image

    Image.fromarray(np.zeros((8, 10), dtype=np.uint8)).save(tmp_path / "fit.png")
    load_input(str(tmp_path / "fit.png"), salfw.load_model("python:salfw.testing:tiny_cnn?input_shape=1,8,10"))
    assert capsys.readouterr().err == ""


# -- --invert and the polarity hint -----------------------------------------------------------------
def _digit_png(path, k, dark_on_white):
    from PIL import Image

    images, labels = load_samples()
    pixels = images[k, 0].numpy()
    pixels = 1.0 - pixels if dark_on_white else pixels
    Image.fromarray(np.round(pixels * 255).astype(np.uint8)).save(path)
    return int(labels[k])


def test_invert_reads_a_dark_digit_on_white_and_the_hint_suggests_it(tmp_path, capsys):
    label = _digit_png(tmp_path / "paper.png", 3, dark_on_white=True)
    common = ["run", "gradient", "--input", str(tmp_path / "paper.png"), "--json"]
    code, out, err = run_cli(common + ["--out", str(tmp_path / "a")], capsys)
    assert code == 0, err
    hint = [line for line in err.splitlines() if "--invert" in line]
    assert len(hint) == 1 and hint[0].startswith("notice: paper.png looks like a dark digit on a light background")
    assert "builtin:mnist-cnn was trained on light digits on black" in hint[0]
    code, out, err = run_cli(common + ["--invert", "--out", str(tmp_path / "b")], capsys)
    assert code == 0, err
    assert "--invert" not in err
    assert json.loads(out)["meta"]["predicted"] == [label]


def test_no_hint_for_a_light_digit_on_black_or_a_model_of_ones_own(tmp_path, capsys):
    _digit_png(tmp_path / "mnist.png", 3, dark_on_white=False)
    code, _, err = run_cli(["run", "gradient", "--input", str(tmp_path / "mnist.png"), "--out",
                            str(tmp_path / "a")], capsys)
    assert code == 0 and "--invert" not in err
    _digit_png(tmp_path / "paper.png", 3, dark_on_white=True)
    code, _, err = run_cli(["run", "gradient", "--model", "python:salfw.testing:tiny_cnn?input_shape=1,28,28",
                            "--input", str(tmp_path / "paper.png"), "--out", str(tmp_path / "b")], capsys)
    assert code == 0 and "--invert" not in err  # nothing is known about what that model was trained on


def test_invert_in_compare_and_evaluate(tmp_path, capsys):
    _digit_png(tmp_path / "paper.png", 7, dark_on_white=True)
    code, out, err = run_cli(["compare", "gradient", "occlusion", "--input", str(tmp_path / "paper.png"),
                              "--invert", "--out", str(tmp_path / "c")], capsys)
    assert code == 0, err
    assert (tmp_path / "c" / "compare.png").exists() and "--invert" not in err
    images = load_samples()[0][:2].numpy()
    np.save(tmp_path / "paper.npy", 1.0 - images)
    code, out, err = run_cli(["evaluate", "--methods", "gradient", "--metrics", "deletion", "--data",
                              str(tmp_path / "paper.npy"), "--samples", "2", "--invert", "--out",
                              str(tmp_path / "e")], capsys)
    assert code == 0, err
    assert "2 rows of paper.npy, inverted" in err


def test_invert_flips_within_the_input_range(tmp_path):
    from salfw.cli.common import inverted

    model = salfw.load_model("python:salfw.testing:tiny_cnn?input_range=-1,1")
    x = torch.tensor([[[[-1.0, 0.25, 1.0]]]])
    assert torch.equal(inverted(x, model), torch.tensor([[[[1.0, -0.25, -1.0]]]]))


# -- ONNX with a fixed batch size -----------------------------------------------------------------
def _onnx_linear(tmp_path, dims, reshape_to_one=False):
    """A linear ONNX graph y = x w + b on 6 features whose input is declared with ``dims``;
    ``reshape_to_one``: a Reshape to batch 1 inside, behind a free batch dimension."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((6, 3)).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["h", "w", "b"], ["y"])]
    initializers = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
    if reshape_to_one:
        nodes.insert(0, helper.make_node("Reshape", ["x", "shape"], ["h"]))
        initializers.append(numpy_helper.from_array(np.array([1, 6], dtype=np.int64), "shape"))
    else:
        nodes.insert(0, helper.make_node("Identity", ["x"], ["h"]))
    graph = helper.make_graph(nodes, "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [dims[0], 3])],
                              initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / f"linear-{'-'.join(map(str, dims))}-{int(reshape_to_one)}.onnx"
    onnx.save(model, str(path))
    _onnx_linear.weights = (w, b)
    return path


@pytest.mark.parametrize("fixed", [1, 2])
def test_an_onnx_graph_with_a_fixed_batch_size_runs_on_any_batch(fixed, tmp_path):
    path = _onnx_linear(tmp_path, [fixed, 6])
    w, b = _onnx_linear.weights
    model = salfw.load_model(f"onnx:{path}")
    assert model.input_shape == (6,)  # the graph's fixed per-sample shape is declared
    x = torch.rand(5, 6)
    assert torch.allclose(model.scores(x), torch.from_numpy(x.numpy() @ w + b), atol=1e-5)
    e = salfw.explain("occlusion", model, x, window=(1,), stride=(1,), batch_size=4)
    expected = torch.from_numpy(w.T)[e.targets] * x  # dropping feature j to black (0) costs w_j x_j
    assert torch.allclose(e.attributions, expected, atol=1e-4)


def test_an_onnx_graph_that_only_takes_batch_one_is_run_one_input_at_a_time(tmp_path):
    path = _onnx_linear(tmp_path, ["N", 6], reshape_to_one=True)
    w, b = _onnx_linear.weights
    model = salfw.load_model(f"onnx:{path}")
    x = torch.rand(4, 6)
    with pytest.warns(UserWarning, match="refuses a batch of 4 inputs but takes one.*one input at a time"):
        scores = model.scores(x)
    assert torch.allclose(scores, torch.from_numpy(x.numpy() @ w + b), atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once
        assert torch.allclose(model.scores(x[:3]), scores[:3], atol=1e-6)


def test_an_onnx_error_that_is_not_the_batch_size_is_passed_on(tmp_path):
    path = _onnx_linear(tmp_path, ["N", 6])
    model = salfw.load_model(f"onnx:{path}")
    with pytest.raises(salfw.ModelError, match="failed on a batch of shape \\(2, 5\\).*INVALID_ARGUMENT"):
        model.scores(torch.rand(2, 5))
