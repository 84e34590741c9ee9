"""CAM family and VisualBackProp: hand-checked maps on tiny networks, the CAM/Grad-CAM identity, clear errors."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import salfw
from salfw.core.errors import ModelRequirementError, ParameterError

D = torch.float64


def tiny_conv_net():
    """conv 1->2 (2x2 kernels, no bias) on a 3x3 input, flatten, linear 8->2 (no bias), known weights."""
    net = nn.Sequential(nn.Conv2d(1, 2, 2, bias=False), nn.Flatten(), nn.Linear(8, 2, bias=False)).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[[[1.0, 0.0], [0.0, -1.0]]], [[[0.0, 1.0], [1.0, 0.0]]]]))
        net[2].weight.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0, -1.0, 0.0, 1.0, 2.0],
                                          [0.5, 0.5, 0.5, 0.5, 1.0, -1.0, 1.0, -1.0]]))
    return net


X3 = torch.tensor([[[[1.0, 2.0, 0.0], [0.0, 1.0, 3.0], [2.0, 0.0, 1.0]]]], dtype=D) / 3


def hand_grad_cam(x, net, target, relu=True):
    """Grad-CAM of tiny_conv_net written out: A by explicit sums, α_k = mean of the linear weights on A^k."""
    w = net[0].weight.detach()
    lin = net[2].weight.detach()[target].reshape(2, 2, 2)  # ∂y/∂A^k_ij (flatten order: k, i, j)
    cam = torch.zeros(2, 2, dtype=D)
    for k in range(2):
        alpha = lin[k].sum() / 4
        for i in range(2):
            for j in range(2):
                a = sum(w[k, 0, u, v] * x[0, 0, i + u, j + v] for u in range(2) for v in range(2))
                cam[i, j] += alpha * a
    return cam.clamp(min=0) if relu else cam


@pytest.mark.parametrize("target", [0, 1])
def test_grad_cam_by_hand(target):
    net = tiny_conv_net()
    e = salfw.explain("grad-cam", salfw.WhiteBox(net), X3, target=target, interpolation="nearest")
    expected = hand_grad_cam(X3, net, target)
    assert e.meta["layer"] == "0"  # the only spatial layer, found automatically
    torch.testing.assert_close(e.meta["layer_map"][0, 0], expected)
    # nearest upsampling 2 -> 3 picks rows/columns floor(i * 2 / 3) = 0, 0, 1
    idx = torch.tensor([0, 0, 1])
    torch.testing.assert_close(e.attributions[0, 0], expected[idx][:, idx])
    assert e.attributions.shape == (1, 1, 3, 3)
    raw = salfw.explain("grad-cam", salfw.WhiteBox(net), X3, target=target, relu=False)
    torch.testing.assert_close(raw.meta["layer_map"][0, 0], hand_grad_cam(X3, net, target, relu=False))


def test_grad_cam_plus_plus_by_hand():
    net = tiny_conv_net()
    target = 1
    e = salfw.explain("grad-cam-plus-plus", salfw.WhiteBox(net), X3, target=target, relu=False)
    acts = net[0](X3)[0]  # (2, 2, 2)
    grads = net[2].weight.detach()[target].reshape(2, 2, 2)
    expected = torch.zeros(2, 2, dtype=D)
    for k in range(2):
        s = acts[k].sum()
        weight = 0.0
        for i in range(2):
            for j in range(2):
                g = grads[k, i, j]
                a = g ** 2 / (2 * g ** 2 + s * g ** 3 + 1e-6) if g != 0 else 0.0
                weight += a * max(g, 0.0)
        expected += weight * acts[k]
    torch.testing.assert_close(e.meta["layer_map"][0, 0], expected.detach())


def gap_net(seed=0, bias=True):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=bias), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 5, 3, padding=1, bias=bias), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5),
                         nn.Linear(5, 3, bias=bias)).double()


def test_cam_equals_grad_cam_times_hw_on_gap_linear():
    net = gap_net()
    model = salfw.WhiteBox(net)
    x = torch.rand(4, 2, 8, 8, dtype=D, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([0, 1, 2, 1])
    cam = salfw.explain("cam", model, x, target=target)
    grad_cam = salfw.explain("grad-cam", model, x, target=target, relu=False)
    assert cam.meta["layer"] == "5" and grad_cam.meta["layer"] == "4"  # the pool's input is the last ReLU's output
    h, w = grad_cam.meta["layer_map"].shape[2:]
    assert (h, w) == (4, 4)
    torch.testing.assert_close(cam.meta["layer_map"] / (h * w), grad_cam.meta["layer_map"])
    torch.testing.assert_close(cam.attributions / (h * w), grad_cam.attributions)
    # and directly: Σ_k W_ck A^k
    acts = net[:5](x)
    expected = torch.einsum("nk,nkhw->nhw", net[8].weight[target], acts)[:, None]
    torch.testing.assert_close(cam.meta["layer_map"], expected)
    clipped = salfw.explain("cam", model, x, target=target, relu=True)
    torch.testing.assert_close(clipped.meta["layer_map"], expected.clamp(min=0))


def test_guided_grad_cam_is_the_product():
    model = salfw.WhiteBox(gap_net(2))
    x = torch.rand(3, 2, 8, 8, dtype=D, generator=torch.Generator().manual_seed(2))
    ggc = salfw.explain("guided-grad-cam", model, x, target=1, layer="3")
    gb = salfw.explain("guided-backprop", model, x, target=1).attributions
    gc = salfw.explain("grad-cam", model, x, target=1, layer="3").attributions
    assert ggc.attributions.shape == x.shape
    torch.testing.assert_close(ggc.attributions, gb * gc)


def test_named_layer_and_batching():
    model = salfw.WhiteBox(gap_net(3))
    x = torch.rand(3, 2, 8, 8, dtype=D, generator=torch.Generator().manual_seed(3))
    for method in ("grad-cam", "grad-cam-plus-plus"):
        whole = salfw.explain(method, model, x, target=2, layer="1", batch_size=2)
        assert whole.meta["layer_map"].shape == (3, 1, 8, 8)
        single = torch.cat([salfw.explain(method, model, x[i:i + 1], target=2, layer="1").attributions
                            for i in range(3)])
        torch.testing.assert_close(whole.attributions, single)


def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 4), nn.ReLU(), nn.Linear(4, 2))


def test_clear_errors():
    x = torch.rand(2, 1, 4, 4)
    for method in ("grad-cam", "grad-cam-plus-plus", "guided-grad-cam"):
        with pytest.raises(ModelRequirementError, match="spatial"):
            salfw.explain(method, salfw.WhiteBox(mlp()), x, target=0)
    with pytest.raises(ParameterError, match=r"layer 'nope'.*named_modules"):
        salfw.explain("grad-cam", salfw.WhiteBox(gap_net().float()), torch.rand(1, 2, 8, 8), layer="nope")
    with pytest.raises(ModelRequirementError, match=r"layer '8'.*spatial"):
        salfw.explain("grad-cam", salfw.WhiteBox(gap_net().float()), torch.rand(1, 2, 8, 8), layer="8")
    with pytest.raises(ModelRequirementError, match=r"global average pool.*'1' \(Flatten\)|global average pool"):
        salfw.explain("cam", salfw.WhiteBox(tiny_conv_net()), X3, target=0)
    no_head = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                            nn.Linear(2, 3), nn.ReLU())
    with pytest.raises(ModelRequirementError, match=r"last layer is '5' \(ReLU\)"):
        salfw.explain("cam", salfw.WhiteBox(no_head), torch.rand(1, 1, 6, 6), target=0)
    with pytest.raises(ModelRequirementError, match="no nn.Conv2d"):
        salfw.explain("visual-backprop", salfw.WhiteBox(mlp()), x)


# -- VisualBackProp -------------------------------------------------------------------
def vbp_net():
    """Bias-free: conv 3x3 pad 1 (1->2), ReLU, maxpool 2, conv 2x2 stride 1 (2->3), ReLU, GAP, linear."""
    torch.manual_seed(5)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(2, 3, 2, bias=False), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(3, 2, bias=False)).double()
    with torch.no_grad():
        net[0].weight.abs_()  # positive filters keep many units active
    return net


def hand_unity_deconv(v, size, kernel, stride, padding):
    """Spread every value of v over its kxk receptive field (an all-ones transposed convolution), by loops."""
    out = torch.zeros(size, dtype=D)
    for i in range(v.shape[0]):
        for j in range(v.shape[1]):
            for u in range(kernel):
                for w in range(kernel):
                    r, c = i * stride - padding + u, j * stride - padding + w
                    if 0 <= r < size[0] and 0 <= c < size[1]:
                        out[r, c] += v[i, j]
    return out


def test_visual_backprop_by_hand():
    net = vbp_net()
    x = torch.rand(2, 1, 7, 7, dtype=D, generator=torch.Generator().manual_seed(6))
    e = salfw.explain("visual-backprop", salfw.WhiteBox(net), x)
    assert e.meta["layers"] == ["1", "4"]
    for n in range(2):
        r1 = net[:2](x[n:n + 1])[0]          # (2, 7, 7)
        r2 = net[:5](x[n:n + 1])[0]          # (3, 2, 2)
        m1, m2 = r1.mean(0), r2.mean(0)
        v = hand_unity_deconv(m2, (3, 3), 2, 1, 0)      # conv 2x2 back to the pool's 3x3 output
        v = hand_unity_deconv(v, (7, 7), 2, 2, 0) * m1  # maxpool 2 (stride 2) back to 7x7 (last row/col empty)
        v = hand_unity_deconv(v, (7, 7), 3, 1, 1)       # conv 3x3 pad 1 back to the input
        torch.testing.assert_close(e.attributions[n, 0], v.detach())


def test_visual_backprop_offset_in_preprocessing():
    net = vbp_net()
    x = torch.rand(3, 1, 7, 7, dtype=D, generator=torch.Generator().manual_seed(7))
    shifted = salfw.explain("visual-backprop", salfw.WhiteBox(net, offset=-0.5), x).attributions
    direct = salfw.explain("visual-backprop", salfw.WhiteBox(net, input_range=(-0.5, 0.5)), x - 0.5).attributions
    torch.testing.assert_close(shifted, direct)


def test_visual_backprop_warns_on_biases_and_needs_relu_convs():
    biased = gap_net(bias=True)
    with pytest.warns(UserWarning, match=r"without biases.*'0' \(Conv2d\)"):
        salfw.explain("visual-backprop", salfw.WhiteBox(biased), torch.rand(1, 2, 8, 8, dtype=D))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        salfw.explain("visual-backprop", salfw.WhiteBox(vbp_net()), torch.rand(1, 1, 7, 7, dtype=D))

    class FunctionalRelu(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, bias=False)

        def forward(self, x):
            return F.relu(self.conv(x)).mean(dim=(2, 3))

    with pytest.raises(ModelRequirementError, match="FunctionalRelu.*followed by an nn.ReLU"):
        salfw.explain("visual-backprop", salfw.WhiteBox(FunctionalRelu()), torch.rand(1, 1, 5, 5))


# -- layers called more than once, and transformer tokens -------------------------------
class TwiceConv(nn.Module):
    """One conv and one ReLU module, each called twice: relu#0 after the first conv, relu#1 after the second."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3))

    def forward(self, x):
        return self.head(self.relu(self.conv(self.relu(self.conv(x)))))


