"""Closed forms that need no peer library: the deletion and insertion areas on a model whose
curve is known, the integrated-gradients quadrature rules, the z⁺ rule's bias and negative-input
handling, and LIME's kernel. Each value is worked out by hand (or from the definition) here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import salfw
from salfw.core.api import evaluate_full
from salfw.plugins.integrated_gradients import RULES, quadrature
from salfw.plugins.lime import cosine_to_ones, lime_kernel


# -- deletion and insertion: the area under a known curve ---------------------------------------
def four_pixel_model() -> salfw.WhiteBox:
    """Logits ``(x₀ + 2x₁ + 3x₂ + 4x₃, 0)`` of a 2×2 image."""
    linear = nn.Linear(4, 2, bias=False).double()
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]]))
    return salfw.WhiteBox(nn.Sequential(nn.Flatten(), linear))


#: x = (0.9, 0.2, 0.6, 0.4): contributions w·x = (0.9, 0.4, 1.8, 1.6), logit 4.7, explained exactly by
#: the map w·x, whose most-relevant-first order is pixel 2, 3, 0, 1.
X = torch.tensor([[[[0.9, 0.2], [0.6, 0.4]]]], dtype=torch.float64)
MAP = torch.tensor([[[[0.9, 0.4], [1.8, 1.6]]]], dtype=torch.float64)
#: the target's logit after deleting to black 0, 1, 2, 3, 4 pixels in that order, and after inserting them
DELETION_LOGITS = [4.7, 2.9, 1.3, 0.4, 0.0]
INSERTION_LOGITS = [0.0, 1.8, 3.4, 4.3, 4.7]


def trapezoid(values: list[float], width: float) -> float:
    """Σ of the trapezoids between successive points, ``width`` apart."""
    return sum((a + b) / 2 * width for a, b in zip(values[:-1], values[1:], strict=True))


@pytest.mark.parametrize("output", ["logits", "probabilities"])
def test_deletion_and_insertion_scores_are_the_trapezoid_areas_of_their_curves(output):
    """One pixel per step (steps = 4, the removed fraction 0, ¼, ½, ¾, 1): the deletion area on logits
    is ¼ (4.7/2 + 2.9 + 1.3 + 0.4 + 0/2) = 1.7375 and the insertion area ¼ (0/2 + 1.8 + 3.4 + 4.3 + 4.7/2)
    = 2.9625; the means of the curves (1.86 and 2.84) are not the areas. On probabilities the target's
    probability is σ(logit) (two classes, the other logit 0)."""
    model = four_pixel_model()
    curve_of = (lambda v: v) if output == "logits" else (lambda v: 1 / (1 + math.exp(-v)))
    deletion, extras = evaluate_full("deletion", model, X, MAP, steps=4, output=output)
    expected = [curve_of(v) for v in DELETION_LOGITS]
    torch.testing.assert_close(extras["curve"][0], torch.tensor(expected, dtype=torch.float64))
    assert deletion.item() == pytest.approx(trapezoid(expected, 0.25), abs=1e-12)
    if output == "logits":
        assert deletion.item() == pytest.approx(1.7375, abs=1e-12)
    insertion, extras = evaluate_full("insertion", model, X, MAP, steps=4, output=output, perturbation="black")
    expected = [curve_of(v) for v in INSERTION_LOGITS]
    torch.testing.assert_close(extras["curve"][0], torch.tensor(expected, dtype=torch.float64))
    assert insertion.item() == pytest.approx(trapezoid(expected, 0.25), abs=1e-12)
    if output == "logits":
        assert insertion.item() == pytest.approx(2.9625, abs=1e-12)


def test_deletion_area_with_two_pixels_per_step():
    """steps = 2: the curve has the points 0, 2 and 4 pixels deleted, 4.7, 1.3, 0, half a unit apart:
    ½ (4.7/2 + 1.3 + 0/2) = 1.825."""
    score, extras = evaluate_full("deletion", four_pixel_model(), X, MAP, steps=2, output="logits")
    torch.testing.assert_close(extras["curve"][0], torch.tensor([4.7, 1.3, 0.0], dtype=torch.float64))
    assert score.item() == pytest.approx(1.825, abs=1e-12)


# -- integrated gradients: the quadrature rules -------------------------------------------------
@pytest.mark.parametrize("steps", [1, 2, 3, 5, 8])
def test_gauss_legendre_integrates_polynomials_up_to_degree_2n_minus_1(steps):
    """n Gauss–Legendre points on [0, 1] integrate α^d exactly (1/(d + 1)) for d ≤ 2n − 1, and not
    α^{2n}: the rule's error (n!)⁴ / ((2n + 1) ((2n)!)³) · f^{(2n)} is (n!)⁴ / ((2n + 1) ((2n)!)²) there."""
    nodes, weights = quadrature("gauss-legendre", steps)
    assert len(nodes) == len(weights) == steps
    assert ((0 < nodes) & (nodes < 1)).all() and (weights > 0).all()
    for degree in range(2 * steps):
        assert (weights * nodes ** degree).sum() == pytest.approx(1 / (degree + 1), abs=1e-13), degree
    n = steps
    error = math.factorial(n) ** 4 / ((2 * n + 1) * math.factorial(2 * n) ** 2)
    assert 1 / (2 * n + 1) - (weights * nodes ** (2 * n)).sum() == pytest.approx(error, rel=1e-6)


