"""Agreement of the gradient family with Captum, in float64, to 1e-5 relative.

Models: a small CNN (biases, max pooling), a tiny residual network with batch
norm in eval mode (non-trivial running statistics), and the built-in MNIST
networks (converted to float64 copies, their preprocessing kept).

* ``gradient`` / ``input-x-gradient`` vs ``Saliency`` / ``InputXGradient``;
* ``integrated-gradients`` vs ``IntegratedGradients`` for every rule, several
  baselines and chunk sizes, convergence delta included. Captum's trapezoid
  weights sum to (m−1)/m, so its trapezoid attributions are compared with ours
  times (m−1)/m (see salfw.plugins.integrated_gradients);
* ``smoothgrad`` (all three variants, over gradient, input×gradient and
  integrated gradients) vs ``NoiseTunnel``. The two libraries draw their noise
  differently (Captum: per sample from torch's global generator; salfw: once
  per seed, shared by the batch), so the test hands Captum salfw's noise by
  replacing ``NoiseTunnel._add_noise_to_input``; everything else (noisy
  copies, targets, aggregation) is Captum's own code.

``expected-gradients`` has no exact Captum counterpart to compare with
(``GradientShap`` draws its references and alphas per sample from torch's
global generator); it is checked by closed forms in test_gradient_family.py.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import salfw

captum = pytest.importorskip("captum")
from captum.attr import InputXGradient, IntegratedGradients, NoiseTunnel, Saliency  # noqa: E402

RTOL = 1e-5
CAPTUM_RULE = {"gauss-legendre": "gausslegendre", "riemann-left": "riemann_left", "riemann-right": "riemann_right",
               "riemann-middle": "riemann_middle", "riemann-trapezoid": "riemann_trapezoid"}


def close(ours: torch.Tensor, theirs: torch.Tensor, rtol: float = RTOL) -> bool:
    scale = theirs.abs().max().item()
    return bool(torch.allclose(ours, theirs, rtol=rtol, atol=rtol * max(scale, 1e-30)))


class Block(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)
        self.conv2, self.bn2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(y)))


def small_cnn() -> salfw.WhiteBox:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 8, 3), nn.ReLU(),
                        nn.Flatten(), nn.Linear(8, 5))
    return salfw.WhiteBox(net.double(), mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))


def tiny_resnet() -> salfw.WhiteBox:
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), Block(4), Block(4),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return salfw.WhiteBox(net.double().eval())


def builtin(name: str) -> salfw.WhiteBox:
    try:
        model = salfw.load_model(f"builtin:{name}")
    except (salfw.SalfwError, OSError) as exc:  # weights not shipped (yet) in this checkout
        pytest.skip(f"built-in model {name} is not available: {exc}")
    return salfw.WhiteBox(copy.deepcopy(model.module).double(), model.input_range,
                          **model.preprocessing.settings)


MODELS = ["small-cnn", "tiny-resnet", "mnist-cnn", "mnist-mlp", "mnist-cnn-nobias", "mnist-cnn-offset"]


@pytest.fixture(scope="module", params=MODELS)
def case(request):
    name = request.param
    model = {"small-cnn": small_cnn, "tiny-resnet": tiny_resnet}.get(name, lambda: builtin(name))()
    g = torch.Generator().manual_seed(2)
    if name.startswith("mnist"):
        shape = model.input_shape or (1, 28, 28)
        x = torch.rand((3, *shape), generator=g, dtype=torch.float64)
    else:
        x = torch.rand((3, 3, 6, 6), generator=g, dtype=torch.float64)
    with torch.no_grad():
        logits = model.network()(x)
    targets = torch.tensor([0, 2, 4]) % logits.shape[1]
    return model, x, targets


def test_gradient_matches_saliency(case):
    model, x, targets = case
    net = model.network()
    for absolute in (False, True):
        ours = salfw.explain("gradient", model, x, target=targets, absolute=absolute).attributions
        theirs = Saliency(net).attribute(x.clone().requires_grad_(), target=targets, abs=absolute)
        assert close(ours, theirs)


def test_input_x_gradient_matches(case):
    model, x, targets = case
    ours = salfw.explain("input-x-gradient", model, x, target=targets, batch_size=2).attributions
    theirs = InputXGradient(model.network()).attribute(x.clone().requires_grad_(), target=targets)
    assert close(ours, theirs)


@pytest.mark.parametrize("rule,baseline", [("gauss-legendre", "black"), ("gauss-legendre", "tensor"),
                                           ("riemann-left", "white"), ("riemann-right", "tensor"),
                                           ("riemann-middle", "black"), ("riemann-trapezoid", "tensor")])
def test_integrated_gradients_matches(case, rule, baseline):
    model, x, targets = case
    steps = 7
    if baseline == "tensor":
        b = torch.rand(x.shape[1:], generator=torch.Generator().manual_seed(3), dtype=x.dtype)
        ours = salfw.explain("integrated-gradients", model, x, target=targets, baseline=b, steps=steps, rule=rule,
                             batch_size=5)
        captum_baseline = b[None].expand_as(x)
    else:
        ours = salfw.explain("integrated-gradients", model, x, target=targets, baseline=baseline, steps=steps,
                             rule=rule, batch_size=5)
        captum_baseline = 0.0 if baseline == "black" else 1.0
    theirs, delta = IntegratedGradients(model.network()).attribute(
        x, baselines=captum_baseline, target=targets, n_steps=steps, method=CAPTUM_RULE[rule],
        internal_batch_size=5, return_convergence_delta=True)
    if rule == "riemann-trapezoid":
        assert close(ours.attributions * (steps - 1) / steps, theirs)
    else:
        assert close(ours.attributions, theirs)
        ours_delta = torch.tensor(ours.meta["convergence_delta"], dtype=torch.float64)
        assert torch.allclose(ours_delta, delta, rtol=RTOL, atol=RTOL * theirs.abs().sum(tuple(range(1, x.dim())))
                              .max().item())


def salfw_noise(x: torch.Tensor, samples: int, level: float, input_range, seed: int = 0) -> torch.Tensor:
    """The noise salfw's smoothgrad draws: once per seed, shaped like one sample, shared by the batch."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn((samples, *x.shape[1:]), generator=g, dtype=x.dtype) * level * (input_range[1] - input_range[0])


