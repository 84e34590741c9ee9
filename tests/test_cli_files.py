"""Files and the command line: a bad --out, weights file, image, seed, target or input shape is one
line ``error: ...`` and a non-zero exit (no traceback), found before any method runs; 16-bit PNGs
are read at full precision."""

import dataclasses
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

import salfw
from salfw.cli.common import MAX_IMAGE_PIXELS, load_input
from salfw.cli.main import main
from salfw.core import registry as reg
from salfw.core.contracts import Method
from salfw.core.params import param
from salfw.testing import tiny_mlp


def run_cli(args, capsys):
    """Call the console entry point; return (exit code, stdout, stderr)."""
    code = 0
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def one_error_line(code, err):
    assert code != 0
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


class _MustNotRun(Method):
    """Fails loudly if it is ever asked to explain: a bad --out must be found before any work."""

    name = "must-not-run"
    box = "black"

    def attribute(self, model, x, targets, ctx):
        raise RuntimeError("the method ran before --out was checked")


@pytest.fixture
def must_not_run():
    reg.reset_registry()
    salfw.register(_MustNotRun)
    yield
    reg.reset_registry()


@pytest.fixture
def vector_input(tmp_path):
    np.save(tmp_path / "x.npy", np.full((1, 6), 0.5, dtype=np.float32))
    return tmp_path / "x.npy"


MLP = "python:salfw.testing:tiny_mlp"


def _out_commands(x):
    return {
        "run": ["run", "must-not-run", "--model", MLP, "--input", x],
        "compare": ["compare", "must-not-run", "--model", MLP, "--input", x],
        "evaluate": ["evaluate", "--methods", "must-not-run", "--metrics", "deletion", "--samples", "2",
                     "--model", MLP, "--data", x],
    }


# -- --out --------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["run", "compare", "evaluate"])
@pytest.mark.parametrize("where,words", [("file", "is a file, not a directory"),
                                         ("under-file", "which is a file"),
                                         ("proc", "cannot write")])
def test_a_bad_out_directory_is_refused_before_any_work(command, where, words, must_not_run, vector_input,
                                                        tmp_path, capsys):
    (tmp_path / "taken").write_text("a file, not a directory")
    if where == "proc" and not Path("/proc/self").is_dir():
        pytest.skip("needs /proc, a file system where nobody may create a directory")
    out = {"file": tmp_path / "taken", "under-file": tmp_path / "taken" / "sub",
           "proc": Path("/proc/salfw-cannot-write-here")}[where]
    code, _, err = run_cli([*_out_commands(vector_input)[command], "--out", out], capsys)
    line = one_error_line(code, err)
    assert "--out" in line and words in line, line
    assert (tmp_path / "taken").read_text() == "a file, not a directory"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write anywhere")
def test_a_read_only_out_directory_is_refused(must_not_run, vector_input, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code, _, err = run_cli([*_out_commands(vector_input)["run"], "--out", locked / "new"], capsys)
    finally:
        locked.chmod(0o700)
    line = one_error_line(code, err)
    assert "--out" in line and "cannot write" in line, line


def test_a_good_out_directory_is_created_and_nothing_is_left_behind_on_an_error(vector_input, tmp_path, capsys):
    out = tmp_path / "a" / "b"
    code, _, err = run_cli(["run", "gradient", "--model", MLP, "--input", vector_input, "--out", out], capsys)
    assert code == 0, err
    assert (out / "gradient.npy").exists()
    code, _, err = run_cli(["run", "no-such-method", "--model", MLP, "--input", vector_input,
                            "--out", tmp_path / "c"], capsys)
    assert "unknown method" in one_error_line(code, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "x.npy"]  # the check leaves no directory


# -- weights ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,content", [("empty.pt", b""), ("garbage.pt", b"garbage" * 20),
                                          ("empty.safetensors", b""), ("garbage.safetensors", b"\x08" + b"x" * 40)])
def test_an_empty_or_garbage_weights_file_is_one_line(name, content, vector_input, tmp_path, capsys):
    (tmp_path / name).write_bytes(content)
    code, _, err = run_cli(["run", "gradient", "--model", f"{MLP}@{tmp_path / name}", "--input", vector_input,
                            "--out", tmp_path / "out"], capsys)
    line = one_error_line(code, err)
    assert f"cannot load weights from {tmp_path / name}" in line and "state dict" in line, line
    if name == "empty.pt":
        assert "empty" in line


def test_weights_that_are_not_a_state_dict_are_refused(tmp_path):
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(salfw.ModelError, match="holds a Tensor, not a state dict"):
        salfw.load_model(f"{MLP}@{tmp_path / 'tensor.pt'}")