def hand_grad_cam_of_call(net, x, target, call):
    """Grad-CAM of the ``call``-th output of ``net.relu``, by a plain hook and autograd."""
    outputs = []

    def keep(module, inputs, output):
        outputs.append(output)
        return output.clone()  # the next in-place ReLU must not overwrite it

    handle = net.relu.register_forward_hook(keep)
    try:
        x = x.clone().requires_grad_(True)
        y = net(x)[:, target].sum()
        (grad,) = torch.autograd.grad(y, outputs[call])
    finally:
        handle.remove()
    acts = outputs[call].detach()
    return (grad.mean(dim=(2, 3), keepdim=True) * acts).sum(1, keepdim=True).clamp(min=0)


def test_a_layer_called_twice_is_chosen_by_call_index():
    torch.manual_seed(12)
    net = TwiceConv().double()
    model = salfw.WhiteBox(net)
    x = torch.rand(3, 2, 6, 7, dtype=D, generator=torch.Generator().manual_seed(13))
    for call in (0, 1):
        e = salfw.explain("grad-cam", model, x, target=1, layer=f"relu#{call}")
        assert e.meta["layer"] == f"relu#{call}"
        torch.testing.assert_close(e.meta["layer_map"], hand_grad_cam_of_call(net, x, 1, call))
        ggc = salfw.explain("guided-grad-cam", model, x, target=1, layer=f"relu#{call}")
        torch.testing.assert_close(ggc.meta["layer_map"], e.meta["layer_map"])
    assert salfw.explain("grad-cam", model, x, target=1).meta["layer"] == "relu#1"  # the automatic layer
    with pytest.raises(ModelRequirementError, match=r"'relu' \(ReLU\) is called 2 times.*relu#0, relu#1"):
        salfw.explain("grad-cam", model, x, layer="relu")
    with pytest.raises(ParameterError, match=r"'relu#2'.*called 2 time"):
        salfw.explain("grad-cam-plus-plus", model, x, layer="relu#2")
    with pytest.raises(ParameterError, match=r"whole number after '#'"):
        salfw.explain("grad-cam", model, x, layer="relu#last")


