"""The relevance engine on the standard architecture families: torchvision's resnet18, vgg11_bn,
mobilenet_v2, densenet121, efficientnet_b0 and a small VisionTransformer (seeded random weights,
BatchNorm statistics from one training-mode pass over random images), and small networks with
each of the new rules in closed form. All in float64.

* ``lrp`` and ``deeplift`` run on every model: finite, input-shaped maps; DeepLIFT's
  contributions sum to f(x) − f(x̄) on every model; LRP-ε (ε → 0) conserves the logit on a
  bias-free variant of every model (MobileNetV2 below ReLU6's saturation).
* ``deep-taylor`` and ``excitation-backprop`` run where the network is a ReLU network and
  otherwise refuse, naming the layer and ``lrp``.
* On the bias-free ViT, ``lrp`` equals input × gradient of the network with the attention
  weights, LayerNorm's standard deviation and GELU's ratio f(x)/x held constant: the
  gradient × input form of AttnLRP/CP-LRP that their reference implementation (LXT) uses,
  written here from the module's parameters, independently of the engine.
* The captured graph is cached per model, invalidated when the module tree changes, safe
  under threads, and keeps no model alive.
"""

from __future__ import annotations

import copy
import functools
import gc
import math
import threading
import weakref
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import salfw
from salfw.core.errors import ModelRequirementError
from salfw.sdk.propagation import Network, capture, graph
from tests.oracles import import_torchvision_models

MODELS = ["resnet18", "vgg11_bn", "mobilenet_v2", "densenet121", "efficientnet_b0", "vit"]


def size(name):
    return 32 if name == "vit" else 64


@functools.cache
def float32_model(name):
    """The seeded model with BatchNorm statistics of one training-mode pass over random images (the
    default running statistics leave MobileNetV2's and EfficientNet's logits near 1e-10) and, for
    the ViT, a random head (torchvision initialises it to zero). vgg11_bn's classifier is narrowed
    to 64 hidden units to keep CI's memory small (its features are untouched)."""
    models = import_torchvision_models()
    torch.manual_seed(0)
    if name == "vit":
        net = models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                                       mlp_dim=64, num_classes=10)
        nn.init.normal_(net.heads.head.weight, std=0.5)
    else:
        net = getattr(models, name)(weights=None, num_classes=10)
    if name == "vgg11_bn":
        net.classifier[0], net.classifier[3], net.classifier[6] = nn.Linear(512 * 49, 64), nn.Linear(64, 64), \
            nn.Linear(64, 10)
    batchnorms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in batchnorms:
        m.momentum = None  # the running statistics become those of the one batch
        m.reset_running_stats()
    net.train()
    with torch.no_grad():
        net(torch.rand(8, 3, size(name), size(name), generator=torch.Generator().manual_seed(9)))
    return net.eval()


def model(name):
    """A float64 copy (tests change it)."""
    return copy.deepcopy(float32_model(name)).double()


