"""Black-box perturbation family: occlusion, LIME, RISE, prediction difference, KernelSHAP.

Closed forms on linear and additive models, Captum's test cases ported
(BasicModel_MultiLayer, defined here as in captum/testing/helpers/basic_models.py),
seeding, NumPy callables against torch models, and the helpers' properties.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import salfw
from salfw.core.context import Context
from salfw.core.errors import ParameterError, UnknownNameError
from salfw.plugins.kernel_shap import all_coalitions, shapley_kernel
from salfw.plugins.lime import sample_coalitions
from salfw.plugins.rise import rise_masks
from salfw.sdk.hiding import Hider, evaluate_coalitions, limit_size, segment, superpixel_mean, weighted_ridge


class BasicModelMultiLayer(nn.Module):
    """Captum's BasicModel_MultiLayer (tests/helpers/basic_models.py): identity, then
    4 units of sum(x) + (-10, 1, 1, 1) through ReLU, then two outputs sum - 1 and sum + 1."""

    def __init__(self):
        super().__init__()
        self.linear0 = nn.Linear(3, 3)
        self.linear1 = nn.Linear(3, 4)
        self.linear2 = nn.Linear(4, 2)
        with torch.no_grad():
            self.linear0.weight.copy_(torch.eye(3))
            self.linear0.bias.zero_()
            self.linear1.weight.fill_(1.0)
            self.linear1.bias.copy_(torch.tensor([-10.0, 1.0, 1.0, 1.0]))
            self.linear2.weight.fill_(1.0)
            self.linear2.bias.copy_(torch.tensor([-1.0, 1.0]))

    def forward(self, x):
        return self.linear2(torch.relu(self.linear1(self.linear0(x))))


def captum_model():
    return salfw.WhiteBox(BasicModelMultiLayer(), input_range=(0.0, 255.0))


class Linear(nn.Module):
    """Scores w_k . flatten(x) for K classes (float64)."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight.double())

    def forward(self, x):
        return x.flatten(1) @ self.weight.T


def linear_image_model(seed=0, shape=(1, 6, 6), classes=3, input_range=(0.0, 1.0)):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(classes, math.prod(shape), generator=g, dtype=torch.float64)
    return salfw.WhiteBox(Linear(w), input_range=input_range), w


def rand(shape, seed=0, lo=0.0, hi=1.0):
    g = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand(shape, generator=g, dtype=torch.float64)


# -- occlusion ------------------------------------------------------------------------
@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 1000), lo=st.sampled_from([0.0, -1.0]))
def test_occlusion_1x1_black_on_linear_is_w_times_x_minus_baseline(seed, lo):
    model, w = linear_image_model(seed, input_range=(lo, 1.0))
    x = rand((2, 1, 6, 6), seed, lo, 1.0)
    e = salfw.explain("occlusion", model, x, target=1, window=(1, 1), stride=(1, 1))
    expected = (w[1].view(1, 1, 6, 6) * (x - lo))
    torch.testing.assert_close(e.attributions, expected, rtol=1e-9, atol=1e-9)


def test_occlusion_captum_cases():
    """Captum's test_occlusion.py: test_simple_input_larger_shape and ..._with_stride."""
    x = torch.tensor([[20.0, 50.0, 30.0]])
    e = salfw.explain("occlusion", captum_model(), x, target=0, window=(2,), stride=(1,),
                      perturbation={"name": "constant", "value": 10.0})
    torch.testing.assert_close(e.attributions, torch.tensor([[200.0, 220.0, 240.0]]))
    e = salfw.explain("occlusion", captum_model(), x, target=0, window=(2,), stride=(2,))
    torch.testing.assert_close(e.attributions, torch.tensor([[280.0, 280.0, 120.0]]))


def test_occlusion_window_average_on_linear_model():
    """A window's drop on a linear model is the sum of w x over it; a pixel gets the mean over its windows."""
    model, w = linear_image_model(3, shape=(1, 5, 5), classes=1)
    x = rand((1, 1, 5, 5), 3)
    e = salfw.explain("occlusion", model, x, target=0, window=(2, 2), stride=(1, 1))
    contrib = (w[0].view(5, 5) * x[0, 0])
    expected = torch.zeros(5, 5, dtype=torch.float64)
    count = torch.zeros(5, 5, dtype=torch.float64)
    for r in range(4):
        for c in range(4):
            expected[r:r + 2, c:c + 2] += contrib[r:r + 2, c:c + 2].sum()
            count[r:r + 2, c:c + 2] += 1
    torch.testing.assert_close(e.attributions[0, 0], expected / count)