@pytest.mark.parametrize("steps", [1, 2, 4, 7])
def test_riemann_rules_points_weights_and_errors(steps):
    """m equal weights 1/m at k/m (left), (k + 1)/m (right), (k + ½)/m (middle); the trapezoid's
    m points k/(m − 1) with weights 1/(m − 1), ends halved. All weights sum to 1 (constants are
    exact); ∫α = ½ is exact for middle and trapezoid, off by ∓1/(2m) for left and right; ∫α² = ⅓
    is off by −1/(12m²) for the middle rule and +1/(6(m − 1)²) for the trapezoid."""
    m = steps
    k = np.arange(m)
    for rule, points in (("riemann-left", k / m), ("riemann-right", (k + 1) / m), ("riemann-middle", (k + 0.5) / m)):
        nodes, weights = quadrature(rule, m)
        np.testing.assert_allclose(nodes, points, rtol=0, atol=1e-15)
        np.testing.assert_allclose(weights, np.full(m, 1 / m), rtol=0, atol=1e-15)
        assert weights.sum() == pytest.approx(1.0, abs=1e-14)
    linear = {rule: (quadrature(rule, m)[1] * quadrature(rule, m)[0]).sum() for rule in RULES
              if rule != "gauss-legendre" and (rule != "riemann-trapezoid" or m >= 2)}
    assert linear["riemann-left"] == pytest.approx(0.5 - 1 / (2 * m), abs=1e-14)
    assert linear["riemann-right"] == pytest.approx(0.5 + 1 / (2 * m), abs=1e-14)
    assert linear["riemann-middle"] == pytest.approx(0.5, abs=1e-14)
    nodes, weights = quadrature("riemann-middle", m)
    assert (weights * nodes ** 2).sum() == pytest.approx(1 / 3 - 1 / (12 * m ** 2), abs=1e-14)
    if m >= 2:
        nodes, weights = quadrature("riemann-trapezoid", m)
        np.testing.assert_allclose(nodes, k / (m - 1), rtol=0, atol=1e-15)
        expected = np.full(m, 1 / (m - 1))
        expected[[0, -1]] /= 2
        np.testing.assert_allclose(weights, expected, rtol=0, atol=1e-15)
        assert weights.sum() == pytest.approx(1.0, abs=1e-14)
        assert linear["riemann-trapezoid"] == pytest.approx(0.5, abs=1e-14)
        assert (weights * nodes ** 2).sum() == pytest.approx(1 / 3 + 1 / (6 * (m - 1) ** 2), abs=1e-14)


