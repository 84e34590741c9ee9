"""Agreement with the peer libraries: Captum's Occlusion and the lime library.

What can be matched: Captum's Occlusion is deterministic, so it agrees in float64 (to 1e-6
relative: Captum's result carries rounding at the 1e-8 level even with float64 inputs).
Captum's KernelShap draws coalitions with replacement and fits them unweighted, so it only
approaches the Shapley values; its test expectations (exact Shapley values of its
BasicModel_MultiLayer) are ported in test_perturbation_methods.py instead. lime draws its
samples from its own RandomState; we hand it our binary samples (a stand-in random state
returns them from ``randint``), with our segmentation and the same hiding (each superpixel's
mean, lime's ``hide_color=None``), so everything downstream -- hiding, classifier calls,
cosine distances, kernel, ``Ridge(alpha=1)`` with sample weights and its R^2 -- is lime's own
and must match ours.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import salfw

captum = pytest.importorskip("captum")


@pytest.fixture
def float64_default():
    """Captum's occlusion accumulates in the default dtype: make it float64 for an exact comparison."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def cnn64():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(4 * 7 * 7, 5)).double()


@pytest.mark.parametrize("window,stride,baseline", [((3, 3), (2, 2), 0.0), ((4, 2), (3, 1), 0.3),
                                                    ((1, 1), (1, 1), 1.0)])
def test_occlusion_matches_captum(window, stride, baseline, float64_default):
    from captum.attr import Occlusion

    net = cnn64()
    x = torch.rand(3, 1, 14, 14, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 3, 4])
    ours = salfw.explain("occlusion", salfw.WhiteBox(net), x, target=targets, window=window, stride=stride,
                         perturbation={"name": "constant", "value": baseline}).attributions
    theirs = Occlusion(net).attribute(x, sliding_window_shapes=(1, *window), strides=(1, *stride),
                                      baselines=torch.full_like(x, baseline), target=targets,
                                      perturbations_per_eval=64)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-9)


def test_occlusion_on_vectors_matches_captum(float64_default):
    from captum.attr import Occlusion

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(7, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x = torch.rand(4, 7, dtype=torch.float64)
    ours = salfw.explain("occlusion", salfw.WhiteBox(net), x, target=2, window=(3,), stride=(2,)).attributions
    theirs = Occlusion(net).attribute(x, sliding_window_shapes=(3,), strides=2, baselines=torch.zeros_like(x), target=2)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-9)


class _GivenSamples:
    """Stands in for lime's RandomState: ``randint(0, 2, n)`` returns our samples."""

    def __init__(self, samples: np.ndarray):
        self.samples = samples

    def randint(self, low, high=None, size=None):
        if size is None:
            return 0
        return self.samples.reshape(-1).copy()


def test_lime_image_matches_the_lime_library_given_the_same_samples():
    lime_image = pytest.importorskip("lime.lime_image")

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16 * 16, 4)).double()
    x = torch.rand(1, 1, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    ours = salfw.explain("lime", salfw.WhiteBox(net), x, target=2, segmentation="grid", cell=4,
                         samples=300, top_labels=2)
    segments = ours.meta["segments"][0].numpy()
    labels = ours.meta["labels"][0]

    def classifier(images):
        batch = torch.from_numpy(np.ascontiguousarray(images[..., :1].transpose(0, 3, 1, 2))).double()
        return torch.softmax(net(batch), 1).detach().numpy()

    explainer = lime_image.LimeImageExplainer(random_state=0)
    explainer.random_state = _GivenSamples(ours.meta["samples"][0].astype(np.int64))
    explainer.base.random_state = np.random.RandomState(0)
    exp = explainer.explain_instance(x[0, 0].numpy(), classifier, labels=labels, top_labels=None,
                                     hide_color=None, num_samples=300, segmentation_fn=lambda img: segments,
                                     batch_size=100)
    for row, label in enumerate(labels):
        theirs = np.zeros(segments.max() + 1)
        for feature, weight in exp.local_exp[label]:
            theirs[feature] = weight
        np.testing.assert_allclose(ours.meta["weights"][0][row], theirs, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(ours.meta["intercept"][0][row], exp.intercept[label], rtol=1e-6)
    # lime keeps the score of the last label it explains
    np.testing.assert_allclose(ours.meta["score"][0][-1], exp.score, rtol=1e-6)
