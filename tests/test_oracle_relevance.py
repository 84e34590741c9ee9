"""Agreement with the peer libraries, float64: Zennit's rules and composites for ``lrp`` and
``deep-taylor`` (small CNN, MLP, a residual network with batch norm, the built-in models,
torchvision's ``resnet18`` and ``vgg11_bn``) and Captum's ``DeepLift`` for ``deeplift``. Deep
Taylor's z⁺ and z^B leave the bias out (Montavon et al. 2017): Zennit's ``ZPlus``/``ZBox`` with
``zero_params='bias'``; the ``lrp`` rule ``z-plus-bias`` is Zennit's default ``ZPlus``."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import salfw
from tests.oracles import import_torchvision_models, import_zennit

zennit = import_zennit()
captum = pytest.importorskip("captum")

from captum.attr import DeepLift  # noqa: E402
from zennit.attribution import Gradient  # noqa: E402
from zennit.canonizers import NamedMergeBatchNorm  # noqa: E402
from zennit.composites import (  # noqa: E402
    EpsilonAlpha2Beta1,
    EpsilonGammaBox,
    EpsilonPlus,
    EpsilonPlusFlat,
    SpecialFirstLayerMapComposite,
    layer_map_base,
)
from zennit.layer import Sum  # noqa: E402
from zennit.rules import WSquare, ZBox, ZPlus  # noqa: E402
from zennit.types import Linear as AnyLinear  # noqa: E402


class Block(nn.Module):
    """Basic block with batch norm; ``zsum`` makes the addition Zennit's explicit ``Sum`` layer."""

    def __init__(self, c, zsum=False):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.relu = nn.ReLU()
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.out = nn.ReLU()
        self.sum = Sum() if zsum else None

    def forward(self, x):
        b = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.out(self.sum(torch.stack([x, b], dim=-1)) if self.sum is not None else x + b)


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, padding=1),
                         nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(24, 5), nn.ReLU(),
                         nn.Linear(5, 3)).double().eval()


def small_mlp():
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.ReLU(), nn.Dropout(0.2), nn.Linear(12, 8), nn.ReLU(),
                         nn.Linear(8, 3)).double().eval()


def resnet():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), Block(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 3)).double()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return net.eval()


def zennit_twin(net):
    """The same weights with the residual addition as Zennit's ``Sum`` and BatchNorm merged."""
    twin = copy.deepcopy(net)
    twin[1].sum = Sum()
    canon = NamedMergeBatchNorm([(["1.conv1"], "1.bn1"), (["1.conv2"], "1.bn2")])
    return twin, [canon]


def zennit_relevance(net, x, targets, composite):
    with Gradient(model=net, composite=composite) as attributor:
        _, relevance = attributor(x.clone(), lambda out: out * torch.eye(out.shape[1], dtype=out.dtype)[targets])
    return relevance


def deep_taylor_composite(low, high, canonizers=None, bias=False):
    """Montavon et al.'s deep Taylor rules, bias-free (``bias=True``: Zennit's default ``ZPlus``)."""
    zero = None if bias else "bias"
    return SpecialFirstLayerMapComposite(layer_map=layer_map_base() + [(AnyLinear, ZPlus(zero_params=zero))],
                                         first_map=[(AnyLinear, ZBox(low, high, zero_params=zero))],
                                         canonizers=canonizers)


def first_layer(net):
    return next(name for name, m in net.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d)))


COMPOSITES = {
    "epsilon-plus": lambda c: EpsilonPlus(canonizers=c),
    "epsilon-plus-flat": lambda c: EpsilonPlusFlat(canonizers=c),
    "epsilon-gamma-box": lambda c: EpsilonGammaBox(0.0, 1.0, canonizers=c),
    "epsilon-alpha2-beta1": lambda c: EpsilonAlpha2Beta1(canonizers=c),
}


