"""Non-finite values are never silent (issue 15, item 3): model scores with NaN/inf, attribution
maps with NaN/inf, ±inf parameters, an infinite input range, occlusion windows that leave pixels
uncovered, metrics given NaN attributions and LIME on a model that returns NaN are all errors
that say what was wrong."""

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

import salfw
from salfw.cli.main import main
from salfw.core.contracts import Method
from salfw.core.params import param, parse_params
from salfw.testing import sample_batch, tiny_cnn, tiny_mlp


class NanFor(nn.Module):
    """The tiny network, with NaN (or inf) scores for the samples whose first feature is above
    ``above``, or (``where_black``) for the inputs holding a value <= 0 (a black fill, a draw
    below the range)."""

    def __init__(self, net: nn.Module, above: float = 2.0, value: float = float("nan"), where_black: bool = False):
        super().__init__()
        self.net, self.above, self.value, self.where_black = net, above, value, where_black

    def forward(self, x):
        out = self.net(x)
        flat = x.flatten(1)
        bad = (flat <= 0).any(1) if self.where_black else flat[:, 0] > self.above
        return torch.where(bad[:, None], torch.full_like(out, self.value), out)


# -- model outputs ---------------------------------------------------------------------------
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_scores_are_a_model_error_naming_the_samples(value):
    x = torch.full((4, 6), 0.2)
    x[1, 0] = x[3, 0] = 0.9
    model = salfw.WhiteBox(NanFor(tiny_mlp(), above=0.5, value=value))
    with pytest.raises(salfw.ModelError, match=r"NaN or infinite.* 1, 3 \(2 of 4\)"):
        salfw.explain("gradient", model, x)
    with pytest.raises(salfw.ModelError, match=r"1, 3"):
        model.forward(x)  # the differentiable path white-box methods use
    black = salfw.BlackBox(NanFor(tiny_mlp(), above=0.5, value=value))
    with pytest.raises(salfw.ModelError, match=r"1, 3"):
        salfw.explain("occlusion", black, x, window=(2,), stride=(2,))


def test_nonfinite_scores_are_named_by_their_row_across_chunks():
    x = torch.full((5, 6), 0.2)
    x[4, 0] = 0.9
    model = salfw.WhiteBox(NanFor(tiny_mlp(), above=0.5), batch_size=2)
    with pytest.raises(salfw.ModelError, match=r"sample\(s\) 4 \(1 of 5\)"):
        model.scores(x)


def test_numpy_black_box_returning_nan_is_refused():
    black = salfw.BlackBox(lambda b: np.where(b[:, :1] > 0.5, np.nan, b[:, :3]), backend="numpy")
    x = torch.full((3, 6), 0.2)
    x[2, 0] = 0.9
    with pytest.raises(salfw.ModelError, match=r"sample\(s\) 2"):
        black.scores(x)


@pytest.mark.parametrize("kind", ["image", "vector"])
def test_lime_on_a_model_returning_nan_is_a_clear_error(kind):
    net = tiny_cnn() if kind == "image" else tiny_mlp()
    model = salfw.BlackBox(NanFor(net, where_black=True), backend="torch")
    x = sample_batch(kind, 2)
    assert torch.isfinite(model.scores(x)).all()  # the inputs themselves score fine
    params = {"segmentation": "grid", "cell": 2, "samples": 16, "perturbation": "black"} if kind == "image" else {
        "samples": 16, "training_data": np.zeros((4, 6))}
    with pytest.raises(salfw.ModelError, match="NaN or infinite"):
        salfw.explain("lime", model, x, seed=0, **params)


# -- attribution maps ------------------------------------------------------------------------
class NanMap(Method):
    name = "nan-map-for-tests"
    box = "black"
    kind = "additive"
    summary = "NaN for the second sample"

    @dataclasses.dataclass(frozen=True)
    class Params:
        value: str = param("nan", "what the second sample's map holds", choices=("nan", "inf"))

    def attribute(self, model, x, targets, ctx):
        out = torch.zeros_like(x)
        if x.shape[0] > 1:
            out[1] = float(self.params.value)
        return out


