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
