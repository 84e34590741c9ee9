"""Attention rollout: the closed form on one-layer vision transformers (attention written out by hand), the
product over layers, the caller's view of its attention layers left alone, clear refusals."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import salfw
from salfw.core.errors import ModelRequirementError
from salfw.plugins.attention_rollout import captured_attention, rollout, tiny_vit
from tests.oracles import import_torchvision_models

D = torch.float64


def hand_attention(block_input, ln, mha):
    """Per-head attention weights (N, heads, T, T) of ``mha`` on ``ln(block_input)``, from its in_proj by hand."""
    y = ln(block_input)
    n, t, d = y.shape
    heads = mha.num_heads
    q, k, _ = (y @ mha.in_proj_weight.T + mha.in_proj_bias).split(d, dim=-1)
    q = q.reshape(n, t, heads, d // heads).transpose(1, 2)
    k = k.reshape(n, t, heads, d // heads).transpose(1, 2)
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), dim=-1)


def closed_form(weights, grid):
    """One layer: the class token's row of (mean_h W + I) / 2 over the patches, on the grid."""
    a = 0.5 * weights.mean(1) + 0.5 * torch.eye(weights.shape[-1], dtype=weights.dtype)
    return a[:, 0, 1:].reshape(-1, 1, *grid)


def test_closed_form_on_a_one_layer_tiny_vit():
    net = tiny_vit(seed=3, depth=1).to(D)
    x = torch.rand(3, 1, 8, 10, dtype=D, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        tokens = net.conv_proj(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([net.class_token.expand(3, -1, -1), tokens], 1) + net.pos_embedding
        block = net.layers[0]
        expected = closed_form(hand_attention(tokens, block.ln_1, block.self_attention), (4, 5))
    e = salfw.explain("attention-rollout", salfw.WhiteBox(net), x, interpolation="nearest")
    torch.testing.assert_close(e.meta["layer_map"], expected)
    assert e.meta["layers"] == ["layers.0.self_attention"]
    assert e.attributions.shape == (3, 1, 8, 10)
    torch.testing.assert_close(e.attributions, expected.repeat_interleave(2, 2).repeat_interleave(2, 3))


def test_closed_form_on_a_one_layer_torchvision_vit():
    models = import_torchvision_models()
    torch.manual_seed(5)
    net = models.VisionTransformer(image_size=16, patch_size=4, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=16,
                                   num_classes=3).to(D).eval()
    x = torch.rand(2, 3, 16, 16, dtype=D, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        tokens = net._process_input(x)
        tokens = torch.cat([net.class_token.expand(2, -1, -1), tokens], 1) + net.encoder.pos_embedding
        block = net.encoder.layers[0]
        expected = closed_form(hand_attention(tokens, block.ln_1, block.self_attention), (4, 4))
    e = salfw.explain("attention-rollout", salfw.WhiteBox(net), x)
    torch.testing.assert_close(e.meta["layer_map"], expected)
    torch.testing.assert_close(e.attributions, F.interpolate(expected, size=(16, 16), mode="bilinear"))


def test_rollout_multiplies_the_layers_and_keeps_rows_stochastic():
    g = torch.Generator().manual_seed(7)
    weights = [torch.softmax(torch.randn(2, 3, 5, 5, generator=g, dtype=D), -1) for _ in range(3)]
    eye = torch.eye(5, dtype=D)
    a1, a2, a3 = [(w.mean(1) + eye) / 2 for w in weights]
    torch.testing.assert_close(rollout(weights), a3 @ a2 @ a1)
    torch.testing.assert_close(rollout(weights).sum(-1), torch.ones(2, 5, dtype=D))


def test_deeper_rollout_matches_captured_weights_and_leaves_the_outputs_alone():
    net = tiny_vit(seed=8, depth=3).to(D)
    model = salfw.WhiteBox(net)
    x = torch.rand(2, 1, 8, 10, dtype=D, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        plain = net(x)
        with captured_attention([(n, m) for n, m in net.named_modules() if isinstance(m, nn.MultiheadAttention)]) \
                as store:
            captured = net(x)
    torch.testing.assert_close(captured, plain)  # the blocks still get the output they asked for
    assert len(store) == 3 and store[0].shape == (2, 2, 21, 21)
    e = salfw.explain("attention-rollout", model, x)
    torch.testing.assert_close(e.meta["layer_map"], rollout(store)[:, 0, 1:].reshape(2, 1, 4, 5))
    assert (e.meta["layer_map"] > 0).all() and (e.meta["layer_map"].flatten(1).sum(1) < 1).all()


class AsksForWeights(nn.Module):
    """Calls its attention layer asking for the head-averaged weights, positionally, and uses them."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 2, stride=2)
        self.cls = nn.Parameter(torch.ones(1, 1, 4))
        self.attention = nn.MultiheadAttention(4, 2, batch_first=True)
        self.head = nn.Linear(4 + 5, 2)

    def forward(self, x):
        t = torch.cat([self.cls.expand(x.shape[0], -1, -1), self.conv(x).flatten(2).transpose(1, 2)], 1)
        out, weights = self.attention(t, t, t, None, True)
        return self.head(torch.cat([out[:, 0], weights[:, 0]], 1))


def test_a_caller_asking_for_averaged_weights_still_gets_them():
    torch.manual_seed(10)
    net = AsksForWeights().to(D).eval()
    x = torch.rand(2, 1, 4, 4, dtype=D, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        plain = net(x)
        with captured_attention([("attention", net.attention)]) as store:
            captured = net(x)
    torch.testing.assert_close(captured, plain)
    assert store[0].shape == (2, 2, 5, 5)


def test_refusals_name_what_is_missing():
    cnn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2))
    with pytest.raises(ModelRequirementError, match=r"no attention layer \(nn\.MultiheadAttention\).*'grad-cam'"):
        salfw.explain("attention-rollout", salfw.WhiteBox(cnn), torch.rand(1, 1, 6, 6))

    class NoClassToken(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 2, stride=2)
            self.attention = nn.MultiheadAttention(4, 2, batch_first=True)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            t = self.conv(x).flatten(2).transpose(1, 2)
            return self.head(self.attention(t, t, t, need_weights=False)[0].mean(1))

    with pytest.raises(ModelRequirementError, match=r"class token.*'attention'"):
        salfw.explain("attention-rollout", salfw.WhiteBox(NoClassToken()), torch.rand(1, 1, 4, 4))