class Square(nn.Module):
    """Logits ``((w·x)², 0)``: along the path αx the gradient 2α (w·x) w is linear in α."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x):
        v = (x.flatten(1) @ self.w) ** 2
        return torch.stack([v, torch.zeros_like(v)], dim=1)


@pytest.mark.parametrize("rule", RULES)
def test_integrated_gradients_weights_the_path_by_its_quadrature(rule):
    """f = (w·x)², black baseline: IG_i = x_i · 2 w_i (w·x) · Σ_k w_k α_k, i.e. x_i w_i (w·x) times
    2 Σ_k w_k α_k: 1 for the rules exact on linear integrands, (m − 1)/m for left, (m + 1)/m for right."""
    w = torch.tensor([0.5, -1.0, 2.0, 1.5], dtype=torch.float64)
    x = torch.tensor([[0.2, 0.7, 0.4, 0.9]], dtype=torch.float64)
    m = 5
    e = salfw.explain("integrated-gradients", salfw.WhiteBox(Square(w)), x, target=0, steps=m, rule=rule)
    factor = {"riemann-left": (m - 1) / m, "riemann-right": (m + 1) / m}.get(rule, 1.0)
    torch.testing.assert_close(e.attributions, factor * x * w * (x @ w), rtol=1e-12, atol=1e-14)


# -- the z⁺ rule: the bias and negative inputs --------------------------------------------------
def one_layer():
    """A Linear(4, 2) whose output 0 has a positive bias and output 1 a negative one, behind an offset
    of −½, so the layer's inputs y = x − ½ are negative and positive."""
    layer = nn.Linear(4, 2).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.8, -0.5, 0.3, -1.2], [-0.4, 0.9, 0.6, 0.2]]))
        layer.bias.copy_(torch.tensor([0.7, -0.3]))
    return layer, salfw.WhiteBox(layer, offset=-0.5)


@pytest.mark.parametrize("target", [0, 1])
def test_z_plus_leaves_the_bias_out_and_handles_negative_inputs(target):
    """``z-plus``: R_j = (y⁺_j w⁺_j + y⁻_j w⁻_j) / Σ_j' (…) · z, the relevance z = y·w + b conserved
    whatever b; ``z-plus-bias`` (Zennit's ZPlus) adds b⁺ = max(b, 0) to the denominator only, so it
    equals z-plus for a negative bias and loses the share b⁺/(Σ + b⁺) for a positive one. Deep
    Taylor's z⁺ (``first_rule="z-plus"``) is the bias-free one."""
    layer, model = one_layer()
    x = torch.tensor([[0.9, 0.1, 0.3, 0.8], [0.2, 0.6, 1.0, 0.0]], dtype=torch.float64)
    y = x - 0.5
    w, b = layer.weight[target].detach(), layer.bias[target].item()
    z = y @ w + b
    numerator = y.clamp(min=0) * w.clamp(min=0) + y.clamp(max=0) * w.clamp(max=0)
    assert (y < 0).any(1).all() and (y > 0).any(1).all()  # both signs reach the layer
    plus = numerator / numerator.sum(1, keepdim=True) * z[:, None]
    with_bias = numerator / (numerator.sum(1, keepdim=True) + max(b, 0.0)) * z[:, None]
    e = salfw.explain("lrp", model, x, target=target, rules="*=z-plus", stabilizer=0.0)
    torch.testing.assert_close(e.attributions, plus, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(e.attributions.sum(1), z, rtol=1e-12, atol=1e-14)
    d = salfw.explain("deep-taylor", model, x, target=target, first_rule="z-plus", stabilizer=0.0)
    torch.testing.assert_close(d.attributions, plus, rtol=1e-12, atol=1e-14)
    zb = salfw.explain("lrp", model, x, target=target, rules="*=z-plus-bias", stabilizer=0.0)
    torch.testing.assert_close(zb.attributions, with_bias, rtol=1e-12, atol=1e-14)
    absorbed = zb.meta["layers"][0]["absorbed"]
    expected = z * max(b, 0.0) / (numerator.sum(1) + max(b, 0.0))
    np.testing.assert_allclose(absorbed, expected.numpy(), rtol=1e-10, atol=1e-14)
    assert (b > 0) == (expected.abs() > 0).all().item()


def test_z_plus_stabiliser_keeps_a_unit_without_positive_input_finite():
    """A unit none of whose inputs contributes (all y_j w_j ≤ 0 by sign) has a zero denominator: the
    stabiliser makes the division 0/ε, so its relevance is dropped, never NaN."""
    layer = nn.Linear(2, 1, bias=True).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -1.0]]))
        layer.bias.fill_(3.0)
    x = torch.tensor([[0.0, 0.5]], dtype=torch.float64)  # y⁺w⁺ = 0 and y⁻w⁻ = 0: nothing positive
    e = salfw.explain("lrp", salfw.WhiteBox(layer), x, target=0, rules="*=z-plus")
    assert torch.equal(e.attributions, torch.zeros_like(x))
    assert e.meta["layers"][0]["absorbed"] == pytest.approx([2.5])


