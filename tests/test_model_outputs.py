"""Model outputs (issue 15, item 4): a model returning a tuple, a dict or an object with
``.logits`` is used through the adapters' explicit ``select=`` or refused with one line that
says how; (N, K, 1) scores are refused with a hint; ``BlackBox(backend="auto")`` reports both
failed tries; wrong ``mean``/``std`` lengths are refused when the adapter is built (or, with no
``input_shape``, at the first call), never as a raw convolution error."""

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

import salfw
from salfw.testing import sample_batch, tiny_cnn, tiny_mlp


@dataclasses.dataclass
class Output:  # like a Hugging Face ModelOutput: an object with .logits
    logits: torch.Tensor
    hidden: torch.Tensor


class Several(nn.Module):
    """The tiny network's logits packed as ``kind``: a tuple, a list, a dict or an object."""

    def __init__(self, net: nn.Module, kind: str):
        super().__init__()
        self.net, self.kind = net, kind

    def forward(self, x):
        logits = self.net(x)
        aux = logits.detach() * 0
        if self.kind == "tuple":
            return logits, aux
        if self.kind == "list":
            return [aux, logits]
        if self.kind == "dict":
            return {"aux": aux, "logits": logits}
        return Output(logits, aux)


SELECT = {"tuple": 0, "list": 1, "dict": "logits", "object": "logits"}
HINT = {"tuple": "select=0", "list": "select=0", "dict": "select='logits'", "object": "select='logits'"}


@pytest.mark.parametrize("kind", list(SELECT))
def test_a_structured_output_without_select_is_refused_saying_how(kind):
    model = salfw.WhiteBox(Several(tiny_mlp(), kind))
    with pytest.raises(salfw.ModelError) as info:
        salfw.explain("gradient", model, sample_batch("vector", 2))
    text = str(info.value)
    assert len(text.splitlines()) == 1 and HINT[kind] in text and "WhiteBox" in text, text
    black = salfw.BlackBox(Several(tiny_mlp(), kind))
    with pytest.raises(salfw.ModelError, match="select="):
        black.scores(sample_batch("vector", 2))


@pytest.mark.parametrize("kind", list(SELECT))
def test_select_picks_the_class_scores(kind):
    net = tiny_mlp()
    x = sample_batch("vector", 3)
    plain = salfw.explain("gradient", salfw.WhiteBox(net), x, target=1)
    chosen = salfw.WhiteBox(Several(net, kind), select=SELECT[kind])
    e = salfw.explain("gradient", chosen, x, target=1)
    assert torch.allclose(e.attributions, plain.attributions)
    assert torch.allclose(chosen.scores(x), net(x))
    black = salfw.BlackBox(Several(net, kind), select=SELECT[kind], output="logits")
    assert black.output == "logits" and torch.allclose(black.probabilities(x), torch.softmax(net(x), 1))
    assert chosen.describe()["select"] == SELECT[kind]


def test_select_that_does_not_fit_the_output_is_a_clear_error():
    x = sample_batch("vector", 2)
    with pytest.raises(salfw.ModelError, match=r"select=5.*tuple of 2"):
        salfw.WhiteBox(Several(tiny_mlp(), "tuple"), select=5).scores(x)
    with pytest.raises(salfw.ModelError, match=r"select='scores'.*'aux', 'logits'"):
        salfw.WhiteBox(Several(tiny_mlp(), "dict"), select="scores").scores(x)
    with pytest.raises(salfw.ModelError, match=r"select=0.*single Tensor.*leave select out"):
        salfw.WhiteBox(tiny_mlp(), select=0).scores(x)
    with pytest.raises(salfw.ParameterError, match="select"):
        salfw.WhiteBox(tiny_mlp(), select=1.5)


class Unsqueezed(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)[..., None]


def test_scores_of_shape_n_k_1_are_refused_with_a_hint():
    x = sample_batch("image", 2)
    with pytest.raises(salfw.ModelError, match=r"\(N, classes\).*\(2, 3, 1\).*nn\.Flatten"):
        salfw.explain("gradient", salfw.WhiteBox(Unsqueezed(tiny_cnn())), x)
    with pytest.raises(salfw.ModelError, match=r"\(2, 3, 1\)"):
        salfw.BlackBox(Unsqueezed(tiny_cnn())).scores(x)


def test_auto_backend_reports_both_failures():
    def picky(batch):
        if isinstance(batch, torch.Tensor):
            raise TypeError("tensors are not welcome here")
        raise ValueError("arrays neither")

    with pytest.raises(salfw.ModelError) as info:
        salfw.BlackBox(picky).scores(torch.rand(2, 6))
    text = str(info.value)
    assert "tensors are not welcome here" in text and "arrays neither" in text, text
    assert "torch" in text and "NumPy" in text and len(text.splitlines()) == 1


def test_auto_backend_still_falls_back_to_numpy():
    w = np.random.default_rng(0).standard_normal((6, 3)).astype(np.float32)
    black = salfw.BlackBox(lambda batch: batch.astype(np.float64) @ w)
    assert black.scores(torch.rand(2, 6)).shape == (2, 3) and black.backend == "numpy"


# -- preprocessing lengths -------------------------------------------------------------------
def test_mean_std_lengths_are_checked_against_the_input_shape_when_built():
    with pytest.raises(salfw.ParameterError, match=r"mean.*3.*input_shape \(1, 8, 8\).*1 channel"):
        salfw.WhiteBox(tiny_cnn(), mean=[0.5] * 3, std=[0.25] * 3, input_shape=(1, 8, 8))
    with pytest.raises(salfw.ParameterError, match=r"mean has 3 values, std has 2 values"):
        salfw.WhiteBox(tiny_cnn(), mean=[0.5] * 3, std=[0.2, 0.3])
    salfw.WhiteBox(tiny_cnn(), mean=[0.5], std=[0.25], input_shape=(1, 8, 8))  # one value for every channel


def test_mean_std_lengths_are_checked_at_the_first_call_without_input_shape():
    model = salfw.WhiteBox(tiny_cnn(), mean=[0.5] * 3, std=[0.25] * 3)
    with pytest.raises(salfw.InputError, match=r"mean.*3 values.*1 channel"):
        salfw.explain("gradient", model, sample_batch("image", 2))
    vectors = salfw.WhiteBox(tiny_mlp(), mean=[0.5] * 4)
    with pytest.raises(salfw.InputError, match=r"mean.*4 values.*6"):
        vectors.scores(sample_batch("vector", 2))


def test_per_channel_and_per_feature_normalisation_still_work():
    net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    mean, std = torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.5, 0.25, 0.125])
    model = salfw.WhiteBox(net, mean=mean.tolist(), std=std.tolist(), input_shape=(3, 8, 8))
    x = torch.rand(2, 3, 8, 8)
    assert torch.allclose(model.scores(x), net((x - mean[:, None, None]) / std[:, None, None]), atol=1e-6)
    mlp = tiny_mlp()
    features = salfw.WhiteBox(mlp, mean=[0.5] * 6, input_shape=(6,))
    v = sample_batch("vector", 2)
    assert torch.allclose(features.scores(v), mlp(v - 0.5))
