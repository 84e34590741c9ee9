"""Agreement with Captum (GuidedBackprop, Deconvolution, LayerGradCam + interpolate, GuidedGradCam) in float64."""

import warnings

import pytest
import torch
from torch import nn

import salfw
from salfw.core.errors import UnknownNameError

captum = pytest.importorskip("captum")
from captum.attr import Deconvolution, GuidedBackprop, GuidedGradCam, LayerAttribution, LayerGradCam  # noqa: E402

D = torch.float64
RTOL = 1e-5


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).to(D)


class Block(nn.Module):
    """A ResNet basic block: one in-place ReLU module used twice, as torchvision's BasicBlock."""

    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + x)


class TinyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU())
        self.block = Block(6)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.block(self.stem(x))), 1))


def tiny_resnet():
    torch.manual_seed(1)
    net = TinyResNet().to(D)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net.eval()


def builtin(name):
    try:
        loaded = salfw.load_model(f"builtin:{name}")
    except UnknownNameError as exc:
        pytest.skip(f"built-in models are not registered yet: {exc}")
    settings = {k: v for k, v in loaded.preprocessing.settings.items() if v is not None}
    return salfw.WhiteBox(loaded.module.to(D), loaded.input_range, **settings)


def cases():
    return [("small-cnn", lambda: salfw.WhiteBox(small_cnn()), (4, 3, 12, 12)),
            ("tiny-resnet", lambda: salfw.WhiteBox(tiny_resnet()), (4, 3, 10, 10)),
            ("mnist-cnn", lambda: builtin("mnist-cnn"), (2, 1, 28, 28)),
            ("mnist-cnn-offset", lambda: builtin("mnist-cnn-offset"), (2, 1, 28, 28))]


def assert_agree(ours, theirs):
    assert ours.shape == theirs.shape
    scale = theirs.abs().max().item()
    assert scale > 0, "the reference is all zeros: the comparison would be empty"
    err = (ours - theirs).abs().max().item()
    assert err <= RTOL * scale, f"max difference {err:.3g} for a reference of size {scale:.3g}"


@pytest.fixture(params=cases(), ids=[c[0] for c in cases()])
def setup(request):
    _, make, shape = request.param
    model = make()
    x = torch.rand(shape, dtype=D, generator=torch.Generator().manual_seed(2))
    target = torch.arange(shape[0]) % 4
    return model, x, target, model.network()


def test_guided_backprop_and_deconvnet(setup):
    model, x, target, net = setup
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Captum warns that it sets hooks
        gb = GuidedBackprop(net).attribute(x.clone().requires_grad_(True), target=target)
        dc = Deconvolution(net).attribute(x.clone().requires_grad_(True), target=target)
    assert_agree(salfw.explain("guided-backprop", model, x, target=target).attributions, gb)
    assert_agree(salfw.explain("deconvnet", model, x, target=target).attributions, dc)


def test_grad_cam_and_guided_grad_cam(setup):
    model, x, target, net = setup
    ours = salfw.explain("grad-cam", model, x, target=target)
    layer = dict(model.module.named_modules())[ours.meta["layer"]]
    theirs = LayerGradCam(net, layer).attribute(x, target=target, relu_attributions=True)
    assert_agree(ours.meta["layer_map"], theirs)
    assert_agree(ours.attributions, LayerAttribution.interpolate(theirs, x.shape[2:], "bilinear"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ggc = GuidedGradCam(net, layer).attribute(x, target=target, interpolate_mode="bilinear")
    assert_agree(salfw.explain("guided-grad-cam", model, x, target=target).attributions, ggc)


def test_grad_cam_on_every_conv_layer_of_the_small_cnn():
    model = salfw.WhiteBox(small_cnn())
    net = model.network()
    x = torch.rand(3, 3, 12, 12, dtype=D, generator=torch.Generator().manual_seed(3))
    for name, layer in model.module.named_modules():
        if isinstance(layer, (nn.Conv2d, nn.MaxPool2d)):
            ours = salfw.explain("grad-cam", model, x, target=1, layer=name, relu=False, interpolation="nearest")
            theirs = LayerGradCam(net, layer).attribute(x, target=1, relu_attributions=False)
            assert_agree(ours.meta["layer_map"], theirs)
            assert_agree(ours.attributions, LayerAttribution.interpolate(theirs, x.shape[2:], "nearest"))


def test_guided_backprop_and_deconvnet_on_torchvision_resnet18():
    """resnet18's ReLUs are nn.ReLU modules (one, in place, called twice per block), which Captum hooks too."""
    from tests.oracles import import_torchvision_models

    torch.manual_seed(0)
    net = import_torchvision_models().resnet18(weights=None, num_classes=10)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    net = net.to(D).eval()
    model = salfw.WhiteBox(net)
    x = torch.rand(2, 3, 64, 64, dtype=D, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([3, 8])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Captum warns that it sets hooks
        gb = GuidedBackprop(net).attribute(x.clone().requires_grad_(True), target=target)
        dc = Deconvolution(net).attribute(x.clone().requires_grad_(True), target=target)
    assert_agree(salfw.explain("guided-backprop", model, x, target=target).attributions, gb)
    assert_agree(salfw.explain("deconvnet", model, x, target=target).attributions, dc)
