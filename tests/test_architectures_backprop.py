"""Guided backprop, deconvnet and the CAM family on torchvision's architectures (issue #12), seeded random weights.

Each (model, method) pair runs (finite, input-shaped, not all zero) or refuses with a one-line error naming a
layer and a method that applies: guided backprop, deconvnet and Guided Grad-CAM on the SiLU/GELU networks,
whose papers assume rectifiers. Functional rectifiers get the same rule as modules; a module called twice
is chosen by its call index; the ViT's automatic Grad-CAM layer is read as pytorch-grad-cam reads it.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from torch import nn

import salfw
from salfw.core.errors import ModelRequirementError
from tests.oracles import import_torchvision_models

CNNS = ("resnet18", "vgg11_bn", "mobilenet_v2", "densenet121", "efficientnet_b0")
MODELS = (*CNNS, "vit")
METHODS = ("guided-backprop", "deconvnet", "grad-cam", "grad-cam-plus-plus", "guided-grad-cam")
#: The automatic Grad-CAM layer: the last feature map; in the ViT the tokens entering the last attention.
DEFAULT_LAYERS = {"resnet18": "layer4", "vgg11_bn": "features", "mobilenet_v2": "features", "densenet121": "features",
                  "efficientnet_b0": "features", "vit": "encoder.layers.encoder_layer_1.ln_1"}
#: Networks without rectifiers, with their first activation layer (named by the refusal).
SMOOTH = {"efficientnet_b0": "features.0.2' (SiLU)", "vit": "encoder.layers.encoder_layer_0.mlp.1' (GELU)"}
RECTIFIER_METHODS = ("guided-backprop", "deconvnet", "guided-grad-cam")


def _nontrivial_batchnorm(net: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.1 * torch.randn(c, generator=g))
    return net


@functools.cache
def network(name: str) -> nn.Module:
    """A seeded random-weight torchvision model, 10 classes, eval mode (the tests never change it)."""
    models = import_torchvision_models()
    torch.manual_seed(0)
    if name == "vit":
        net = models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                                       mlp_dim=64, num_classes=10)
        with torch.no_grad():  # torchvision initialises the head to zero: every gradient would be zero
            net.heads.head.weight.normal_(0, 0.2, generator=torch.Generator().manual_seed(1))
        return net.eval()
    return _nontrivial_batchnorm(getattr(models, name)(weights=None, num_classes=10)).eval()


def inputs(name: str, n: int = 2) -> torch.Tensor:
    size = 32 if name == "vit" else 64
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("name", MODELS)
def test_every_method_runs_or_refuses_naming_the_layer_and_an_alternative(name):
    model = salfw.WhiteBox(network(name))
    x = inputs(name)
    for method in METHODS:
        if name in SMOOTH and method in RECTIFIER_METHODS:
            with pytest.raises(ModelRequirementError) as err:
                salfw.explain(method, model, x, target=3)
            text = str(err.value)
            assert "\n" not in text and SMOOTH[name] in text and "assume ReLU" in text and "'gradient'" in text
            continue
        # random weights may leave no positive evidence, ReLU(Σ_k α_k A^k) = 0: the maps are checked without it
        e = salfw.explain(method, model, x, target=3, **({"relu": False} if method.startswith("grad-cam") else {}))
        assert e.attributions.shape in (x.shape, (2, 1, *x.shape[2:])), method
        assert torch.isfinite(e.attributions).all(), method
        assert method == "guided-grad-cam" or e.attributions.abs().sum() > 0, method
        if "cam" in method:
            assert e.meta["layer"] == DEFAULT_LAYERS[name], method


class FunctionalReLU(nn.Module):
    """A rectifier module that is not an ``nn.ReLU``: module hooks on ``nn.ReLU`` (Captum's) do not see it."""

    def forward(self, x):
        return x.relu_()


def test_functional_relu_gets_the_same_rule_as_relu_modules_on_resnet18():
    net = network("resnet18")
    functional = copy.deepcopy(net)
    for module in functional.modules():
        for child_name, child in module.named_children():
            if isinstance(child, nn.ReLU):
                setattr(module, child_name, FunctionalReLU())
    assert not any(isinstance(m, nn.ReLU) for m in functional.modules())
    x = inputs("resnet18")
    for method in ("guided-backprop", "deconvnet"):
        ours = salfw.explain(method, salfw.WhiteBox(functional), x, target=[1, 4]).attributions
        modules = salfw.explain(method, salfw.WhiteBox(net), x, target=[1, 4]).attributions
        torch.testing.assert_close(ours, modules, rtol=0, atol=0)
    plain = salfw.explain("gradient", salfw.WhiteBox(net), x, target=[1, 4]).attributions
    assert not torch.allclose(plain, modules)


def test_mobilenet_relu6_is_a_rectifier_for_guided_backprop():
    """Guided backprop on MobileNetV2 equals the network with each ReLU6 replaced by a hardtanh(0, 6) module and
    by an explicit guided rule written as a backward hook."""
    net = network("mobilenet_v2")
    x = inputs("mobilenet_v2", 1)
    guided = salfw.explain("guided-backprop", salfw.WhiteBox(net), x, target=2).attributions
    hooked = copy.deepcopy(net)

    def rule(module, grad_input, grad_output):  # relu(g) · [0 < x < 6], written with the module's own mask
        return (grad_input[0].clamp(min=0),)

    for m in hooked.modules():
        if isinstance(m, nn.ReLU6):
            m.inplace = False
            m.register_full_backward_hook(rule)
    xs = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(hooked(xs)[:, 2].sum(), xs)
    torch.testing.assert_close(guided, expected)


def test_resnet_layer_called_twice_by_call_index():
    model = salfw.WhiteBox(network("resnet18"))
    x = inputs("resnet18")
    by_call = salfw.explain("grad-cam", model, x, target=5, layer="layer4.1.relu#1")
    block = salfw.explain("grad-cam", model, x, target=5, layer="layer4.1")  # the block's output is relu#1's
    assert by_call.meta["layer"] == "layer4.1.relu#1"
    torch.testing.assert_close(by_call.meta["layer_map"], block.meta["layer_map"])
    first = salfw.explain("grad-cam", model, x, target=5, layer="layer4.1.relu#0")
    assert not torch.allclose(first.meta["layer_map"], block.meta["layer_map"])
    with pytest.raises(ModelRequirementError, match=r"'layer4\.1\.relu' \(ReLU\) is called 2 times.*relu#1"):
        salfw.explain("grad-cam", model, x, target=5, layer="layer4.1.relu")


def test_vit_default_layer_is_pytorch_grad_cams_reshape_of_the_last_blocks_tokens():
    net = network("vit")
    x, target = inputs("vit"), torch.tensor([3, 7])
    captured = []
    handle = net.encoder.layers[-1].ln_1.register_forward_hook(lambda m, i, o: captured.append(o))
    try:
        (grad,) = torch.autograd.grad(net(x).gather(1, target[:, None]).sum(), captured[0])
    finally:
        handle.remove()

    def reshape_transform(t, height=4, width=4):  # pytorch-grad-cam's, for a ViT
        result = t[:, 1:, :].reshape(t.size(0), height, width, t.size(2))
        return result.transpose(2, 3).transpose(1, 2)

    acts, grads = reshape_transform(captured[0].detach()), reshape_transform(grad)
    expected = (grads.mean(dim=(2, 3), keepdim=True) * acts).sum(1, keepdim=True).clamp(min=0)
    e = salfw.explain("grad-cam", salfw.WhiteBox(net), x, target=target)
    torch.testing.assert_close(e.meta["layer_map"], expected)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "densenet121"])