def test_occlusion_refuses_superpixel_mean():
    """superpixel-mean needs superpixels: only lime and kernel-shap accept it besides the registered fills."""
    model, _ = linear_image_model()
    for name in ("occlusion", "rise"):
        with pytest.raises(UnknownNameError, match="unknown perturbation 'superpixel-mean'"):
            salfw.explain(name, model, rand((1, 1, 6, 6)), perturbation="superpixel-mean")


# -- KernelSHAP -----------------------------------------------------------------------
class Additive(nn.Module):
    """f(x) = sum_j a_j x_j^2 + b_j sin(3 x_j): additive, nonlinear per feature."""

    def __init__(self, d, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.a = nn.Parameter(torch.randn(d, generator=g, dtype=torch.float64))
        self.b = nn.Parameter(torch.randn(d, generator=g, dtype=torch.float64))

    def terms(self, x):
        return self.a * x ** 2 + self.b * torch.sin(3 * x)

    def forward(self, x):
        return self.terms(x).sum(1, keepdim=True)


@pytest.mark.parametrize("d,samples", [(6, None), (10, 300)])
def test_kernel_shap_additive_model_exact_and_sampled(d, samples):
    """On an additive model the Shapley value of feature j is g_j(x_j) - g_j(baseline_j)."""
    net = Additive(d, seed=d)
    model = salfw.WhiteBox(net, input_range=(-1.0, 1.0))
    x = rand((2, d), d, -1.0, 1.0)
    baseline = rand((d,), d + 1, -1.0, 1.0)
    e = salfw.explain("kernel-shap", model, x, target=0, baseline=baseline, samples=samples)
    assert e.meta["exact"] == [samples is None] * 2
    expected = (net.terms(x) - net.terms(baseline[None])).detach()
    torch.testing.assert_close(e.attributions, expected, rtol=1e-7, atol=1e-7)


def test_kernel_shap_superpixels_on_linear_model():
    """Superpixel Shapley values of a linear model with black hiding: the sum of w (x - lo) per superpixel."""
    model, w = linear_image_model(5, shape=(1, 8, 8), classes=2)
    x = rand((1, 1, 8, 8), 5)
    for samples in (None, 12):  # 4 superpixels: exact enumeration, then sampled (pairs)
        e = salfw.explain("kernel-shap", model, x, target=1, segmentation="grid", cell=4, samples=samples)
        contrib = (w[1].view(8, 8) * x[0, 0]).view(2, 4, 2, 4).sum((1, 3))
        expected = contrib.repeat_interleave(4, 0).repeat_interleave(4, 1)
        torch.testing.assert_close(e.attributions[0, 0], expected, rtol=1e-7, atol=1e-7)


def test_kernel_shap_captum_cases():
    """Captum's test_kernel_shap.py: test_simple_kernel_shap and test_linear_kernel_shap
    (exact Shapley values of BasicModel_MultiLayer)."""
    x = torch.tensor([[20.0, 50.0, 30.0]])
    e = salfw.explain("kernel-shap", captum_model(), x, target=0)
    torch.testing.assert_close(e.attributions, torch.tensor([[76.66666, 196.66666, 116.66666]]))
    e = salfw.explain("kernel-shap", captum_model(), x, target=0, baseline=[[10.0, 20.0, 10.0]])
    torch.testing.assert_close(e.attributions, torch.tensor([[40.0, 120.0, 80.0]]))


def test_kernel_shap_baseline_resolves_like_every_reference():
    """``baseline`` goes through salfw.sdk.reference: a number, a perturbation name or a batch of
    references give the same values as the equivalent fill or per-input baselines."""
    x = torch.tensor([[20.0, 50.0, 30.0], [5.0, 60.0, 90.0]])
    black = salfw.explain("kernel-shap", captum_model(), x, target=0).attributions
    for spec in (0.0, "black"):
        torch.testing.assert_close(salfw.explain("kernel-shap", captum_model(), x, target=0,
                                                 baseline=spec).attributions, black)
    per_input = torch.tensor([[10.0, 20.0, 10.0], [0.0, 0.0, 0.0]])
    both = salfw.explain("kernel-shap", captum_model(), x, target=0, baseline=per_input).attributions
    torch.testing.assert_close(both[0], torch.tensor([40.0, 120.0, 80.0]))
    torch.testing.assert_close(both[1], black[1])


def test_shapley_kernel_weights_match_the_formula():
    m = 5
    z = all_coalitions(m)
    assert z.shape == (2 ** m - 2, m)
    sizes = z.sum(1)
    expected = [(m - 1) / (math.comb(m, int(s)) * s * (m - s)) for s in sizes]
    np.testing.assert_allclose(shapley_kernel(m, sizes), expected)


def test_kernel_shap_rejects_a_misshaped_baseline():
    with pytest.raises(ParameterError, match="baseline"):
        salfw.explain("kernel-shap", captum_model(), torch.tensor([[1.0, 2.0, 3.0]]), baseline=[1.0, 2.0])


# -- LIME -----------------------------------------------------------------------------
def test_lime_recovers_a_linear_models_superpixel_weights():
    """Hiding with black on a linear model makes f(h(z)) = sum_j z_j c_j exactly, c_j the sum
    of w x over superpixel j: the surrogate (alpha=0) recovers c_j, intercept 0, R^2 = 1."""
    model, w = linear_image_model(7, shape=(1, 8, 8), classes=2)
    x = rand((1, 1, 8, 8), 7)
    fn = lambda a: (a.reshape(a.shape[0], -1).astype(np.float64) @ w.numpy().T)  # noqa: E731
    black_box = salfw.BlackBox(fn, input_range=(0.0, 1.0), output="logits")
    e = salfw.explain("lime", black_box, x.float(), target=0, segmentation="grid", cell=2, alpha=0.0,
                      perturbation="black", output="logits", samples=300, kernel_width=1.0)
    contrib = (w[0].view(8, 8) * x[0, 0]).view(4, 2, 4, 2).sum((1, 3)).reshape(-1)
    np.testing.assert_allclose(e.meta["weights"][0][0], contrib.numpy(), rtol=1e-4, atol=1e-4)
    assert abs(e.meta["intercept"][0][0]) < 1e-4
    assert e.meta["score"][0][0] > 1 - 1e-6
    heat = contrib.view(4, 4).repeat_interleave(2, 0).repeat_interleave(2, 1).float()
    torch.testing.assert_close(e.attributions[0, 0], heat, rtol=1e-4, atol=1e-4)


def test_lime_top_labels_masks_and_meta():
    model, w = linear_image_model(2, shape=(1, 8, 8), classes=4)
    x = rand((2, 1, 8, 8), 2)
    e = salfw.explain("lime", model, x, segmentation="grid", cell=2, top_labels=3, samples=200,
                      perturbation="inverse", mask_features=4)
    for n in range(2):
        labels = e.meta["labels"][n]
        assert labels[0] == e.targets[n].item() and len(set(labels)) == 3
        assert e.meta["weights"][n].shape == (3, 16)
        assert e.meta["samples"][n].shape == (200, 16) and e.meta["samples"][n][0].all()
    assert not (e.meta["evidence_for"] & e.meta["evidence_against"]).any()
    # 4 superpixels of 4 pixels at most in the two masks together
    assert ((e.meta["evidence_for"] | e.meta["evidence_against"]).sum((1, 2)) <= 16).all()
    assert (e.attributions[e.meta["evidence_for"][:, None]] > 0).all()


def test_lime_tabular_recovers_linear_coefficients_times_std():
    """Vectors: samples N(mean, std^2) scaled to (v - mean) / std; a linear model's surrogate
    coefficients are w * std (lime_tabular without discretisation)."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(2, 4, generator=g, dtype=torch.float64)
    train = torch.rand(500, 4, generator=g, dtype=torch.float64) * torch.tensor([1.0, 0.5, 0.2, 1.0],
                                                                                dtype=torch.float64)
    model = salfw.WhiteBox(Linear(w))
    x = rand((2, 4), 1)
    e = salfw.explain("lime", model, x, target=1, training_data=train, output="logits", alpha=0.0,
                      samples=400)
    expected = (w[1] * train.std(0, unbiased=False)).expand(2, 4)
    torch.testing.assert_close(e.attributions, expected, rtol=1e-6, atol=1e-6)


def test_lime_tabular_discretized_marks_a_decisive_feature():
    """A model that says whether feature 0 lies in its top training quartile: with the quartile
    discretisation the model is the surrogate's indicator of feature 0 itself, so an unpenalised
    fit gives weight 1 to feature 0 and 0 to the others."""
    train = rand((400, 3), 4)
    q3 = float(np.quantile(train[:, 0].numpy(), 0.75))
    fn = lambda a: np.stack([(a[:, 0] > q3), (a[:, 0] <= q3)], 1).astype(np.float64)  # noqa: E731
    model = salfw.BlackBox(fn, output="probabilities")
    x = torch.tensor([[0.9, 0.1, 0.5]], dtype=torch.float64)
    e = salfw.explain("lime", model, x, target=0, training_data=train, discretize=True, samples=500,
                      alpha=0.0)
    torch.testing.assert_close(e.attributions[0], torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64),
                               rtol=1e-8, atol=1e-8)


def test_lime_superpixel_mean_fill():
    x = rand((1, 6, 6), 9)
    labels = torch.from_numpy(segment(x, "grid", cell=3))
    hider = Hider(x, labels, "superpixel-mean", (0.0, 1.0), None)
    out = hider(torch.tensor([[0.0, 1.0, 1.0, 0.0]]))[0]
    torch.testing.assert_close(out[:, :3, :3], x[:, :3, :3].mean().expand(1, 3, 3))
    torch.testing.assert_close(out[:, :3, 3:], x[:, :3, 3:])
    torch.testing.assert_close(superpixel_mean(x, labels, 4)[:, 3:, 3:], x[:, 3:, 3:].mean().expand(1, 3, 3))


def test_evaluate_coalitions_follows_the_contexts_batches():
    """The hider's inputs are built and evaluated ``ctx.batch_size`` at a time; the chunking
    changes nothing, and the model counts every input into the active context."""
    model, w = linear_image_model(1, shape=(1, 6, 6), classes=2)
    x = rand((1, 6, 6), 1)
    labels = torch.from_numpy(segment(x, "grid", cell=3))
    z = torch.from_numpy(np.random.default_rng(0).integers(0, 2, (11, 4)))
    hider = Hider(x, labels, "superpixel-mean", (0.0, 1.0), None)
    expected = hider(z).flatten(1) @ w.T
    for size in (3, 11, None):
        ctx = Context(batch_size=size)
        with ctx.activated():
            values = evaluate_coalitions(model, hider, z, torch.tensor([1, 0]), "logits", ctx)
        torch.testing.assert_close(values, expected[:, [1, 0]])
        assert ctx.forward_passes == 11


def test_weighted_ridge_matches_sklearn():
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(0)
    X = rng.integers(0, 2, (60, 7)).astype(float)
    Y = rng.standard_normal((60, 2))
    wts = rng.random(60)
    coef, intercept, score = weighted_ridge(X, Y, wts, 1.0)
    for t in range(2):
        ref = Ridge(alpha=1.0).fit(X, Y[:, t], sample_weight=wts)
        np.testing.assert_allclose(coef[t], ref.coef_, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(intercept[t], ref.intercept_, rtol=1e-10)
        np.testing.assert_allclose(score[t], ref.score(X, Y[:, t], sample_weight=wts), rtol=1e-10)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), m=st.integers(1, 40), frac=st.floats(0.0, 1.0))
def test_sample_coalitions_respect_the_change_fraction(seed, m, frac):
    z = sample_coalitions(np.random.default_rng(seed), 50, m, frac)
    assert z.shape == (50, m) and z[0].all()
    assert ((m - z.sum(1)) <= math.floor(frac * m + 1e-9)).all()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), max_size=st.integers(1, 30))
def test_limit_size_refines_and_bounds_superpixels(seed, max_size):
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 3, (4, 4)).repeat(3, 0).repeat(3, 1)  # blocks of 9 pixels, 3 labels
    fine = limit_size(coarse, max_size)
    assert np.bincount(fine.ravel()).max() <= max_size
    assert set(np.unique(fine)) == set(range(fine.max() + 1))
    for label in np.unique(fine):  # each piece lies inside one original superpixel
        assert len(np.unique(coarse[fine == label])) == 1


def test_segmentations_and_max_size_single_pixels():
    x = rand((1, 12, 12), 3).float()
    for method in ("quickshift", "slic", "felzenszwalb", "grid"):
        labels = segment(x, method)
        assert labels.shape == (12, 12) and labels.min() == 0
    assert segment(x, "quickshift", max_size=1).max() == 143


# -- RISE -----------------------------------------------------------------------------
def test_rise_masks_are_smooth_and_keep_p():
    masks = rise_masks(2000, (28, 28), 7, 0.3, torch.Generator().manual_seed(0), torch.float64,
                       torch.device("cpu"))
    assert masks.shape == (2000, 1, 28, 28)
    assert masks.min() >= 0 and masks.max() <= 1
    assert abs(masks.mean().item() - 0.3) < 0.02
    assert len(torch.unique(masks[0])) > 2  # bilinear, not binary


def test_rise_constant_probability_gives_constant_saliency():
    """f_c = constant q: S = q * sum_i M_i / (N p), whose mean over pixels is q (up to sampling)."""
    fn = lambda a: np.tile([[0.25, 0.75]], (a.shape[0], 1))  # noqa: E731
    model = salfw.BlackBox(fn, output="probabilities")
    e = salfw.explain("rise", model, rand((1, 1, 14, 14)).float(), target=1, samples=2000, grid=4)
    assert abs(e.attributions.mean().item() - 0.75) < 0.03


def test_rise_finds_the_pixel_a_model_looks_at():
    """The probability of class 0 grows with pixel (2, 3) alone: its saliency is the largest there."""
    def fn(a):
        v = a[:, 0, 2, 3]
        return np.stack([v, 1 - v], 1)

    model = salfw.BlackBox(fn, output="probabilities")
    x = torch.ones(1, 1, 12, 12)
    e = salfw.explain("rise", model, x, target=0, samples=1000, grid=6)
    assert int(e.attributions[0, 0].argmax()) // 12 in (1, 2, 3)
    assert abs(int(e.attributions[0, 0].argmax()) % 12 - 3) <= 1


# -- prediction difference ------------------------------------------------------------
def test_prediction_difference_is_zero_where_the_model_does_not_look():
    """A model whose probabilities depend only on the top-left 3 x 3 corner: windows elsewhere
    change nothing, so their weight of evidence is exactly 0."""
    def fn(a):
        v = a[:, 0, :3, :3].mean((1, 2))
        return np.stack([v, 1 - v], 1)

    model = salfw.BlackBox(fn, output="probabilities")
    x = rand((1, 1, 10, 10), 1).float()
    e = salfw.explain("prediction-difference", model, x, target=0, window=2, samples=4)
    a = e.attributions[0, 0]
    assert torch.all(a[5:, :] == 0) and torch.all(a[:, 5:] == 0)
    assert a[:3, :3].abs().min() > 0


def test_prediction_difference_weight_of_evidence_formula():
    """One feature, baseline data with a single row: p(c|x\\i) is the model at that row, and
    WE = log2 odds(p) - log2 odds(p') after the Laplace correction."""
    fn = lambda a: np.stack([a[:, 0] * 0.8 + 0.1, 0.9 - a[:, 0] * 0.8], 1)  # noqa: E731
    model = salfw.BlackBox(fn, output="probabilities")
    x = torch.tensor([[0.9, 0.5]])
    ref = torch.tensor([[0.2, 0.3]])
    e = salfw.explain("prediction-difference", model, x, target=0, window=1, baseline=ref,
                      training_size=100, samples=3)
    lap = lambda p: (p * 100 + 1) / (100 + 2)  # noqa: E731
    odds = lambda p: math.log2(lap(p) / (1 - lap(p)))  # noqa: E731
    expected = odds(0.9 * 0.8 + 0.1) - odds(0.2 * 0.8 + 0.1)
    torch.testing.assert_close(e.attributions, torch.tensor([[expected, 0.0]]), rtol=1e-5, atol=1e-6)


# -- shared properties ----------------------------------------------------------------
SETTINGS = {
    "occlusion": {"window": (3, 3), "stride": (2, 2)},
    "lime": {"segmentation": "grid", "cell": 3, "samples": 100, "perturbation": "uniform-noise"},
    "rise": {"samples": 200, "grid": 3, "perturbation": "blur", "perturbation.sigma": 1.0},
    "prediction-difference": {"window": 3, "samples": 3},
    "kernel-shap": {"segmentation": "grid", "cell": 3, "samples": 40, "perturbation": "superpixel-mean"},
}


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 3))


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_numpy_callable_matches_the_torch_model_and_seed_fixes_the_result(name):
    net = small_cnn()
    white = salfw.WhiteBox(net)
    black = salfw.BlackBox(lambda a: net(torch.from_numpy(a)).detach().numpy(), output="logits")
    x = rand((2, 1, 12, 12), 5).float()
    a = salfw.explain(name, white, x, target=[0, 2], seed=3, **SETTINGS[name]).attributions
    b = salfw.explain(name, black, x, target=[0, 2], seed=3, **SETTINGS[name]).attributions
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    again = salfw.explain(name, black, x, target=[0, 2], seed=3, **SETTINGS[name]).attributions
    assert torch.equal(b, again)
    if name != "occlusion":  # occlusion with a random fill draws it; here the fill is deterministic
        other = salfw.explain(name, black, x, target=[0, 2], seed=4, **SETTINGS[name]).attributions
        assert not torch.equal(b, other)