@pytest.mark.parametrize("make", [small_cnn, small_mlp, resnet])
@pytest.mark.parametrize("composite", sorted(COMPOSITES) + ["deep-taylor", "lrp-deep-taylor", "z-plus-bias"])
def test_lrp_and_deep_taylor_match_zennit(make, composite):
    """``deep-taylor`` (and the ``lrp`` composite of that name) against Zennit's bias-free ZPlus
    and ZBox; ``lrp`` with z-box first and ``z-plus-bias`` above against Zennit's default ZPlus."""
    net = make()
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    targets = torch.tensor([0, 1, 2])
    twin, canonizers = zennit_twin(net) if make is resnet else (net, None)
    if composite in ("deep-taylor", "lrp-deep-taylor", "z-plus-bias"):
        if composite == "deep-taylor":
            ours = salfw.explain("deep-taylor", salfw.WhiteBox(net), x, target=targets).attributions
        else:
            rules = f"{first_layer(net)}=z-box;*=z-plus-bias" if composite == "z-plus-bias" else None
            ours = salfw.explain("lrp", salfw.WhiteBox(net), x, target=targets, composite="deep-taylor",
                                 rules=rules).attributions
        reference = zennit_relevance(twin, x, targets, deep_taylor_composite(0.0, 1.0, canonizers,
                                                                             bias=composite == "z-plus-bias"))
    else:
        ours = salfw.explain("lrp", salfw.WhiteBox(net), x, target=targets, composite=composite).attributions
        reference = zennit_relevance(twin, x, targets, COMPOSITES[composite](canonizers))
    scale = reference.abs().max()
    torch.testing.assert_close(ours / scale, reference / scale, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make", [small_cnn, small_mlp])
@pytest.mark.parametrize("first_rule", ["w-square", "z-plus"])
def test_deep_taylor_first_rules_match_zennit(make, first_rule):
    """The other first-layer rules, bias-free too: Zennit's WSquare / ZPlus with zero_params='bias'."""
    net = make()
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    targets = torch.tensor([2, 0, 1])
    ours = salfw.explain("deep-taylor", salfw.WhiteBox(net), x, target=targets, first_rule=first_rule).attributions
    first = WSquare(zero_params="bias") if first_rule == "w-square" else ZPlus(zero_params="bias")
    composite = SpecialFirstLayerMapComposite(layer_map=layer_map_base() + [(AnyLinear, ZPlus(zero_params="bias"))],
                                              first_map=[(AnyLinear, first)])
    reference = zennit_relevance(net, x, targets, composite)
    scale = reference.abs().max()
    torch.testing.assert_close(ours / scale, reference / scale, rtol=1e-5, atol=1e-5)


def builtin(name):
    try:
        model = salfw.load_model(f"builtin:{name}")
    except salfw.core.errors.SalfwError as exc:
        pytest.skip(f"built-in model {name} unavailable: {exc}")
    from salfw.zoo.samples import load_samples
    images, _labels = load_samples()
    return model, images[:6].to(model.dtype)


@pytest.mark.parametrize("name", ["mnist-mlp", "mnist-cnn", "mnist-cnn-offset"])
@pytest.mark.parametrize("composite", ["epsilon-plus", "epsilon-gamma-box", "deep-taylor"])
def test_builtin_models_match_zennit(name, composite):
    model, x = builtin(name)
    e = salfw.explain("deep-taylor" if composite == "deep-taylor" else "lrp", model, x,
                      **({} if composite == "deep-taylor" else {"composite": composite}))
    low, high = model.preprocessing.bounds(model.input_range, x)
    comp = deep_taylor_composite(low, high) if composite == "deep-taylor" else (
        EpsilonGammaBox(low, high) if composite == "epsilon-gamma-box" else EpsilonPlus())
    net = model.network()
    with Gradient(model=net, composite=comp) as attributor:
        _, reference = attributor(x.clone(), lambda out: out * torch.eye(out.shape[1], dtype=out.dtype)[e.targets])
    scale = reference.abs().max()
    torch.testing.assert_close(e.attributions / scale, reference / scale, rtol=1e-5, atol=1e-5)


def no_relu_before_pool():
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1),
                         nn.BatchNorm2d(4), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(16, 3)).double().eval()