def bias_free(net):
    """Every bias, BatchNorm shift and mean, class token and positional embedding set to zero: the
    network is a composition of linear maps, gates and activations through the origin."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.zero_()
                m.bias.zero_()
            elif isinstance(m, nn.Linear | nn.Conv2d | nn.LayerNorm) and m.bias is not None:
                m.bias.zero_()
            elif isinstance(m, nn.MultiheadAttention):
                m.in_proj_bias.zero_()
        for name, p in net.named_parameters():
            if name in ("class_token", "encoder.pos_embedding"):
                p.zero_()
    return net


def images(name, n=2, scale=1.0):
    return scale * torch.rand(n, 3, size(name), size(name), generator=torch.Generator().manual_seed(1),
                              dtype=torch.float64)


@pytest.mark.parametrize("name", MODELS)
def test_lrp_and_deeplift_run_and_deeplift_sums_to_delta(name):
    """Both run; LRP (epsilon-plus) accounts for the whole logit: the input relevance plus what each
    layer's bias and every other absorbing step (a constant term, LayerNorm's bias, a saturated
    ReLU6) took, as ``meta["layers"]`` reports, up to the stabilisers; DeepLIFT sums to delta."""
    net = model(name)
    wb = salfw.WhiteBox(net)
    x = images(name)
    e = salfw.explain("lrp", wb, x)
    assert e.attributions.shape == x.shape and torch.isfinite(e.attributions).all()
    assert e.attributions.abs().sum() > 0
    absorbed = torch.tensor([layer["absorbed"] for layer in e.meta["layers"]], dtype=torch.float64).sum(0)
    logit = wb.scores(x).gather(1, e.targets[:, None])[:, 0]
    torch.testing.assert_close(e.attributions.flatten(1).sum(1) + absorbed, logit, rtol=1e-4, atol=0)
    d = salfw.explain("deeplift", wb, x, target=e.targets, baseline="blur")
    assert d.attributions.shape == x.shape and torch.isfinite(d.attributions).all()
    delta = (wb.scores(x) - wb.scores(d.meta["baseline"])).gather(1, e.targets[:, None])[:, 0]
    torch.testing.assert_close(d.attributions.flatten(1).sum(1), delta, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", MODELS)
def test_lrp_epsilon_conserves_on_bias_free_variants(name):
    """LRP-ε with ε → 0 in every layer of a bias-free network: every rule is conservative (z-rule
    through layers, additions, pooling and the value path of gates and attention, identity through
    activations and normalisations, slices through concatenations), so the input relevance sums to
    the logit. MobileNetV2's inputs are scaled so that no ReLU6 saturates (a saturated unit is a
    constant and absorbs its relevance: test_relu6_saturation_is_absorbed)."""
    net = bias_free(model(name))
    wb = salfw.WhiteBox(net)
    x = images(name, scale=1e-3 if name == "mobilenet_v2" else 1.0)
    e = salfw.explain("lrp", wb, x, rules="*=epsilon", epsilon=1e-12, stabilizer=1e-12)
    logit = wb.scores(x).gather(1, e.targets[:, None])[:, 0]
    torch.testing.assert_close(e.attributions.flatten(1).sum(1), logit, rtol=1e-6, atol=0)


REFUSALS = {
    "efficientnet_b0": r"layer 'features.0.2' is SiLU, not a rectifier",
    "vit": r"layer 'encoder.layers.encoder_layer_0.ln_1' is LayerNorm",
}
#: MobileNetV2 is a ReLU6 network, but its linear bottlenecks feed convolutions values of both signs.
EXCITATION_REFUSALS = dict(REFUSALS, mobilenet_v2=r"layer 'features.2.conv.0.0' reads the output of layer "
                                                  r"'features.1.conv.2' \(BatchNorm2d\), which no rectifier "
                                                  r"bounds below")


def assert_refused(method, wb, x, pattern, paper):
    with pytest.raises(ModelRequirementError, match=pattern) as info:
        salfw.explain(method, wb, x)
    message = str(info.value)
    assert paper in message and "use 'lrp'" in message and "\n" not in message


@pytest.mark.parametrize("name", MODELS)
def test_deep_taylor_and_excitation_backprop_run_on_relu_networks_or_refuse(name):
    """Deep Taylor runs on rectifier networks (ResNet, VGG, DenseNet with its BatchNorm before the
    convolutions, MobileNetV2's ReLU6) and conserves the logit on the ReLU ones but for dead units'
    share (a ReLU6 saturated at 6 absorbs its relevance, MobileNetV2 loses some). Excitation
    backprop also needs every layer's inputs rectified; its winning probabilities sum to 1 (and are
    non-negative on VGG's plain chain; an addition or an average pooling of values of both signs,
    ResNet's residual sum or DenseNet's transition pooling, splits by the z-rule and can give a
    negative share). Elsewhere a one-line refusal names the layer, the paper's assumption and ``lrp``."""
    wb = salfw.WhiteBox(model(name))
    x = images(name, n=1)
    if name in REFUSALS:
        assert_refused("deep-taylor", wb, x, REFUSALS[name], "Montavon et al. 2017")
    else:
        e = salfw.explain("deep-taylor", wb, x)
        assert torch.isfinite(e.attributions).all() and (e.attributions.sum() > 0)
        if name != "mobilenet_v2":
            logit = wb.scores(x).gather(1, e.targets[:, None])[:, 0]
            torch.testing.assert_close(e.attributions.flatten(1).sum(1), logit, rtol=1e-3, atol=0)
    if name in EXCITATION_REFUSALS:
        for method in ("excitation-backprop", "contrastive-excitation-backprop"):
            assert_refused(method, wb, x, EXCITATION_REFUSALS[name], "Zhang et al. 2018")
        return
    p = salfw.explain("excitation-backprop", wb, x)
    assert name != "vgg11_bn" or (p.attributions >= 0).all()
    torch.testing.assert_close(p.attributions.flatten(1).sum(1), torch.ones(1, dtype=torch.float64), rtol=1e-3,
                               atol=0)