def test_visual_backprop_refuses_branching_networks(name):
    with pytest.raises(ModelRequirementError, match=r"plain chain.*'grad-cam'"):
        salfw.explain("visual-backprop", salfw.WhiteBox(network(name)), inputs(name, 1))


def test_visual_backprop_runs_on_vgg():
    with pytest.warns(UserWarning, match="without biases"):
        e = salfw.explain("visual-backprop", salfw.WhiteBox(network("vgg11_bn")), inputs("vgg11_bn", 1))
    assert e.attributions.shape == (1, 1, 64, 64) and torch.isfinite(e.attributions).all()
    assert len(e.meta["layers"]) == 8  # the ReLU after each of vgg11's eight convolutions


def test_attention_rollout_on_the_vit_and_refused_on_a_cnn():
    e = salfw.explain("attention-rollout", salfw.WhiteBox(network("vit")), inputs("vit"))
    assert e.meta["layer_map"].shape == (2, 1, 4, 4) and e.meta["layers"] == [
        "encoder.layers.encoder_layer_0.self_attention", "encoder.layers.encoder_layer_1.self_attention"]
    with pytest.raises(ModelRequirementError, match="no attention layer"):
        salfw.explain("attention-rollout", salfw.WhiteBox(network("resnet18")), inputs("resnet18", 1))
