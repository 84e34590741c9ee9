"""Tabular inputs (issue 13, item 5): feature names on the adapters, carried into the explanation,
its ``as_list()`` ranking and its bar chart; input ranges given per feature, honoured by the
perturbations' fills and by gradient, integrated gradients, occlusion, LIME and KernelSHAP (closed
forms on a linear model: each feature's attribution is ``w_j (x_j - low_j)``), and refused by the
methods and metrics that do not handle them. Images keep their two-number range."""

import copy
import json
import pickle

import numpy as np
import pytest
import torch
from torch import nn

import salfw
from salfw.core.api import make_perturbation
from salfw.core.ranges import FeatureRange, range_ends
from salfw.core.render import BAR_FEATURES, bars_figure

NAMES = ("smoker", "age", "income")
LOWS, HIGHS = np.array([0.0, 18.0, 0.0]), np.array([1.0, 90.0, 200.0])
W = torch.tensor([[0.5, -0.02, 0.01], [-0.5, 0.03, -0.004]])
B = torch.tensor([0.1, -0.2])


def linear() -> nn.Linear:
    net = nn.Linear(3, 2)
    with torch.no_grad():
        net.weight.copy_(W)
        net.bias.copy_(B)
    return net


def tabular(**kwargs) -> salfw.WhiteBox:
    return salfw.WhiteBox(linear(), input_range=(LOWS, HIGHS), feature_names=NAMES, **kwargs)


X = torch.tensor([[1.0, 40.0, 150.0], [0.0, 70.0, 20.0], [1.0, 25.0, 90.0]])