def detached_vit_logits(net, x):
    """The bias-free ViT computed from its parameters with the attention weights, LayerNorm's
    standard deviation and GELU's ratio f(x)/x detached (constants): LXT's gradient × input form of
    CP-LRP inside the attention and AttnLRP's identity rules outside it."""
    n = x.shape[0]
    tokens = net.conv_proj(x).reshape(n, net.hidden_dim, -1).permute(0, 2, 1)
    h = torch.cat([net.class_token.expand(n, -1, -1), tokens], 1) + net.encoder.pos_embedding

    def layer_norm(t, ln):
        centred = t - t.mean(-1, keepdim=True)
        return ln.weight * centred / torch.sqrt(t.var(-1, unbiased=False, keepdim=True) + ln.eps).detach()

    def gelu(t):
        return t * torch.where(t == 0, 0.0, F.gelu(t) / torch.where(t == 0, 1.0, t)).detach()

    for block in net.encoder.layers:
        attention, e = block.self_attention, net.hidden_dim
        y = layer_norm(h, block.ln_1)
        wq, wk, wv = attention.in_proj_weight.chunk(3)
        heads, d = attention.num_heads, e // attention.num_heads

        def split(t, heads=heads, d=d):
            return t.reshape(n, -1, heads, d).transpose(1, 2)

        weights = torch.softmax(split(y @ wq.T) @ split(y @ wk.T).transpose(-2, -1) / math.sqrt(d), -1).detach()
        mixed = (weights @ split(y @ wv.T)).transpose(1, 2).reshape(n, -1, e)
        h = h + mixed @ attention.out_proj.weight.T
        y = layer_norm(h, block.ln_2)
        h = h + gelu(y @ block.mlp[0].weight.T) @ block.mlp[3].weight.T
    return layer_norm(h, net.encoder.ln)[:, 0] @ net.heads.head.weight.T


def test_vit_lrp_is_attnlrp_gradient_times_input():
    net = bias_free(model("vit"))
    x = images("vit")
    wb = salfw.WhiteBox(net)
    e = salfw.explain("lrp", wb, x, rules="*=epsilon", epsilon=1e-12, stabilizer=1e-12)
    xg = x.clone().requires_grad_(True)
    logits = detached_vit_logits(net, xg)
    torch.testing.assert_close(logits.detach(), wb.scores(x))  # the re-computation is the model
    (g,) = torch.autograd.grad(logits.gather(1, e.targets[:, None]).sum(), xg)
    scale = (x * g).abs().max()
    torch.testing.assert_close(e.attributions / scale, x * g / scale, rtol=1e-6, atol=1e-9)
    assert {layer["layer"] for layer in e.meta["layers"]} >= {"encoder.layers.encoder_layer_1.self_attention.in_proj",
                                                              "encoder.layers.encoder_layer_1.self_attention.out_proj"}


class Attention(nn.Module):
    """Cross-attention from the tokens to a projection of them; sequence-first inside when
    ``batch_first`` is False (the batch is then dimension 1 where the attention runs)."""

    def __init__(self, batch_first, kdim=None):
        super().__init__()
        self.attention = nn.MultiheadAttention(8, 2, batch_first=batch_first, kdim=kdim, vdim=kdim)
        self.key = nn.Linear(8, kdim or 8)
        self.head = nn.Linear(8, 3)
        self.batch_first = batch_first

    def forward(self, x):
        x = x.reshape(x.shape[0], 4, 8)
        if not self.batch_first:
            x = x.transpose(0, 1)
        keys = self.key(x)
        out, _ = self.attention(x, keys, keys)
        return self.head(out.mean(1 if self.batch_first else 0))


