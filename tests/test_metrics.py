"""Each metric on constructed cases with a known value (salfw.evaluation.metrics)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import salfw
from salfw.core.api import evaluate_full, make_metric
from salfw.core.errors import InputError
from salfw.core.guard import model_fingerprint, same_fingerprint
from salfw.core.registry import get_registry, plugin_namespace
from salfw.evaluation.metrics.flipping import feature_scores, removal_ranks
from salfw.evaluation.metrics.image import ssim

SIZE = 12


def linear_model(seed: int = 0, features: int = SIZE * SIZE, classes: int = 3) -> salfw.WhiteBox:
    torch.manual_seed(seed)
    module = nn.Sequential(nn.Flatten(), nn.Linear(features, classes)).double()
    return salfw.WhiteBox(module, input_shape=(1, SIZE, SIZE))


def small_cnn(seed: int = 0) -> salfw.WhiteBox:
    torch.manual_seed(seed)
    module = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, padding=1),
                           nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))
    return salfw.WhiteBox(module)


def images(n: int = 6, seed: int = 1, dtype=torch.float64) -> torch.Tensor:
    return torch.rand(n, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def perfect(model: salfw.WhiteBox, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """w_target * (x - 0): the exact decomposition of a linear model's logit against black."""
    w = model.module[1].weight[targets]
    return (w * x.flatten(1)).view_as(x)


# -- completeness and sensitivity-n on a linear model -----------------------------------
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_linear_perfect_attribution_is_complete_and_sensitive(seed):
    model = linear_model(seed)
    x = images(4, seed + 1)
    targets = torch.tensor([0, 1, 2, 0])
    a = perfect(model, x, targets)
    assert salfw.evaluate("completeness", model, x, a, target=targets).abs().max() < 1e-9
    corr = salfw.evaluate("sensitivity-n", model, x, a, target=targets, n=10, samples=20)
    assert torch.allclose(corr, torch.ones_like(corr), atol=1e-9)


def test_wrong_attribution_has_completeness_error():
    model = linear_model()
    x = images(3)
    targets = torch.tensor([0, 1, 2])
    a = perfect(model, x, targets)
    error = salfw.evaluate("completeness", model, x, 2 * a, target=targets)
    assert torch.allclose(error, a.flatten(1).sum(1).abs())


def test_gradient_of_linear_model_has_zero_infidelity_and_sensitivity():
    model = linear_model()
    x = images(3)
    e = salfw.explain("gradient", model, x)
    assert salfw.evaluate("infidelity", model, x, e, optimal_scale=False).abs().max() < 1e-9
    assert salfw.evaluate("max-sensitivity", model, x, e).abs().max() < 1e-9


# -- flipping -----------------------------------------------------------------------
def test_random_map_aopc_matches_random_order_baseline():
    model = small_cnn()
    x = images(40, dtype=torch.float32)
    a = torch.rand(x.shape, generator=torch.Generator().manual_seed(5))
    values, extras = evaluate_full("morf", model, x, a, steps=20)
    baseline = extras["random_aopc"]
    difference = (values - baseline).mean()
    noise = (values - baseline).std() / np.sqrt(len(values))
    assert abs(difference) < 3 * noise + 1e-3


def test_good_map_beats_random_order_on_linear_model():
    model = linear_model()
    x = images(8)
    targets = torch.zeros(8, dtype=torch.long)
    a = perfect(model, x, targets)
    values, extras = evaluate_full("morf", model, x, a, target=targets, steps=24, output="logits")
    assert (values > extras["random_aopc"]).all()
    lerf = salfw.evaluate("lerf", model, x, a, target=targets, steps=24, output="logits")
    assert (lerf < values).all()


def test_abpc_is_morf_minus_lerf():
    model = small_cnn()
    x = images(5, dtype=torch.float32)
    a = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    abpc = salfw.evaluate("abpc", model, x, a, steps=10)
    morf = salfw.evaluate("morf", model, x, a, steps=10, random_order=False)
    lerf = salfw.evaluate("lerf", model, x, a, steps=10, random_order=False)
    assert torch.allclose(abpc, morf - lerf, atol=1e-6)