def test_bad_perturbation_settings_are_clear_errors():
    model, _ = linear_image_model()
    x = rand((1, 1, 6, 6))
    with pytest.raises(ParameterError, match="'perturbation' names a perturbation"):
        salfw.explain("rise", model, x, perturbation=2.0)
    with pytest.raises(salfw.core.errors.UnknownNameError):
        salfw.explain("lime", model, x, perturbation="smudge", segmentation="grid")
    with pytest.raises(ParameterError, match="sigma"):
        salfw.explain("kernel-shap", model, x, segmentation="grid",
                      **{"perturbation": "blur", "perturbation.sigma": -1.0})
    with pytest.raises(ParameterError, match="'superpixel-mean' of method 'lime' takes no settings"):
        salfw.explain("lime", model, x, segmentation="grid", perturbation={"name": "superpixel-mean", "sigma": 1})
    with pytest.raises(ParameterError, match="unknown parameter.*perturbation_params"):
        salfw.explain("occlusion", model, x, perturbation="blur", perturbation_params={"sigma": 1.0})


def test_the_old_names_are_refused_with_the_new_ones():
    model, _ = linear_image_model()
    x = rand((1, 1, 6, 6))
    cases = [("lime", {"num_samples": 10}, "'num_samples' is called 'samples'"),
             ("kernel-shap", {"num_samples": 10}, "'num_samples' is called 'samples'"),
             ("rise", {"num_masks": 10}, "'num_masks' is called 'samples'"),
             ("prediction-difference", {"num_samples": 2}, "'num_samples' is called 'samples'"),
             ("prediction-difference", {"reference": x}, "'reference' is called 'baseline'"),
             ("occlusion", {"output": "scores"}, "'scores' is called 'logits'")]
    for name, old, hint in cases:
        with pytest.raises(ParameterError, match=hint):
            salfw.explain(name, model, x, **old)


def test_nested_perturbation_settings_equal_the_dict_form():
    model, _ = linear_image_model(2)
    x = rand((1, 1, 6, 6), 2)
    dotted = salfw.explain("occlusion", model, x, window=(2, 2), **{"perturbation": "blur", "perturbation.sigma": 2})
    as_dict = salfw.explain("occlusion", model, x, window=(2, 2), perturbation={"name": "blur", "sigma": 2.0})
    assert torch.equal(dotted.attributions, as_dict.attributions)
    assert dotted.params["perturbation"] == {"name": "blur", "sigma": 2.0}


def test_lime_max_superpixel_size_reaches_single_pixels():
    model, w = linear_image_model(4, shape=(1, 6, 6), classes=2)
    x = rand((1, 1, 6, 6), 4)
    e = salfw.explain("lime", model, x, segmentation="quickshift", max_superpixel_size=1, samples=50,
                      perturbation="black")
    assert int(e.meta["segments"][0].max()) == 35
    assert e.meta["weights"][0].shape == (1, 36)