@pytest.mark.parametrize("batch_first, kdim", [(True, None), (False, None), (True, 5)])
def test_attention_is_reimplemented_exactly(batch_first, kdim):
    """The engine's nn.MultiheadAttention (the module's fast path cannot be traced) gives the module's
    output; DeepLIFT through it sums to delta."""
    torch.manual_seed(0)
    net = Attention(batch_first, kdim).double().eval()
    x = 2 * torch.rand(3, 32, dtype=torch.float64) - 1
    wb = salfw.WhiteBox(net, input_range=(-1, 1))
    _env, logits = Network(wb, "lrp").forward(x)
    torch.testing.assert_close(logits, net(x), rtol=1e-12, atol=1e-12)
    d = salfw.explain("deeplift", wb, x, baseline=0.0)
    delta = (wb.scores(x) - wb.scores(torch.zeros_like(x))).gather(1, d.targets[:, None])[:, 0]
    torch.testing.assert_close(d.attributions.flatten(1).sum(1), delta, rtol=1e-9, atol=1e-12)


def test_attention_masks_are_refused_by_name():
    class Masked(Attention):
        def forward(self, x):
            x = x.reshape(x.shape[0], 4, 8)
            out, _ = self.attention(x, x, x, attn_mask=torch.zeros(4, 4))
            return self.head(out.mean(1))

    with pytest.raises(ModelRequirementError, match="without attn_mask"):
        salfw.explain("lrp", salfw.WhiteBox(Masked(True)), torch.rand(2, 32))


def test_relu6_saturation_is_absorbed():
    """Linear → ReLU6 → Linear, bias-free, LRP-ε (ε → 0): a unit on ReLU6's linear piece passes its
    relevance h_k w_k to its inputs (R_j = Σ_k x_j W_kj w_k over those units); a unit saturated at 6
    is a constant there and passes nothing."""
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(3, 4, bias=False), nn.ReLU6(), nn.Linear(4, 1, bias=False)).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[5.0, 4.0, 3.0], [0.5, -0.2, 0.3], [-1.0, 0.5, 0.2], [0.2, 0.9, 0.4]]))
        net[2].weight.copy_(torch.tensor([[1.5, -2.0, 0.7, 1.1]]))
    x = torch.tensor([[1.0, 0.5, 0.8], [0.2, 0.1, 0.3]], dtype=torch.float64)
    e = salfw.explain("lrp", salfw.WhiteBox(net), x, target=0, rules="*=epsilon", epsilon=1e-13, stabilizer=1e-13)
    z = x @ net[0].weight.T
    linear = ((z > 0) & (z < 6)).to(x)
    assert linear[0, 0] == 0 and linear[1, 0] == 1  # unit 0 is saturated for the first sample only
    expected = x * ((linear * net[2].weight) @ net[0].weight)
    torch.testing.assert_close(e.attributions, expected.detach())


class Twice(nn.Module):
    """One ReLU6 module called twice, as EfficientNet-Lite's ``_swish``."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(3, 5), nn.Linear(5, 5), nn.Linear(5, 2)
        self.act = nn.ReLU6()

    def forward(self, x):
        return self.fc3(self.act(self.fc2(self.act(self.fc1(x)))))


def test_a_module_called_twice_is_two_steps_and_one_diagnostic():
    """Each call of the module is a step of its own; ``meta["layers"]`` has one entry for the module,
    summed over its calls, so the input relevance plus everything absorbed is still the logit."""
    torch.manual_seed(8)
    net = Twice().double()
    with torch.no_grad():
        net.fc1.weight.mul_(20)  # some units saturate at 6
    x = torch.rand(4, 3, dtype=torch.float64)
    wb = salfw.WhiteBox(net)
    e = salfw.explain("lrp", wb, x)
    names = [layer["layer"] for layer in e.meta["layers"]]
    assert names == ["fc1", "act", "fc2", "fc3"]
    saturated = e.meta["layers"][1]
    assert max(saturated["absorbed"]) > 0
    absorbed = torch.tensor([layer["absorbed"] for layer in e.meta["layers"]], dtype=torch.float64).sum(0)
    logit = wb.scores(x).gather(1, e.targets[:, None])[:, 0]
    torch.testing.assert_close(e.attributions.sum(1) + absorbed, logit, rtol=1e-6, atol=1e-9)


class Gated(nn.Module):
    """conv → SiLU → squeeze-and-excitation (x * sigmoid(fc(SiLU(fc(pool(x)))))) → a product of two
    full-size values (no gate) → pooling → linear, bias-free, written with functional calls."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.squeeze, self.excite = nn.Conv2d(4, 2, 1, bias=False), nn.Conv2d(2, 4, 1, bias=False)
        self.left, self.right = nn.Conv2d(4, 3, 1, bias=False), nn.Conv2d(4, 3, 1, bias=False)
        self.head = nn.Linear(3, 2, bias=False)

    detach = False  # the oracle's switch: gradient × input form of the rules

    def forward(self, x):
        h = F.silu(self.conv(x))
        if self.detach:  # AttnLRP's identity rule on SiLU
            c = self.conv(x)
            h = c * torch.where(c == 0, 0.0, F.silu(c) / torch.where(c == 0, 1.0, c)).detach()
        gate = torch.sigmoid(self.excite(F.silu(self.squeeze(F.adaptive_avg_pool2d(h, 1)))))
        h = h * (gate.detach() if self.detach else gate)
        product = self.left(h) * self.right(h)
        return self.head(torch.flatten(F.adaptive_avg_pool2d(product, 1), 1))