def closed_form(x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """A linear model's attributions against the per-feature black baseline: w_t,j (x_j - low_j)."""
    return W[targets] * (x - torch.from_numpy(LOWS).float())


# -- the adapters ---------------------------------------------------------------------------------
def test_a_per_feature_range_is_two_numbers_to_code_that_reads_two():
    m = tabular()
    r = m.input_range
    assert isinstance(r, FeatureRange) and tuple(r) == (0.0, 200.0)  # min of the lows, max of the highs
    assert torch.equal(r.lows, torch.tensor(LOWS)) and torch.equal(r.highs, torch.tensor(HIGHS))
    assert pickle.loads(pickle.dumps(r)) == r and copy.deepcopy(r) == r
    assert r != (0.0, 200.0) and r != FeatureRange(r.lows, r.highs + 1)
    assert m.describe()["input_range"] == [LOWS.tolist(), HIGHS.tolist()]
    assert m.describe()["feature_names"] == list(NAMES)
    assert salfw.BlackBox(lambda x: x, input_range=(0, 1)).input_range == (0.0, 1.0)  # images: as before


@pytest.mark.parametrize("kwargs,words", [
    ({"input_range": ([0, 1], [1, 2, 3])}, "two sequences of D numbers"),
    ({"input_range": ([0, 5], [1, 2])}, "low < high for every feature; not so for feature(s) 1"),
    ({"input_range": ([0, np.nan], [1, 2])}, "finite"),
    ({"input_range": ([], [])}, "two sequences of D numbers"),
    ({"input_range": (LOWS, HIGHS), "feature_names": ["a", "b"]}, "input_range has 3, feature_names has 2"),
    ({"feature_names": ["a", "a", "b"]}, "repeated: a"),
    ({"feature_names": "abc"}, "sequence of strings"),
    ({"feature_names": ["a", "b"], "input_shape": (1, 2, 2)}, "for vector inputs"),
    ({"feature_names": ["a", "b"], "input_shape": (3,)}, "input_shape has 3"),
])
def test_bad_feature_settings_are_refused_when_the_adapter_is_built(kwargs, words):
    with pytest.raises(salfw.ParameterError, match=words.replace("(", r"\(").replace(")", r"\)")):
        salfw.BlackBox(lambda x: x, **kwargs)


def test_inputs_are_checked_against_each_features_range_and_count():
    m = tabular()
    with pytest.raises(salfw.InputError, match=r"1 feature\(s\): age spans \[10, 10\], its range is \(18, 90\)"):
        salfw.explain("gradient", m, torch.tensor([[1.0, 10.0, 150.0]]))
    with pytest.raises(salfw.InputError, match=r"describe 3 features.*vectors \(N, 3\); got shape \(1, 4\)"):
        salfw.explain("gradient", m, torch.zeros(1, 4))
    named = salfw.BlackBox(lambda x: x[:, :2], feature_names=["a", "b", "c"])
    with pytest.raises(salfw.InputError, match="feature_names describe 3 features"):
        salfw.explain("occlusion", named, torch.zeros(1, 1, 1, 3))


def test_invert_uses_each_features_own_ends():
    m = salfw.WhiteBox(nn.Identity(), input_range=(LOWS, HIGHS), invert=True)
    assert torch.allclose(m.forward(X), torch.from_numpy(LOWS + HIGHS).float() - X)


# -- perturbations --------------------------------------------------------------------------------
def _fill(name, x, **settings):
    gen = torch.Generator().manual_seed(0)
    return make_perturbation(name, **settings).fill(x, FeatureRange(torch.tensor(LOWS), torch.tensor(HIGHS)),
                                                    gen).expand_as(x)


def test_fills_use_each_features_ends():
    lows, highs = torch.from_numpy(LOWS).float(), torch.from_numpy(HIGHS).float()
    assert torch.equal(_fill("black", X), lows.expand_as(X))
    assert torch.equal(_fill("white", X), highs.expand_as(X))
    assert torch.allclose(_fill("inverse", X), lows + highs - X)
    assert torch.equal(_fill("constant", X, value=30.0), torch.tensor([1.0, 30.0, 30.0]).expand_as(X))
    many = torch.zeros(2000, 3) + lows
    noise = _fill("uniform-noise", many[:1]).expand(1, 3)
    assert ((noise >= lows) & (noise <= highs)).all()
    draws = torch.stack([make_perturbation("uniform-noise").fill(many[:1], FeatureRange(torch.tensor(LOWS),
                         torch.tensor(HIGHS)), torch.Generator().manual_seed(s))[0] for s in range(400)])
    assert torch.allclose(draws.mean(0), (lows + highs) / 2, rtol=0.1)  # each feature over its own range
    assert torch.allclose(draws.std(0), (highs - lows) / 12 ** 0.5, rtol=0.15)
    noisy = _fill("gaussian-noise", X, sigma=0.5)
    assert ((noisy >= lows) & (noisy <= highs)).all() and not torch.equal(noisy, X)


@pytest.mark.parametrize("name", ["blur", "mean"])
def test_fills_that_average_over_features_refuse_a_per_feature_range(name):
    with pytest.raises(salfw.ParameterError, match=f"'{name}' fill averages a vector over its features"):
        _fill(name, X)


def test_image_fills_are_unchanged():
    x = torch.rand(2, 1, 4, 5)
    assert _fill_plain("black", x).dim() == 0 and _fill_plain("black", x).item() == -1.0
    assert torch.equal(_fill_plain("inverse", x), 1.0 - x)


def _fill_plain(name, x):
    return make_perturbation(name).fill(x, (-1.0, 2.0), None)


def test_range_ends_broadcast_per_feature():
    lo, hi = range_ends(FeatureRange(torch.tensor(LOWS), torch.tensor(HIGHS)), X.double())
    assert lo.shape == (1, 3) and lo.dtype == torch.float64 and hi[0, 1].item() == 90.0
    assert range_ends((0.0, 1.0), X) == (0.0, 1.0)


# -- methods with per-feature ranges: closed forms on a linear model --------------------------------
def test_gradient_and_integrated_gradients_with_per_feature_ranges():
    m = tabular()
    e = salfw.explain("gradient", m, X)
    assert torch.allclose(e.attributions, W[e.targets])
    ig = salfw.explain("integrated-gradients", m, X, steps=4)  # the black baseline is each feature's low
    assert torch.allclose(ig.attributions, closed_form(X, ig.targets), rtol=1e-4, atol=1e-5)


def test_occlusion_and_kernel_shap_with_per_feature_ranges():
    m = tabular()
    occ = salfw.explain("occlusion", m, X, window=(1,), stride=(1,))
    assert torch.allclose(occ.attributions, closed_form(X, occ.targets), rtol=1e-4, atol=1e-4)
    shap = salfw.explain("kernel-shap", m, X)
    assert all(shap.meta["exact"])
    assert torch.allclose(shap.attributions, closed_form(X, shap.targets), rtol=1e-4, atol=1e-4)


def test_lime_with_training_data_and_per_feature_ranges():
    rng = np.random.default_rng(0)
    data = rng.uniform(LOWS, HIGHS, (500, 3))
    e = salfw.explain("lime", tabular(), X[:1], training_data=data, samples=4000, kernel_width=100.0,
                      output="logits")
    # lime regresses on standardised features: for a linear model each weight is w_j * std_j
    expected = W[e.targets[0]].double() * torch.from_numpy(data.std(0))
    assert np.allclose(e.meta["weights"][0][0], expected.numpy(), rtol=0.05, atol=1e-3)
    assert [name for name, _ in e.as_list()] == [NAMES[j] for j in np.argsort(-np.abs(expected.numpy()))]


@pytest.mark.parametrize("method", ["smoothgrad", "rise", "deeplift"])
def test_methods_that_do_not_handle_per_feature_ranges_refuse_them(method):
    with pytest.raises(salfw.ModelRequirementError,
                       match=f"'{method}' does not handle an input_range given per feature; methods that do: "
                             f".*integrated-gradients.*kernel-shap, lime, occlusion"):
        salfw.explain(method, tabular(), X)


def test_metrics_refuse_per_feature_ranges_they_do_not_handle():
    m = tabular()
    e = salfw.explain("gradient", m, X)
    with pytest.raises(salfw.ModelRequirementError, match="metric 'deletion' does not handle an input_range"):
        salfw.evaluate("deletion", m, X, e)


# -- feature names, as_list and the bar chart ----------------------------------------------------
def test_feature_names_reach_as_list_json_and_the_bar_chart(tmp_path):
    m = tabular()
    e = salfw.explain("integrated-gradients", m, X, steps=4)
    assert e.feature_names == NAMES
    expected = closed_form(X, e.targets)
    for i in range(len(X)):
        ranked = e.as_list(i)
        order = np.argsort(-expected[i].abs().numpy(), kind="stable")
        assert [name for name, _ in ranked] == [NAMES[j] for j in order]
        assert np.allclose([v for _, v in ranked], expected[i, order].numpy(), rtol=1e-4, atol=1e-5)
    assert e.as_list(1, top=2) == e.as_list(1)[:2]
    written = e.save(tmp_path)
    assert json.loads((tmp_path / "integrated-gradients.json").read_text())["feature_names"] == list(NAMES)
    pngs = sorted(p.name for p in written if p.suffix == ".png")
    assert pngs == [f"integrated-gradients-{i}.png" for i in range(3)]  # no heatmap overlay for vectors
    labels = [t.get_text() for t in bars_figure(e, 0).axes[0].get_yticklabels()]
    top = [f"{name} = {X[0, NAMES.index(name)].item():.4g}" for name, _ in e.as_list(0)]
    assert labels == top[::-1]  # the largest bar on top


def test_the_bar_chart_without_names_shows_the_largest_features_by_index(tmp_path):
    d = BAR_FEATURES + 5
    w = torch.linspace(-1, 1, d)
    model = salfw.BlackBox(lambda x: torch.stack([x @ w, -(x @ w)], dim=1), input_range=(0, 1))
    e = salfw.explain("occlusion", model, torch.ones(1, d), window=(1,), stride=(1,))
    assert e.feature_names is None and isinstance(e.as_list()[0][0], int)
    axes = bars_figure(e, 0).axes[0]
    assert len(axes.get_yticklabels()) == BAR_FEATURES
    assert f"the {BAR_FEATURES} largest of {d} features" in axes.get_title()
    (written,) = [p for p in e.save(tmp_path) if p.suffix == ".png"]  # vectors had no picture before
    from PIL import Image

    with Image.open(written) as img:
        assert img.size == (640, round(100 * (0.8 + 0.28 * BAR_FEATURES)))


def test_as_list_ranks_the_pixels_of_an_image():
    hm = torch.zeros(1, 2, 3, 4)
    hm[0, 0, 1, 2], hm[0, 1, 1, 2], hm[0, 0, 2, 0] = 2.0, 1.0, -5.0
    e = salfw.core.explanation.Explanation(hm, torch.tensor([0]), "m", "additive", {}, {})
    assert e.as_list(top=2) == [((2, 0), -5.0), ((1, 2), 3.0)]  # channels summed, |value| first
    assert len(e.as_list()) == 12
    for bad in ({"index": 1}, {"index": 0.5}, {"top": 0}, {"top": True}):
        with pytest.raises(salfw.InputError, match="as_list"):
            e.as_list(**bad)