def test_grad_cam_on_vit_tokens_follows_pytorch_grad_cam_reshape_transform():
    """The tokens entering the last attention (the last block's ln_1), class token dropped, on the 4x5 patch grid:
    pytorch-grad-cam's reshape_transform, ``t[:, 1:].reshape(N, h, w, D).transpose(2, 3).transpose(1, 2)``."""
    from salfw.plugins.attention_rollout import tiny_vit

    net = tiny_vit(seed=14).double()
    x = torch.rand(3, 1, 8, 10, dtype=D, generator=torch.Generator().manual_seed(15))
    target = torch.tensor([0, 2, 1])
    captured = []
    handle = net.layers[1].ln_1.register_forward_hook(lambda m, i, o: captured.append(o))
    try:
        y = net(x).gather(1, target[:, None]).sum()
        (grad,) = torch.autograd.grad(y, captured[0])
    finally:
        handle.remove()

    def reshape_transform(t, height=4, width=5):
        result = t[:, 1:, :].reshape(t.size(0), height, width, t.size(2))
        return result.transpose(2, 3).transpose(1, 2)

    acts, grads = reshape_transform(captured[0].detach()), reshape_transform(grad)
    expected = (grads.mean(dim=(2, 3), keepdim=True) * acts).sum(1, keepdim=True).clamp(min=0)
    e = salfw.explain("grad-cam", salfw.WhiteBox(net), x, target=target)
    assert e.meta["layer"] == "layers.1.ln_1"
    assert expected.abs().sum() > 0
    torch.testing.assert_close(e.meta["layer_map"], expected)
    # the last block's output reaches the logits through its class token alone: its patch tokens have no gradient
    output = salfw.explain("grad-cam", salfw.WhiteBox(net), x, target=target, layer="layers.1", relu=False)
    assert output.meta["layer_map"].abs().max() == 0