def test_gate_is_a_constant_and_a_product_splits_in_half():
    """LRP-ε (ε → 0) through a squeeze-and-excitation gate and a product of two values: the gate is a
    constant (relevance flows through the value path) and each factor of the product gets half
    (AttnLRP's uniform rule), i.e. input × gradient of the network with the gate and SiLU's ratio
    detached, where the product's gradient is halved on each side."""
    torch.manual_seed(5)
    net = Gated().double()
    x = torch.rand(2, 2, 5, 5, dtype=torch.float64)
    e = salfw.explain("lrp", salfw.WhiteBox(net), x, rules="*=epsilon", epsilon=1e-12, stabilizer=1e-12)
    xg = x.clone().requires_grad_(True)
    net.detach = True
    with mock.patch.object(torch.Tensor, "__mul__", halved_product):
        out = net(xg).gather(1, e.targets[:, None]).sum()
    (g,) = torch.autograd.grad(out, xg)
    torch.testing.assert_close(e.attributions, x * g, rtol=1e-7, atol=1e-10)
    torch.testing.assert_close(e.attributions.flatten(1).sum(1), net(x).gather(1, e.targets[:, None])[:, 0])


class _Halved(torch.autograd.Function):
    """a * b, with each factor's gradient halved: the uniform rule in gradient × input form."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return torch.mul(a, b)

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        return (grad * b / 2).sum_to_size(a.shape), (grad * a / 2).sum_to_size(b.shape)


_plain_mul = torch.Tensor.__mul__


def halved_product(a, b):
    """Only the product of two full-size values that both require gradients is halved."""
    if isinstance(b, torch.Tensor) and a.requires_grad and b.requires_grad and a.shape == b.shape:
        return _Halved.apply(a, b)
    return _plain_mul(a, b)


def test_layer_norm_and_softmax_rules_in_closed_form():
    """LayerNorm (AttnLRP: identity on the division by σ, z-rule through the mean subtraction and the
    affine map): R_x = x ⊙ (g − mean g), g = w ⊙ R_y / (σ y). Softmax reached by relevance (AttnLRP,
    Prop. 3.1): R_x = x ⊙ (R_s − s Σ R_s)."""
    torch.manual_seed(6)
    net = nn.Sequential(nn.Linear(4, 5, bias=False), nn.LayerNorm(5), nn.Softmax(-1)).double()
    nn.init.uniform_(net[1].weight, 0.5, 1.5)
    nn.init.uniform_(net[1].bias, -0.2, 0.2)
    x = torch.rand(3, 4, dtype=torch.float64)
    e = salfw.explain("lrp", salfw.WhiteBox(net), x, target=2, rules="*=epsilon",
                      epsilon=1e-13, stabilizer=1e-13)
    a = x @ net[0].weight.T
    y = net[1](a)
    s = torch.softmax(y, -1)
    r_s = torch.zeros_like(s)
    r_s[:, 2] = s[:, 2]
    r_y = y * (r_s - s * r_s.sum(-1, keepdim=True))
    sigma = torch.sqrt(a.var(-1, unbiased=False, keepdim=True) + net[1].eps)
    g = net[1].weight * r_y / (sigma * y)
    r_a = a * (g - g.mean(-1, keepdim=True))
    expected = x * ((r_a / a) @ net[0].weight)
    torch.testing.assert_close(e.attributions, expected.detach())


class PaddedConv(nn.Conv2d):
    """A Conv2d subclass with its own forward, as EfficientNet-Lite's: pad, then F.conv2d."""

    def __init__(self, c_in, c_out):
        super().__init__(c_in, c_out, 3)
        self.pad = nn.ZeroPad2d(1)

    def forward(self, x):
        return F.conv2d(self.pad(x), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class Identity(nn.Module):
    """A package's own identity module."""

    def forward(self, x):
        return x


def test_custom_layer_classes_are_traced_through():
    """A Conv2d subclass with its own forward is traced through: its F.conv2d with the module's
    parameters is a layer of the composite (named by the module's path, BatchNorm folded into it)
    and a package's own Identity is an identity; the explanation equals that of the plain network."""
    torch.manual_seed(7)
    custom = nn.Sequential(PaddedConv(1, 3), nn.BatchNorm2d(3), Identity(), nn.ReLU(), nn.Flatten(),
                           nn.Linear(3 * 36, 4)).double()
    plain = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(3 * 36, 4)).double()
    with torch.no_grad():
        custom[1].running_mean.uniform_(-0.5, 0.5)
        custom[1].running_var.uniform_(0.5, 2.0)
    plain[0].load_state_dict(custom[0].state_dict(), strict=False)
    plain[1].load_state_dict(custom[1].state_dict())
    plain[4].load_state_dict(custom[5].state_dict())
    custom.eval(), plain.eval()
    x = torch.rand(2, 1, 6, 6, dtype=torch.float64)
    for composite in ("epsilon-plus", "epsilon-alpha2-beta1"):
        ours = salfw.explain("lrp", salfw.WhiteBox(custom), x, target=1, composite=composite)
        theirs = salfw.explain("lrp", salfw.WhiteBox(plain), x, target=1, composite=composite)
        torch.testing.assert_close(ours.attributions, theirs.attributions)
        rule = "z-plus-bias" if composite == "epsilon-plus" else "alpha-beta"
        assert [(l["layer"], l["type"], l["rule"]) for l in ours.meta["layers"]][:2] == [
            ("0.pad", "ZeroPad2d", "copy"), ("0", "Conv2d", rule)]
    d = salfw.explain("deeplift", salfw.WhiteBox(custom), x, target=1, baseline="blur")
    torch.testing.assert_close(d.attributions, salfw.explain("deeplift", salfw.WhiteBox(plain), x, target=1,
                                                             baseline="blur").attributions)