@pytest.fixture
def nan_method():
    salfw.register(NanMap)
    yield NanMap.name
    salfw.unregister(NanMap)


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_nonfinite_attributions_are_an_error_in_explain(nan_method, value):
    model = salfw.WhiteBox(tiny_mlp())
    x = sample_batch("vector", 3)
    with pytest.raises(salfw.ModelError, match=rf"'{nan_method}' returned NaN or infinite attributions for "
                                              r"sample\(s\) 1 \(1 of 3\)"):
        salfw.explain(nan_method, model, x, value=value)
    assert torch.all(salfw.explain(nan_method, model, x[:1]).attributions == 0)


def test_metrics_refuse_nonfinite_attributions():
    model = salfw.WhiteBox(tiny_cnn())
    x = sample_batch("image", 2)
    a = torch.rand_like(x)
    a[1, 0, 3, 3] = float("nan")
    with pytest.raises(salfw.InputError, match=r"NaN or infinite.*sample\(s\) 1"):
        salfw.evaluate("deletion", model, x, a, target=0)


# -- parameters and ranges -------------------------------------------------------------------
def _declared() -> type:
    @dataclasses.dataclass(frozen=True)
    class Declared:
        rate: float = param(0.5, "rate", low=0.0)
        bound: float | None = param(None, "may be infinite", allow_inf=True)
        sizes: tuple[float, ...] = param((1.0,), "sizes")
    return Declared


@pytest.mark.parametrize("given", [{"rate": float("inf")}, {"rate": "inf"}, {"rate": np.float32("inf")},
                                   {"sizes": (1.0, float("-inf"))}, {"sizes": "1,-inf"}])
def test_float_parameters_reject_infinity(given):
    with pytest.raises(salfw.ParameterError, match="finite"):
        parse_params(_declared(), given)


def test_infinity_where_declared():
    assert parse_params(_declared(), {"bound": "inf"}).bound == float("inf")
    assert parse_params(_declared(), {"bound": float("-inf")}).bound == float("-inf")
    # lime's kernel width: infinite weighs every sample the same (an unweighted surrogate)
    model = salfw.WhiteBox(tiny_mlp())
    e = salfw.explain("lime", model, sample_batch("vector", 1), kernel_width=float("inf"), samples=32)
    assert torch.isfinite(e.attributions).all()
    with pytest.raises(salfw.ParameterError, match="finite"):
        salfw.explain("smoothgrad", model, sample_batch("vector", 1), noise_level=float("inf"))


@pytest.mark.parametrize("input_range", [(0.0, float("inf")), (-float("inf"), 1.0), (float("nan"), 1.0)])
def test_input_range_must_be_finite(input_range):
    with pytest.raises(salfw.ParameterError, match="input_range"):
        salfw.WhiteBox(tiny_mlp(), input_range=input_range)
    with pytest.raises(salfw.ParameterError, match="input_range"):
        salfw.BlackBox(tiny_mlp(), input_range=input_range)


# -- occlusion -------------------------------------------------------------------------------
@pytest.mark.parametrize("window,stride", [((2, 2), (3, 3)), ((2, 2), (2, 3)), ((2,), (3,))])
def test_occlusion_refuses_a_stride_that_leaves_pixels_uncovered(window, stride):
    model = salfw.WhiteBox(tiny_cnn())
    with pytest.raises(salfw.ParameterError, match=r"stride .* window"):
        salfw.explain("occlusion", model, sample_batch("image", 1), window=window, stride=stride)


def test_occlusion_with_stride_equal_to_window_covers_every_pixel():
    model = salfw.WhiteBox(tiny_cnn())
    e = salfw.explain("occlusion", model, sample_batch("image", 1), window=(3, 3), stride=(3, 3))
    assert torch.isfinite(e.attributions).all()


def test_occlusion_cli_with_an_uncovering_stride_exits_non_zero(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["run", "occlusion", "--sample", "0", "--set", "window=2,2", "--set", "stride=5,5",
              "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert info.value.code != 0 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert "stride" in err and "window" in err


def test_a_nan_first_call_does_not_decide_a_black_box_output_kind():
    net = tiny_mlp()
    black = salfw.BlackBox(lambda b: torch.softmax(net(b), 1) / (b[:, :1] > 0.5))  # inf where feature 0 <= 0.5
    with pytest.raises(salfw.ModelError):
        black.scores(torch.full((2, 6), 0.2))
    x = torch.full((2, 6), 0.8)
    assert torch.allclose(black.probabilities(x), torch.softmax(net(x), 1)) and black.output == "probabilities"