# -- VisualBackProp follows a plain chain or refuses ------------------------------------
class SkipBlock(nn.Module):
    """conv-ReLU-conv, the input added in place (torchvision's BasicBlock does ``out += identity``), ReLU."""

    def __init__(self, reuse):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(2, 2, 3, padding=1, bias=False), nn.Conv2d(2, 2, 3, padding=1, bias=False)
        self.relu1 = nn.ReLU()
        self.relu2 = self.relu1 if reuse else nn.ReLU()

    def forward(self, x):
        out = self.conv2(self.relu1(self.conv1(x)))
        out += x
        return self.relu2(out)


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 2, 3, padding=1, bias=False), nn.Conv2d(1, 2, 3, padding=1, bias=False)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(torch.cat([self.a(x), self.b(x)], 1))


def test_visual_backprop_refuses_networks_that_are_not_a_plain_chain():
    head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2, bias=False)]
    stem = [nn.Conv2d(1, 2, 3, padding=1, bias=False), nn.ReLU()]
    x = torch.rand(1, 1, 6, 6)
    cases = [
        (nn.Sequential(*stem, SkipBlock(reuse=True), *head), r"'2\.relu1' \(ReLU\) is called a second time"),
        (nn.Sequential(*stem, SkipBlock(reuse=False), *head),
         r"'2\.relu2' \(ReLU\) does not take the unchanged output of the layer before it, '2\.conv2'"),
        (nn.Sequential(Concat(), nn.Conv2d(4, 2, 1, bias=False), nn.ReLU(), *head), r"'0\.b' \(Conv2d\)"),
    ]
    for net, reason in cases:
        with pytest.raises(ModelRequirementError, match=reason + r".*plain chain|plain chain.*" + reason):
            salfw.explain("visual-backprop", salfw.WhiteBox(net), x)
        with pytest.raises(ModelRequirementError, match=r"'grad-cam'"):
            salfw.explain("visual-backprop", salfw.WhiteBox(net), x)


def test_visual_backprop_chain_ends_at_an_adaptive_head_pool():
    """VGG's AdaptiveAvgPool2d((7, 7)) enlarges a small map: it is the head, not a layer to scale back through."""
    net = vbp_net()
    head = (nn.AdaptiveAvgPool2d((3, 3)), nn.Flatten(), nn.Linear(27, 2, bias=False))
    vgg_like = nn.Sequential(*net[:5], *head).double()
    x = torch.rand(2, 1, 7, 7, dtype=D, generator=torch.Generator().manual_seed(16))
    ours = salfw.explain("visual-backprop", salfw.WhiteBox(vgg_like), x)
    plain = salfw.explain("visual-backprop", salfw.WhiteBox(net), x).attributions
    torch.testing.assert_close(ours.attributions, plain)
