"""The conformance suite's own contract (salfw.testing): a method that breaks a rule makes
``check_method`` raise AssertionError naming the check, whatever ``explain()`` raises first."""

import dataclasses

import numpy as np
import pytest
import torch

import salfw
from salfw.cli.main import main
from salfw.core import registry as reg
from salfw.core.contracts import Method
from salfw.core.params import param
from salfw.testing import IMAGE_SHAPE, check_method


class _Fake(Method):
    box = "black"
    kind = "additive"
    summary = "a deliberately bad method for the conformance suite's own tests"

    @dataclasses.dataclass(frozen=True)
    class Params:
        scale: float = param(1.0, "a factor")


class IntOutput(_Fake):
    name = "fake-int-output"

    def attribute(self, model, x, targets, ctx):
        return (x * 10).long()


class NanOutput(_Fake):
    name = "fake-nan-output"

    def attribute(self, model, x, targets, ctx):
        return torch.full_like(x, float("nan"))


class InfOutput(_Fake):
    name = "fake-inf-output"

    def attribute(self, model, x, targets, ctx):
        return x.masked_fill(x > 0.5, float("inf"))


class WeightsInPlace(_Fake):
    """Scales every weight in place by a factor too small to change any output noticeably."""

    name = "fake-weights-in-place"
    box = "white"

    def attribute(self, model, x, targets, ctx):
        with torch.no_grad():
            for p in model.module.parameters():
                p.mul_(1.0 + 1e-6)
        return x.clone()


class Transposed(_Fake):
    """Attributions with height and width swapped: right only for square images."""

    name = "fake-transposed"
    input_kinds = ("image",)

    def attribute(self, model, x, targets, ctx):
        return x.transpose(2, 3).contiguous()


class Raises(_Fake):
    name = "fake-raises"

    def attribute(self, model, x, targets, ctx):
        raise ZeroDivisionError("a plugin bug")


class Fine(_Fake):
    """Input times a factor: satisfies every check (the control)."""

    name = "fake-fine"

    def attribute(self, model, x, targets, ctx):
        return self.params.scale * x


@pytest.fixture
def registered(request):
    cls = request.param
    salfw.register(cls)
    yield cls
    salfw.unregister(cls.name)


@pytest.mark.parametrize("registered,check", [
    (IntOutput, "output"),
    (NanOutput, "output"),
    (InfOutput, "output"),
    (WeightsInPlace, "model-unchanged"),
    (Transposed, "output"),
    (Raises, "output"),
], indirect=["registered"], ids=lambda v: getattr(v, "name", v))
def test_a_bad_method_fails_with_an_assertion_naming_the_check(registered, check):
    with pytest.raises(AssertionError, match=rf"^{registered.name} \({check}\): "):
        check_method(registered.name, "image")


@pytest.mark.parametrize("registered", [IntOutput, NanOutput, WeightsInPlace, Raises], indirect=True,
                         ids=lambda v: v.name)
def test_vector_inputs_too(registered):
    with pytest.raises(AssertionError):
        check_method(registered.name, "vector")


@pytest.mark.parametrize("registered", [Fine], indirect=True, ids=lambda v: v.name)
def test_a_conforming_method_passes_on_both_kinds(registered):
    check_method(registered.name, "image")
    check_method(registered.name, "vector")


def test_the_suite_uses_non_square_images():
    assert IMAGE_SHAPE[1] != IMAGE_SHAPE[2]


# -- compare --all skips a broken method ------------------------------------------------------------
@pytest.fixture
def few_plugins(monkeypatch):
    """Only the gradient plugin's methods (fast) and the file loaders, plus the fakes registered in-process."""
    monkeypatch.setenv("SALFW_PLUGINS", "gradient,model-files")
    reg.reset_registry()
    yield
    reg.reset_registry()


def _compare(args, tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((1, *IMAGE_SHAPE)).astype(np.float32))
    code = 0
    try:
        main(["compare", *args, "--model", "python:salfw.testing:tiny_cnn", "--input", str(tmp_path / "x.npy"),
              "--no-progress", "--out", str(tmp_path / "out")])
    except SystemExit as exc:
        code = exc.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_compare_all_reports_and_skips_a_broken_method(few_plugins, tmp_path, capsys):
    salfw.register(Raises)
    salfw.register(Fine)
    code, out, err = _compare(["--all"], tmp_path, capsys)
    assert code == 0, err
    assert (tmp_path / "out" / "compare.png").exists()
    skipped = [line for line in err.splitlines() if line.startswith("skipped ")]
    assert skipped == ["skipped fake-raises: failed with ZeroDivisionError: a plugin bug (a bug in plugin "
                       f"'{reg.get_registry().table('method')['fake-raises'].plugin}'; report it to its authors)"]
    assert "Traceback" not in err


def test_compare_all_still_stops_on_the_users_own_mistakes(few_plugins, tmp_path, capsys):
    salfw.register(Raises)
    salfw.register(Fine)
    code, _, err = _compare(["--all", "--set", "fake-fine.scale=x"], tmp_path, capsys)
    assert code == 2 and err.startswith("error: ") and "scale" in err, err
    code, _, err = _compare(["--all", "--target", "3"], tmp_path, capsys)
    assert code == 2 and "target [3] out of range" in err and "skipped" not in err, err


def test_compare_all_with_every_method_broken_is_an_error(few_plugins, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("SALFW_PLUGINS", "model-files")
    reg.reset_registry()
    salfw.register(Raises)
    code, _, err = _compare(["--all"], tmp_path, capsys)
    assert code == 2 and "none of the chosen methods" in err and "fake-raises: failed with ZeroDivisionError" in err