# -- images -------------------------------------------------------------------------------------
def _png_header_only(path, width, height):
    """A PNG whose header claims width x height 8-bit grey pixels (the data is a stub): all an
    image library reads before deciding whether to decode it."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("side", [
    30_000,                               # 900 Mpx: past Pillow's DecompressionBombError
    10_000,                               # 100 Mpx: past Pillow's DecompressionBombWarning
    int(MAX_IMAGE_PIXELS ** 0.5) + 1,     # just past salfw's own limit
])
def test_a_decompression_bomb_is_refused(side, tmp_path, capsys):
    bomb = _png_header_only(tmp_path / "bomb.png", side, side)
    code, _, err = run_cli(["run", "gradient", "--input", bomb, "--out", tmp_path / "out"], capsys)
    line = one_error_line(code, err)
    assert "bomb.png" in line and "too large" in line and f"{MAX_IMAGE_PIXELS:,}" in line, line
    assert "Warning" not in err


def _sixteen_bit_png(path, values):
    from PIL import Image

    Image.fromarray(np.asarray(values, dtype=np.uint16)).save(path)
    with Image.open(path) as img:
        assert img.mode.startswith("I")  # Pillow reads it as 16-bit
    return path


def test_sixteen_bit_png_keeps_its_precision(tmp_path):
    rng = np.random.default_rng(0)
    values = rng.integers(0, 65536, (8, 10)).astype(np.uint16)
    values[0, :2] = (1000, 1100)  # the same value at 8 bits
    path = _sixteen_bit_png(tmp_path / "deep.png", values)
    model = salfw.load_model("python:salfw.testing:tiny_cnn?input_shape=1,8,10")
    x = load_input(str(path), model)
    assert x.shape == (1, 1, 8, 10) and x.dtype == torch.float32
    assert torch.allclose(x[0, 0], torch.from_numpy(values.astype(np.float64) / 65535).float(), atol=1e-7)
    assert x[0, 0, 0, 0] < x[0, 0, 0, 1]
    ranged = salfw.load_model("python:salfw.testing:tiny_cnn?input_shape=1,8,10&input_range=-1,1")
    assert torch.allclose(load_input(str(path), ranged), 2 * x - 1, atol=1e-6)


def test_sixteen_bit_png_is_resized_and_replicated_at_full_precision(tmp_path, capsys):
    path = _sixteen_bit_png(tmp_path / "flat.png", np.full((16, 20), 1234))
    model = salfw.load_model("python:salfw.testing:tiny_cnn?input_shape=3,8,10")
    x = load_input(str(path), model)
    assert "resized flat.png from 20x16 to the model's 10x8" in capsys.readouterr().err
    assert x.shape == (1, 3, 8, 10)
    assert torch.allclose(x, torch.full_like(x, 1234 / 65535), atol=1e-7)


def test_eight_bit_png_reads_as_before(tmp_path):
    from PIL import Image

    values = np.random.default_rng(1).integers(0, 256, (8, 10)).astype(np.uint8)
    Image.fromarray(values).save(tmp_path / "grey.png")
    x = load_input(str(tmp_path / "grey.png"), salfw.load_model("python:salfw.testing:tiny_cnn?input_shape=1,8,10"))
    assert torch.equal(x[0, 0], torch.from_numpy(values.astype(np.float32) / 255.0))


# -- seeds, targets, input shapes -----------------------------------------------------------------
@pytest.mark.parametrize("flag,value,words", [
    ("--seed", 2 ** 64, "--seed"),
    ("--seed", 2 ** 63, "--seed"),
    ("--seed", -1, "--seed"),
    ("--target", 2 ** 64, "out of range"),
    ("--target", -(2 ** 70), "out of range"),
])
def test_seed_and_target_outside_int64_are_one_line(flag, value, words, vector_input, tmp_path, capsys):
    code, _, err = run_cli(["run", "lime", "--model", MLP, "--input", vector_input, flag, value,
                            "--set", "samples=8", "--out", tmp_path / "out"], capsys)
    assert words in one_error_line(code, err)


def test_seed_and_target_range_in_the_api():
    model = salfw.WhiteBox(tiny_mlp())
    x = torch.rand(2, 6)
    for seed in (2 ** 63, -1, 10 ** 30):
        with pytest.raises(salfw.ParameterError, match="seed must be an int in 0"):
            salfw.explain("gradient", model, x, seed=seed)
    with pytest.raises(salfw.TargetError, match="out of range"):
        salfw.explain("gradient", model, x, target=2 ** 64)
    e = salfw.explain("lime", model, x, seed=2 ** 63 - 1, samples=8)  # the largest seed works
    assert torch.isfinite(e.attributions).all()


@pytest.mark.parametrize("model,shape", [(MLP, (1, 7)), ("python:salfw.testing:tiny_cnn", (1, 6)),
                                         ("python:salfw.testing:tiny_cnn", (1, 3, 8, 8))])
def test_an_input_the_python_model_cannot_take_is_one_line(model, shape, tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.full(shape, 0.5, dtype=np.float32))
    code, _, err = run_cli(["run", "gradient", "--model", model, "--input", tmp_path / "x.npy",
                            "--out", tmp_path / "out"], capsys)
    line = one_error_line(code, err)
    assert "x.npy" in line and str(tuple(shape[1:])) in line and "input_shape" in line, line
    assert not (tmp_path / "out").exists()


def test_a_sample_digit_for_a_vector_model_is_one_line(tmp_path, capsys):
    code, _, err = run_cli(["compare", "gradient", "--model", MLP, "--out", tmp_path / "out"], capsys)
    line = one_error_line(code, err)
    assert "sample 0" in line and "(1, 28, 28)" in line, line


class _Refuses(Method):
    """Raises a SalfwError whose message has no text on its first line, or none at all."""

    name = "refuses-oddly"
    box = "black"

    @dataclasses.dataclass(frozen=True)
    class Params:
        message: str = param("", "the error's message, '|' for a line break")

    def attribute(self, model, x, targets, ctx):
        raise salfw.InputError(self.params.message.replace("|", "\n"))


@pytest.mark.parametrize("message,shown", [("", "error: InputError"), ("||  the reason|more", "error: the reason"),
                                           ("|", "error: InputError")])
def test_the_error_line_is_never_empty(message, shown, tmp_path, capsys):
    reg.reset_registry()
    salfw.register(_Refuses)
    try:
        code, _, err = run_cli(["run", "refuses-oddly", "--set", f"message={message}", "--out", tmp_path], capsys)
    finally:
        reg.reset_registry()
    assert one_error_line(code, err) == shown
