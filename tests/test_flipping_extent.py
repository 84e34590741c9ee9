"""The Noise Covering thesis's ABPC: flipping stopped at ``max_fraction`` of the features and the
unnormalised sum of LeRF − MoRF, worked out by hand on a model whose curves are known."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import salfw
from salfw.core.api import evaluate_full
from salfw.evaluation.harness import run_comparison


def four_pixel_model() -> salfw.WhiteBox:
    """Logits ``(x₀ + 2x₁ + 3x₂ + 4x₃, 0)`` of a 2×2 image."""
    linear = nn.Linear(4, 2, bias=False).double()
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]]))
    return salfw.WhiteBox(nn.Sequential(nn.Flatten(), linear))


#: x = (0.9, 0.2, 0.6, 0.4): contributions w·x = (0.9, 0.4, 1.8, 1.6), logit 4.7. Most relevant first
#: the pixels go 2, 3, 0, 1; least relevant first 1, 0, 3, 2.
X = torch.tensor([[[[0.9, 0.2], [0.6, 0.4]]]], dtype=torch.float64)
MAP = torch.tensor([[[[0.9, 0.4], [1.8, 1.6]]]], dtype=torch.float64)
#: the target's logit after blackening 0-3 pixels (max_fraction ¾ stops before the fourth)
MORF = [4.7, 2.9, 1.3, 0.4]
LERF = [4.7, 4.3, 3.4, 1.8]
THESIS = {"perturbation": "black", "output": "logits", "max_fraction": 0.75, "steps": 3}


def test_max_fraction_stops_the_curves_early():
    """¾ of 4 pixels in 3 steps: one pixel per step, the fourth pixel is never removed."""
    model = four_pixel_model()
    morf, extras = evaluate_full("morf", model, X, MAP, random_order=False, **THESIS)
    torch.testing.assert_close(extras["curve"][0], torch.tensor(MORF, dtype=torch.float64))
    torch.testing.assert_close(extras["fractions"], torch.tensor([0.0, 0.25, 0.5, 0.75], dtype=torch.float64))
    assert morf.item() == pytest.approx(sum(4.7 - v for v in MORF) / 4, abs=1e-12)
    _, extras = evaluate_full("lerf", model, X, MAP, random_order=False, **THESIS)
    torch.testing.assert_close(extras["curve"][0], torch.tensor(LERF, dtype=torch.float64))


def test_unnormalised_abpc_is_the_sum_of_lerf_minus_morf():
    """LeRF − MoRF = (0, 1.4, 2.1, 1.4): the thesis's ABPC is their sum 4.9, the normalised one their
    mean 1.225."""
    model = four_pixel_model()
    total, extras = evaluate_full("abpc", model, X, MAP, unnormalised=True, **THESIS)
    assert total.item() == pytest.approx(4.9, abs=1e-12)
    torch.testing.assert_close(extras["lerf_curve"][0] - extras["morf_curve"][0],
                               torch.tensor([0.0, 1.4, 2.1, 1.4], dtype=torch.float64))
    mean = salfw.evaluate("abpc", model, X, MAP, **THESIS)
    assert mean.item() == pytest.approx(1.225, abs=1e-12)


def test_the_harness_never_derives_an_unnormalised_abpc_from_aopcs():
    """morf − lerf is the normalised ABPC only: with ``unnormalised`` (or another ``max_fraction``)
    the harness scores ABPC itself."""
    model = four_pixel_model()
    flip = dict(THESIS)
    result = run_comparison({"m": model}, ["gradient"], ["morf", "lerf", "abpc"], X, torch.tensor([0]),
                            metric_params={"morf": {**flip, "random_order": False},
                                           "lerf": {**flip, "random_order": False},
                                           "abpc": {**flip, "unnormalised": True}})
    abpc = next(r["mean"] for r in result.rows if r["metric"] == "abpc")
    gradient = salfw.explain("gradient", model, X, torch.tensor([0]))
    assert abpc == pytest.approx(salfw.evaluate("abpc", model, X, gradient, unnormalised=True, **THESIS).item())
    result = run_comparison({"m": model}, ["gradient"], ["morf", "lerf", "abpc"], X, torch.tensor([0]),
                            metric_params={"morf": {**flip, "random_order": False},
                                           "lerf": {**flip, "random_order": False},
                                           "abpc": {**flip, "max_fraction": 1.0}})
    abpc = next(r["mean"] for r in result.rows if r["metric"] == "abpc")
    full = {**THESIS, "max_fraction": 1.0}
    assert abpc == pytest.approx(salfw.evaluate("abpc", model, X, gradient, **full).item())