# -- LIME's kernel -----------------------------------------------------------------------------
def test_lime_kernel_and_cosine_distance_closed_forms():
    """lime's kernel sqrt(exp(−d²/w²)) = exp(−d²/(2w²)): 1 at d = 0, e^{−½} at d = w, e^{−2} at 2w.
    The cosine distance of a binary row with k of M ones to the all-ones row is 1 − sqrt(k/M); an
    all-zero row is at distance 1 (sklearn's convention)."""
    width = 0.25
    d = np.array([0.0, width, 2 * width, 0.1])
    np.testing.assert_allclose(lime_kernel(d, width), [1.0, math.exp(-0.5), math.exp(-2.0), math.exp(-0.08)],
                               rtol=1e-14)
    z = np.array([[1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=np.float64)
    np.testing.assert_allclose(cosine_to_ones(z), [0.0, 0.5, 1 - math.sqrt(0.5), 1.0], rtol=0, atol=1e-15)


def test_lime_image_surrogate_is_the_kernel_weighted_fit():
    """On images the surrogate is the least-squares fit (alpha = 0) weighted by lime's kernel with
    width 0.25 on the cosine distance to the all-kept sample (lime_image's defaults): refit here from
    the method's own samples with those weights, on a model that is not linear in the superpixels
    (its squared pixel sum), so that other weights would give other coefficients."""
    x = torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64) + 0.5

    def squared_sum(a: torch.Tensor) -> torch.Tensor:
        s = a.flatten(1).sum(1)
        return torch.stack([s ** 2, torch.zeros_like(s)], 1)

    model = salfw.BlackBox(squared_sum, input_range=(0.0, 2.0), output="logits", backend="torch")
    e = salfw.explain("lime", model, x, target=0, segmentation="grid", cell=2, perturbation="black",
                      output="logits", alpha=0.0, samples=40, seed=1)
    z = e.meta["samples"][0].astype(np.float64)
    segments = e.meta["segments"][0].numpy()
    sums = np.array([x[0, 0].numpy()[segments == s].sum() for s in range(z.shape[1])])
    y = (z @ sums) ** 2
    weights = np.exp(-(1 - np.sqrt(z.sum(1) / z.shape[1])) ** 2 / (2 * 0.25 ** 2))
    design = np.hstack([z, np.ones((len(z), 1))]) * np.sqrt(weights)[:, None]
    coef = np.linalg.lstsq(design, y * np.sqrt(weights), rcond=None)[0]
    np.testing.assert_allclose(e.meta["weights"][0][0], coef[:-1], rtol=1e-8, atol=1e-10)
    unweighted = np.linalg.lstsq(np.hstack([z, np.ones((len(z), 1))]), y, rcond=None)[0]
    assert np.abs(unweighted[:-1] - coef[:-1]).max() > 1e-3  # the kernel matters on this model


def test_lime_vector_kernel_width_defaults_to_three_quarters_root_d():
    """lime_tabular's default width 0.75 sqrt(D), on Euclidean distances of the scaled samples."""
    x = torch.tensor([[0.3, 0.8, 0.5, 0.1]], dtype=torch.float64)

    def bump(a: np.ndarray) -> np.ndarray:
        v = np.exp(-((a - 0.5) ** 2).sum(1))
        return np.stack([v, 1 - v], 1)

    model = salfw.BlackBox(bump, output="probabilities", backend="numpy")
    default = salfw.explain("lime", model, x, target=0, samples=200, seed=4).attributions
    explicit = salfw.explain("lime", model, x, target=0, samples=200, seed=4, kernel_width=0.75 * 2.0).attributions
    other = salfw.explain("lime", model, x, target=0, samples=200, seed=4, kernel_width=1.0).attributions
    torch.testing.assert_close(default, explicit, rtol=1e-12, atol=1e-14)
    assert (default - other).abs().max() > 1e-6