# -- the captured graph ---------------------------------------------------------------------------
class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        return self.out(torch.relu(self.fc(x)) + x)


def test_graph_is_captured_once_per_model_and_again_when_it_changes():
    net = Block()  # in training mode: explain() runs it in eval mode, check_model() outside that guard
    x = torch.rand(3, 4)
    with mock.patch.object(graph, "_trace", wraps=graph._trace) as trace:
        first = salfw.explain("lrp", salfw.WhiteBox(net), x).attributions
        salfw.explain("deep-taylor", salfw.WhiteBox(net), x)
        salfw.explain("deeplift", salfw.WhiteBox(net), x)
        assert trace.call_count == 1
        captured = capture(net)
        assert capture(net) is captured and trace.call_count == 1
        net.fc = nn.Linear(4, 4)  # a new submodule: traced afresh
        second = salfw.explain("lrp", salfw.WhiteBox(net), x).attributions
        assert trace.call_count == 2 and not torch.equal(first, second)
        net.eval()  # traced in eval mode whatever the flags: the training flag is not part of the signature
        capture(net)
        assert trace.call_count == 2 and net.training is False
        net.skip = False  # a plain attribute a forward may branch on is
        capture(net)
        assert trace.call_count == 3
        with torch.no_grad():
            net.fc.weight.mul_(2)  # parameters are read afresh at every explanation, not traced
        third = salfw.explain("lrp", salfw.WhiteBox(net), x).attributions
        assert trace.call_count == 3 and not torch.equal(second, third)


def captured_in_threads(net, count=6):
    """``capture(net)`` from ``count`` threads released at once; the results and the number of traces."""
    barrier = threading.Barrier(count)
    results = []

    def work():
        barrier.wait()
        results.append(capture(net))

    with mock.patch.object(graph, "_trace", wraps=graph._trace) as trace:
        threads = [threading.Thread(target=work) for _ in range(count)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return results, trace.call_count


def test_graph_cache_keeps_no_model_alive_and_is_safe_under_threads():
    net = Block()
    results, traces = captured_in_threads(net)
    assert traces == 1 and len(results) == 6 and all(r is results[0] for r in results)
    ref = weakref.ref(net)
    del net, results
    gc.collect()
    assert ref() is None