def test_flip_curve_endpoints():
    """Deletion starts at f(x) and ends at f(black); insertion starts at f(canvas) and ends at f(x)."""
    model = small_cnn()
    x = images(3, dtype=torch.float32)
    a = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    p = model.probabilities(x).max(dim=1)
    _, deletion = evaluate_full("deletion", model, x, a, steps=7)
    assert torch.allclose(deletion["curve"][:, 0], p.values, atol=1e-6)
    black = model.probabilities(torch.zeros_like(x)).gather(1, p.indices[:, None])[:, 0]
    assert torch.allclose(deletion["curve"][:, -1], black, atol=1e-6)
    _, insertion = evaluate_full("insertion", model, x, a, steps=7, perturbation="black")
    assert torch.allclose(insertion["curve"][:, 0], black, atol=1e-6)
    assert torch.allclose(insertion["curve"][:, -1], p.values, atol=1e-6)


def test_patches_rank_regions_by_mean():
    a = torch.zeros(1, 1, 5, 5)
    a[0, 0, 4, 4] = 1.0  # the bottom-right region (a 1 x 1 remainder) is the most relevant
    scores, pixel_feature = feature_scores(a, 2)
    assert scores.shape == (1, 9) and pixel_feature.shape == (25,)
    ranks = removal_ranks(scores, "morf", torch.Generator().manual_seed(0))
    assert ranks[0, 8] == 0