@pytest.mark.parametrize("make", [small_mlp, no_relu_before_pool, resnet])
@pytest.mark.parametrize("baseline", ["black", "white", "blur"])
def test_deeplift_matches_captum(make, baseline):
    """Captum's DeepLift, on networks where no ReLU module directly feeds a MaxPool2d: there
    Captum's hooks give results that break summation-to-delta (its convergence delta is not 0),
    while salfw's is exact (tests/test_relevance.py::test_deeplift_summation_to_delta)."""
    net = make()
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    targets = torch.tensor([0, 1, 2])
    e = salfw.explain("deeplift", salfw.WhiteBox(net), x, target=targets, baseline=baseline)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = DeepLift(net).attribute(x, e.meta["baseline"], target=targets)
    torch.testing.assert_close(e.attributions, reference, rtol=1e-5, atol=1e-8)


def test_deeplift_builtin_mlp_matches_captum():
    model, x = builtin("mnist-mlp")
    e = salfw.explain("deeplift", model, x, baseline="blur")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = DeepLift(model.network()).attribute(x, e.meta["baseline"], target=e.targets)
    torch.testing.assert_close(e.attributions, reference, rtol=1e-4, atol=1e-5)


# -- torchvision's resnet18 and vgg11_bn ---------------------------------------------------------
def randomise_batchnorm(net, seed):
    """Non-trivial BatchNorm statistics and affine parameters, so that folding them matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.rand(c, generator=g) * 0.4 - 0.2)
    return net


def fold_batchnorm_by_hand(net):
    """A deep copy with every BatchNorm2d folded into the Conv2d before it (in module order) and
    replaced by an Identity: ``w' = w · γ/√(σ² + ε)``, ``b' = (b − μ) · γ/√(σ² + ε) + β``. Zennit's
    canonizers keep each BatchNorm as ``x/√(1 + ε)`` after merging it, which is not exact."""
    twin = copy.deepcopy(net)
    conv = None
    with torch.no_grad():
        for name, m in list(twin.named_modules()):
            if isinstance(m, nn.Conv2d):
                conv = m
            elif isinstance(m, nn.BatchNorm2d):
                scale = m.weight / torch.sqrt(m.running_var + m.eps)
                bias = conv.bias if conv.bias is not None else torch.zeros_like(scale)
                conv.weight.mul_(scale.view(-1, 1, 1, 1))
                conv.bias = nn.Parameter((bias - m.running_mean) * scale + m.bias)
                parent, _, child = name.rpartition(".")
                setattr(twin.get_submodule(parent), child, nn.Identity())
    return twin


def narrow_vgg_classifier(net, width=64):
    """vgg11_bn's classifier with 64 hidden units instead of 4096 (same layer types and order), so that
    the float64 model and its folded copy stay small in CI; the features are untouched."""
    torch.manual_seed(3)
    net.classifier[0] = nn.Linear(net.classifier[0].in_features, width)
    net.classifier[3] = nn.Linear(width, width)
    net.classifier[6] = nn.Linear(width, 10)
    return net


@pytest.mark.parametrize("name", ["resnet18", "vgg11_bn"])
def test_lrp_epsilon_plus_matches_zennit_on_torchvision(name):
    """``lrp`` with ``epsilon-plus`` on the unmodified network (salfw folds BatchNorm exactly) against
    Zennit's ``EpsilonPlus`` on a hand-folded copy, to 1e-6 relative; for resnet18 Zennit's
    ``ResNetBasicBlockCanonizer`` turns the residual ``+`` into its ``Sum`` layer (the z-rule, as
    salfw's additions)."""
    from zennit.torchvision import ResNetBasicBlockCanonizer

    models = import_torchvision_models()
    torch.manual_seed(0)
    net = getattr(models, name)(weights=None, num_classes=10)
    if name == "vgg11_bn":
        net = narrow_vgg_classifier(net)
    net = randomise_batchnorm(net, 1).double().eval()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ours = salfw.explain("lrp", salfw.WhiteBox(net), x, composite="epsilon-plus")
    canonizers = [ResNetBasicBlockCanonizer()] if name == "resnet18" else None
    reference = zennit_relevance(fold_batchnorm_by_hand(net), x, ours.targets, EpsilonPlus(canonizers=canonizers))
    scale = reference.abs().max()
    torch.testing.assert_close(ours.attributions / scale, reference / scale, rtol=1e-6, atol=1e-6)