@pytest.mark.parametrize("variant,nt_type,base", [("smoothgrad", "smoothgrad", "gradient"),
                                                  ("smoothgrad-squared", "smoothgrad_sq", "input-x-gradient"),
                                                  ("vargrad", "vargrad", "gradient"),
                                                  ("smoothgrad", "smoothgrad", "integrated-gradients")])
def test_smoothgrad_matches_noise_tunnel_with_the_same_noise(case, monkeypatch, variant, nt_type, base):
    model, x, targets = case
    samples, level = 6, 0.2
    noise = salfw_noise(x, samples, level, model.input_range)

    def add_salfw_noise(inputs, stdev, nt_samples):
        assert nt_samples == samples and stdev == level * (model.input_range[1] - model.input_range[0])
        return inputs.repeat_interleave(nt_samples, dim=0) + noise.repeat(inputs.shape[0], *([1] * (x.dim() - 1)))

    monkeypatch.setattr(NoiseTunnel, "_add_noise_to_input", staticmethod(add_salfw_noise))
    net = model.network()
    inner, kwargs, settings = {"gradient": (Saliency(net), {"abs": False}, {}),
                               "input-x-gradient": (InputXGradient(net), {}, {}),
                               "integrated-gradients": (IntegratedGradients(net), {"n_steps": 4, "baselines": 0.0},
                                                        {"steps": 4, "baseline": "black"})}[base]
    ours = salfw.explain("smoothgrad", model, x, target=targets, base={"name": base, **settings},
                         variant=variant, samples=samples, noise_level=level, batch_size=8).attributions
    theirs = NoiseTunnel(inner).attribute(x.clone().requires_grad_(), nt_type=nt_type, nt_samples=samples,
                                          stdevs=level * (model.input_range[1] - model.input_range[0]),
                                          target=targets, **kwargs)
    assert close(ours, theirs)