# -- image metrics ------------------------------------------------------------------
def test_png_size_ordering():
    model = small_cnn()
    x = images(3, dtype=torch.float32)
    uniform = torch.ones(3, 1, SIZE, SIZE)
    one_hot = torch.zeros(3, 1, SIZE, SIZE)
    one_hot[:, 0, 3, 7] = 1.0
    noise = torch.rand(3, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    sizes = [salfw.evaluate("png-size", model, x, m) for m in (uniform, one_hot, noise)]
    # flat and one-hot maps compress to a few dozen bytes, a noisy map does not
    assert (torch.maximum(sizes[0], sizes[1]) < 0.5 * sizes[2]).all()
    assert (sizes[0] <= sizes[1] + 2).all()


def test_ssim_of_input_is_one_and_matches_scikit_image():
    from skimage.metrics import structural_similarity

    model = small_cnn()
    x = images(4, dtype=torch.float32)
    x[:, 0, 0, 0] = 1.0  # the map |x| / max|x| is then x itself
    assert torch.allclose(salfw.evaluate("ssim", model, x, x), torch.ones(4), atol=1e-6)
    a = torch.rand(4, SIZE, SIZE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    b = torch.rand(4, SIZE, SIZE, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ours = ssim(a, b)
    for i in range(4):
        ref = structural_similarity(a[i].numpy(), b[i].numpy(), gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, data_range=1.0)
        assert abs(ours[i].item() - ref) < 1e-10
    one_hot = torch.zeros(4, 1, SIZE, SIZE)
    one_hot[:, 0, 0, 0] = 1.0
    assert (salfw.evaluate("ssim", model, x, one_hot) < 0.5).all()


# -- pointing game ------------------------------------------------------------------
def test_pointing_game_hit_miss_and_tolerance():
    model = small_cnn()
    x = images(2, dtype=torch.float32)
    a = torch.zeros(2, 1, SIZE, SIZE)
    a[0, 0, 2, 2] = 1.0  # inside the mask
    a[1, 0, 6, 3] = 1.0  # 3 pixels below it
    mask = torch.zeros(2, SIZE, SIZE, dtype=torch.bool)
    mask[:, 1:4, 1:4] = True
    hits, _ = evaluate_full("pointing-game", model, x, a, torch.zeros(2, dtype=torch.long), mask=mask, tolerance=0)
    assert hits.tolist() == [1.0, 0.0]
    far, _ = evaluate_full("pointing-game", model, x, a, torch.zeros(2, dtype=torch.long), mask=mask, tolerance=3)
    assert far.tolist() == [1.0, 1.0]
    near, _ = evaluate_full("pointing-game", model, x, a, torch.zeros(2, dtype=torch.long), mask=mask, tolerance=2)
    assert near.tolist() == [1.0, 0.0]
    with pytest.raises(InputError):
        salfw.evaluate("pointing-game", model, x, a)


# -- randomisation ------------------------------------------------------------------
def test_randomization_keeps_model_and_separates_dependent_maps():
    model = linear_model()
    x = images(3)
    before = model_fingerprint(model.module)
    e = salfw.explain("gradient", model, x)
    score, extras = evaluate_full("randomization", model, x, e)
    assert same_fingerprint(before, model_fingerprint(model.module))
    assert score.abs().max() < 0.5  # random weights, a new gradient
    assert extras["layers"] == ["1"] and extras["cascading_spearman"].shape == (3, 1)


class InputMap(salfw.core.contracts.Method):
    """A map that ignores the network: the input itself (an edge-detector-like control)."""
    name = "test-input-map"
    box = "white"

    def attribute(self, model, x, targets, seed):
        return x.clone()


def test_model_independent_map_survives_randomization():
    registry = get_registry()
    registry.register_plugin(plugin_namespace(salfw_register_methods=lambda register: register(InputMap)),
                             "test-input-map")
    try:
        model = small_cnn()
        x = images(3, dtype=torch.float32)
        e = salfw.explain("test-input-map", model, x)
        score = salfw.evaluate("randomization", model, x, e, independent=False)
        assert torch.allclose(score, torch.ones(3), atol=1e-6)
    finally:
        registry.unregister_plugin("test-input-map")


def test_runtime_reads_the_explanation():
    model = linear_model()
    x = images(4)
    e = salfw.explain("gradient", model, x)
    seconds, extras = evaluate_full("runtime", model, x, e)
    assert torch.allclose(seconds, torch.full((4,), e.meta["seconds"] / 4, dtype=seconds.dtype))
    assert extras["backward_passes"][0].item() == pytest.approx(e.meta["backward_passes"] / 4)


# -- batch equals samples -----------------------------------------------------------
BATCH_CASES = {
    "morf": {"steps": 6}, "lerf": {"steps": 6, "patch": 3}, "abpc": {"steps": 6}, "deletion": {"steps": 6},
    "insertion": {"steps": 6}, "png-size": {}, "ssim": {}, "completeness": {},
    "sensitivity-n": {"n": 5, "samples": 8}, "infidelity": {"samples": 6}, "max-sensitivity": {"samples": 3},
    "randomization": {"independent": False}, "pointing-game": {},
}


@pytest.mark.parametrize("metric", sorted(BATCH_CASES))
def test_batch_equals_samples(metric):
    model = small_cnn()
    x = images(3, dtype=torch.float32)
    e = salfw.explain("gradient", model, x)
    targets = e.targets
    mask = x[:, 0] > 0.5

    def run(sl):
        sub = salfw.Explanation(e.attributions[sl], targets[sl], e.method, e.kind, e.params, e.meta, x[sl])
        return evaluate_full(metric, model, x[sl], sub, targets[sl], seed=3, mask=mask[sl], **BATCH_CASES[metric])[0]

    whole = run(slice(None))
    parts = torch.cat([run(slice(i, i + 1)) for i in range(3)])
    assert whole.shape == (3,)
    assert torch.allclose(whole, parts, rtol=1e-4, atol=1e-5)


def test_every_registered_builtin_metric_is_covered():
    builtin = {name for name, entry in get_registry().table("metric").items() if entry.plugin == "metrics"}
    assert builtin == set(BATCH_CASES) | {"runtime"}


def test_unknown_metric_parameter_is_an_error():
    with pytest.raises(salfw.ParameterError):
        make_metric("morf", stepz=3)


# -- the shared vocabulary ----------------------------------------------------------
def test_metric_settings_use_the_shared_names():
    with pytest.raises(salfw.ParameterError, match="'probability' is called 'probabilities'"):
        make_metric("morf", output="probability")
    with pytest.raises(salfw.ParameterError, match="'logit' is called 'logits'"):
        make_metric("completeness", output="logit")
    with pytest.raises(salfw.ParameterError, match="'normalize' is called 'normalise'"):
        make_metric("ssim", normalize="min-max")
    with pytest.raises(salfw.ParameterError, match="accepted: .*optimal_scale"):
        make_metric("infidelity", normalize=False)  # a yes/no choice, not the shared normalise


def test_completeness_baseline_is_any_reference():
    """The baseline resolves like every method's: a perturbation name, a number or a tensor."""
    model = linear_model()
    x = images(3)
    targets = torch.tensor([0, 1, 2])
    a = perfect(model, x, targets)
    for baseline in ("black", 0.0, torch.zeros(1, SIZE, SIZE, dtype=torch.float64)):
        assert salfw.evaluate("completeness", model, x, a, target=targets, baseline=baseline).abs().max() < 1e-9
    shifted = salfw.evaluate("completeness", model, x, a, target=targets, baseline=0.5)
    assert shifted.abs().min() > 1e-6  # w * (x - 0) does not decompose f(x) - f(0.5)
    with pytest.raises(salfw.ParameterError, match="baseline"):
        salfw.evaluate("completeness", model, x, a, target=targets, baseline="nothing-like-this")


def test_flipping_perturbation_settings_are_nested_and_validated():
    model = small_cnn()
    x = images(3, dtype=torch.float32)
    a = torch.randn(x.shape, generator=torch.Generator().manual_seed(4))
    _, wide = evaluate_full("insertion", model, x, a, steps=4)
    _, sharp = evaluate_full("insertion", model, x, a, steps=4, **{"perturbation.sigma": 1})
    assert not torch.allclose(wide["curve"][:, 0], sharp["curve"][:, 0])  # a different canvas
    assert torch.allclose(wide["curve"][:, -1], sharp["curve"][:, -1])  # both end at the input
    with pytest.raises(salfw.ParameterError, match="sigma"):
        make_metric("insertion", **{"perturbation.sigma": "wide"})


def test_png_size_without_normalisation_reads_the_map_as_given():
    model = small_cnn()
    x = images(2, dtype=torch.float32)
    maps = torch.rand(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(6))
    maps[:, 0, 0, 0] = 1.0  # in [0, 1] with a maximum of 1: abs-max changes nothing
    assert torch.equal(salfw.evaluate("png-size", model, x, maps, normalise="none"),
                       salfw.evaluate("png-size", model, x, maps))
    clipped = salfw.evaluate("png-size", model, x, 4 * maps, normalise="none")  # mostly clipped to 1
    assert (clipped < salfw.evaluate("png-size", model, x, 4 * maps)).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("metric", ["morf", "insertion", "completeness", "sensitivity-n", "infidelity",
                                    "max-sensitivity", "randomization"])
def test_random_metrics_score_alike_on_cpu_and_cuda(metric):
    """Every random draw comes from the call's CPU generator: the same seed scores the same on CUDA."""
    params = {**BATCH_CASES.get(metric, {}), **({"baseline": "uniform-noise"} if metric == "completeness" else {})}
    scores = []
    for device in ("cpu", "cuda"):
        model = salfw.WhiteBox(small_cnn().module.to(device))
        x = images(3, dtype=torch.float32).to(device)
        e = salfw.explain("gradient", model, x)
        scores.append(evaluate_full(metric, model, x, e, e.targets, seed=5, **params)[0].cpu())
    assert torch.allclose(scores[0], scores[1], rtol=1e-3, atol=1e-4), (metric, scores)
